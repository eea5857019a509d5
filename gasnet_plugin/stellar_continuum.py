"""A galaxy's stellar continuum from named stellar spectra, for measuring its emission lines.

Balmer emission in a galaxy sits in the stellar Balmer absorption; measured against a
straight local continuum, Hβ emission can vanish and Hα equivalent widths come out low.
SDSS subtracts a stellar-population continuum before measuring lines. This does the same
with the named stellar templates the subtype stage already ships
(:mod:`gasnet_plugin.models.star_templates`): a handful of dwarfs and giants from B to M,
broadened to a typical galaxy velocity dispersion, are fitted with a cubic polynomial by
weighted linear least squares at each galaxy's redshift, with the pixels near emission
lines left out. Batched: each spectrum's stars are one window of the zero-padded basis,
and compiled kernels (numba) form the normal equations and the model from those windows
and the shared polynomial terms, one spectrum at a time.
"""

from __future__ import annotations

import numba
import numpy as np

from gasnet_plugin.emission_lines import C_KMS
from gasnet_plugin.models.star_templates import StarTemplates

BASIS = ("B3V (29763)", "A1V (95418)", "A4V (136729)", "F0V (90277)", "F6V (16673)",
         "G1V (95128)", "G8V (101501)", "K0V (10780)", "K1III (18322)", "K3V (32147)",
         "K5III (111335)", "M0III (168720)")
"""The stellar spectra whose mixture models a galaxy's continuum (B to M, dwarfs and
giants)."""
DISPERSION_KMS = 150.0
"""Velocity dispersion the basis is broadened to, km/s (a typical galaxy's)."""
POLY_DEGREE = 3
"""Degree of the additive polynomial fitted with the stellar mixture."""
MASKED_LINES = (6564.61, 6585.27, 6549.86, 4862.68, 5008.24, 4960.30, 4341.68, 4102.89,
                6718.29, 6732.67, 3728.48, 3869.81, 5877.25, 6302.05)
"""Rest vacuum wavelengths (Å) of emission lines left out of the continuum fit."""
MASK_HALF_WIDTH_KMS = 800.0
"""Half width of the pixels left out around each line, km/s."""
CHUNK_ROWS = 16
"""Spectra fitted together: each takes a few ``P``-pixel float64 rows (its flux, weights
and continuum), so chunks keep a batch's memory small; the results are the same bit for
bit (each row's normal equations are formed alone)."""


def broadened_basis(templates: StarTemplates, names: tuple[str, ...] = BASIS,
                    dispersion_kms: float = DISPERSION_KMS) -> np.ndarray:
    """``(K, N)`` float64 the chosen templates, Gaussian-broadened (in log λ) by
    ``dispersion_kms`` and each scaled to unit median."""
    from scipy.ndimage import gaussian_filter1d

    rows = [templates.names.index(name) for name in names]
    pixel_kms = C_KMS * np.log(10) * templates.dloglam
    basis = gaussian_filter1d(templates.flux[rows].astype(np.float64),
                              dispersion_kms / pixel_kms, axis=1)
    return basis / np.median(basis, axis=1, keepdims=True)


def fit_stellar_continuum(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray,
                          z: np.ndarray, basis: np.ndarray, loglam0: float,
                          ) -> np.ndarray:
    """The stellar continuum ``(B, P)`` of ``B`` spectra at redshifts ``z`` (NaN rows where
    it cannot be fitted).

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``.
    z
        ``(B,)`` redshifts.
    basis
        ``(K, N)`` :func:`broadened_basis`, rest frame, first pixel at log10 λ ``loglam0``,
        the same step as ``loglam``.
    """
    n_pix = flux.shape[1]
    padded = np.pad(basis, ((0, 0), (n_pix, n_pix)))     # zeros beyond the templates, once
    x = np.linspace(-1, 1, n_pix)
    powers = np.stack([x**k for k in range(POLY_DEGREE + 1)])            # (Q, P), shared
    return np.concatenate([
        _fit_chunk(flux[start:start + CHUNK_ROWS], ivar[start:start + CHUNK_ROWS], loglam,
                   z[start:start + CHUNK_ROWS], padded, powers, loglam0)
        for start in range(0, max(flux.shape[0], 1), CHUNK_ROWS)])


