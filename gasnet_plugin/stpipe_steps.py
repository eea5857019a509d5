"""The stages as stpipe Steps, and the whole pipeline as an stpipe Pipeline.

For reductions that run inside stpipe (the JWST/Roman framework). Needs the ``stpipe``
extra: ``pip install 'gasnet-plugin[stpipe]'``. The steps are registered through stpipe's
``stpipe.steps`` entry point, so ``strun`` finds them by alias::

    strun gasnet_pipeline spectra/ --output_file=results.asdf
    strun example_configs/stpipe/gasnet_pipeline.asdf spectra/ --output_file=results.asdf
    strun gasnet_classify spectra/ --model=my-classifier.asdf

What flows between steps is a :class:`GasnetProducts`: the batches of spectra with their
results so far. A step given a path (a file, a folder or a glob pattern) reads it first;
its ``save`` writes the results archive (the same ASDF archive ``gasnet run`` writes), which
is what stpipe's ``--output_file`` / ``save_results`` produce. Each step's parameters are
the stage's own (same names, defaults and validation); a mapping parameter (the scan's
``engine_params``) is given as YAML text: ``--steps.redshift_scan.engine_params="{n_refit:
1, n_candidates: 2}"``. The steps hold everything in memory: for
catalogues larger than memory, use ``gasnet run``, which streams.

Every step takes ``device`` (``None``: what the products carry, which the reading step
took from its own ``device``, ``cpu`` by default); reading takes ``reader`` and
``batch_size``. These steps use no CRDS parameter references.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml
from stpipe import Pipeline as StpipePipeline
from stpipe import Step

from gasnet_plugin.host.batch import SpectrumBatch
from gasnet_plugin.host.batch_outputs import Cursor, assemble_outputs
from gasnet_plugin.host.config import ConfigError, PipelineConfig, parse_config
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import RunArchive

COMMON_SPEC = """
    output_ext = string(default=".asdf")  # the results archive is an ASDF file
    device = string(default=None)      # torch device: cpu, cuda, cuda:N (None: as read)
    reader = string(default="auto")    # reader of the input files (when given paths)
    batch_size = integer(default=256)  # spectra per batch (when given paths)
"""


class GasnetProducts:
    """The spectra a chain of steps works on, batch by batch, with their results.

    Attributes
    ----------
    batches
        The batches, in input order; each carries its results rows and arrays.
    files
        The input files read.
    settings
        ``reader``, ``batch_size``, ``device`` and the stages run so far, in the layout
        of a gasnet config (what the archive records).
    archived_arrays
        The per-spectrum arrays :meth:`save` puts in the archive (``flux``, ``model``, ...).
    """

    def __init__(self, batches: list[SpectrumBatch], files: list[Path],
                 settings: dict[str, Any], archived_arrays: Sequence[str] = ()) -> None:
        self.batches = batches
        self.files = files
        self.settings = settings
        self.archived_arrays = list(archived_arrays)

    @classmethod
    def read(cls, inputs: str | Path | Sequence[str | Path], reader: str, batch_size: int,
             device: str) -> GasnetProducts:
        """Read files, folders or glob patterns into batches (bad files flagged)."""
        items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        files = expand_inputs(items)
        settings = {"reader": reader, "batch_size": batch_size, "device": device,
                    "stages": []}
        host = Pipeline(parse_config({**settings, "stages": ["resample"]},
                                     source="stpipe step"))
        return cls(list(host.batches(host.read_blocks(files))), files, settings)

    def config(self) -> PipelineConfig:
        """The stages run so far as a gasnet config."""
        return parse_config({**self.settings, "stages": self.settings["stages"] or
                             ["resample"]}, source="stpipe pipeline")

    def archive(self) -> RunArchive:
        """The results archive of the products (with :attr:`archived_arrays`)."""
        host = Pipeline(self.config())
        host.config.output["arrays"] = [name for name in self.archived_arrays
                                        if any(name in b.arrays for b in self.batches)]
        outputs = [host.output_of([batch], Cursor()) for batch in self.batches]
        results, archived = assemble_outputs(outputs, host.config.output["arrays"])
        return RunArchive(results=results, run=host.run_info(self.files, results),
                          arrays=archived)

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the results archive (what stpipe calls for ``--output_file``)."""
        return self.archive().write(path, overwrite=overwrite)

    @property
    def results(self) -> Any:
        """The results table of all spectra so far."""
        return self.archive().results


