"""The flag-anomaly stage: ZWARN bits and continuous anomaly scores with calibrated thresholds.

It reads what earlier stages wrote (never re-measures) and adds, per spectrum:

=================  ==========================================================================
column             meaning (higher = more anomalous, NaN where the inputs are missing)
=================  ==========================================================================
SCORE_CHI2         robust z-score of the best fit's reduced χ² (``RCHI2``) against the
                   calibration spectra of the same class and S/N bin:
                   ``(RCHI2 − median) / (1.4826 · MAD)``
SCORE_DEGENERATE   ``−log10 R``, GaSNet-III's degeneracy R between the two best minima
                   (``DEGENERACY``; 0 when there is a single minimum)
SCORE_ZDIFF        ``|Z − CNN_Z| / √(ZERR² + CNN_ZERR²)``: scan and GaSNet-II regressor
SCORE_CLASS        ``1 − P(SPECTYPE)``: the classifier's doubt about the scan's class
ANOMALY_SCORE      in sigmas: the rarest of the four scores among the calibration spectra
                   whose class and redshift are right, as a Gaussian-equivalent deviation
                   (a score exceeded by a fraction p of them is Φ⁻¹(1 − p) σ; the flag
                   thresholds, p = 1.5 %, sit at 2.17 σ; beyond the largest calibration
                   value it grows by one per (largest − median) of excess, in decades for
                   SCORE_CLASS); one number to rank spectra by, on one scale
ANOMALY_REASON     which score gives ANOMALY_SCORE, with its value
=================  ==========================================================================

and sets the bits ``LOW_SNR``, ``LARGE_CHI2``, ``DEGENERATE``, ``CLASS_DISAGREE``,
``Z_DISAGREE`` and ``LOW_PROB`` (:mod:`gasnet_plugin.zwarning`) with their reasons in
``ZWARN_REASON``. The bits the readers and engines set (bad input, little data, small Δχ²,
z at the edge, ...) stay as they are.

Thresholds are parameters. Their defaults come from a thresholds file made by
``gasnet calibrate-flags`` on real labelled spectra (the shipped one:
``gasnet_plugin/data/flag-thresholds.asdf``): for each score, the value exceeded by only
``rate`` (1.5 % by default: a 10 % budget over the six bits) of the spectra whose class
and redshift are right — so each bit flags about ``rate`` of the good spectra, and what it
flags beyond that is the measure of its worth (docs/flags.rst gives the measured table).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.stages.base import RunContext, Stage
from gasnet_plugin.stages.classify import probability_column
from gasnet_plugin.zwarning import FATAL, ZWarn

if TYPE_CHECKING:
    from astropy.table import Table

    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.registry import Registry

DEFAULT_THRESHOLDS = "flag-thresholds.asdf"
"""File name of the shipped thresholds in ``gasnet_plugin/data``."""
SNR_EDGES = (0.0, 3.0, 10.0, np.inf)
"""S/N bins of the χ² expectation (median S/N per pixel)."""
SCORES = ("SCORE_CHI2", "SCORE_DEGENERATE", "SCORE_ZDIFF", "SCORE_CLASS")
THRESHOLD_OF_SCORE = {"SCORE_CHI2": "large_chi2", "SCORE_DEGENERATE": "degenerate",
                      "SCORE_ZDIFF": "z_disagree", "SCORE_CLASS": "class_doubt"}


class ThresholdsError(ValueError):
    """A thresholds file is missing or malformed; the message names the file."""


@dataclass
class FlagThresholds:
    """Calibrated thresholds and the χ² expectation they need.

    Attributes
    ----------
    low_snr
        ``LOW_SNR`` below this median S/N per pixel.
    large_chi2, degenerate, z_disagree
        ``LARGE_CHI2`` / ``DEGENERATE`` / ``Z_DISAGREE`` above these scores.
    low_prob
        ``LOW_PROB`` below this top classifier probability.
    class_doubt
        ``SCORE_CLASS`` value that counts as 1 in ``ANOMALY_SCORE`` (``CLASS_DISAGREE``
        itself needs no threshold).
    chi2_median, chi2_scatter
        Class → ``(len(SNR_EDGES) − 1,)`` median and robust scatter of ``RCHI2`` per S/N bin.
    score_quantiles
        Score → ``(101,)`` its 0, 1, ..., 100 % quantiles over the right calibration
        spectra (what puts ANOMALY_SCORE in sigmas); empty in files from before them.
    n_good
        How many right calibration spectra the quantiles come from.
    rate
        The fraction of good calibration spectra each threshold lets through.
    provenance
        What the thresholds were calibrated on (spectra, labels, models, date).
    """

    low_snr: float
    large_chi2: float
    degenerate: float
    z_disagree: float
    low_prob: float
    class_doubt: float
    chi2_median: dict[str, np.ndarray]
    chi2_scatter: dict[str, np.ndarray]
    score_quantiles: dict[str, np.ndarray] = field(default_factory=dict)
    n_good: int = 0
    rate: float = 0.015
    provenance: dict[str, Any] = field(default_factory=dict)

    def as_tree(self) -> dict[str, Any]:
        """Plain YAML/ndarray tree for ASDF."""
        return {"low_snr": float(self.low_snr), "large_chi2": float(self.large_chi2),
                "degenerate": float(self.degenerate), "z_disagree": float(self.z_disagree),
                "low_prob": float(self.low_prob), "class_doubt": float(self.class_doubt),
                "snr_edges": [float(e) for e in SNR_EDGES[1:-1]],
                "chi2_median": {k: np.asarray(v, float) for k, v in self.chi2_median.items()},
                "chi2_scatter": {k: np.asarray(v, float) for k, v in self.chi2_scatter.items()},
                "score_quantiles": {k: np.asarray(v, float)
                                    for k, v in self.score_quantiles.items()},
                "n_good": int(self.n_good),
                "rate": float(self.rate), "provenance": dict(self.provenance)}


def _column(table: Table, name: str, fill: float = np.nan) -> np.ndarray:
    return np.asarray(table[name], dtype=float) if name in table.colnames \
        else np.full(len(table), fill)


def _strings(table: Table, name: str) -> np.ndarray:
    return np.char.strip(np.asarray(table[name]).astype(str)) if name in table.colnames \
        else np.full(len(table), "")


def _snr_bin(snr: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(np.nan_to_num(snr, nan=0.0), SNR_EDGES[1:-1]), 0,
                   len(SNR_EDGES) - 2)


def anomaly_scores(table: Table, chi2_median: dict[str, np.ndarray] | None = None,
                   chi2_scatter: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The four scores of the module docstring for every row of ``table``, ``(N,)`` each
    (``SCORE_CHI2`` needs the χ² expectation; NaN without it)."""
    n = len(table)
    spectype = _strings(table, "SPECTYPE")
    scores = {name: np.full(n, np.nan) for name in SCORES}
    rchi2 = _column(table, "RCHI2")
    if chi2_median:
        bins = _snr_bin(_column(table, "SNR_MEDIAN"))
        for name, median in chi2_median.items():
            rows = spectype == name
            scatter = np.maximum(np.asarray(chi2_scatter[name])[bins[rows]], 1e-6)
            scores["SCORE_CHI2"][rows] = (rchi2[rows] - np.asarray(median)[bins[rows]]) / scatter
    degeneracy = _column(table, "DEGENERACY")
    with np.errstate(divide="ignore", invalid="ignore"):
        scores["SCORE_DEGENERATE"] = np.where(
            degeneracy < 0, 0.0, -np.log10(np.maximum(degeneracy, 1e-6)))
        scores["SCORE_DEGENERATE"][~np.isfinite(degeneracy)] = np.nan
        z, z_err = _column(table, "Z"), _column(table, "ZERR")
        cnn_z, cnn_err = _column(table, "CNN_Z"), _column(table, "CNN_ZERR")
        error = np.sqrt(np.nan_to_num(z_err, nan=0.0) ** 2 + cnn_err**2)
        scores["SCORE_ZDIFF"] = np.abs(z - cnn_z) / np.maximum(error, 1e-12)
    probability = np.full(n, np.nan)
    for name in np.unique(spectype):
        column = probability_column(name)
        if name and column in table.colnames:
            rows = spectype == name
            probability[rows] = np.asarray(table[column], dtype=float)[rows]
    scores["SCORE_CLASS"] = 1.0 - probability
    return scores


