"""Compiled (numba) kernels of the emission-line fits: each group's windows, and every
width combination of a group.

:mod:`gasnet_plugin.emission_lines` models each spectrum's window as a linear continuum
plus Gaussian lines whose widths come from grids; for fixed widths the amplitudes are a
weighted linear least-squares fit. :func:`fit_widths` does that fit for every spectrum
and every width combination, one spectrum at a time: each line's profile is computed once
per width, the normal equations are assembled from the profiles' dot products (the
continuum's, each width's, and the products between the two width axes), and each
combination's small system is inverted in place. One pass per spectrum, no temporaries
per width combination: the numpy version spent most of its time on the overhead of small
arrays. Sums in float64.

:func:`count_valid` and :func:`gather_windows` read each group's window from the batch
(the pixels, weights, continuum model and rest wavelengths the fit needs) in one pass per
spectrum, where numpy took ~15 passes over ``(B, M)`` index and value arrays; the arrays
are the numpy version's bit for bit (the same operations on each pixel).
"""

from __future__ import annotations

import numba
import numpy as np

from gasnet_plugin.emission_lines import C_KMS

NEGLIGIBLE_POWER = -60.0
"""A profile's pixels beyond this exponent (more than 11σ out, < 1e-26 of its peak) are
left at 0 instead of computed: below float64 precision of every sum they enter, and most
of a narrow line's window."""


@numba.njit(cache=True, nogil=True)
def pixel_weight(flux: float, ivar: float) -> float:  # pragma: no cover - compiled
    """A pixel's weight in a fit: its ``ivar`` where that is finite and positive and the
    flux finite, else 0 (a negative, infinite or NaN ivar, or a NaN flux, is no
    measurement, not a negative or infinite weight)."""
    if np.isfinite(flux) and np.isfinite(ivar) and ivar > 0.0:
        return ivar
    return 0.0


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover - compiled
    """Σ a·b of two float64 vectors of one length.

    Each compiled module keeps its own: numba's on-disk cache notices changes to a
    module's own file only, not to jitted functions it calls from other files."""
    total = 0.0
    for m in range(a.size):
        total += a[m] * b[m]
    return total


@numba.njit(cache=True, nogil=True)
def _invert(work: np.ndarray, inverse: np.ndarray) -> bool:  # pragma: no cover - compiled
    """``inverse`` of the square ``work`` (destroyed) by Gauss–Jordan elimination with
    partial pivoting; False when a pivot is zero or not finite (singular)."""
    n = work.shape[0]
    inverse[:] = 0.0
    for i in range(n):
        inverse[i, i] = 1.0
    for col in range(n):
        pivot, best = col, abs(work[col, col])
        for r in range(col + 1, n):
            if abs(work[r, col]) > best:
                pivot, best = r, abs(work[r, col])
        if not best > 0.0 or not np.isfinite(best):
            return False
        if pivot != col:
            for j in range(n):
                work[col, j], work[pivot, j] = work[pivot, j], work[col, j]
                inverse[col, j], inverse[pivot, j] = inverse[pivot, j], inverse[col, j]
        scale = 1.0 / work[col, col]
        for j in range(n):
            work[col, j] *= scale
            inverse[col, j] *= scale
        for r in range(n):
            factor = work[r, col]
            if r != col and factor != 0.0:
                for j in range(n):
                    work[r, j] -= factor * work[col, j]
                    inverse[r, j] -= factor * inverse[col, j]
    return True


