"""The ``gasnet`` command group (the commands register themselves in their modules)."""

from __future__ import annotations

import click

from gasnet_plugin import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gasnet")
def main() -> None:
    """GaSNet spectral classification, redshifts and anomaly flags for survey spectra."""
