"""The subtype stage on one thread and on several (its ``threads`` parameter), same process.

Runs the default pipeline (``example_configs/default.yaml``, ``batch_size`` from
``--batch-sizes``) through ``Pipeline.run_to_file`` on the mock files of ``--mocks``
(``gasnet simulate tests/data -n 4000 --per-file 1000``), with the subtype stage's
``threads`` at 1 (the baseline) and at ``--threads`` (default: every core), alternated
``--repeats`` times, each pipeline set up once and warmed on the first file. Reports the
subtype stage's seconds per spectrum (its ``process`` on every batch; median and every
run), the ratio against one thread, and whether the two archives are the same, column for
column (they must be: each piece is fitted as it would be alone).

Torch gets as many threads as ``--threads`` in both runs, so the other stages are the
same; only the subtype stage's threads differ.

    python benchmarks/bench_subtype_threads.py --mocks /tmp/mocks4k [--threads 2]
        [--batch-sizes 256 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch
from _common import REPO, machine, same_table, table

from gasnet_plugin.api import as_config
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import read_archive


def pipeline(batch_size: int, threads: int) -> Pipeline:
    """The default pipeline with this batch size and subtype ``threads``, set up."""
    config = as_config(REPO / "example_configs" / "default.yaml")
    config.batch_size = batch_size
    config.progress = False
    for stage in config.stages:
        if stage.name == "subtype":
            stage.params["threads"] = threads
    built = Pipeline(config)
    built.setup()
    return built


def subtype_seconds(run: Pipeline, files: list[Path], out: Path) -> float:
    """The subtype stage's seconds over one run of ``files`` (written to ``out``)."""
    before = run.stage_seconds.get("subtype", 0.0)
    run.run_to_file(files, out, overwrite=True)
    return run.stage_seconds["subtype"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mocks", type=Path, required=True, help="folder of mock FITS files")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = expand_inputs([args.mocks])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for batch_size in args.batch_sizes:
            runs = {1: pipeline(batch_size, 1), args.threads: pipeline(batch_size, args.threads)}
            for threads, run in runs.items():
                run.run_to_file(files[:1], scratch / f"warm-{threads}.asdf", overwrite=True)
            seconds: dict[int, list[float]] = {threads: [] for threads in runs}
            for _ in range(args.repeats):
                for threads, run in runs.items():
                    seconds[threads].append(subtype_seconds(
                        run, files, scratch / f"threads-{threads}.asdf"))
            one = read_archive(scratch / "threads-1.asdf").results
            n_spectra = len(one)
            same = same_table(one,
                              read_archive(scratch / f"threads-{args.threads}.asdf").results)
            baseline = statistics.median(seconds[1])
            for threads, values in seconds.items():
                rows.append((batch_size, threads,
                             f"{1e3 * statistics.median(values) / n_spectra:.3f}",
                             ", ".join(f"{1e3 * v / n_spectra:.3f}" for v in values),
                             f"{baseline / statistics.median(values):.2f}x",
                             "baseline" if threads == 1 else ("yes" if same else "NO")))
    print(f"machine: {machine()}; {len(files)} mock files from {args.mocks}; "
          f"{args.repeats} runs each, alternated")
    print(table(rows, ("batch size", "subtype threads", "ms/spectrum (median)", "runs",
                       "vs 1 thread", "same archive")))


if __name__ == "__main__":
    main()
