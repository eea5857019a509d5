"""Compiled (numba) kernel of the stellar-template fit: each star moved onto the templates'
rest-frame window, with the sums that do not involve the templates.

:func:`~gasnet_plugin.models.star_templates.fit_star_templates` places a chunk of stars on
one window of the templates' rest-frame grid (star ``b``'s observed pixel ``p`` is window
pixel ``offset_b + p``), so that two matrix products with the templates give every sum over
pixels that involves a template. :func:`rest_frame_sides` builds those products' other sides
in one pass per star: its weights times the polynomial's powers (the weights themselves as
the zeroth) and the weighted flux, zero outside the star's pixels; and, in the same pass,
the sums without a template (the polynomial's normal equations and ``Σ w f²``). The numpy
version it replaces built the same arrays from ``(b, P)`` index arrays and float64 copies,
about ten passes over ~2 MB arrays per chunk; those were half the fit's time. Float64
throughout; the arrays are the numpy version's bit for bit (the same products in the same
order), the sums the same to rounding (they are summed in another order).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover - compiled
    """Σ a·b of two float64 vectors of one length (vectorized: fastmath reorders).

    Each compiled module keeps its own: numba's on-disk cache notices changes to a
    module's own file only, not to jitted functions it calls from other files."""
    total = 0.0
    for m in range(a.size):
        total += a[m] * b[m]
    return total


@numba.njit(cache=True, nogil=True)
def rest_frame_sides(flux: np.ndarray, ivar: np.ndarray, offset: np.ndarray,
                     covered: np.ndarray, powers: np.ndarray, sides: np.ndarray,
                     gram: np.ndarray, flux_side: np.ndarray, flux_norm: np.ndarray,
                     n_weighted: np.ndarray) -> None:  # pragma: no cover - compiled
    """The stars' arrays on the rest-frame window and their template-free sums, in place.

    Parameters
    ----------
    flux, ivar
        ``(b, P)`` float32 or float64 observed spectra.
    offset
        ``(b,)`` int64: the window pixel of each star's observed pixel 0 (``0 ≤ offset``,
        ``offset + P ≤ R``).
    covered
        ``(R,)`` bool: window pixels where some template is non-zero (the weight is 0
        elsewhere).
    powers
        ``(K, P)`` float64: the polynomial's powers ``x**j`` at the observed pixels,
        ``x`` from −1 to 1.
    sides
        ``(b, K + 1, R)`` float64 output: ``w · x_r**j`` for ``j < K`` (``w = ivar``, 0
        where not covered or not a measurement: ivar not finite and positive, or flux
        not finite; ``x_r`` the polynomial's variable continued across the
        window, multiplied in turn: row 0 is the weights themselves) and ``w · f`` at
        ``K``; 0 outside the star's pixels.
    gram, flux_side, flux_norm
        ``(b, K, K)``, ``(b, K)`` and ``(b,)`` float64 outputs: ``Σ w x^i x^j``,
        ``Σ w f x^j`` and ``Σ w f²`` over the star's pixels.
    n_weighted
        ``(b,)`` int64 output: the star's pixels with a weight (``w > 0``), those the
        fit sums over.
    """
    n_stars, n_pix = flux.shape
    n_poly = powers.shape[0]
    step = 2.0 / (n_pix - 1)
    flux_b = np.empty(n_pix)
    for b in range(n_stars):
        start = offset[b]
        stop = start + n_pix
        sides[b, :, :start] = 0.0
        sides[b, :, stop:] = 0.0
        n_weighted[b] = 0
        for p in range(n_pix):
            col = start + p
            w = np.float64(ivar[b, p])
            f = np.float64(flux[b, p])
            # a pixel's weight as in every fit (line_fit_kernels.pixel_weight): ivar
            # where finite and positive with a finite flux, else no weight and no flux
            if not (covered[col] and np.isfinite(f) and np.isfinite(w) and w > 0.0):
                w, f = 0.0, 0.0
            else:
                n_weighted[b] += 1
            flux_b[p] = f
            sides[b, n_poly, col] = w * f
            # x on the window, as (col − offset) · step − 1: the numpy version's values
            x_rest = np.float64(p) * step - 1.0
            term = w
            sides[b, 0, col] = term
            for j in range(1, n_poly):
                term = term * x_rest
                sides[b, j, col] = term
        # the sums, from the rows just written (on the star's pixels x_r is x)
        weighted_flux = sides[b, n_poly, start:stop]
        flux_norm[b] = _dot(weighted_flux, flux_b)
        for i in range(n_poly):
            flux_side[b, i] = _dot(weighted_flux, powers[i])
            for j in range(i, n_poly):
                gram[b, i, j] = gram[b, j, i] = _dot(sides[b, i, start:stop], powers[j])


def load_kernels() -> None:
    """Load the compiled kernel now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    one = np.ones((1, 3), dtype=np.float32)
    rest_frame_sides(one, one, np.zeros(1, np.int64), np.ones(4, np.bool_),
                     np.ones((2, 3)), np.empty((1, 3, 4)), np.empty((1, 2, 2)),
                     np.empty((1, 2)), np.empty(1), np.empty(1, np.int64))
