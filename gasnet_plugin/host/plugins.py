"""The plugin manager: built-in and third-party plugins, blocking, and the registries."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pluggy

from gasnet_plugin import PROJECT_NAME, hookspecs
from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.host.registry import Registry

if TYPE_CHECKING:
    from gasnet_plugin.engines.protocol import RedshiftEngine
    from gasnet_plugin.io.readers import SpectrumReader
    from gasnet_plugin.stages.base import Stage

BLOCK_ENV_VAR = "GASNET_BLOCK_PLUGINS"
"""Environment variable: comma-separated plugin names not to load."""

BUILTIN_PLUGINS: tuple[str, ...] = (
    "gasnet_plugin.io.readers",
    "gasnet_plugin.stages.resample",
    "gasnet_plugin.stages.classify",
    "gasnet_plugin.stages.redshift_scan",
    "gasnet_plugin.stages.reconstruct",
    "gasnet_plugin.stages.subtype",
    "gasnet_plugin.stages.flag_anomaly",
    "gasnet_plugin.engines.gasnet3",
    "gasnet_plugin.engines.cnn",
    "gasnet_plugin.engines.redrock",
)
"""Modules of the built-in plugins, registered as ``builtin.<last module name>``."""


def builtin_plugin_name(module: str) -> str:
    """The name a built-in plugin module is registered (and can be blocked) under."""
    return "builtin." + module.rsplit(".", 1)[-1]


def blocked_from_environment() -> list[str]:
    """Plugin names listed in ``GASNET_BLOCK_PLUGINS``."""
    return [name.strip() for name in os.environ.get(BLOCK_ENV_VAR, "").split(",")
            if name.strip()]


class PluginHost:
    """A pluggy plugin manager for project ``gasnet`` with its filled registries.

    Parameters
    ----------
    block
        Plugin names not to load, in addition to those in ``GASNET_BLOCK_PLUGINS``.
    load_entry_points
        Whether to load third-party plugins from the ``gasnet`` entry-point group.

    Attributes
    ----------
    stages, engines, readers
        The registries, filled by every loaded plugin's registration hooks.
    blocked
        The plugin names that were blocked.
    """

    def __init__(self, block: Iterable[str] = (), load_entry_points: bool = True) -> None:
        self.blocked = sorted({*block, *blocked_from_environment()})
        self.manager = pluggy.PluginManager(PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        for name in self.blocked:
            self.manager.set_blocked(name)
        for module in BUILTIN_PLUGINS:
            name = builtin_plugin_name(module)
            if not self.manager.is_blocked(name):
                self.manager.register(importlib.import_module(module), name=name)
        if load_entry_points:
            self._load_entry_points()

        self.stages: Registry[type[Stage]] = Registry("stage")
        self.engines: Registry[type[RedshiftEngine]] = Registry("redshift engine")
        self.readers: Registry[SpectrumReader] = Registry("reader")
        hook = self.manager.hook
        hook.gasnet_register_readers(registry=self.readers)
        hook.gasnet_register_stages(registry=self.stages)
        hook.gasnet_register_engines(registry=self.engines)

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=PROJECT_NAME):
            if self.manager.is_blocked(ep.name) or self.manager.get_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}; block it with "
                    f"{BLOCK_ENV_VAR}={ep.name} or the config key plugins.block") from exc
            self.manager.register(plugin, name=ep.name)

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins, built-ins first."""
        return [name for name, _ in self.manager.list_name_plugin()]

    def software_versions(self) -> dict[str, str]:
        """Versions every plugin asks to record (``gasnet_software_versions``)."""
        versions: dict[str, str] = {}
        for reported in self.manager.hook.gasnet_software_versions():
            versions.update(reported or {})
        return versions
