"""Compiled (numba) kernels of the exact refit on the CPU: normal equations, their
solution, χ², model.

The exact refit (:mod:`~gasnet_plugin.engines.eigen_refit`) fits a class's ``K``
eigenspectra to each spectrum at a few whole-pixel lags. On the CPU these kernels form
each fit's normal equations straight from the class's padded eigenspectra ``(K, L + 2)``
(a lag's window is a slice of each row, so nothing is gathered or copied), as the
upper triangle's vectorized dot products over the ``N`` pixels, several per pass so that
each loaded pixel serves several products: about half the arithmetic of the batched
matrix product, which also fills the symmetric half and runs tiny ``K × K`` output
blocks. A lag and its two neighbours (the refit's first step) share one pass
(:func:`normal_equations_centred`). Each system is then solved in float64
(:func:`solve_ridge`). One row at a time, so a row's numbers do not depend on the rows
fitted with it. Sums run in float32 vector lanes (the batched product's precision), χ² in
float64. The torch path of :func:`~gasnet_plugin.engines.eigen_refit.fit_at_lags`
does the same on other devices and is the kernels' reference in the tests.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:  # pragma: no cover - compiled
    """Σ a·b of two float32 vectors of one length (vectorized: fastmath reorders)."""
    total = np.float32(0.0)
    for n in range(a.size):
        total += a[n] * b[n]
    return total


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot4(a: np.ndarray, b0: np.ndarray, b1: np.ndarray, b2: np.ndarray, b3: np.ndarray,
          ) -> tuple[np.float32, np.float32, np.float32, np.float32]:  # pragma: no cover
    """Σ a·b0, …, Σ a·b3 in one pass: ``a`` is loaded once for four products."""
    t0 = t1 = t2 = t3 = np.float32(0.0)
    for n in range(a.size):
        x = a[n]
        t0 += x * b0[n]
        t1 += x * b1[n]
        t2 += x * b2[n]
        t3 += x * b3[n]
    return t0, t1, t2, t3


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot2x4(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray, b2: np.ndarray,
            b3: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """The eight sums ``Σ a_r·b_q`` (``r`` = 0, 1; ``q`` = 0 … 3; in that order) in one
    pass: six loads for eight products (a 2 × 4 tile of the normal matrix)."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    for n in range(a0.size):
        x = a0[n]
        y = a1[n]
        c0, c1, c2, c3 = b0[n], b1[n], b2[n], b3[n]
        s00 += x * c0
        s01 += x * c1
        s02 += x * c2
        s03 += x * c3
        s10 += y * c0
        s11 += y * c1
        s12 += y * c2
        s13 += y * c3
    return s00, s01, s02, s03, s10, s11, s12, s13


@numba.njit(cache=True, nogil=True, fastmath=True)
def _shifted3x4(x: np.ndarray, y0: np.ndarray, y1: np.ndarray, y2: np.ndarray,
                y3: np.ndarray, u0: np.ndarray, u1: np.ndarray, u2: np.ndarray,
                ) -> tuple:  # pragma: no cover - compiled
    """The twelve sums ``Σ_m x_m y_q,m u_o,m`` (``q`` = 0 … 3 outer, ``o`` = 0 … 2 inner):
    four pair products, each weighted by three shifted weight vectors, in one pass (eight
    loads for twelve products)."""
    a00 = a01 = a02 = a10 = a11 = a12 = np.float32(0.0)
    a20 = a21 = a22 = a30 = a31 = a32 = np.float32(0.0)
    for m in range(x.size):
        xm = x[m]
        p0, p1, p2, p3 = xm * y0[m], xm * y1[m], xm * y2[m], xm * y3[m]
        v0, v1, v2 = u0[m], u1[m], u2[m]
        a00 += p0 * v0
        a01 += p0 * v1
        a02 += p0 * v2
        a10 += p1 * v0
        a11 += p1 * v1
        a12 += p1 * v2
        a20 += p2 * v0
        a21 += p2 * v1
        a22 += p2 * v2
        a30 += p3 * v0
        a31 += p3 * v1
        a32 += p3 * v2
    return a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32


