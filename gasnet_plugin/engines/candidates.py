"""Candidate redshifts from χ² curves: local minima, picked far enough apart."""

from __future__ import annotations

import math

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


def lower_envelope(curves: list[torch.Tensor], offsets: list[int],
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower envelope of class curves on one grid ``u = lag + offsets[class]`` (lags of
    every class aligned in ln(1 + z)).

    Parameters
    ----------
    curves
        Per class ``(B, S_c)`` χ² curves.
    offsets
        Per class the position of its lag 0 on the common grid.

    Returns
    -------
    ``(B, U)`` χ² and the class index of each sample ``(B, U)`` int64.
    """
    n_rows = curves[0].shape[0]
    device = curves[0].device
    size = int(max(o + c.shape[1] for o, c in zip(offsets, curves, strict=True)))
    envelope = torch.full((n_rows, size), math.inf, dtype=curves[0].dtype, device=device)
    which = torch.zeros((n_rows, size), dtype=torch.int64, device=device)
    for c, curve in enumerate(curves):
        o = int(offsets[c])
        part = envelope[:, o:o + curve.shape[1]]
        better = curve < part
        part.copy_(torch.minimum(part, curve))
        which[:, o:o + curve.shape[1]].masked_fill_(better, c)
    return envelope, which
