"""The redshift engines side by side on the same real spectra, in one run.

gasnet3 (default parameters), gasnet3 with ``n_refit: 0`` (GaSNet-III's pixel-grid answer)
and Redrock (its own zfind, with Redrock's QSO and STAR templates and a galaxy template
built from the SDSS pipeline's ``spEigenGal-56436``), each run through the same pipeline
(resample → redshift-scan) on a stratified draw of the labelled spectra of
``../shared/data`` (``--per-class`` of each class, seeded). Prints the DESIGN.md metrics
per engine and class, and seconds per spectrum per core (one thread, stages only; file
reading and template loading excluded).

    python benchmarks/bench_engines.py [--per-class 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from _common import SHARED, machine, table
from bench_accuracy import match, read_labels

from gasnet_plugin.api import as_config
from gasnet_plugin.engines.redrock_templates import idlspec2d_to_redrock
from gasnet_plugin.host.batch import SpectrumBatch
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.metrics import class_accuracy, redshift_metrics

CLASSES = ("GALAXY", "QSO", "STAR")


def template_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="rr-templates-"))
    idlspec2d_to_redrock(SHARED / "templates/sdss_idlspec2d/spEigenGal-56436.fits",
                         folder / "rrtemplate-GALAXY-spEigenGal-56436.fits",
                         z_range=(-0.005, 1.5))
    for path in sorted((SHARED / "templates/redrock").glob("rrtemplate-*.fits")):
        if "v1.0" in path.name or "QSO-None" in path.name:     # newest QSO templates only
            continue
        shutil.copy(path, folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    labels = read_labels(SHARED)
    rng = np.random.default_rng(args.seed)
    chosen = []
    for cls in CLASSES:
        members = [label for label in labels if label["cls"] == cls]
        picks = rng.choice(len(members), size=min(args.per_class, len(members)), replace=False)
        chosen += [members[i] for i in sorted(picks)]
    files = sorted({SHARED / re.sub(r"#.*$", "", label["path"]) for label in chosen})

    templates = template_folder()
    engines = {
        "gasnet3": {"engine": "gasnet3"},
        "gasnet3 (n_refit 0)": {"engine": "gasnet3", "engine_params": {"n_refit": 0}},
        "redrock": {"engine": "redrock", "engine_params": {"templates": str(templates)}},
    }
    rows, speed = [], []
    for name, scan in engines.items():
        pipeline = Pipeline(as_config({"stages": ["resample", {"redshift-scan": scan}],
                                       "batch_size": 4096}))
        pipeline.setup()
        blocks = list(pipeline.read_blocks(files))
        batch = SpectrumBatch(blocks)
        pipeline.stages[0].process(batch)
        if name == "redrock":                      # load the templates outside the timing
            warm = SpectrumBatch(blocks[:1])
            pipeline.stages[0].process(warm)
            pipeline.stages[1].process(warm)
        start = time.perf_counter()
        pipeline.stages[1].process(batch)
        seconds = time.perf_counter() - start
        results = batch.results()
        pairs = [(label, i) for label, i in match(chosen, results, SHARED)]
        speed.append((name, len(results), f"{seconds:.2f}",
                      f"{seconds / len(results) * 1e3:.2f}"))
        for cls in ("ALL", *CLASSES):
            members = [(lab, i) for lab, i in pairs if cls == "ALL" or lab["cls"] == cls]
            idx = np.array([i for _, i in members])
            z_true = np.array([float(lab["z"]) for lab, _ in members])
            m = redshift_metrics(np.asarray(results["Z"][idx], dtype=float), z_true,
                                 np.asarray(results["ZERR"][idx], dtype=float))
            acc = class_accuracy([lab["cls"] for lab, _ in members],
                                 [str(s) for s in results["SPECTYPE"][idx]])
            rows.append((cls, name, m.n, f"{m.gf[0.0033]:.3f}", f"{m.gf[0.001]:.3f}",
                         f"{m.mad:.2e}", f"{m.nmad:.2e}", f"{m.catastrophic[0.01]:.3f}",
                         f"{m.within_1sigma:.2f}", f"{acc:.3f}"))
    rows.sort(key=lambda r: (("ALL", *CLASSES).index(r[0]), r[1]))
    print(f"machine: {machine()}")
    print(f"data: {len(chosen)} labelled real spectra ({args.per_class} per class, seed "
          f"{args.seed}) from {len(files)} files of {SHARED}")
    print(table(rows, ("set", "engine", "n", "GF<.0033", "GF<.001", "MAD", "NMAD", "cat>.01",
                       "in 1σ", "class acc")))
    print()
    print(table(speed, ("engine", "spectra", "seconds", "ms/spectrum/core")))
    shutil.rmtree(templates)


if __name__ == "__main__":
    main()
