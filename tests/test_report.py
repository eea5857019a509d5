"""gasnet evaluate and gasnet report on a run over real spectra."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DESI_FILE, LAMOST_FILES, REPO, SDSS_FILES

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.evaluate import evaluate, truth_from_archive, truth_from_csv
from gasnet_plugin.metrics import redshift_metrics

EVERYTHING = REPO / "example_configs" / "archive-everything.yaml"


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run.asdf"
    run_pipeline(EVERYTHING, [*map(str, SDSS_FILES), *map(str, LAMOST_FILES), str(DESI_FILE)],
                 out)
    return out


def test_evaluate_scores_against_the_survey_labels(archive_path, tmp_path):
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["evaluate", str(archive_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "class accuracy" in result.output and "ZWARN bit" in result.output
    scores = json.loads(out.read_text())
    from gasnet_plugin.io.archive import read_archive

    results = read_archive(archive_path).results
    truth = truth_from_archive(results)
    known = truth.known
    assert scores["n_scored"] == int(known.sum()) == len(SDSS_FILES) + len(LAMOST_FILES)
    expected = redshift_metrics(np.asarray(results["Z"])[known], truth.z[known])
    assert scores["redshift"]["ALL"]["GF_0.0033"] == pytest.approx(expected.gf[0.0033])
    confusion = np.array(scores["classification"]["confusion"])
    assert confusion.sum() == int(known.sum())
    assert sum(b["n"] for b in scores["snr_bins"]) == int(known.sum())
    assert {f["bit"] for f in scores["flags"]} >= {"SMALL_DELTA_CHI2", "ANY"}
    ecsv = tmp_path / "scores.ecsv"
    assert CliRunner().invoke(main, ["evaluate", str(archive_path), "-o", str(ecsv)]).exit_code \
        == 0
    assert "GF_0.0033" in ecsv.read_text()


def test_truth_from_a_labels_csv(archive_path, tmp_path):
    from gasnet_plugin.io.archive import read_archive

    results = read_archive(archive_path).results
    csv = tmp_path / "labels.csv"
    lines = ["path,cls,z,fiber"]
    for path in SDSS_FILES[:2]:
        lines.append(f"{path},GALAXY,0.5,")                   # deliberately wrong labels
    csv.write_text("\n".join(lines) + "\n")
    truth = truth_from_csv(results, csv, root="/")
    assert int(truth.known.sum()) == 2
    scores = evaluate(results, truth)
    assert scores.n_scored == 2
    assert scores.redshift["ALL"]["GF_0.0033"] < 1.0


def test_report_page_loads_with_its_images(archive_path, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(archive_path), "-o", str(folder),
                                       "--max-spectra", "4"])
    assert result.exit_code == 0, result.output
    page = folder / "index.html"
    text = page.read_text()
    assert text.count("<img") >= 3 + 4
    for name in ("z_vs_truth.png", "dz_vs_snr.png", "confusion.png"):
        assert (folder / name).stat().st_size > 5000
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("GASNET_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required (GASNET_REQUIRE_CHROMIUM is set) but missing")
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    n_images = text.count("<img")
    assert f'data-images="{n_images}/{n_images}"' in dom


def test_line_labels_never_collide_and_each_class_gets_its_own_lines():
    from gasnet_plugin.report.plots import label_levels, lines_of_class

    # Hα and [N II] 20 Å apart, Ca H and K 35 Å apart on a 5600 Å axis: different rows
    positions = [6564.6, 6585.3, 3934.8, 3969.6, 5008.2]
    levels = label_levels(positions, 3600.0, 9200.0)
    assert levels[0] != levels[1] and levels[2] != levels[3]
    star = {name for name, _, _ in lines_of_class("STAR")}
    assert "Ca K" in star and "[O III]" not in star and "[N II]" not in star
    qso = {name for name, _, _ in lines_of_class("QSO")}
    assert {"Mg II", "C IV", "Lyα"} <= qso and "Ca K" not in qso
    galaxy = {name for name, _, _ in lines_of_class("GALAXY")}
    assert {"[N II]", "Hα", "Ca K"} <= galaxy
