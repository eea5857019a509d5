"""Score a results archive against the truth: what ``gasnet evaluate`` prints and writes.

The truth is, by default, the survey labels the readers put in the archive
(``SURVEY_CLASS``, ``SURVEY_Z``); a CSV shaped like ``../shared/data/labels.csv`` (columns
``path`` — a file, ``file#rowN`` for a table row, or ``file#N`` with ``fiber`` = TARGETID
for DESI —, ``cls``, ``z``) can replace it. Rows without a truth (no label, or a fatal
ZWARN bit from reading) are left out of the scores and counted.

Everything is computed from the results table alone; the metrics are those of
:mod:`gasnet_plugin.metrics` (DESIGN.md).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from gasnet_plugin.metrics import class_accuracy, confusion_matrix, delta_z, redshift_metrics
from gasnet_plugin.zwarning import ZWarn

CLASSES = ("GALAXY", "QSO", "STAR")
SNR_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, np.inf)
"""Edges of the S/N bins (median flux·sqrt(ivar) per pixel on the common grid)."""
WRONG_DZ = 0.0033
"""A redshift is wrong when Δz exceeds this (≈ 1000 km/s)."""


@dataclass
class Truth:
    """Per results row: the true class, redshift and subclass (``""``/NaN where unknown)."""

    spectype: np.ndarray
    z: np.ndarray
    source: str
    subclass: np.ndarray | None = None

    @property
    def known(self) -> np.ndarray:
        return (self.spectype != "") & np.isfinite(self.z)


def truth_from_archive(results: Table) -> Truth:
    """The survey labels in the archive (``SURVEY_CLASS``, ``SURVEY_Z``)."""
    spectype = np.array([str(c).strip().upper() for c in results["SURVEY_CLASS"]], dtype=object)
    z = np.asarray(results["SURVEY_Z"], dtype=float)
    subclass = np.array([str(c).strip() for c in results["SURVEY_SUBCLASS"]], dtype=object) \
        if "SURVEY_SUBCLASS" in results.colnames else np.full(len(results), "", dtype=object)
    return Truth(spectype=spectype, z=z, source="SURVEY_* columns of the archive",
                 subclass=subclass)


def truth_from_csv(results: Table, path: str | os.PathLike[str],
                   root: str | os.PathLike[str] | None = None) -> Truth:
    """Match a labels CSV to the results rows (see the module docstring).

    ``root`` is the folder the CSV's paths are relative to (default: the CSV's folder).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    spectype = np.full(len(results), "", dtype=object)
    z = np.full(len(results), np.nan)
    subclass = np.full(len(results), "", dtype=object)
    sources = [str(Path(str(s)).resolve()) for s in results["SOURCE"]]
    rows_of: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        rows_of.setdefault(source, []).append(index)
    with open(path, newline="") as handle:
        for label in csv.DictReader(handle):
            file, _, anchor = label["path"].partition("#")
            candidates = rows_of.get(str((root / file).resolve()), [])
            if anchor.startswith("row"):
                candidates = [i for i in candidates if results["ROW"][i] == int(anchor[3:])]
            elif anchor and label.get("fiber"):
                candidates = [i for i in candidates
                              if results["TARGETID"][i] == int(label["fiber"])]
            for index in candidates[:1]:
                spectype[index] = label["cls"].strip().upper()
                z[index] = float(label["z"])
                subclass[index] = (label.get("subclass") or "").strip()
    return Truth(spectype=spectype, z=z, source=str(path), subclass=subclass)


