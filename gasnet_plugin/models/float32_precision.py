"""Full float32 arithmetic on a GPU: TF32 off for convolutions and matrix products.

PyTorch lets cuDNN compute float32 convolutions in TF32 (a 10-bit mantissa) on NVIDIA
GPUs since Ampere, by default (``torch.backends.cudnn.allow_tf32``), and a host program
may turn TF32 on for matrix products too. On an H200 (2026-11-27, the default pipeline on
165 real spectra, CPU against GPU in one process) the classifier's probabilities then
differed from the CPU's by up to 3.4e-4 and the CNN redshift by 6.4e-4; with TF32 off by
7.7e-7 and 9.9e-7, float32 rounding: the same spectra give the same numbers on either
device. What TF32 would save was not timed apart; every GPU figure in docs/scale.rst is
with it off.

The GaSNet-II networks (:class:`~gasnet_plugin.models.gasnet2.CNNPredictor`) and the
gasnet3 engine run inside :func:`full_float32`. The flags are process-wide
(PyTorch has no per-thread setting), so they are restored on leaving; two threads that
enter and leave at different times may leave TF32 as the first found it while the second
still runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matrix products inside the block; the
    previous settings restored after (no effect on CPU arithmetic)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = False
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
