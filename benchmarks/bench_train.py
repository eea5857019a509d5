"""Does ``gasnet train eigen`` work on real spectra? Fine-tuning, scratch, and K.

The labelled real spectra of ``../shared/data`` are split in half per class (seeded):
the training half, and a held-back half used only for scoring. Models compared on the
held-back half (resample → gasnet3 scan with each model):

* the published GaSNet-III SDSS model (the default);
* the default fine-tuned on the training half;
* models trained from scratch (K = 3, 5, 10) on the training half plus ``--mocks`` mock
  spectra per class drawn from the published model with the training half as sources
  (real data are short: 13 training galaxies).

    python benchmarks/bench_train.py [--epochs 150] [--mocks 1500] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import machine, split_half, table
from bench_accuracy import labelled_real_spectra

from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.io.model_file import write_model
from gasnet_plugin.metrics import class_accuracy, redshift_metrics
from gasnet_plugin.models.eigen_model import EigenModel, load_model
from gasnet_plugin.models.simulate import draw_mocks, reference_set
from gasnet_plugin.models.train_eigen import (
    TrainSettings,
    fresh_template,
    prepare,
    train_eigen,
)

CLASSES = ("GALAXY", "QSO", "STAR")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--mocks", type=int, default=1500, help="mocks per class (scratch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = labelled_real_spectra()
    archive, rows, cls, z = data.archive, data.rows, data.cls, data.z
    train, rng = split_half(cls, args.seed)
    flux = archive.arrays.arrays["flux"][rows]
    ivar = archive.arrays.arrays["ivar"][rows]
    loglam = archive.arrays.loglam

    published = load_model()
    settings = TrainSettings(epochs=args.epochs, seed=args.seed, patience=args.patience,
                             lr_step=max(1, args.epochs // 3))
    models: dict[str, EigenModel] = {"published GaSNet-III": published}
    timing = {}

    start = time.perf_counter()
    tuned_settings = TrainSettings(epochs=args.epochs, seed=args.seed,
                                   patience=args.patience, learning_rate=2e-4)
    data = prepare(published, flux[train], ivar[train], cls[train], z[train])
    models["fine-tuned (real half)"], _ = train_eigen(published, data, tuned_settings,
                                                      progress=False)
    timing["fine-tuned (real half)"] = time.perf_counter() - start

    reference = reference_set(published, flux[train], ivar[train], cls[train])
    mock_parts = [draw_mocks(published, reference, args.mocks, rng, [name])
                  for name in CLASSES]
    mflux = np.concatenate([flux[train], *[m["flux"] for m in mock_parts]])
    mivar = np.concatenate([ivar[train], *[m["ivar"] for m in mock_parts]])
    mcls = np.concatenate([cls[train], *[m["CLASS"] for m in mock_parts]])
    mz = np.concatenate([z[train], *[m["Z"] for m in mock_parts]])
    for k in (3, 5, 10):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed)
        scratch = EigenModel(f"scratch-k{k}", published.obs_loglam, [
            fresh_template(t.name, published.obs_loglam, t.z_min, t.z_max, k, generator)
            for t in published.templates], dict(published.preprocessing), {})
        data = prepare(scratch, mflux, mivar, mcls, mz)
        name = f"scratch K={k} (real half + mocks)"
        models[name], _ = train_eigen(scratch, data, settings, progress=False)
        timing[name] = time.perf_counter() - start

    held = ~train
    table_rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            path = write_model(model, Path(folder) / "m.asdf", overwrite=True)
            engine = Gasnet3Engine(model=str(path))
            engine.setup()
            cols = engine.measure(EngineInput(flux[held], ivar[held], loglam)).columns
            for group in ("ALL", *CLASSES):
                pick = np.ones(held.sum(), bool) if group == "ALL" else cls[held] == group
                m = redshift_metrics(cols["Z"][pick], z[held][pick])
                acc = class_accuracy(list(cls[held][pick]), list(cols["SPECTYPE"][pick]))
                table_rows.append((name, group, m.n, f"{m.gf[0.0033]:.3f}", f"{m.gf[0.001]:.3f}",
                                   f"{m.mad:.2e}", f"{m.catastrophic[0.01]:.3f}", f"{acc:.3f}",
                                   f"{timing.get(name, 0):.0f}"))
    print(f"machine: {machine()}")
    print(f"data: {cls.size} labelled real spectra; training half {train.sum()}, held back "
          f"{held.sum()}; {args.mocks} mocks per class for scratch; {args.epochs} epochs max "
          f"(early stopping, patience {args.patience}); seed {args.seed}")
    print(table(table_rows, ("model", "set", "n", "GF<.0033", "GF<.001", "MAD", "cat>.01",
                             "class acc", "train s")))


if __name__ == "__main__":
    main()