def chi2_expectation(table: Table, good: np.ndarray) -> tuple[dict, dict]:
    """Per class and S/N bin, the median and robust scatter (1.4826 MAD) of ``RCHI2`` over
    the ``good`` rows; a bin with fewer than 5 spectra takes its class's values, a class
    with fewer than 5 the values of all good spectra."""
    spectype, rchi2 = _strings(table, "SPECTYPE"), _column(table, "RCHI2")
    bins = _snr_bin(_column(table, "SNR_MEDIAN"))
    good = good & np.isfinite(rchi2)

    def robust(values: np.ndarray) -> tuple[float, float]:
        median = float(np.median(values))
        return median, float(max(1.4826 * np.median(np.abs(values - median)), 1e-3))

    overall = robust(rchi2[good]) if good.sum() >= 5 else (1.0, 1.0)
    medians, scatters = {}, {}
    for name in sorted(set(spectype[good]) - {""}):
        rows = good & (spectype == name)
        whole = robust(rchi2[rows]) if rows.sum() >= 5 else overall
        per_bin = [robust(rchi2[rows & (bins == b)]) if (rows & (bins == b)).sum() >= 5
                   else whole for b in range(len(SNR_EDGES) - 1)]
        medians[name] = np.array([m for m, _ in per_bin])
        scatters[name] = np.array([s for _, s in per_bin])
    return medians, scatters


