"""Executors: where the shards of a run are computed (config key ``executor.name``).

A named registry, like the engines': ``local`` streams in this process, ``dask`` hands
shards to the workers of a Dask cluster. Both write the same shards (shard ``k`` holds
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
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gasnet_plugin.host.config import ConfigError, parse_config

if TYPE_CHECKING:
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.host.shards import ShardStore


class LocalExecutor:
    """Stream the run in this process, writing a shard every ``spectra_per_shard``
    spectra; a resumed run starts after the last shard on disk."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def run(self, pipeline: Pipeline, files: Sequence[Path], store: ShardStore,
            progress: bool | None) -> None:
        """Write the shards still missing."""
        index, start = store.resume_point()
        per_shard = store.spectra_per_shard
        names = pipeline.archived_arrays
        pending = []
        filled = 0
        with pipeline.progress_bar(len(files) - start.file, "file", progress) as bar:
            for output in pipeline.stream(files, start, on_file_read=lambda: bar.update(1)):
                pending.append(output)
                filled += len(output)
                if filled > per_shard:   # cannot happen: shards are whole batches
                    raise RuntimeError(f"shard {index} overfilled ({filled} > {per_shard})")
                if filled == per_shard:
                    store.write(index, pending, names)
                    index, pending, filled = index + 1, [], 0
            if pending:
                store.write(index, pending, names)


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
    """Dask task: the number of results rows each file gives (1 for an unreadable file)."""
    pipeline = _worker_pipeline(config, source, threads)
    return [sum(len(block) for block in pipeline.read_file(Path(f))) for f in files]


def process_shard(config: dict[str, Any], source: str, files: list[str], index: int,
                  start_file: int, start_row: int, folder: str, spectra_per_shard: int,
                  threads: int) -> dict[str, int]:
    """Dask task: compute shard ``index`` (``spectra_per_shard`` spectra from cursor
    ``(start_file, start_row)``) and write it to ``folder``."""
    from gasnet_plugin.host.runner import Cursor
    from gasnet_plugin.host.shards import ShardStore

    pipeline = _worker_pipeline(config, source, threads)
    store = ShardStore(folder, spectra_per_shard)
    outputs = list(pipeline.stream([Path(f) for f in files], Cursor(start_file, start_row),
                                   limit=spectra_per_shard))
    store.write(index, outputs, pipeline.archived_arrays)
    return {"index": index, "n_rows": sum(len(o) for o in outputs)}


def shard_starts(counts: Sequence[int], spectra_per_shard: int) -> list[tuple[int, int]]:
    """The cursor ``(file, row)`` where each shard starts, given the rows of each file."""
    bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    starts = np.arange(0, int(bounds[-1]), spectra_per_shard, dtype=np.int64)
    files = np.searchsorted(bounds, starts, side="right") - 1
    return [(int(f), int(s - bounds[f])) for f, s in zip(files, starts, strict=True)]


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
                             processes=True, dashboard_address=None,
                             silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield client

    def run(self, pipeline: Pipeline, files: Sequence[Path], store: ShardStore,
            progress: bool | None) -> None:
        """Count the rows per file, then compute the missing shards on the workers."""
        from distributed import as_completed

        config = pipeline.config.as_dict()
        source = pipeline.config.source
        threads = int(self.settings.get("threads_per_worker", 1))
        names = [str(f) for f in files]
        per_shard = store.spectra_per_shard
        with self.client() as client:
            counts_file = store.folder / "row_counts.json"
            if counts_file.is_file():
                counts = json.loads(counts_file.read_text())
            else:
                n_chunks = min(len(names), 4 * max(1, len(client.scheduler_info()["workers"])))
                chunks = [list(c) for c in np.array_split(np.array(names, dtype=object),
                                                          n_chunks) if len(c)]
                futures = client.map(count_spectra, [config] * len(chunks),
                                     [source] * len(chunks), chunks,
                                     [threads] * len(chunks), pure=False)
                counts = [n for part in client.gather(futures) for n in part]
                counts_file.write_text(json.dumps(counts))
            done = set(store.indices())
            todo = [(k, start) for k, start in enumerate(shard_starts(counts, per_shard))
                    if k not in done]
            futures = [client.submit(process_shard, config, source, names, k, f, r,
                                     str(store.folder), per_shard, threads, pure=False)
                       for k, (f, r) in todo]
            with pipeline.progress_bar(len(futures), "shard", progress) as bar:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)

EXECUTORS: dict[str, type[LocalExecutor] | type[DaskExecutor]] = {
    "local": LocalExecutor,
    "dask": DaskExecutor,
}
"""Executor name (config ``executor.name``) → class."""


def get_executor(name: str) -> type[LocalExecutor] | type[DaskExecutor]:
    """The executor class registered as ``name``."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"executor {name!r} is not registered "
                          f"(registered: {', '.join(EXECUTORS)})") from None