@numba.njit(cache=True, nogil=True, fastmath=True)
def _shifted3(x: np.ndarray, y: np.ndarray, u0: np.ndarray, u1: np.ndarray, u2: np.ndarray,
              ) -> tuple:  # pragma: no cover - compiled
    """``Σ_m x_m y_m u_o,m`` for ``o`` = 0, 1, 2 in one pass (:func:`_shifted3x4` for a
    single pair)."""
    a0 = a1 = a2 = np.float32(0.0)
    for m in range(x.size):
        p = x[m] * y[m]
        a0 += p * u0[m]
        a1 += p * u1[m]
        a2 += p * u2[m]
    return a0, a1, a2


@numba.njit(cache=True, nogil=True, fastmath=True)
def normal_equations(padded: np.ndarray, lags: np.ndarray, offsets: np.ndarray,
                     f: np.ndarray, w: np.ndarray, normal: np.ndarray, rhs: np.ndarray,
                     ) -> None:  # pragma: no cover - compiled
    """The weighted normal equations of every row and window position, in place.

    Each window's weighted eigenspectra ``w x_k`` are formed once; the normal matrix is
    then filled by tiles of two weighted rows against four eigenspectra rows
    (:func:`_dot2x4`). :func:`normal_equations_centred` does positions 0, 1, 2 together
    in fewer passes.

    Parameters
    ----------
    padded
        ``(K, L + 2)`` float32 eigenspectra with one zero pixel at each end.
    lags, offsets
        ``(b,)`` and ``(O,)`` int64: row ``i`` at position ``o`` is fitted with the
        eigenspectra pixels ``lags[i] + offsets[o]`` onward (position 1 is the lag itself).
    f, w
        ``(b, N)`` float32 fluctuation and ivar.
    normal, rhs
        ``(b, O, K, K)`` and ``(b, O, K)`` float32 outputs: ``Σ w x_k x_j`` and
        ``Σ w x_k f``.
    """
    n_rows, n_obs = f.shape
    n_coef = padded.shape[0]
    weighted = np.empty((n_coef, n_obs), dtype=np.float32)
    for i in range(n_rows):
        f_i = f[i]
        w_i = w[i]
        for o in range(offsets.size):
            start = lags[i] + offsets[o]
            stop = start + n_obs
            for k in range(n_coef):
                x_k = padded[k, start:stop]
                wx_k = weighted[k]
                for n in range(n_obs):
                    wx_k[n] = w_i[n] * x_k[n]
                rhs[i, o, k] = _dot(wx_k, f_i)
            for k in range(0, n_coef, 2):
                pair = k + 1 < n_coef           # rows k and k + 1 share each pass
                j = k
                while j + 4 <= n_coef:
                    if pair:
                        values = _dot2x4(weighted[k], weighted[k + 1],
                                         padded[j, start:stop], padded[j + 1, start:stop],
                                         padded[j + 2, start:stop],
                                         padded[j + 3, start:stop])
                    else:
                        first = _dot4(weighted[k], padded[j, start:stop],
                                      padded[j + 1, start:stop], padded[j + 2, start:stop],
                                      padded[j + 3, start:stop])
                        values = (first[0], first[1], first[2], first[3],
                                  np.float32(0.0), np.float32(0.0), np.float32(0.0),
                                  np.float32(0.0))
                    for q in range(4):
                        normal[i, o, k, j + q] = values[q]
                        normal[i, o, j + q, k] = values[q]
                        if pair:
                            normal[i, o, k + 1, j + q] = values[4 + q]
                            normal[i, o, j + q, k + 1] = values[4 + q]
                    j += 4
                for last in range(j, n_coef):
                    x_last = padded[last, start:stop]
                    value = _dot(weighted[k], x_last)
                    normal[i, o, k, last] = value
                    normal[i, o, last, k] = value
                    if pair:
                        value = _dot(weighted[k + 1], x_last)
                        normal[i, o, k + 1, last] = value
                        normal[i, o, last, k + 1] = value


