"""The host contract: every hook a ``gasnet`` plugin can implement.

A plugin is a module or object with functions marked by :data:`gasnet_plugin.hookimpl`.
The host finds third-party plugins through the ``gasnet`` entry-point group::

    [project.entry-points.gasnet]
    my_engine = "my_package.gasnet_plugin"

Built-in stages, engines and readers register through these same hooks. A plugin can be
blocked by its name (the entry-point name, or ``builtin.<module>`` for built-ins) with the
config key ``plugins: {block: [...]}`` or the environment variable
``GASNET_BLOCK_PLUGINS`` (comma-separated).

The hooks are grouped by phase. Imports needed only for type hints sit under
``TYPE_CHECKING`` so that importing the contract stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from gasnet_plugin import PROJECT_NAME

if TYPE_CHECKING:
    from gasnet_plugin.engines.protocol import RedshiftEngine
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.io.readers import SpectrumReader
    from gasnet_plugin.stages.base import Stage

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------------
# Registration hooks: called once, when the host builds its registries, before any config
# is validated. Each plugin adds its parts; the config then refers to them by name.
# -------------------------------------------------------------------------------------------


@hookspec
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    """Register pipeline stages.

    Called once per plugin manager, before configs are validated. Call
    ``registry.add(StageClass)`` for each stage the plugin provides; the class's ``name``
    is what a config's ``stages`` list refers to, and its ``parameters`` JSON schema is
    what the stage's parameters are validated against.

    :param registry: the stage registry (a :class:`~gasnet_plugin.host.registry.Registry`
        of :class:`~gasnet_plugin.stages.base.Stage` subclasses).
    :return: nothing; the registry is filled in place.
    """


@hookspec
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    """Register redshift engines for the ``redshift-scan`` stage.

    Called once per plugin manager, before configs are validated. Call
    ``registry.add(EngineClass)``; the class's ``name`` is the value of the redshift-scan
    stage's ``engine`` parameter. Engines follow the
    :class:`~gasnet_plugin.engines.protocol.RedshiftEngine` protocol.

    :param registry: the engine registry.
    :return: nothing; the registry is filled in place.
    """


@hookspec
def gasnet_register_readers(registry: Registry[SpectrumReader]) -> None:
    """Register spectrum file readers.

    Called once per plugin manager. Call ``registry.add(reader)`` with an object following
    :class:`~gasnet_plugin.io.readers.SpectrumReader`. With ``reader: auto`` (the default)
    the host asks each registered reader, in registration order, whether it identifies a
    file, and uses the first that does.

    :param registry: the reader registry.
    :return: nothing; the registry is filled in place.
    """


# -------------------------------------------------------------------------------------------
# Provenance hooks: called when a run writes its archive.
# -------------------------------------------------------------------------------------------


@hookspec
def gasnet_software_versions() -> dict[str, str] | None:
    """Report the software versions a plugin wants recorded in every results archive.

    Called once per run, when the archive is written. Each plugin returns a mapping of
    package name to version string (or ``None``); the host merges them into the archive's
    ``software`` record next to the versions of the host, numpy, astropy, specutils, asdf
    and torch.

    :return: ``{"package": "version", ...}`` or ``None``.
    """
