"""Batch normalisation folded into the convolution it follows, for inference.

In eval mode a ``BatchNorm1d`` is a fixed affine map per channel, ``y = s · (x − μ) + β``
with ``s = γ / √(σ² + ε)``, so after a ``Conv1d`` (weights ``W``, bias ``b``) the pair is
one convolution with weights ``s · W`` and bias ``s · (b − μ) + β``: the same function,
one pass over the activations fewer. The folded weights are computed in float64 and
stored in the convolution's dtype, so outputs agree with the unfolded network to float32
rounding (~1e-6 relative), not bit for bit.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def folded_conv(conv: nn.Conv1d, norm: nn.BatchNorm1d) -> nn.Conv1d:
    """A new ``Conv1d`` equal to ``norm(conv(x))`` with ``norm`` in eval mode."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    fused = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device,
                      dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.double() * scale[:, None, None])
        fused.bias.copy_(shift)
    return fused.eval()


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """A copy of ``network`` (in eval mode) with every ``BatchNorm1d`` that follows a
    ``Conv1d`` folded into it and replaced by ``nn.Identity``.

    A pair is a ``Conv1d`` directly followed by a ``BatchNorm1d`` in an ``nn.Sequential``,
    or the attribute names a module lists in ``conv_norm_pairs`` (e.g. a residual block's
    ``(("conv1", "bn1"), ...)``). Other batch norms are left as they are.
    """
    if network.training:
        raise ValueError("fold_batch_norms needs a network in eval mode")
    folded = copy.deepcopy(network)
    for module in folded.modules():
        for conv_name, norm_name in getattr(module, "conv_norm_pairs", ()):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            setattr(module, conv_name, folded_conv(conv, norm))
            setattr(module, norm_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in itertools.pairwise(names):
                conv, norm = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv1d) and isinstance(norm, nn.BatchNorm1d):
                    module._modules[first] = folded_conv(conv, norm)
                    module._modules[second] = nn.Identity()
    return folded
