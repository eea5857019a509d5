"""Executors: where the shards of a run are computed (config key ``executor.name``).

A named registry, like the engines': ``local`` streams in this process, ``processes``
hands shards to worker processes on this machine
(:mod:`gasnet_plugin.host.process_executor`), ``dask`` to the workers of a Dask cluster.
All write the same shards (shard ``k`` holds
run rows ``[k S, (k+1) S)`` and starts on a batch boundary, so its batches are the ones a
local run forms), so the archive does not depend on the executor, and a run stopped under
one can be resumed under the other.

What crosses the wire to a Dask worker is plain data only: the configuration mapping,
file paths, integers. Workers read the spectra themselves and write their shard as an
ASDF file into ``OUTPUT.parts/`` (so the folder must be on a file system every worker
sees); they return a small mapping of integers. No spectrum, model or result is pickled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gasnet_plugin.host.config import ConfigError, parse_config

if TYPE_CHECKING:
    from gasnet_plugin.host.batch_outputs import BatchOutput
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.host.shards import ShardStore


class RunStopped(Exception):
    """The run was stopped by a signal after saving its work.

    Attributes
    ----------
    signum
        The signal (SIGTERM, SIGINT).
    rows_saved
        Run rows in unbroken shards from the start (what ``--resume`` reuses).
    folder
        Where the shards are.
    """

    def __init__(self, signum: int, rows_saved: int, folder: Path) -> None:
        self.signum, self.rows_saved, self.folder = signum, rows_saved, folder
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}: {rows_saved} spectra saved in {folder}; "
                         "the same command with --resume finishes the run")


class StopRequest:
    """While active (a context manager), SIGTERM and SIGINT (Ctrl-C) ask the run to stop
    after the batch in hand instead of killing it; a second signal stops at once. Signal
    handlers can only be set from the main thread: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class LocalExecutor:
    """Stream the run in this process; a resumed run starts after the unbroken shards on
    disk. A shard is closed every ``spectra_per_shard`` spectra, every ``shard_seconds``,
    or when the run is asked to stop (SIGTERM, Ctrl-C: the batch in hand is finished and
    saved, then :class:`RunStopped` is raised)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def run(self, pipeline: Pipeline, files: Sequence[Path], store: ShardStore,
            progress: bool | None, notify: Callable[[str], None] = print,
            on_shard: Callable[[int], None] | None = None) -> int:
        """Write the shards still missing; returns the run's number of rows.
        ``on_shard(first_row)`` is called after each shard is written."""
        on_shard = on_shard or (lambda row: None)
        row, cursor = store.resume_point()
        resumed = row > 0
        if resumed:
            notify(f"resuming: {row} spectra reused from {len(store.indices())} shard(s) "
                   f"in {store.folder}; {len(files) - cursor.file} of {len(files)} files "
                   "left to read")
        per_shard = store.spectra_per_shard
        seconds = pipeline.config.shard_seconds
        names = pipeline.archived_arrays
        pending: list[BatchOutput] = []
        filled = done = files_read = 0
        opened = time.monotonic()
        remaining_files = len(files) - cursor.file
        with StopRequest() as stop, \
                pipeline.progress_bar(None, "spectrum", progress) as bar:
            def file_read() -> None:
                nonlocal files_read
                files_read += 1

            for output in pipeline.stream(files, cursor, on_file_read=file_read):
                pending.append(output)
                filled += len(output)
                done += len(output)
                if files_read:   # the total, estimated from the files read so far
                    bar.total = max(done, round(done * remaining_files / files_read))
                bar.update(len(output))
                if filled > per_shard:   # cannot happen: shards are whole batches
                    raise RuntimeError(f"shard at row {row} overfilled ({filled} > "
                                       f"{per_shard})")
                if filled == per_shard or stop.signum is not None \
                        or time.monotonic() - opened >= seconds:
                    store.write(row, pending, names, consume=True)
                    if stop.signum is None:
                        on_shard(row)
                    row, pending, filled, opened = row + filled, [], 0, time.monotonic()
                if stop.signum is not None:
                    raise RunStopped(stop.signum, row, store.folder)
            if pending:
                store.write(row, pending, names, consume=True)
                on_shard(row)
                row += filled
            bar.total = done
            bar.refresh()
        if resumed:
            notify(f"computed the {done} spectra left")
        return row


# -- dask ------------------------------------------------------------------------------------

_WORKER_PIPELINES: dict[str, Pipeline] = {}


def _worker_pipeline(config: dict[str, Any], source: str, threads: int) -> Pipeline:
    """The pipeline of ``config`` in this worker process, built (models loaded) once."""
    key = json.dumps(config, sort_keys=True) + source
    if key not in _WORKER_PIPELINES:
        import torch

        from gasnet_plugin.host.runner import Pipeline

        torch.set_num_threads(threads)
        _WORKER_PIPELINES[key] = Pipeline(parse_config(config, source))
    return _WORKER_PIPELINES[key]


def count_spectra(config: dict[str, Any], source: str, files: list[str], threads: int
                  ) -> list[int]:
    """Task: the number of results rows each file gives (1 for an unreadable file; from
    the headers where they tell, :meth:`~gasnet_plugin.host.runner.Pipeline.count_rows`).
    """
    pipeline = _worker_pipeline(config, source, threads)
    return [pipeline.count_rows(Path(f)) for f in files]


def process_shard(config: dict[str, Any], source: str, files: list[str], start_row: int,
                  start_file: int, start_in_file: int, folder: str, limit: int,
                  threads: int) -> dict[str, int]:
    """Dask task: compute the shard of ``limit`` run rows from ``start_row`` (at cursor
    ``(start_file, start_in_file)``) and write it to ``folder`` (replacing a shard a
    failed attempt of this task may have written)."""
    from gasnet_plugin.host.batch_outputs import Cursor
    from gasnet_plugin.host.collector import run_collector
    from gasnet_plugin.host.shards import ShardStore

    pipeline = _worker_pipeline(config, source, threads)
    store = ShardStore(folder, limit)
    with run_collector():
        outputs = list(pipeline.stream([Path(f) for f in files],
                                       Cursor(start_file, start_in_file), limit=limit))
        n_rows, end = sum(len(o) for o in outputs), outputs[-1].end
        store.write(start_row, outputs, pipeline.archived_arrays, consume=True)
    return {"start_row": start_row, "n_rows": n_rows, "end_file": end.file,
            "end_row": end.row}


def shards_to_compute(counts: Sequence[int], store: ShardStore,
                      notify: Callable[[str], None]) -> tuple[int, list[tuple[int, ...]]]:
    """The run's number of rows, and the shards still to compute given the rows of each
    file and the shards in ``store``: ``(first row, rows, file, row within it)`` each.
    Says through ``notify`` how many rows a resumed run reuses."""
    total = int(sum(counts))
    covered = store.covered()
    if covered:
        reused = sum(n for _, n in covered)
        notify(f"resuming: {reused} spectra reused from {len(covered)} shard(s) in "
               f"{store.folder}, {total - reused} left")
    todo = missing_shards(total, covered, store.spectra_per_shard)
    cursors = cursors_of_rows(counts, [start for start, _ in todo])
    return total, [(start, n, f, r) for (start, n), (f, r) in zip(todo, cursors, strict=True)]


class RowCountError(RuntimeError):
    """A shard ended elsewhere in the files than their row counts say (a file changed
    since it was counted); the message names the shard and what to do."""


def check_shard_end(offsets: np.ndarray, done: dict[str, int], folder: Path) -> None:
    """Raise if a shard task (its result ``done``) ended elsewhere in the files than their
    row counts say its last row is (``offsets``: :func:`row_offsets` of the counts): a
    file gave other rows than counted (it changed since, or its count was wrong), and the
    shards would not tile the run."""
    end = int(offsets[done["end_file"]]) + done["end_row"] \
        if done["end_file"] < len(offsets) else -1
    if end != done["start_row"] + done["n_rows"]:
        raise RowCountError(
            f"the shard of rows from {done['start_row']} ended at file {done['end_file']}, "
            f"row {done['end_row']}, not where the files' row counts put row "
            f"{done['start_row'] + done['n_rows']}: a file gives other rows than when they "
            f"were counted (changed during the run?); remove {folder / 'row_counts.json'} "
            "and resume to count again")


def missing_shards(total: int, covered: Sequence[tuple[int, int]], spectra_per_shard: int,
                   ) -> list[tuple[int, int]]:
    """``(first row, rows)`` of the shards still to compute: the rows of ``[0, total)``
    not in the ``covered`` ``(first row, rows)`` shards, cut into pieces of at most
    ``spectra_per_shard`` from the start of each gap (gaps start on batch boundaries, so
    the pieces do too)."""
    todo, row = [], 0
    for start, n in [*sorted(covered), (total, 0)]:
        for piece in range(row, min(start, total), spectra_per_shard):
            todo.append((piece, min(spectra_per_shard, start - piece)))
        row = max(row, start + n)
    return todo


def row_offsets(counts: Sequence[int]) -> np.ndarray:
    """``(F + 1,)`` int64: the first run row of each of the ``F`` files, given the rows of
    each, and the run's number of rows last."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def cursors_of_rows(counts: Sequence[int], rows: Sequence[int]) -> list[tuple[int, int]]:
    """The cursor ``(file, row within it)`` of each run row, given the rows of each file."""
    bounds = row_offsets(counts)
    rows = np.asarray(rows, dtype=np.int64)
    files = np.searchsorted(bounds, rows, side="right") - 1
    return [(int(f), int(r - bounds[f])) for f, r in zip(files, rows, strict=True)]


