"""Flux-conserving rebinning of a padded batch of spectra onto one grid (compiled, numba).

Each output pixel is the exact overlap-weighted mean of the flux densities of the input
pixels it covers (bin-overlap integration of a piecewise constant flux density, in Å, as
specutils' ``FluxConservingResampler`` does); inverse variance is propagated exactly for
independent input pixels. One compiled pass per row walks the sorted input and output
edges together, O(M + P), with no Python loop per spectrum or per pixel. The resample
stage (:mod:`gasnet_plugin.stages.resample`) imports this module when it first runs, so
that numba loads only then.
"""

from __future__ import annotations

import numba
import numpy as np


def pixel_edges(centers: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres along the last axis, ``(..., M)`` → ``(..., M + 1)``.

    Interior edges are midpoints between neighbouring centres; the outer edges lie half a
    spacing beyond the outer centres (specutils' ``SpectralAxis.bin_edges`` rule).
    """
    centers = np.asarray(centers, dtype=np.float64)
    first = 1.5 * centers[..., :1] - 0.5 * centers[..., 1:2]
    last = 1.5 * centers[..., -1:] - 0.5 * centers[..., -2:-1]
    middle = 0.5 * (centers[..., 1:] + centers[..., :-1])
    return np.concatenate([first, middle, last], axis=-1)


@numba.njit(cache=True, nogil=True)
def _rebin_rows(centers: np.ndarray, flux: np.ndarray, ivar: np.ndarray, dropped: np.ndarray,
                n_pixels: np.ndarray, out_edges: np.ndarray, flux_out: np.ndarray,
                ivar_out: np.ndarray, n_broken: np.ndarray, n_valid: np.ndarray,
                ) -> None:  # pragma: no cover - compiled
    """Compiled kernel of :func:`rebin_flux_conserving`: per row, the input edges (the
    :func:`pixel_edges` rule) and valid pixels, then one merge walk over the sorted input
    and output edges, O(M + P)."""
    n_rows = centers.shape[0]
    n_out = out_edges.shape[0] - 1
    valid = np.empty(flux.shape[1], dtype=np.bool_)
    edges = np.empty(flux.shape[1] + 1)
    for r in range(n_rows):
        m = n_pixels[r]
        if m < 2:                       # no data (callers refuse single-pixel spectra)
            n_broken[r] = 0
            n_valid[r] = 0
            flux_out[r, :] = 0.0
            ivar_out[r, :] = 0.0
            continue
        increasing = True
        for i in range(1, m):
            if not centers[r, i] > centers[r, i - 1]:      # also catches NaN
                increasing = False
                break
        if not increasing or not np.isfinite(centers[r, 0]) \
                or not np.isfinite(centers[r, m - 1]):
            n_broken[r] = 0
            n_valid[r] = -1             # the caller flags the row BAD_INPUT
            flux_out[r, :] = 0.0
            ivar_out[r, :] = 0.0
            continue
        if m >= 2:
            edges[0] = 1.5 * centers[r, 0] - 0.5 * centers[r, 1]
            for i in range(1, m):
                edges[i] = 0.5 * (centers[r, i - 1] + centers[r, i])
            edges[m] = 1.5 * centers[r, m - 1] - 0.5 * centers[r, m - 2]
        broken = 0
        good = 0
        for i in range(m):
            f = flux[r, i]
            w = ivar[r, i]
            finite = np.isfinite(f) and np.isfinite(w)
            if not finite or w < 0.0:
                broken += 1
            valid[i] = finite and w > 0.0 and not dropped[r, i] \
                and edges[i + 1] > edges[i]
            good += valid[i]
        n_broken[r] = broken
        n_valid[r] = good
        flux_out[r, :] = 0.0
        ivar_out[r, :] = 0.0
        if good == 0:
            continue
        first = edges[0]
        last = edges[m]
        k = 0
        for j in range(n_out):
            lo = max(out_edges[j], first)
            hi = min(out_edges[j + 1], last)
            if hi <= lo:
                continue
            while k < m - 1 and edges[k + 1] <= lo:
                k += 1
            flux_sum = 0.0
            length = 0.0
            variance = 0.0
            kk = k
            while kk < m and edges[kk] < hi:
                if valid[kk]:
                    overlap = min(hi, edges[kk + 1]) - max(lo, edges[kk])
                    if overlap > 0.0:
                        flux_sum += np.float64(flux[r, kk]) * overlap
                        length += overlap
                        variance += overlap * overlap / np.float64(ivar[r, kk])
                kk += 1
            if length > 0.0 and variance > 0.0:
                flux_out[r, j] = flux_sum / length
                ivar_out[r, j] = length * length / variance


@numba.njit(cache=True, nogil=True)
def median_snr(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Per row, the median of ``flux * sqrt(ivar)`` over pixels with ``ivar > 0``; NaN
    for a row with none (the mean of the two middle values for an even count, as
    ``np.median``). ``flux``, ``ivar``: ``(N, P)``; returns ``(N,)`` float32."""
    n_rows, n_pixels = flux.shape
    out = np.full(n_rows, np.nan, dtype=np.float32)
    values = np.empty(n_pixels, dtype=np.float32)
    keys = np.empty(n_pixels, dtype=np.uint32)
    counts = np.empty(2048, dtype=np.int64)
    for r in range(n_rows):
        n = 0
        for j in range(n_pixels):
            if ivar[r, j] > 0:
                values[n] = flux[r, j] * np.sqrt(ivar[r, j])
                n += 1
        if n == 0:
            continue
        half = n >> 1
        if n & 1:
            out[r] = _kth_smallest(values[:n], half, keys, counts)
        else:
            low = _kth_smallest(values[:n], half - 1, keys, counts)
            # the next order statistic: low itself if it occurs more than `half` times
            # among the values up to it, else the smallest value above it
            at_most, above = 0, np.float32(np.inf)
            for i in range(n):
                v = values[i]
                if v <= low:
                    at_most += 1
                elif v < above:
                    above = v
            high = low if at_most > half else above
            out[r] = (low + high) / 2
    return out


@numba.njit(cache=True, nogil=True)
def _kth_smallest(values: np.ndarray, k: int, keys: np.ndarray,
                  counts: np.ndarray) -> np.float32:  # pragma: no cover - compiled
    """The ``k``-th smallest (from 0) of the float32 ``values`` (no NaN), by radix
    selection on their bits: each float's bits made an unsigned key that sorts as the
    float does, then 11, 11 and 10 bits at a time the bucket holding the ``k``-th key,
    keeping only that bucket's keys for the next pass. O(n) without the branchy
    partitions of a quickselect (:func:`median_snr` 1.8x faster per 4076-pixel row than
    with ``np.median``, in a one-off timing); exact: the value any selection gives (a
    zero's sign aside: −0 sorts below +0 here). ``keys`` ``(≥ n,)`` uint32 and
    ``counts`` ``(2048,)`` are workspace."""
    n = values.size
    bits = values.view(np.uint32)
    for i in range(n):
        b = bits[i]
        keys[i] = b ^ np.uint32(0xFFFFFFFF) if b >> 31 else b | np.uint32(0x80000000)
    prefix = np.uint32(0)
    for shift, width in ((21, 11), (10, 11), (0, 10)):
        mask = np.uint32((1 << width) - 1)
        counts[: 1 << width] = 0
        for i in range(n):
            counts[(keys[i] >> shift) & mask] += 1
        bucket, below = 0, 0
        while below + counts[bucket] <= k:
            below += counts[bucket]
            bucket += 1
        k -= below
        prefix |= np.uint32(bucket) << np.uint32(shift)
        kept = 0                                   # the bucket's keys, for the next pass
        for i in range(n):
            if (keys[i] >> shift) & mask == bucket:
                keys[kept] = keys[i]
                kept += 1
        n = kept
    key = prefix
    raw = key ^ np.uint32(0x80000000) if key >> 31 else key ^ np.uint32(0xFFFFFFFF)
    return np.array([raw], dtype=np.uint32).view(np.float32)[0]


def rebin_flux_conserving(centers: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                          n_pixels: np.ndarray, out_edges: np.ndarray,
                          dropped: np.ndarray | None = None, out_dtype: type = np.float64,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flux-conserving rebinning of a padded batch of spectra onto one output grid.

    Output pixel ``j`` of row ``r`` is ``Σ p_i f_i / Σ p_i`` over the valid input pixels
    ``i`` it overlaps by ``p_i`` Å, with inverse variance ``(Σ p_i)² / Σ (p_i² / ivar_i)``.
    A pixel is valid when its flux and ivar are finite, ``ivar > 0`` and it is not
    ``dropped``. The work is one compiled pass per row (numba) over the two sorted edge
    lists, O(M + P) per spectrum, with no Python loop per spectrum or pixel.

    Parameters
    ----------
    centers
        Input pixel centres, Å, shape ``(N, M)``, strictly increasing along each row. Row
        ``r`` has ``n_pixels[r]`` real pixels; the rest is padding and never read. Pixel
        edges follow :func:`pixel_edges`.
    flux
        Flux densities (per Å), shape ``(N, M)``.
    ivar
        Inverse variances of ``flux``, shape ``(N, M)``.
    n_pixels
        Number of real pixels per row, shape ``(N,)``; 0 (or 1) for a row with no data.
    out_edges
        Output pixel edges, Å, shape ``(P + 1,)``, increasing.
    dropped
        Pixels to leave out whatever their values (a survey mask), shape ``(N, M)``.
    out_dtype
        ``np.float64`` or ``np.float32`` for the outputs. The sums are float64 either way;
        float32 rounds each pixel's result once (as ``astype`` would, overflow to inf), so
        no float64 copy of the batch is made.

    Returns
    -------
    flux_out, ivar_out
        Shape ``(N, P)``, ``out_dtype``. Both are 0 where no valid input overlaps an output
        pixel.
    n_broken
        Per row, real pixels with non-finite flux or ivar, or negative ivar, ``(N,)``.
    n_valid
        Per row, valid input pixels, ``(N,)``; -1 where the centres of a row are not
        finite and strictly increasing (that row is left at 0).
    """
    n_rows, width = flux.shape
    n_out = out_edges.size - 1
    flux_out = np.empty((n_rows, n_out), dtype=out_dtype)
    ivar_out = np.empty((n_rows, n_out), dtype=out_dtype)
    n_broken = np.empty(n_rows, dtype=np.int64)
    n_valid = np.empty(n_rows, dtype=np.int64)
    if dropped is None:
        dropped = np.zeros((n_rows, width), dtype=np.bool_)
    dtype = np.float32 if flux.dtype == ivar.dtype == np.float32 else np.float64
    _rebin_rows(np.ascontiguousarray(centers, dtype=np.float64),
                np.ascontiguousarray(flux, dtype=dtype),
                np.ascontiguousarray(ivar, dtype=dtype),
                np.ascontiguousarray(dropped, dtype=np.bool_),
                np.ascontiguousarray(n_pixels, dtype=np.int64),
                np.ascontiguousarray(out_edges, dtype=np.float64),
                flux_out, ivar_out, n_broken, n_valid)
    return flux_out, ivar_out, n_broken, n_valid


def load_kernels() -> None:
    """Load the compiled kernels now (numba's on-disk cache, ~0.2 s on the first call of a
    process) by running them once on a tiny input, so that this start-up cost is paid at
    set-up, not by the first batch."""
    centers = np.array([[1.0, 2.0, 3.0]])
    for dtype in (np.float32, np.float64):
        values = np.ones((1, 3), dtype=dtype)
        for out_dtype in (np.float32, np.float64):
            rebin_flux_conserving(centers, values, values, np.array([3]),
                                  np.array([1.5, 2.5]), out_dtype=out_dtype)
    median_snr(np.ones((1, 3), np.float32), np.ones((1, 3), np.float32))
