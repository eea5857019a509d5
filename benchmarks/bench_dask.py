"""Dask executor against the local one: throughput against workers, same archive.

The default pipeline on the first ``--n`` mock spectra of ``--mocks`` (files of 1000
spectra from ``gasnet simulate``), written with ``Pipeline.run_to_file``:

* baseline: ``executor: local`` with one torch thread (one core);
* ``executor: dask``: a LocalCluster of ``--workers`` single-threaded worker processes,
  for each count given (start-up, counting the rows and the merge included).

Checks that each archive is the baseline's, column for column (same thread count per
process: float32 reductions may differ in the last digits between thread counts).

    python benchmarks/bench_dask.py --mocks /tmp/mocks100k [--n 8000] [--shard-size 512]
                                    [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, machine, same_table, table

from gasnet_plugin.api import as_config
from gasnet_plugin.host.runner import Pipeline

CONFIG = REPO / "example_configs" / "default.yaml"


def run(files: list[Path], executor: dict, shard_size: int, out: Path) -> tuple[float, object]:
    config = as_config(CONFIG)
    config.executor = {**config.executor, **executor}
    config.shard_size = shard_size
    config.progress = False
    began = time.perf_counter()
    archive = Pipeline(config).run_to_file(files, out)
    return time.perf_counter() - began, archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mocks", type=Path, required=True)
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(args.mocks.glob("*.fits"))[:max(1, args.n // 1000)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        local_s, local = run(files, {"name": "local"}, args.shard_size,
                             Path(folder) / "local.asdf")
        n = len(local.results)
        for workers in args.workers:
            dask_s, on_dask = run(files, {"name": "dask", "n_workers": workers,
                                          "threads_per_worker": 1}, args.shard_size,
                                  Path(folder) / f"dask{workers}.asdf")
            rows.append((f"dask LocalCluster, {workers} worker(s) x 1 thread",
                         f"{dask_s:.1f}", f"{n / dask_s:,.0f}", f"{local_s / dask_s:.2f}x",
                         "yes" if same_table(local.results, on_dask.results) else "NO"))
    rows.append(("baseline: local, 1 process x 1 torch thread", f"{local_s:.1f}",
                 f"{n / local_s:,.0f}", "1x", ""))
    print(f"machine: {machine()}")
    print(f"{n} mock spectra from {len(files)} files; shards of {args.shard_size}")
    print(table(rows, ("executor", "seconds", "spectra/s", "speed-up", "same archive")))


if __name__ == "__main__":
    main()
