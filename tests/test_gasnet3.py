"""The gasnet3 engine, its model files, and the check against GaSNet-III's own outputs."""

from __future__ import annotations

import json
import pickle

import asdf
import numpy as np
import pytest
import torch
from astropy.io import fits
from click.testing import CliRunner
from conftest import DATA, REPO, SDSS_FILES

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.engines.eigen_preprocess import Preprocessed
from gasnet_plugin.engines.eigen_refit import ROW_BLOCK, eigen_model, fit_at_lags, refit
from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.gasnet3_reference import gasnet3_original_outputs
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.host.config import ConfigError, parse_config
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import read_archive
from gasnet_plugin.io.model_file import read_model, write_model
from gasnet_plugin.models.eigen_model import ModelError, build_encoder, load_model
from gasnet_plugin.models.import_gasnet3 import import_gasnet3
from gasnet_plugin.zwarning import ZWarn

REFERENCE = DATA / "gasnet3-reference.fits"
CLASSES = ("GALAXY", "QSO", "STAR")


@pytest.fixture(scope="module")
def reference():
    with fits.open(REFERENCE) as hdul:
        return {name: hdul[name].data.copy() for name in ("QSO10", "MIXED", "QSO_CURVES")} | {
            "grid": hdul["GRID"].data["input_grid"][0].copy()}


# -- model files -------------------------------------------------------------------------------


def test_default_model_is_complete_and_cited():
    model = load_model()
    assert model.classes == list(CLASSES)
    assert model.obs_loglam.size == 4076
    for template in model.templates:
        assert template.eigenvectors.shape == (10, template.rest_loglam.size)
        assert template.encoder["channels"] == [8, 16, 32]
    assert model.template("QSO").z_max == 5 and model.template("STAR").z_min == -0.005
    assert "2412.21130" in model.provenance["citation"]
    assert "MIT" in model.provenance["license"]
    license_text = (REPO / "gasnet_plugin" / "data" / "LICENSE-GaSNet-III").read_text()
    assert "MIT License" in license_text and "2412.21130" in license_text


def export_as_gasnet3(model, folder):
    """Write a model back out in GaSNet-III's published layout (.pth + .json per class)."""
    folder.mkdir()
    obs = model.obs_loglam
    for t in model.templates:
        state = {"eigenvectors": torch.from_numpy(t.eigenvectors)}
        state |= {f"encoder.{k}": torch.from_numpy(v) for k, v in t.encoder_weights.items()}
        torch.save(state, folder / f"Encoder_TEST_{t.name}.pth")
        (folder / f"Encoder_TEST_{t.name}.json").write_text(json.dumps({
            "model_name": f"Encoder_TEST_{t.name}", "wavelength_min": 3600,
            "wavelength_max": 9200, "delta_loglamd": 1e-4, "z_min": t.z_min,
            "z_max": t.z_max, "egienV_num": t.n_eigen, "epochs": 1}))
    return obs