@numba.njit(cache=True, nogil=True, fastmath=True)
def normal_equations_centred(padded: np.ndarray, lags: np.ndarray, f: np.ndarray,
                             w: np.ndarray, normal: np.ndarray, rhs: np.ndarray,
                             ) -> None:  # pragma: no cover - compiled
    """:func:`normal_equations` at positions 0, 1, 2 (``lags − 1, lags, lags + 1``) at once.

    The three windows are one run of ``N + 2`` eigenspectra pixels from ``lags[i]`` seen
    against shifted weights: ``Σ_n w_n x_k(s + o + n) x_j(s + o + n) = Σ_m x_k(s + m)
    x_j(s + m) w_(m − o)`` (``w`` zero outside its ``N`` pixels). So each pair product is
    formed once and weighted three times in the same pass (:func:`_shifted3x4`), which
    loads a third of what three separate fits load.

    ``normal`` ``(b, 3, K, K)`` and ``rhs`` ``(b, 3, K)`` float32 outputs; the other
    arguments as in :func:`normal_equations`.
    """
    n_rows, n_obs = f.shape
    n_coef = padded.shape[0]
    width = n_obs + 2
    w_padded = np.zeros(n_obs + 4, dtype=np.float32)     # w_(m − o) is w_padded[2 + m − o]
    wf_padded = np.zeros(n_obs + 4, dtype=np.float32)
    for i in range(n_rows):
        for n in range(n_obs):
            w_padded[2 + n] = w[i, n]
            wf_padded[2 + n] = w[i, n] * f[i, n]
        start = lags[i]
        stop = start + width
        w0, w1, w2 = w_padded[2:2 + width], w_padded[1:1 + width], w_padded[0:width]
        wf0, wf1, wf2 = wf_padded[2:2 + width], wf_padded[1:1 + width], wf_padded[0:width]
        for k in range(n_coef):
            x_k = padded[k, start:stop]
            r0 = r1 = r2 = np.float32(0.0)
            for m in range(width):
                x = x_k[m]
                r0 += x * wf0[m]
                r1 += x * wf1[m]
                r2 += x * wf2[m]
            rhs[i, 0, k] = r0
            rhs[i, 1, k] = r1
            rhs[i, 2, k] = r2
            j = k
            while j + 4 <= n_coef:
                values = _shifted3x4(x_k, padded[j, start:stop], padded[j + 1, start:stop],
                                     padded[j + 2, start:stop], padded[j + 3, start:stop],
                                     w0, w1, w2)
                for q in range(4):
                    for o in range(3):
                        normal[i, o, k, j + q] = values[3 * q + o]
                        normal[i, o, j + q, k] = values[3 * q + o]
                j += 4
            for last in range(j, n_coef):
                values3 = _shifted3(x_k, padded[last, start:stop], w0, w1, w2)
                for o in range(3):
                    normal[i, o, k, last] = values3[o]
                    normal[i, o, last, k] = values3[o]


@numba.njit(cache=True, nogil=True)
def solve_ridge(normal: np.ndarray, rhs: np.ndarray, coef: np.ndarray,
                ) -> None:  # pragma: no cover - compiled
    """``coef`` ``(b, O, K)`` float64, in place: each system of :func:`normal_equations`
    (``(b, O, K, K)``, ``(b, O, K)``) solved in float64 with a ridge of 1e-10 of its mean
    diagonal (at least 1e-40; a window beyond the template's grid has all-zero
    eigenspectra), by Gaussian elimination with partial pivoting. NaN where a pivot is 0."""
    n_rows, n_positions, n_coef = rhs.shape
    work = np.empty((n_coef, n_coef))
    x = np.empty(n_coef)
    for i in range(n_rows):
        for o in range(n_positions):
            scale = 0.0
            for k in range(n_coef):
                scale += np.float64(normal[i, o, k, k])
            ridge = 1e-10 * max(scale / n_coef, 1e-30)
            for k in range(n_coef):
                x[k] = rhs[i, o, k]
                for j in range(n_coef):
                    work[k, j] = normal[i, o, k, j]
                work[k, k] += ridge
            singular = False
            for col in range(n_coef):
                pivot = col
                for r in range(col + 1, n_coef):
                    if abs(work[r, col]) > abs(work[pivot, col]):
                        pivot = r
                if work[pivot, col] == 0.0:
                    singular = True
                    break
                if pivot != col:
                    for j in range(n_coef):
                        work[col, j], work[pivot, j] = work[pivot, j], work[col, j]
                    x[col], x[pivot] = x[pivot], x[col]
                for r in range(col + 1, n_coef):
                    factor = work[r, col] / work[col, col]
                    for j in range(col + 1, n_coef):
                        work[r, j] -= factor * work[col, j]
                    x[r] -= factor * x[col]
            for k in range(n_coef - 1, -1, -1):
                total = x[k]
                for j in range(k + 1, n_coef):
                    total -= work[k, j] * coef[i, o, j]
                coef[i, o, k] = np.nan if singular else total / work[k, k]


