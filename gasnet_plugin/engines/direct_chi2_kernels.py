"""Compiled (numba) χ² curves summed directly over the lags, for classes with few lags.

The scan's FFT path (:func:`~gasnet_plugin.engines.eigen_scan.chi2_curves_fast`) costs the
same for every class: coefficient products over the whole transform length and one
inverse FFT. A class with few lags (the default model's STAR: 44) is cheaper summed
directly: the model ``m = c @ E`` on the rest-frame grid, then at each lag ``s``
``Σ_j w_j m(s + j)² − 2 Σ_j w_j f_j m(s + j)``, ``2 · S · N`` multiply-adds per
spectrum (:func:`~gasnet_plugin.engines.eigen_scan.direct_is_cheaper` decides). Float32
sums in vector lanes, as the FFT path's float32 transforms; the two agree to float32
rounding of ``Σ w f²`` (tested). One spectrum at a time: a row's curve does not depend on
the rows scanned with it.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def _four_lags(w: np.ndarray, wf2: np.ndarray, p0: np.ndarray, p1: np.ndarray,
               p2: np.ndarray, p3: np.ndarray, q0: np.ndarray, q1: np.ndarray,
               q2: np.ndarray, q3: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """``Σ_j w_j p_l,j − wf2_j q_l,j`` for four lags ``l`` in one pass (``p``: the squared
    model, ``q``: the model, each from the lag on): the weights are loaded once."""
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for j in range(w.size):
        u = w[j]
        v = wf2[j]
        a0 += u * p0[j] - v * q0[j]
        a1 += u * p1[j] - v * q1[j]
        a2 += u * p2[j] - v * q2[j]
        a3 += u * p3[j] - v * q3[j]
    return a0, a1, a2, a3


@numba.njit(cache=True, nogil=True, fastmath=True)
def chi2_curves_direct(eigenvectors: np.ndarray, coefficients: np.ndarray,
                       fluctuation: np.ndarray, ivar: np.ndarray, out: np.ndarray,
                       ) -> None:  # pragma: no cover - compiled
    """The lag-dependent part of the χ² curves, in place.

    Parameters
    ----------
    eigenvectors
        ``(K, L)`` float32 eigenspectra on the rest-frame grid.
    coefficients
        ``(B, K)`` float32: the model is ``coefficients @ eigenvectors``.
    fluctuation, ivar
        ``(B, N)`` float32 preprocessed spectra, ``N ≤ L``.
    out
        ``(B, S)`` float32 output, ``S ≤ L − N + 1``: at lag ``s`` (rest pixel ``s`` on
        observed pixel 0) ``Σ_j w_j m(s + j)² − 2 Σ_j w_j f_j m(s + j)``; add ``Σ w f²``
        for the χ².
    """
    n_rows, n_obs = fluctuation.shape
    n_coef, length = eigenvectors.shape
    n_lags = out.shape[1]
    model = np.empty(length, dtype=np.float32)
    squared = np.empty(length, dtype=np.float32)
    wf2 = np.empty(n_obs, dtype=np.float32)
    for i in range(n_rows):
        model[:] = 0.0
        for k in range(n_coef):
            a = coefficients[i, k]
            e_k = eigenvectors[k]
            for n in range(length):
                model[n] += a * e_k[n]
        for n in range(length):
            squared[n] = model[n] * model[n]
        w = ivar[i]
        f = fluctuation[i]
        for n in range(n_obs):
            wf2[n] = 2 * w[n] * f[n]
        s = 0
        while s + 4 <= n_lags:
            sums = _four_lags(w, wf2, squared[s:s + n_obs], squared[s + 1:s + 1 + n_obs],
                              squared[s + 2:s + 2 + n_obs], squared[s + 3:s + 3 + n_obs],
                              model[s:s + n_obs], model[s + 1:s + 1 + n_obs],
                              model[s + 2:s + 2 + n_obs], model[s + 3:s + 3 + n_obs])
            for q in range(4):
                out[i, s + q] = sums[q]
            s += 4
        for lag in range(s, n_lags):
            total = np.float32(0.0)
            for n in range(n_obs):
                total += w[n] * squared[lag + n] - wf2[n] * model[lag + n]
            out[i, lag] = total


def load_kernels() -> None:
    """Load the compiled kernel now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    ones = np.ones((1, 6), dtype=np.float32)
    chi2_curves_direct(ones, np.ones((1, 1), dtype=np.float32), ones[:, :2], ones[:, :2],
                       np.empty((1, 5), dtype=np.float32))
