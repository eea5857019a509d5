"""Mock throughput: ``gasnet simulate`` drawing and writing N spectra (default 100 000).

Sources and donors are the real spectra of ``tests/data`` (or ``--sources``). The drawing
is vectorised over chunks of 2048; the baseline, run in the same process on a few hundred
spectra, draws one spectrum per call. Files are written to a temporary folder (about
37 kB per spectrum) and removed.

    python benchmarks/bench_simulate.py [--n 100000] [--sources DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from _common import REPO, machine, table

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.models.eigen_model import load_model
from gasnet_plugin.models.simulate import draw_mocks, reference_set, write_mocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--per-file", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument("--sources", default=str(REPO / "tests" / "data"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model()
    archive = run_pipeline({"stages": ["resample"], "output": {"arrays": ["flux", "ivar"]}},
                           [args.sources], progress=False)
    labels = np.array([str(c).strip() for c in archive.results["SURVEY_CLASS"]])
    reference = reference_set(model, archive.arrays.arrays["flux"],
                              archive.arrays.arrays["ivar"], labels)
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="mocks-"))
    try:
        start = time.perf_counter()
        drawing = 0.0
        for index, first in enumerate(range(0, args.n, args.per_file)):
            count = min(args.per_file, args.n - first)
            t0 = time.perf_counter()
            parts = [draw_mocks(model, reference, min(2048, count - c), rng, anomaly_fraction=0.05)
                     for c in range(0, count, 2048)]
            drawing += time.perf_counter() - t0
            mocks = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            write_mocks(mocks, model.obs_loglam, folder / f"mock-{index:05d}.fits")
        total = time.perf_counter() - start
        size = sum(p.stat().st_size for p in folder.iterdir())
        t0 = time.perf_counter()
        for _ in range(args.baseline):
            draw_mocks(model, reference, 1, rng, anomaly_fraction=0.05)
        baseline = (time.perf_counter() - t0) / args.baseline
    finally:
        shutil.rmtree(folder)
    rate = args.n / drawing
    print(f"machine: {machine()}")
    print(f"{args.n} mocks from {len(reference.flux)} real sources; {size / 1e9:.2f} GB written")
    print(table([
        ("draw, chunks of 2048", args.n, f"{drawing:.1f}", f"{rate:,.0f}",
         f"{rate * baseline:,.1f}x"),
        ("draw + write FITS", args.n, f"{total:.1f}", f"{args.n / total:,.0f}", ""),
        ("baseline: one spectrum per call", args.baseline, f"{baseline * args.baseline:.2f}",
         f"{1 / baseline:,.0f}", "1x"),
    ], ("what", "spectra", "seconds", "spectra/s", "vs baseline")))


if __name__ == "__main__":
    main()
