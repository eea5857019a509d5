"""Sphinx configuration for gasnet-plugin."""

from importlib.metadata import version as _version

project = "gasnet-plugin"
author = "gasnet-plugin developers"
copyright = "2026, gasnet-plugin developers"
release = _version("gasnet-plugin")
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_numpy_docstring = True
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
suppress_warnings = ["autodoc.import_object"]
html_static_path = ["_static"]

# the CLI reference page, written from the click definitions at every build
from pathlib import Path as _Path  # noqa: E402

from gasnet_plugin.cli.reference import cli_reference_rst  # noqa: E402

(_Path(__file__).parent / "cli.rst").write_text(cli_reference_rst())
