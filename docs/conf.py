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