def count_ranges(n_files: int, n_workers: int) -> list[tuple[int, int]]:
    """``[first, stop)`` file ranges the rows are counted in: about four per worker, so
    that a slow range does not keep the others waiting; none empty."""
    n_chunks = min(n_files, 4 * max(1, n_workers))
    bounds = np.linspace(0, n_files, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def shard_starts(counts: Sequence[int], spectra_per_shard: int) -> list[tuple[int, int]]:
    """The cursor ``(file, row)`` where each shard of a run from scratch starts, given the
    rows of each file."""
    return cursors_of_rows(counts, range(0, int(sum(counts)), spectra_per_shard))


class DaskExecutor:
    """Spread the shards over the workers of a Dask cluster.

    ``settings`` is the config's ``executor`` mapping: ``scheduler`` (an address, or
    ``None`` for a LocalCluster of ``n_workers`` processes with ``threads_per_worker``
    threads each). The rows each file gives are counted first (on the workers), which
    fixes where every shard starts; shards already in the folder (a resumed run) are not
    computed again.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        if importlib.util.find_spec("distributed") is None:
            raise ConfigError("executor dask needs the 'dask' extra: "
                              "pip install 'gasnet-plugin[dask]'")
        self.settings = settings

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A connected ``distributed.Client``; a LocalCluster started for it is closed
        with it."""
        from distributed import Client, LocalCluster

        if self.settings.get("scheduler"):
            with Client(self.settings["scheduler"]) as client:
                yield client
            return
        import dask

        # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers; setting it at
        # all turns off glibc's adaptive mmap threshold, so every large temporary array is
        # mmapped and unmapped again: measured here, a shard took 3.5 s instead of 1.6 s.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                              None}), \
                LocalCluster(n_workers=self.settings.get("n_workers") or os.cpu_count() or 1,
                             threads_per_worker=self.settings.get("threads_per_worker", 1),
                             memory_limit=self.settings.get("memory_limit", "auto"),
                             processes=True, dashboard_address=None,
                             silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield client

    def run(self, pipeline: Pipeline, files: Sequence[Path], store: ShardStore,
            progress: bool | None, notify: Callable[[str], None] = print,
            on_shard: Callable[[int], None] | None = None) -> int:
        """Count the rows per file, then compute the missing shards on the workers;
        returns the run's number of rows. ``on_shard(first_row)`` is called in the driver
        as each shard's task completes."""
        from distributed import as_completed

        config = pipeline.config.as_dict()
        source = pipeline.config.source
        threads = int(self.settings.get("threads_per_worker", 1))
        names = [str(f) for f in files]
        with self.client() as client:
            counts_file = store.folder / "row_counts.json"
            if counts_file.is_file():
                counts = json.loads(counts_file.read_text())
            else:
                chunks = [names[a:b] for a, b in count_ranges(
                    len(names), len(client.scheduler_info()["workers"]))]
                futures = client.map(count_spectra, [config] * len(chunks),
                                     [source] * len(chunks), chunks,
                                     [threads] * len(chunks), pure=False)
                parts: dict[Any, list[int]] = {}
                with pipeline.progress_bar(len(names), "file", progress,
                                           "gasnet: counting spectra") as bar:
                    for future in as_completed(futures):    # each result fetched once
                        parts[future.key] = future.result()
                        bar.update(len(parts[future.key]))
                counts = [n for future in futures for n in parts[future.key]]
                counts_file.write_text(json.dumps(counts))
            total, todo = shards_to_compute(counts, store, notify)
            offsets = row_offsets(counts)
            futures = [client.submit(process_shard, config, source, names, start, f, r,
                                     str(store.folder), n, threads, pure=False)
                       for start, n, f, r in todo]
            with pipeline.progress_bar(sum(shard[1] for shard in todo), "spectrum",
                                       progress) as bar:
                for future in as_completed(futures):
                    done = future.result()
                    check_shard_end(offsets, done, store.folder)
                    bar.update(done["n_rows"])
                    if on_shard is not None:
                        on_shard(done["start_row"])
        return total


from gasnet_plugin.host.process_executor import ProcessExecutor  # noqa: E402  (it uses the above)

Executor = type[LocalExecutor] | type[DaskExecutor] | type[ProcessExecutor]

EXECUTORS: dict[str, Executor] = {
    "local": LocalExecutor,
    "processes": ProcessExecutor,
    "dask": DaskExecutor,
}
"""Executor name (config ``executor.name``) → class."""


def get_executor(name: str) -> Executor:
    """The executor class registered as ``name``."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"executor {name!r} is not registered "
                          f"(registered: {', '.join(EXECUTORS)})") from None
