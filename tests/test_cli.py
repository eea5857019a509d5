"""The command line as a newcomer meets it: help, reference page, clear errors, summaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.cli.reference import cli_reference_rst

DATA = Path(__file__).parent / "data"


def all_commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


def test_reference_page_documents_every_command_and_option():
    page = cli_reference_rst()
    for path, command in all_commands(main):
        assert f"gasnet {' '.join(path)}\n" in page
        for param in command.params:
            if isinstance(param, click.Option):
                assert f"``{param.opts[0]}``" in page, (path, param.opts)


def test_help_texts_carry_no_raw_rst_markup():
    runner = CliRunner()
    for path, _ in all_commands(main):
        out = runner.invoke(main, [*path, "--help"]).output
        assert "``" not in out, path


def test_stages_are_listed_in_pipeline_order():
    out = CliRunner().invoke(main, ["stages"]).output
    order = [line.split(":")[0].strip() for line in out.splitlines()
             if line.startswith("  ") and not line.startswith("      ")]
    builtin = ["resample", "classify", "redshift-scan", "reconstruct", "subtype",
               "flag-anomaly"]
    assert order[:len(builtin)] == builtin


def test_listing_plugins_loads_no_heavy_library():
    """``gasnet stages`` (every stage, engine and reader registered and described) imports
    neither torch, specutils nor numba: they load when a stage or engine first runs, so
    the command starts in a fraction of a second instead of seconds."""
    script = ("import sys\n"
              "from gasnet_plugin.cli import main\n"
              "main(['stages', '--json'], standalone_mode=False)\n"
              "print('LOADED', *sorted(m for m in ('torch', 'specutils', 'numba') "
              "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert '"gasnet3"' in done.stdout and '"resample"' in done.stdout
    assert done.stdout.splitlines()[-1] == "LOADED"


def test_info_evaluate_and_anomalies_on_archives(tmp_path):
    full = tmp_path / "full.asdf"
    run_pipeline({"stages": ["resample", "classify", "redshift-scan", "flag-anomaly"]},
                 [str(DATA)], full)
    runner = CliRunner()
    info = runner.invoke(main, ["info", str(full)])
    assert info.exit_code == 0
    assert "ZWARN bits:" in info.output and "Z quantiles" in info.output
    assert "  QSO " in info.output
    bad_top = runner.invoke(main, ["anomalies", str(full), "--top", "-2"])
    assert bad_top.exit_code == 2 and "-2" in bad_top.output
    resampled = tmp_path / "resampled.asdf"
    run_pipeline({"stages": ["resample"]}, [str(DATA / "spec-0266-51602-0013.fits")],
                 resampled)
    evaluated = runner.invoke(main, ["evaluate", str(resampled)])
    assert evaluated.exit_code == 2
    assert "no Z or SPECTYPE column" in evaluated.output
    assert "accuracy" not in evaluated.output


def test_other_commands_give_clear_errors_not_tracebacks(tmp_path):
    full = tmp_path / "full.asdf"
    run_pipeline({"stages": ["resample", "classify", "redshift-scan"]},
                 [str(DATA / "spec-0266-51602-0013.fits")], full)
    resampled = tmp_path / "resampled.asdf"
    run_pipeline({"stages": ["resample"]}, [str(DATA / "spec-0266-51602-0013.fits")],
                 resampled)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    junk = tmp_path / "junk.fits"
    junk.write_text("not fits")
    cases = [
        (["evaluate", str(full), "--truth", str(bad_csv)], "not a labels CSV"),
        (["evaluate", str(full), "-o", "/proc/x.json"], "cannot write the scores"),
        (["report", str(resampled), "-o", str(tmp_path / "r")], "nothing to report"),
        (["report", str(full), "-o", "/proc/rep"], "cannot write the report"),
        (["simulate", str(junk), "-n", "3", "-o", str(tmp_path / "sim")], "nothing to draw"),
    ]
    for args, reason in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert (reason in result.output and result.exception is None) or \
            isinstance(result.exception, SystemExit), (args, result.output)