@numba.njit(cache=True, nogil=True)
def _add_gaussian(row: np.ndarray, x: np.ndarray, center: float, sigma: float,
                  scale: float) -> None:  # pragma: no cover - compiled
    """Add ``scale · exp(−v² / 2σ²)``, ``v = c (x − center)`` km/s, to ``row`` over the
    pixels ``x`` (ln Å, uniformly spaced from ``x[0]`` by ``x[1] − x[0]``), out to where
    it falls below :data:`NEGLIGIBLE_POWER`.

    From the pixel nearest the centre outwards by the Gaussian's recurrence on a uniform
    grid (``g(v + Δ) = g(v) · r``, ``r`` itself multiplied by ``exp(−Δ²/σ²)`` each step):
    two exponentials per side instead of one per pixel (numba's exponential is not
    vectorized); the product of ~100 factors keeps ~1e-14 relative precision."""
    n_pix = x.size
    step = C_KMS * (x[1] - x[0]) if n_pix > 1 else 0.0
    exponent = -0.5 / (sigma * sigma)
    if not step > 0:            # not a uniform increasing grid: one exponential per pixel
        for m in range(n_pix):
            v = C_KMS * (x[m] - center)
            row[m] += scale * np.exp(exponent * v * v)
        return
    # positions on the uniform grid from the first pixel (a window cut by the end of the
    # spectrum repeats its last pixel, at weight 0, beyond it)
    nearest = min(max(round((C_KMS * (center - x[0])) / step), 0), n_pix - 1)
    v0 = C_KMS * (x[0] - center) + nearest * step
    floor = np.exp(NEGLIGIBLE_POWER)
    shrink = np.exp(2.0 * exponent * step * step)
    for direction in (1, -1):
        value = np.exp(exponent * v0 * v0)
        ratio = np.exp(exponent * (2.0 * direction * v0 * step + step * step))
        m = nearest
        if direction == -1:             # the centre pixel is counted going up
            value *= ratio
            ratio *= shrink
            m -= 1
        while 0 <= m < n_pix and value > floor:
            row[m] += scale * value
            value *= ratio
            ratio *= shrink
            m += direction


