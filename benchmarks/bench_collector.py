"""The cyclic garbage collector during a run: Python's default thresholds against the run's
(:data:`gasnet_plugin.host.collector.RUN_THRESHOLDS`), same process, alternating.

``Pipeline.run_to_file`` (what ``gasnet run`` does) and ``Pipeline.run`` (the in-memory
run of the Python API) with the default config, one thread, on the real BOSS ``spec``
files of ``../shared/data/spectra/sdss_boss`` each linked ``--repeat`` times under other
names (one spectrum per file: many small objects per spectrum), CPU seconds after set-up;
best of ``--rounds`` per setting.

    python benchmarks/bench_collector.py [--repeat 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from _common import REPO, SHARED, machine, table
from bench_vs_redrock import LINKS, linked

import gasnet_plugin.host.collector as collector
from gasnet_plugin.api import as_config
from gasnet_plugin.host.runner import Pipeline

DEFAULT_THRESHOLDS = (700, 10, 10)
"""CPython's own."""


def run_seconds(pipeline: Pipeline, files: list[Path]) -> tuple[int, float]:
    """Spectra and CPU seconds of one ``run_to_file``."""
    with tempfile.TemporaryDirectory() as folder:
        began = time.process_time()
        archive = pipeline.run_to_file(files, Path(folder) / "out.asdf")
        return archive.run.n_spectra, time.process_time() - began


def in_memory_seconds(pipeline: Pipeline, files: list[Path]) -> tuple[int, float]:
    """Spectra and CPU seconds of one ``Pipeline.run`` (results kept in memory)."""
    began = time.process_time()
    archive = pipeline.run(files, progress=False)
    return archive.run.n_spectra, time.process_time() - began


ENTRIES = {"gasnet run (run_to_file)": run_seconds,
           "in memory (Pipeline.run)": in_memory_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted((SHARED / "spectra" / "sdss_boss").glob("spec-*.fits"))
    config = as_config(REPO / "example_configs" / "default.yaml")
    config.read_ahead = 0
    config.progress = False
    pipeline = Pipeline(config)
    pipeline.setup()
    settings = {"run thresholds": collector.RUN_THRESHOLDS,
                "baseline: CPython's default thresholds": DEFAULT_THRESHOLDS}
    run_thresholds = collector.RUN_THRESHOLDS
    best = {(entry, name): float("inf") for entry in ENTRIES for name in settings}
    try:
        links = linked(files, args.repeat)
        for entry in ENTRIES.values():
            entry(pipeline, links[:20])                       # first-call costs
        for _ in range(args.rounds):
            for entry, measure in ENTRIES.items():
                for name, thresholds in settings.items():
                    collector.RUN_THRESHOLDS = thresholds
                    gc.collect()
                    n, seconds = measure(pipeline, links)
                    best[entry, name] = min(best[entry, name], seconds)
    finally:
        collector.RUN_THRESHOLDS = run_thresholds
        shutil.rmtree(LINKS, ignore_errors=True)
    print(f"machine: {machine()}; one thread; best of {args.rounds}")
    print(f"data: {n} spectra: {len(files)} real BOSS files each linked {args.repeat} times")
    rows = []
    for (entry, name), seconds in best.items():
        baseline = best[entry, "baseline: CPython's default thresholds"]
        rows.append((entry, name, f"{seconds:.2f}", f"{seconds / n * 1e3:.2f}",
                     f"{baseline / seconds:.2f}x"))
    print(table(rows, ("run", "collector", "CPU seconds", "ms/spectrum", "vs baseline")))


if __name__ == "__main__":
    main()
