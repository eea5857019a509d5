"""Batch norms folded into their convolutions give the unfolded network's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from conftest import DATA
from torch import nn

from gasnet_plugin.models.batch_norm_folding import fold_batch_norms, folded_conv
from gasnet_plugin.models.gasnet2 import load_cnn_model, network_input


def _norm_with_statistics(channels: int, seed: int) -> nn.BatchNorm1d:
    """A batch norm in eval mode with non-trivial running statistics and affine terms."""
    generator = torch.Generator().manual_seed(seed)
    norm = nn.BatchNorm1d(channels)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.1)
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_a_folded_convolution_is_the_convolution_then_the_norm(bias):
    torch.manual_seed(3)
    conv = nn.Conv1d(3, 5, 7, stride=2, padding=3, bias=bias).eval()
    norm = _norm_with_statistics(5, seed=4)
    x = torch.randn(4, 3, 200)
    with torch.no_grad():
        expected = norm(conv(x))
        got = folded_conv(conv, norm)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task", ["classify", "redshift"])
def test_the_shipped_networks_folded_give_their_outputs_on_real_spectra(task):
    """The shipped classifier and regressor, folded, on the real spectra of the GaSNet-III
    reference fixture: outputs to float32 rounding, no batch norm left, and the network
    they were folded from unchanged."""
    model = load_cnn_model("default", task)
    with fits.open(DATA / "gasnet3-reference.fits") as hdul:
        flux = np.concatenate([hdul[t].data["flux"] for t in ("MIXED", "QSO10")])
        ivar = np.concatenate([hdul[t].data["ivar"] for t in ("MIXED", "QSO10")])
    assert flux.shape[1] == model.obs_loglam.size
    x = network_input(flux.astype(np.float32), ivar.astype(np.float32))
    network = model.network()
    folded = fold_batch_norms(network)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in network.modules()) == 19
    with torch.no_grad():
        expected = network(x)
        got = folded(x)
    scale = expected.abs().max()
    assert float((got - expected).abs().max()) < 1e-5 * float(scale)
    with torch.no_grad():
        assert torch.equal(network(x), expected)


def test_folding_refuses_a_network_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2)))