@numba.njit(cache=True, nogil=True, fastmath=True)
def fit_widths(ln_rest: np.ndarray, t: np.ndarray, f: np.ndarray, w: np.ndarray,
               inv_one_plus_z: np.ndarray, line_kind: np.ndarray, part_line: np.ndarray,
               part_ln_center: np.ndarray, part_scale: np.ndarray, widths: np.ndarray,
               n_widths: np.ndarray, amplitude: np.ndarray, chi2: np.ndarray,
               covariance: np.ndarray) -> None:  # pragma: no cover - compiled
    """Weighted least-squares fits of a line group at every width combination, in place.

    Parameters
    ----------
    ln_rest
        ``(B, M)`` ln of each window pixel's rest-frame wavelength (Å).
    t
        ``(M,)`` the linear continuum's variable across the window, −1 to 1.
    f, w
        ``(B, M)`` flux (continuum model subtracted) and weights, 0 where not valid.
    inv_one_plus_z
        ``(B,)`` 1 / (1 + z): profiles are per observed Å.
    line_kind
        ``(L,)`` the width axis (kind) of each line, design column ``2 + l``.
    part_line, part_ln_center, part_scale
        ``(P,)`` the Gaussians each line sums: its line, ln of its rest wavelength, and
        ``ratio · c / (√(2π) λ)`` (a unit-flux profile is ``scale / σ · exp(−v²/2σ²)``).
    widths, n_widths
        ``(A, B, S_max)`` each kind's widths (km/s; 0: no component) per spectrum, and
        ``(A,)`` how many of them each kind has. Combination ``s`` takes width
        ``s // Π_{a' > a} S_a' mod S_a`` of kind ``a`` (the first kind varies slowest).
    amplitude, chi2
        ``(B, S, 2 + L)`` outputs: the amplitudes (continuum, then lines) and ``(B, S)``
        the χ² (NaN where the system is singular).
    covariance
        ``(B, S, 2 + L, 2 + L)`` output, the inverse normal matrix, or an empty
        ``(0, 0, 0, 0)`` array when not wanted.

    A component whose normal-matrix diagonal is not positive (zero width, or no valid
    pixel under it) gets a unit diagonal: amplitude 0.
    """
    n_rows, n_pix = f.shape
    n_lines = line_kind.size
    n_dim = 2 + n_lines
    n_kinds = n_widths.size
    s_max = widths.shape[2]
    n_combos = amplitude.shape[1]
    want_covariance = covariance.shape[0] > 0
    profiles = np.zeros((n_kinds, s_max, n_lines, n_pix))
    weighted = np.zeros((n_kinds, s_max, n_lines, n_pix))  # w × each profile
    tw = np.empty(n_pix)
    cross = np.zeros((n_kinds, s_max, n_lines, 3))       # Σ w p, Σ w t p, Σ w f p
    same = np.zeros((n_kinds, s_max, n_lines, n_lines))  # lines of one kind, one width
    mixed = np.zeros((n_kinds, s_max, n_lines, n_kinds, s_max, n_lines))
    normal = np.empty((n_dim, n_dim))
    rhs = np.empty(n_dim)
    work = np.empty((n_dim, n_dim))
    inverse = np.empty((n_dim, n_dim))
    index = np.empty(n_kinds, dtype=np.int64)
    for b in range(n_rows):
        w_b, f_b, x_b = w[b], f[b], ln_rest[b]
        for m in range(n_pix):
            tw[m] = t[m] * w_b[m]
        sum_w, sum_wt, sum_wtt = np.sum(w_b), np.sum(tw), _dot(tw, t)
        sum_wf, sum_wtf = _dot(w_b, f_b), _dot(tw, f_b)
        sum_wff = 0.0
        for m in range(n_pix):
            sum_wff += w_b[m] * f_b[m] * f_b[m]
        for a in range(n_kinds):
            for i in range(n_widths[a]):
                sigma = widths[a, b, i]
                for line in range(n_lines):
                    if line_kind[line] != a:
                        continue
                    row = profiles[a, i, line]
                    row[:] = 0.0
                    if sigma > 0:
                        for p in range(part_line.size):
                            if part_line[p] == line:
                                _add_gaussian(row, x_b, part_ln_center[p], sigma,
                                              part_scale[p] / sigma * inv_one_plus_z[b])
                    w_row = weighted[a, i, line]
                    for m in range(n_pix):
                        w_row[m] = w_b[m] * row[m]
                    cross[a, i, line, 0] = np.sum(w_row)
                    cross[a, i, line, 1] = _dot(w_row, t)
                    cross[a, i, line, 2] = _dot(w_row, f_b)
                    for other in range(line + 1):
                        if line_kind[other] == a:
                            value = _dot(w_row, profiles[a, i, other])
                            same[a, i, line, other] = value
                            same[a, i, other, line] = value
                    # against every profile of the kinds before this one (all computed):
                    # their weighted profile times this one
                    for a0 in range(a):
                        for j in range(n_widths[a0]):
                            for other in range(n_lines):
                                if line_kind[other] == a0:
                                    mixed[a0, j, other, a, i, line] = _dot(
                                        weighted[a0, j, other], row)
        for s in range(n_combos):
            rest = s
            for a in range(n_kinds - 1, -1, -1):
                index[a] = rest % n_widths[a]
                rest //= n_widths[a]
            normal[0, 0], normal[0, 1], normal[1, 0], normal[1, 1] = (sum_w, sum_wt, sum_wt,
                                                                      sum_wtt)
            rhs[0], rhs[1] = sum_wf, sum_wtf
            for line in range(n_lines):
                a, d = line_kind[line], 2 + line
                i = index[a]
                normal[d, 0] = normal[0, d] = cross[a, i, line, 0]
                normal[d, 1] = normal[1, d] = cross[a, i, line, 1]
                rhs[d] = cross[a, i, line, 2]
                for other in range(n_lines):
                    a2 = line_kind[other]
                    if a2 == a:
                        normal[d, 2 + other] = same[a, i, line, other]
                    elif a < a2:
                        normal[d, 2 + other] = mixed[a, i, line, a2, index[a2], other]
                    else:
                        normal[d, 2 + other] = mixed[a2, index[a2], other, a, i, line]
            for d in range(n_dim):
                if normal[d, d] <= 0:
                    normal[d, d] += 1.0
            work[:] = normal
            if not _invert(work, inverse):
                amplitude[b, s] = np.nan
                chi2[b, s] = np.nan
                if want_covariance:
                    covariance[b, s] = np.nan
                continue
            explained = 0.0
            for d in range(n_dim):
                value = 0.0
                for e in range(n_dim):
                    value += inverse[d, e] * rhs[e]
                amplitude[b, s, d] = value
                explained += value * rhs[d]
            chi2[b, s] = sum_wff - explained
            if want_covariance:
                covariance[b, s] = inverse


