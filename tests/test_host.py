"""The host contract: hookspecs, registries, plugin loading and blocking, configs."""

from __future__ import annotations

import inspect
import types
from typing import ClassVar

import pytest
import yaml

from gasnet_plugin import hookimpl, hookspecs
from gasnet_plugin.host import plugins as plugins_module
from gasnet_plugin.host.config import ConfigError, load_config, parse_config
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.host.registry import Registry, UnknownNameError
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.stages.base import Stage


def test_every_hook_is_documented():
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("gasnet_")]
    assert {h.__name__ for h in hooks} >= {"gasnet_register_stages", "gasnet_register_engines",
                                            "gasnet_register_readers"}
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert len(doc) > 80, hook.__name__
        for parameter in inspect.signature(hook).parameters:
            assert f":param {parameter}:" in doc, (hook.__name__, parameter)


def test_builtins_register_through_the_hooks():
    host = PluginHost(load_entry_points=False)
    assert "resample" in host.stages.names()
    assert {"sdss-spec", "desi-coadd", "lamost-dr1", "table"} <= set(host.readers.names())
    assert "builtin.resample" in host.plugin_names()


def test_unknown_name_lists_what_is_registered():
    registry: Registry[type] = Registry("stage")

    class Fake:
        name = "fake"

    registry.add(Fake)
    with pytest.raises(UnknownNameError, match=r"unknown stage 'nope'; registered stages: fake"):
        registry.get("nope")
    registry.add(Fake)          # the same part again is harmless

    class Other:
        name = "fake"

    with pytest.raises(ValueError, match="'fake' is registered twice"):
        registry.add(Other)


class ShoutStage(Stage):
    """A third-party stage used to test plugin loading."""

    name = "shout"
    summary = "adds a SHOUT column"
    parameters: ClassVar[dict] = {
        "word": {"type": "string", "default": "hey", "description": "what to add"}}

    def process(self, batch):
        batch.rows["SHOUT"] = [self.params["word"]] * len(batch)


third_party = types.SimpleNamespace()


@hookimpl
def _register(registry):
    registry.add(ShoutStage)


third_party.gasnet_register_stages = _register


class FakeEntryPoint:
    name = "shouter"
    value = "shouter_pkg:plugin"

    def load(self):
        return third_party


@pytest.fixture
def with_third_party(monkeypatch):
    monkeypatch.setattr(plugins_module, "entry_points",
                        lambda group: [FakeEntryPoint()] if group == "gasnet" else [])


def test_entry_point_plugins_load_and_can_be_blocked(with_third_party, monkeypatch):
    assert "shout" in PluginHost().stages.names()
    assert "shout" not in PluginHost(block=["shouter"]).stages.names()
    monkeypatch.setenv("GASNET_BLOCK_PLUGINS", "other, shouter")
    host = PluginHost()
    assert "shout" not in host.stages.names()
    assert host.blocked == ["other", "shouter"]


def test_blocking_a_third_party_stage_from_the_config(with_third_party):
    config = {"stages": ["resample", {"shout": {"word": "yo"}}]}
    assert Pipeline(parse_config(config)).stages[1].params == {"word": "yo"}
    blocked = {**config, "plugins": {"block": ["shouter"]}}
    with pytest.raises(ConfigError, match=r"stages\[1\]: unknown stage 'shout'.*resample"):
        Pipeline(parse_config(blocked))


def test_a_plugin_that_fails_to_load_names_itself(monkeypatch):
    class Broken(FakeEntryPoint):
        def load(self):
            raise ImportError("missing dependency")

    monkeypatch.setattr(plugins_module, "entry_points", lambda group: [Broken()])
    with pytest.raises(ConfigError, match="plugin 'shouter'.*GASNET_BLOCK_PLUGINS=shouter"):
        PluginHost()


