"""The exact refit of an eigenspectra model at a few lags (beyond GaSNet-III).

The encoder's χ² curve finds where a class fits; this fits the class's ``K`` eigenspectra
coefficients exactly (ivar-weighted linear least squares) at a lag and its two neighbours,
walks downhill to a better lag if a neighbour fits better, and puts a parabola through the
three χ² values: its vertex gives the sub-pixel redshift and its curvature the redshift
error (Δχ² = 1). Batched: on the CPU each fit's normal equations, χ² and model come from
compiled kernels (:mod:`~gasnet_plugin.engines.exact_fit_kernels`), elsewhere from batched
torch products over blocks of spectra (:func:`row_block`: on the CPU few enough that the
``(rows, K, N)`` products stay in cache, on a GPU many); Python loops run over walk steps
and window positions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gasnet_plugin.engines.eigen_preprocess import Preprocessed
from gasnet_plugin.engines.eigen_scan import ClassScan

MAX_WALK = 4
"""Pixels the refit may walk from the starting lag towards a better exact fit."""

ROW_BLOCK = 16
"""Spectra whose normal equations are formed together on the CPU. The ``(16, K, N)``
float32 weighted eigenspectra (~2.6 MB for K = 10, N = 4076) stay in cache (in a one-off
timing on one core 16 rows cost less than half per spectrum what 64 do; the engine's speed
is measured by ``benchmarks/bench_gasnet3.py``)."""

DEVICE_ROW_BLOCK = 1024
"""Spectra whose normal equations are formed together on a GPU: few, large products
instead of one small kernel launch after another (a ``(1024, K, N)`` float32 block is
~170 MB for K = 10, N = 4076). On an H200 the engine's exact refit with blocks of 16 spent
~0.6 ms per spectrum launching kernels (``bench_gasnet3.py``, docs/scale.rst)."""


def row_block(device: torch.device) -> int:
    """Spectra per block of the torch products on ``device``: :data:`ROW_BLOCK` on the
    CPU (cache), :data:`DEVICE_ROW_BLOCK` elsewhere (kernel launches)."""
    return ROW_BLOCK if device.type == "cpu" else DEVICE_ROW_BLOCK


@dataclass
class ExactFit:
    """One class's exact fit of ``B`` spectra (NaN, model 0 for rows not fitted).

    Attributes
    ----------
    chi2
        ``(B,)`` χ² at the refined minimum.
    z, zerr
        ``(B,)`` redshift and its 1σ statistical error (ZERR NaN unless refined).
    ok
        ``(B,)`` bool: the minimum was refined (positive curvature, regular fit).
    lag
        ``(B,)`` int64 final integer lag.
    coef
        ``(B, K)`` coefficients at ``lag`` (preprocessed units).
    model
        ``(B, N)`` float32 model in preprocessed units at the refined lag (eigenspectra
        interpolated linearly between lags), on the device (set by :func:`refit`).
    """

    chi2: np.ndarray
    z: np.ndarray
    zerr: np.ndarray
    ok: np.ndarray
    lag: np.ndarray
    coef: np.ndarray
    model: torch.Tensor | None


def eigen_windows(scan: ClassScan, lags: np.ndarray, n_obs: int) -> torch.Tensor:
    """The class's eigenspectra over ``n_obs + 2`` pixels from ``lags − 1`` (zeros beyond
    the template's grid), ``(b, K, n_obs + 2)`` float32, for the ``(b,)`` int64 ``lags``.

    Each window row is a contiguous run of the padded ``(K, L + 2)`` eigenspectra, picked
    with ``index_select`` from the flat array's sliding windows (several times faster than
    advanced indexing of the 2-D windows, which copies element by element)."""
    padded = scan.padded_eigenvectors
    n_coef, width = padded.shape
    runs = padded.reshape(-1).unfold(0, n_obs + 2, 1)            # (K (L + 2) − N − 1, N + 2)
    lag_t = torch.from_numpy(np.asarray(lags, dtype=np.int64)).to(padded.device)
    starts = torch.arange(n_coef, device=padded.device)[None, :] * width + lag_t[:, None]
    return runs.index_select(0, starts.reshape(-1)).reshape(len(lag_t), n_coef, n_obs + 2)


def fit_at_lags(scan: ClassScan, f: torch.Tensor, w: torch.Tensor, lags: np.ndarray,
                offsets: tuple[int, ...] = (0, 1, 2), compiled: bool | None = None,
                ) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Exact weighted linear fits of the class's eigenspectra at ``lags − 1, lags,
    lags + 1`` (window positions 0, 1, 2; ``offsets`` picks which).

    On the CPU the normal equations and χ² come from the compiled kernels of
    :mod:`~gasnet_plugin.engines.exact_fit_kernels`; on other devices (or with
    ``compiled=False``) from batched torch products, :func:`row_block` rows at a time
    (on the CPU few enough that the ``(rows, K, N)`` weighted eigenspectra stay in cache).
    Both solve the same ridge-regularized equations in float64.

    Parameters
    ----------
    scan
        The class.
    f, w
        ``(b, N)`` preprocessed fluctuation and ivar.
    lags
        ``(b,)`` int64 centre lags.
    offsets
        The window positions fitted.
    compiled
        Use the compiled kernels; ``None``: where the tensors are on the CPU.

    Returns
    -------
    The χ² ``(b, len(offsets))`` float64 and the coefficients (one ``(b, K)`` float64
    tensor per offset).
    """
    if compiled is None:
        compiled = f.device.type == "cpu"
    if compiled:
        return _fit_compiled(scan, f, w, lags, offsets)
    n_rows, n_obs = f.shape
    device = f.device
    k = scan.n_coef
    chis = torch.empty((n_rows, len(offsets)), dtype=torch.float64, device=device)
    coefs = [torch.empty((n_rows, k), dtype=torch.float64, device=device) for _ in offsets]
    step = row_block(device)
    for start in range(0, n_rows, step):
        block = slice(start, start + step)
        x_b = eigen_windows(scan, lags[block], n_obs)                # (r, K, N + 2)
        f_b, w_b = f[block], w[block]
        wf = (w_b * f_b)[:, None, :]                                 # (r, 1, N)
        for i, offset in enumerate(offsets):
            xo = x_b[:, :, offset:offset + n_obs]                    # (r, K, N)
            # bmm on the strided window (einsum first copies it whole: ~2× slower)
            normal = torch.bmm(xo * w_b[:, None, :], xo.transpose(1, 2)).double()
            rhs = (wf @ xo.transpose(1, 2))[:, 0].double()           # (r, K)
            a = _solve(normal, rhs)
            # χ² from the residual, not Σwf² − bᵀa: no cancellation, so the small χ²
            # differences between neighbouring lags (the curvature) keep their precision
            residual = f_b - (a.float()[:, None, :] @ xo)[:, 0]
            chis[block, i] = torch.sum((w_b * residual * residual).double(), dim=1)
            coefs[i][block] = a
    return chis.cpu().numpy(), coefs


