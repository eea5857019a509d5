"""The reconstruct stage: the best-fit model spectrum and its residual on the common grid.

It uses the fit the redshift-scan stage left in ``batch.products["redshift"]`` (it never
re-runs the scan): the engine's best-fit model in the batch's flux unit, and the residual
``flux − model``. Both go to each spectrum (``batch.spectra()`` puts them in ``meta``) and,
when ``output.arrays`` asks, to the archive. Columns: ``RECON_RCHI2``, the residual's
χ² per valid pixel, and ``RECON_NPIX``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.stages.base import Stage

if TYPE_CHECKING:
    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.registry import Registry


class ReconstructStage(Stage):
    """Attach the best-fit model spectrum and the residual to every measured spectrum."""

    name = "reconstruct"
    summary = "best-fit model spectrum and residual on the common grid (from redshift-scan)"
    requires: ClassVar[tuple[str, ...]] = ("resample", "redshift-scan")
    parameters: ClassVar[dict[str, dict[str, Any]]] = {}
    arrays: ClassVar[dict[str, str]] = {
        "model": "best-fit model spectrum, (N, P), the batch's flux unit; NaN if unmeasured",
        "residual": "flux - model, (N, P); NaN where unmeasured, 0 where ivar is 0",
    }

    def process(self, batch: SpectrumBatch) -> None:
        fit = batch.products.get("redshift")
        if fit is None or batch.spectrum is None:
            raise RuntimeError("reconstruct needs resample and redshift-scan before it")
        flux = np.asarray(batch.spectrum.flux.value, dtype=np.float32)
        ivar = np.asarray(batch.spectrum.uncertainty.array, dtype=np.float32)
        model = np.full(flux.shape, np.nan, dtype=np.float32)
        if fit.result.model is not None and fit.rows.size:
            model[fit.rows] = fit.result.model
        residual = np.where(ivar > 0, flux - model, np.float32(0.0))
        residual[~np.isfinite(model).all(axis=1)] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            npix = (ivar > 0).sum(axis=1)
            rchi2 = np.where(np.isfinite(model).all(axis=1),
                             np.sum(np.where(ivar > 0, residual**2 * ivar, 0.0), axis=1)
                             / np.maximum(npix, 1), np.nan)
        batch.arrays["model"] = model
        batch.arrays["residual"] = residual
        batch.rows["RECON_RCHI2"] = rchi2.astype(np.float32)
        batch.rows["RECON_RCHI2"].description = "chi2 per valid pixel of flux - model"
        batch.rows["RECON_NPIX"] = npix.astype(np.int32)
        batch.rows["RECON_NPIX"].description = "valid pixels of the reconstruction"


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(ReconstructStage)