def calibrate_thresholds(table: Table, good: np.ndarray, rate: float = 0.015,
                         provenance: dict[str, Any] | None = None) -> FlagThresholds:
    """Thresholds such that each bit flags a fraction ``rate`` of the ``good`` rows
    (spectra whose class and redshift are right).

    ``table`` is a results table from the pipeline (resample, classify, redshift-scan) on
    labelled spectra; ``good`` ``(N,)`` bool marks the right ones.
    """
    good = np.asarray(good, bool) & ((np.asarray(table["ZWARN"]) & int(FATAL)) == 0)
    if good.sum() < 20:
        raise ValueError(f"only {good.sum()} good spectra to calibrate on (need 20)")
    medians, scatters = chi2_expectation(table, good)
    scores = anomaly_scores(table, medians, scatters)

    def upper(values: np.ndarray) -> float:
        values = values[good & np.isfinite(values)]
        return float(np.quantile(values, 1 - rate)) if values.size else float("inf")

    def lower(values: np.ndarray) -> float:
        values = values[good & np.isfinite(values)]
        return float(np.quantile(values, rate)) if values.size else 0.0

    return FlagThresholds(
        low_snr=lower(_column(table, "SNR_MEDIAN")),
        large_chi2=upper(scores["SCORE_CHI2"]),
        degenerate=upper(scores["SCORE_DEGENERATE"]),
        z_disagree=upper(scores["SCORE_ZDIFF"]),
        low_prob=lower(_column(table, "CNN_PROB")),
        class_doubt=upper(scores["SCORE_CLASS"]),
        chi2_median=medians, chi2_scatter=scatters,
        score_quantiles={name: np.quantile(values[good & np.isfinite(values)],
                                           np.linspace(0, 1, 101))
                         for name, values in scores.items()
                         if (good & np.isfinite(values)).any()},
        n_good=int(good.sum()), rate=rate,
        provenance={"created": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"), "n_calibration": len(table), "n_good": int(good.sum()),
            **(provenance or {})})


