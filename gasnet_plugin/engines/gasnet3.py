"""The ``gasnet3`` engine: GaSNet-III's eigenspectra χ² scan over every class and redshift.

For a batch of ``B`` spectra on the model's observed grid (``N`` pixels):

1. **Preprocess** as GaSNet-III does (:mod:`~gasnet_plugin.engines.eigen_preprocess`):
   polynomial continuum subtracted, fluctuation normalised to unit RMS.
2. **Encode and scan** (:mod:`~gasnet_plugin.engines.eigen_scan`): each class's encoder
   gives the model ``m_c = amp · coef @ E_c`` on the rest-frame grid, and FFT correlations
   give its χ² at every lag. ``lags="range"`` scans the full-overlap lags ``s = 0 .. L − N``,
   i.e. exactly ``z_max .. z_min``.
3. **Every class's best** (beyond GaSNet-III, :mod:`~gasnet_plugin.engines.eigen_refit`):
   the lowest minimum of each class's own curve is refitted exactly (the class's K
   coefficients by ivar-weighted least squares, walking to a better neighbouring lag,
   a parabola for the sub-pixel z and its curvature for ZERR). A class's best is kept
   whatever its rank, with its exact χ² and model (:class:`ClassBest`), so the class
   decision compares classes on equal terms.
4. **Candidates** (:mod:`~gasnet_plugin.engines.candidates`): the lowest local minima of
   the classes' lower envelope, each more than ``min_velocity_separation`` km/s from the
   better ones; the best ``n_refit`` fitted exactly at their lag (a candidate that beats
   its class's best becomes the class's best, refined). The list always holds every
   class's best (when ``n_candidates`` ≥ the number of classes), ranked by χ².
   ``SPECTYPE``/``Z`` are the lowest-χ² class best (GaSNet-III's rule, on exact χ²);
   ``DELTACHI2`` is the χ² difference to the best candidate more than the separation
   away; GaSNet-III's degeneracy ``R`` is ``DEGENERACY``.

Everything is batched torch on the configured device: no Python loop per spectrum or per
redshift (loops run over classes and candidate ranks only).

GaSNet-III: Zhong et al., arXiv:2412.21130 (MIT-licensed code, github.com/Fucheng-Zhong/
GaSNet-III); see ``gasnet_plugin/data/LICENSE-GaSNet-III``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.candidates import (
    local_minima,
    lower_envelope,
    minima_only,
    pick_separated_window,
)
from gasnet_plugin.engines.eigen_preprocess import Preprocessed, preprocess
from gasnet_plugin.engines.eigen_refit import ExactFit, refit
from gasnet_plugin.engines.eigen_scan import (
    ClassScan,
    ClassSpectra,
    chi2_curves,
    chi2_curves_fast,
    encode,
    encode_coefficients,
    fast_length,
    spectra_transforms,
)
from gasnet_plugin.engines.protocol import ClassBest, EngineInput, EngineResult, RedshiftEngine
from gasnet_plugin.models.eigen_model import EigenModel, build_encoder, load_model
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.stages.base import RunContext

C_KMS = 299792.458
"""Speed of light, km/s."""

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
                       "description": "spectra scanned together (a batch is measured in "
                                      "chunks of this many: memory and cache; results "
                                      "agree to float precision)"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model: EigenModel | None = None
        self.device = torch.device("cpu")
        self._scans: list[ClassScan] = []
        self._offsets = np.zeros(0, dtype=np.int64)

    # -- setup ----------------------------------------------------------------------------

    def setup(self, context: RunContext | None = None, model: EigenModel | None = None,
              device: str | None = None) -> None:
        """Load the model and move encoders and eigenspectra to the device."""
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
        for template in self.model.templates:
            if template.name not in wanted:
                continue
            eigenvectors = torch.from_numpy(template.eigenvectors).to(self.device)
            self._scans.append(ClassScan(
                template=template,
                encoder=build_encoder(template).to(self.device),
                eigenvectors=eigenvectors,
                rest_loglam=torch.from_numpy(template.rest_loglam).to(self.device),
                z_lag=self.model.z_of_lag(template),
                transforms=ClassSpectra.from_eigenvectors(eigenvectors, n_fft)))
        per_lag = math.log(10) * self.model.dloglam
        top = max(math.log1p(scan.z_lag[0]) for scan in self._scans)
        self._offsets = np.array([round((top - math.log1p(scan.z_lag[0])) / per_lag)
                                  for scan in self._scans], dtype=np.int64)

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
        # rows keep them in cache and out of the allocator's way (docs/scale.rst)
        size = self.params["chunk_rows"]
        with torch.no_grad():
            return EngineResult.concatenate([
                self._measure(EngineInput(spectra.flux[start:start + size],
                                          spectra.ivar[start:start + size],
                                          spectra.loglam, spectra.want_curves))
                for start in range(0, n_rows, size)])

    def _empty_result(self, spectra: EngineInput) -> EngineResult:
        """A result for zero spectra with the usual columns, dtypes and shapes (measured on
        one flat placeholder spectrum and cut to zero rows)."""
        n_pix = spectra.loglam.size
        one = EngineInput(np.ones((1, n_pix), np.float32), np.ones((1, n_pix), np.float32),
                          spectra.loglam, spectra.want_curves)
        with torch.no_grad():
            result = self._measure(one)
        result.columns = {k: np.asarray(v)[:0] for k, v in result.columns.items()}
        result.zwarn = result.zwarn[:0]
        result.reasons = {k: (v if isinstance(v, str) else np.asarray(v)[:0])
                          for k, v in result.reasons.items()}
        result.model = None if result.model is None else result.model[:0]
        result.curves = {k: v[:0] for k, v in result.curves.items()}
        return result

    def _measure(self, spectra: EngineInput) -> EngineResult:
        device = self.device
        loglam = torch.from_numpy(np.asarray(spectra.loglam, dtype=np.float64)).to(device)
        flux = torch.from_numpy(np.ascontiguousarray(spectra.flux, dtype=np.float32)).to(device)
        ivar = torch.from_numpy(np.ascontiguousarray(spectra.ivar, dtype=np.float32)).to(device)
        n_rows, n_obs = flux.shape
        pre = preprocess(flux, ivar, loglam, self.model.preprocessing["poly_deg"],
                         self.params["masked_flux"])
        curves = self._curves(pre)
        n_refit = min(self.params["n_refit"], self.params["n_candidates"])

        # every class's best: the lowest minimum of its own curve, refitted exactly
        bests = [self._class_best(c, pre, curve, n_refit) for c, curve in enumerate(curves)]

        # candidates: lowest local minima of the envelope, each more than the velocity
        # separation (a whole number of lags) from the better ones
        envelope, envelope_class = lower_envelope(curves, list(self._offsets))
        n_cand = self.params["n_candidates"]
        cand_u, cand_chi2_t = pick_separated_window(minima_only(envelope), n_cand,
                                                    int(self._separation_lags()), in_place=True)
        cand_class = envelope_class.gather(1, cand_u).cpu().numpy()
        cand_lag = cand_u.cpu().numpy() - self._offsets[cand_class]
        cand_chi2 = cand_chi2_t.cpu().numpy()
        found = np.isfinite(cand_chi2)
        cand_lag = np.where(found, cand_lag, 0)
        cand_z = np.where(found, self._z_of(cand_class, cand_lag), np.nan)
        cand_zerr = np.full(cand_z.shape, np.nan)
        # the best n_refit candidates fitted exactly at their lag (those at their class's
        # best are that best); one that beats its class's best becomes it, refined
        separation = self.params["min_velocity_separation"] / C_KMS
        best_z = np.stack([b.z for b in bests], axis=1)                    # (B, C)
        with np.errstate(invalid="ignore"):
            at_best = np.abs(np.log1p(cand_z) - np.log1p(
                np.take_along_axis(best_z, cand_class, 1))) <= separation
        for rank in range(n_refit):
            for c, scan in enumerate(self._scans):
                use = found[:, rank] & (cand_class[:, rank] == c) & ~at_best[:, rank]
                if not use.any():
                    continue
                fit = refit(scan, pre, cand_lag[:, rank], use, self.model.obs_loglam[0],
                            refine=False)
                better = use & (fit.chi2 < bests[c].chi2)
                if better.any():
                    improved = self._refitted_best(c, pre, cand_lag[:, rank], better)
                    self._replace(bests[c], improved, better)
                    at_best[better, rank] = True
                rest = use & ~better
                cand_chi2[rest, rank] = fit.chi2[rest]
                cand_z[rest, rank] = fit.z[rest]
        best_z = np.stack([b.z for b in bests], axis=1)
        best_chi2 = np.stack([b.chi2 for b in bests], axis=1)
        best_zerr = np.stack([b.zerr for b in bests], axis=1)
        cand_chi2 = np.where(at_best, np.inf, cand_chi2)   # duplicates of a class best
        cand_class, cand_z, cand_zerr, cand_chi2 = self._merge_candidates(
            best_chi2, best_z, best_zerr, cand_class, cand_z, cand_zerr, cand_chi2, n_cand)
        chi2 = cand_chi2
        win_class = np.where(np.isfinite(chi2[:, 0]), cand_class[:, 0], 0)
        rows_all = np.arange(n_rows)

        zwarn = np.zeros(n_rows, dtype=np.int64)
        reasons: dict[int, str | np.ndarray] = {}
        degeneracy = self._degeneracy(curves, win_class)
        # Δχ² to the best candidate more than the separation away (the refit may have moved
        # candidates a few pixels closer together)
        with np.errstate(invalid="ignore"):
            apart = np.abs(np.log1p(cand_z) - np.log1p(cand_z[:, :1])) > separation
        others = np.where(apart & np.isfinite(chi2), chi2, np.inf).min(axis=1)
        delta_chi2 = np.where(np.isfinite(others), others - chi2[:, 0], np.nan)
        small = np.isfinite(delta_chi2) & (delta_chi2 < self.params["small_delta_chi2"])
        zwarn[small] |= int(ZWarn.SMALL_DELTA_CHI2)
        reasons[int(ZWarn.SMALL_DELTA_CHI2)] = (
            f"DELTACHI2 < {self.params['small_delta_chi2']:g} to the best solution more than "
            f"{self.params['min_velocity_separation']:g} km/s away")
        zwarn |= np.stack([b.zwarn for b in bests], axis=1)[rows_all, win_class]
        reasons.update(self._solution_reasons(n_refit))
        n_valid = (spectra.ivar > 0).sum(axis=1)
        little = n_valid < self.params["min_valid_fraction"] * n_obs
        zwarn[little] |= int(ZWarn.LITTLE_DATA)
        reasons[int(ZWarn.LITTLE_DATA)] = (
            f"fewer than {self.params['min_valid_fraction']:.0%} of the grid's pixels valid")
        # nothing to measure: no signal left after the continuum (a flat spectrum), too few
        # pixels for the continuum, or values whose χ² leaves the float range
        no_signal = ~pre.ok.cpu().numpy()
        with np.errstate(invalid="ignore"):
            broken = ~np.isfinite(chi2[:, 0]) | ~np.isfinite(cand_z[:, 0])
        unmeasurable = no_signal | broken
        if unmeasurable.any():
            zwarn[unmeasurable] |= int(ZWarn.NODATA)
            reasons[int(ZWarn.NODATA)] = np.where(
                no_signal, "no signal to fit: flat after continuum subtraction, or too few "
                           "valid pixels for the continuum",
                "non-finite χ²: flux or ivar values beyond the float32 range of the fit")
            for array in (cand_z, chi2, cand_zerr):
                array[unmeasurable] = np.nan
            delta_chi2[unmeasurable] = np.nan
            degeneracy[unmeasurable] = np.nan
            for best in bests:
                for array in (best.z, best.zerr, best.chi2, best.coef):
                    array[unmeasurable] = np.nan
                if best.model is not None:
                    best.model[unmeasurable] = np.nan

        names = np.array(self.classes)
        best_coef = np.stack([b.coef for b in bests], axis=1)[rows_all, win_class]
        model_flux = np.stack([b.model for b in bests], axis=1)[rows_all, win_class] \
            if n_refit else None
        columns = {
            "Z": cand_z[:, 0],
            "ZERR": cand_zerr[:, 0] if n_refit else np.full(n_rows, np.nan),
            "SPECTYPE": names[win_class],
            "SUBTYPE": np.full(n_rows, "", dtype="<U1"),
            "CHI2": chi2[:, 0],
            "DELTACHI2": delta_chi2,
            "NPIXELS": n_valid.astype(np.int32),
            "RCHI2": chi2[:, 0] / np.maximum(n_valid - best_coef.shape[1], 1),
            "DEGENERACY": degeneracy,
            "COEFF": best_coef.astype(np.float32),
            "CAND_SPECTYPE": names[cand_class],
            "CAND_Z": cand_z,
            "CAND_CHI2": chi2,
        }
        curves_out = {scan.template.name: curve.float().cpu().numpy()
                      for scan, curve in zip(self._scans, curves, strict=True)} \
            if spectra.want_curves else {}
        return EngineResult(columns=columns, zwarn=zwarn, reasons=reasons, model=model_flux,
                            curves=curves_out,
                            curve_z={s.template.name: s.z_lag for s in self._scans},
                            class_best=dict(zip(self.classes, bests, strict=True)))

    def _curves(self, pre: Preprocessed) -> list[torch.Tensor]:
        """Every class's encoder χ² curve over its full-overlap lags, ``(B, S_c)`` each."""
        n_obs = pre.fluctuation.shape[1]
        constant = torch.sum(pre.fluctuation.double() ** 2 * pre.ivar.double(), dim=1,
                             keepdim=True).float()
        spectra_f: dict[int, torch.Tensor] = {}
        curves = []
        for scan in self._scans:
            coefficients = encode_coefficients(scan.encoder, scan.n_coef, pre.fluctuation)
            n_fft = scan.transforms.n_fft
            if n_fft not in spectra_f:
                spectra_f[n_fft] = spectra_transforms(pre.fluctuation, pre.ivar, n_fft)
            curves.append(chi2_curves_fast(coefficients, scan.transforms, spectra_f[n_fft],
                                           constant, n_obs, scan.n_lags))
        return curves

    def _class_best(self, c: int, pre: Preprocessed, curve: torch.Tensor, n_refit: int,
                    ) -> ClassBest:
        """Class ``c``'s best solution: the lowest minimum of its encoder χ² ``curve``
        ``(B, S)``, refined exactly; with ``n_refit = 0`` the encoder's own χ² and z on
        the pixel grid (GaSNet-III's answer), without a model."""
        low, lag_t = torch.min(curve, dim=1)
        lag = lag_t.cpu().numpy()
        if n_refit:
            return self._refitted_best(c, pre, lag, np.ones(lag.size, dtype=bool))
        scan = self._scans[c]
        zwarn = _edge_bits(scan, lag)
        return ClassBest(z=scan.z_lag[lag], zerr=np.full(lag.size, np.nan),
                         chi2=low.double().cpu().numpy(), zwarn=zwarn,
                         coef=np.full((lag.size, scan.n_coef), np.nan), model=None,
                         n_lags=scan.n_lags, n_coef=scan.n_coef)

    def _refitted_best(self, c: int, pre: Preprocessed, lag: np.ndarray, use: np.ndarray,
                       ) -> ClassBest:
        """Class ``c`` refined exactly from ``lag`` (``(B,)``) for the rows ``use``."""
        scan = self._scans[c]
        fit = refit(scan, pre, lag, use, self.model.obs_loglam[0], refine=True)
        zwarn = _edge_bits(scan, fit.lag)
        zwarn[~fit.ok] |= int(ZWarn.BAD_FIT)
        zwarn[~use] = 0
        return ClassBest(z=fit.z, zerr=fit.zerr, chi2=fit.chi2, zwarn=zwarn, coef=fit.coef,
                         model=self._model_flux(pre, fit), n_lags=scan.n_lags,
                         n_coef=scan.n_coef)

    @staticmethod
    def _model_flux(pre: Preprocessed, fit: ExactFit) -> np.ndarray:
        """The fit's model in the input flux unit, ``(B, N)`` float32."""
        return (pre.continuum + pre.norm * fit.model).cpu().numpy()

    @staticmethod
    def _replace(best: ClassBest, new: ClassBest, rows: np.ndarray) -> None:
        """Put ``new``'s values of ``rows`` into ``best`` (in place)."""
        for name in ("z", "zerr", "chi2", "zwarn", "coef", "model"):
            if getattr(best, name) is not None:
                getattr(best, name)[rows] = getattr(new, name)[rows]

    @staticmethod
    def _merge_candidates(best_chi2: np.ndarray, best_z: np.ndarray, best_zerr: np.ndarray,
                          cand_class: np.ndarray, cand_z: np.ndarray, cand_zerr: np.ndarray,
                          cand_chi2: np.ndarray, n_cand: int,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The candidate list: every class's best ``(B, C)`` and the other candidates
        ``(B, M)`` (inf χ² for duplicates), ranked by χ², ``n_cand`` long; the class bests
        are always kept when ``n_cand ≥ C``."""
        n_rows, n_classes = best_chi2.shape
        key_best = np.where(np.isfinite(best_chi2), best_chi2, np.inf)
        key_other = np.where(np.isfinite(cand_chi2), cand_chi2, np.inf)
        n_other = max(n_cand - n_classes, 0) if n_cand >= n_classes else n_cand
        other_order = np.argsort(key_other, axis=1, kind="stable")[:, :n_other]
        classes = np.concatenate([np.broadcast_to(np.arange(n_classes), (n_rows, n_classes)),
                                  np.take_along_axis(cand_class, other_order, 1)], axis=1)
        z = np.concatenate([best_z, np.take_along_axis(cand_z, other_order, 1)], axis=1)
        zerr = np.concatenate([best_zerr, np.take_along_axis(cand_zerr, other_order, 1)],
                              axis=1)
        key = np.concatenate([key_best, np.take_along_axis(key_other, other_order, 1)], axis=1)
        order = np.argsort(key, axis=1, kind="stable")[:, :n_cand]
        chi2 = np.take_along_axis(key, order, 1)
        z = np.where(np.isfinite(chi2), np.take_along_axis(z, order, 1), np.nan)
        zerr = np.where(np.isfinite(chi2), np.take_along_axis(zerr, order, 1), np.nan)
        return (np.take_along_axis(classes, order, 1), z, zerr,
                np.where(np.isfinite(chi2), chi2, np.nan))

    def _degeneracy(self, curves: list[torch.Tensor], win_class: np.ndarray) -> np.ndarray:
        """GaSNet-III's degeneracy R on the winning class's encoder curve: the two lowest
        minima at least 0.01 dex apart, ``(χ²₂ − χ²₁)/χ²₁`` (−1 with one minimum)."""
        n_rows = win_class.size
        two = np.full((n_rows, 2), np.inf)  # float64: R is a small difference of χ²
        for c, curve in enumerate(curves):
            rows_c = np.flatnonzero(win_class == c)
            if rows_c.size:
                sub = minima_only(curve[torch.from_numpy(rows_c).to(self.device)])
                _, picked = pick_separated_window(sub, 2, round(0.01 / self.model.dloglam) - 1,
                                                  in_place=True)
                two[rows_c] = picked.cpu().numpy()
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(two[:, 1]), (two[:, 1] - two[:, 0]) / two[:, 0], -1.0)

    @staticmethod
    def _solution_reasons(n_refit: int) -> dict[int, str]:
        """Reasons of the per-solution bits."""
        reasons = {int(ZWarn.Z_AT_EDGE): "best redshift at the edge of its class's z range"}
        if n_refit:
            reasons[int(ZWarn.BAD_FIT)] = ("χ² minimum not refined (no positive curvature or "
                                           "singular fit): z on the pixel grid, ZERR NaN")
        return reasons

    def _separation_lags(self) -> float:
        """The velocity separation in lags (pixels of ln(1 + z))."""
        per_lag = math.log(10) * self.model.dloglam
        return self.params["min_velocity_separation"] / C_KMS / per_lag

    def _z_of(self, class_index: np.ndarray, lag: np.ndarray) -> np.ndarray:
        """Redshift of integer ``lag`` of class ``class_index`` (arrays of one shape)."""
        out = np.full(lag.shape, np.nan)
        for c, scan in enumerate(self._scans):
            hit = class_index == c
            out[hit] = scan.z_lag[np.clip(lag[hit], 0, scan.z_lag.size - 1)]
        return out


def _edge_bits(scan: ClassScan, lag: np.ndarray) -> np.ndarray:
    """``(B,)`` int64 ZWARN with ``Z_AT_EDGE`` where ``lag`` is the first or last of the
    class's scan."""
    zwarn = np.zeros(lag.size, dtype=np.int64)
    zwarn[(lag == 0) | (lag == scan.n_lags - 1)] |= int(ZWarn.Z_AT_EDGE)
    return zwarn


def gasnet3_original_outputs(engine: Gasnet3Engine, spectra: EngineInput,
                             ) -> dict[str, dict[str, np.ndarray]]:
    """GaSNet-III's own per-class outputs, computed the way its code computes them.

    Flux at ivar-0 pixels kept, the 'same'-padded χ² curve with its edge ramp applied
    twice, ``Best_fit_z = 10**(mid(obs grid) − rest[argmin]) − 1`` (note its half-pixel
    offset from exact alignment), ``min_chi_square = min/N`` and the degeneracy ``R``
    from the two lowest interior minima at least 0.01 dex apart. For checking this
    engine against the stored outputs of the original code.

    Returns
    -------
    dict
        Class → ``{"Best_fit_z", "min_chi_square", "Degeneracy", "curve"}`` arrays.
    """
    if engine.model is None:
        engine.setup()
    engine.check_grid(spectra.loglam)
    device = engine.device
    loglam = torch.from_numpy(np.asarray(spectra.loglam, dtype=np.float64)).to(device)
    out: dict[str, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        pre = preprocess(torch.from_numpy(np.asarray(spectra.flux, np.float32)).to(device),
                         torch.from_numpy(np.asarray(spectra.ivar, np.float32)).to(device),
                         loglam, engine.model.preprocessing["poly_deg"], masked_flux="keep")
        n_obs = pre.fluctuation.shape[1]
        middle = (spectra.loglam[0] + spectra.loglam[-1]) / 2
        for scan in engine._scans:
            model, _ = encode(scan.encoder, scan.eigenvectors, pre.fluctuation)
            curves = chi2_curves(model, pre.fluctuation, pre.ivar, lags="gasnet3")
            best = torch.argmin(curves, dim=1).cpu().numpy()
            interior = local_minima(curves)
            interior[:, 0] = interior[:, -1] = False        # find_peaks skips the ends
            minima = curves.masked_fill(~interior, math.inf)
            distance = round(0.01 / engine.model.dloglam)      # find_peaks(distance=100)
            _, two = pick_separated_window(minima, 2, distance - 1)
            two = two.cpu().numpy()
            rest = scan.template.rest_loglam
            out[scan.template.name] = {
                "Best_fit_z": 10.0 ** (middle - rest[best]) - 1.0,
                "min_chi_square": curves.min(dim=1).values.cpu().numpy() / n_obs,
                "Degeneracy": np.where(np.isfinite(two[:, 1]),
                                       (two[:, 1] - two[:, 0]) / two[:, 0], -1.0),
                "curve": curves.cpu().numpy(),
            }
    return out


@hookimpl
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    registry.add(Gasnet3Engine)
