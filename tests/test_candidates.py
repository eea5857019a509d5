"""Candidate picking: the compiled CPU pass against the whole-tensor reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gasnet_plugin.engines.candidates import (
    minima_only,
    pick_separated_minima,
    pick_separated_window,
)


def curves_with_traps(seed: int) -> torch.Tensor:
    """Float32 curves with what the picking must get right: plateaus and ties (rounded
    values), NaN and inf samples, minima at both ends, a row with a single finite sample
    and a row with none."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=(12, 300)).cumsum(axis=1), 1).astype(np.float32)
    values[0, ::7] = np.nan
    values[1, 5:40] = np.inf
    values[2, :] = values[2, 0]                      # one long plateau
    values[3, 0], values[3, -1] = -100.0, -100.0      # tied minima at the two ends
    values[4, :] = np.inf
    values[4, 150] = 1.0                             # one finite sample
    values[5, :] = np.nan                            # nothing at all
    return torch.from_numpy(values)


@pytest.mark.parametrize("count, halfwidth", [(1, 0), (5, 3), (8, 20), (40, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_picking_equals_the_tensor_reference(seed, count, halfwidth):
    curves = curves_with_traps(seed)
    expected_index, expected_value = pick_separated_window(minima_only(curves), count,
                                                           halfwidth)
    index, value = pick_separated_minima(curves, count, halfwidth)
    assert torch.equal(index, expected_index)
    assert value.dtype == expected_value.dtype
    assert torch.equal(value, expected_value)
    # every pick is a local minimum, and picks are more than halfwidth apart
    found = torch.isfinite(value)
    minima = torch.isfinite(minima_only(curves))
    assert torch.all(minima.gather(1, index)[found])
    for row in range(curves.shape[0]):
        chosen = index[row][found[row]].tolist()
        assert all(abs(a - b) > halfwidth for i, a in enumerate(chosen) for b in chosen[:i])
    assert not found[5].any() and found[4, 0] and not found[4, 1:].any()
    assert value[4, 0] == 1.0 and int(index[4, 0]) == 150
    assert math.isinf(float(value[5, 0])) and int(index[5, 0]) == 0
