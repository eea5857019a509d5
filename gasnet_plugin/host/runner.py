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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from tqdm import tqdm

from gasnet_plugin.host.batch import InputBlock, SpectrumBatch
from gasnet_plugin.host.batch_outputs import (
    BatchOutput,
    Cursor,
    assemble_outputs,
    merge_arrays,
    merge_results,
)
from gasnet_plugin.host.config import ConfigError, PipelineConfig
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.output_guard import OutputLock, check_output_path
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.host.read_ahead import read_ahead
from gasnet_plugin.io.archive import (
    ArchiveError,
    ArchiveFile,
    RunArchive,
    RunInfo,
    count_failed,
    read_archive,
)
from gasnet_plugin.io.labels import label_rows, printable_path
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra, spectra_in_file
from gasnet_plugin.io.text_columns import compact_text_columns, text_columns_as_str
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


class Pipeline:
    """A configured pipeline: stages built and validated, ready to run on inputs.

    Parameters
    ----------
    config
        A validated configuration (:func:`~gasnet_plugin.host.config.load_config`).
    plugins
        The plugin host; by default one built with the config's blocked plugins.
    check_order
        Refuse stages whose required stages do not come before them (``Stage.requires``);
        off only for a caller that ran those stages itself (the stpipe steps).

    Raises
    ------
    ConfigError
        If a stage or reader is not registered, a stage's parameters are invalid, a stage
        lacks the stages it needs before it, or an output array is offered by no enabled
        stage. Nothing has been read at that point.
    """

    def __init__(self, config: PipelineConfig, plugins: PluginHost | None = None,
                 check_order: bool = True) -> None:
        self.config = config
        self.plugins = plugins or PluginHost(block=config.plugins.get("block", []))
        self.stages = [self._build_stage(index, spec.name, spec.params)
                       for index, spec in enumerate(config.stages)]
        if config.reader != "auto":
            self._resolve(lambda: self.plugins.readers.get(config.reader), "reader")
        if check_order:
            self._check_order()
        offered = {name for stage in self.stages for name in getattr(stage, "arrays", {})}
        unknown = [name for name in config.output.get("arrays", []) if name not in offered]
        if unknown:
            raise ConfigError(f"{config.source}: output.arrays: {unknown} offered by no enabled "
                              f"stage (available: {', '.join(sorted(offered)) or 'none'})")
        self._ready = False
        self.stage_seconds: dict[str, float] = {}
        """Wall seconds spent in each stage's ``process`` so far (for benchmarks)."""

    @property
    def archived_arrays(self) -> list[str]:
        """Names of the per-spectrum arrays the archive keeps (``output.arrays``)."""
        return list(self.config.output.get("arrays", []))

    def _resolve(self, lookup: Any, where: str) -> Any:
        try:
            return lookup()
        except LookupError as exc:
            raise ConfigError(f"{self.config.source}: {where}: {exc.args[0]}") from None

    def _check_order(self) -> None:
        """Refuse stages that need another stage before them (``Stage.requires``)."""
        seen: list[str] = []
        for index, stage in enumerate(self.stages):
            missing = [name for name in getattr(stage, "requires", ()) if name not in seen]
            if missing:
                raise ConfigError(f"{self.config.source}: stages[{index}] ({stage.name}) needs "
                                  f"{' and '.join(repr(m) for m in missing)} before it "
                                  f"(the stages run in the order listed: "
                                  f"{', '.join(s.name for s in self.stages)})")
            seen.append(stage.name)

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
        """Let every stage prepare (load models) once, then check that the models fit the
        common grid; called by the first run, before any input is read.

        Raises
        ------
        ConfigError
            For any setup failure (a missing or broken model file, a device that is not
            there, a grid the models were not made for), naming the stage.
        """
        if self._ready:
            return
        from gasnet_plugin.models.eigen_model import ModelError

        device = str(self.config.device)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"{self.config.source}: device {device!r}: no CUDA device "
                                  "on this machine (use device: cpu)")
        context = RunContext(plugins=self.plugins, device=self.config.device,
                             options=self.config.as_dict())
        grid = None
        for stage in self.stages:
            try:
                stage.setup(context)
                if grid is not None:
                    stage.check_grid(grid)
            except ConfigError as exc:
                raise ConfigError(f"{self.config.source}: stage {stage.name!r}: {exc}") \
                    from None
            except (ModelError, OSError, ValueError) as exc:
                raise ConfigError(f"{self.config.source}: stage {stage.name!r} could not be "
                                  f"set up: {type(exc).__name__}: {exc}") from None
            grid = getattr(stage, "loglam", grid)
        self._ready = True

    # -- reading ---------------------------------------------------------------------------

    def read_file(self, path: Path, file_index: int = -1) -> Iterator[InputBlock]:
        """The input blocks of one file; an unreadable file gives one flagged block."""
        try:
            spectra = read_spectra(path, self.config.reader, self.plugins.readers)
        except UnreadableFileError as exc:
            yield InputBlock(rows=label_rows(1, str(path)), error=str(exc),
                             file_index=file_index)
            return
        first_row = 0
        for spectrum in spectra:
            rows = spectrum.meta["rows"]
            yield InputBlock(rows=rows, spectrum=spectrum, file_index=file_index,
                             first_row=first_row)
            first_row += len(rows)
        if first_row == 0:      # a file that holds no spectrum still shows in the archive
            yield InputBlock(rows=label_rows(1, str(path)),
                             error=f"{path}: the file holds no spectrum", file_index=file_index)

    def count_rows(self, path: Path) -> int:
        """The results rows ``path`` gives in a run (as :meth:`read_file` yields them),
        from its headers where they tell (one spectrum per SDSS or LAMOST file), else by
        reading it."""
        known = spectra_in_file(path, self.config.reader, self.plugins.readers)
        if known is not None:
            return known
        return sum(len(block) for block in self.read_file(path))

    def read_blocks(self, files: Sequence[Path], start: Cursor = Cursor(),
                    limit: int | None = None,
                    on_file_read: Callable[[], None] | None = None) -> Iterator[InputBlock]:
        """Input blocks of ``files``, in order, from ``start`` on.

        Parameters
        ----------
        files
            The run's input files.
        start
            The first spectrum to deliver; the files before ``start.file`` are not opened.
        limit
            Deliver at most this many spectra (``None``: to the end).
        on_file_read
            Called once per file opened (a progress bar's update).
        """
        remaining = limit
        for file_index in range(start.file, len(files)):
            skip = start.row if file_index == start.file else 0
            row = 0
            for block in self.read_file(files[file_index], file_index):
                n = len(block)
                if row + n <= skip:
                    row += n
                    continue
                low = max(skip - row, 0)
                high = n if remaining is None else min(n, low + remaining)
                row += n
                yield block.slice(low, high)
                if remaining is not None:
                    remaining -= high - low
                    if remaining == 0:
                        if on_file_read is not None:
                            on_file_read()
                        return
            block = None     # this file's arrays are not held while the next one is read
            if on_file_read is not None:
                on_file_read()

    def batches(self, blocks: Iterable[InputBlock]) -> Iterator[SpectrumBatch]:
        """Group blocks into batches of ``batch_size`` spectra (splitting large blocks)."""
        size = self.config.batch_size
        pending: list[InputBlock] = []
        filled = 0
        for block in blocks:
            start = 0
            while start < len(block):
                take = min(size - filled, len(block) - start)
                pending.append(block.slice(start, start + take))
                filled += take
                start += take
                if filled == size:
                    yield SpectrumBatch(pending)
                    pending, filled = [], 0
            if pending and pending[-1] is not block:
                # the batch goes on in the next block (file): keep a copy of this block's
                # tail, not a view that would hold the whole file while the next is read
                pending[-1] = pending[-1].copy()
            del block
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
                began = time.perf_counter()
                stage.process(batch)
                self.stage_seconds[stage.name] = (self.stage_seconds.get(stage.name, 0.0)
                                                  + time.perf_counter() - began)
            return [batch]
        except Exception as exc:
            if len(batch) == 1:
                batch.flag(np.array([0]), ZWarn.STAGE_FAILED,
                           f"stage {stage.name!r} failed: {type(exc).__name__}: {exc}")
                return [batch]
        singles = []
        for block in batch.blocks:
            for index in range(len(block)):
                piece = block.slice(index, index + 1)
                singles.extend(self.process_batch(SpectrumBatch([piece])))
        return singles

    def output_of(self, processed: Sequence[SpectrumBatch], end: Cursor) -> BatchOutput:
        """Keep the results and archived arrays of a processed batch (or of the
        one-spectrum batches it was split into), dropping the spectra."""
        names = self.archived_arrays
        results = merge_results([compact_text_columns(batch.results()) for batch in processed])
        arrays = merge_arrays([(len(b), b.arrays) for b in processed], names)
        axes: dict[str, dict[str, Any]] = {}
        for batch in processed:
            axes.update({k: v for k, v in batch.array_axes.items() if k in names})
        resampled = next((b.spectrum for b in processed if b.spectrum is not None), None)
        return BatchOutput(
            results=results, arrays=arrays, array_axes=axes,
            loglam=None if resampled is None else np.asarray(resampled.meta["loglam"]),
            flux_unit="" if resampled is None else resampled.flux.unit.to_string(),
            end=end)

    def stream(self, files: Sequence[Path], start: Cursor = Cursor(), limit: int | None = None,
               on_file_read: Callable[[], None] | None = None) -> Iterator[BatchOutput]:
        """Process ``files`` batch by batch from ``start``; yields one output per batch.

        Only the batch in hand holds spectra, so memory does not grow with the number of
        spectra. Batches start at ``start`` and hold ``batch_size`` spectra each (the
        last one fewer): starting at a multiple of ``batch_size`` in the run's global
        order forms the same batches as a run from the beginning.
        """
        self.setup()
        blocks = read_ahead(self.read_blocks(files, start, limit, on_file_read),
                            self.config.read_ahead)
        for batch in self.batches(blocks):
            last = batch.blocks[-1]
            end = Cursor(last.file_index, last.first_row + len(last))
            output = self.output_of(self.process_batch(batch), end)
            # the batch (its spectra, grid arrays and fits) goes before the next is formed
            del batch, last
            yield output

    def run_info(self, files: Sequence[Path], results: Table | None = None,
                 n_spectra: int = 0, n_failed: int = 0) -> RunInfo:
        """The run record of an archive of ``results`` read from ``files`` (or, for an
        archive written without holding its table, of the counts given)."""
        return RunInfo(
            config=self.config.as_dict(),
            software=software_versions(self.plugins),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            inputs=[printable_path(str(f)) for f in files],
            n_spectra=len(results) if results is not None else n_spectra,
            n_failed=count_failed(results) if results is not None else n_failed,
        )

    def run(self, inputs: Sequence[str | Path], progress: bool | None = None) -> RunArchive:
        """Run the pipeline on files, folders or glob patterns, in this process and in
        memory (only results and archived arrays are kept); returns the archive.

        :meth:`run_to_file` (what ``gasnet run`` does) streams to shards instead, resumes
        and can spread the work over Dask workers.

        Parameters
        ----------
        inputs
            What to read (see :func:`~gasnet_plugin.host.inputs.expand_inputs`).
        progress
            Show a progress bar over the files; ``None`` uses the config's ``progress``
            (and, if that is null, shows it for more than one file on a terminal).
        """
        from gasnet_plugin.host.collector import run_collector

        files = expand_inputs(inputs, recursive=self.config.recursive)
        with run_collector():
            with self.progress_bar(len(files), "file", progress) as bar:
                outputs = list(self.stream(files, on_file_read=lambda: bar.update(1)))
            results, arrays = assemble_outputs(outputs, self.archived_arrays)
        results = text_columns_as_str(results)
        return RunArchive(results=results, run=self.run_info(files, results), arrays=arrays)

    def progress_bar(self, total: int | None, unit: str, progress: bool | None,
                     desc: str = "gasnet") -> tqdm:
        """A tqdm bar on standard error (count, rate, ETA), shown as ``progress`` (or the
        config) says; by default on a terminal."""
        if progress is None:
            progress = self.config.progress
        if progress is None:
            progress = sys.stderr.isatty()
        return tqdm(total=total, unit=f" {unit}", disable=not progress, file=sys.stderr,
                    desc=desc, unit_scale=False, dynamic_ncols=True)

    def run_to_file(self, inputs: Sequence[str | Path], output: str | Path, *,
                    resume: bool = False, overwrite: bool = False,
                    progress: bool | None = None,
                    notify: Callable[[str], None] | None = None) -> RunArchive:
        """Run the pipeline streaming to shards, then merge them into the archive.

        Results go, every ``shard_size`` spectra (or ``shard_seconds``), to a shard in
        ``OUTPUT.parts/``; memory
        holds one batch of spectra and one shard of results. The executor of the config
        (``local`` or ``dask``) produces the shards; the merge checks that they cover
        every input spectrum exactly once, writes the archive atomically and removes the
        shards.

        Parameters
        ----------
        inputs
            Files, folders or glob patterns.
        output
            The ASDF archive to write.
        resume
            Continue a run that was stopped (killed, crashed): shards already written are
            kept and their spectra not processed again. The archive is the one an
            uninterrupted run writes. Refused if the config or the input files changed.
            If the run had finished (the archive is there, the shards gone), the archive
            is read and returned.
        overwrite
            Replace an existing archive (and discard the shards of a stopped run).
        progress
            Show a progress bar over the spectra done (``None``: the config decides).
        notify
            Called with one-line messages for the user (what a resume reuses); default:
            none.

        Raises
        ------
        RunStopped
            The run was stopped by SIGTERM or Ctrl-C after saving its shards (the same call
            with ``resume=True`` finishes it).
        ArchiveError
            The output exists (without ``overwrite`` or ``resume``), the shards of a stopped
            run are there (without ``resume`` or ``overwrite``), or they do not belong to
            this config and these inputs.
        """

        from gasnet_plugin.host.collector import run_collector

        output = Path(output)
        check_output_path(output)
        with OutputLock(output), run_collector():
            return self._run_to_file(inputs, output, resume, overwrite, progress, notify)

    def _run_to_file(self, inputs: Sequence[str | Path], output: Path, resume: bool,
                     overwrite: bool, progress: bool | None,
                     notify: Callable[[str], None] | None) -> RunArchive:
        """:meth:`run_to_file` under the output's lock."""
        from gasnet_plugin.host.executors import get_executor
        from gasnet_plugin.host.shards import ShardStore, StreamedMerge, parts_folder, same_run

        files = expand_inputs(inputs, recursive=self.config.recursive)
        resolved = {f.resolve() for f in files}
        if output.resolve() in resolved:
            raise ArchiveError(f"{output}: is one of the inputs; refusing to overwrite it")
        store = ShardStore(parts_folder(output))
        if resume and output.exists() and not store.exists():
            finished = read_archive(output)
            if not same_run(finished.run.config, self.config) \
                    or [printable_path(str(Path(p).resolve())) for p in finished.run.inputs] \
                    != [printable_path(str(f.resolve())) for f in files]:
                raise ArchiveError(f"{output}: a finished run of another config or other "
                                   "inputs (use --overwrite to replace it)")
            return finished
        if output.exists() and not (overwrite or resume):
            raise ArchiveError(f"{output}: exists (use --overwrite to replace it)")
        if store.exists() and not (resume or overwrite):
            raise ArchiveError(f"{store.folder}: shards of a stopped run are there: use "
                               f"--resume to finish it or --overwrite to start again")
        executor = get_executor(self.config.executor["name"])(self.config.executor)
        self.setup()           # setup errors before any shard folder exists
        merge = None
        try:
            store.open(self.config, files, self.config.spectra_per_shard, keep=resume)
            # the table alone: merged column by column while the run goes (memory flat);
            # with output.arrays: merged in memory at the end (for small runs)
            merge = None if self.archived_arrays else StreamedMerge(store)
            total = executor.run(self, files, store, progress,
                                 notify or (lambda message: None),
                                 on_shard=merge.shard_done if merge else None)
            if merge is None:
                results, arrays = store.merge(self.archived_arrays, expected_rows=total)
                archive = RunArchive(results=results, run=self.run_info(files, results),
                                     arrays=arrays)
                archive.write(output, overwrite=True)        # the text as stored
                text_columns_as_str(archive.results)         # and as a user reads it
            else:
                run = {}
                merge.write(output, lambda n, failed: run.setdefault("info", self.run_info(
                    files, n_spectra=n, n_failed=failed)), total)
                archive = ArchiveFile(output, run["info"])
        except OSError as exc:
            raise ArchiveError(f"{output}: cannot write the results: "
                               f"{exc.strerror or type(exc).__name__}"
                               f"{f' ({exc.filename})' if exc.filename else ''}") from exc
        finally:
            if merge is not None:
                merge.close()
        store.remove()
        return archive
