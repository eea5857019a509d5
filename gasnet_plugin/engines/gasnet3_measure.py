"""Measuring one chunk of spectra with the ``gasnet3`` engine (its steps 1–4).

:func:`measure_chunk` takes a set-up :class:`~gasnet_plugin.engines.gasnet3.Gasnet3Engine`
(its model, class scans, lag offsets, parameters and device) and ``B`` spectra on the
model's grid, and returns the engine's result: the classes' χ² curves
(:mod:`~gasnet_plugin.engines.eigen_scan`), every class's best refitted exactly
(:mod:`~gasnet_plugin.engines.eigen_refit`), the candidates of the lower envelope
(:mod:`~gasnet_plugin.engines.candidates`), DELTACHI2, the degeneracy and the ZWARN bits.
Batched torch: loops run over classes and candidate ranks only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from gasnet_plugin.engines.candidates import (
    envelope_class,
    lower_envelope,
    pick_separated_minima,
)
from gasnet_plugin.engines.eigen_preprocess import Preprocessed, preprocess
from gasnet_plugin.engines.eigen_refit import ExactFit, fit_at_lags, refit
from gasnet_plugin.engines.eigen_scan import (
    ClassScan,
    chi2_curves_fast,
    chi2_curves_summed,
    encode_coefficients,
    spectra_transforms,
)
from gasnet_plugin.engines.protocol import ClassBest, EngineInput, EngineResult
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.engines.gasnet3 import Gasnet3Engine

C_KMS = 299792.458
"""Speed of light, km/s."""


def measure_chunk(engine: Gasnet3Engine, spectra: EngineInput) -> EngineResult:
    """Class, redshift, error, χ², Δχ², candidates and ZWARN for the ``B`` spectra of
    ``spectra`` (flux and ivar ``(B, N)`` on the model's grid), with the set-up
    ``engine``; call under ``torch.no_grad()``."""
    device = engine.device
    loglam = torch.from_numpy(np.asarray(spectra.loglam, dtype=np.float64)).to(device)
    flux = torch.from_numpy(np.ascontiguousarray(spectra.flux, dtype=np.float32)).to(device)
    ivar = torch.from_numpy(np.ascontiguousarray(spectra.ivar, dtype=np.float32)).to(device)
    n_rows, n_obs = flux.shape
    pre = preprocess(flux, ivar, loglam, engine.model.preprocessing["poly_deg"],
                     engine.params["masked_flux"])
    curves = _curves(engine, pre)
    n_refit = min(engine.params["n_refit"], engine.params["n_candidates"])

    # every class's best: the lowest minimum of its own curve, refitted exactly
    bests = [_class_best(engine, c, pre, curve, n_refit) for c, curve in enumerate(curves)]

    # candidates: lowest local minima of the envelope, each more than the velocity
    # separation (a whole number of lags) from the better ones
    offsets = list(engine._offsets)
    n_cand = engine.params["n_candidates"]
    cand_u, cand_chi2_t = pick_separated_minima(lower_envelope(curves, offsets), n_cand,
                                                int(_separation_lags(engine)))
    cand_class = envelope_class(curves, offsets, cand_u).cpu().numpy()
    cand_lag = cand_u.cpu().numpy() - engine._offsets[cand_class]
    cand_chi2 = cand_chi2_t.cpu().numpy()
    found = np.isfinite(cand_chi2)
    cand_lag = np.where(found, cand_lag, 0)
    cand_z = np.where(found, _z_of(engine, cand_class, cand_lag), np.nan)
    cand_zerr = np.full(cand_z.shape, np.nan)
    # the best n_refit candidates fitted exactly at their lag (those at their class's
    # best are that best); one that beats its class's best becomes it, refined
    separation = engine.params["min_velocity_separation"] / C_KMS
    best_z = np.stack([b.z for b in bests], axis=1)                    # (B, C)
    with np.errstate(invalid="ignore"):
        at_best = np.abs(np.log1p(cand_z) - np.log1p(
            np.take_along_axis(best_z, cand_class, 1))) <= separation
    uses = {(rank, c): found[:, rank] & (cand_class[:, rank] == c) & ~at_best[:, rank]
            for rank in range(n_refit) for c in range(len(engine._scans))}
    fitted = _candidate_chi2(engine, pre, cand_lag, uses)
    for rank in range(n_refit):
        for c, scan in enumerate(engine._scans):
            use = uses[rank, c]
            if not use.any():
                continue
            better = use & (fitted[rank, c] < bests[c].chi2)
            if better.any():
                improved = _refitted_best(engine, c, pre, cand_lag[:, rank], better)
                _replace(bests[c], improved, better)
                at_best[better, rank] = True
            rest = use & ~better
            cand_chi2[rest, rank] = fitted[rank, c][rest]
            cand_z[rest, rank] = scan.z_lag[cand_lag[rest, rank]]
    best_z = np.stack([b.z for b in bests], axis=1)
    best_chi2 = np.stack([b.chi2 for b in bests], axis=1)
    best_zerr = np.stack([b.zerr for b in bests], axis=1)
    cand_chi2 = np.where(at_best, np.inf, cand_chi2)   # duplicates of a class best
    cand_class, cand_z, cand_zerr, cand_chi2 = _merge_candidates(
        best_chi2, best_z, best_zerr, cand_class, cand_z, cand_zerr, cand_chi2, n_cand)
    chi2 = cand_chi2
    win_class = np.where(np.isfinite(chi2[:, 0]), cand_class[:, 0], 0)
    rows_all = np.arange(n_rows)

    zwarn = np.zeros(n_rows, dtype=np.int64)
    reasons: dict[int, str | np.ndarray] = {}
    degeneracy = _degeneracy(engine, curves, win_class)
    # Δχ² to the best candidate more than the separation away (the refit may have moved
    # candidates a few pixels closer together)
    with np.errstate(invalid="ignore"):
        apart = np.abs(np.log1p(cand_z) - np.log1p(cand_z[:, :1])) > separation
    others = np.where(apart & np.isfinite(chi2), chi2, np.inf).min(axis=1)
    delta_chi2 = np.where(np.isfinite(others), others - chi2[:, 0], np.nan)
    small = np.isfinite(delta_chi2) & (delta_chi2 < engine.params["small_delta_chi2"])
    zwarn[small] |= int(ZWarn.SMALL_DELTA_CHI2)
    reasons[int(ZWarn.SMALL_DELTA_CHI2)] = (
        f"DELTACHI2 < {engine.params['small_delta_chi2']:g} to the best solution more than "
        f"{engine.params['min_velocity_separation']:g} km/s away")
    zwarn |= np.stack([b.zwarn for b in bests], axis=1)[rows_all, win_class]
    reasons.update(_solution_reasons(n_refit))
    n_valid = (spectra.ivar > 0).sum(axis=1)
    little = n_valid < engine.params["min_valid_fraction"] * n_obs
    zwarn[little] |= int(ZWarn.LITTLE_DATA)
    reasons[int(ZWarn.LITTLE_DATA)] = (
        f"fewer than {engine.params['min_valid_fraction']:.0%} of the grid's pixels valid")
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
            "non-finite chi2: flux or ivar values beyond the float32 range of the fit")
        for array in (cand_z, chi2, cand_zerr):
            array[unmeasurable] = np.nan
        delta_chi2[unmeasurable] = np.nan
        degeneracy[unmeasurable] = np.nan
        for best in bests:
            for array in (best.z, best.zerr, best.chi2, best.coef):
                array[unmeasurable] = np.nan
            if best.model is not None:
                best.model[unmeasurable] = np.nan

    names = np.array(engine.classes)
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
                  for scan, curve in zip(engine._scans, curves, strict=True)} \
        if spectra.want_curves else {}
    return EngineResult(columns=columns, zwarn=zwarn, reasons=reasons, model=model_flux,
                        curves=curves_out,
                        curve_z={s.template.name: s.z_lag for s in engine._scans},
                        class_best=dict(zip(engine.classes, bests, strict=True)))


def _curves(engine: Gasnet3Engine, pre: Preprocessed) -> list[torch.Tensor]:
    """Every class's encoder χ² curve over its full-overlap lags, ``(B, S_c)`` each."""
    n_obs = pre.fluctuation.shape[1]
    constant = torch.sum(pre.fluctuation.double() ** 2 * pre.ivar.double(), dim=1,
                         keepdim=True).float()
    spectra_f: dict[int, torch.Tensor] = {}
    curves = []
    for scan in engine._scans:
        coefficients = encode_coefficients(scan.encoder, scan.n_coef, pre.fluctuation)
        if scan.summed:     # few lags: summed directly (CPU)
            curves.append(chi2_curves_summed(scan, coefficients, pre.fluctuation, pre.ivar,
                                             constant))
            continue
        n_fft = scan.transforms.n_fft
        if n_fft not in spectra_f:
            spectra_f[n_fft] = spectra_transforms(pre.fluctuation, pre.ivar, n_fft)
        curves.append(chi2_curves_fast(coefficients, scan.transforms, spectra_f[n_fft],
                                       constant, n_obs, scan.n_lags))
    return curves


def _class_best(engine: Gasnet3Engine, c: int, pre: Preprocessed, curve: torch.Tensor, n_refit: int,
                ) -> ClassBest:
    """Class ``c``'s best solution: the lowest minimum of its encoder χ² ``curve``
    ``(B, S)``, refined exactly; with ``n_refit = 0`` the encoder's own χ² and z on
    the pixel grid (GaSNet-III's answer), without a model."""
    low, lag_t = torch.min(curve, dim=1)
    lag = lag_t.cpu().numpy()
    if n_refit:
        return _refitted_best(engine, c, pre, lag, np.ones(lag.size, dtype=bool))
    scan = engine._scans[c]
    zwarn = _edge_bits(scan, lag)
    return ClassBest(z=scan.z_lag[lag], zerr=np.full(lag.size, np.nan),
                     chi2=low.double().cpu().numpy(), zwarn=zwarn,
                     coef=np.full((lag.size, scan.n_coef), np.nan), model=None,
                     n_lags=scan.n_lags, n_coef=scan.n_coef)


def _candidate_chi2(engine: Gasnet3Engine, pre: Preprocessed, cand_lag: np.ndarray,
                    uses: dict[tuple[int, int], np.ndarray],
                    ) -> dict[tuple[int, int], np.ndarray]:
    """The exact χ² of the candidates at their lags, ``(B,)`` per (rank, class) of
    ``uses`` (NaN for the rows not used): every rank of a class in one fit over the rows
    it needs (a row's fit does not depend on the rows fitted with it)."""
    n_rows = cand_lag.shape[0]
    out = {key: np.full(n_rows, np.nan) for key in uses}
    for c, scan in enumerate(engine._scans):
        keys = [key for key in uses if key[1] == c and uses[key].any()]
        if not keys:
            continue
        rows = [np.flatnonzero(uses[key]) for key in keys]
        every = np.concatenate(rows)
        picked = torch.from_numpy(every).to(pre.fluctuation.device)
        lags = np.concatenate([cand_lag[r, rank] for (rank, _), r in zip(keys, rows,
                                                                          strict=True)])
        chis, _ = fit_at_lags(scan, pre.fluctuation[picked], pre.ivar[picked], lags,
                              offsets=(1,))
        bounds = np.cumsum([0] + [r.size for r in rows])
        for key, r, start, stop in zip(keys, rows, bounds[:-1], bounds[1:], strict=True):
            out[key][r] = chis[start:stop, 0]
    return out


def _refitted_best(engine: Gasnet3Engine, c: int, pre: Preprocessed, lag: np.ndarray,
                   use: np.ndarray) -> ClassBest:
    """Class ``c`` refined exactly from ``lag`` (``(B,)``) for the rows ``use``."""
    scan = engine._scans[c]
    fit = refit(scan, pre, lag, use, engine.model.obs_loglam[0])
    zwarn = _edge_bits(scan, fit.lag)
    zwarn[~fit.ok] |= int(ZWarn.BAD_FIT)
    zwarn[~use] = 0
    return ClassBest(z=fit.z, zerr=fit.zerr, chi2=fit.chi2, zwarn=zwarn, coef=fit.coef,
                     model=_model_flux(pre, fit), n_lags=scan.n_lags,
                     n_coef=scan.n_coef)


def _model_flux(pre: Preprocessed, fit: ExactFit) -> np.ndarray:
    """The fit's model in the input flux unit, ``(B, N)`` float32."""
    return (pre.continuum + pre.norm * fit.model).cpu().numpy()


def _replace(best: ClassBest, new: ClassBest, rows: np.ndarray) -> None:
    """Put ``new``'s values of ``rows`` into ``best`` (in place)."""
    for name in ("z", "zerr", "chi2", "zwarn", "coef", "model"):
        if getattr(best, name) is not None:
            getattr(best, name)[rows] = getattr(new, name)[rows]


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


def _degeneracy(engine: Gasnet3Engine, curves: list[torch.Tensor], win_class: np.ndarray,
                ) -> np.ndarray:
    """GaSNet-III's degeneracy R on the winning class's encoder curve: the two lowest
    minima at least 0.01 dex apart, ``(χ²₂ − χ²₁)/χ²₁`` (−1 with one minimum)."""
    n_rows = win_class.size
    two = np.full((n_rows, 2), np.inf)  # float64: R is a small difference of χ²
    for c, curve in enumerate(curves):
        rows_c = np.flatnonzero(win_class == c)
        if rows_c.size:
            _, picked = pick_separated_minima(
                curve[torch.from_numpy(rows_c).to(engine.device)], 2,
                round(0.01 / engine.model.dloglam) - 1)
            two[rows_c] = picked.cpu().numpy()
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(two[:, 1]), (two[:, 1] - two[:, 0]) / two[:, 0], -1.0)


