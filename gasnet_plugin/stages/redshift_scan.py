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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import REQUIRED_COLUMNS, EngineInput, EngineResult
from gasnet_plugin.stages.base import RunContext, Stage
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
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
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "engine": {"type": "string", "default": "gasnet3",
                   "description": "registered redshift engine (gasnet stages lists them)"},
        "engine_params": {"type": "object", "default": {},
                          "description": "the engine's parameters (see its listing)"},
    }
    arrays: ClassVar[dict[str, str]] = {
        "chi2_curves": "chi2 per class and redshift, (N, C, S) float32 padded with NaN; "
                       "classes and redshifts in the archive's axes",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.engine: RedshiftEngine | None = None
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
        self._want_curves = "chi2_curves" in context.options.get("output", {}).get("arrays", [])

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
