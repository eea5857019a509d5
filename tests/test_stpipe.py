"""The stages as stpipe Steps and Pipeline: discovery, strun, ASDF step configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DESI_FILE, LAMOST_FILES, REPO, SDSS_FILES, require

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.io.archive import read_archive

FIXTURES = [*SDSS_FILES, *LAMOST_FILES, DESI_FILE]
STPIPE_CONFIG = REPO / "example_configs" / "stpipe" / "gasnet_pipeline.asdf"


@pytest.fixture(autouse=True)
def stpipe_installed():
    require("stpipe", "GASNET_REQUIRE_STPIPE")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in FIXTURES:
        shutil.copy(path, inputs / path.name)
    return inputs


def strun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    strun_script = Path(sys.executable).with_name("strun")
    return subprocess.run([str(strun_script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_steps_are_discoverable_through_the_entry_point():
    from stpipe.entry_points import get_steps

    ours = {s.class_alias: s for s in get_steps() if s.package_name == "gasnet-plugin"}
    assert set(ours) == {"gasnet_resample", "gasnet_classify", "gasnet_redshift_scan",
                         "gasnet_reconstruct", "gasnet_subtype", "gasnet_flag_anomaly",
                         "gasnet_pipeline"}
    assert ours["gasnet_pipeline"].is_pipeline
    assert not ours["gasnet_classify"].is_pipeline
    assert ours["gasnet_pipeline"].class_name == "gasnet_plugin.stpipe_steps.GasnetPipeline"


def test_strun_pipeline_alias_gives_the_gasnet_run_archive(tmp_path, folder):
    """strun by alias = gasnet run with the default config, column for column."""
    done = strun("gasnet_pipeline", str(folder), "--output_file=results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    via_stpipe = read_archive(tmp_path / "results_gasnet.asdf")
    via_host = run_pipeline(REPO / "example_configs" / "default.yaml", [folder])
    assert via_stpipe.results.colnames == via_host.results.colnames
    for name in via_host.results.colnames:
        x, y = np.asarray(via_host.results[name]), np.asarray(via_stpipe.results[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    stages = [next(iter(s)) for s in via_stpipe.run.config["stages"]]
    assert stages == ["resample", "classify", "redshift-scan", "reconstruct", "subtype",
                      "flag-anomaly"]


def test_strun_with_the_asdf_step_config_and_overrides(tmp_path, folder):
    done = strun(str(STPIPE_CONFIG), str(folder), "--output_file=out",
                 "--steps.classify.skip=true", "--steps.redshift_scan.engine_params="
                 "{n_refit: 1, n_candidates: 2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    archive = read_archive(tmp_path / "out_gasnet.asdf")
    assert len(archive.results) == 8
    assert "P_STAR" not in archive.results.colnames          # classify skipped
    assert archive.results["CAND_Z"].shape == (8, 2)          # engine_params taken
    assert archive.arrays.arrays["model"].shape == (8, 4076)  # arrays: [model]
    assert np.isfinite(archive.results["Z"]).all()


def test_bad_step_parameter_is_a_clear_error(tmp_path, folder):
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.stpipe_steps import GasnetPipeline

    with pytest.raises(ConfigError, match=r"stpipe step resample.*dloglam"):
        GasnetPipeline.call(str(folder), steps={"resample": {"dloglam": -1.0}})


def test_steps_chain_in_python(folder):
    """Steps called one by one, products handed on, as a notebook would."""
    from gasnet_plugin.stpipe_steps import (
        GasnetProducts,
        RedshiftScanStep,
        ResampleStep,
    )

    resampled = ResampleStep.call(str(folder), batch_size=3)
    assert isinstance(resampled, GasnetProducts)
    assert [len(b) for b in resampled.batches] == [3, 3, 2]
    fitted = RedshiftScanStep.call(resampled, engine_params="{n_refit: 1}")
    results = fitted.results
    assert len(results) == 8 and np.isfinite(results["Z"]).all()
    assert [next(iter(s)) for s in fitted.settings["stages"]] == ["resample", "redshift-scan"]


def test_a_step_runs_with_the_run_collector_thresholds(folder, collector_per_batch):
    """A step processes its batches with the collector at RUN_THRESHOLDS, as ``gasnet
    run`` does, and gives the caller's thresholds back."""
    from gasnet_plugin.host import collector
    from gasnet_plugin.stpipe_steps import ResampleStep

    ResampleStep.call(str(folder), batch_size=3)
    assert collector_per_batch == [collector.RUN_THRESHOLDS] * 3


def test_strun_logs_one_line_per_step_and_writes_into_output_dir(tmp_path):
    """stpipe's chatter held back: one INFO line per step; --output_dir + --output_file
    put the archive where the docs say."""

    done = strun("gasnet_pipeline", str(SDSS_FILES[0]), f"--output_dir={tmp_path / 'out'}",
                 "--output_file=run1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "run1_gasnet.asdf").is_file()
    lines = [line for line in (done.stdout + done.stderr).splitlines() if " - INFO - " in line]
    assert len(lines) == 7, lines                     # six steps and the pipeline
    assert "parameters are" not in done.stdout + done.stderr
