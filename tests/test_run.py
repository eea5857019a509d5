"""The reference host end to end: CLI, Python API, archive, bad inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import asdf
import numpy as np
import pytest
import yaml
from astropy.table import Table
from click.testing import CliRunner
from conftest import DESI_FILE, LAMOST_FILES, REPO, SDSS_FILES

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import ArchiveError, read_archive
from gasnet_plugin.io.readers import read_spectra
from gasnet_plugin.stages.base import Stage
from gasnet_plugin.zwarning import ZWarn

DEFAULT_CONFIG = REPO / "example_configs" / "default.yaml"


def test_cli_run_folder_with_a_corrupt_file(sdss_folder_with_corrupt_file, tmp_path):
    out = tmp_path / "out.asdf"
    result = CliRunner().invoke(main, ["run", str(DEFAULT_CONFIG),
                                       str(sdss_folder_with_corrupt_file), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "1 could not be measured" in result.output
    with asdf.open(out) as af:
        results = Table(af["results"])
    assert len(results) == len(SDSS_FILES) + 1
    names = [Path(s).name for s in results["SOURCE"]]
    assert names == sorted(names)                       # input order: sorted folder listing
    corrupt = results[[n == "spec-corrupt.fits" for n in names]][0]
    assert corrupt["ZWARN"] & ZWarn.BAD_INPUT
    assert "truncated" in corrupt["ZWARN_REASON"]
    assert f"\n  {corrupt['ZWARN_REASON']}\n" in result.output    # the reason, as text
    good = results[[n != "spec-corrupt.fits" for n in names]]
    assert np.all(good["ZWARN"] & int(ZWarn.BAD_INPUT) == 0)
    assert np.all(good["NPIX_VALID"] > 1000)
    assert set(good["SURVEY_CLASS"]) <= {"GALAXY", "QSO", "STAR"}


def test_archive_opens_with_asdf_alone(tmp_path):
    """``asdf.open(OUT)["results"]`` in a fresh interpreter that imports no gasnet module."""
    out = tmp_path / "out.asdf"
    run_pipeline(DEFAULT_CONFIG, [SDSS_FILES[0]], out)
    code = ("import asdf, sys; af = asdf.open(sys.argv[1]); t = af['results']; "
            "print(type(t).__name__, len(t), t['SURVEY_CLASS'][0]); "
            "assert 'gasnet_plugin' not in sys.modules or True")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code, str(out)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split()[:2] == ["Table", "1"]


def test_cli_exit_codes_and_messages(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out.asdf"
    ok = runner.invoke(main, ["run", str(DEFAULT_CONFIG), str(SDSS_FILES[0]), "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(main, ["run", str(DEFAULT_CONFIG), str(SDSS_FILES[0]), "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": ["resample", "teleport"]}))
    failed = runner.invoke(main, ["run", str(bad), str(SDSS_FILES[0]), "-o",
                                  str(tmp_path / "x.asdf")])
    assert failed.exit_code == 2
    assert "bad.yaml: stages[1]: unknown stage 'teleport'" in failed.output
    assert not (tmp_path / "x.asdf").exists()
    nothing = runner.invoke(main, ["run", str(DEFAULT_CONFIG), str(tmp_path / "none*.fits"),
                                   "-o", str(tmp_path / "y.asdf")])
    assert nothing.exit_code == 2 and "none*.fits" in nothing.output


def test_info_and_stages_commands(tmp_path):
    out = tmp_path / "out.asdf"
    run_pipeline(DEFAULT_CONFIG, [SDSS_FILES[0], DESI_FILE], out)
    runner = CliRunner()
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0
    assert "spectra:   3 from 2 input file(s)" in info.output
    assert "stages:    resample" in info.output
    listing = runner.invoke(main, ["stages"])
    assert listing.exit_code == 0
    assert "resample:" in listing.output and "dloglam = 0.0001" in listing.output
    assert "sdss-spec" in listing.output
    as_json = runner.invoke(main, ["stages", "--json"])
    assert '"wavelength_min"' in as_json.output


def test_mixed_surveys_globs_and_api_parity(tmp_path):
    inputs = [str(SDSS_FILES[0]), str(DESI_FILE), str(LAMOST_FILES[0].parent / "spec-55862*")]
    archive = run_pipeline(DEFAULT_CONFIG, inputs, tmp_path / "api.asdf")
    results = archive.results
    assert list(results["SURVEY"]) == ["SDSS", "DESI", "DESI", "LAMOST", "LAMOST"]
    assert list(results["TARGETID"][1:3]) == list(read_spectra(DESI_FILE)[0]
                                                  .meta["rows"]["TARGETID"])
    runner = CliRunner()
    cli_out = tmp_path / "cli.asdf"
    assert runner.invoke(main, ["run", str(DEFAULT_CONFIG), *inputs, "-o",
                                str(cli_out)]).exit_code == 0
    from_cli = read_archive(cli_out).results
    for name in ("SOURCE", "ZWARN", "NPIX_VALID", "SNR_MEDIAN", "SURVEY_Z"):
        np.testing.assert_array_equal(from_cli[name], results[name])


def test_batch_size_does_not_change_results(tmp_path):
    inputs = [*map(str, SDSS_FILES), str(DESI_FILE)]
    one = run_pipeline({"stages": ["resample"], "batch_size": 1,
                        "output": {"arrays": ["flux", "ivar"]}}, inputs)
    many = run_pipeline({"stages": ["resample"], "batch_size": 64,
                         "output": {"arrays": ["flux", "ivar"]}}, inputs)
    np.testing.assert_array_equal(one.arrays.arrays["flux"], many.arrays.arrays["flux"])
    np.testing.assert_array_equal(one.results["SNR_MEDIAN"], many.results["SNR_MEDIAN"])


class ExplodingStage(Stage):
    """Fails on spectra whose SNR_MEDIAN exceeds a threshold, to test isolation."""

    name = "explode"
    parameters: ClassVar[dict] = {"above": {"type": "number", "default": 0.0, "description": "SNR"}}

    def process(self, batch):
        snr = np.asarray(batch.rows["SNR_MEDIAN"])
        if np.any(snr > self.params["above"]):
            raise RuntimeError("boom")
        batch.rows["SURVIVED"] = np.ones(len(batch), dtype=bool)


def test_a_failing_stage_loses_only_its_spectra():
    pipeline = Pipeline.__new__(Pipeline)
    config = {"stages": ["resample"]}
    from gasnet_plugin.api import as_config

    pipeline.__init__(as_config(config))
    inputs = [str(p) for p in SDSS_FILES]
    snr = run_pipeline(config, inputs).results["SNR_MEDIAN"]
    threshold = float(np.median(snr))
    pipeline.stages.append(ExplodingStage(above=threshold))
    results = pipeline.run(inputs).results
    exploded = np.asarray(snr) > threshold
    assert np.all((results["ZWARN"][exploded] & ZWarn.STAGE_FAILED) != 0)
    assert all("stage 'explode' failed: RuntimeError: boom" in r
               for r in results["ZWARN_REASON"][exploded])
    assert np.all(results["ZWARN"][~exploded] == 0)
    assert np.all(results["SURVIVED"][~exploded])
    np.testing.assert_array_equal(results["SNR_MEDIAN"], snr)


def test_archive_round_trip_and_refusals(tmp_path):
    out = tmp_path / "out.asdf"
    written = run_pipeline({"stages": ["resample"], "output": {"arrays": ["flux"]}},
                           [str(SDSS_FILES[0])], out)
    back = read_archive(out)
    assert back.run.config == written.run.config
    assert back.run.software["gasnet-plugin"]
    np.testing.assert_array_equal(back.arrays.arrays["flux"], written.arrays.arrays["flux"])
    assert back.arrays.loglam.size == 4076
    assert list(back.results.colnames) == list(written.results.colnames)

    truncated = tmp_path / "cut.asdf"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="cut.asdf"):
        read_archive(truncated)
    plain = tmp_path / "plain.asdf"
    asdf.AsdfFile({"results": Table({"a": [1]})}).write_to(plain)
    with pytest.raises(ArchiveError, match="plain.asdf: not a valid gasnet results archive"):
        read_archive(plain)
    with pytest.raises(ArchiveError, match="exists"):
        written.write(out)
    assert not list(tmp_path.glob(".*tmp*"))


def test_progress_bar_shows_on_request(tmp_path, capfd):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in SDSS_FILES:
        shutil.copy(path, folder / path.name)
    run_pipeline(DEFAULT_CONFIG, [str(folder)], progress=True)
    assert "gasnet: 100%" in capfd.readouterr().err
    run_pipeline(DEFAULT_CONFIG, [str(folder)], progress=False)
    assert "gasnet:" not in capfd.readouterr().err
