"""The example configurations say what they do: their headers and defaults match the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gasnet_plugin.host.config import config_schema, load_config
from gasnet_plugin.host.plugins import PluginHost

EXAMPLES = Path(__file__).resolve().parent.parent / "example_configs"


def declared_stages(path: Path) -> list[str]:
    """The ``# Stages: a -> b`` header line of an example config."""
    for line in path.read_text().splitlines():
        if line.startswith("# Stages:"):
            return [s.strip() for s in line.split(":", 1)[1].split("->")]
    raise AssertionError(f"{path.name} has no '# Stages:' header line")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_each_header_names_the_stages_the_config_runs(path):
    config = load_config(path)
    assert [stage.name for stage in config.stages] == declared_stages(path)


def test_default_config_lists_every_key_and_parameter_at_its_default():
    raw = yaml.safe_load((EXAMPLES / "default.yaml").read_text())
    schema = config_schema()["properties"]
    assert set(raw) == set(schema), "default.yaml must list every top-level key"
    for key, spec in schema.items():
        if key in ("stages", "output", "plugins", "executor"):
            continue
        assert raw[key] == spec["default"], key
    for name, spec in schema["executor"]["properties"].items():
        assert raw["executor"][name] == spec["default"], f"executor.{name}"
    assert raw["output"]["arrays"] == [] and raw["plugins"]["block"] == []

    plugins = PluginHost()
    written = [stage if isinstance(stage, str) else next(iter(stage))
               for stage in raw["stages"]]
    from gasnet_plugin.stages import PIPELINE_ORDER

    assert written == list(PIPELINE_ORDER), "every built-in stage, in pipeline order"
    for stage in raw["stages"]:
        name, params = (stage, {}) if isinstance(stage, str) else next(iter(stage.items()))
        defaults = {k: v.get("default") for k, v in plugins.stages.get(name).parameters.items()}
        params = dict(params or {})
        engine_params = params.pop("engine_params", None)
        assert params == {k: v for k, v in defaults.items() if k != "engine_params"}, name
        if engine_params is not None:
            engine = plugins.engines.get(params["engine"])
            assert engine_params == {k: v.get("default")
                                     for k, v in engine.parameters.items()}, "engine_params"


def test_gpu_config_run_on_the_cpu_gives_the_default_results():
    """gpu.yaml changes only how many spectra go through one call (and the device), so on
    the CPU it gives default.yaml's results: every class, flag and string the same, every
    number to float32 rounding."""
    import numpy as np

    from gasnet_plugin.api import as_config, run_pipeline

    data = [str(Path(__file__).resolve().parent / "data")]
    config = as_config(EXAMPLES / "gpu.yaml")
    assert config.device == "cuda" and config.batch_size > 256
    config.device = "cpu"
    gpu_config, default = run_pipeline(config, data).results, \
        run_pipeline(EXAMPLES / "default.yaml", data).results
    assert gpu_config.colnames == default.colnames and len(default) > 10
    for name in default.colnames:
        a, b = np.asarray(gpu_config[name]), np.asarray(default[name])
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
