"""Candidate redshifts from χ² curves: local minima, picked far enough apart.

:func:`pick_separated_minima` is what the engine calls: on the CPU one compiled (numba)
pass per curve finds its local minima and picks among them; elsewhere
:func:`minima_only` and :func:`pick_separated_window` do the same with whole-tensor
operations (``count`` passes over every curve), and are the kernel's reference in the
tests.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch


def local_minima(curves: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` bool: finite samples no higher than their neighbours (the two ends: than
    their one neighbour)."""
    mask = torch.isfinite(curves)
    middle = curves[:, 1:-1]
    mask[:, 1:-1] &= (middle <= curves[:, :-2]) & (middle <= curves[:, 2:])
    mask[:, 0] &= curves[:, 0] <= curves[:, 1]
    mask[:, -1] &= curves[:, -1] <= curves[:, -2]
    return mask


def minima_only(curves: torch.Tensor) -> torch.Tensor:
    """``curves`` with every sample that is not a local minimum set to +inf (a new tensor)."""
    return curves.masked_fill(~local_minima(curves), math.inf)


def pick_separated_window(values: torch.Tensor, count: int, halfwidth: int,
                          in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` lowest entries of ``values`` ``(B, M)``, each more than ``halfwidth``
    samples from every better one (a window of ``2·halfwidth + 1`` is blanked after each
    pick). Returns indices ``(B, count)`` and values ``(B, count)``; inf where none is left.
    ``in_place`` lets it blank ``values`` itself instead of a copy.
    """
    remaining = values if in_place else values.clone()
    offsets = torch.arange(-halfwidth, halfwidth + 1, device=values.device)
    indices, picked = [], []
    for _ in range(count):
        best = torch.argmin(remaining, dim=1)
        indices.append(best)
        picked.append(remaining.gather(1, best[:, None])[:, 0])
        window = (best[:, None] + offsets[None, :]).clamp(0, values.shape[1] - 1)
        remaining.scatter_(1, window, math.inf)
    return torch.stack(indices, dim=1), torch.stack(picked, dim=1)


def lower_envelope(curves: list[torch.Tensor], offsets: list[int]) -> torch.Tensor:
    """The lower envelope of class curves on one grid ``u = lag + offsets[class]`` (lags of
    every class aligned in ln(1 + z)), ``(B, U)``; inf where no class reaches, NaN where
    a curve is NaN (:func:`envelope_class` tells which class gives a sample).

    Parameters
    ----------
    curves
        Per class ``(B, S_c)`` χ² curves.
    offsets
        Per class the position of its lag 0 on the common grid.
    """
    n_rows = curves[0].shape[0]
    size = int(max(o + c.shape[1] for o, c in zip(offsets, curves, strict=True)))
    envelope = torch.full((n_rows, size), math.inf, dtype=curves[0].dtype,
                          device=curves[0].device)
    for curve, offset in zip(curves, offsets, strict=True):
        part = envelope[:, int(offset):int(offset) + curve.shape[1]]
        torch.minimum(part, curve, out=part)
    return envelope


def envelope_class(curves: list[torch.Tensor], offsets: list[int], u: torch.Tensor,
                   ) -> torch.Tensor:
    """The class giving the lower envelope at the samples ``u`` ``(B, M)`` int64: the first
    class, in order, whose curve is lower than every class before it there (0 where none
    is: no class reaches ``u``, or every value is inf or NaN), ``(B, M)`` int64. Only the
    picked samples are looked at; nothing of the envelope's size is made."""
    which = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    running = torch.full(u.shape, math.inf, dtype=curves[0].dtype, device=u.device)
    for c, (curve, offset) in enumerate(zip(curves, offsets, strict=True)):
        lag = u - int(offset)
        inside = (lag >= 0) & (lag < curve.shape[1])
        value = curve.gather(1, lag.clamp(0, curve.shape[1] - 1))
        value = torch.where(inside, value, torch.full_like(value, math.inf))
        which = torch.where(value < running, c, which)
        running = torch.minimum(running, value)
    return which


def pick_separated_minima(curves: torch.Tensor, count: int, halfwidth: int,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pick_separated_window(minima_only(curves), count, halfwidth)``: the ``count``
    lowest local minima of each curve ``(B, M)``, each more than ``halfwidth`` samples from
    every better one; indices ``(B, count)`` int64 and values ``(B, count)`` (inf at index
    0 where none is left). On the CPU through the compiled :func:`_pick_rows`, the same
    numbers bit for bit."""
    if curves.device.type != "cpu":
        return pick_separated_window(minima_only(curves), count, halfwidth, in_place=True)
    values = np.ascontiguousarray(curves.numpy())
    indices = np.empty((values.shape[0], count), dtype=np.int64)
    picked = np.empty((values.shape[0], count), dtype=values.dtype)
    _pick_rows(values, count, halfwidth, indices, picked)
    return torch.from_numpy(indices), torch.from_numpy(picked)


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz", "reassoc"})
def _lowest(values: np.ndarray) -> float:  # pragma: no cover - compiled
    """The smallest of ``values`` (no NaN among them, so the minimum vectorizes; inf
    when empty)."""
    lowest = np.inf
    for value in values:
        lowest = min(lowest, value)
    return lowest


@numba.njit(cache=True, nogil=True)
def _pick_rows(values: np.ndarray, count: int, halfwidth: int, indices: np.ndarray,
               picked: np.ndarray) -> None:  # pragma: no cover - compiled
    """Per row of ``values`` ``(B, M)``, in place: its local minima (finite, no higher
    than their neighbours; the ends than their one neighbour), then ``count`` times the
    lowest minimum not yet blanked (the first of equal ones), blanking the minima within
    ``halfwidth`` samples of it. Where none is left: inf at sample 0, as ``argmin`` over
    the blanked (all-inf) curve gives.

    The minima are gathered once, in order, into a compact array of their values
    (without branches), so that each pick is a vectorized minimum over them, and
    blanking sets the neighbours' values to inf."""
    n_rows, size = values.shape
    where = np.empty(size, dtype=np.int64)
    left = np.empty(size, dtype=values.dtype)       # the minima's values; inf: blanked
    is_minimum = np.empty(size, dtype=np.bool_)
    for b in range(n_rows):
        row = values[b]
        # the mask without branches (vectorized), then the minima's positions
        for m in range(1, size - 1):
            v = row[m]
            is_minimum[m] = (v <= row[m - 1]) & (v <= row[m + 1]) & (abs(v) < np.inf)
        is_minimum[0] = abs(row[0]) < np.inf and (size == 1 or row[0] <= row[1])
        is_minimum[size - 1] = abs(row[size - 1]) < np.inf and (
            size == 1 or row[size - 1] <= row[size - 2])
        n_minima = 0
        for m in range(size):            # written every time, kept where a minimum
            where[n_minima] = m
            left[n_minima] = row[m]
            n_minima += is_minimum[m]
        candidates = left[:n_minima]
        for k in range(count):
            lowest = _lowest(candidates)
            if not lowest < np.inf:      # nothing left: argmin of an all-inf row gives 0
                indices[b, k] = 0
                picked[b, k] = np.inf
                continue
            j = 0
            while candidates[j] != lowest:      # the first of equal ones
                j += 1
            best = where[j]
            indices[b, k] = best
            picked[b, k] = row[best]
            q = j
            while q >= 0 and where[q] >= best - halfwidth:
                candidates[q] = np.inf
                q -= 1
            q = j + 1
            while q < n_minima and where[q] <= best + halfwidth:
                candidates[q] = np.inf
                q += 1


def load_kernels() -> None:
    """Load the compiled kernel now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    pick_separated_minima(torch.ones((1, 4)), 2, 1)