def test_import_gasnet3_reproduces_the_model(tmp_path):
    model = load_model()
    export_as_gasnet3(model, tmp_path / "published")
    out = tmp_path / "model.asdf"
    result = CliRunner().invoke(main, ["import-gasnet3", str(tmp_path / "published"),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    again = read_model(out)
    assert again.name == "Encoder_TEST"
    np.testing.assert_array_equal(again.obs_loglam, model.obs_loglam)
    for a, b in zip(again.templates, model.templates, strict=True):
        np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
        np.testing.assert_array_equal(a.rest_loglam, b.rest_loglam)
        x = torch.randn(3, 1, 4076, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(build_encoder(a)(x), build_encoder(b)(x))


def test_import_refuses_pickled_objects(tmp_path):
    folder = tmp_path / "evil"
    export_as_gasnet3(load_model(), folder)
    pth = folder / "Encoder_TEST_QSO.pth"
    # a checkpoint that would run code if unpickled freely
    torch.save({"eigenvectors": torch.zeros(2), "payload": pickle.loads(pickle.dumps(
        np.random.default_rng(0)))}, pth)
    with pytest.raises(ModelError, match="Encoder_TEST_QSO.pth: refused"):
        import_gasnet3(folder)


def test_bad_model_files_are_refused_with_the_file_name(tmp_path):
    model = load_model()
    plain = tmp_path / "plain.asdf"
    asdf.AsdfFile({"model": {"name": "x"}}).write_to(plain)
    with pytest.raises(ModelError, match="plain.asdf: not a valid gasnet model file"):
        read_model(plain)
    with pytest.raises(ModelError, match="nothing.asdf: no such model file"):
        load_model(tmp_path / "nothing.asdf")
    model.templates[0].rest_loglam = model.templates[0].rest_loglam[:-5]
    with pytest.raises(ModelError, match="class 'GALAXY': rest_loglam"):
        write_model(model, tmp_path / "broken.asdf")
    good = write_model(load_model(), tmp_path / "good.asdf")
    truncated = tmp_path / "cut.asdf"
    truncated.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(ModelError, match="cut.asdf"):
        read_model(truncated)


# -- the reference check against GaSNet-III's stored outputs ------------------------------------


def test_reproduces_gasnet3_outputs_on_its_own_rows(engine, reference):
    """Best_fit_z of every encoder (10 QSOs × 3 classes, 20 mixed rows × STAR) within 1e-4,
    min χ²/N within 1e-3 relative, and GaSNet-III's class (lowest min χ²/N)."""
    qso = reference["QSO10"]
    ours = gasnet3_original_outputs(engine, EngineInput(qso["flux"], qso["ivar"],
                                                        reference["grid"]))
    agree = 0
    for cls in CLASSES:
        dz = np.abs(ours[cls]["Best_fit_z"] - qso[f"Best_fit_z_{cls}"])
        agree += int(np.sum(dz < 1e-4))
        np.testing.assert_allclose(ours[cls]["min_chi_square"], qso[f"min_chi_square_{cls}"],
                                   rtol=1e-3)
        np.testing.assert_allclose(ours[cls]["Degeneracy"], qso[f"Degeneracy_{cls}"],
                                   rtol=1e-3, atol=1e-4)
    assert agree == 30
    theirs_class = np.array(CLASSES)[np.argmin(
        [qso[f"min_chi_square_{c}"] for c in CLASSES], axis=0)]
    our_class = np.array(CLASSES)[np.argmin([ours[c]["min_chi_square"] for c in CLASSES],
                                            axis=0)]
    np.testing.assert_array_equal(our_class, theirs_class)
    np.testing.assert_allclose(ours["QSO"]["curve"][:2], reference["QSO_CURVES"][
        "chi_square_curve_QSO"], rtol=1e-4)

    mixed = reference["MIXED"]
    star = gasnet3_original_outputs(engine, EngineInput(mixed["flux"], mixed["ivar"],
                                                        reference["grid"]))["STAR"]
    dz = np.abs(star["Best_fit_z"] - mixed["Best_fit_z"])
    assert np.sum(dz < 1e-4) == len(mixed)
    np.testing.assert_allclose(star["min_chi_square"], mixed["min_chi_square"], rtol=1e-3)


def test_full_engine_on_the_reference_rows(engine, reference):
    """Our scan (in-range lags, refit, sub-pixel) against the SDSS pipeline labels."""
    rows = {name: np.concatenate([reference["MIXED"][name], reference["QSO10"][name]])
            for name in ("flux", "ivar", "CLASS", "Z")}
    result = engine.measure(EngineInput(rows["flux"], rows["ivar"], reference["grid"]))
    cols = result.columns
    truth_class = np.char.strip(rows["CLASS"].astype(str))
    assert np.all(cols["SPECTYPE"] == truth_class)
    dz = np.abs(cols["Z"] - rows["Z"]) / (1 + rows["Z"])
    narrow = truth_class != "QSO"
    assert np.all(dz[narrow] < 0.001)          # galaxies and stars
    assert np.all(dz[~narrow] < 0.01)          # broad-line QSOs: no catastrophic failure
    good = (result.zwarn & int(ZWarn.BAD_FIT)) == 0
    assert np.all(np.isfinite(cols["ZERR"][good]) & (cols["ZERR"][good] > 0))
    assert np.all(cols["DELTACHI2"] >= 0)
    assert cols["CAND_Z"].shape == (len(truth_class), 5)
    assert np.all(np.diff(cols["CAND_CHI2"][:, :3], axis=1) >= 0)


def shifted_galaxy(engine, lag: float, smooth: float):
    """A GALAXY eigen-mixture placed with rest pixel ``lag`` (fractional) on observed pixel
    0 by a Fourier shift, smoothed by a Gaussian of ``smooth`` pixels; rms 1. Returns the
    signal ``(N,)``, the true z and one pixel in z."""
    model = engine.model
    template = model.template("GALAXY")
    coef = np.abs(np.random.default_rng(42).normal(size=template.n_eigen))
    rest_model = coef @ template.eigenvectors.astype(np.float64)
    k = np.fft.rfftfreq(rest_model.size)
    whole = int(lag)
    spectrum = np.fft.rfft(rest_model) * np.exp(-0.5 * (2 * np.pi * k * smooth) ** 2)
    shifted = np.fft.irfft(spectrum * np.exp(2j * np.pi * k * (lag - whole)), rest_model.size)
    signal = shifted[whole:whole + model.obs_loglam.size]
    rest = template.rest_loglam
    step = (rest[-1] - rest[0]) / (rest.size - 1)
    z_true = 10 ** (model.obs_loglam[0] - (rest[0] + lag * step)) - 1
    return signal / np.sqrt(np.mean(signal**2)), z_true, (1 + z_true) * np.log(10) * step


def test_refit_finds_the_subpixel_minimum_with_honest_errors(engine):
    """The exact refit on a model spectrum 0.37 pixel off the grid, 300 noise draws: the
    refined z is closer than the pixel grid allows, and (z − median z)/ZERR has unit
    scatter (ZERR is the statistical error)."""
    signal, z_true, pixel = shifted_galaxy(engine, 1234.37, smooth=0.0)
    rng = np.random.default_rng(1)
    draws = 300
    flux = (10 * signal + rng.normal(size=(draws, signal.size))).astype(np.float32)
    pre = Preprocessed(torch.from_numpy(flux), torch.ones(flux.shape), torch.zeros(flux.shape),
                       torch.ones(draws, 1), torch.ones(draws, dtype=torch.bool))
    fit = refit(engine._scans[0], pre, np.full(draws, 1234), np.ones(draws, dtype=bool),
                engine.model.obs_loglam[0])
    assert fit.ok.all()
    assert abs(np.median(fit.z) - z_true) < 0.2 * pixel          # the grid: 0.37 pixel
    pull = (fit.z - np.median(fit.z)) / fit.zerr
    assert 0.7 < np.std(pull) < 1.4


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_exact_fits_equal_a_float64_least_squares(engine, reference, compiled):
    """The refit's fits at lag − 1, lag, lag + 1 (compiled kernels on the CPU; torch
    products in blocks of rows, the path of other devices) equal numpy's weighted
    least squares in float64 on every row: χ² and coefficients."""
    scan = engine._scans[1]
    rows = reference["QSO10"]
    repeat = -(-(2 * ROW_BLOCK + 3) // len(rows))
    flux = np.tile(rows["flux"], (repeat, 1)).astype(np.float32)
    ivar = np.tile(rows["ivar"], (repeat, 1)).astype(np.float32)
    f = (flux - flux.mean(axis=1, keepdims=True)) / flux.std(axis=1, keepdims=True)
    lags = np.random.default_rng(3).integers(1, scan.n_lags - 1, size=len(f))
    chis, coefs = fit_at_lags(scan, torch.from_numpy(f), torch.from_numpy(ivar), lags,
                              compiled=compiled)
    eigen = scan.eigenvectors.numpy().astype(np.float64)
    n_obs = f.shape[1]
    for i in range(len(f)):
        for offset in range(3):
            x = eigen[:, lags[i] - 1 + offset:lags[i] - 1 + offset + n_obs]
            sw = np.sqrt(ivar[i].astype(np.float64))
            a, *_ = np.linalg.lstsq((x * sw).T, f[i] * sw, rcond=None)
            chi2 = np.sum(ivar[i] * (f[i] - a @ x) ** 2)
            np.testing.assert_allclose(chis[i, offset], chi2, rtol=1e-4)
            np.testing.assert_allclose(coefs[offset][i].numpy(), a, rtol=1e-3,
                                       atol=1e-3 * np.abs(a).max())


def test_torch_fits_do_not_depend_on_the_row_block(engine, reference, monkeypatch):
    """The torch products' blocks (ROW_BLOCK rows on the CPU, DEVICE_ROW_BLOCK on a GPU)
    set how many rows share one product, not any row's fits or model."""
    from gasnet_plugin.engines import eigen_refit

    scan = engine._scans[0]
    rows = reference["MIXED"]
    repeat = -(-(2 * ROW_BLOCK + 3) // len(rows))
    flux = np.tile(rows["flux"], (repeat, 1)).astype(np.float32)
    ivar = np.tile(rows["ivar"], (repeat, 1)).astype(np.float32)
    f = torch.from_numpy((flux - flux.mean(axis=1, keepdims=True))
                         / flux.std(axis=1, keepdims=True))
    rng = np.random.default_rng(4)
    lags = rng.integers(1, scan.n_lags - 1, size=len(f))
    delta = rng.uniform(-1, 1, size=len(f))

    def fits_and_model():
        chis, coefs = fit_at_lags(scan, f, torch.from_numpy(ivar), lags, compiled=False)
        model = eigen_model(scan, coefs[1], lags, delta, f.shape[1], compiled=False)
        return chis, coefs, model.numpy()

    small = fits_and_model()
    monkeypatch.setattr(eigen_refit, "ROW_BLOCK", eigen_refit.DEVICE_ROW_BLOCK)
    assert eigen_refit.row_block(torch.device("cpu")) > len(f) > 2 * ROW_BLOCK
    large = fits_and_model()
    np.testing.assert_allclose(large[0], small[0], rtol=1e-6)
    for a, b in zip(large[1], small[1], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-5 * np.abs(b.numpy()).max())
    np.testing.assert_allclose(large[2], small[2], rtol=1e-5,
                               atol=1e-6 * np.abs(small[2]).max())


def test_measure_beats_the_pixel_grid_end_to_end(engine):
    """Continuum + smoothed galaxy signal at S/N ~10 per pixel through the whole engine."""
    signal, z_true, pixel = shifted_galaxy(engine, 1234.37, smooth=1.0)
    rng = np.random.default_rng(2)
    continuum = 20.0 + 5 * np.linspace(0, 1, signal.size)
    flux = (continuum + 10 * signal + rng.normal(size=(50, signal.size))).astype(np.float32)
    ivar = np.ones_like(flux)
    cols = engine.measure(EngineInput(flux, ivar, engine.model.obs_loglam)).columns
    assert np.all(cols["SPECTYPE"] == "GALAXY")
    assert abs(np.median(cols["Z"]) - z_true) < 0.15 * pixel
    grid_only = Gasnet3Engine(n_refit=0)
    grid_only.setup(model=engine.model)
    coarse = grid_only.measure(EngineInput(flux[:5], ivar[:5], engine.model.obs_loglam))
    assert np.all(np.abs(coarse.columns["Z"] - z_true) > 0.3 * pixel)
    assert np.all(np.isnan(coarse.columns["ZERR"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_matches_cpu(reference):
    rows = reference["MIXED"]
    spectra = EngineInput(rows["flux"], rows["ivar"], reference["grid"])
    cpu, gpu = Gasnet3Engine(), Gasnet3Engine()
    cpu.setup(device="cpu")
    gpu.setup(device="cuda")
    a, b = cpu.measure(spectra).columns, gpu.measure(spectra).columns
    np.testing.assert_array_equal(a["SPECTYPE"], b["SPECTYPE"])
    np.testing.assert_allclose(a["Z"], b["Z"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["CHI2"], b["CHI2"], rtol=1e-4)


def test_same_input_same_output(engine, reference):
    rows = reference["MIXED"]
    spectra = EngineInput(rows["flux"], rows["ivar"], reference["grid"])
    a, b = engine.measure(spectra).columns, engine.measure(spectra).columns
    for name in ("Z", "ZERR", "CHI2", "DELTACHI2"):
        np.testing.assert_array_equal(a[name], b[name])


def test_chunked_measure_equals_one_chunk(reference):
    """A batch measured in chunks of rows (``chunk_rows``) gives every row the result it
    gets measured with all the others: same classes and flags, numbers to float32
    precision, every class's best and the χ² curves in row order."""
    rows = {name: np.concatenate([reference["MIXED"][name], reference["QSO10"][name]])
            for name in ("flux", "ivar")}
    spectra = EngineInput(rows["flux"], rows["ivar"], reference["grid"], want_curves=True)
    results = {}
    for size in (3, 1000):
        scanner = Gasnet3Engine(chunk_rows=size)
        scanner.setup()
        results[size] = scanner.measure(spectra)
    chunked, whole = results[3], results[1000]
    assert len(rows["flux"]) > 3
    np.testing.assert_array_equal(chunked.zwarn, whole.zwarn)
    for name, column in whole.columns.items():
        if column.dtype.kind in "fc":
            np.testing.assert_allclose(chunked.columns[name], column, rtol=1e-5, atol=1e-4,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(chunked.columns[name], column, err_msg=name)
    for name, best in whole.class_best.items():
        np.testing.assert_allclose(chunked.class_best[name].z, best.z, rtol=1e-6)
        np.testing.assert_allclose(chunked.class_best[name].chi2, best.chi2, rtol=1e-5)
        np.testing.assert_allclose(chunked.class_best[name].model, best.model, rtol=1e-4,
                                   atol=1e-4 * np.nanmax(np.abs(best.model)))
    for name, curve in whole.curves.items():
        np.testing.assert_allclose(chunked.curves[name], curve, rtol=1e-4)
    for bit, reason in whole.reasons.items():
        if isinstance(reason, str):
            assert chunked.reasons[bit] == reason
        else:
            np.testing.assert_array_equal(chunked.reasons[bit], reason)


# -- the stages in the pipeline --------------------------------------------------------------


def test_default_pipeline_measures_real_sdss_spectra(tmp_path):
    config = {"stages": ["resample", "redshift-scan", "reconstruct"],
              "output": {"arrays": ["flux", "model", "residual", "chi2_curves"]}}
    archive = run_pipeline(config, [str(p) for p in SDSS_FILES], tmp_path / "out.asdf")
    back = read_archive(tmp_path / "out.asdf")
    results = back.results
    for name in ("Z", "ZERR", "SPECTYPE", "SUBTYPE", "CHI2", "DELTACHI2", "CAND_Z",
                 "RECON_RCHI2"):
        assert name in results.colnames
    bright = np.asarray(results["SURVEY_SN_MEDIAN_ALL"]) > 5
    assert bright.sum() >= 3
    assert np.all(results["SPECTYPE"][bright] == results["SURVEY_CLASS"][bright])
    dz = np.abs(results["Z"] - results["SURVEY_Z"]) / (1 + results["SURVEY_Z"])
    assert np.all(dz[bright] < 0.0033)
    arrays = back.arrays.arrays
    flux, model, residual = arrays["flux"], arrays["model"], arrays["residual"]
    ivar = archive.arrays.arrays.get("ivar")
    assert ivar is None                                      # not asked for
    measured = np.isfinite(model).all(axis=1)
    assert measured.all()
    np.testing.assert_allclose(residual[flux != 0], (flux - model)[flux != 0], atol=1e-5)
    curves = arrays["chi2_curves"]
    axes = back.arrays.axes["chi2_curves"]
    assert list(axes["classes"]) == list(CLASSES)
    assert curves.shape[:2] == (len(results), 3) and axes["z"].shape == curves.shape[1:]
    # the best candidate's chi2 curve minimum sits at the reported redshift's lag
    best = np.nanargmin(curves[:, 0], axis=1)
    galaxy = np.asarray(results["SPECTYPE"]) == "GALAXY"
    np.testing.assert_allclose(axes["z"][0][best[galaxy]], results["Z"][galaxy], atol=5e-4)


def test_unknown_engine_and_class_are_config_errors():
    with pytest.raises(ConfigError, match=r"stages\[1\].*unknown redshift engine 'redrock2'.*"
                                          "gasnet3"):
        Pipeline(parse_config({"stages": ["resample", {"redshift-scan": {"engine": "redrock2"}}]}))
    with pytest.raises(ConfigError, match="n_candidates"):
        Pipeline(parse_config({"stages": ["resample", {"redshift-scan": {
            "engine_params": {"n_candidates": 0}}}]}))
    pipeline = Pipeline(parse_config({"stages": ["resample", {"redshift-scan": {
        "engine_params": {"classes": ["GALAXY", "PULSAR"]}}}]}))
    with pytest.raises(ConfigError, match=r"classes \['PULSAR'\] not in model"):
        pipeline.setup()


def test_a_grid_the_model_was_not_made_for_is_refused(engine):
    loglam = np.arange(3.6, 3.9, 1e-4)
    flux = np.ones((1, loglam.size), dtype=np.float32)
    with pytest.raises(ConfigError, match="set the resample stage to the model's grid"):
        engine.measure(EngineInput(flux, flux, loglam))


def test_fast_curves_equal_the_direct_correlation(engine, reference):
    """The coefficient-space FFT curves equal a direct sum over pixels at sampled lags."""
    from gasnet_plugin.engines.eigen_preprocess import preprocess
    from gasnet_plugin.engines.eigen_scan import (
        chi2_curves,
        chi2_curves_fast,
        encode,
        spectra_transforms,
    )

    rows = reference["MIXED"][:4]
    pre = preprocess(torch.from_numpy(rows["flux"].astype(np.float32)),
                     torch.from_numpy(rows["ivar"].astype(np.float32)),
                     torch.from_numpy(reference["grid"].astype(np.float64)), 5)
    n_obs = pre.fluctuation.shape[1]
    for scan in engine._scans:
        model, coef = encode(scan.encoder, scan.eigenvectors, pre.fluctuation)
        constant = torch.sum(pre.fluctuation.double() ** 2 * pre.ivar.double(), 1, keepdim=True)
        fast = chi2_curves_fast(coef, scan.transforms,
                                spectra_transforms(pre.fluctuation, pre.ivar,
                                                   scan.transforms.n_fft),
                                constant.float(), n_obs, scan.z_lag.size).double()
        direct = chi2_curves(model, pre.fluctuation, pre.ivar, lags="range")
        for lag in (0, scan.z_lag.size // 2, scan.z_lag.size - 1):
            m = model[:, lag:lag + n_obs].double()
            by_hand = torch.sum(pre.ivar * (pre.fluctuation - m) ** 2, dim=1)
            torch.testing.assert_close(direct[:, lag], by_hand, rtol=1e-4, atol=1e-2)
        torch.testing.assert_close(fast, direct, rtol=1e-4, atol=1e-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectra_transforms_in_blocks_equal_one_transform_of_the_batch(dtype):
    """The spectra are transformed a block of rows at a time: the same transforms, bit for
    bit, as one call over the batch (37 rows: blocks and a remainder), in the input's
    precision."""
    from gasnet_plugin.engines.eigen_scan import FFT_ROW_BLOCK, spectra_transforms

    rng = np.random.default_rng(12)
    f = torch.from_numpy(rng.normal(size=(37, 500))).to(dtype)
    w = torch.from_numpy(rng.uniform(size=(37, 500))).to(dtype)
    assert 37 % FFT_ROW_BLOCK and FFT_ROW_BLOCK < 37
    expected = torch.fft.rfft(torch.stack([w, 2 * f * w], dim=1), n=1536).conj()
    got = spectra_transforms(f, w, 1536)
    assert got.dtype == expected.dtype and not got.is_conj()
    assert torch.equal(got, expected.resolve_conj())


def test_candidates_are_distinct_redshifts(engine, reference):
    """Candidates of one class are distinct redshifts; every class's best is among them."""
    rows = reference["MIXED"]
    cols = engine.measure(EngineInput(rows["flux"], rows["ivar"], reference["grid"])).columns
    z, classes = cols["CAND_Z"], cols["CAND_SPECTYPE"]
    separation = np.abs(np.log1p(z[:, :, None]) - np.log1p(z[:, None, :]))
    same_class = (classes[:, :, None] == classes[:, None, :]) & np.isfinite(separation)
    pairs = same_class & ~np.eye(z.shape[1], dtype=bool)
    # every pair of one class is at least the 1000 km/s window apart, less the few pixels
    # the refit may walk (4 lags of 1e-4 dex each)
    walk = 2 * 4 * np.log(10) * 1e-4
    assert pairs.any() and np.all(separation[pairs] > 1000 / 299792.458 - walk)
    for name in engine.classes:
        assert np.all((classes == name).any(axis=1))


def test_a_batch_with_nothing_to_measure_is_not_a_stage_failure(tmp_path):
    """Every spectrum of the batch unusable: the engine gets zero rows and must cope."""
    from gasnet_plugin.models.simulate import write_mocks

    n, loglam = 3, load_model().obs_loglam
    mocks = {"flux": np.full((n, loglam.size), np.nan, np.float32),
             "ivar": np.ones((n, loglam.size), np.float32), "mask": np.zeros((n, loglam.size)),
             "CLASS": np.full(n, "QSO"), "Z": np.ones(n), "SNR": np.zeros(n),
             "ANOMALY": np.full(n, ""), "SOURCE_ROW": np.arange(n), "DONOR_ROW": np.arange(n)}
    path = write_mocks(mocks, loglam, tmp_path / "nan.fits")
    results = run_pipeline({"stages": ["resample", "redshift-scan", "reconstruct"]},
                           [str(path)]).results
    zwarn = np.asarray(results["ZWARN"])
    assert np.all(zwarn & int(ZWarn.NODATA)) and not np.any(zwarn & int(ZWarn.STAGE_FAILED))
    assert "Z" in results.colnames and np.all(np.isnan(np.asarray(results["Z"], float)))


def test_a_batch_is_scanned_in_equal_chunks(engine, reference, monkeypatch):
    """Chunks of at most ``chunk_rows``, as equal as can be (80 rows as 40 + 40, not
    64 + 16), in row order."""
    rows = reference["MIXED"]
    n_rows = len(rows["flux"])
    seen = []
    measure_one = engine._measure

    def spy(spectra):
        seen.append(spectra.flux.copy())
        return measure_one(spectra)

    monkeypatch.setattr(engine, "_measure", spy)
    monkeypatch.setitem(engine.params, "chunk_rows", max(n_rows // 2 - 1, 1))
    engine.measure(EngineInput(rows["flux"], rows["ivar"], reference["grid"]))
    sizes = [len(part) for part in seen]
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 1 and sum(sizes) == n_rows
    np.testing.assert_array_equal(np.concatenate(seen), rows["flux"])
