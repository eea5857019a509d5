"""The compiled kernel of the stellar-template fit against its definition in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from gasnet_plugin.models.star_fit_kernels import rest_frame_sides


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rest_frame_sides_match_numpy(dtype) -> None:
    """Each star's weighted powers (the weights first) and weighted flux land at its own
    offset in the window (zeros elsewhere, weights 0 where no template covers the pixel
    and where a pixel is no measurement: a negative or infinite ivar, a NaN flux), and
    the template-free sums and the count of weighted pixels equal their definitions."""
    rng = np.random.default_rng(5)
    n_stars, n_pix, n_window, k = 4, 37, 45, 3
    flux = rng.normal(1.0, 0.3, (n_stars, n_pix)).astype(dtype)
    ivar = rng.uniform(0.5, 2.0, (n_stars, n_pix)).astype(dtype)
    ivar[1, 10:15] = 0
    ivar[2, 3], flux[2, 4], ivar[3, 6] = -1.0, np.nan, np.inf     # not measurements
    offset = np.array([0, 3, 8, 5], dtype=np.int64)
    covered = np.ones(n_window, dtype=bool)
    covered[[2, 20, 44]] = False
    x = np.linspace(-1, 1, n_pix)
    powers = np.stack([x**j for j in range(k)])
    sides = np.full((n_stars, k + 1, n_window), 7.0)      # overwritten, zeros included
    gram, flux_side, flux_norm = np.empty((n_stars, k, k)), np.empty((n_stars, k)), \
        np.empty(n_stars)
    n_weighted = np.full(n_stars, -1, dtype=np.int64)
    rest_frame_sides(flux, ivar, offset, covered, powers, sides, gram, flux_side, flux_norm,
                     n_weighted)
    for b in range(n_stars):
        cols = offset[b] + np.arange(n_pix)
        f = flux[b].astype(np.float64)
        # a weight where a template covers the pixel, ivar is finite and positive and
        # the flux finite; there the flux too, else 0
        weighted = covered[cols] & np.isfinite(f) & np.isfinite(ivar[b]) & (ivar[b] > 0)
        w = np.where(weighted, ivar[b].astype(np.float64), 0.0)
        f = np.where(weighted, f, 0.0)
        assert n_weighted[b] == weighted.sum()
        expected_w = np.zeros(n_window)
        expected_w[cols] = w
        x_window = (np.arange(n_window) - offset[b]) * (2.0 / (n_pix - 1)) - 1.0
        term = expected_w                          # w, w·x, (w·x)·x: multiplied in turn
        for j in range(k):
            np.testing.assert_array_equal(sides[b, j], term)
            term = term * x_window
        expected_f = np.zeros(n_window)
        expected_f[cols] = w * f
        np.testing.assert_array_equal(sides[b, k], expected_f)
        # summed in another order: to rounding of the sums' scale (odd powers cancel)
        np.testing.assert_allclose(gram[b], (powers * w) @ powers.T, rtol=1e-13,
                                   atol=1e-13 * w.sum())
        np.testing.assert_allclose(flux_side[b], powers @ (w * f), rtol=1e-13,
                                   atol=1e-13 * np.abs(w * f).sum())
        np.testing.assert_allclose(flux_norm[b], np.sum(w * f * f), rtol=1e-13)