def _fit_compiled(scan: ClassScan, f: torch.Tensor, w: torch.Tensor, lags: np.ndarray,
                  offsets: tuple[int, ...]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """:func:`fit_at_lags` through the compiled CPU kernels."""
    from gasnet_plugin.engines.exact_fit_kernels import (
        normal_equations,
        normal_equations_centred,
        residual_chi2,
        solve_ridge,
    )

    n_rows = f.shape[0]
    k = scan.n_coef
    padded = scan.padded_eigenvectors.numpy()
    f_np = np.ascontiguousarray(f.numpy(), dtype=np.float32)
    w_np = np.ascontiguousarray(w.numpy(), dtype=np.float32)
    lags_np = np.ascontiguousarray(lags, dtype=np.int64)
    positions = np.asarray(offsets, dtype=np.int64)
    normal = np.empty((n_rows, positions.size, k, k), dtype=np.float32)
    rhs = np.empty((n_rows, positions.size, k), dtype=np.float32)
    if tuple(offsets) == (0, 1, 2):     # a lag and its neighbours: one pass for the three
        normal_equations_centred(padded, lags_np, f_np, w_np, normal, rhs)
    else:
        normal_equations(padded, lags_np, positions, f_np, w_np, normal, rhs)
    coef = np.empty((n_rows, positions.size, k))
    solve_ridge(normal, rhs, coef)
    chis = np.empty((n_rows, positions.size))
    residual_chi2(padded, lags_np, positions, f_np, w_np, coef.astype(np.float32), chis)
    return chis, [torch.from_numpy(np.ascontiguousarray(coef[:, i]))
                  for i in range(positions.size)]


def _solve(normal: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(..., K)`` from float64 normal equations ``(..., K, K)`` and
    ``(..., K)``, with a ridge of 1e-10 of the mean diagonal (a window beyond the template's
    grid has all-zero eigenspectra)."""
    scale = torch.diagonal(normal, dim1=-2, dim2=-1).mean(dim=-1).clamp_min(1e-30)
    ridge = 1e-10 * scale[..., None, None] * torch.eye(normal.shape[-1], dtype=normal.dtype,
                                                        device=normal.device)
    return torch.linalg.solve(normal + ridge, rhs[..., None])[..., 0]


def eigen_model(scan: ClassScan, coef: torch.Tensor, lags: np.ndarray, delta: np.ndarray,
                n_obs: int, compiled: bool | None = None) -> torch.Tensor:
    """The model ``coef · eigenspectra`` at the sub-pixel lags ``lags + delta``, ``(b, N)``
    float32 in preprocessed units: the lag's model blended linearly with its neighbour's on
    ``delta``'s side.

    Parameters
    ----------
    coef
        ``(b, K)`` coefficients (at ``lags``).
    lags, delta
        ``(b,)`` int64 lags and their sub-pixel offsets, ``|delta| ≤ 1``.
    compiled
        Use the compiled kernel; ``None``: where ``coef`` is on the CPU.
    """
    device = coef.device
    out = torch.empty((len(lags), n_obs), dtype=torch.float32, device=device)
    if compiled is None:
        compiled = device.type == "cpu"
    if compiled:
        from gasnet_plugin.engines.exact_fit_kernels import blended_model

        blended_model(scan.padded_eigenvectors.numpy(), np.ascontiguousarray(lags, np.int64),
                      np.ascontiguousarray(coef.float().numpy()),
                      np.asarray(delta, dtype=np.float32), out.numpy())
        return out
    step = row_block(device)
    for start in range(0, len(lags), step):
        block = slice(start, start + step)
        # the model over the whole window: its pixels 0, 1, 2 onward are lag − 1, lag, lag + 1
        window = (coef[block].float()[:, None, :]
                  @ eigen_windows(scan, lags[block], n_obs))[:, 0]       # (r, N + 2)
        d = delta[block]
        toward = torch.where(torch.from_numpy(d < 0).to(device)[:, None],
                             window[:, 0:n_obs], window[:, 2:2 + n_obs])
        frac = torch.from_numpy(np.abs(d)).to(device, torch.float32)[:, None]
        out[block] = (1 - frac) * window[:, 1:1 + n_obs] + frac * toward
    return out


def refit(scan: ClassScan, pre: Preprocessed, lag: np.ndarray, use: np.ndarray,
          obs_loglam0: float, compiled: bool | None = None) -> ExactFit:
    """Exact fit of class ``scan`` at ``lag`` for the rows ``use`` of ``pre``, refined.

    The fit walks downhill (at most :data:`MAX_WALK` pixels) while a neighbouring lag fits
    better, then a parabola through the three χ² values gives the sub-pixel minimum and
    its curvature the error (a candidate's fit at its lag alone is
    :func:`fit_at_lags` at position 1).

    Parameters
    ----------
    scan
        The class fitted.
    pre
        The preprocessed batch, ``(B, N)``.
    lag
        ``(B,)`` starting lags (ignored where ``use`` is False).
    use
        ``(B,)`` bool: the rows to fit.
    obs_loglam0
        log10 Å of the first observed pixel.
    compiled
        Fit through the compiled CPU kernels (:func:`fit_at_lags`); ``None``: where the
        batch is on the CPU.
    """
    n_rows, n_obs = pre.fluctuation.shape
    device = pre.fluctuation.device
    k = scan.n_coef
    out = ExactFit(chi2=np.full(n_rows, np.nan), z=np.full(n_rows, np.nan),
                   zerr=np.full(n_rows, np.nan), ok=np.zeros(n_rows, dtype=bool),
                   lag=np.asarray(lag, dtype=np.int64).copy(),
                   coef=np.full((n_rows, k), np.nan),
                   model=None)
    rows_np = np.flatnonzero(use)
    if rows_np.size == 0:
        out.model = torch.zeros((n_rows, n_obs), dtype=torch.float32, device=device)
        return out
    rows = torch.from_numpy(rows_np).to(device)
    n_range = scan.n_lags
    if compiled is None:
        compiled = device.type == "cpu"
    every_row = rows_np.size == n_rows
    f = pre.fluctuation if every_row else pre.fluctuation[rows]
    w = pre.ivar if every_row else pre.ivar[rows]
    s_now = out.lag[rows_np].copy()
    chis, coefs = fit_at_lags(scan, f, w, s_now, compiled=compiled)
    _walk(scan, f, w, s_now, chis, coefs, compiled)
    chi_m, chi_0, chi_p = chis[:, 0], chis[:, 1], chis[:, 2]
    out.lag[rows_np] = s_now
    s0 = s_now.astype(np.float64)
    # neighbours outside the full-overlap range are not valid lags
    chi_m = np.where(s0 - 1 >= 0, chi_m, np.nan)
    chi_p = np.where(s0 + 1 <= n_range - 1, chi_p, np.nan)
    curvature = chi_m - 2 * chi_0 + chi_p
    good = np.isfinite(curvature) & (curvature > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(good, 0.5 * (chi_m - chi_p) / curvature, 0.0)
        sigma_lag = np.where(good, np.sqrt(2.0 / curvature), np.nan)
    delta = np.clip(delta, -1.0, 1.0)
    best_chi = np.where(good, chi_0 - 0.25 * (chi_m - chi_p) * delta, chi_0)
    rest = scan.template.rest_loglam
    step = (rest[-1] - rest[0]) / (rest.size - 1)
    rest_at = rest[0] + (s0 + delta) * step
    z_rows = 10.0 ** (obs_loglam0 - rest_at) - 1.0
    out.chi2[rows_np] = best_chi
    out.z[rows_np] = z_rows
    out.zerr[rows_np] = (1 + z_rows) * math.log(10) * step * sigma_lag
    out.ok[rows_np] = good
    out.coef[rows_np] = coefs[1].cpu().numpy()
    out.model = _every_row(eigen_model(scan, coefs[1], s_now, delta, n_obs, compiled),
                           rows, n_rows)
    return out


def _walk(scan: ClassScan, f: torch.Tensor, w: torch.Tensor, s_now: np.ndarray,
          chis: np.ndarray, coefs: list[torch.Tensor], compiled: bool) -> None:
    """The walk downhill of :func:`refit`, all rows in step, in place: ``s_now`` ``(b,)``
    centre lags, ``chis`` ``(b, 3)`` and ``coefs`` (three ``(b, K)``) at the window
    positions 0, 1, 2 (centre − 1, centre, centre + 1); each step's new fits by
    :func:`fit_at_lags` (``compiled``: the CPU kernels, called from here).

    The kernels are called from Python, never from another compiled function: a compiled
    caller carries its own compiled copies of its callees, and a process that compiled
    them and one that loaded them from numba's cache ran different copies (their
    reassociated sums ended in another bit: one real QSO's redshift moved by 2.3e-15).
    """
    n_range = scan.n_lags
    for _ in range(MAX_WALK):
        chi_m = np.where(s_now - 1 >= 0, chis[:, 0], np.inf)
        chi_p = np.where(s_now + 1 <= n_range - 1, chis[:, 2], np.inf)
        move = np.where((chi_m < chis[:, 1]) & (chi_m <= chi_p), -1,
                        np.where(chi_p < chis[:, 1], 1, 0))
        moving = np.flatnonzero(move)
        if moving.size == 0:
            break
        s_now[moving] += move[moving]
        # one step keeps two of the three fits; fit only the new outer lag
        for step, new_offset in ((-1, 0), (1, 2)):
            sub = moving[move[moving] == step]
            if sub.size == 0:
                continue
            picked = torch.from_numpy(sub).to(f.device)
            chis_m, coefs_m = fit_at_lags(scan, f[picked], w[picked], s_now[sub],
                                          offsets=(new_offset,), compiled=compiled)
            # window positions 0, 1, 2 are lags centre − 1, centre, centre + 1
            keep = [1, 2] if step == -1 else [0, 1]   # new positions ...
            old = [0, 1] if step == -1 else [1, 2]    # ... taken from these
            shifted = chis[sub].copy()
            shifted[:, keep] = chis[sub][:, old]
            shifted[:, new_offset] = chis_m[:, 0]
            chis[sub] = shifted
            old_coefs = [coefs[o][picked] for o in range(3)]
            for k_new, k_old in zip(keep, old, strict=True):
                coefs[k_new][picked] = old_coefs[k_old]
            coefs[new_offset][picked] = coefs_m[0]


def _every_row(model: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The models ``(b, N)`` of the fitted ``rows`` as ``(n_rows, N)``, zeros for the rows
    not fitted (``model`` itself when every row was)."""
    if rows.numel() == n_rows:
        return model
    out = torch.zeros((n_rows, model.shape[1]), dtype=model.dtype, device=model.device)
    out[rows] = model
    return out
