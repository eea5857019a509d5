"""The redshift-scan stage: class, redshift and candidates from a swappable engine.

The engine is chosen by name from the engine registry (``gasnet3``, the default, or any
engine a plugin registers). The stage hands the engine the usable spectra of the batch on
the common grid, writes the engine's columns into the results table (fill values for rows
it could not measure), sets the engine's ZWARN bits with their reasons, and leaves the fit
in ``batch.products["redshift"]`` for the reconstruct stage.

Columns (Redrock/DESI names): ``Z``, ``ZERR``, ``SPECTYPE``, ``SUBTYPE``, ``CHI2``,
``DELTACHI2``, plus what the engine adds (gasnet3: ``NPIXELS``, ``RCHI2``,
``DEGENERACY``, ``COEFF``, ``CAND_SPECTYPE``, ``CAND_Z``, ``CAND_CHI2``), ``ENGINE`` and
``MODEL``.

**The class decision lives here.** An engine that fits every class (gasnet3) returns each
class's best solution; the stage writes them (``Z_<CLASS>``, ``ZERR_<CLASS>``,
``CHI2_<CLASS>``) and, with ``decision`` set (the shipped parameters by default) and the
classify stage before it, weighs them with the classifier's probabilities and regressor
(:mod:`gasnet_plugin.class_decision`) into ``SPECTYPE``, ``Z``, ``ZERR`` (systematic term
included), ``CHI2``, ``RCHI2``, ``COEFF`` and ``PROB_<CLASS>``. The engine's own
lowest-χ² answer stays in ``SCAN_SPECTYPE``, ``SCAN_Z`` and ``SCAN_ZERR``; ``decision:
none`` (or a pipeline without the classify stage: the weights were fitted with its
probabilities) keeps it as the answer (GaSNet-III's rule). The decision sits in this stage, not a
stage of its own, because the answer and the fit belong together: the model spectrum the
reconstruct stage shows, the solution's ZWARN bits (``Z_AT_EDGE``, ``BAD_FIT``) and the
columns later stages read are those of the decided class, and every stage after this one
sees one consistent answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import (
    REQUIRED_COLUMNS,
    SOLUTION_BITS,
    EngineInput,
    EngineResult,
)
from gasnet_plugin.stages.base import RunContext, Stage
from gasnet_plugin.stages.classify import probability_column
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.class_decision import ClassDecision
    from gasnet_plugin.engines.protocol import RedshiftEngine
    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.plugins import PluginHost
    from gasnet_plugin.host.registry import Registry

DESCRIPTIONS = {
    "Z": "redshift",
    "ZERR": "1-sigma redshift error (from the curvature of chi2)",
    "SPECTYPE": "class of the best fit (GALAXY, QSO, STAR)",
    "SUBTYPE": "subclass of the best fit ('' if the engine gives none)",
    "CHI2": "chi2 of the best fit",
    "DELTACHI2": "chi2 difference to the best solution more than 1000 km/s away",
    "NPIXELS": "valid pixels in the fit",
    "RCHI2": "reduced chi2 of the best fit",
    "DEGENERACY": "GaSNet-III degeneracy R of the best class's chi2 curve (-1: one minimum)",
    "COEFF": "eigenspectra coefficients of the best fit (preprocessed units)",
    "CAND_SPECTYPE": "candidate classes, best first",
    "CAND_Z": "candidate redshifts, best first",
    "CAND_CHI2": "candidate chi2, best first",
    "CNN_ZSPREAD": "spread (std) of the cnn regressor's heads, ln(1+z)",
    "SCAN_SPECTYPE": "the engine's lowest-chi2 class (before the class decision)",
    "SCAN_Z": "the engine's redshift of SCAN_SPECTYPE",
    "SCAN_ZERR": "the engine's statistical error of SCAN_Z",
    "ENGINE": "redshift engine",
    "MODEL": "model the engine used",
}


@dataclass
class RedshiftFit:
    """What the scan leaves for later stages: the engine's result for ``rows`` of the
    batch (indices into the batch, ``(B,)``)."""

    rows: np.ndarray
    result: EngineResult


def _fill(array: np.ndarray, n_rows: int) -> np.ndarray:
    """An ``(n_rows, ...)`` array like ``array`` full of its missing-value fill."""
    shape = (n_rows, *array.shape[1:])
    if array.dtype.kind == "f":
        return np.full(shape, np.nan, dtype=array.dtype)
    if array.dtype.kind in "iu":
        return np.full(shape, -1, dtype=array.dtype)
    if array.dtype.kind == "b":
        return np.zeros(shape, dtype=bool)
    return np.full(shape, "", dtype=array.dtype)


class RedshiftScanStage(Stage):
    """Measure class and redshift of every spectrum with a registered engine."""

    name = "redshift-scan"
    summary = "class, redshift, error, chi2, delta-chi2 and candidates from a redshift engine"
    requires: ClassVar[tuple[str, ...]] = ("resample",)
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "engine": {"type": "string", "default": "gasnet3",
                   "description": "registered redshift engine (gasnet stages lists them)"},
        "engine_params": {"type": "object", "default": {},
                          "description": "the engine's parameters (see its listing)"},
        "decision": {"type": "string", "default": "default",
                     "description": "class-decision parameters file, 'default' (shipped, "
                                    "fitted on real spectra) or 'none' (the engine's "
                                    "lowest-chi2 class is the answer)"},
    }
    arrays: ClassVar[dict[str, str]] = {
        "chi2_curves": "chi2 per class and redshift, (N, C, S) float32 padded with NaN; "
                       "classes and redshifts in the archive's axes",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.engine: RedshiftEngine | None = None
        self.decision: ClassDecision | None = None
        self._want_curves = False

    def bind(self, plugins: PluginHost) -> None:
        from gasnet_plugin.host.config import ConfigError

        engine_class = plugins.engines.get(self.params["engine"])
        try:
            self.engine = engine_class(**self.params["engine_params"])
        except ConfigError as exc:
            raise ConfigError(f"stage 'redshift-scan': {exc}") from None

    def setup(self, context: RunContext) -> None:
        if self.engine is None:
            self.bind(context.plugins)
        self.engine.setup(context)
        if self.params["decision"] != "none":
            from gasnet_plugin.class_decision import DecisionError, read_decision
            from gasnet_plugin.host.config import ConfigError

            try:
                self.decision = read_decision(self.params["decision"])
            except DecisionError as exc:
                raise ConfigError(f"stage 'redshift-scan': {exc}") from None
        self._want_curves = "chi2_curves" in context.options.get("output", {}).get("arrays", [])

    def check_grid(self, loglam: np.ndarray) -> None:
        check = getattr(self.engine, "check_grid", None)
        if check is not None and getattr(self.engine, "model", None) is not None:
            check(np.asarray(loglam))

    def process(self, batch: SpectrumBatch) -> None:
        if batch.spectrum is None:
            raise RuntimeError("redshift-scan needs the resample stage before it")
        n_rows = len(batch)
        usable = batch.usable & (np.asarray(batch.rows["NPIX_VALID"]) > 0)
        rows = np.flatnonzero(usable)
        ivar = batch.spectrum.uncertainty.array
        result = self.engine.measure(EngineInput(
            flux=np.asarray(batch.spectrum.flux.value)[rows], ivar=np.asarray(ivar)[rows],
            loglam=batch.spectrum.meta["loglam"], want_curves=self._want_curves))
        missing = [name for name in REQUIRED_COLUMNS if name not in result.columns]
        if missing:
            raise RuntimeError(f"engine {self.engine.name!r} returned no {missing}")
        if result.class_best:
            self._class_columns(result)
            if self.decision is not None:
                self._decide(batch, rows, result)
        for name, values in result.columns.items():
            values = np.asarray(values)
            column = _fill(values, n_rows)
            column[rows] = values
            batch.rows[name] = column
            batch.rows[name].description = DESCRIPTIONS.get(name, "")
        batch.rows["ENGINE"] = np.full(n_rows, self.engine.name)
        batch.rows["ENGINE"].description = DESCRIPTIONS["ENGINE"]
        model = getattr(self.engine, "model", None)
        batch.rows["MODEL"] = np.full(n_rows, getattr(model, "name", "") or "")
        batch.rows["MODEL"].description = DESCRIPTIONS["MODEL"]
        for bit in ZWarn:
            hit = (result.zwarn & int(bit)) != 0
            if hit.any():
                reason = result.reasons.get(int(bit), bit.name)
                if not isinstance(reason, str):
                    reason = [str(r) for r in np.asarray(reason)[hit]]
                batch.flag(rows[hit], bit, reason)
        batch.products["redshift"] = RedshiftFit(rows=rows, result=result)
        if self._want_curves:
            self._store_curves(batch, rows, result)

    @staticmethod
    def _class_columns(result: EngineResult) -> None:
        """Every class's best solution as columns, and the engine's own answer kept."""
        for name, best in result.class_best.items():
            result.columns[f"Z_{name}"] = best.z
            result.columns[f"ZERR_{name}"] = best.zerr
            result.columns[f"CHI2_{name}"] = best.chi2
            DESCRIPTIONS.setdefault(f"Z_{name}", f"best redshift of the {name} fit")
            DESCRIPTIONS.setdefault(f"ZERR_{name}", f"statistical 1-sigma error of Z_{name}")
            DESCRIPTIONS.setdefault(f"CHI2_{name}", f"chi2 of the best {name} fit")
        for name in ("SPECTYPE", "Z", "ZERR"):
            result.columns[f"SCAN_{name}"] = np.asarray(result.columns[name]).copy()

    def _decide(self, batch: SpectrumBatch, rows: np.ndarray, result: EngineResult) -> None:
        """Replace the engine's answer by the class decision's (columns, ZWARN bits of the
        solution, model), and add ``PROB_<CLASS>``."""
        from gasnet_plugin.class_decision import evidence_from_engine

        classes = list(result.class_best)
        probability = {c: np.asarray(batch.rows[probability_column(c)], float)[rows]
                       for c in classes if probability_column(c) in batch.rows.colnames}
        if not probability:
            # fitted with the classifier's probabilities: without them the weights do not
            # hold, and the engine's answer stands
            return
        cnn_z = cnn_zerr = None
        if "CNN_Z" in batch.rows.colnames and "CNN_ZERR" in batch.rows.colnames:
            cnn_z = np.asarray(batch.rows["CNN_Z"], float)[rows]
            cnn_zerr = np.asarray(batch.rows["CNN_ZERR"], float)[rows]
        n_valid = np.asarray(batch.rows["NPIX_VALID"])[rows]
        evidence = evidence_from_engine(result.class_best, n_valid, probability, cnn_z,
                                        cnn_zerr)
        decided = self.decision.predict(evidence)
        measured = decided.index >= 0
        pick = np.maximum(decided.index, 0)
        row_index = np.arange(rows.size)
        columns = result.columns
        best = [result.class_best[c] for c in classes]
        chi2 = np.stack([b.chi2 for b in best], axis=1)[row_index, pick]
        coef_width = max(b.coef.shape[1] for b in best)
        for name, value in (("SPECTYPE", decided.spectype), ("Z", decided.z),
                            ("ZERR", decided.zerr), ("CHI2", chi2)):
            columns[name] = np.where(measured, value, columns[name])
        if "RCHI2" in columns:
            k = np.array([b.n_coef for b in best])[pick]
            columns["RCHI2"] = np.where(measured, chi2 / np.maximum(n_valid - k, 1),
                                        columns["RCHI2"])
        if "COEFF" in columns and np.shape(columns["COEFF"])[1] == coef_width:
            coef = np.stack([b.coef for b in best], axis=1)[row_index, pick]
            columns["COEFF"] = np.where(measured[:, None], coef, columns["COEFF"]).astype(
                np.asarray(columns["COEFF"]).dtype)
        for c, name in enumerate(classes):
            columns[f"PROB_{name}"] = decided.probability[:, c].astype(np.float32)
            DESCRIPTIONS.setdefault(f"PROB_{name}",
                                    f"posterior probability of {name} (class decision)")
        solution = np.stack([b.zwarn for b in best], axis=1)[row_index, pick]
        result.zwarn = np.where(measured, (result.zwarn & ~int(SOLUTION_BITS)) | solution,
                                result.zwarn)
        close = decided.close
        if close.any():
            result.zwarn[close] |= int(ZWarn.CLASS_UNCERTAIN)
            top = decided.probability[row_index, pick]
            result.reasons[int(ZWarn.CLASS_UNCERTAIN)] = np.array(
                [f"class decision close: P({t}) = {p:.2f} < "
                 f"{self.decision.min_probability:g}" for t, p in
                 zip(decided.spectype, top, strict=True)], dtype=object)
        if result.model is not None and all(b.model is not None for b in best):
            model = np.stack([b.model for b in best], axis=1)[row_index, pick]
            result.model = np.where(measured[:, None], model, result.model)

    @staticmethod
    def _store_curves(batch: SpectrumBatch, rows: np.ndarray, result: EngineResult) -> None:
        classes = list(result.curve_z)
        length = max(z.size for z in result.curve_z.values())
        curves = np.full((len(batch), len(classes), length), np.nan, dtype=np.float32)
        z = np.full((len(classes), length), np.nan)
        for c, name in enumerate(classes):
            size = result.curve_z[name].size
            curves[rows, c, :size] = result.curves[name]
            z[c, :size] = result.curve_z[name]
        batch.arrays["chi2_curves"] = curves
        batch.array_axes["chi2_curves"] = {"classes": classes, "z": z}


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(RedshiftScanStage)
