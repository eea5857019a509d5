"""The ``processes`` executor: a run's shards computed by worker processes on this machine.

Reading a survey file is mostly Python work that holds the interpreter's lock, so a
reading thread cannot overlap it with the stages (``read_ahead``, :doc:`scale`); processes
can. Each worker (:mod:`gasnet_plugin.host.process_worker`) reads its own files and
computes whole shards, as a Dask worker does, without Dask: the driver starts
``n_workers`` Python processes, sends them JSON lines (the config, the file names, then one
task at a time) and reads JSON lines back; the shards are ASDF files in ``OUTPUT.parts``,
merged as they arrive. Nothing is pickled.

The plan is the Dask executor's (:mod:`gasnet_plugin.host.executors`): the rows of every
file are counted first (by the workers; kept in ``row_counts.json`` for a resume), which
fixes where each shard starts, so the archive is the one a local run with one torch
thread writes, and a run may be resumed under any executor.

Ctrl-C or SIGTERM stops handing out shards; the ones being computed are finished and
saved, then :class:`~gasnet_plugin.host.executors.RunStopped` is raised (``--resume``
finishes the run). A worker that dies (killed, out of memory) is replaced and its task
given to the new one; a shard is written atomically and a retried one replaces any copy,
so no row is lost or doubled. A task that fails (a Python error) or kills
:data:`MAX_ATTEMPTS` workers stops the run with its message; the shards already written are
kept for ``--resume``.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gasnet_plugin.host.executors import (
    RunStopped,
    StopRequest,
    check_shard_end,
    count_ranges,
    row_offsets,
    shards_to_compute,
)

if TYPE_CHECKING:
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.host.shards import ShardStore


MAX_ATTEMPTS = 2
"""Workers a task may lose before the run gives up on it."""


class WorkerError(RuntimeError):
    """A worker process failed a task or died; the message says which and why."""


class _Worker:
    """One worker process and the task it is computing."""

    def __init__(self, setup: dict[str, Any]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(setup["threads"])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gasnet_plugin.host.process_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.task: dict[str, Any] | None = None
        self.send(setup)

    @property
    def replies(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def send(self, message: dict[str, Any]) -> None:
        """Write one message (a worker that died meanwhile is noticed by its replies)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self) -> None:
        """Close its input (an idle worker then ends; a busy one after its task) and wait
        a while for it."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ProcessExecutor:
    """Spread the shards of a run over worker processes on this machine.

    ``settings`` is the config's ``executor`` mapping: ``n_workers`` (``None``: one per
    CPU core) and ``threads_per_worker`` (torch threads of each worker, 1 by default).
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def run(self, pipeline: Pipeline, files: Sequence[Path], store: ShardStore,
            progress: bool | None, notify: Callable[[str], None] = print,
            on_shard: Callable[[int], None] | None = None) -> int:
        """Count the rows per file, then compute the missing shards on the workers;
        returns the run's number of rows. ``on_shard(first_row)`` is called as each shard
        is written."""
        names = [str(f) for f in files]
        threads = int(self.settings.get("threads_per_worker") or 1)
        n_workers = max(1, int(self.settings.get("n_workers") or os.cpu_count() or 1))
        setup = {"config": pipeline.config.as_dict(), "source": pipeline.config.source,
                 "files": names, "threads": threads}
        workers = [_Worker(setup) for _ in range(min(n_workers, max(len(names), 1)))]
        try:
            with StopRequest() as stop:
                counts_file = store.folder / "row_counts.json"
                if counts_file.is_file():
                    counts = json.loads(counts_file.read_text())
                else:
                    tasks = [{"count": [first, stop]}
                             for first, stop in count_ranges(len(names), len(workers))]
                    parts: dict[int, list[int]] = {}
                    with pipeline.progress_bar(len(names), "file", progress,
                                               "gasnet: counting spectra") as bar:
                        def counted(task: dict[str, Any], result: list[int]) -> None:
                            parts[task["count"][0]] = result
                            bar.update(len(result))

                        _run_tasks(workers, setup, tasks, counted, stop, store)
                    counts = [n for first in sorted(parts) for n in parts[first]]
                    counts_file.write_text(json.dumps(counts))
                total, todo = shards_to_compute(counts, store, notify)
                offsets = row_offsets(counts)
                tasks = [{"shard": {"start_row": start, "start_file": f, "start_in_file": r,
                                    "limit": n, "folder": str(store.folder)}}
                         for start, n, f, r in todo]
                with pipeline.progress_bar(sum(shard[1] for shard in todo), "spectrum",
                                           progress) as bar:
                    def written(task: dict[str, Any], result: dict[str, int]) -> None:
                        check_shard_end(offsets, result, store.folder)
                        bar.update(result["n_rows"])
                        if on_shard is not None:
                            on_shard(result["start_row"])

                    _run_tasks(workers, setup, tasks, written, stop, store)
        except BaseException:
            # a failure or a second Ctrl-C: the workers' shards in hand are not waited
            # for (a shard is written whole or not at all)
            for worker in workers:
                worker.process.kill()
            raise
        finally:
            for worker in workers:
                worker.close()
        return total