@pytest.mark.parametrize(("config", "message"), [
    ({"stages": ["resample"], "colour": "red"}, "Additional properties.*'colour'"),
    ({"stages": ["resample"], "batch_size": "many"}, "batch_size: 'many' is not of type"),
    ({"stages": ["resample"], "batch_size": 0}, "batch_size: 0 is less than"),
    ({"stages": []}, "stages"),
    ({"stages": [{"resample": {}, "x": {}}]}, r"stages\[0\]"),
])
def test_schema_errors_are_clear(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_stage_parameter_errors_name_the_stage_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"resample": {"dloglam": "fine"}}]}))
    with pytest.raises(ConfigError, match=r"bad.yaml: stages\[0\]: stage 'resample'.*dloglam"):
        Pipeline(load_config(path))
    path.write_text(yaml.safe_dump({"stages": [{"resample": {"colour": 1}}]}))
    with pytest.raises(ConfigError, match="colour"):
        Pipeline(load_config(path))
    path.write_text(yaml.safe_dump({"stages": ["resample"], "reader": "fits-of-my-own"}))
    with pytest.raises(ConfigError, match="reader: unknown reader 'fits-of-my-own'.*sdss-spec"):
        Pipeline(load_config(path))
    path.write_text(yaml.safe_dump({"stages": ["resample"], "output": {"arrays": ["model"]}}))
    with pytest.raises(ConfigError, match="output.arrays.*model.*flux, ivar"):
        Pipeline(load_config(path))
    path.write_text("stages: [resample\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_defaults_are_filled_and_recorded():
    config = parse_config({"stages": ["resample"]})
    pipeline = Pipeline(config)
    assert pipeline.stages[0].params["dloglam"] == 1e-4
    assert config.as_dict()["batch_size"] == 256
    assert parse_config(config.as_dict()).as_dict() == config.as_dict()


def test_a_run_sets_the_collector_and_restores_it_even_on_error(tmp_path):
    """``run_to_file`` runs with the collector at RUN_THRESHOLDS and gives the caller back
    its own thresholds afterwards, also when the run fails."""
    import gc

    from gasnet_plugin.host import collector

    seen = []
    before = gc.get_threshold()
    pipeline = Pipeline(parse_config({"stages": ["resample"], "progress": False}))

    def failing_run(*args, **kwargs):
        seen.append(gc.get_threshold())
        raise RuntimeError("stopped")

    pipeline._run_to_file = failing_run
    with pytest.raises(RuntimeError, match="stopped"):
        pipeline.run_to_file([tmp_path], tmp_path / "out.asdf")
    assert seen == [collector.RUN_THRESHOLDS]
    assert gc.get_threshold() == before


@pytest.mark.parametrize("entry", ["Pipeline.run", "process_spectra"])
def test_in_memory_runs_set_the_collector_too(entry, collector_per_batch):
    """The in-memory runs (``Pipeline.run``, ``api.process_spectra``) process their batches
    with the collector at RUN_THRESHOLDS, as ``run_to_file`` does, and restore it."""
    from pathlib import Path

    from specutils import Spectrum

    import gasnet_plugin.specutils_loaders  # noqa: F401  (registers the formats)
    from gasnet_plugin import api
    from gasnet_plugin.host import collector

    config = {"stages": ["resample"], "progress": False}
    fixture = Path(__file__).parent / "data" / "spec-55862-B6212_sp06-003.fits"
    if entry == "Pipeline.run":
        Pipeline(parse_config(config)).run([fixture])
    else:
        api.process_spectra(config, [Spectrum.read(fixture, format="LAMOST DR1 1D")])
    assert collector_per_batch == [collector.RUN_THRESHOLDS]


def test_overlapping_collector_blocks_restore_once_the_last_leaves():
    """Dask tasks in threads of one worker overlap: the first block in sets the run's
    thresholds, the last one out restores the caller's."""
    import gc

    from gasnet_plugin.host.collector import RUN_THRESHOLDS, run_collector

    before = gc.get_threshold()
    outer, inner = run_collector(), run_collector()
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)            # the first in leaves first
    assert gc.get_threshold() == RUN_THRESHOLDS
    inner.__exit__(None, None, None)
    assert gc.get_threshold() == before
