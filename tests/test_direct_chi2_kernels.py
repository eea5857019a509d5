"""χ² curves summed directly over the lags (the CPU path of classes with few lags) against
the FFT path and a float64 sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gasnet_plugin.engines.eigen_scan import (
    chi2_curves_fast,
    chi2_curves_summed,
    direct_is_cheaper,
    encode_coefficients,
    spectra_transforms,
)


def test_only_the_class_with_few_lags_is_summed_directly(engine):
    """The default model: STAR (44 lags) summed, GALAXY and QSO (thousands) by FFT."""
    assert {scan.template.name: scan.summed for scan in engine._scans} == \
        {"GALAXY": False, "QSO": False, "STAR": True}
    assert direct_is_cheaper(44, 4076, 10, 12288)
    assert not direct_is_cheaper(3980, 4076, 10, 12288)


@pytest.mark.parametrize("class_index", [0, 2], ids=["GALAXY", "STAR"])
def test_summed_curves_equal_the_fft_curves_and_a_float64_sum(engine, preprocessed,
                                                              class_index):
    """On real spectra, with each class's encoder coefficients: the summed curves agree
    with a float64 sum and with the FFT path to float32 rounding of ``Σ w f² + Σ w m²``
    (the terms the curves are made of), their minima at the same lags; a row scanned
    alone gets the same curve bit for bit. (GALAXY, not summed in the engine, checks the
    kernel's four-lag blocks against a long curve; its first 400 lags only.)"""
    scan = engine._scans[class_index]
    f, w = preprocessed.fluctuation, preprocessed.ivar
    n_obs = f.shape[1]
    constant = torch.sum(f.double() ** 2 * w.double(), dim=1, keepdim=True).float()
    with torch.no_grad():
        coefficients = encode_coefficients(scan.encoder, scan.n_coef, f)
    fft = chi2_curves_fast(coefficients, scan.transforms,
                           spectra_transforms(f, w, scan.transforms.n_fft), constant, n_obs,
                           scan.n_lags).numpy()
    n_lags = min(scan.n_lags, 401)             # 401: one lag beyond whole blocks of four
    fft = fft[:, :n_lags]
    summed = chi2_curves_summed(scan, coefficients, f, w, constant).numpy() \
        if n_lags == scan.n_lags else _summed_first(scan, coefficients, f, w, constant, n_lags)
    model = coefficients.double().numpy() @ scan.eigenvectors.double().numpy()
    f64, w64 = f.double().numpy(), w.double().numpy()
    exact = np.stack([np.sum(w64 * (f64 - model[:, s:s + n_obs]) ** 2, axis=1)
                      for s in range(n_lags)], axis=1)
    scale = constant.double().numpy() + np.max(
        [np.sum(w64 * model[:, s:s + n_obs] ** 2, axis=1) for s in range(n_lags)],
        axis=0)[:, None]
    assert np.all(np.abs(summed - exact) <= 1e-6 * scale)
    assert np.all(np.abs(summed - fft) <= 4e-6 * scale)
    np.testing.assert_array_equal(np.argmin(summed, axis=1), np.argmin(exact, axis=1))
    one = _summed_first(scan, coefficients[3:4], f[3:4], w[3:4], constant[3:4], n_lags)
    np.testing.assert_array_equal(one[0], summed[3])


def _summed_first(scan, coefficients, f, w, constant, n_lags):
    """The summed curves over the class's first ``n_lags`` lags."""
    from gasnet_plugin.engines.direct_chi2_kernels import chi2_curves_direct

    out = np.empty((f.shape[0], n_lags), dtype=np.float32)
    chi2_curves_direct(scan.eigenvectors.numpy(),
                       np.ascontiguousarray(coefficients.numpy(), dtype=np.float32),
                       f.numpy(), w.numpy(), out)
    return out + constant.numpy()
