"""What the ``gasnet`` commands share: exit codes, the labels options, the error exit."""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_SOME_FAILED = 1
"""The run finished but some inputs could not be measured."""
EXIT_USAGE = 2
"""A usage or configuration error: nothing was run."""
EXIT_RUN_FAILED = 3
"""The run stopped on an error after it began (a worker process failed, a file changed
under it); the shards written are kept, and ``--resume`` goes on from them."""

ROOT_OPTION = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder the labels CSV's paths are relative to (default: the CSV's folder).")


def labels_option(flag: str):
    """A labels-CSV option (shaped like labels.csv); default: the labels in the files."""
    return click.option(flag, type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        default=None,
                        help="Labels CSV (like labels.csv); default: the SURVEY_* labels "
                             "the readers found in the files.")


def fail(message: str) -> None:
    """Print ``gasnet: error: MESSAGE`` and exit with :data:`EXIT_USAGE`."""
    click.echo(f"gasnet: error: {message}", err=True)
    sys.exit(EXIT_USAGE)