def _run_tasks(workers: list[_Worker], setup: dict[str, Any], tasks: list[dict[str, Any]],
               done: Callable[[dict[str, Any], Any], None], stop: StopRequest,
               store: ShardStore) -> None:
    """Hand ``tasks`` to the idle ``workers`` one at a time until all are done, calling
    ``done(task, result)`` for each in the order they finish. A worker that dies is
    replaced in ``workers`` (started with ``setup``) and its task handed out again.

    Raises
    ------
    RunStopped
        A stop was requested: no task is handed out after it, the ones running finish.
    WorkerError
        A task failed, or killed :data:`MAX_ATTEMPTS` workers.
    """
    pending = collections.deque({**task, "attempt": 1} for task in tasks)
    selector = selectors.DefaultSelector()
    for worker in workers:
        selector.register(worker.replies, selectors.EVENT_READ, worker)
        worker.task = None
    next_id = 0

    def hand_out(worker: _Worker) -> None:
        nonlocal next_id
        if pending and stop.signum is None:
            task = {**pending.popleft(), "id": next_id}
            next_id += 1
            worker.task = task
            worker.send(task)

    try:
        for worker in workers:
            hand_out(worker)
        while any(worker.task is not None for worker in workers):
            for key, _ in selector.select(timeout=1.0):
                worker = key.data
                line = worker.replies.readline()
                if not line:                      # the worker died
                    code = worker.process.wait()
                    task = worker.task
                    if task is not None and task["attempt"] >= MAX_ATTEMPTS:
                        raise WorkerError(
                            f"{_describe(task)} ended {MAX_ATTEMPTS} worker processes (the "
                            f"last, {worker.process.pid}, with exit status {code}); the "
                            f"shards written so far are kept in {store.folder}: the same "
                            "command with --resume finishes the run")
                    selector.unregister(worker.replies)
                    replacement = _Worker(setup)
                    workers[workers.index(worker)] = replacement
                    selector.register(replacement.replies, selectors.EVENT_READ, replacement)
                    if task is not None:
                        pending.appendleft({**task, "attempt": task["attempt"] + 1})
                    hand_out(replacement)
                    continue
                reply = json.loads(line)
                task, worker.task = worker.task, None
                if "error" in reply:
                    raise WorkerError(f"worker process {worker.process.pid} failed "
                                      f"{_describe(task)}; the shards written so far are "
                                      f"kept in {store.folder} (--resume goes on from "
                                      f"them). The worker's traceback:\n{reply['error']}")
                done(task, reply["result"])
                hand_out(worker)
    finally:
        selector.close()
    if stop.signum is not None:
        raise RunStopped(stop.signum, store.resume_point()[0], store.folder)


def _describe(task: dict[str, Any]) -> str:
    """What ``task`` computes, for messages."""
    if "count" in task:
        first, stop = task["count"]
        return f"counting the rows of files {first} to {stop - 1}"
    shard = task["shard"]
    return f"the shard of rows from {shard['start_row']} ({shard['limit']} rows)"
