"""Our default pipeline against Redrock, side by side on the same real spectra, one thread.

On the real BOSS ``spec`` files of ``../shared/data/spectra/sdss_boss`` (``--n`` of them,
sorted by name), in one process with ``torch.set_num_threads(1)``:

1. **In memory**: the spectra read once; then the time of every stage of the default
   pipeline (``example_configs/default.yaml``: resample → classify → redshift-scan →
   reconstruct → subtype → flag-anomaly) against the time of Redrock's zfind through our
   ``redrock`` engine (Redrock from the ``[redrock]`` extra; its QSO and STAR templates
   and a galaxy template from the SDSS ``spEigenGal-56436``, as ``bench_engines.py``).
   Both get the same resampled spectra; template loading is outside the timing.
2. **From files**: ``Pipeline.run_to_file`` (what ``gasnet run`` does: read, stages,
   shards, archive) with the default config and with the redrock config, CPU seconds
   after start-up (models and templates loaded first).
3. **From files, a longer run** (``--repeat K``, default 10): our run on every file linked
   K times under other names (K × n spectra), so that a run's fixed costs (shards,
   merge, archive) are spread as in a survey run; compared with Redrock's cost per
   spectrum from files in 2 (Redrock's zfind costs the same per spectrum however many
   there are).

The second line of 1 is the steady state: the median of ``--passes`` passes over the
same spectra (a batch size already seen) before Redrock's and as many after it.

    python benchmarks/bench_vs_redrock.py [--n 80] [--repeat 10] [--passes 5]
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
from _common import REPO, SHARED, machine, table
from bench_engines import template_folder

from gasnet_plugin.api import as_config
from gasnet_plugin.host.batch import SpectrumBatch
from gasnet_plugin.host.runner import Pipeline

DEFAULT = REPO / "example_configs" / "default.yaml"


def redrock_config(templates: Path) -> dict:
    return {"stages": ["resample", {"redshift-scan": {
        "engine": "redrock", "engine_params": {"templates": str(templates)}}}],
            "batch_size": 256, "progress": False}


def in_memory(pipeline: Pipeline, files: list[Path], stages: slice, passes: int = 1,
              ) -> tuple[int, list[float]]:
    """Seconds of the stages in ``stages`` on the spectra of ``files`` (read beforehand;
    the stages before ``stages`` run untimed), one entry per pass over all of them. The
    first pass includes what a batch of a new size costs once per process (torch's
    convolution set-up for that shape, ...); later passes do not."""
    pipeline.setup()
    blocks = list(pipeline.read_blocks(files))
    warm = SpectrumBatch(blocks[:1])                 # first-call costs outside the timing
    for stage in pipeline.stages:
        stage.process(warm)
    seconds = []
    for _ in range(passes):
        batch = SpectrumBatch(blocks)
        for stage in pipeline.stages[:stages.start]:
            stage.process(batch)
        began = time.process_time()
        for stage in pipeline.stages[stages]:
            stage.process(batch)
        seconds.append(time.process_time() - began)
    return len(batch), seconds


def from_files(config, files: list[Path]) -> tuple[int, float]:
    """CPU seconds of ``run_to_file`` after start-up (the pipeline set up first)."""
    pipeline = Pipeline(as_config(config))
    pipeline.config.progress = False
    pipeline.setup()
    warm = SpectrumBatch(list(pipeline.read_blocks(files[:1])))
    for stage in pipeline.stages:
        stage.process(warm)
    with tempfile.TemporaryDirectory() as folder:
        began = time.process_time()
        archive = pipeline.run_to_file(files, Path(folder) / "out.asdf")
        seconds = time.process_time() - began
        return archive.run.n_spectra, seconds       # (reading the table back: untimed)


LINKS = Path(tempfile.gettempdir()) / "bench_vs_redrock_links"


def linked(files: list[Path], repeat: int) -> list[Path]:
    """``files`` linked ``repeat`` times each under other names in :data:`LINKS`."""
    shutil.rmtree(LINKS, ignore_errors=True)
    LINKS.mkdir()
    links = []
    for copy in range(repeat):
        for path in files:
            link = LINKS / f"{path.stem}-copy{copy}{path.suffix}"
            link.symlink_to(path.resolve())
            links.append(link)
    return sorted(links)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--passes", type=int, default=5,
                        help="timed passes of the batch size already seen, before and "
                             "after Redrock each (their median is the steady state)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted((SHARED / "spectra" / "sdss_boss").glob("spec-*.fits"))[:args.n]
    templates = template_folder()
    try:
        ours_config = as_config(DEFAULT)
        ours_config.read_ahead = 0          # one thread: nothing to overlap with
        # our steady state: the median of the passes after the first, taken before and
        # after Redrock's (the machine's speed drifts over Redrock's minute)
        n, (ours, *before) = in_memory(Pipeline(ours_config), files, slice(0, None),
                                       passes=1 + args.passes)
        _, (redrock,) = in_memory(Pipeline(as_config(redrock_config(templates))), files,
                                  slice(1, None))
        _, (_, *after) = in_memory(Pipeline(ours_config), files, slice(0, None),
                                   passes=1 + args.passes)
        ours_again = float(np.median(before + after))
        ours_config_files = ours_config.as_dict()
        n_files, ours_files = from_files(ours_config_files, files)
        rr_files_config = {**redrock_config(templates), "read_ahead": 0}
        _, redrock_files = from_files(rr_files_config, files)
        n_long, ours_long = (from_files(ours_config_files, linked(files, args.repeat))
                             if args.repeat > 1 else (0, 0.0))
    finally:
        shutil.rmtree(templates)
        shutil.rmtree(LINKS, ignore_errors=True)
    print(f"machine: {machine()}; one thread")
    print(f"data: {n} real BOSS spectra from {len(files)} files of "
          f"{SHARED / 'spectra' / 'sdss_boss'}")
    rows = [("in memory: default pipeline, all six stages", n, f"{ours:.2f}",
             f"{ours / n * 1e3:.2f}", f"{redrock / ours:.0f}x faster"),
            (f"in memory, batch size seen (median of {2 * args.passes} passes)", n,
             f"{ours_again:.2f}",
             f"{ours_again / n * 1e3:.2f}", f"{redrock / ours_again:.0f}x faster"),
            ("in memory: Redrock zfind (redrock engine)", n, f"{redrock:.2f}",
             f"{redrock / n * 1e3:.1f}", "1x"),
            ("from files: gasnet run, default pipeline", n_files, f"{ours_files:.2f}",
             f"{ours_files / n_files * 1e3:.2f}", f"{redrock_files / ours_files:.0f}x faster"),
            ("from files: gasnet run, redrock engine", n_files, f"{redrock_files:.2f}",
             f"{redrock_files / n_files * 1e3:.1f}", "1x")]
    if n_long:
        rows.append((f"from files, each {args.repeat}x: gasnet run, default", n_long,
                     f"{ours_long:.2f}", f"{ours_long / n_long * 1e3:.2f}",
                     f"{redrock_files / n_files / (ours_long / n_long):.0f}x faster"))
    print(table(rows, ("what (CPU time after start-up)", "spectra", "seconds",
                       "ms/spectrum", "vs Redrock")))


if __name__ == "__main__":
    main()
