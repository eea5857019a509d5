"""The exact refit's compiled CPU kernels against its torch path (the path of other devices).

Both solve the same weighted least squares (each is checked against numpy's float64 fit in
``test_gasnet3.py``); these tests compare them with each other on real spectra and check
that a row's compiled result does not depend on the rows fitted with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gasnet_plugin.engines.eigen_refit import eigen_model, fit_at_lags, refit


@pytest.mark.parametrize("class_index", [0, 1, 2], ids=["GALAXY", "QSO", "STAR"])
def test_compiled_refit_equals_the_torch_refit(engine, preprocessed, class_index):
    """Every row refitted from the same starting lags (a spread of them, so that rows walk
    both ways): the same final lags and flags, z, its error and χ² to float32 rounding, and
    the same model."""
    scan = engine._scans[class_index]
    n_rows = preprocessed.fluctuation.shape[0]
    lag = np.random.default_rng(5).integers(1, scan.n_lags - 1, size=n_rows)
    use = np.ones(n_rows, dtype=bool)
    loglam0 = engine.model.obs_loglam[0]
    fast = refit(scan, preprocessed, lag, use, loglam0, compiled=True)
    slow = refit(scan, preprocessed, lag, use, loglam0, compiled=False)
    np.testing.assert_array_equal(fast.lag, slow.lag)
    np.testing.assert_array_equal(fast.ok, slow.ok)
    np.testing.assert_allclose(fast.chi2, slow.chi2, rtol=1e-5)
    # a pixel is ~2.3e-4 in ln(1 + z): z agrees to a thousandth of one
    np.testing.assert_allclose(fast.z[fast.ok], slow.z[fast.ok], rtol=0, atol=1e-7)
    np.testing.assert_allclose(fast.zerr[fast.ok], slow.zerr[fast.ok], rtol=1e-2)
    scale = slow.model.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    assert float(((fast.model - slow.model).abs() / scale).max()) < 1e-4


def test_compiled_fit_of_a_row_does_not_depend_on_the_batch(engine, preprocessed):
    """A row fitted alone gives bit for bit what it gets among the other rows."""
    scan = engine._scans[0]
    f, w = preprocessed.fluctuation, preprocessed.ivar
    lags = np.random.default_rng(6).integers(1, scan.n_lags - 1, size=f.shape[0])
    chis, coefs = fit_at_lags(scan, f, w, lags, compiled=True)
    for i in (0, f.shape[0] // 2, f.shape[0] - 1):
        one_chi, one_coef = fit_at_lags(scan, f[i:i + 1], w[i:i + 1], lags[i:i + 1],
                                        compiled=True)
        np.testing.assert_array_equal(one_chi[0], chis[i])
        for position in range(3):
            assert torch.equal(one_coef[position][0], coefs[position][i])


def test_compiled_model_equals_the_torch_model(engine):
    """The model at sub-pixel lags (both sides, the lag itself and whole neighbours)."""
    scan = engine._scans[1]
    n_obs = engine.model.obs_loglam.size
    rng = np.random.default_rng(7)
    lags = rng.integers(1, scan.n_lags - 1, size=9)
    delta = np.array([-1.0, -0.7, -0.25, 0.0, 0.1, 0.5, 0.99, 1.0, -0.0])
    coef = torch.from_numpy(rng.normal(size=(9, scan.n_coef)))
    fast = eigen_model(scan, coef, lags, delta, n_obs, compiled=True)
    slow = eigen_model(scan, coef, lags, delta, n_obs, compiled=False)
    scale = float(slow.abs().max())
    assert float((fast - slow).abs().max()) < 1e-5 * scale


def test_continuum_is_the_least_squares_polynomial_and_its_basis_follows_the_grid():
    """GaSNet-III's continuum equals numpy's polynomial fit through the valid pixels; the
    basis kept from the last grid is not reused for another grid."""
    from gasnet_plugin.engines.eigen_preprocess import polynomial_continuum

    rng = np.random.default_rng(2)
    uniform = 3.5563 + 1e-4 * np.arange(600)
    stretched = 3.6021 + 0.06 * (np.arange(600) / 599) ** 2
    for loglam in (uniform, stretched, uniform):   # a grid, another, the first again
        x = (loglam - loglam.mean()) / ((loglam[-1] - loglam[0]) / 2)
        flux = (1 + 0.3 * x - 0.2 * x**3)[None, :] + 0.05 * rng.normal(size=(3, 600))
        ivar = np.ones_like(flux)
        ivar[1, 200:400] = 0
        continuum, ok = polynomial_continuum(torch.from_numpy(flux.astype(np.float32)),
                                             torch.from_numpy(ivar.astype(np.float32)),
                                             torch.from_numpy(loglam), 5)
        assert ok.all()
        for row in range(3):
            good = ivar[row] > 0
            expected = np.polyval(np.polyfit(x[good], flux[row, good].astype(np.float32), 5),
                                  x)
            np.testing.assert_allclose(continuum[row].numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_coef", [10, 7, 5, 1])
def test_normal_equations_equal_float64_sums_at_every_window(engine, n_coef):
    """Both normal-equation kernels (any window positions; a lag with its two neighbours in
    one pass) against float64 sums, for K that fill the kernels' tiles and that leave a
    remainder, with masked pixels and windows at both ends of the padded eigenspectra.
    Each sum is compared on its Cauchy–Schwarz scale (float32 sums: ~1e-7)."""
    from gasnet_plugin.engines.exact_fit_kernels import (
        normal_equations,
        normal_equations_centred,
    )

    scan = engine._scans[1]
    padded = np.ascontiguousarray(scan.padded_eigenvectors.numpy()[:n_coef])
    n_obs, n_rows = engine.model.obs_loglam.size, 6
    rng = np.random.default_rng(8)
    f = rng.normal(size=(n_rows, n_obs)).astype(np.float32)
    w = rng.uniform(0.0, 2.0, size=(n_rows, n_obs)).astype(np.float32)
    w[:, :40] = 0.0
    w[:, -25:] = 0.0
    last = padded.shape[1] - n_obs - 2
    lags = np.array([0, last, *rng.integers(1, last, size=n_rows - 2)], dtype=np.int64)
    outputs = {}
    for name in ("any", "centred"):
        normal = np.empty((n_rows, 3, n_coef, n_coef), dtype=np.float32)
        rhs = np.empty((n_rows, 3, n_coef), dtype=np.float32)
        if name == "any":
            normal_equations(padded, lags, np.arange(3, dtype=np.int64), f, w, normal, rhs)
        else:
            normal_equations_centred(padded, lags, f, w, normal, rhs)
        outputs[name] = normal, rhs
    for i in range(n_rows):
        for position in range(3):
            x = padded[:, lags[i] + position:lags[i] + position + n_obs].astype(np.float64)
            gram = (x * w[i]) @ x.T
            b = x @ (w[i].astype(np.float64) * f[i])
            diag = np.sqrt(np.diag(gram))
            scale_b = diag * np.sqrt(np.sum(w[i] * f[i].astype(np.float64) ** 2))
            for name, (normal, rhs) in outputs.items():
                assert np.all(np.abs(normal[i, position] - gram)
                              <= 1e-6 * np.outer(diag, diag) + 1e-30), (name, i, position)
                assert np.all(np.abs(rhs[i, position] - b) <= 1e-6 * scale_b + 1e-30), \
                    (name, i, position)


def test_one_walk_step_moves_to_the_better_neighbour_the_lower_one_on_a_tie(
        engine, preprocessed, monkeypatch):
    """One step of the walk with the compiled fits, on given χ² (centre − 1, centre,
    centre + 1): a tie between the neighbours goes down, a better upper neighbour up, a
    centre no worse than both stays, and a lower neighbour before lag 0 is no candidate.
    The two kept fits move along; the new outer one is the fit at its lag."""
    from gasnet_plugin.engines import eigen_refit

    monkeypatch.setattr(eigen_refit, "MAX_WALK", 1)
    scan = engine._scans[0]
    f, w = preprocessed.fluctuation[:4], preprocessed.ivar[:4]
    lags = np.array([10, 10, 10, 0], dtype=np.int64)
    chi2 = np.array([[1.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]])
    coef = np.arange(4 * 3 * scan.n_coef, dtype=np.float64).reshape(4, 3, scan.n_coef)
    coefs = [torch.from_numpy(coef[:, o].copy()) for o in range(3)]
    before_chi2, before_coef = chi2.copy(), coef.copy()
    eigen_refit._walk(scan, f, w, lags, chi2, coefs, compiled=True)
    coef = np.stack([c.numpy() for c in coefs], axis=1)
    np.testing.assert_array_equal(lags, [9, 11, 10, 0])
    np.testing.assert_array_equal(chi2[0, 1:], before_chi2[0, :2])
    np.testing.assert_array_equal(coef[0, 1:], before_coef[0, :2])
    np.testing.assert_array_equal(chi2[1, :2], before_chi2[1, 1:])
    np.testing.assert_array_equal(coef[1, :2], before_coef[1, 1:])
    np.testing.assert_array_equal(chi2[2:], before_chi2[2:])
    np.testing.assert_array_equal(coef[2:], before_coef[2:])
    for row, position in ((0, 0), (1, 2)):
        fitted, fit_coefs = fit_at_lags(scan, f[row:row + 1], w[row:row + 1],
                                        lags[row:row + 1], offsets=(position,), compiled=True)
        np.testing.assert_array_equal(chi2[row, position], fitted[0, 0])
        np.testing.assert_array_equal(coef[row, position], fit_coefs[0][0].numpy())


WALK_IN_A_FRESH_PROCESS = """
import hashlib, sys
import numpy as np, torch
from gasnet_plugin.engines.eigen_refit import _walk, fit_at_lags
from gasnet_plugin.engines.gasnet3 import Gasnet3Engine

