"""The pipeline on a GPU gives the CPU's answers (skipped where there is no GPU).

The engine's own CPU/GPU comparison is ``tests/test_gasnet3.py::test_gpu_matches_cpu``;
this one runs every stage on the real fixtures, with ``default.yaml`` switched to CUDA and
with ``gpu.yaml`` (large batches), against ``default.yaml`` on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA, REPO

from gasnet_plugin.api import as_config, run_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")


def run_on(config_name: str, device: str):
    config = as_config(REPO / "example_configs" / config_name)
    config.device = device
    return run_pipeline(config, [str(DATA)]).results


@pytest.mark.parametrize("config_name", ["default.yaml", "gpu.yaml"])
def test_pipeline_on_gpu_decides_as_on_cpu(config_name):
    cpu, gpu = run_on("default.yaml", "cpu"), run_on(config_name, "cuda")
    assert len(cpu) == len(gpu) > 10
    for name in ("SOURCE", "SPECTYPE", "SUBTYPE", "ZWARN", "ZWARN_REASON", "STAR_TEMPLATE"):
        np.testing.assert_array_equal(np.asarray(gpu[name]), np.asarray(cpu[name]),
                                      err_msg=name)
    np.testing.assert_allclose(gpu["Z"], cpu["Z"], rtol=0, atol=1e-5)
    # the networks in full float32 on both (TF32 off: models/float32_precision.py)
    for name in ("P_GALAXY", "P_QSO", "P_STAR", "CNN_Z"):
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=0, atol=1e-5, err_msg=name)