@numba.njit(cache=True, nogil=True)
def count_valid(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, start: np.ndarray,
                upper: np.ndarray, width: int) -> np.ndarray:  # pragma: no cover - compiled
    """Valid pixels ``(B,)`` of each spectrum's window: the ``width`` pixels from
    ``start`` ``(B,)`` that are on the grid ``loglam`` ``(P,)``, at or below ``upper``
    ``(B,)`` (log10 Å) and have a weight (:func:`pixel_weight` of ``flux`` and ``ivar``
    ``(B, P)`` > 0)."""
    n_rows, n_pix = ivar.shape
    counts = np.zeros(n_rows, dtype=np.int64)
    for b in range(n_rows):
        for j in range(width):
            i = start[b] + j
            if i >= n_pix or loglam[i] > upper[b]:
                break                   # the grid increases: no later pixel is inside
            if pixel_weight(np.float64(flux[b, i]), np.float64(ivar[b, i])) > 0:
                counts[b] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def gather_windows(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray,
                   loglam: np.ndarray, wave: np.ndarray, start: np.ndarray,
                   upper: np.ndarray, one_plus_z: np.ndarray, rows: np.ndarray,
                   f: np.ndarray, w: np.ndarray, model: np.ndarray, rest: np.ndarray,
                   ln_rest: np.ndarray) -> None:  # pragma: no cover - compiled
    """The windows of the spectra ``rows`` ``(b,)`` as the line fit reads them, in place.

    Window pixel ``j`` of row ``b`` is grid pixel ``i = start[b] + j``, clipped to the
    last (a window cut by the end of the grid repeats its last pixel); it is *inside*
    when ``i`` is on the grid and ``loglam[i] ≤ upper[b]``.

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` the spectra, float32 or float64.
    continuum
        ``(B, P)`` float64 continuum model to subtract, or ``(0, 0)`` for none. A row
        whose window has a non-finite model pixel gets none (0).
    loglam, wave
        ``(P,)`` the grid in log10 Å and in Å.
    start, upper, one_plus_z
        ``(B,)`` each window's first pixel, its upper end (log10 Å) and 1 + z.
    f, w, model, rest, ln_rest
        ``(b, M)`` float64 outputs: flux minus the model (0 where the weight is 0),
        weight (:func:`pixel_weight` inside the window, else 0), the
        model, and the rest wavelength (Å) and its ln.
    """
    n_pix = flux.shape[1]
    width = f.shape[1]
    has_model = continuum.shape[0] > 0
    for r in range(rows.size):
        b = rows[r]
        finite_model = has_model
        for j in range(width):
            i = min(start[b] + j, n_pix - 1)
            value = continuum[b, i] if has_model else 0.0
            model[r, j] = value
            if not np.isfinite(value):
                finite_model = False
        for j in range(width):
            i = start[b] + j
            inside = i < n_pix
            i = min(i, n_pix - 1)
            inside = inside and loglam[i] <= upper[b]
            flux_i = np.float64(flux[b, i])
            weight = pixel_weight(flux_i, np.float64(ivar[b, i])) if inside else 0.0
            if not finite_model:
                model[r, j] = 0.0
            w[r, j] = weight
            f[r, j] = flux_i - model[r, j] if weight > 0 else 0.0
            rest[r, j] = wave[i] / one_plus_z[b]
            ln_rest[r, j] = np.log(rest[r, j])


def load_kernels() -> None:
    """Load the compiled kernels now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    ln_rest = np.log(np.linspace(6500.0, 6600.0, 5))[None, :]
    one = np.ones((1, 5))
    fit_widths(ln_rest, np.linspace(-1, 1, 5), one, one, np.ones(1), np.zeros(1, np.int64),
               np.zeros(1, np.int64), np.log([6550.0]), np.ones(1), np.full((1, 1, 1), 100.0),
               np.ones(1, np.int64), np.empty((1, 1, 3)), np.empty((1, 1)),
               np.empty((0, 0, 0, 0)))
    loglam = np.full(5, np.log10(6500.0))
    starts, upper = np.zeros(1, np.int64), np.full(1, 10.0)
    for flux in (one, one.astype(np.float32)):
        count_valid(flux, flux, loglam, starts, upper, 5)
        for continuum in (np.empty((0, 0)), one):
            out = [np.empty((1, 5)) for _ in range(5)]
            gather_windows(flux, flux, continuum, loglam, 10.0**loglam, starts, upper,
                           np.ones(1), np.zeros(1, np.int64), *out)