rows = np.load(sys.argv[1])
engine = Gasnet3Engine()
engine.setup()
scan = next(s for s in engine._scans if s.template.name == "QSO")
f, w = torch.from_numpy(rows["fluctuation"]), torch.from_numpy(rows["ivar"])
lags = rows["lags"].copy()
chis, coefs = fit_at_lags(scan, f, w, lags, compiled=True)
_walk(scan, f, w, lags, chis, coefs, compiled=True)
digest = hashlib.sha256(lags.tobytes() + chis.tobytes())
for c in coefs:
    digest.update(c.numpy().tobytes())
print(digest.hexdigest())
"""


def test_the_walk_gives_the_same_bits_whether_its_kernels_were_just_compiled(tmp_path):
    """The exact refit of 20 real QSO-class rows (``tests/data/exact-refit-qso-rows.npz``,
    from a DESI batch of the real spectra) in a process that compiles the kernels into an
    empty numba cache, then in one that loads them from it: the same lags, χ² and
    coefficients, bit for bit. When the walk was one compiled function calling the fit
    kernels, the two differed in one χ² on these rows (its compiled copies of the kernels
    were not the ones the cache gave)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rows = Path(__file__).parent / "data" / "exact-refit-qso-rows.npz"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    digests = [subprocess.run([sys.executable, "-c", WALK_IN_A_FRESH_PROCESS, str(rows)],
                              env=env, capture_output=True, text=True, check=True
                              ).stdout.split()[-1] for _ in range(2)]
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "nothing was cached"
    assert digests[0] == digests[1]
