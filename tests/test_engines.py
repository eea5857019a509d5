"""Swapping redshift engines: Redrock, and a third-party engine from its own distribution."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.nddata import InverseVariance
from click.testing import CliRunner
from conftest import DATA, REPO, SDSS_FILES, require
from specutils import Spectrum

from gasnet_plugin.api import as_config, process_spectra, run_pipeline
from gasnet_plugin.cli import main
from gasnet_plugin.host.config import ConfigError, parse_config
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.host.runner import Pipeline

TINY = DATA.parent / "redrock-templates"


@pytest.fixture(scope="module")
def tiny_templates(tmp_path_factory):
    """A Redrock template folder built from the tiny fixtures (no ../shared needed)."""
    folder = tmp_path_factory.mktemp("rr")
    result = CliRunner().invoke(main, ["redrock-templates", str(folder), "--galaxy",
                                       str(TINY / "spEigenGal-56436.fits"), "--copy", str(TINY)])
    assert result.exit_code == 0, result.output
    return folder


def test_idlspec2d_template_converts_to_redrock_format(tiny_templates):
    require("redrock", "GASNET_REQUIRE_REDROCK")
    from redrock.templates import Template

    template = Template(str(tiny_templates / "rrtemplate-GALAXY-spEigenGal-56436.fits"))
    assert template.template_type == "GALAXY"
    assert template.flux.shape[0] == 4
    assert template.wave[0] == pytest.approx(10**3.073)
    assert template.redshifts[0] == pytest.approx(-0.005)
    assert template.redshifts[-1] < 1.5


def test_switching_engine_is_one_config_key(tiny_templates, monkeypatch):
    require("redrock", "GASNET_REQUIRE_REDROCK")
    monkeypatch.setenv("RR_TEMPLATE_DIR", str(tiny_templates))
    inputs = [str(p) for p in SDSS_FILES[:3]]     # SDSS-I galaxy, BOSS QSO, BOSS galaxy
    redrock = run_pipeline(REPO / "example_configs" / "redrock.yaml", inputs).results
    gasnet3 = run_pipeline(REPO / "example_configs" / "default.yaml", inputs).results
    assert list(redrock["ENGINE"]) == ["redrock"] * 3
    assert list(gasnet3["ENGINE"]) == ["gasnet3"] * 3
    for results in (redrock, gasnet3):
        assert set(results.colnames) >= {"Z", "ZERR", "SPECTYPE", "SUBTYPE", "CHI2",
                                         "DELTACHI2", "ZWARN"}
    bright = np.asarray(redrock["SURVEY_SN_MEDIAN_ALL"]) > 5
    assert np.all(redrock["SPECTYPE"][bright] == redrock["SURVEY_CLASS"][bright])
    dz = np.abs(redrock["Z"] - redrock["SURVEY_Z"]) / (1 + redrock["SURVEY_Z"])
    galaxy = np.asarray(redrock["SURVEY_CLASS"]) == "GALAXY"
    assert np.all(dz[bright & galaxy] < 0.001)
    assert np.all(dz[bright & ~galaxy] < 0.01)    # the tiny set's QSO template is v0.1
    assert "RR_ZWARN" in redrock.colnames


def test_redrock_without_templates_is_a_config_error(monkeypatch):
    require("redrock", "GASNET_REQUIRE_REDROCK")
    monkeypatch.delenv("RR_TEMPLATE_DIR", raising=False)
    pipeline = Pipeline(parse_config({"stages": ["resample", {"redshift-scan": {
        "engine": "redrock"}}]}))
    with pytest.raises(ConfigError, match="RR_TEMPLATE_DIR"):
        pipeline.setup()


def test_third_party_engine_from_its_own_distribution(monkeypatch):
    try:
        distribution("gasnet-example-engine")
    except PackageNotFoundError:
        if os.environ.get("GASNET_REQUIRE_EXAMPLE_ENGINE"):
            pytest.fail("tests/example_engine_plugin must be installed here")
        pytest.skip("pip install tests/example_engine_plugin to run this test")
    assert "strongest-line" in PluginHost().engines.names()
    config = {"stages": ["resample", {"redshift-scan": {
        "engine": "strongest-line", "engine_params": {"line": 6564.61}}}]}
    # one strong line at 7000 Å on a flat, noisy continuum: Hα at z = 7000/6564.61 − 1
    wave = np.linspace(3600, 9200, 6000)
    flux = 10 + np.random.default_rng(3).normal(0, 0.5, wave.size)
    flux += 30 * np.exp(-0.5 * ((wave - 7000) / 2.0) ** 2)
    spectrum = Spectrum(flux=flux * u.Jy, spectral_axis=wave * u.AA,
                        uncertainty=InverseVariance(np.full(wave.size, 4.0), unit=u.Jy**-2))
    meta = process_spectra(config, [spectrum])[0].meta
    assert meta["ENGINE"] == "strongest-line"
    assert meta["Z"] == pytest.approx(7000 / 6564.61 - 1, abs=3e-4)
    assert run_pipeline(config, [str(SDSS_FILES[0])]).results["ENGINE"][0] == "strongest-line"
    # blocked by name: the engine disappears and the config error lists what is left
    blocked = {**config, "plugins": {"block": ["example_engine"]}}
    with pytest.raises(ConfigError, match=r"unknown redshift engine 'strongest-line'.*gasnet3"):
        Pipeline(parse_config(blocked))
    monkeypatch.setenv("GASNET_BLOCK_PLUGINS", "example_engine")
    assert "strongest-line" not in PluginHost().engines.names()


def test_every_example_config_has_a_header_and_runs(tmp_path, monkeypatch, tiny_templates):
    monkeypatch.setenv("RR_TEMPLATE_DIR", str(tiny_templates))
    for config in sorted((REPO / "example_configs").glob("*.yaml")):
        assert config.read_text().startswith("#"), f"{config.name}: no comment header"
        if "redrock" in config.read_text():
            require("redrock", "GASNET_REQUIRE_REDROCK")
        parsed = as_config(config)
        if parsed.device.startswith("cuda") and not torch.cuda.is_available():
            parsed.device = "cpu"       # gpu.yaml here as `gasnet run --device cpu` runs it
        archive = run_pipeline(parsed, [str(SDSS_FILES[0])], tmp_path / f"{config.stem}.asdf")
        assert len(archive.results) == 1, config.name


def test_redrock_with_an_incomplete_template_set_warns_and_flags(tmp_path):
    """No GALAXY template: a warning at setup naming the class, and every row flagged
    MISSING_TEMPLATE with the reason (not a silent QSO for every galaxy)."""
    require("redrock", "GASNET_REQUIRE_REDROCK")
    import shutil

    from gasnet_plugin.engines.protocol import EngineInput
    from gasnet_plugin.engines.redrock import RedrockEngine
    from gasnet_plugin.zwarning import ZWarn

    folder = tmp_path / "rr"
    folder.mkdir()
    for name in ("rrtemplate-QSO-None-v0.1.fits", "rrtemplate-STAR-G-tiny.fits"):
        shutil.copy(TINY / name, folder / name)
    engine = RedrockEngine(templates=str(folder))
    with pytest.warns(UserWarning, match=r"no GALAXY template"):
        engine.setup()
    assert engine.missing_classes == ["GALAXY"]
    archive = run_pipeline({"stages": ["resample"], "output": {"arrays": ["flux", "ivar"]}},
                           [str(SDSS_FILES[0])])
    arrays = archive.arrays
    result = engine.measure(EngineInput(arrays.arrays["flux"], arrays.arrays["ivar"],
                                        arrays.loglam))
    assert np.all(result.zwarn & int(ZWarn.MISSING_TEMPLATE))
    assert "GALAXY" in result.reasons[int(ZWarn.MISSING_TEMPLATE)]
