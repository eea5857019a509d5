"""A galaxy's stellar continuum from named stellar spectra, for measuring its emission lines.

Balmer emission in a galaxy sits in the stellar Balmer absorption; measured against a
straight local continuum, Hβ emission can vanish and Hα equivalent widths come out low.
SDSS subtracts a stellar-population continuum before measuring lines. This does the same
with the named stellar templates the subtype stage already ships
(:mod:`gasnet_plugin.models.star_templates`): a handful of dwarfs and giants from B to M,
broadened to a typical galaxy velocity dispersion, are fitted with a cubic polynomial by
weighted linear least squares at each galaxy's redshift, with the pixels near emission
lines left out. Batched: the basis of each spectrum is a gather of the shifted templates
and the normal equations are one batched matrix product.
"""

from __future__ import annotations

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
CHUNK_ROWS = 32
"""Spectra fitted together: the design matrices take ``16 P`` doubles per spectrum (~0.6
MB), so chunks keep them in cache and a batch's memory small; the results are the same
bit for bit (each row's products are computed alone)."""


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
    if flux.shape[0] <= CHUNK_ROWS:
        return _fit_chunk(flux, ivar, loglam, z, padded, loglam0)
    return np.concatenate([
        _fit_chunk(flux[start:start + CHUNK_ROWS], ivar[start:start + CHUNK_ROWS], loglam,
                   z[start:start + CHUNK_ROWS], padded, loglam0)
        for start in range(0, flux.shape[0], CHUNK_ROWS)])


def _fit_chunk(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, z: np.ndarray,
               padded: np.ndarray, loglam0: float) -> np.ndarray:
    """:func:`fit_stellar_continuum` of one chunk of rows; ``padded`` is the basis with
    ``P`` zero pixels at each end, ``(K, N + 2P)``."""
    n_rows, n_pix = flux.shape
    n_stars, n_rest = padded.shape[0], padded.shape[1] - 2 * n_pix
    step = (loglam[-1] - loglam[0]) / (n_pix - 1)
    zs = np.where(np.isfinite(z), z, 0.0)
    start = np.round((loglam[0] - np.log10(1 + zs) - loglam0) / step).astype(np.int64)
    # each spectrum's stars: one contiguous window of the zero-padded basis (pixels beyond
    # the templates are 0 and not covered), taken from the sliding windows (a row copy per
    # star and spectrum, not an element-wise gather)
    offset = np.clip(start + n_pix, 0, n_rest + n_pix)
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_pix, axis=1)  # (K, ., P)
    design = np.empty((n_rows, n_stars + POLY_DEGREE + 1, n_pix))            # (B, D, P)
    design[:, :n_stars] = windows[:, offset].transpose(1, 0, 2)
    x = np.linspace(-1, 1, n_pix)
    design[:, n_stars:] = np.stack([x**k for k in range(POLY_DEGREE + 1)])
    template_pixel = start[:, None] + np.arange(n_pix)[None, :]
    covered = (template_pixel >= 0) & (template_pixel < n_rest)               # (B, P)
    # left out: pixels within MASK_HALF_WIDTH_KMS of an emission line (in ln λ, rest frame)
    ln_rest = np.log(10.0) * loglam[None, :] - np.log1p(zs)[:, None]
    far = np.ones((n_rows, n_pix), dtype=bool)
    half_width = MASK_HALF_WIDTH_KMS / C_KMS
    for line in MASKED_LINES:
        far &= np.abs(ln_rest - np.log(line)) > half_width
    w = np.where(far & covered & np.isfinite(flux), ivar, 0.0).astype(np.float64)
    weighted = design * w[:, None, :]
    normal = np.matmul(weighted, design.transpose(0, 2, 1))
    rhs = np.matmul(weighted, np.nan_to_num(flux.astype(np.float64))[:, :, None])[..., 0]
    scale = np.einsum("bii->b", normal)[:, None, None] / normal.shape[1]
    normal = normal + 1e-9 * np.maximum(scale, 1e-300) * np.eye(normal.shape[1])
    coefficients = np.linalg.solve(normal, rhs[..., None])[..., 0]
    continuum = (coefficients[:, None, :] @ design)[:, 0]
    enough = (w > 0).sum(axis=1) > 4 * design.shape[1]
    return np.where((enough & np.isfinite(z))[:, None] & covered, continuum, np.nan)
