"""gasnet simulate and gasnet train eigen on the real fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import DATA

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.io.model_file import read_model
from gasnet_plugin.models.train_eigen import read_checkpoint


@pytest.fixture(scope="module")
def mocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mocks")
    result = CliRunner().invoke(main, ["simulate", str(DATA), "-n", "240", "-o", str(folder),
                                       "--seed", "5", "--per-file", "120",
                                       "--anomalies", "0.1"])
    assert result.exit_code == 0, result.output
    return folder


def test_simulated_files_carry_the_truth_and_are_repeatable(mocks, tmp_path):
    files = sorted(mocks.glob("mock-*.fits"))
    assert len(files) == 2
    with fits.open(files[0]) as hdul:
        table = hdul["MOCKS"].data
        assert len(table) == 120
        assert set(np.char.strip(table["CLASS"])) <= {"GALAXY", "QSO", "STAR"}
        assert np.all(np.isfinite(table["Z"]))
        flux = table["flux"].copy()
    anomalies = np.concatenate([np.char.strip(fits.getdata(f, "MOCKS")["ANOMALY"])
                                for f in files])
    assert 0.03 < np.mean(anomalies != "") < 0.2                # 10% asked
    again = tmp_path / "again"
    assert CliRunner().invoke(main, ["simulate", str(DATA), "-n", "240", "-o", str(again),
                                     "--seed", "5", "--per-file", "120",
                                     "--anomalies", "0.1"]).exit_code == 0
    np.testing.assert_array_equal(fits.getdata(again / files[0].name, "MOCKS")["flux"], flux)


def test_mocks_go_through_the_pipeline_with_the_truth_recovered(mocks):
    results = run_pipeline({"stages": ["resample", "redshift-scan"]}, [str(mocks)]).results
    assert len(results) == 240
    assert set(results["SURVEY"]) == {"MOCK"}
    truth_z = np.asarray(results["SURVEY_Z"])
    dz = np.abs(np.asarray(results["Z"]) - truth_z) / (1 + truth_z)
    snr = np.asarray(results["SNR_MEDIAN"])
    clean = np.array([a == "" for a in np.char.strip(fits_column(mocks, "ANOMALY"))])
    bright = (snr > 5) & clean
    assert bright.sum() > 50
    assert np.mean(dz[bright] < 0.0033) > 0.95
    assert np.mean(results["SPECTYPE"][bright] == results["SURVEY_CLASS"][bright]) > 0.95
    faint = (snr < 2) & clean
    if faint.sum() > 10:                                   # accuracy falls with S/N
        assert np.mean(dz[faint] < 0.0033) < np.mean(dz[bright] < 0.0033)


def fits_column(folder, name):
    return np.concatenate([fits.getdata(f, "MOCKS")[name]
                           for f in sorted(folder.glob("mock-*.fits"))])


def test_fine_tuned_model_loads_in_a_run_and_is_scored(mocks, tmp_path):
    out, checkpoint = tmp_path / "tuned.asdf", tmp_path / "ckpt.asdf"
    args = ["train", "eigen", str(mocks), "-o", str(out), "--epochs", "2", "--no-progress",
            "--checkpoint", str(checkpoint), "--classes", "GALAXY,STAR", "--seed", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    model = read_model(out)
    assert "gasnet train eigen" in model.provenance["source"]
    assert "GALAXY" in model.provenance["classes_trained"]
    default = read_model(DATA.parent.parent / "gasnet_plugin" / "data" / "gasnet3-sdss.asdf")
    changed = [not np.array_equal(a.eigenvectors, b.eigenvectors)
               for a, b in zip(model.templates, default.templates, strict=True)]
    assert changed == [True, False, True]                  # QSO was not trained
    state = read_checkpoint(checkpoint)
    assert len(state["history"].val["GALAXY"]) == 2
    # resume: the finished classes are kept, more epochs continue the history
    resumed = tmp_path / "resumed.asdf"
    args = ["train", "eigen", str(mocks), "-o", str(resumed), "--epochs", "3",
            "--no-progress", "--checkpoint", str(checkpoint), "--resume",
            "--classes", "GALAXY,STAR", "--seed", "3"]
    assert CliRunner().invoke(main, args).exit_code == 0
    config = {"stages": ["resample", {"redshift-scan": {"engine_params": {"model": str(out)}}}]}
    results = run_pipeline(config, [str(mocks)]).results
    assert set(results["MODEL"]) == {"tuned"}
    assert np.isfinite(np.asarray(results["Z"])).mean() > 0.9


def test_training_from_scratch_with_k3(mocks, tmp_path):
    out = tmp_path / "k3.asdf"
    result = CliRunner().invoke(main, ["train", "eigen", str(mocks), "-o", str(out),
                                       "--init", "scratch", "-k", "3", "--epochs", "2",
                                       "--classes", "STAR", "--no-progress"])
    assert result.exit_code == 0, result.output
    model = read_model(out)
    assert model.classes == ["STAR"]
    assert model.templates[0].eigenvectors.shape[0] == 3
