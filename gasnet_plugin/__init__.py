"""gasnet-plugin: GaSNet spectral classification and redshift stages for survey pipelines.

The package is a set of pluggy plugins (project name ``gasnet``) and a reference host
that runs them. Importing it is cheap: the heavy pieces (specutils, torch) load only when
the pipeline API below is used.

Plugins implement hooks with :data:`hookimpl`; the hooks are documented in
:mod:`gasnet_plugin.hookspecs`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pluggy

try:
    __version__ = version("gasnet-plugin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

PROJECT_NAME = "gasnet"
"""The pluggy project name and the entry-point group third-party plugins register under."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for functions that implement a ``gasnet`` hook."""

_LAZY_API = {
    "run_pipeline": "gasnet_plugin.api",
    "process_spectra": "gasnet_plugin.api",
    "load_config": "gasnet_plugin.host.config",
    "read_spectra": "gasnet_plugin.io.readers",
    "read_archive": "gasnet_plugin.io.archive",
    "RunArchive": "gasnet_plugin.io.archive",
    "ZWarn": "gasnet_plugin.zwarning",
}

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", *_LAZY_API]


def __getattr__(name: str) -> Any:
    if name in _LAZY_API:
        return getattr(import_module(_LAZY_API[name]), name)
    raise AttributeError(f"module 'gasnet_plugin' has no attribute {name!r}")
