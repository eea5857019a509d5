"""Pipeline configuration: YAML files validated by JSON Schema, then resolved against the
registries.

Validation happens in two steps, both before any spectrum is read:

1. the file against the configuration schema (``config_schema.yaml``: unknown keys, wrong
   types, missing stages);
2. every stage name against the stage registry, and every stage's parameters against that
   stage's own parameter schema.

Every problem is reported as a :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration (file, stage parameters or plugin choice) is invalid."""


def _format_path(path: Any) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema counts 1.0 as an integer; a config may not: ``batch_size: 1.0`` is an
    error, not a float that breaks a run later."""
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", _is_strict_integer))
"""Draft 2020-12 with integers that are integers (no 1.0)."""


def _schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = StrictValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    return [f"{_format_path(error.absolute_path)}: {error.message}" for error in errors]


def parameter_defaults(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``default`` of every property of a parameter schema."""
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items()
            if "default" in spec}


def validate_parameters(properties: dict[str, dict[str, Any]], params: dict[str, Any],
                        where: str) -> dict[str, Any]:
    """Validate keyword parameters against a JSON-schema ``properties`` mapping.

    Parameters
    ----------
    properties
        JSON-schema property definitions, each with a ``default``.
    params
        The parameters given (by a config or a caller).
    where
        What is being configured, for error messages (e.g. ``"stage 'resample'"``).

    Returns
    -------
    dict
        The defaults updated with ``params``.

    Raises
    ------
    ConfigError
        On an unknown parameter or a value of the wrong type or range.
    """
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    errors = _schema_errors(schema, params)
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(errors))
    return {**parameter_defaults(properties), **params}


@functools.cache
def config_schema() -> dict[str, Any]:
    """The JSON schema of a configuration file (``gasnet_plugin/host/config_schema.yaml``)."""
    text = resources.files("gasnet_plugin.host").joinpath("config_schema.yaml").read_text()
    return yaml.safe_load(text)


@dataclass
class StageSpec:
    """One entry of a config's ``stages`` list: a stage name and the parameters given."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """A configuration that passed the schema (stage names are resolved later by the host).

    Attributes mirror the top-level keys of the file; see ``config_schema.yaml``.
    """

    stages: list[StageSpec]
    reader: str = "auto"
    recursive: bool = True
    read_ahead: int = 0
    batch_size: int = 256
    shard_size: int = 8192
    shard_seconds: float = 60.0
    executor: dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    device: str = "cpu"
    progress: bool | None = None
    output: dict[str, Any] = field(default_factory=lambda: {"arrays": []})
    plugins: dict[str, Any] = field(default_factory=lambda: {"block": []})
    source: str = "<dict>"

    @property
    def spectra_per_shard(self) -> int:
        """``shard_size`` rounded up to a whole number of batches, so that shard
        boundaries are batch boundaries (a resumed run or a worker then forms exactly the
        batches an uninterrupted local run forms, and gets bit-identical results)."""
        return -(-self.shard_size // self.batch_size) * self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """The configuration in the file's own layout (what the archive records)."""
        return {
            "reader": self.reader,
            "recursive": self.recursive,
            "read_ahead": self.read_ahead,
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "shard_seconds": self.shard_seconds,
            "executor": copy.deepcopy(self.executor),
            "device": self.device,
            "progress": self.progress,
            "stages": [{spec.name: dict(spec.params)} for spec in self.stages],
            "output": copy.deepcopy(self.output),
            "plugins": copy.deepcopy(self.plugins),
        }


def parse_config(raw: Any, source: str = "<dict>") -> PipelineConfig:
    """Validate a configuration mapping against the schema and return it as a dataclass.

    Raises
    ------
    ConfigError
        Listing every schema violation, each with its key path, prefixed by ``source``.
    """
    errors = _schema_errors(config_schema(), raw)
    if errors:
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(errors))
    stages = []
    for item in raw["stages"]:
        if isinstance(item, str):
            stages.append(StageSpec(item))
        else:
            (name, params), = item.items()
            stages.append(StageSpec(name, dict(params or {})))
    top = parameter_defaults(config_schema()["properties"])
    output = {**parameter_defaults(config_schema()["properties"]["output"]["properties"]),
              **raw.get("output", {})}
    plugins = {**parameter_defaults(config_schema()["properties"]["plugins"]["properties"]),
               **raw.get("plugins", {})}
    executor = {**parameter_defaults(config_schema()["properties"]["executor"]["properties"]),
                **raw.get("executor", {})}
    return PipelineConfig(
        stages=stages,
        reader=raw.get("reader", top["reader"]),
        recursive=raw.get("recursive", top["recursive"]),
        read_ahead=raw.get("read_ahead", top["read_ahead"]),
        batch_size=raw.get("batch_size", top["batch_size"]),
        shard_size=raw.get("shard_size", top["shard_size"]),
        shard_seconds=float(raw.get("shard_seconds", top["shard_seconds"])),
        executor=executor,
        device=raw.get("device", top["device"]),
        progress=raw.get("progress", top["progress"]),
        output=output,
        plugins=plugins,
        source=source,
    )


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML configuration file.

    Raises
    ------
    ConfigError
        When the file is missing, is not YAML, or fails the schema; the message names the
        file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from exc
    try:
        raw = yaml.load(text, Loader=NoAliasLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(raw, source=str(path))


class NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a configuration has no use for
    them, and nested aliases ("billion laughs") expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a configuration",
                event.start_mark)
        return super().compose_node(parent, index)
