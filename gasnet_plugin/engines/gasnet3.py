"""The ``gasnet3`` engine: GaSNet-III's eigenspectra χ² scan over every class and redshift.

For a batch of ``B`` spectra on the model's observed grid (``N`` pixels):

1. **Preprocess** as GaSNet-III does (:mod:`~gasnet_plugin.engines.eigen_preprocess`):
   polynomial continuum subtracted, fluctuation normalised to unit RMS.
2. **Encode and scan** (:mod:`~gasnet_plugin.engines.eigen_scan`): each class's encoder
   gives the model ``m_c = amp · coef @ E_c`` on the rest-frame grid, and FFT correlations
   give its χ² at every lag (on the CPU a class with few lags, the default model's STAR,
   is summed directly: :mod:`~gasnet_plugin.engines.direct_chi2_kernels`).
   ``lags="range"`` scans the full-overlap lags ``s = 0 .. L − N``, i.e. exactly
   ``z_max .. z_min``.
3. **Every class's best** (beyond GaSNet-III, :mod:`~gasnet_plugin.engines.eigen_refit`):
   the lowest minimum of each class's own curve is refitted exactly (the class's K
   coefficients by ivar-weighted least squares, walking to a better neighbouring lag,
   a parabola for the sub-pixel z and its curvature for ZERR). A class's best is kept
   whatever its rank, with its exact χ² and model
   (:class:`~gasnet_plugin.engines.protocol.ClassBest`), so the class
   decision compares classes on equal terms.
4. **Candidates** (:mod:`~gasnet_plugin.engines.candidates`): the lowest local minima of
   the classes' lower envelope, each more than ``min_velocity_separation`` km/s from the
   better ones; the best ``n_refit`` fitted exactly at their lag (a candidate that beats
   its class's best becomes the class's best, refined). The list always holds every
   class's best (when ``n_candidates`` ≥ the number of classes), ranked by χ².
   ``SPECTYPE``/``Z`` are the lowest-χ² class best (GaSNet-III's rule, on exact χ²);
   ``DELTACHI2`` is the χ² difference to the best candidate more than the separation
   away; GaSNet-III's degeneracy ``R`` is ``DEGENERACY``.

Everything is batched torch on the configured device, except that on the CPU the exact
fits and the candidate picking run as compiled (numba) passes over the spectra
(:mod:`~gasnet_plugin.engines.exact_fit_kernels`, :mod:`~gasnet_plugin.engines.candidates`;
the torch versions are their reference): no Python loop per spectrum or per redshift
(loops run over classes and candidate ranks only). This module holds the engine's
parameters and set-up; :mod:`~gasnet_plugin.engines.gasnet3_measure` measures, and torch
loads only when the engine is set up, so that listing plugins stays quick.

GaSNet-III: Zhong et al., arXiv:2412.21130 (MIT-licensed code, github.com/Fucheng-Zhong/
GaSNet-III); see ``gasnet_plugin/data/LICENSE-GaSNet-III``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import EngineInput, EngineResult, RedshiftEngine

if TYPE_CHECKING:
    import torch

    from gasnet_plugin.engines.eigen_scan import ClassScan
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.models.eigen_model import EigenModel
    from gasnet_plugin.stages.base import RunContext


class Gasnet3Engine(RedshiftEngine):
    """GaSNet-III eigenspectra χ² scan with sub-pixel refit, ZERR, DELTACHI2 and candidates."""

    name = "gasnet3"
    summary = ("GaSNet-III eigenspectra χ² scan over every class and redshift (FFT), with "
               "refit, sub-pixel z, ZERR and DELTACHI2")
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "model": {"type": "string", "default": "default",
                  "description": "model file (ASDF) or 'default' (the shipped SDSS model)"},
        "classes": {"type": "array", "items": {"type": "string"}, "default": [],
                    "description": "classes to scan (empty: every class of the model)"},
        "n_candidates": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5,
                         "description": "candidates (class, z, χ²) kept per spectrum"},
        "n_refit": {"type": "integer", "minimum": 0, "maximum": 20, "default": 3,
                    "description": "best candidates refitted exactly (0: GaSNet-III's "
                                   "encoder χ² only, z on the pixel grid)"},
        "min_velocity_separation": {"type": "number", "exclusiveMinimum": 0,
                                    "default": 1000.0,
                                    "description": "km/s between distinct candidates "
                                                   "(and for DELTACHI2)"},
        "small_delta_chi2": {"type": "number", "minimum": 0, "default": 9.0,
                             "description": "DELTACHI2 below this sets SMALL_DELTA_CHI2"},
        "masked_flux": {"enum": ["continuum", "keep"], "default": "continuum",
                        "description": "flux of pixels with ivar 0 before encoding: the "
                                       "continuum, or kept as given (GaSNet-III)"},
        "min_valid_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                               "description": "fewer valid pixels than this fraction of the "
                                              "grid sets LITTLE_DATA"},
        "chunk_rows": {"type": "integer", "minimum": 1, "default": 64,
                       "description": "most spectra scanned together (a batch is measured "
                                      "in equal chunks of at most this many: memory and "
                                      "cache; results agree to float precision)"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model: EigenModel | None = None
        self.device: torch.device | None = None      # set by setup()
        self._scans: list[ClassScan] = []
        self._offsets = np.zeros(0, dtype=np.int64)

    # -- setup ----------------------------------------------------------------------------

    def setup(self, context: RunContext | None = None, model: EigenModel | None = None,
              device: str | None = None) -> None:
        """Load the model and move encoders and eigenspectra to the device."""
        # torch and the model code load here, not when the plugin registers (start-up)
        import torch

        from gasnet_plugin.engines.eigen_scan import (
            ClassScan,
            ClassSpectra,
            direct_is_cheaper,
            fast_length,
        )
        from gasnet_plugin.models.eigen_model import build_encoder, load_model

        self.model = model or load_model(self.params["model"])
        self.device = torch.device(device or (context.device if context else "cpu"))
        wanted = self.params["classes"] or self.model.classes
        unknown = sorted(set(wanted) - set(self.model.classes))
        if unknown:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(f"redshift engine 'gasnet3': classes {unknown} not in model "
                              f"{self.model.name!r} (it has {', '.join(self.model.classes)})")
        self._scans = []
        # one FFT length for every class (the longest's): the spectra are transformed once
        n_fft = fast_length(max(t.rest_loglam.size for t in self.model.templates))
        n_obs = self.model.obs_loglam.size
        on_cpu = self.device.type == "cpu"
        for template in self.model.templates:
            if template.name not in wanted:
                continue
            eigenvectors = torch.from_numpy(template.eigenvectors).to(self.device)
            z_lag = self.model.z_of_lag(template)
            self._scans.append(ClassScan(
                template=template,
                encoder=build_encoder(template).to(self.device),
                eigenvectors=eigenvectors,
                rest_loglam=torch.from_numpy(template.rest_loglam).to(self.device),
                z_lag=z_lag,
                transforms=ClassSpectra.from_eigenvectors(eigenvectors, n_fft),
                summed=on_cpu and direct_is_cheaper(z_lag.size, n_obs,
                                                    eigenvectors.shape[0], n_fft)))
        per_lag = math.log(10) * self.model.dloglam
        top = max(math.log1p(scan.z_lag[0]) for scan in self._scans)
        self._offsets = np.array([round((top - math.log1p(scan.z_lag[0])) / per_lag)
                                  for scan in self._scans], dtype=np.int64)
        if on_cpu:   # numba loads here, once, not with the first batch
            from gasnet_plugin.engines import candidates, direct_chi2_kernels, exact_fit_kernels

            candidates.load_kernels()
            if any(scan.summed for scan in self._scans):
                direct_chi2_kernels.load_kernels()
            if self.params["n_refit"]:
                exact_fit_kernels.load_kernels()

    @property
    def classes(self) -> list[str]:
        """The classes scanned, in model order."""
        return [scan.template.name for scan in self._scans]

    def check_grid(self, loglam: np.ndarray) -> None:
        """Refuse a batch grid the model was not made for (length or > 0.5 px offset)."""
        obs = self.model.obs_loglam
        if loglam.shape != obs.shape or np.max(np.abs(loglam - obs)) > 0.5 * self.model.dloglam:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(
                f"model {self.model.name!r} takes {obs.size} pixels from "
                f"{10**obs[0]:.1f} to {10**obs[-1]:.1f} Å at {self.model.dloglam:.6g} dex; "
                f"the batch grid has {loglam.size} pixels from {10**loglam[0]:.1f} to "
                f"{10**loglam[-1]:.1f} Å: set the resample stage to the model's grid")

    # -- measuring ------------------------------------------------------------------------

    def measure(self, spectra: EngineInput) -> EngineResult:
        """Class, redshift, error, χ², Δχ² and candidates for every spectrum."""
        if self.model is None:
            self.setup()
        self.check_grid(spectra.loglam)
        n_rows = spectra.flux.shape[0]
        if n_rows == 0:
            return self._empty_result(spectra)
        # chunks: the scan's temporaries grow with the rows (~1.7 MB per spectrum); 64
        # rows keep them in cache and out of the allocator's way (docs/scale.rst). Equal
        # parts: 80 rows as 40 + 40, not 64 + 16, whose small chunk pays the per-chunk
        # costs for few rows (docs/benchmarks.rst)
        n_parts = -(-n_rows // self.params["chunk_rows"])
        bounds = np.linspace(0, n_rows, n_parts + 1).round().astype(int)
        return EngineResult.concatenate([
            self._measure(EngineInput(spectra.flux[start:stop], spectra.ivar[start:stop],
                                      spectra.loglam, spectra.want_curves))
            for start, stop in itertools.pairwise(bounds)])

    def _empty_result(self, spectra: EngineInput) -> EngineResult:
        """A result for zero spectra with the usual columns, dtypes and shapes (measured on
        one flat placeholder spectrum and cut to zero rows)."""
        n_pix = spectra.loglam.size
        one = EngineInput(np.ones((1, n_pix), np.float32), np.ones((1, n_pix), np.float32),
                          spectra.loglam, spectra.want_curves)
        result = self._measure(one)
        result.columns = {k: np.asarray(v)[:0] for k, v in result.columns.items()}
        result.zwarn = result.zwarn[:0]
        result.reasons = {k: (v if isinstance(v, str) else np.asarray(v)[:0])
                          for k, v in result.reasons.items()}
        result.model = None if result.model is None else result.model[:0]
        result.curves = {k: v[:0] for k, v in result.curves.items()}
        return result

    def _measure(self, spectra: EngineInput) -> EngineResult:
        """One chunk of spectra (:func:`~gasnet_plugin.engines.gasnet3_measure.measure_chunk`)."""
        import torch

        from gasnet_plugin.engines.gasnet3_measure import measure_chunk
        from gasnet_plugin.models.float32_precision import full_float32

        with torch.no_grad(), full_float32():
            return measure_chunk(self, spectra)


@hookimpl
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    registry.add(Gasnet3Engine)
