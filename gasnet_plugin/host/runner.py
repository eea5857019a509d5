"""The pipeline runner: files → input blocks → batches → stages → results archive.

A run never stops for one bad spectrum: an unreadable file gets one row flagged
``BAD_INPUT`` with the reason; a spectrum the resample stage cannot use gets its row
flagged; and if a stage raises on a batch, the batch is re-run one spectrum at a time so
that only the spectra that make a stage fail are flagged ``STAGE_FAILED`` and every other
result is kept.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from tqdm import tqdm

from gasnet_plugin.host.batch import InputBlock, SpectrumBatch
from gasnet_plugin.host.config import ConfigError, PipelineConfig
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.archive import RunArchive, RunInfo, SpectrumArrays, count_failed
from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra
from gasnet_plugin.stages.base import RunContext, Stage
from gasnet_plugin.zwarning import ZWarn

CORE_PACKAGES = ("gasnet-plugin", "numpy", "astropy", "specutils", "asdf", "asdf-astropy",
                 "torch", "pluggy")


def software_versions(plugins: PluginHost) -> dict[str, str]:
    """Versions of Python, the core packages and what plugins report."""
    versions = {"python": platform.python_version()}
    for package in CORE_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions.update(plugins.software_versions())
    return versions


def _fill_value(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return -1
    if dtype.kind == "b":
        return False
    return ""


def merge_results(tables: Sequence[Table]) -> Table:
    """Stack result tables whose columns may differ (a batch whose stages failed lacks the
    later stages' columns); missing values get NaN, -1, False or an empty string."""
    if len(tables) == 1:
        return tables[0]
    columns: dict[str, Any] = {}
    for table in tables:
        for name in table.colnames:
            columns.setdefault(name, table[name])
    merged = {}
    for name, template in columns.items():
        parts = []
        for table in tables:
            if name in table.colnames:
                parts.append(np.asarray(table[name]))
            else:
                shape = (len(table), *template.shape[1:])
                parts.append(np.full(shape, _fill_value(template.dtype), dtype=template.dtype))
        merged[name] = np.concatenate(parts)
    out = Table(merged)
    for name, template in columns.items():
        out[name].description = template.description
        out[name].unit = template.unit
    return out


def merge_arrays(batches: Sequence[SpectrumBatch], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The requested per-spectrum arrays of all batches, stacked; zeros where absent."""
    merged = {}
    for name in names:
        template = next((b.arrays[name] for b in batches if name in b.arrays), None)
        if template is None:
            continue
        merged[name] = np.concatenate([
            b.arrays[name] if name in b.arrays
            else np.zeros((len(b), *template.shape[1:]), dtype=template.dtype)
            for b in batches])
    return merged


class Pipeline:
    """A configured pipeline: stages built and validated, ready to run on inputs.

    Parameters
    ----------
    config
        A validated configuration (:func:`~gasnet_plugin.host.config.load_config`).
    plugins
        The plugin host; by default one built with the config's blocked plugins.

    Raises
    ------
    ConfigError
        If a stage or reader is not registered, a stage's parameters are invalid, or an
        output array is offered by no enabled stage. Nothing has been read at that point.
    """

    def __init__(self, config: PipelineConfig, plugins: PluginHost | None = None) -> None:
        self.config = config
        self.plugins = plugins or PluginHost(block=config.plugins.get("block", []))
        self.stages = [self._build_stage(index, spec.name, spec.params)
                       for index, spec in enumerate(config.stages)]
        if config.reader != "auto":
            self._resolve(lambda: self.plugins.readers.get(config.reader), "reader")
        offered = {name for stage in self.stages for name in getattr(stage, "arrays", {})}
        unknown = [name for name in config.output.get("arrays", []) if name not in offered]
        if unknown:
            raise ConfigError(f"{config.source}: output.arrays: {unknown} offered by no enabled "
                              f"stage (available: {', '.join(sorted(offered)) or 'none'})")
        self._ready = False

    def _resolve(self, lookup: Any, where: str) -> Any:
        try:
            return lookup()
        except LookupError as exc:
            raise ConfigError(f"{self.config.source}: {where}: {exc.args[0]}") from None

    def _build_stage(self, index: int, name: str, params: dict[str, Any]) -> Stage:
        stage_class = self._resolve(lambda: self.plugins.stages.get(name), f"stages[{index}]")
        try:
            stage = stage_class(**params)
            stage.bind(self.plugins)
        except ConfigError as exc:
            raise ConfigError(f"{self.config.source}: stages[{index}]: {exc}") from None
        except LookupError as exc:
            raise ConfigError(f"{self.config.source}: stages[{index}] ({name}): "
                              f"{exc.args[0]}") from None
        return stage

    def setup(self) -> None:
        """Let every stage prepare (load models) once; called by the first run."""
        if self._ready:
            return
        context = RunContext(plugins=self.plugins, device=self.config.device,
                             options=self.config.as_dict())
        for stage in self.stages:
            stage.setup(context)
        self._ready = True

    # -- reading ---------------------------------------------------------------------------

    def read_blocks(self, files: Iterable[Path]) -> Iterator[InputBlock]:
        """Input blocks of every file, in order; an unreadable file gives a flagged block."""
        for path in files:
            try:
                spectra = read_spectra(path, self.config.reader, self.plugins.readers)
            except UnreadableFileError as exc:
                yield InputBlock(rows=label_rows(1, str(path)), error=str(exc))
                continue
            for spectrum in spectra:
                yield InputBlock(rows=spectrum.meta["rows"], spectrum=spectrum)

    def batches(self, blocks: Iterable[InputBlock]) -> Iterator[SpectrumBatch]:
        """Group blocks into batches of ``batch_size`` spectra (splitting large blocks)."""
        size = self.config.batch_size
        pending: list[InputBlock] = []
        filled = 0
        for block in blocks:
            start = 0
            while start < len(block):
                take = min(size - filled, len(block) - start)
                pending.append(block.slice(start, start + take) if block.spectrum is not None
                               else block)
                filled += take
                start += take
                if filled == size:
                    yield SpectrumBatch(pending)
                    pending, filled = [], 0
        if pending:
            yield SpectrumBatch(pending)

    # -- processing ------------------------------------------------------------------------

    def process_batch(self, batch: SpectrumBatch) -> list[SpectrumBatch]:
        """Run every stage on ``batch``; on a stage error, isolate the failing spectra.

        Returns the batch itself, or (after a failure) one batch per spectrum, so that the
        caller keeps every result that could be computed.
        """
        try:
            for stage in self.stages:
                stage.process(batch)
            return [batch]
        except Exception as exc:
            if len(batch) == 1:
                batch.flag(np.array([0]), ZWarn.STAGE_FAILED,
                           f"stage {stage.name!r} failed: {type(exc).__name__}: {exc}")
                return [batch]
        singles = []
        for block in batch.blocks:
            for index in range(len(block)):
                piece = block.slice(index, index + 1) if block.spectrum is not None else block
                singles.extend(self.process_batch(SpectrumBatch([piece])))
        return singles

    def run(self, inputs: Sequence[str | Path], progress: bool | None = None) -> RunArchive:
        """Run the pipeline on files, folders or glob patterns; returns the archive.

        Parameters
        ----------
        inputs
            What to read (see :func:`~gasnet_plugin.host.inputs.expand_inputs`).
        progress
            Show a progress bar over the files; ``None`` uses the config's ``progress``
            (and, if that is null, shows it for more than one file on a terminal).
        """
        files = expand_inputs(inputs)
        self.setup()
        if progress is None:
            progress = self.config.progress
        if progress is None:
            progress = len(files) > 1 and sys.stderr.isatty()
        done: list[SpectrumBatch] = []
        with tqdm(total=len(files), unit="file", disable=not progress,
                  file=sys.stderr, desc="gasnet") as bar:
            def counted(paths: Iterable[Path]) -> Iterator[Path]:
                for path in paths:
                    yield path
                    bar.update(1)

            for batch in self.batches(self.read_blocks(counted(files))):
                done.extend(self.process_batch(batch))
        return self._archive(done, files)

    def _archive(self, batches: Sequence[SpectrumBatch], files: Sequence[Path]) -> RunArchive:
        results = merge_results([batch.results() for batch in batches])
        names = self.config.output.get("arrays", [])
        arrays = None
        if names:
            loglam = next((b.spectrum.meta["loglam"] for b in batches
                           if b.spectrum is not None), np.zeros(0))
            unit = next((b.spectrum.flux.unit.to_string() for b in batches
                         if b.spectrum is not None), "")
            axes = {}
            for batch in batches:
                axes.update(batch.array_axes)
            arrays = SpectrumArrays(loglam=np.asarray(loglam), flux_unit=unit,
                                    arrays=merge_arrays(batches, names),
                                    axes={k: v for k, v in axes.items() if k in names})
        run = RunInfo(
            config=self.config.as_dict(),
            software=software_versions(self.plugins),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            inputs=[str(f) for f in files],
            n_spectra=len(results),
            n_failed=count_failed(results),
        )
        return RunArchive(results=results, run=run, arrays=arrays)
