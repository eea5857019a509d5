"""The Python API: what ``gasnet run`` does, for notebooks and scripts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gasnet_plugin.host.config import PipelineConfig, load_config, parse_config
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import RunArchive


def as_config(config: str | os.PathLike[str] | dict[str, Any] | PipelineConfig,
              ) -> PipelineConfig:
    """A validated configuration from a YAML path, a mapping or a ready config."""
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)


def run_pipeline(config: str | os.PathLike[str] | dict[str, Any] | PipelineConfig,
                 inputs: Sequence[str | os.PathLike[str]],
                 output: str | os.PathLike[str] | None = None, overwrite: bool = False,
                 progress: bool | None = None, resume: bool = False) -> RunArchive:
    """Run a pipeline on files, folders or glob patterns, as ``gasnet run`` does.

    Parameters
    ----------
    config
        A YAML file, a mapping in the same layout, or a :class:`PipelineConfig`.
    inputs
        Files, folders (their FITS files) or glob patterns.
    output
        Where to write the ASDF archive; ``None`` writes nothing.
    overwrite
        Replace an existing ``output``.
    progress
        Show a progress bar (``None``: the config decides).
    resume
        With ``output``: finish a stopped run from its shards (see
        :meth:`~gasnet_plugin.host.runner.Pipeline.run_to_file`).

    Returns
    -------
    RunArchive
        ``archive.results`` is the table, one row per input spectrum.

    With ``output``, the run streams to shards beside it (memory stays flat, the config's
    executor is used); without, it runs in this process and in memory.
    """
    pipeline = Pipeline(as_config(config))
    if output is not None:
        return pipeline.run_to_file([Path(p) for p in inputs], output, resume=resume,
                                    overwrite=overwrite, progress=progress)
    return pipeline.run([Path(p) for p in inputs], progress=progress)


def process_spectra(config: str | os.PathLike[str] | dict[str, Any] | PipelineConfig,
                    spectra: Sequence[Any]) -> list[Any]:
    """Run a pipeline on in-memory :class:`~specutils.Spectrum` objects.

    Each spectrum may carry label rows in ``meta["rows"]`` (as the readers set them);
    others get empty labels with ``SOURCE`` ``"<memory>"``. Returns one annotated 1-D
    Spectrum per input spectrum, on the common grid, with its results row in ``meta``.
    """
    from gasnet_plugin.host.batch import InputBlock
    from gasnet_plugin.host.collector import run_collector
    from gasnet_plugin.io.labels import label_rows

    pipeline = Pipeline(as_config(config))
    pipeline.setup()
    blocks = []
    for spectrum in spectra:
        n = 1 if spectrum.flux.ndim == 1 else spectrum.flux.shape[0]
        rows = spectrum.meta.get("rows") if isinstance(spectrum.meta, dict) else None
        blocks.append(InputBlock(rows=rows if rows is not None else label_rows(n, "<memory>"),
                                 spectrum=spectrum))
    annotated = []
    with run_collector():
        for batch in pipeline.batches(blocks):
            for done in pipeline.process_batch(batch):
                annotated.extend(done.spectra())
    return annotated
