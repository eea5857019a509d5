"""Commands that read a results archive: info, evaluate, report, calibrate-flags,
anomalies."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from gasnet_plugin.cli.common import (
    ROOT_OPTION,
    fail,
    labels_option,
)
from gasnet_plugin.cli.group import main


def _measured_archive(archive: Path, what: str) -> object:
    """The archive, if it holds redshifts (else the usage error, naming what is missing)."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        fail(str(exc))
    missing = [c for c in ("Z", "SPECTYPE") if c not in loaded.results.colnames]
    if missing:
        fail(f"{archive}: no {' or '.join(missing)} column: nothing to {what}; run the "
             "redshift-scan stage (gasnet stages lists it)")
    return loaded


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
def info(archive: Path) -> None:
    """Summarise a results ARCHIVE written by 'gasnet run': counts, stages, redshift
    quantiles per SPECTYPE and rows per ZWARN bit."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        fail(str(exc))
    click.echo(f"{archive}")
    click.echo(loaded.summary())


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@labels_option("--truth")
@ROOT_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the scores: .json (everything) or .ecsv (redshift table).")
def evaluate(archive: Path, truth: Path | None, root: Path | None,
             output: Path | None) -> None:
    """Score ARCHIVE against the truth: redshift metrics, confusion matrix, S/N bins, flags."""
    from gasnet_plugin.evaluate import (
        evaluate as score,
    )
    from gasnet_plugin.evaluate import (
        format_evaluation,
        truth_from_archive,
        truth_from_csv,
        write_evaluation,
    )

    loaded = _measured_archive(archive, "score")
    try:
        labels = truth_from_csv(loaded.results, truth, root) if truth \
            else truth_from_archive(loaded.results)
    except (KeyError, ValueError) as exc:
        fail(f"{truth}: not a labels CSV like labels.csv (columns path, cls, z, ...): "
             f"{type(exc).__name__}: {exc}")
    evaluation = score(loaded.results, labels)
    click.echo(format_evaluation(evaluation))
    if output is not None:
        try:
            write_evaluation(evaluation, output)
        except OSError as exc:
            fail(f"{output}: cannot write the scores: {exc.strerror or exc}")
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and its figures.")
@labels_option("--truth")
@ROOT_OPTION
@click.option("--max-spectra", type=int, default=24, show_default=True,
              help="Spectra drawn one by one (flagged first).")
def report(archive: Path, output: Path, truth: Path | None, root: Path | None,
           max_spectra: int) -> None:
    """Write a static HTML report of ARCHIVE (figures need the 'plot' extra)."""
    from gasnet_plugin.evaluate import truth_from_csv

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("gasnet report needs matplotlib: pip install 'gasnet-plugin[plot]'")
    from gasnet_plugin.report.html import write_report

    loaded = _measured_archive(archive, "report")
    try:
        labels = truth_from_csv(loaded.results, truth, root) if truth else None
    except (KeyError, ValueError) as exc:
        fail(f"{truth}: not a labels CSV like labels.csv: {type(exc).__name__}: {exc}")
    try:
        page = write_report(loaded, output, labels, max_spectra=max_spectra,
                            title=f"gasnet run: {archive.name}")
    except OSError as exc:
        fail(f"{output}: cannot write the report: {exc.strerror or exc}")
    click.echo(f"wrote {page}", err=True)


@main.command("calibrate-flags")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@labels_option("--truth")
@ROOT_OPTION
@click.option("--rate", type=float, default=0.015, show_default=True,
              help="Fraction of right spectra each threshold lets through.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Thresholds file to write (use it as flag-anomaly's 'thresholds').")
def calibrate_flags(archive: Path, truth: Path | None, root: Path | None, rate: float,
                    output: Path) -> None:
    """Calibrate the flag-anomaly thresholds on ARCHIVE, a run (resample, classify,
    redshift-scan) over labelled spectra: each threshold flags RATE of the spectra whose
    class and redshift (Δz ≤ 0.0033) are right."""
    from gasnet_plugin.evaluate import WRONG_DZ, truth_from_archive, truth_from_csv
    from gasnet_plugin.io.archive import ArchiveError, read_archive
    from gasnet_plugin.metrics import delta_z
    from gasnet_plugin.stages.flag_anomaly import calibrate_thresholds, write_thresholds

    if not 0 < rate < 0.5:
        fail(f"--rate must lie in (0, 0.5), got {rate}")
    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        fail(str(exc))
    results = loaded.results
    labels = truth_from_csv(results, truth, root) if truth else truth_from_archive(results)
    spectype = np.char.strip(np.asarray(results["SPECTYPE"]).astype(str)) \
        if "SPECTYPE" in results.colnames else None
    if spectype is None:
        fail(f"{archive}: no SPECTYPE column: run redshift-scan (and classify) first")
    with np.errstate(invalid="ignore"):
        good = labels.known & (spectype == labels.spectype.astype(str)) \
            & (delta_z(np.asarray(results["Z"], float), labels.z) <= WRONG_DZ)
    try:
        thresholds = calibrate_thresholds(results, good, rate, provenance={
            "archive": str(archive), "labels": labels.source,
            "n_labelled": int(labels.known.sum()),
            "models": ", ".join(sorted({str(m) for name in ("MODEL", "CNN_MODEL")
                                        if name in results.colnames
                                        for m in results[name] if str(m)}))})
    except ValueError as exc:
        fail(f"{archive}: {exc}")
    write_thresholds(thresholds, output)
    click.echo(f"wrote {output}: calibrated on {int(good.sum())} right spectra of "
               f"{int(labels.known.sum())} labelled", err=True)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many to list (at least 1).")
def anomalies(archive: Path, top: int) -> None:
    """List the most anomalous spectra of ARCHIVE (highest ANOMALY_SCORE), with why."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive
    from gasnet_plugin.zwarning import describe

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        fail(str(exc))
    results = loaded.results
    if "ANOMALY_SCORE" not in results.colnames:
        fail(f"{archive}: no ANOMALY_SCORE column: run the flag-anomaly stage")
    score = np.asarray(results["ANOMALY_SCORE"], dtype=float)
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), kind="stable")[:top]
    click.echo(f"{'rank':>4}  {'score':>7}  {'source':<34} {'row':>4}  {'class':<6} "
               f"{'z':>8}  reason")
    for rank, i in enumerate(order, 1):
        source = Path(str(results["SOURCE"][i])).name
        bits = ", ".join(describe(int(results["ZWARN"][i])))
        reason = str(results["ANOMALY_REASON"][i])
        if bits:
            reason += f"; ZWARN {bits}: {results['ZWARN_REASON'][i]}"
        click.echo(f"{rank:>4}  {score[i]:7.2f}  {source[-34:]:<34} {int(results['ROW'][i]):>4}"
                   f"  {results['SPECTYPE'][i]!s:<6} {float(results['Z'][i]):8.4f}  "
                   f"{reason}")
