"""Accuracy of the default pipeline on the real labelled spectra of ``../shared/data``.

Runs ``example_configs/default.yaml`` (resample → gasnet3 scan → reconstruct) on every
file listed in ``labels.csv`` (SDSS/BOSS, DESI, LAMOST and the GaSNet-III table rows),
matches each results row to its label (path, table row or DESI TARGETID) and prints, per
survey and class: GF (Δz ≤ 0.0033 and ≤ 0.001), MAD, NMAD, the catastrophic rates
(Δz > 0.01 and > 0.0033), the fraction within 1 ZERR, and class accuracy with the
confusion matrix. The labels are the survey pipelines' own (not perfect truth).

Baseline in the same run: GaSNet-III's original method (its own preprocessing, 'same'
correlation with the edge ramp, z on the pixel grid, class = lowest min χ²/N), computed
by :func:`gasnet3_original_outputs` on the same resampled spectra.

    python benchmarks/bench_accuracy.py [--config example_configs/default.yaml]
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, SHARED, machine, table

from gasnet_plugin.api import as_config, run_pipeline
from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.gasnet3_reference import gasnet3_original_outputs
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.metrics import class_accuracy, confusion_matrix, redshift_metrics

CLASSES = ["GALAXY", "QSO", "STAR"]


def read_labels(shared: Path) -> list[dict]:
    with open(shared / "labels.csv") as handle:
        return list(csv.DictReader(handle))


def match(labels: list[dict], results, shared: Path) -> list[tuple[dict, int]]:
    """(label, results row index) pairs."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, source in enumerate(results["SOURCE"]):
        by_source[str(Path(source).resolve())].append(index)
    pairs = []
    for label in labels:
        path, _, anchor = label["path"].partition("#")
        rows = by_source.get(str((shared / path).resolve()), [])
        if not rows:
            continue
        if anchor.startswith("row"):
            wanted = [i for i in rows if results["ROW"][i] == int(anchor[3:])]
        elif label["survey"].startswith("DESI") and label["fiber"]:
            wanted = [i for i in rows if results["TARGETID"][i] == int(label["fiber"])]
        else:
            wanted = rows[:1]
        if wanted:
            pairs.append((label, wanted[0]))
    return pairs


RESAMPLED = {"stages": ["resample"], "output": {"arrays": ["flux", "ivar"]}}
"""A config that only resamples and keeps the spectra (what the training benchmarks need)."""


@dataclass
class Labelled:
    """Every labelled real spectrum of ``labels.csv`` run through one config: the archive,
    and per label its results ``rows``, class ``cls``, subclass ``sub`` and redshift ``z``."""

    archive: Any
    rows: np.ndarray
    cls: np.ndarray
    sub: np.ndarray
    z: np.ndarray
    survey: np.ndarray
    source: np.ndarray

    @property
    def flux(self) -> np.ndarray:
        return self.archive.arrays.arrays["flux"][self.rows]

    @property
    def ivar(self) -> np.ndarray:
        return self.archive.arrays.arrays["ivar"][self.rows]


def labelled_real_spectra(config: dict | str | Path = RESAMPLED) -> Labelled:
    """Run ``config`` on every file of ``labels.csv`` and match the rows to their labels."""
    labels = read_labels(SHARED)
    files = sorted({SHARED / re.sub(r"#.*$", "", label["path"]) for label in labels})
    archive = run_pipeline(config, [str(f) for f in files], progress=False)
    pairs = match(labels, archive.results, SHARED)
    return Labelled(archive, np.array([i for _, i in pairs]),
                    np.array([lab["cls"] for lab, _ in pairs]),
                    np.array([lab["subclass"] for lab, _ in pairs]),
                    np.array([float(lab["z"]) for lab, _ in pairs]),
                    np.array([survey_of(lab) for lab, _ in pairs]),
                    np.array([lab["source"] for lab, _ in pairs]))


def survey_of(label: dict) -> str:
    """The survey a label belongs to, for cross-validation by survey: SDSS (BOSS, legacy
    and the GaSNet-III SDSS rows), LAMOST or DESI."""
    return label["survey"].split()[0].split("/")[0]