LOG_SCALED_SCORES = ("SCORE_CLASS",)
"""Scores whose excess beyond the calibration range is measured in decades (1 − P spans
many orders of magnitude: 1e-6 for a sure class, 0.5 for a coin toss)."""


def rarity_sigma(values: np.ndarray, quantiles: np.ndarray, n_good: int,
                 log: bool = False) -> np.ndarray:
    """How rare ``values`` ``(N,)`` of a score are among the right calibration spectra,
    as Gaussian-equivalent sigmas: a value exceeded by a fraction ``p`` of them (from the
    ``(101,)`` ``quantiles``) is ``Φ⁻¹(1 − p)``; ``p`` is kept above ``0.5 / (n_good + 1)``,
    and beyond the largest quantile the sigmas grow by one per (largest − median) of
    excess, measured in decades with ``log``. NaN stays NaN."""
    from scipy.special import ndtri

    if log:
        values = np.log10(np.maximum(values, 1e-12))
        quantiles = np.log10(np.maximum(quantiles, 1e-12))
    levels = np.linspace(0, 1, quantiles.size)
    top, median = float(quantiles[-1]), float(quantiles[quantiles.size // 2])
    floor = 0.5 / (max(n_good, 1) + 1)
    with np.errstate(invalid="ignore"):
        inside = np.interp(values, quantiles, levels, left=0.0, right=1.0)
        tail = np.clip(1.0 - inside, floor, 1.0)
        sigma = ndtri(1.0 - tail)
        spread = max(top - median, 1e-12)
        beyond = ndtri(1.0 - floor) + (values - top) / spread
        sigma = np.where(values > top, np.maximum(beyond, sigma), sigma)
    return np.where(np.isfinite(values), sigma, np.nan)


@dataclass
class Flags:
    """What :func:`apply_flags` decides for ``N`` rows: the scores, and per bit the
    ``(N,)`` mask and the ``(N,)`` reasons."""

    scores: dict[str, np.ndarray]
    bits: dict[ZWarn, np.ndarray]
    reasons: dict[ZWarn, np.ndarray]
    anomaly_score: np.ndarray
    anomaly_reason: np.ndarray


def apply_flags(table: Table, thresholds: FlagThresholds) -> Flags:
    """Scores, bits and reasons for every row of a results table (vectorised)."""
    t = thresholds
    scores = anomaly_scores(table, t.chi2_median, t.chi2_scatter)
    usable = (np.asarray(table["ZWARN"]) & int(FATAL)) == 0
    snr = _column(table, "SNR_MEDIAN")
    prob = _column(table, "CNN_PROB")
    cnn_class, spectype = _strings(table, "CNN_CLASS"), _strings(table, "SPECTYPE")

    def fmt(template: str, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.full(rows.size, "", dtype=object)
        out[rows] = [template.format(v) for v in values[rows]]
        return out

    with np.errstate(invalid="ignore"):
        bits = {
            ZWarn.LOW_SNR: usable & (snr < t.low_snr),
            ZWarn.LARGE_CHI2: usable & (scores["SCORE_CHI2"] > t.large_chi2),
            ZWarn.DEGENERATE: usable & (scores["SCORE_DEGENERATE"] > t.degenerate),
            ZWarn.CLASS_DISAGREE: usable & (cnn_class != "") & (spectype != "")
            & (cnn_class != spectype),
            ZWarn.Z_DISAGREE: usable & (scores["SCORE_ZDIFF"] > t.z_disagree),
            ZWarn.LOW_PROB: usable & (prob < t.low_prob),
        }
    reasons = {
        ZWarn.LOW_SNR: fmt(f"median S/N {{:.2g}} < {t.low_snr:.3g}", snr, bits[ZWarn.LOW_SNR]),
        ZWarn.LARGE_CHI2: fmt(f"reduced chi2 {{:.2f}} sigma above its class and S/N "
                              f"(> {t.large_chi2:.3g})", scores["SCORE_CHI2"],
                              bits[ZWarn.LARGE_CHI2]),
        ZWarn.DEGENERATE: fmt(f"degenerate minima: -log10 R = {{:.2f}} > {t.degenerate:.3g}",
                              scores["SCORE_DEGENERATE"], bits[ZWarn.DEGENERATE]),
        ZWarn.Z_DISAGREE: fmt(f"scan z and CNN z differ by {{:.1f}} sigma "
                              f"(> {t.z_disagree:.3g})", scores["SCORE_ZDIFF"],
                              bits[ZWarn.Z_DISAGREE]),
        ZWarn.LOW_PROB: fmt(f"classifier top probability {{:.2f}} < {t.low_prob:.3g}", prob,
                            bits[ZWarn.LOW_PROB]),
    }
    disagree = np.full(len(table), "", dtype=object)
    rows = bits[ZWarn.CLASS_DISAGREE]
    disagree[rows] = [f"classifier says {c} (p={p:.2f}), scan says {s}"
                      for c, p, s in zip(cnn_class[rows], prob[rows], spectype[rows],
                                         strict=True)]
    reasons[ZWarn.CLASS_DISAGREE] = disagree
    if t.score_quantiles and all(name in t.score_quantiles for name in SCORES):
        ratios = np.stack([rarity_sigma(scores[name], t.score_quantiles[name], t.n_good,
                                        log=name in LOG_SCALED_SCORES) for name in SCORES])
    else:   # a thresholds file from before the quantiles: threshold units
        limits = np.array([[getattr(t, THRESHOLD_OF_SCORE[name])] for name in SCORES])
        ratios = np.stack([scores[name] for name in SCORES]) / np.maximum(limits, 1e-12)
    ratios = np.where(np.isfinite(ratios), ratios, -np.inf)
    best = np.argmax(ratios, axis=0)
    anomaly = ratios[best, np.arange(len(table))]
    anomaly = np.where(np.isfinite(anomaly) & usable, anomaly, np.nan)
    best_value = np.stack([scores[name] for name in SCORES])[best, np.arange(len(table))]
    reason = np.char.add(np.char.add(np.asarray(SCORES)[best], "="),
                         np.char.mod("%.3g", best_value)).astype(object)
    reason[~np.isfinite(anomaly)] = ""
    return Flags(scores, bits, reasons, anomaly, reason)


# -- thresholds files ---------------------------------------------------------------------


def default_thresholds_path() -> Path:
    """The shipped thresholds file."""
    return Path(str(resources.files("gasnet_plugin.data").joinpath(DEFAULT_THRESHOLDS)))


def write_thresholds(thresholds: FlagThresholds, path: str | os.PathLike[str]) -> Path:
    """Validate against the ``flag_thresholds`` schema and write (atomically)."""
    from gasnet_plugin.io.asdf_extension import THRESHOLDS_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import write_validated

    return write_validated({"flag_thresholds": thresholds.as_tree()}, path,
                           THRESHOLDS_SCHEMA_URI, ThresholdsError, "thresholds")


def read_thresholds(path: str | os.PathLike[str] = "default") -> FlagThresholds:
    """Read and validate a thresholds file (``"default"``: the shipped one)."""
    from gasnet_plugin.io.asdf_extension import THRESHOLDS_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import read_validated

    path = default_thresholds_path() if str(path) == "default" else Path(path)
    if not path.is_file():
        raise ThresholdsError(f"{path}: no such thresholds file")

    def extract(af: Any) -> FlagThresholds:
        tree = af["flag_thresholds"]
        values = [float(tree[k]) for k in ("low_snr", "large_chi2", "degenerate",
                                             "z_disagree", "low_prob", "class_doubt")]
        if not np.all(np.isfinite(values)):
            raise ThresholdsError(f"{path}: thresholds must be finite numbers, got {values}")
        edges = [float(e) for e in tree["snr_edges"]]
        if edges != [float(e) for e in SNR_EDGES[1:-1]]:
            raise ThresholdsError(f"{path}: S/N bins {edges} are not {SNR_EDGES[1:-1]}")
        return FlagThresholds(
            **{k: float(tree[k]) for k in ("low_snr", "large_chi2", "degenerate",
                                            "z_disagree", "low_prob", "class_doubt", "rate")},
            chi2_median={k: np.array(v) for k, v in tree["chi2_median"].items()},
            chi2_scatter={k: np.array(v) for k, v in tree["chi2_scatter"].items()},
            score_quantiles={k: np.array(v, float)
                             for k, v in tree.get("score_quantiles", {}).items()},
            n_good=int(tree.get("n_good", 0)),
            provenance=dict(tree["provenance"]))

    return read_validated(path, THRESHOLDS_SCHEMA_URI, extract, ThresholdsError,
                          "gasnet thresholds file")


# -- the stage ----------------------------------------------------------------------------


class FlagAnomalyStage(Stage):
    """ZWARN bits and anomaly scores from what the earlier stages measured."""

    name = "flag-anomaly"
    summary = "anomaly scores and ZWARN bits (low S/N, large chi2, degeneracy, disagreements)"
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "thresholds": {"type": "string", "default": "default",
                       "description": "thresholds file from gasnet calibrate-flags, or "
                                      "'default' (shipped, calibrated on real spectra)"},
        **{name: {"type": ["number", "null"], "default": None,
                  "description": text + " (null = the thresholds file's value)"}
           for name, text in (
               ("low_snr", "LOW_SNR below this median S/N per pixel"),
               ("large_chi2", "LARGE_CHI2 above this SCORE_CHI2"),
               ("degenerate", "DEGENERATE above this SCORE_DEGENERATE (-log10 R)"),
               ("z_disagree", "Z_DISAGREE above this SCORE_ZDIFF (sigmas)"),
               ("low_prob", "LOW_PROB below this classifier top probability"))},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.thresholds: FlagThresholds | None = None

    def setup(self, context: RunContext) -> None:
        from gasnet_plugin.host.config import ConfigError

        try:
            thresholds = read_thresholds(self.params["thresholds"])
        except ThresholdsError as exc:
            raise ConfigError(f"stage 'flag-anomaly': {exc}") from None
        for name in ("low_snr", "large_chi2", "degenerate", "z_disagree", "low_prob"):
            if self.params[name] is not None:
                if not np.isfinite(float(self.params[name])):
                    raise ConfigError(f"stage 'flag-anomaly': {name} must be a finite "
                                      f"number, not {self.params[name]}")
                setattr(thresholds, name, float(self.params[name]))
        self.thresholds = thresholds

    def process(self, batch: SpectrumBatch) -> None:
        if self.thresholds is None:
            raise RuntimeError("flag-anomaly: setup() was not called")
        flags = apply_flags(batch.rows, self.thresholds)
        for name in SCORES:
            batch.rows[name] = flags.scores[name].astype(np.float32)
        batch.rows["SCORE_CHI2"].description = "robust z-score of RCHI2 for its class and S/N"
        batch.rows["SCORE_DEGENERATE"].description = "-log10 of GaSNet-III's R (0: one minimum)"
        batch.rows["SCORE_ZDIFF"].description = "|Z - CNN_Z| / sqrt(ZERR^2 + CNN_ZERR^2)"
        batch.rows["SCORE_CLASS"].description = "1 - classifier probability of SPECTYPE"
        batch.rows["ANOMALY_SCORE"] = flags.anomaly_score.astype(np.float32)
        batch.rows["ANOMALY_SCORE"].description = ("sigmas: how rare the rarest score is among "
                                                   "right calibration spectra (rank by it)")
        batch.rows["ANOMALY_REASON"] = flags.anomaly_reason.astype(str)
        batch.rows["ANOMALY_REASON"].description = "the score that gives ANOMALY_SCORE"
        for bit, rows in flags.bits.items():
            if rows.any():
                batch.flag(rows, bit, list(flags.reasons[bit][rows]))


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(FlagAnomalyStage)