@numba.njit(cache=True, nogil=True, fastmath=True)
def residual_chi2(padded: np.ndarray, lags: np.ndarray, offsets: np.ndarray, f: np.ndarray,
                  w: np.ndarray, coef: np.ndarray, chi2: np.ndarray,
                  ) -> None:  # pragma: no cover - compiled
    """χ² of every fit from its residual (no cancellation between ``Σ w f²`` and
    ``bᵀa``: the small differences between neighbouring lags keep their precision).

    ``coef`` ``(b, O, K)`` float32 coefficients; ``chi2`` ``(b, O)`` float64 output; the
    other arguments as in :func:`normal_equations`."""
    n_rows, n_obs = f.shape
    n_coef = padded.shape[0]
    model = np.empty(n_obs, dtype=np.float32)
    for i in range(n_rows):
        f_i = f[i]
        w_i = w[i]
        for o in range(offsets.size):
            start = lags[i] + offsets[o]
            model[:] = 0.0
            for k in range(n_coef):
                a = coef[i, o, k]
                x_k = padded[k, start:start + n_obs]
                for n in range(n_obs):
                    model[n] += a * x_k[n]
            total = 0.0
            for n in range(n_obs):
                r = f_i[n] - model[n]
                total += np.float64(w_i[n] * r * r)
            chi2[i, o] = total


@numba.njit(cache=True, nogil=True, fastmath=True)
def blended_model(padded: np.ndarray, lags: np.ndarray, coef: np.ndarray, delta: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The model ``coef · eigenspectra`` at the sub-pixel lags ``lags + delta``, in place:
    the lag's model blended linearly with its neighbour's on ``delta``'s side.

    ``coef`` ``(b, K)`` float32, ``delta`` ``(b,)`` float32 with ``|delta| ≤ 1``, ``out``
    ``(b, N)`` float32; the other arguments as in :func:`normal_equations`."""
    n_rows, n_obs = out.shape
    n_coef = padded.shape[0]
    centre = np.empty(n_obs, dtype=np.float32)
    side = np.empty(n_obs, dtype=np.float32)
    for i in range(n_rows):
        start = lags[i] + 1
        toward = start - 1 if delta[i] < 0 else start + 1
        centre[:] = 0.0
        side[:] = 0.0
        for k in range(n_coef):
            a = coef[i, k]
            x_centre = padded[k, start:start + n_obs]
            x_side = padded[k, toward:toward + n_obs]
            for n in range(n_obs):
                centre[n] += a * x_centre[n]
                side[n] += a * x_side[n]
        frac = np.float32(abs(delta[i]))
        out_i = out[i]
        for n in range(n_obs):
            out_i[n] = (1 - frac) * centre[n] + frac * side[n]


def load_kernels() -> None:
    """Load the compiled kernels now (numba's on-disk cache; compiled on the first call
    after an install) by running them once on a tiny input, so that the cost is paid at
    set-up, not by the first batch."""
    padded = np.ones((2, 6), dtype=np.float32)
    lags, offsets = np.zeros(1, dtype=np.int64), np.arange(3, dtype=np.int64)
    f = np.ones((1, 3), dtype=np.float32)
    normal = np.empty((1, 3, 2, 2), dtype=np.float32)
    rhs = np.empty((1, 3, 2), dtype=np.float32)
    normal_equations(padded, lags, offsets, f, f, normal, rhs)
    normal_equations_centred(padded, lags, f, f, normal, rhs)
    residual_chi2(padded, lags, offsets, f, f, rhs, np.empty((1, 3)))
    solve_ridge(normal, rhs, np.empty((1, 3, 2)))
    blended_model(padded, lags, rhs[:, 0], np.zeros(1, dtype=np.float32), f)
