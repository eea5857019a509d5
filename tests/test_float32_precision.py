"""TF32 is off while the networks run (:mod:`gasnet_plugin.models.float32_precision`), so a
GPU gives the CPU's numbers to float32 rounding; the flags exist on a CPU-only torch too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.models.float32_precision import full_float32
from gasnet_plugin.models.gasnet2 import CNNPredictor, load_cnn_model


@pytest.fixture
def tf32_on():
    """TF32 allowed for both convolutions and matrix products, as a host might set it."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    yield
    cudnn.allow_tf32, matmul.allow_tf32 = saved


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_full_float32_turns_tf32_off_and_restores_it(tf32_on):
    with full_float32():
        assert tf32_flags() == (False, False)
    assert tf32_flags() == (True, True)
    with pytest.raises(RuntimeError), full_float32():
        raise RuntimeError("a stage failed")
    assert tf32_flags() == (True, True)


def recorder(module: torch.nn.Module) -> list[tuple[bool, bool]]:
    """The TF32 flags seen by each forward call of ``module``."""
    seen: list[tuple[bool, bool]] = []
    module.register_forward_pre_hook(lambda *_: seen.append(tf32_flags()))
    return seen


def test_classifier_runs_without_tf32(tf32_on):
    predictor = CNNPredictor(load_cnn_model("default", "classify"))
    seen = recorder(predictor.network)
    n = predictor.model.obs_loglam.size
    rng = np.random.default_rng(0)
    predictor.raw(rng.normal(size=(3, n)).astype(np.float32), np.ones((3, n), np.float32))
    assert seen and all(flags == (False, False) for flags in seen)
    assert tf32_flags() == (True, True)


def test_scan_encoders_run_without_tf32(tf32_on):
    engine = Gasnet3Engine()
    engine.setup()
    seen = [recorder(scan.encoder) for scan in engine._scans]
    n = engine.model.obs_loglam.size
    rng = np.random.default_rng(1)
    flux = (5 + rng.normal(size=(2, n))).astype(np.float32)
    engine.measure(EngineInput(flux, np.ones_like(flux), engine.model.obs_loglam))
    assert all(s and all(flags == (False, False) for flags in s) for s in seen)
    assert tf32_flags() == (True, True)