def _configobj_spec(parameters: dict[str, dict[str, Any]]) -> str:
    """stpipe spec lines for a stage's JSON-schema parameters."""
    lines = []
    for name, schema in parameters.items():
        kinds = schema.get("type", "string")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        default = schema.get("default")
        kind = next(k for k in kinds if k != "null") if kinds != ["null"] else "string"
        if kind == "object":
            # YAML text; force_list because configobj splits a value at its commas (the
            # pieces are joined again in stage_params)
            text = yaml.safe_dump(default, default_flow_style=True).strip()
            spec = f"force_list(default=list({text!r}))"
        elif kind == "array":
            spec = f"list(default={list(default or [])!r})"
        else:
            configobj_type = {"number": "float", "integer": "integer", "boolean": "boolean",
                              "string": "string"}[kind]
            spec = f"{configobj_type}(default={default!r})"
        description = " ".join(str(schema.get("description", "")).split())
        lines.append(f"    {name} = {spec}    # {description}")
    return "\n".join(lines)


class NoCrdsParameters:
    """Mixin for our steps: no CRDS parameter references (the spec and the config file
    decide), and saved archives named ``<input or output_file>_gasnet.asdf``."""

    @classmethod
    def _get_crds_parameters(cls, dataset: Any) -> tuple[dict[str, Any], None]:
        return {}, None

    @classmethod
    def get_config_from_reference(cls, dataset: Any, disable: Any = None,
                                  crds_observatory: Any = None) -> Any:
        return cls._empty_config()

    def default_suffix(self) -> str:
        return "gasnet"


STPIPE_LOGGER = "stpipe.step"
"""The logger stpipe's Step machinery writes to (instance created, running with, the
parameter dump, finished)."""


@contextlib.contextmanager
def _stpipe_quiet() -> Iterator[None]:
    """stpipe's own INFO lines silenced (warnings and errors still pass): our steps say
    what they did in one line each."""
    logger = logging.getLogger(STPIPE_LOGGER)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


STEP_LOGGER = logging.getLogger(STPIPE_LOGGER + ".gasnet")
"""Our steps' one line each: a child of stpipe's logger (its handlers print it) with its
own level, so it passes while stpipe's chatter is held back."""
STEP_LOGGER.setLevel(logging.INFO)


def _one_line(step: Step, products: GasnetProducts, seconds: float) -> None:
    """The step's single log line."""
    n = sum(len(batch) for batch in products.batches)
    STEP_LOGGER.info(
        "%s: %d spectr%s in %.2f s", step.name, n, "um" if n == 1 else "a", seconds)


class QuietStep:
    """Mixin for our Step classes: stpipe's per-step INFO chatter (creation, arguments,
    the whole parameter dump) is replaced by one line per step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _stpipe_quiet():
            super().__init__(*args, **kwargs)

    def run(self, *args: Any) -> Any:
        began = time.perf_counter()
        with _stpipe_quiet():
            result = super().run(*args)
        if isinstance(result, GasnetProducts):
            _one_line(self, result, time.perf_counter() - began)
        return result


class GasnetStageStep(QuietStep, NoCrdsParameters, Step):
    """Base of the steps: run one registered gasnet stage on every batch."""

    stage_name: ClassVar[str]
    stage_parameters: ClassVar[dict[str, dict[str, Any]]] = {}

    def stage_params(self) -> dict[str, Any]:
        """This step's parameters as the stage takes them."""
        params = {}
        for name, schema in self.stage_parameters.items():
            value = getattr(self, name)
            kinds = schema.get("type", "string")
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if "object" in kinds and isinstance(value, str | list):
                text = value if isinstance(value, str) else ", ".join(value)
                value = yaml.safe_load(text) or {}
            if "array" in kinds and value is not None:
                value = list(value)
            params[name] = value
        return params

    def process(self, input: Any) -> GasnetProducts:
        from gasnet_plugin.host.collector import run_collector

        with run_collector():          # the collector set as every run sets it
            return self._process(input)

    def _process(self, input: Any) -> GasnetProducts:
        if isinstance(input, GasnetProducts):
            products = input
        else:
            products = GasnetProducts.read(input, self.reader, self.batch_size,
                                           self.device or "cpu")
        device = self.device or products.settings["device"]
        stage = {self.stage_name: self.stage_params()}
        config = parse_config({**products.settings, "device": device, "stages": [stage]},
                              source=f"stpipe step {self.name}")
        done_before = [next(iter(s)) for s in products.settings["stages"]]
        needed = [n for n in _BUILTIN_STAGES.get(self.stage_name).requires
                  if n not in done_before]
        if needed:
            raise ConfigError(f"stpipe step {self.name}: needs {', '.join(needed)} run "
                              f"before it (done so far: {', '.join(done_before) or 'none'})")
        host = Pipeline(config, plugins=PluginHost(), check_order=False)
        host.setup()
        done: list[SpectrumBatch] = []
        for batch in products.batches:
            done.extend(host.process_batch(batch))
        products.batches = done
        products.settings = {**products.settings, "device": device,
                             "stages": [*products.settings["stages"], stage]}
        return products


