"""Train and score the GaSNet-II networks on real spectra kept out of training.

The labelled real spectra of ``../shared/data`` are split in half per class (seeded; the
split ``bench_train.py`` uses). On the training half plus mocks drawn from the published
GaSNet-III model with the training half as sources and donors (``gasnet simulate``'s
generator), it trains

* the 3-class classifier (GALAXY / QSO / STAR),
* the redshift regressor (an ensemble of heads),
* a star spectral-type classifier (A / F / G / K / M, from the survey subclasses; real
  stars only — mocks carry no subtypes): 13-class-style subclass training where labels exist,

and scores each on the held-back half: accuracy per class and the confusion matrix, the
expected calibration error (ECE), GF / MAD / within-1σ of the cnn redshifts, and the
throughput (ms per spectrum, one thread, batch of 256, model loading excluded) against the
gasnet3 scan run in the same process. Beside the star-type classifier it scores, on the
same held-back stars, the type letter of SUBTYPE from the default pipeline (the subtype
stage's named-template fit, nothing trained), so the learned and the fitted letter are
compared on the same spectra.

``--swap-halves`` trains on the other half and scores on the first: the two runs together
are a two-fold cross-validation (every labelled spectrum scored once, by a model that did
not see it).

    python benchmarks/bench_cnn.py [--mocks 3000] [--epochs 30] [--swap-halves]
        [--write-defaults]

``--write-defaults`` writes the 3-class classifier and the regressor to
``gasnet_plugin/data`` (the shipped default models).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import REPO, machine, split_half, table
from bench_accuracy import labelled_real_spectra

from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.io.model_file import write_model
from gasnet_plugin.metrics import (
    class_accuracy,
    confusion_matrix,
    expected_calibration_error,
    redshift_metrics,
)
from gasnet_plugin.models.eigen_model import load_model
from gasnet_plugin.models.gasnet2 import DEFAULT_CLASSIFIER, DEFAULT_REGRESSOR, CNNPredictor
from gasnet_plugin.models.simulate import draw_mocks, reference_set
from gasnet_plugin.models.train_cnn import (
    CNNTrainSettings,
    TrainingSet,
    fresh_cnn,
    make_labels,
    train_cnn,
)

CLASSES = ("GALAXY", "QSO", "STAR")


def throughput(predict, flux: np.ndarray, ivar: np.ndarray, repeats: int = 3) -> float:
    """Best-of-``repeats`` ms per spectrum of ``predict(flux, ivar)``."""
    predict(flux[:16], ivar[:16])
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        predict(flux, ivar)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / flux.shape[0]


def fitted_letters(data, truth: np.ndarray, rows: np.ndarray,
                   letters: list[str]) -> list[tuple]:
    """Report rows for the type letter of the default pipeline's SUBTYPE (its named-template
    fit) on the labelled spectra ``rows`` (indices into ``data``, the labelled spectra)
    whose label letters are ``truth``."""
    from bench_subtype import letter

    default = labelled_real_spectra(REPO / "example_configs" / "default.yaml")
    if not (np.array_equal(default.source, data.source)
            and np.array_equal(default.cls, data.cls)):
        raise RuntimeError("the default pipeline's labelled rows differ from the resampled")
    subtype = np.asarray(default.archive.results["SUBTYPE"]).astype(str)[default.rows[rows]]
    pred = np.array([letter(s) for s in subtype])
    return [("template fit (SUBTYPE)", label, int(sel.sum()),
             f"{class_accuracy(truth[sel], pred[sel]):.3f}", "")
            for label in ("ALL", *letters)
            for sel in [np.ones(truth.size, bool) if label == "ALL" else truth == label]]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mocks", type=int, default=3000, help="mocks per class")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--swap-halves", action="store_true",
                        help="train on the other half, score on the first (2-fold CV)")
    parser.add_argument("--write-defaults", action="store_true")
    parser.add_argument("--skip", default="", help="comma list: classifier,redshift,star-type")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    data = labelled_real_spectra()
    cls, sub, z, flux, ivar = data.cls, data.sub, data.z, data.flux, data.ivar
    grid = data.archive.arrays.loglam
    train, rng = split_half(cls, args.seed)
    if args.swap_halves:
        if args.write_defaults:
            parser.error("--write-defaults trains the shipped models on the first half only")
        train = ~train
    held = ~train

    published = load_model()
    reference = reference_set(published, flux[train], ivar[train], cls[train])
    mocks = [draw_mocks(published, reference, args.mocks, rng, [name]) for name in CLASSES]
    m_flux = np.concatenate([m["flux"] for m in mocks])
    m_ivar = np.concatenate([m["ivar"] for m in mocks])
    m_cls = np.concatenate([m["CLASS"] for m in mocks])
    m_z = np.concatenate([m["Z"] for m in mocks])
    torch.set_num_threads(args.threads)
    trained, timing, report = {}, {}, []

    def fit(task, labels_train, target_real, target_mock, use_mocks, label_list, label_set):
        keep = labels_train != ""
        parts_f = [flux[train][keep]] + ([m_flux] if use_mocks else [])
        parts_v = [ivar[train][keep]] + ([m_ivar] if use_mocks else [])
        parts_t = [target_real[keep]] + ([target_mock] if use_mocks else [])
        real = np.concatenate([np.ones(keep.sum(), bool)]
                              + ([np.zeros(m_cls.size, bool)] if use_mocks else []))
        data = TrainingSet(np.concatenate(parts_f), np.concatenate(parts_v),
                           np.concatenate(parts_t), real)
        base = fresh_cnn(task, grid, label_list, label_set,
                         (-0.01, float(published.template("QSO").z_max)), args.seed)
        settings = CNNTrainSettings(epochs=args.epochs, patience=args.patience, seed=args.seed)
        start = time.perf_counter()
        model, history = train_cnn(base, data, settings, progress=True, trained_on=(
            f"{keep.sum()} real labelled spectra (seeded half of ../shared/data labels.csv)"
            + (f" + {m_cls.size} mocks ({args.mocks} per class) drawn from the published "
               f"GaSNet-III SDSS model with that half as sources" if use_mocks else "")))
        timing[label_set if task == "classify" else "redshift"] = time.perf_counter() - start
        print(f"{task}/{label_set}: best epoch {history.best_epoch}, validation "
              f"{model.provenance['validation']}", flush=True)
        return model

    if "classifier" not in skip:
        labels3 = make_labels(cls, sub, "class")
        index = {name: i for i, name in enumerate(CLASSES)}
        trained["class"] = fit("classify", labels3[train],
                               np.array([index.get(c, -1) for c in labels3[train]]),
                               np.array([index[c] for c in m_cls]), True, list(CLASSES),
                               "class")
    if "redshift" not in skip:
        trained["redshift"] = fit("redshift", cls[train], z[train], m_z, True, [], "class")
    if "star-type" not in skip:
        types = make_labels(cls, sub, "star-type")
        letters = sorted(set(types[train]) - {""}, key="OBAFGKM".index)
        index = {name: i for i, name in enumerate(letters)}
        trained["star-type"] = fit("classify", types[train],
                                   np.array([index.get(t, -1) for t in types[train]]),
                                   None, False, letters, "star-type")

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(f"data: {cls.size} labelled real spectra; training half {train.sum()}, held back "
          f"{held.sum()} (scored); {args.mocks} mocks per class; up to {args.epochs} epochs; "
          f"seed {args.seed}; training times (s, {args.threads} threads): "
          + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    timing_rows = []
    engine = Gasnet3Engine(n_refit=0)
    engine.setup()
    scan_ms = throughput(lambda f, v: engine.measure(EngineInput(f, v, grid)),
                         flux[held][:256], ivar[held][:256], repeats=2)
    batch_f = np.resize(flux[held], (256, flux.shape[1]))
    batch_v = np.resize(ivar[held], (256, flux.shape[1]))
    for name, model in trained.items():
        predictor = CNNPredictor(model)
        if model.task == "classify":
            types = make_labels(cls[held], sub[held], model.label_set)
            pick = np.isin(types, model.labels)
            out = predictor.classify(flux[held][pick], ivar[held][pick])
            truth, pred = types[pick], out.best
            true_index = np.array([model.labels.index(t) for t in truth])
            ece = expected_calibration_error(out.probabilities, true_index)
            for label in ("ALL", *model.labels):
                sel = np.ones(truth.size, bool) if label == "ALL" else truth == label
                report.append((name, label, int(sel.sum()),
                               f"{class_accuracy(truth[sel], pred[sel]):.3f}",
                               f"{ece:.3f}" if label == "ALL" else ""))
            matrix = confusion_matrix(truth, pred, model.labels)
            print(f"\nconfusion ({name}; rows true, columns predicted {model.labels}):")
            for label, line in zip(model.labels, matrix, strict=True):
                print(f"  {label:>7} {line.tolist()}")
            if model.label_set == "star-type":
                report.extend(fitted_letters(data, truth, np.flatnonzero(held)[pick],
                                             model.labels))
            timing_rows.append((f"classify ({name})",
                                f"{throughput(predictor.classify, batch_f, batch_v):.3f}"))
        else:
            out = predictor.redshift(flux[held], ivar[held])
            rows_z = []
            for label in ("ALL", *CLASSES):
                sel = np.ones(held.sum(), bool) if label == "ALL" else cls[held] == label
                m = redshift_metrics(out.z[sel], z[held][sel], out.z_err[sel])
                rows_z.append(("cnn", label, m.n, f"{m.gf[0.0033]:.3f}", f"{m.gf[0.001]:.3f}",
                               f"{m.mad:.2e}", f"{m.catastrophic[0.01]:.3f}",
                               f"{m.within_1sigma:.2f}"))
            print("\ncnn redshift engine on the held-back half:")
            print(table(rows_z, ("engine", "set", "n", "GF<.0033", "GF<.001", "MAD", "cat>.01",
                                 "in 1σ")))
            timing_rows.append(("cnn redshift (regressor)",
                                f"{throughput(predictor.redshift, batch_f, batch_v):.3f}"))
    if report:
        print("\nclassification on the held-back half:")
        print(table(report, ("model", "label", "n", "accuracy", "ECE")))
    timing_rows.append(("baseline: gasnet3 scan, n_refit 0 (same process)", f"{scan_ms:.3f}"))
    print("\nthroughput (1 thread, batch 256, real spectra):")
    print(table([(*r, f"{scan_ms / float(r[1]):.1f}") for r in timing_rows],
                ("what", "ms/spectrum", "speed-up vs scan")))

    if args.write_defaults:
        for key, filename in (("class", DEFAULT_CLASSIFIER), ("redshift", DEFAULT_REGRESSOR)):
            if key in trained:
                model = trained[key]
                model.name = Path(filename).stem
                path = write_model(model, REPO / "gasnet_plugin" / "data" / filename,
                                   overwrite=True)
                print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