def _fit_chunk(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, z: np.ndarray,
               padded: np.ndarray, powers: np.ndarray, loglam0: float) -> np.ndarray:
    """:func:`fit_stellar_continuum` of one chunk of rows; ``padded`` is the basis with
    ``P`` zero pixels at each end, ``(K, N + 2P)``, ``powers`` the polynomial terms
    ``(Q, P)``.

    The design matrix of a spectrum is its ``K`` shifted stars, each one contiguous window
    of the zero-padded basis (pixels beyond the templates are 0 and not covered), and the
    ``Q`` polynomial terms; the compiled :func:`_normal_equations` forms its normal
    equations from those rows in place, with nothing copied per spectrum."""
    n_rows, n_pix = flux.shape
    n_stars, n_rest = padded.shape[0], padded.shape[1] - 2 * n_pix
    n_dim = n_stars + powers.shape[0]
    step = (loglam[-1] - loglam[0]) / (n_pix - 1)
    zs = np.where(np.isfinite(z), z, 0.0)
    start = np.round((loglam[0] - np.log10(1 + zs) - loglam0) / step).astype(np.int64)
    offset = np.clip(start + n_pix, 0, n_rest + n_pix)
    pixel = np.arange(n_pix)[None, :]
    covered = (pixel >= -start[:, None]) & (pixel < n_rest - start[:, None])  # (B, P)
    w = np.where(_far_from_lines(loglam, zs) & covered & np.isfinite(flux), ivar,
                 0.0).astype(np.float64)
    f = np.nan_to_num(flux.astype(np.float64))
    normal = np.empty((n_rows, n_dim, n_dim))
    rhs = np.empty((n_rows, n_dim))
    _normal_equations(padded, offset, powers, f, w, normal, rhs)
    scale = np.einsum("bii->b", normal)[:, None, None] / n_dim
    normal = normal + 1e-9 * np.maximum(scale, 1e-300) * np.eye(n_dim)
    coefficients = np.linalg.solve(normal, rhs[..., None])[..., 0]
    continuum = np.empty((n_rows, n_pix))
    _model(padded, offset, powers, coefficients, continuum)
    enough = (w > 0).sum(axis=1) > 4 * n_dim
    return np.where((enough & np.isfinite(z))[:, None] & covered, continuum, np.nan)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover - compiled
    """Σ a·b of two float64 vectors of one length (vectorized: fastmath reorders).

    Each compiled module keeps its own: numba's on-disk cache notices changes to a
    module's own file only, not to jitted functions it calls from other files."""
    total = 0.0
    for n in range(a.size):
        total += a[n] * b[n]
    return total


@numba.njit(cache=True, nogil=True)
def _design_row(padded: np.ndarray, offset: int, powers: np.ndarray, index: int,
                n_pix: int) -> np.ndarray:  # pragma: no cover - compiled
    """Design row ``index`` of a spectrum whose stars start at ``offset`` of ``padded``:
    a star's window, then the polynomial terms."""
    n_stars = padded.shape[0]
    if index < n_stars:
        return padded[index, offset:offset + n_pix]
    return powers[index - n_stars, :n_pix]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _normal_equations(padded: np.ndarray, offsets: np.ndarray, powers: np.ndarray,
                      f: np.ndarray, w: np.ndarray, normal: np.ndarray, rhs: np.ndarray,
                      ) -> None:  # pragma: no cover - compiled
    """Per row, in place: ``normal`` ``(B, D, D)`` ``Σ w x_a x_b`` and ``rhs`` ``(B, D)``
    ``Σ w x_a f`` over the ``D = K + Q`` design rows (:func:`_design_row`; ``offsets``
    ``(B,)`` where each row's stars start in ``padded``), in float64."""
    n_rows, n_pix = f.shape
    n_dim = padded.shape[0] + powers.shape[0]
    weighted = np.empty((n_dim, n_pix))
    for i in range(n_rows):
        w_i = w[i]
        for a in range(n_dim):
            x_a = _design_row(padded, offsets[i], powers, a, n_pix)
            wx_a = weighted[a]
            for n in range(n_pix):
                wx_a[n] = w_i[n] * x_a[n]
            rhs[i, a] = _dot(wx_a, f[i])
        for a in range(n_dim):
            for b in range(a, n_dim):
                value = _dot(weighted[a], _design_row(padded, offsets[i], powers, b, n_pix))
                normal[i, a, b] = value
                normal[i, b, a] = value


@numba.njit(cache=True, nogil=True, fastmath=True)
def _model(padded: np.ndarray, offsets: np.ndarray, powers: np.ndarray,
           coefficients: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Per row, in place: ``out`` ``(B, P)`` = Σ ``coefficients[:, a]`` × design row ``a``."""
    n_rows, n_pix = out.shape
    n_dim = padded.shape[0] + powers.shape[0]
    for i in range(n_rows):
        out_i = out[i]
        out_i[:] = 0.0
        for a in range(n_dim):
            c = coefficients[i, a]
            x_a = _design_row(padded, offsets[i], powers, a, n_pix)
            for n in range(n_pix):
                out_i[n] += c * x_a[n]


def load_kernels() -> None:
    """Load the compiled kernels now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    padded, powers = np.ones((2, 9)), np.ones((1, 3))
    f = np.ones((1, 3))
    _fit_chunk(f.astype(np.float32), f.astype(np.float32), np.arange(3) * 1e-4,
               np.zeros(1), padded, powers, 0.0)


def _far_from_lines(loglam: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(B, P)`` bool: pixels more than :data:`MASK_HALF_WIDTH_KMS` from every line of
    :data:`MASKED_LINES` (in ln λ, rest frame) at redshifts ``z`` ``(B,)``.

    Each line leaves out one run of pixels, found on the grid by bisection; the runs are
    marked with +1 at their first pixel and −1 after their last, and a cumulative sum
    over the pixels counts the lines each pixel is near."""
    ln_grid = np.log(10.0) * np.asarray(loglam, dtype=np.float64)
    half_width = MASK_HALF_WIDTH_KMS / C_KMS
    centre = np.log(np.asarray(MASKED_LINES))[None, :] + np.log1p(z)[:, None]  # (B, L)
    first = np.searchsorted(ln_grid, (centre - half_width).ravel(), side="left")
    after = np.searchsorted(ln_grid, (centre + half_width).ravel(), side="right")
    rows = np.repeat(np.arange(z.size), len(MASKED_LINES))
    marks = np.zeros((z.size, ln_grid.size + 1), dtype=np.int32)
    np.add.at(marks, (rows, first), 1)
    np.add.at(marks, (rows, after), -1)
    return np.cumsum(marks[:, :-1], axis=1) == 0