_BUILTIN_STAGES = PluginHost().stages
"""The stage registry the Step classes below are made from (plugins loaded once)."""


def _stage_step(stage_name: str, class_name: str, alias: str) -> type[GasnetStageStep]:
    """A Step class for the registered stage ``stage_name``."""
    stage_class = _BUILTIN_STAGES.get(stage_name)
    doc = (f"stpipe Step running the gasnet '{stage_name}' stage: {stage_class.summary}."
           "\n\nParameters are the stage's (see ``gasnet stages``), plus ``device``, "
           "``reader`` and ``batch_size``.")
    return type(class_name, (GasnetStageStep,), {
        "__doc__": doc, "__module__": __name__, "class_alias": alias,
        "stage_name": stage_name, "stage_parameters": dict(stage_class.parameters),
        "spec": COMMON_SPEC + _configobj_spec(stage_class.parameters) + "\n",
    })


ResampleStep = _stage_step("resample", "ResampleStep", "gasnet_resample")
ClassifyStep = _stage_step("classify", "ClassifyStep", "gasnet_classify")
RedshiftScanStep = _stage_step("redshift-scan", "RedshiftScanStep", "gasnet_redshift_scan")
ReconstructStep = _stage_step("reconstruct", "ReconstructStep", "gasnet_reconstruct")
SubtypeStep = _stage_step("subtype", "SubtypeStep", "gasnet_subtype")
FlagAnomalyStep = _stage_step("flag-anomaly", "FlagAnomalyStep", "gasnet_flag_anomaly")


class GasnetPipeline(QuietStep, NoCrdsParameters, StpipePipeline):
    """The whole gasnet pipeline as an stpipe Pipeline: resample → classify →
    redshift_scan → reconstruct → subtype → flag_anomaly (set a step's ``skip`` to leave
    it out).
    Its result saves as the gasnet results archive."""

    class_alias = "gasnet_pipeline"
    spec = """
    output_ext = string(default=".asdf")  # the results archive is an ASDF file
    device = string(default="cpu")     # torch device of every step: cpu, cuda, cuda:N
    reader = string(default="auto")    # reader of the input files
    batch_size = integer(default=256)  # spectra per batch
    arrays = list(default=list())      # per-spectrum arrays to archive (flux, model, ...)
"""
    step_defs: ClassVar[dict[str, type[Step]]] = {
        "resample": ResampleStep,
        "classify": ClassifyStep,
        "redshift_scan": RedshiftScanStep,
        "reconstruct": ReconstructStep,
        "subtype": SubtypeStep,
        "flag_anomaly": FlagAnomalyStep,
    }

    def process(self, input: Any) -> GasnetProducts:
        from gasnet_plugin.host.collector import run_collector

        with run_collector():          # the collector set as every run sets it
            products = (input if isinstance(input, GasnetProducts) else
                        GasnetProducts.read(input, self.reader, self.batch_size, self.device))
            for name in self.step_defs:
                step = getattr(self, name)
                if step.skip:
                    continue
                products = step.run(products)
        products.archived_arrays = list(self.arrays)
        return products


def get_steps() -> list[tuple[str, str, bool]]:
    """stpipe's ``stpipe.steps`` entry point: (class, alias, is a pipeline) per step."""
    return [
        (f"{__name__}.{cls.__name__}", cls.class_alias, cls is GasnetPipeline)
        for cls in (ResampleStep, ClassifyStep, RedshiftScanStep, ReconstructStep,
                    SubtypeStep, FlagAnomalyStep, GasnetPipeline)
    ]


__all__ = ["ClassifyStep", "ConfigError", "FlagAnomalyStep", "GasnetPipeline",
           "GasnetProducts", "ReconstructStep", "RedshiftScanStep", "ResampleStep",
           "SubtypeStep", "get_steps"]
