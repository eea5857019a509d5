"""Peak memory against the number of spectra: ``gasnet run`` streams to shards and
writes the archive column by column.

Each run is a fresh process running the default pipeline
(``example_configs/default.yaml``) through ``Pipeline.run_to_file`` (what ``gasnet run``
does) on the first N mock spectra of ``--mocks`` (files of ``--per-file`` spectra, from
``gasnet simulate -n 100000 --per-file 1000``); it reports its peak resident memory
(``ru_maxrss``) and its wall time. The baseline, in processes of their own at the same
sizes, is the runner as it was before this change: shards streamed, but merged into one
table in memory and written from there.

    gasnet simulate tests/data -n 100000 --per-file 1000 -o /tmp/mocks100k
    python benchmarks/bench_streaming.py --mocks /tmp/mocks100k [--sizes 10000 30000 100000]
        [--repeats 3]

The peak of one run scatters by tens of MB (it is the worst coincidence of a file read, a
shard's rows and the heap's fragmentation, and the two torch threads' timing varies), so
``--repeats R`` runs every size R times, each in a fresh process, and reports the median
run (by peak) and every run's peak; the slope is taken between the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, table

CONFIG = REPO / "example_configs" / "default.yaml"


class MergeInMemory:
    """The merge before column-by-column writing: one table in memory at the end, written
    by asdf (stands in for :class:`~gasnet_plugin.host.shards.StreamedMerge`)."""

    def __init__(self, store) -> None:
        self.store = store

    def shard_done(self, start_row=None) -> None:
        pass

    def write(self, output, run, total) -> None:
        from gasnet_plugin.io.archive import RunArchive, count_failed

        results, _ = self.store.merge([], expected_rows=total)
        RunArchive(results=results, run=run(len(results), count_failed(results))).write(
            output, overwrite=True)

    def close(self) -> None:
        pass


def child(files: list[str], in_memory: bool, threads: int) -> None:
    """Run in this process and print a JSON line: spectra, seconds, peak RSS in MB, and
    the seconds spent merging (spooling shards while the run goes, and writing)."""
    import torch

    import gasnet_plugin.host.shards as shards
    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.runner import Pipeline

    torch.set_num_threads(threads)
    config = as_config(CONFIG)
    config.progress = False
    pipeline = Pipeline(config)
    merge_class = MergeInMemory if in_memory else shards.StreamedMerge
    merge_seconds = [0.0]

    class TimedMerge(merge_class):
        def shard_done(self, start_row=None) -> None:
            start = time.perf_counter()
            super().shard_done(start_row)
            merge_seconds[0] += time.perf_counter() - start

        def write(self, *args, **kwargs) -> None:
            start = time.perf_counter()
            super().write(*args, **kwargs)
            merge_seconds[0] += time.perf_counter() - start

    shards.StreamedMerge = TimedMerge
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        archive = pipeline.run_to_file(files, Path(folder) / "out.asdf")
        n = archive.run.n_spectra     # not len(archive.results): that reads the table
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - began
    print(json.dumps({"n": n, "seconds": seconds, "peak_mb": peak,
                      "merge_seconds": merge_seconds[0]}))


def measure(files: list[Path], in_memory: bool, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--threads", str(threads),
               *(["--in-memory"] if in_memory else []), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mocks", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--per-file", type=int, default=1000)
    parser.add_argument("--no-baseline", action="store_true",
                        help="only the streamed runner (e.g. for a 1,000,000 point)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes per size and runner; the median is reported")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.files, args.in_memory, args.threads)
        return

    files = sorted(args.mocks.glob("*.fits"))

    def first(n: int) -> list[Path]:
        return files[:max(1, n // args.per_file)]

    def median_run(n: int, in_memory: bool) -> dict[str, float]:
        runs = sorted((measure(first(n), in_memory=in_memory, threads=args.threads)
                       for _ in range(args.repeats)), key=lambda run: run["peak_mb"])
        median = dict(runs[(len(runs) - 1) // 2])
        median["peaks"] = [run["peak_mb"] for run in runs]
        return median

    results: dict[str, dict[int, dict[str, float]]] = {"streamed": {}, "in memory": {}}
    for n in sorted(args.sizes):
        results["streamed"][n] = median_run(n, in_memory=False)
        if not args.no_baseline:
            results["in memory"][n] = median_run(n, in_memory=True)
    rows = []
    for n in sorted(args.sizes):
        new = results["streamed"][n]
        old = results["in memory"].get(n)
        rows.append(("archive column by column (gasnet run)", new["n"],
                     f"{new['peak_mb']:,.0f}", f"{new['seconds']:.0f}",
                     f"{new['n'] / new['seconds']:,.0f}",
                     f"{new['merge_seconds'] / new['n'] * 1e6:.0f}",
                     f"{old['peak_mb'] / new['peak_mb']:.2f}x less" if old else ""))
        if old:
            rows.append(("baseline: table merged in memory", old["n"],
                         f"{old['peak_mb']:,.0f}", f"{old['seconds']:.0f}",
                         f"{old['n'] / old['seconds']:,.0f}",
                         f"{old['merge_seconds'] / old['n'] * 1e6:.0f}", "1x"))
    print(f"machine: {machine()}; torch threads per run {args.threads}; "
          f"{args.repeats} run(s) per line, the median shown")
    print(table(rows, ("runner", "spectra", "peak RSS MB", "seconds", "spectra/s",
                       "merge µs/spectrum", "memory vs baseline")))
    if args.repeats > 1:
        for name, measured in results.items():
            for n, run in measured.items():
                print(f"{name}, {n:,} spectra: peaks of the {args.repeats} runs "
                      + ", ".join(f"{peak:,.0f}" for peak in run["peaks"]) + " MB")
    sizes = sorted(args.sizes)
    if len(sizes) > 1:
        for name, measured in results.items():
            if not measured:
                continue
            slope = ((measured[sizes[-1]]["peak_mb"] - measured[sizes[0]]["peak_mb"])
                     / (sizes[-1] - sizes[0]) * 1e3)
            at_million = measured[sizes[-1]]["peak_mb"] + slope * (1e6 - sizes[-1]) / 1e3
            print(f"{name}: {slope:+.3f} MB (= kB per spectrum) per 1000 spectra between "
                  f"{sizes[0]:,} and {sizes[-1]:,}; extrapolated peak at 1,000,000: "
                  f"{at_million:,.0f} MB")


if __name__ == "__main__":
    main()
