"""Dask executor against the local one: wall time of the same run, same archive.

The default pipeline on the first ``--n`` mock spectra of ``--mocks`` (files of 1000
spectra from ``gasnet simulate``), written with ``Pipeline.run_to_file``:

* baseline: ``executor: local``, torch using every core of this machine;
* ``executor: dask``: a LocalCluster of one single-threaded worker process per core
  (start-up, counting the rows and the merge included).

Checks that both archives are the same, column for column.

    python benchmarks/bench_dask.py --mocks /tmp/mocks100k [--n 8000] [--shard-size 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, machine, table

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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    files = sorted(args.mocks.glob("*.fits"))[:max(1, args.n // 1000)]
    with tempfile.TemporaryDirectory() as folder:
        local_s, local = run(files, {"name": "local"}, args.shard_size,
                             Path(folder) / "local.asdf")
        dask_s, on_dask = run(files, {"name": "dask", "n_workers": args.workers,
                                      "threads_per_worker": 1}, args.shard_size,
                              Path(folder) / "dask.asdf")
    n = len(local.results)
    same = all(np.array_equal(np.asarray(local.results[c]), np.asarray(on_dask.results[c]),
                              equal_nan=np.asarray(local.results[c]).dtype.kind == "f")
               for c in local.results.colnames)
    print(f"machine: {machine()}")
    print(f"{n} mock spectra from {len(files)} files; shards of {args.shard_size}; "
          f"same archive: {'yes' if same else 'NO'}")
    print(table([
        (f"dask LocalCluster, {args.workers} workers x 1 thread", f"{dask_s:.1f}",
         f"{n / dask_s:,.0f}", f"{local_s / dask_s:.2f}x"),
        (f"baseline: local, 1 process x {torch.get_num_threads()} torch threads",
         f"{local_s:.1f}", f"{n / local_s:,.0f}", "1x"),
    ], ("executor", "seconds", "spectra/s", "speed-up")))


if __name__ == "__main__":
    main()