@dataclass
class Evaluation:
    """Scores of one archive (see :func:`evaluate`). ``as_dict`` is JSON-ready."""

    truth: str
    n_rows: int
    n_scored: int
    redshift: dict[str, dict[str, Any]] = field(default_factory=dict)
    classification: dict[str, Any] = field(default_factory=dict)
    snr_bins: list[dict[str, Any]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _redshift_summary(z: np.ndarray, z_true: np.ndarray, z_err: np.ndarray) -> dict[str, Any]:
    m = redshift_metrics(z, z_true, z_err)
    return {"n": m.n, "GF_0.0033": m.gf[0.0033], "GF_0.001": m.gf[0.001], "MAD": m.mad,
            "NMAD": m.nmad, "MAE": m.mae, "catastrophic_0.01": m.catastrophic[0.01],
            "catastrophic_0.0033": m.catastrophic[0.0033], "within_1sigma": m.within_1sigma}


def evaluate(results: Table, truth: Truth | None = None,
             classes: Sequence[str] = CLASSES) -> Evaluation:
    """Redshift metrics per class and overall, the confusion matrix, σ calibration, the
    metrics in S/N bins and the precision of every ZWARN bit.

    A row counts as *wrong* when its class differs from the truth or Δz > 0.0033; for each
    bit the table gives how many scored rows it flags, the wrong fraction among them and
    among the rows it does not flag, and their ratio.
    """
    truth = truth or truth_from_archive(results)
    z = np.asarray(results["Z"], dtype=float) if "Z" in results.colnames \
        else np.full(len(results), np.nan)
    z_err = np.asarray(results["ZERR"], dtype=float) if "ZERR" in results.colnames \
        else np.full(len(results), np.nan)
    spectype = np.array([str(s) for s in results["SPECTYPE"]], dtype=object) \
        if "SPECTYPE" in results.colnames else np.full(len(results), "", dtype=object)
    zwarn = np.asarray(results["ZWARN"], dtype=np.int64)
    scored = truth.known
    evaluation = Evaluation(truth=truth.source, n_rows=len(results), n_scored=int(scored.sum()))

    for name in ("ALL", *classes):
        pick = scored & ((truth.spectype == name) if name != "ALL" else True)
        evaluation.redshift[name] = _redshift_summary(z[pick], truth.z[pick], z_err[pick])

    matrix = confusion_matrix(list(truth.spectype[scored]), list(spectype[scored]), classes)
    per_class = {c: class_accuracy(list(truth.spectype[scored & (truth.spectype == c)]),
                                   list(spectype[scored & (truth.spectype == c)]))
                 for c in classes}
    evaluation.classification = {
        "classes": list(classes), "confusion": matrix.tolist(),
        "accuracy": class_accuracy(list(truth.spectype[scored]), list(spectype[scored])),
        "accuracy_per_class": per_class}

    snr = np.asarray(results["SNR_MEDIAN"], dtype=float) if "SNR_MEDIAN" in results.colnames \
        else np.full(len(results), np.nan)
    for low, high in itertools.pairwise(SNR_BINS):
        pick = scored & (snr >= low) & (snr < high)
        summary = _redshift_summary(z[pick], truth.z[pick], z_err[pick])
        summary["class_accuracy"] = class_accuracy(list(truth.spectype[pick]),
                                                   list(spectype[pick]))
        evaluation.snr_bins.append({"snr_low": low, "snr_high": high, **summary})

    with np.errstate(invalid="ignore"):
        dz = np.where(np.isfinite(z), delta_z(z, truth.z), np.inf)
    wrong = (spectype != truth.spectype) | (dz > WRONG_DZ)
    for bit in ZWarn:
        flagged = scored & ((zwarn & int(bit)) != 0)
        clean = scored & ~flagged
        rate_flagged = float(wrong[flagged].mean()) if flagged.any() else float("nan")
        rate_clean = float(wrong[clean].mean()) if clean.any() else float("nan")
        evaluation.flags.append({
            "bit": bit.name, "value": int(bit), "n_flagged": int(flagged.sum()),
            "wrong_if_flagged": rate_flagged, "wrong_if_not": rate_clean,
            "ratio": rate_flagged / rate_clean if rate_clean > 0 else float("nan")})
    any_flag = scored & (zwarn != 0)
    evaluation.flags.append({
        "bit": "ANY", "value": -1, "n_flagged": int(any_flag.sum()),
        "wrong_if_flagged": float(wrong[any_flag].mean()) if any_flag.any() else float("nan"),
        "wrong_if_not": float(wrong[scored & ~any_flag].mean())
        if (scored & ~any_flag).any() else float("nan"),
        "ratio": float("nan")})
    if np.isfinite(evaluation.flags[-1]["wrong_if_not"]) \
            and evaluation.flags[-1]["wrong_if_not"] > 0:
        evaluation.flags[-1]["ratio"] = (evaluation.flags[-1]["wrong_if_flagged"]
                                         / evaluation.flags[-1]["wrong_if_not"])
    return evaluation


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return "-"
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table."""
    cells = [list(map(str, header))] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_evaluation(evaluation: Evaluation) -> str:
    """The terminal report: four tables."""
    keys = ("n", "GF_0.0033", "GF_0.001", "MAD", "NMAD", "catastrophic_0.01",
            "catastrophic_0.0033", "within_1sigma")
    parts = [f"truth: {evaluation.truth}; {evaluation.n_scored} of {evaluation.n_rows} rows "
             "scored", "",
             text_table([(name, *(m[k] for k in keys))
                         for name, m in evaluation.redshift.items()],
                        ("set", "n", "GF<.0033", "GF<.001", "MAD", "NMAD", "cat>.01",
                         "cat>.0033", "in 1σ")), ""]
    c = evaluation.classification
    parts += [f"class accuracy: {_fmt(c['accuracy'])} ("
              + ", ".join(f"{k} {_fmt(v)}" for k, v in c["accuracy_per_class"].items()) + ")",
              text_table([(t, *row) for t, row in zip(c["classes"], c["confusion"],
                                                      strict=True)],
                         ("label \\ SPECTYPE", *c["classes"])), ""]
    parts += [text_table([(f"{b['snr_low']:g}-{b['snr_high']:g}", b["n"], b["GF_0.0033"],
                           b["MAD"], b["catastrophic_0.01"], b["class_accuracy"])
                          for b in evaluation.snr_bins],
                         ("S/N", "n", "GF<.0033", "MAD", "cat>.01", "class acc")), ""]
    parts += [text_table([(f["bit"], f["n_flagged"], f["wrong_if_flagged"],
                           f["wrong_if_not"], f["ratio"]) for f in evaluation.flags],
                         ("ZWARN bit", "flagged", "wrong if flagged", "wrong if not",
                          "ratio"))]
    return "\n".join(parts)


def write_evaluation(evaluation: Evaluation, path: str | os.PathLike[str]) -> Path:
    """Write the scores as JSON (``.json``) or the redshift table as ECSV (``.ecsv``)."""
    path = Path(path)
    if path.suffix == ".ecsv":
        table = Table(rows=[{"set": k, **v} for k, v in evaluation.redshift.items()])
        table.meta = {k: v for k, v in evaluation.as_dict().items() if k != "redshift"}
        table.write(path, format="ascii.ecsv", overwrite=True)
    else:
        path.write_text(json.dumps(evaluation.as_dict(), indent=2))
    return path