def _solution_reasons(n_refit: int) -> dict[int, str]:
    """Reasons of the per-solution bits."""
    reasons = {int(ZWarn.Z_AT_EDGE): "best redshift at the edge of its class's z range"}
    if n_refit:
        reasons[int(ZWarn.BAD_FIT)] = ("chi2 minimum not refined (no positive curvature or "
                                       "singular fit): z on the pixel grid, ZERR NaN")
    return reasons


def _separation_lags(engine: Gasnet3Engine) -> float:
    """The velocity separation in lags (pixels of ln(1 + z))."""
    per_lag = math.log(10) * engine.model.dloglam
    return engine.params["min_velocity_separation"] / C_KMS / per_lag


def _z_of(engine: Gasnet3Engine, class_index: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Redshift of integer ``lag`` of class ``class_index`` (arrays of one shape)."""
    out = np.full(lag.shape, np.nan)
    for c, scan in enumerate(engine._scans):
        hit = class_index == c
        out[hit] = scan.z_lag[np.clip(lag[hit], 0, scan.z_lag.size - 1)]
    return out


def _edge_bits(scan: ClassScan, lag: np.ndarray) -> np.ndarray:
    """``(B,)`` int64 ZWARN with ``Z_AT_EDGE`` where ``lag`` is the first or last of the
    class's scan."""
    zwarn = np.zeros(lag.size, dtype=np.int64)
    zwarn[(lag == 0) | (lag == scan.n_lags - 1)] |= int(ZWarn.Z_AT_EDGE)
    return zwarn