def gasnet3_baseline(archive) -> dict[str, np.ndarray]:
    """GaSNet-III's original outputs on the archived resampled spectra: per row the class
    with the lowest min χ²/N and that class's Best_fit_z (NaN/'' for unmeasured rows)."""
    engine = Gasnet3Engine()
    engine.setup(model=None)
    flux, ivar = archive.arrays.arrays["flux"], archive.arrays.arrays["ivar"]
    measured = np.isfinite(np.asarray(archive.results["Z"], dtype=float))
    out = gasnet3_original_outputs(engine, EngineInput(flux[measured], ivar[measured],
                                                       archive.arrays.loglam))
    classes = list(out)
    chi = np.stack([out[c]["min_chi_square"] for c in classes])
    best = np.argmin(chi, axis=0)
    z = np.full(len(measured), np.nan)
    spectype = np.full(len(measured), "", dtype=object)
    z[measured] = np.stack([out[c]["Best_fit_z"] for c in classes])[best, np.arange(best.size)]
    spectype[measured] = np.array(classes)[best]
    return {"Z": z, "SPECTYPE": spectype}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "example_configs" / "default.yaml"))
    parser.add_argument("--out", default=None, help="also write the archive here")
    args = parser.parse_args()

    labels = read_labels(SHARED)
    files = sorted({SHARED / re.sub(r"#.*$", "", label["path"]) for label in labels})
    config = as_config(args.config)
    config.output["arrays"] = sorted({*config.output.get("arrays", []), "flux", "ivar"})
    archive = run_pipeline(config, [str(f) for f in files], args.out, overwrite=True,
                           progress=False)
    results = archive.results
    baseline = gasnet3_baseline(archive)
    pairs = match(labels, results, SHARED)
    print(f"machine: {machine()}")
    print(f"config: {args.config}; {len(files)} files, {len(results)} spectra, "
          f"{len(pairs)} matched to labels.csv")

    groups: dict[str, list[tuple[dict, int]]] = defaultdict(list)
    for label, index in pairs:
        survey = label["survey"].split()[0].split("/")[0]
        if label["source"] == "GaSNet-III":
            survey = "GaSNet-III rows"
        groups[f"{survey} {label['cls']}"].append((label, index))
        groups[f"ALL {label['cls']}"].append((label, index))
        groups["ALL"].append((label, index))

    rows = []
    for name in sorted(groups, key=lambda g: (g.startswith("ALL"), g)):
        members = groups[name]
        idx = np.array([i for _, i in members])
        z_true = np.array([float(label["z"]) for label, _ in members])
        truth = [label["cls"] for label, _ in members]
        runs = [("gasnet-plugin", np.asarray(results["Z"][idx]),
                 np.asarray(results["ZERR"][idx]), [str(s) for s in results["SPECTYPE"][idx]])]
        if name.startswith("ALL"):
            runs.append(("GaSNet-III orig.", baseline["Z"][idx], None,
                         list(baseline["SPECTYPE"][idx])))
        for method, z, zerr, pred in runs:
            m = redshift_metrics(z, z_true, zerr)
            rows.append((name, method, m.n, f"{m.gf[0.0033]:.3f}", f"{m.gf[0.001]:.3f}",
                         f"{m.mad:.2e}", f"{m.nmad:.2e}", f"{m.catastrophic[0.01]:.3f}",
                         f"{m.catastrophic[0.0033]:.3f}", f"{m.within_1sigma:.2f}",
                         f"{class_accuracy(truth, pred):.3f}"))
    print(table(rows, ("set", "method", "n", "GF<.0033", "GF<.001", "MAD", "NMAD",
                       "cat>.01", "cat>.0033", "in 1σ", "class acc")))

    truth = [label["cls"] for label, _ in pairs]
    pred = [str(results["SPECTYPE"][i]) for _, i in pairs]
    matrix = confusion_matrix(truth, pred, CLASSES)
    print("\nconfusion matrix (rows: label, columns: SPECTYPE)")
    print(table([(c, *map(str, matrix[i])) for i, c in enumerate(CLASSES)], ("", *CLASSES)))

    flagged = np.array([results["ZWARN"][i] != 0 for _, i in pairs])
    wrong = np.array([t != p for t, p in zip(truth, pred, strict=True)])
    print(f"\nZWARN != 0 on {flagged.sum()} of {len(pairs)} spectra; of the "
          f"{wrong.sum()} misclassified, {np.sum(wrong & flagged)} carry a ZWARN bit")


if __name__ == "__main__":
    main()
