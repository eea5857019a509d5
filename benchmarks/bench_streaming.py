"""Peak memory against the number of spectra: ``gasnet run`` streams to shards.

Each run is a fresh process running the default pipeline
(``example_configs/default.yaml``) through ``Pipeline.run_to_file`` (what ``gasnet run``
does) on the first N mock spectra of ``--mocks`` (files of 1000 spectra, from
``gasnet simulate -n 100000 --per-file 1000``); it reports its peak resident memory
(``ru_maxrss``) and its wall time. The baseline, in a process of its own, is the runner as
it was before streaming: it keeps every processed batch (spectra on the grid, model,
residual) until the end, as one archive in memory would need.

    gasnet simulate tests/data -n 100000 --per-file 1000 -o /tmp/mocks100k
    python benchmarks/bench_streaming.py --mocks /tmp/mocks100k [--sizes 10000 30000 100000]
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


def child(files: list[str], hold: bool, threads: int) -> None:
    """Run in this process and print a JSON line: spectra, seconds, peak RSS in MB."""
    import torch

    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.runner import Pipeline

    torch.set_num_threads(threads)
    config = as_config(CONFIG)
    config.progress = False
    pipeline = Pipeline(config)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if hold:
            pipeline.setup()
            kept = []
            for batch in pipeline.batches(pipeline.read_blocks([Path(f) for f in files])):
                kept.extend(pipeline.process_batch(batch))
            n = sum(len(b) for b in kept)
        else:
            archive = pipeline.run_to_file(files, Path(folder) / "out.asdf")
            n = len(archive.results)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "seconds": seconds, "peak_mb": peak}))


def measure(files: list[Path], hold: bool, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--threads", str(threads),
               *(["--hold"] if hold else []), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mocks", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--baseline-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.files, args.hold, args.threads)
        return

    files = sorted(args.mocks.glob("*.fits"))
    per_file = 1000

    def first(n: int) -> list[Path]:
        return files[:max(1, n // per_file)]

    rows = []
    base = measure(first(args.baseline_size), hold=True, threads=args.threads)
    streamed = {}
    for n in sorted(set(args.sizes) | {args.baseline_size}):
        streamed[n] = measure(first(n), hold=False, threads=args.threads)
    for n, result in streamed.items():
        ratio = base["peak_mb"] / result["peak_mb"] if n == args.baseline_size else None
        rows.append(("streaming (gasnet run)", result["n"], f"{result['peak_mb']:,.0f}",
                     f"{result['seconds']:.0f}", f"{result['n'] / result['seconds']:,.0f}",
                     f"{ratio:.2f}x less" if ratio else ""))
    rows.append(("baseline: batches kept", base["n"], f"{base['peak_mb']:,.0f}",
                 f"{base['seconds']:.0f}", f"{base['n'] / base['seconds']:,.0f}", "1x"))
    print(f"machine: {machine()}; torch threads per run {args.threads}")
    print(table(rows, ("runner", "spectra", "peak RSS MB", "seconds", "spectra/s",
                       "memory vs baseline")))
    sizes = sorted(streamed)
    if len(sizes) > 1:
        slope = ((streamed[sizes[-1]]["peak_mb"] - streamed[sizes[0]]["peak_mb"])
                 / (sizes[-1] - sizes[0]) * 1e3)
        print(f"streaming: +{slope:.2f} MB per 1000 spectra between {sizes[0]:,} and "
              f"{sizes[-1]:,} (the results table merged at the end); baseline "
              f"{base['peak_mb'] / base['n'] * 1e3:.0f} MB per 1000 spectra")


if __name__ == "__main__":
    main()
