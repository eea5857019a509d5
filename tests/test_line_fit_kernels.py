"""The compiled emission-line kernels against numpy statements of what they compute.

:func:`gasnet_plugin.emission_lines._fit_widths` (the compiled kernel of
:mod:`gasnet_plugin.line_fit_kernels`) must give, for every spectrum and width combination,
the weighted least-squares fit of the design matrix written out pixel by pixel: the
linear continuum and each line's unit-flux Gaussians (with fixed partners) from
``numpy.exp``. The rows include a window cut by the end of the grid, a pixel masked
inside the window, and the broad axis's zero width (no component).

The windows the fit reads (:func:`gasnet_plugin.emission_lines._gather`, compiled) must be
the ones written with numpy index arrays: the pixels from the first at or above the
window's blue end, up to its red end or the grid's last pixel (repeated beyond it, at
weight 0), weights only where flux and ivar are finite, and the continuum model of a row
only where it is finite across the whole window.
"""

from __future__ import annotations

import numpy as np
import pytest

from gasnet_plugin import emission_lines as el
from gasnet_plugin.emission_lines import C_KMS

LOGLAM = np.log10(3600.0) + 1e-4 * np.arange(4076)


def numpy_windows(z: np.ndarray, window: tuple[float, float]):
    """Pixel indices ``(B, M)`` of each window on :data:`LOGLAM` (the last pixel repeated
    beyond the grid) and whether each pixel is inside the window and the grid."""
    width = int(np.ceil(np.log10(window[1] / window[0]) / 1e-4)) + 1
    start = np.searchsorted(LOGLAM, np.log10(window[0] * (1 + z)))
    index = start[:, None] + np.arange(width)[None, :]
    inside = index < LOGLAM.size
    index = np.minimum(index, LOGLAM.size - 1)
    inside &= LOGLAM[index] <= np.log10(window[1] * (1 + z))[:, None]
    return index, inside


def window_rows(group: el.LineGroup, z: np.ndarray, seed: int):
    """Flux, weights and rest-frame ln λ of the group's window in spectra at ``z``, as
    ``measure_lines`` hands them to the fit (weights 0 beyond the grid)."""
    rng = np.random.default_rng(seed)
    index, inside = numpy_windows(z, group.window)
    one_plus_z = (1 + z)[:, None]
    ln_rest = np.log(10.0 ** LOGLAM[index] / one_plus_z)
    w = np.where(inside, rng.uniform(0.5, 2.0, index.shape), 0.0)
    w[0, 7] = 0.0                                           # a masked pixel
    f = np.where(w > 0, rng.normal(size=index.shape) + 3 * np.exp(-(
        (ln_rest - np.log(group.lines[0].wavelength)) * C_KMS / 200.0) ** 2), 0.0)
    return ln_rest, f, w, one_plus_z


def explicit_design(group: el.LineGroup, ln_rest: np.ndarray, one_plus_z: float,
                    widths: dict[str, float]) -> np.ndarray:
    """``(D, M)``: 1, t, then each line's profile per observed Å at its kind's width."""
    t = np.linspace(-1, 1, ln_rest.size)
    columns = [np.ones_like(t), t]
    for line in group.lines:
        sigma = widths[el._kind(line)]
        parts = [(line.wavelength, 1.0)] + ([line.partner[1:]] if line.partner else [])
        column = np.zeros_like(t)
        if sigma > 0:
            for wavelength, ratio in parts:
                v = C_KMS * (ln_rest - np.log(wavelength))
                column += (ratio * C_KMS / (np.sqrt(2 * np.pi) * wavelength * sigma)
                           * np.exp(-0.5 * v * v / sigma**2))
        columns.append(column / one_plus_z)
    return np.array(columns)


@pytest.mark.parametrize("group_index", [0, 1, 4], ids=["HALPHA", "HBETA", "MGII"])
def test_every_width_combination_is_the_weighted_least_squares_fit(group_index):
    group = el.LINE_GROUPS[group_index]
    # the last redshift puts the group's reddest line just beyond the grid's last pixel
    # (~9200 Å): its window is cut, and the line's centre falls on the cut part
    reddest = max(max(line.wavelength, line.partner[1] if line.partner else 0.0)
                  for line in group.lines)
    z = np.array([0.05, 0.2, 10 ** LOGLAM[-1] / reddest - 1 + 0.003])
    ln_rest, f, w, one_plus_z = window_rows(group, z, seed=group_index)
    assert (w[-1] == 0).any() and (w[-1] > 0).sum() > 10
    amplitude, chi2, _ = el._fit_widths(group, ln_rest, f, w, one_plus_z)
    grid = el._sigma_grid(group)
    kinds = el._kinds(group)
    assert chi2.shape == (z.size, len(grid))
    for row in range(z.size):
        for s, combination in enumerate(grid):
            design = explicit_design(group, ln_rest[row], one_plus_z[row, 0],
                                     dict(zip(kinds, combination, strict=True)))
            root = np.sqrt(w[row])
            coef = np.linalg.lstsq((design * root).T, f[row] * root, rcond=None)[0]
            expected = np.sum(w[row] * (f[row] - coef @ design) ** 2)
            np.testing.assert_allclose(chi2[row, s], expected, rtol=1e-8)
            np.testing.assert_allclose(amplitude[row, s], coef, rtol=1e-6,
                                       atol=1e-8 * np.abs(coef).max())


