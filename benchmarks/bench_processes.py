"""The ``processes`` executor against the local one on real survey files: wall time.

``Pipeline.run_to_file`` (what ``gasnet run`` does) with the default config on the real
BOSS ``spec`` files of ``../shared/data/spectra/sdss_boss``, each linked ``--repeat``
times under other names (one spectrum per file: reading is about a third of the work),
shards of ``--shard-size``:

* baseline: ``executor: local`` with one torch thread (reading and computing in turn);
* ``executor: local`` with every core as torch threads (what ``gasnet run`` does by
  default);
* ``executor: processes`` with ``--workers`` single-threaded worker processes (their
  start-up and the pass counting every file's rows included).

Wall seconds after the driver's set-up, best of ``--rounds``; checks that the archives of
the one-thread runs are the same, column for column (float32 reductions may differ in the
last digits between thread counts, so the all-core local run is not compared).

    python benchmarks/bench_processes.py [--repeat 25] [--workers 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, SHARED, machine, same_table, table
from bench_vs_redrock import LINKS, linked

from gasnet_plugin.api import as_config
from gasnet_plugin.host.runner import Pipeline


def run(files: list[Path], executor: dict, threads: int, shard_size: int,
        out: Path) -> tuple[float, object]:
    """Wall seconds of one run after set-up, and its archive."""
    config = as_config(REPO / "example_configs" / "default.yaml")
    config.executor = {**config.executor, **executor}
    config.shard_size = shard_size
    config.progress = False
    torch.set_num_threads(threads)
    pipeline = Pipeline(config)
    pipeline.setup()
    began = time.perf_counter()
    archive = pipeline.run_to_file(files, out, overwrite=True)
    return time.perf_counter() - began, archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    files = sorted((SHARED / "spectra" / "sdss_boss").glob("spec-*.fits"))
    settings = {
        "baseline: local, 1 process x 1 torch thread": ({"name": "local"}, 1),
        f"local, 1 process x {cores} torch threads": ({"name": "local"}, cores),
        f"processes, {args.workers} workers x 1 thread": (
            {"name": "processes", "n_workers": args.workers}, 1),
    }
    best = dict.fromkeys(settings, float("inf"))
    archives = {}
    try:
        links = linked(files, args.repeat)
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(args.rounds):
                for name, (executor, threads) in settings.items():
                    seconds, archive = run(links, executor, threads, args.shard_size,
                                           Path(folder) / "out.asdf")
                    best[name] = min(best[name], seconds)
                    archives[name] = archive.results
    finally:
        shutil.rmtree(LINKS, ignore_errors=True)
    baseline_name = next(iter(settings))
    baseline = best[baseline_name]
    n = len(archives[baseline_name])
    rows = []
    for name, seconds in best.items():
        threads = settings[name][1]
        same = "yes" if same_table(archives[name], archives[baseline_name]) else "NO"
        rows.append((name, f"{seconds:.1f}", f"{n / seconds:.0f}", f"{baseline / seconds:.2f}x",
                     same if threads == 1 else "(not compared)"))
    print(f"machine: {machine()}; best of {args.rounds}")
    print(f"data: {n} spectra: {len(files)} real BOSS files each linked {args.repeat} times; "
          f"shards of {args.shard_size}")
    print(table(rows, ("executor", "wall s", "spectra/s", "speed-up", "same archive")))


if __name__ == "__main__":
    main()
