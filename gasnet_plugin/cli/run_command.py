"""``gasnet run``: a pipeline over files, folders or globs, to one archive."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from gasnet_plugin.cli.common import (
    EXIT_RUN_FAILED,
    EXIT_SOME_FAILED,
    fail,
)
from gasnet_plugin.cli.group import main
from gasnet_plugin.io.text_columns import as_text


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``"1 spectrum"``, ``"2 spectra"``."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ASDF archive to write.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUTPUT if it exists (and the shards of a stopped run).")
@click.option("--resume", is_flag=True,
              help="Finish a stopped run: keep the shards in OUTPUT.parts/ and compute the "
                   "rest. Same archive as an uninterrupted run.")
@click.option("--recursive/--no-recursive", default=None,
              help="Read the FITS files of a folder's sub-folders too (default: the "
                   "config's recursive, true).")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar over the files (default: on a terminal, >1 file).")
@click.option("--device", default=None,
              help="Torch device for every stage (cpu, cuda, cuda:N); overrides the config.")
@click.option("--executor", type=click.Choice(["local", "processes", "dask"]), default=None,
              help="Where the batches run (local: this process; processes: a worker "
                   "process per core; dask); overrides the config's executor.name.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address (implies --executor dask); default: a "
                   "LocalCluster on this machine.")
def run(config: Path, inputs: tuple[str, ...], output: Path, overwrite: bool, resume: bool,
        recursive: bool | None, progress: bool | None, device: str | None, executor: str | None,
        scheduler: str | None) -> None:
    """Run the pipeline of CONFIG on INPUTS (files, folders or glob patterns).

    Memory stays flat however many spectra there are: results go to shards in
    OUTPUT.parts/ as the run goes and are merged into OUTPUT at the end.
    """
    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.config import ConfigError, parse_config
    from gasnet_plugin.host.executors import RowCountError, RunStopped
    from gasnet_plugin.host.process_executor import WorkerError
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.io.archive import ArchiveError
    from gasnet_plugin.zwarning import FATAL

    try:
        settings = as_config(config)
        overrides = settings.as_dict()
        if device is not None:
            overrides["device"] = device
        if recursive is not None:
            overrides["recursive"] = recursive
        if scheduler is not None:
            executor = "dask"
            overrides["executor"]["scheduler"] = scheduler
        if executor is not None:
            overrides["executor"]["name"] = executor
        pipeline = Pipeline(parse_config(overrides, source=settings.source))
        archive = pipeline.run_to_file(inputs, output, resume=resume, overwrite=overwrite,
                                       progress=progress,
                                       notify=lambda message: click.echo(message, err=True))
    except (ConfigError, ArchiveError) as exc:
        fail(str(exc))
    except (WorkerError, RowCountError) as exc:
        click.echo(f"gasnet: error: {exc}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    except RunStopped as stopped:
        click.echo(f"gasnet: {stopped}:\n  gasnet run {config} {' '.join(inputs)} -o {output} "
                   "--resume", err=True)
        sys.exit(128 + stopped.signum)
    run_info = archive.run
    click.echo(f"wrote {output}: {plural(run_info.n_spectra, 'spectrum', 'spectra')} from "
               f"{plural(len(run_info.inputs), 'file')}, {run_info.n_failed} could not be "
               "measured", err=True)
    if run_info.n_failed:
        # two columns (memory-mapped from the file): the archive may hold millions of rows
        columns = archive.columns(["ZWARN", "ZWARN_REASON"])
        fatal = np.flatnonzero((np.asarray(columns["ZWARN"]) & int(FATAL)) != 0)
        for index in fatal[:10]:
            click.echo(f"  {as_text(columns['ZWARN_REASON'][index])}", err=True)
        if len(fatal) > 10:
            click.echo(f"  ... and {len(fatal) - 10} more (see ZWARN_REASON)", err=True)
        sys.exit(EXIT_SOME_FAILED)