def test_covariance_is_the_inverse_normal_matrix_at_per_row_widths():
    group = el.LINE_GROUPS[0]
    z = np.array([0.1, 0.3])
    ln_rest, f, w, one_plus_z = window_rows(group, z, seed=9)
    widths = {"narrow": np.array([[75.0], [310.0]]), "broad": np.array([[0.0], [2500.0]])}
    amplitude, chi2, covariance = el._fit_widths(group, ln_rest, f, w, one_plus_z, widths,
                                                 covariance=True)
    for row in range(z.size):
        design = explicit_design(group, ln_rest[row], one_plus_z[row, 0],
                                 {kind: widths[kind][row, 0] for kind in widths})
        normal = (design * w[row]) @ design.T
        # the absent broad component (zero width) gets a unit diagonal: amplitude 0
        normal[np.diag_indices_from(normal)] += np.diag(normal) <= 0
        np.testing.assert_allclose(covariance[row, 0], np.linalg.inv(normal), rtol=1e-7,
                                   atol=1e-12 * np.abs(np.linalg.inv(normal)).max())
        coef = np.linalg.solve(normal, design @ (w[row] * f[row]))
        np.testing.assert_allclose(amplitude[row, 0], coef, rtol=1e-7,
                                   atol=1e-10 * np.abs(coef).max())
        np.testing.assert_allclose(chi2[row, 0],
                                   np.sum(w[row] * (f[row] - coef @ design) ** 2), rtol=1e-8)
    assert amplitude[0, 0, -1] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_continuum", [True, False])
def test_windows_are_gathered_as_numpy_index_arrays_give_them(dtype, with_continuum):
    group = el.LINE_GROUPS[0]
    rng = np.random.default_rng(4)
    # the last redshift cuts the window at the grid's end; a NaN redshift is not covered
    z = np.array([0.05, 0.2, 0.38, 0.1, np.nan])
    flux = rng.normal(5.0, 1.0, (z.size, LOGLAM.size)).astype(dtype)
    ivar = rng.uniform(0.5, 2.0, (z.size, LOGLAM.size)).astype(dtype)
    index, inside = numpy_windows(np.nan_to_num(z), group.window)
    first = index[0, 0]
    flux[0, first + 3] = np.nan                     # no weight there
    ivar[0, first + 5] = np.inf                     # nor there
    ivar[1, index[1, 2]] = 0.0                      # a masked pixel
    ivar[1, index[1, 4]] = -1.0                     # no measurement: no weight either
    continuum = rng.normal(4.0, 0.5, flux.shape)
    continuum[3, index[3, 10]] = np.nan             # row 3: no model in its window
    continuum[3, 0] = np.nan                        # (outside its window: not looked at)
    one_plus_z = 1 + np.nan_to_num(z)
    start, upper, width = el._window_starts(LOGLAM, one_plus_z, group.window)
    from gasnet_plugin.line_fit_kernels import count_valid

    window_flux, window_ivar = (np.take_along_axis(a, index, 1) for a in (flux, ivar))
    valid = inside & np.isfinite(window_flux) & np.isfinite(window_ivar) & (window_ivar > 0)
    np.testing.assert_array_equal(count_valid(flux, ivar, LOGLAM, start, upper, width),
                                  valid.sum(axis=1))
    rows = np.arange(4)
    f, w, model, rest, ln_rest = el._gather(flux, ivar, continuum if with_continuum else
                                            None, LOGLAM, 10.0**LOGLAM, one_plus_z, rows,
                                            start, upper, width)
    index, inside = index[rows], inside[rows]
    expected_f = flux[rows[:, None], index].astype(np.float64)
    expected_w = np.where(inside, ivar[rows[:, None], index], 0.0).astype(np.float64)
    expected_w = np.where(np.isfinite(expected_f) & np.isfinite(expected_w)
                          & (expected_w > 0), expected_w, 0.0)
    expected_model = np.zeros_like(expected_f)
    if with_continuum:
        expected_model = continuum[rows[:, None], index]
        expected_model = np.where(np.isfinite(expected_model).all(axis=1, keepdims=True),
                                  expected_model, 0.0)
    expected_rest = 10.0**LOGLAM[index] / (1 + z[rows])[:, None]
    assert (expected_w[2] == 0).any() and ((expected_w[0] == 0) & inside[0]).sum() == 2
    np.testing.assert_array_equal(w, expected_w)
    np.testing.assert_array_equal(model, expected_model)
    np.testing.assert_array_equal(f, np.where(expected_w > 0, expected_f - expected_model,
                                              0.0))
    np.testing.assert_array_equal(rest, expected_rest)
    np.testing.assert_allclose(ln_rest, np.log(expected_rest), rtol=1e-15)
