"""The flag-anomaly stage: scores, bits, calibrated thresholds, gasnet anomalies."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner
from conftest import DATA, REPO

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.models.simulate import write_mocks
from gasnet_plugin.stages.flag_anomaly import (
    ThresholdsError,
    apply_flags,
    calibrate_thresholds,
    read_thresholds,
    write_thresholds,
)
from gasnet_plugin.zwarning import ZWarn

NEW_BITS = ZWarn.LOW_SNR | ZWarn.LARGE_CHI2 | ZWarn.DEGENERATE | ZWarn.CLASS_DISAGREE \
    | ZWarn.Z_DISAGREE | ZWarn.LOW_PROB


def synthetic_results(n: int, seed: int) -> Table:
    """A results table as the pipeline writes it, with known score distributions."""
    rng = np.random.default_rng(seed)
    spectype = rng.choice(["GALAXY", "QSO", "STAR"], n)
    p_best = 1 - rng.uniform(0, 0.2, n)
    table = Table({
        "ZWARN": np.zeros(n, np.int64), "SPECTYPE": spectype,
        "SNR_MEDIAN": rng.uniform(0.5, 30, n), "RCHI2": 1 + 0.05 * rng.standard_normal(n),
        "DEGENERACY": rng.uniform(0.05, 3, n), "Z": rng.uniform(0, 2, n),
        "ZERR": np.full(n, 1e-4), "CNN_Z": np.zeros(n), "CNN_ZERR": np.full(n, 0.01),
        "CNN_CLASS": spectype, "CNN_PROB": p_best})
    table["CNN_Z"] = table["Z"] + 0.01 * rng.standard_normal(n)
    for name in ("GALAXY", "QSO", "STAR"):
        table[f"P_{name}"] = np.where(spectype == name, p_best, (1 - p_best) / 2)
    return table


def test_thresholds_let_through_the_asked_fraction_of_good_spectra():
    calibration = synthetic_results(4000, 0)
    thresholds = calibrate_thresholds(calibration, np.ones(4000, bool), rate=0.02)
    assert thresholds.low_snr == pytest.approx(0.5 + 0.02 * 29.5, rel=0.1)
    assert thresholds.z_disagree == pytest.approx(2.33, rel=0.1)   # |N(0,1)| 98th percentile
    assert thresholds.low_prob == pytest.approx(0.804, abs=0.01)
    # new spectra from the same population: each bit flags ≈ 2 %
    fresh = synthetic_results(4000, 1)
    flags = apply_flags(fresh, thresholds)
    for bit in (ZWarn.LOW_SNR, ZWarn.LARGE_CHI2, ZWarn.DEGENERATE, ZWarn.Z_DISAGREE,
                ZWarn.LOW_PROB):
        assert 0.01 < flags.bits[bit].mean() < 0.03, bit.name
    assert not flags.bits[ZWarn.CLASS_DISAGREE].any()
    # anomalies stand out and carry their reasons
    fresh["RCHI2"][:5] = 3.0
    fresh["CNN_CLASS"][5:10] = np.where(fresh["SPECTYPE"][5:10] == "STAR", "QSO", "STAR")
    fresh["Z"][10:15] += 0.5
    flags = apply_flags(fresh, thresholds)
    assert flags.bits[ZWarn.LARGE_CHI2][:5].all()
    assert all("sigma above its class and S/N" in r for r in flags.reasons[ZWarn.LARGE_CHI2][:5])
    assert flags.bits[ZWarn.CLASS_DISAGREE][5:10].all()
    assert all(r.startswith("classifier says") for r in flags.reasons[ZWarn.CLASS_DISAGREE][5:10])
    assert flags.bits[ZWarn.Z_DISAGREE][10:15].all()
    ranked = np.argsort(-np.nan_to_num(flags.anomaly_score, nan=-np.inf))[:5]
    assert set(ranked) <= set(range(15))


def test_missing_inputs_give_nan_scores_and_no_bits():
    table = synthetic_results(50, 2)
    thresholds = calibrate_thresholds(table, np.ones(50, bool))
    bare = table["ZWARN", "SPECTYPE", "SNR_MEDIAN", "Z", "ZERR"]      # e.g. the redrock engine
    flags = apply_flags(bare, thresholds)
    assert np.all(np.isnan(flags.scores["SCORE_CHI2"])) and np.all(np.isnan(flags.anomaly_score))
    for bit in (ZWarn.LARGE_CHI2, ZWarn.DEGENERATE, ZWarn.Z_DISAGREE, ZWarn.CLASS_DISAGREE,
                ZWarn.LOW_PROB):
        assert not flags.bits[bit].any()


def test_thresholds_files_round_trip_and_are_validated(tmp_path):
    thresholds = calibrate_thresholds(synthetic_results(200, 3), np.ones(200, bool))
    path = write_thresholds(thresholds, tmp_path / "t.asdf")
    again = read_thresholds(path)
    assert again.large_chi2 == thresholds.large_chi2
    np.testing.assert_array_equal(again.chi2_median["QSO"], thresholds.chi2_median["QSO"])
    thresholds.low_prob = 2.0
    with pytest.raises(ThresholdsError, match=r"bad\.asdf: thresholds fail their schema"):
        write_thresholds(thresholds, tmp_path / "bad.asdf")
    tampered = tmp_path / "tampered.asdf"                 # schema applied on read too
    text = path.read_bytes()
    value = f"low_prob: {again.low_prob!r}".encode()
    assert value in text
    tampered.write_bytes(text.replace(value, b"low_prob: 7" + b" " * (len(value) - 11)))
    with pytest.raises(ThresholdsError, match=r"tampered\.asdf: not a valid gasnet thresholds"):
        read_thresholds(tampered)
    with pytest.raises(ThresholdsError, match="no such thresholds file"):
        read_thresholds(tmp_path / "missing.asdf")
    (tmp_path / "junk.asdf").write_text("junk")
    with pytest.raises(ConfigError, match="junk.asdf"):
        run_pipeline({"stages": ["resample", {"flag-anomaly": {"thresholds":
                                                               str(tmp_path / "junk.asdf")}}]},
                     [str(DATA / "spec-3655-55240-0002.fits")])
    shipped = read_thresholds()
    assert "kept out of GaSNet-II training" in shipped.provenance["spectra"]


def test_default_pipeline_writes_scores_and_consistent_bits():
    results = run_pipeline(REPO / "example_configs" / "default.yaml", [str(DATA)]).results
    for name in ("SCORE_CHI2", "SCORE_DEGENERATE", "SCORE_ZDIFF", "SCORE_CLASS",
                 "ANOMALY_SCORE", "ANOMALY_REASON"):
        assert name in results.colnames
    zwarn = np.asarray(results["ZWARN"])
    disagree = (zwarn & int(ZWarn.CLASS_DISAGREE)) != 0
    assert np.all(results["CNN_CLASS"][disagree] != results["SPECTYPE"][disagree])
    assert np.all(results["CNN_CLASS"][~disagree] == results["SPECTYPE"][~disagree])
    for row in np.flatnonzero(zwarn & int(NEW_BITS)):
        assert results["ZWARN_REASON"][row]
    measured = np.isfinite(np.asarray(results["Z"], float))
    assert np.all(np.isfinite(np.asarray(results["ANOMALY_SCORE"], float)[measured]))


def _reference_rows() -> dict[str, np.ndarray]:
    with fits.open(DATA / "gasnet3-reference.fits") as hdul:
        rows = hdul["QSO10"].data
        loglam = hdul["GRID"].data["input_grid"][0].astype(float)
        flux = rows["flux"].astype(np.float32)
        ivar = rows["ivar"].astype(np.float32)
        z = rows["Z"].astype(float)
    n = flux.shape[0]
    return {"flux": flux, "ivar": ivar, "mask": ivar <= 0, "CLASS": np.full(n, "QSO"), "Z": z,
            "SNR": np.zeros(n, np.float32), "ANOMALY": np.full(n, ""),
            "SOURCE_ROW": np.arange(n), "DONOR_ROW": np.arange(n)}, loglam


def test_an_injected_line_raises_the_chi2_score_and_is_flagged(tmp_path):
    original, loglam = _reference_rows()
    injected = {k: v.copy() for k, v in original.items()}
    pixels = np.arange(loglam.size)[None, :]
    sigma = 1 / np.sqrt(np.nanmedian(np.where(original["ivar"] > 0, original["ivar"], np.nan),
                                     axis=1))[:, None]
    injected["flux"] += (40 * sigma * np.exp(-0.5 * ((pixels - 2500) / 2.5) ** 2)
                         ).astype(np.float32)
    injected["ANOMALY"][:] = "line"
    a = write_mocks(original, loglam, tmp_path / "clean.fits")
    b = write_mocks(injected, loglam, tmp_path / "line.fits")
    config = REPO / "example_configs" / "default.yaml"
    clean = run_pipeline(config, [str(a)]).results
    line = run_pipeline(config, [str(b)]).results
    assert np.all(np.asarray(line["SCORE_CHI2"]) > np.asarray(clean["SCORE_CHI2"]))
    flagged = (np.asarray(line["ZWARN"]) & int(NEW_BITS)) != 0
    assert flagged.mean() >= 0.8
    assert np.mean(np.asarray(line["ANOMALY_SCORE"]) > np.asarray(clean["ANOMALY_SCORE"])) >= 0.8


def test_calibrate_flags_and_anomalies_commands(tmp_path):
    runner = CliRunner()
    mocks = tmp_path / "mocks"
    assert runner.invoke(main, ["simulate", str(DATA), "-n", "150", "-o", str(mocks),
                                "--seed", "2"]).exit_code == 0
    measured = tmp_path / "measured.asdf"
    config = tmp_path / "measure.yaml"
    config.write_text("stages: [resample, classify, redshift-scan]\n")
    result = runner.invoke(main, ["run", str(config), str(mocks), "-o", str(measured)])
    assert result.exit_code == 0, result.output
    thresholds = tmp_path / "thresholds.asdf"
    result = runner.invoke(main, ["calibrate-flags", str(measured), "-o", str(thresholds)])
    assert result.exit_code == 0, result.output
    assert "calibrated on" in result.output
    result = runner.invoke(main, ["anomalies", str(measured)])
    assert result.exit_code == 2 and "run the flag-anomaly stage" in result.output
    flagged = tmp_path / "flagged.asdf"
    config.write_text("stages: [resample, classify, redshift-scan, {flag-anomaly: "
                      f"{{thresholds: '{thresholds}'}}}}]\n")
    assert runner.invoke(main, ["run", str(config), str(mocks), "-o", str(flagged)]) \
        .exit_code in (0, 1)
    result = runner.invoke(main, ["anomalies", str(flagged), "--top", "5"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 6 and lines[0].split()[:2] == ["rank", "score"]
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    assert all("SCORE_" in line for line in lines[1:])


def test_anomaly_score_is_in_sigmas_of_rarity_among_right_spectra():
    """One scale for every score: the fraction p of right calibration spectra beyond a
    value gives Φ⁻¹(1 − p) σ (1.5 % → 2.17 σ), monotone, finite beyond the range."""
    from gasnet_plugin.stages.flag_anomaly import rarity_sigma

    right = np.random.default_rng(0).normal(size=10_000)
    quantiles = np.quantile(right, np.linspace(0, 1, 101))
    at = np.quantile(right, 0.985)
    assert abs(rarity_sigma(np.array([at]), quantiles, right.size)[0] - 2.17) < 0.05
    values = np.linspace(-3, 30, 200)
    sigma = rarity_sigma(values, quantiles, right.size)
    assert np.all(np.diff(sigma) >= 0) and np.all(np.isfinite(sigma))
    # a class doubt of 0.77 where right spectra have 1 - P below 1e-3: large but finite
    doubts = 10.0 ** np.random.default_rng(1).uniform(-7, -3, 1000)
    q = np.quantile(doubts, np.linspace(0, 1, 101))
    assert 3 < rarity_sigma(np.array([0.77]), q, 1000, log=True)[0] < 6
