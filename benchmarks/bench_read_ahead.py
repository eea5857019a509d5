"""Reading ahead in a thread while the stages compute: wall time of the same run.

``Pipeline.run_to_file`` (what ``gasnet run`` does) with the default pipeline on real
survey files of ``../shared/data/spectra`` (BOSS, SDSS legacy and LAMOST ``spec`` files,
DESI coadds: every file a reader takes), with ``read_ahead: 0`` (read, then compute, in
turn; the baseline) and ``read_ahead: 2``, each with one torch thread, in the same process,
alternated ``--repeats`` times (the best of each is reported; the machine is shared).
Checks that both archives are the same.

    python benchmarks/bench_read_ahead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, SHARED, machine, table

from gasnet_plugin.api import as_config
from gasnet_plugin.host.runner import Pipeline

FOLDERS = ("sdss_boss", "sdss_legacy", "lamost_dr1", "desi")


def run(files: list[Path], read_ahead: int, out: Path) -> tuple[float, float, object]:
    """Wall and CPU seconds of a run after start-up, and its archive."""
    config = as_config(REPO / "example_configs" / "default.yaml")
    config.read_ahead = read_ahead
    config.progress = False
    pipeline = Pipeline(config)
    pipeline.setup()
    wall, cpu = time.perf_counter(), time.process_time()
    archive = pipeline.run_to_file(files, out, overwrite=True)
    return time.perf_counter() - wall, time.process_time() - cpu, archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(p for folder in FOLDERS for p in (SHARED / "spectra" / folder).glob("*")
                   if p.name.startswith(("spec-", "coadd-")))
    best: dict[int, tuple[float, float]] = {}
    archives = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for depth in (0, 2):
                wall, cpu, archive = run(files, depth, Path(folder) / f"ahead{depth}.asdf")
                archives[depth] = archive.results
                if depth not in best or wall < best[depth][0]:
                    best[depth] = (wall, cpu)
        same = all(np.array_equal(np.asarray(archives[0][c]), np.asarray(archives[2][c]),
                                  equal_nan=np.asarray(archives[0][c]).dtype.kind == "f")
                   for c in archives[0].colnames)
    n = len(archives[0])
    print(f"machine: {machine()}; one torch thread; best of {args.repeats}")
    print(f"data: {n} real spectra from {len(files)} files ({', '.join(FOLDERS)}); "
          f"same archive: {'yes' if same else 'NO'}")
    rows = [(f"read_ahead: {depth}" + ("" if depth else " (baseline: in turn)"),
             f"{best[depth][0]:.2f}", f"{best[depth][0] / n * 1e3:.2f}",
             f"{best[depth][1] / n * 1e3:.2f}", f"{best[0][0] / best[depth][0]:.2f}x")
            for depth in (2, 0)]
    print(table(rows, ("run", "wall s", "wall ms/spectrum", "CPU ms/spectrum", "speed-up")))


if __name__ == "__main__":
    main()
