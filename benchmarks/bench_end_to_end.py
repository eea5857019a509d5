"""End to end: seconds per spectrum per core of each stage and in total, real and mock.

The default pipeline (``example_configs/default.yaml``, or ``--config``) on one thread, on

* real: every labelled spectrum of ``../shared/data`` (SDSS, BOSS, DESI, LAMOST files);
* mock: ``--n-mock`` spectra drawn by ``gasnet simulate`` from the published GaSNet-III
  model with the real spectra of ``tests/data`` as sources (written to FITS first, or read
  from ``--mocks DIR``).

FITS reading (opening the files, building the Spectrum objects and label rows) is timed on
its own, then each stage (its ``process`` on every batch), then writing the archive, with
the cyclic garbage collector set as a run sets it (:mod:`gasnet_plugin.host.collector`).
The "share" column is each part against the whole run in the same process.

With ``--repeats R`` each set is run R times (each run a pipeline of its own, set up
again) and every part's median is shown: one pass over the 333 real spectra takes ~0.1 s
in a stage, and on a shared machine one pass scatters by tens of per cent.

    python benchmarks/bench_end_to_end.py [--n-mock 4000] [--mocks DIR] [--device cpu]
        [--config example_configs/default.yaml] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from _common import REPO, SHARED, machine, table
from bench_accuracy import read_labels

from gasnet_plugin.api import as_config
from gasnet_plugin.host.batch_outputs import Cursor, assemble_outputs
from gasnet_plugin.host.collector import run_collector
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import RunArchive

STAGES = ("resample", "classify", "redshift-scan", "reconstruct", "subtype", "flag-anomaly")


def timed_run(files: list[Path], device: str, config_path: Path,
              ) -> tuple[int, dict[str, float]]:
    """Seconds spent reading, in each stage and writing, for the pipeline of
    ``config_path`` (its device replaced by ``device``)."""
    config = as_config(config_path)
    config.device = device
    pipeline = Pipeline(config)
    pipeline.setup()
    with run_collector():                  # as every run sets it (host/collector.py)
        began = time.perf_counter()
        blocks = list(pipeline.read_blocks(files))
        seconds = {"FITS reading": time.perf_counter() - began}
        outputs = []
        for batch in pipeline.batches(blocks):
            outputs.append(pipeline.output_of(pipeline.process_batch(batch), Cursor()))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.update(pipeline.stage_seconds)
        began = time.perf_counter()
        results, arrays = assemble_outputs(outputs, [])
        archive = RunArchive(results, pipeline.run_info(files, results), arrays)
        with tempfile.TemporaryDirectory() as folder:
            archive.write(Path(folder) / "out.asdf")
        seconds["archive writing"] = time.perf_counter() - began
    return len(results), seconds


def median_run(files: list[Path], device: str, config_path: Path, repeats: int,
               ) -> tuple[int, dict[str, float]]:
    """:func:`timed_run` ``repeats`` times (at least once); each part's median seconds."""
    runs = [timed_run(files, device, config_path) for _ in range(max(repeats, 1))]
    parts = runs[0][1]
    return runs[0][0], {part: float(np.median([run[1][part] for run in runs]))
                        for part in parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-mock", type=int, default=4000)
    parser.add_argument("--mocks", default=None, help="folder of mock FITS files to use")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default=str(REPO / "example_configs" / "default.yaml"),
                        help="pipeline config (default: example_configs/default.yaml)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per set; every part's median is shown (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    labels = read_labels(SHARED)
    real = sorted({SHARED / re.sub(r"#.*$", "", label["path"]) for label in labels})
    folder = None
    if args.mocks:
        mocks = expand_inputs([args.mocks])
    else:
        folder = Path(tempfile.mkdtemp(prefix="e2e-mocks-"))
        subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", "simulate",
                        str(REPO / "tests" / "data"), "-n", str(args.n_mock), "--per-file",
                        "1000", "-o", str(folder), "--seed", "3"], check=True,
                       capture_output=True)
        mocks = expand_inputs([folder])
    try:
        n_real, real_s = median_run(real, args.device, Path(args.config), args.repeats)
        n_mock, mock_s = median_run(mocks, args.device, Path(args.config), args.repeats)
    finally:
        if folder is not None:
            shutil.rmtree(folder)

    print(f"machine: {machine()}; device {args.device}; config {args.config}; "
          f"median of {args.repeats} run(s) per set")
    print(f"real: {n_real} spectra from {len(real)} files; mock: {n_mock} spectra "
          f"from {len(mocks)} files")
    rows = []
    parts = ["FITS reading", *STAGES, "archive writing"]
    total_real, total_mock = sum(real_s.values()), sum(mock_s.values())
    stages_real = sum(real_s[s] for s in STAGES)
    stages_mock = sum(mock_s[s] for s in STAGES)
    for part in parts:
        rows.append((part, f"{1e3 * real_s[part] / n_real:.3f}",
                     f"{real_s[part] / total_real:.1%}",
                     f"{1e3 * mock_s[part] / n_mock:.3f}", f"{mock_s[part] / total_mock:.1%}"))
    rows.append(("all stages", f"{1e3 * stages_real / n_real:.3f}",
                 f"{stages_real / total_real:.1%}", f"{1e3 * stages_mock / n_mock:.3f}",
                 f"{stages_mock / total_mock:.1%}"))
    rows.append(("total", f"{1e3 * total_real / n_real:.3f}", "100%",
                 f"{1e3 * total_mock / n_mock:.3f}", "100%"))
    print(table(rows, ("part", "real ms/spectrum/core", "share", "mock ms/spectrum/core",
                       "share")))
    print(f"throughput, one core, stages only: real {n_real / stages_real:,.0f} spectra/s, "
          f"mock {n_mock / stages_mock:,.0f} spectra/s")


if __name__ == "__main__":
    main()
