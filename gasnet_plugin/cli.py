"""The ``gasnet`` command line.

Exit codes: 0 success; 1 the run finished but some inputs could not be measured (their
rows are flagged; see ``ZWARN_REASON``); 2 a usage or configuration error (nothing was
run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from gasnet_plugin import __version__

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"gasnet: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gasnet")
def main() -> None:
    """GaSNet spectral classification, redshifts and anomaly flags for survey spectra."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ASDF archive to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar over the files (default: on a terminal, >1 file).")
def run(config: Path, inputs: tuple[str, ...], output: Path, overwrite: bool,
        progress: bool | None) -> None:
    """Run the pipeline of CONFIG on INPUTS (files, folders or glob patterns)."""
    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.host.inputs import expand_inputs
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.io.archive import ArchiveError
    from gasnet_plugin.zwarning import FATAL

    if output.exists() and not overwrite:
        _fail(f"{output}: exists (use --overwrite to replace it)")
    try:
        pipeline = Pipeline(as_config(config))
        files = expand_inputs(inputs)
    except ConfigError as exc:
        _fail(str(exc))
    archive = pipeline.run(files, progress=progress)
    try:
        archive.write(output, overwrite=overwrite)
    except ArchiveError as exc:
        _fail(str(exc))
    run_info = archive.run
    click.echo(f"wrote {output}: {run_info.n_spectra} spectra from {len(run_info.inputs)} "
               f"file(s), {run_info.n_failed} could not be measured", err=True)
    if run_info.n_failed:
        results = archive.results
        fatal = results[(np.asarray(results["ZWARN"]) & int(FATAL)) != 0]
        for row in fatal[:10]:
            click.echo(f"  {row['ZWARN_REASON']}", err=True)
        if len(fatal) > 10:
            click.echo(f"  ... and {len(fatal) - 10} more (see ZWARN_REASON)", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def stages(as_json: bool) -> None:
    """List the registered stages, redshift engines and readers with their parameters."""
    from gasnet_plugin.host.plugins import PluginHost

    plugins = PluginHost()
    listing = {
        "stages": {cls.name: _describe(cls) for cls in plugins.stages},
        "engines": {cls.name: _describe(cls) for cls in plugins.engines},
        "readers": {reader.name: {"summary": reader.summary} for reader in plugins.readers},
        "plugins": plugins.plugin_names(),
    }
    if as_json:
        click.echo(json.dumps(listing, indent=2, default=str))
        return
    for section in ("stages", "engines"):
        click.echo(f"{section}:")
        if not listing[section]:
            click.echo("  (none registered)")
        for name, info in listing[section].items():
            click.echo(f"  {name}: {info['summary']}")
            for param, spec in info["parameters"].items():
                click.echo(f"      {param} = {spec['default']!r}  ({spec['type']}) "
                           f"{spec['description']}")
    click.echo("readers:")
    for name, info in listing["readers"].items():
        click.echo(f"  {name}: {info['summary']}")
    click.echo(f"plugins: {', '.join(listing['plugins'])}")


def _describe(cls: type) -> dict:
    return {
        "summary": cls.summary,
        "parameters": {
            name: {"default": spec.get("default"), "type": spec.get("type", "any"),
                   "description": spec.get("description", "")}
            for name, spec in cls.parameters.items()},
    }


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
def info(archive: Path) -> None:
    """Summarise a results ARCHIVE written by ``gasnet run``."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    click.echo(f"{archive}")
    click.echo(loaded.summary())


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--truth", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Labels CSV (like labels.csv); default: the SURVEY_* columns.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the CSV's paths are relative to (default: the CSV's folder).")
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
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    labels = truth_from_csv(loaded.results, truth, root) if truth \
        else truth_from_archive(loaded.results)
    evaluation = score(loaded.results, labels)
    click.echo(format_evaluation(evaluation))
    if output is not None:
        write_evaluation(evaluation, output)
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and its figures.")
@click.option("--truth", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Labels CSV; default: the SURVEY_* columns.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the CSV's paths are relative to.")
@click.option("--max-spectra", type=int, default=24, show_default=True,
              help="Spectra drawn one by one (flagged first).")
def report(archive: Path, output: Path, truth: Path | None, root: Path | None,
           max_spectra: int) -> None:
    """Write a static HTML report of ARCHIVE (figures need the 'plot' extra)."""
    from gasnet_plugin.evaluate import truth_from_csv
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("gasnet report needs matplotlib: pip install 'gasnet-plugin[plot]'")
    from gasnet_plugin.report.html import write_report

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    labels = truth_from_csv(loaded.results, truth, root) if truth else None
    page = write_report(loaded, output, labels, max_spectra=max_spectra,
                        title=f"gasnet run: {archive.name}")
    click.echo(f"wrote {page}", err=True)


@main.command("redrock-templates")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--galaxy", "galaxy", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="SDSS idlspec2d spEigenGal-*.fits to convert.")
@click.option("--copy", "copy_from", type=click.Path(file_okay=False, exists=True,
                                                      path_type=Path),
              multiple=True, help="Folder(s) of Redrock rrtemplate-*.fits to add (QSO, STAR).")
@click.option("--zmax", type=float, default=1.5, show_default=True,
              help="Highest galaxy redshift scanned.")
def redrock_templates(folder: Path, galaxy: Path, copy_from: tuple[Path, ...],
                      zmax: float) -> None:
    """Assemble a Redrock template FOLDER: a galaxy template from the SDSS pipeline's
    eigen-templates, plus Redrock's own QSO and STAR templates."""
    import shutil

    from gasnet_plugin.engines.redrock_templates import idlspec2d_to_redrock

    folder.mkdir(parents=True, exist_ok=True)
    try:
        idlspec2d_to_redrock(galaxy, folder / f"rrtemplate-GALAXY-{galaxy.stem}.fits",
                             z_range=(-0.005, zmax), overwrite=True)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    copied = [shutil.copy(p, folder) for source in copy_from
              for p in sorted(source.glob("rrtemplate-*.fits"))]
    click.echo(f"wrote {folder}: 1 galaxy template, {len(copied)} copied", err=True)


@main.command("import-gasnet3")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (ASDF) to write.")
@click.option("--name", default=None, help="Model name (default: the checkpoints' stem).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def import_gasnet3_command(directory: Path, output: Path, name: str | None,
                           overwrite: bool) -> None:
    """Convert GaSNet-III checkpoints in DIRECTORY (.pth + .json per class) to a model file."""
    from gasnet_plugin.io.model_file import write_model
    from gasnet_plugin.models.eigen_model import ModelError
    from gasnet_plugin.models.import_gasnet3 import import_gasnet3

    try:
        model = import_gasnet3(directory, name=name)
        write_model(model, output, overwrite=overwrite)
    except ModelError as exc:
        _fail(str(exc))
    classes = ", ".join(f"{t.name} (K={t.n_eigen}, z {t.z_min:g}..{t.z_max:g})"
                        for t in model.templates)
    click.echo(f"wrote {output}: model {model.name!r}, {model.obs_loglam.size} pixels; "
               f"{classes}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
