"""Candidate picking: the compiled CPU pass against the whole-tensor reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gasnet_plugin.engines.candidates import (
    envelope_class,
    lower_envelope,
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


def test_envelope_and_its_class_at_picked_samples_equal_the_full_envelope_loop():
    """Three classes on shifted grids with ties between them (rounded values), NaN and inf
    samples and samples no class reaches: the envelope, and the class looked up at any
    samples, equal a loop over the classes that keeps the class of every envelope sample
    (a class replaces the ones before it only where strictly lower)."""
    rng = np.random.default_rng(4)
    lengths, offsets = (50, 80, 9), [30, 0, 95]
    curves = [torch.from_numpy(np.round(rng.normal(size=(7, n)), 0).astype(np.float32))
              for n in lengths]
    curves[0][0, ::3] = math.nan
    curves[1][1, :] = math.inf
    curves[2][2, :] = -5.0                      # ties with itself only
    curves[1][3, 30:50] = curves[0][3, 0:20]    # exact ties between two classes
    size = 104                                  # samples 80..94 reached by no class
    expected = torch.full((7, size), math.inf)
    which = torch.zeros((7, size), dtype=torch.int64)
    for c, (curve, offset) in enumerate(zip(curves, offsets, strict=True)):
        part = expected[:, offset:offset + curve.shape[1]]
        better = curve < part
        part.copy_(torch.minimum(part, curve))
        which[:, offset:offset + curve.shape[1]].masked_fill_(better, c)
    envelope = lower_envelope(curves, offsets)
    assert envelope.shape == (7, size)
    assert torch.equal(torch.isnan(envelope), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(envelope), torch.nan_to_num(expected))
    every = torch.arange(size).expand(7, size).contiguous()
    assert torch.equal(envelope_class(curves, offsets, every), which)
    picked = torch.from_numpy(rng.integers(0, size, size=(7, 5)))
    assert torch.equal(envelope_class(curves, offsets, picked), which.gather(1, picked))
    assert int(which[3, 30:50].max()) == 0 and int(which[2, 95:].min()) == 2
