"""Compiled (numba) kernels of the exact refit on the CPU: normal equations, their
solution, χ², model.

The exact refit (:mod:`~gasnet_plugin.engines.eigen_refit`) fits a class's ``K``
eigenspectra to each spectrum at a few whole-pixel lags. On the CPU these kernels form
each fit's normal equations straight from the class's padded eigenspectra ``(K, L + 2)``
(a lag's window is a slice of each row, so nothing is gathered or copied), as
``K (K + 1) / 2`` vectorized dot products over the ``N`` pixels: about half the
arithmetic of the batched matrix product, which also fills the symmetric half and runs
tiny ``K × K`` output blocks; each system is then solved in float64
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
def normal_equations(padded: np.ndarray, lags: np.ndarray, offsets: np.ndarray,
                     f: np.ndarray, w: np.ndarray, normal: np.ndarray, rhs: np.ndarray,
                     ) -> None:  # pragma: no cover - compiled
    """The weighted normal equations of every row and window position, in place.

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
            for k in range(n_coef):
                x_k = padded[k, start:start + n_obs]
                wx_k = weighted[k]
                for n in range(n_obs):
                    wx_k[n] = w_i[n] * x_k[n]
                rhs[i, o, k] = _dot(wx_k, f_i)
            for k in range(n_coef):
                j = k
                while j + 4 <= n_coef:          # four columns per pass over the pixels
                    values = _dot4(weighted[k], padded[j, start:start + n_obs],
                                   padded[j + 1, start:start + n_obs],
                                   padded[j + 2, start:start + n_obs],
                                   padded[j + 3, start:start + n_obs])
                    for q in range(4):
                        normal[i, o, k, j + q] = values[q]
                        normal[i, o, j + q, k] = values[q]
                    j += 4
                for last in range(j, n_coef):
                    value = _dot(weighted[k], padded[last, start:start + n_obs])
                    normal[i, o, k, last] = value
                    normal[i, o, last, k] = value


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
    residual_chi2(padded, lags, offsets, f, f, rhs, np.empty((1, 3)))
    solve_ridge(normal, rhs, np.empty((1, 3, 2)))
    blended_model(padded, lags, rhs[:, 0], np.zeros(1, dtype=np.float32), f)
