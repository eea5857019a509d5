"""Calibrate the flag-anomaly thresholds on real spectra and measure each bit's worth.

The labelled real spectra of ``../shared/data`` are split as in ``bench_cnn.py`` (the
GaSNet-II networks were trained on one half). The other, held-out half is split again
(seeded): part A calibrates the thresholds (``gasnet calibrate-flags``' function, each bit
letting through ``--rate`` of the right spectra), part B measures them. For each bit: how
many spectra of B it flags, the fraction of those that are wrong (class wrong or
Δz > 0.0033), the same fraction among the spectra it does not flag, their ratio (goal ≥ 5)
and the fraction of right spectra flagged (goal ≲ 10 % for all bits together).

Then mock spectra with injected anomalies (``gasnet simulate``'s generator: unmodelled
lines and superposed second objects; sources are the training half) go through the same
pipeline: the fraction flagged among injected and clean mocks, and the fraction of injected
ones among the top-ranked by ANOMALY_SCORE.

    python benchmarks/bench_flags.py [--rate 0.015] [--mocks 2000] [--write-defaults]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import REPO, machine, split_half, table
from bench_accuracy import labelled_real_spectra

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.metrics import delta_z
from gasnet_plugin.models.eigen_model import load_model
from gasnet_plugin.models.simulate import draw_mocks, reference_set, write_mocks
from gasnet_plugin.stages.flag_anomaly import (
    DEFAULT_THRESHOLDS,
    apply_flags,
    calibrate_thresholds,
    write_thresholds,
)
from gasnet_plugin.zwarning import ZWarn

NEW_BITS = (ZWarn.LOW_SNR, ZWarn.LARGE_CHI2, ZWarn.DEGENERATE, ZWarn.CLASS_DISAGREE,
            ZWarn.Z_DISAGREE, ZWarn.LOW_PROB)
ENGINE_BITS = (ZWarn.SMALL_DELTA_CHI2, ZWarn.Z_AT_EDGE, ZWarn.BAD_FIT, ZWarn.LITTLE_DATA)
MEASURE = {"stages": ["resample", "classify", "redshift-scan"],
           "output": {"arrays": ["flux", "ivar"]}}


def bit_table(zwarn: np.ndarray, wrong: np.ndarray, bits) -> list[tuple]:
    rows = []
    masks = [(bit.name, (zwarn & int(bit)) != 0) for bit in bits]
    masks.append(("any new bit (8-13)", (zwarn & sum(int(b) for b in NEW_BITS)) != 0))
    masks.append(("ZWARN != 0 (all bits)", zwarn != 0))
    for name, flagged in masks:
        n_flag = int(flagged.sum())
        wrong_flagged = wrong[flagged].mean() if n_flag else np.nan
        wrong_clean = wrong[~flagged].mean() if (~flagged).any() else np.nan
        ratio = wrong_flagged / wrong_clean if wrong_clean > 0 else np.inf
        right_flagged = np.mean(flagged[~wrong]) if (~wrong).any() else np.nan
        rows.append((name, n_flag, f"{wrong_flagged:.2f}", f"{wrong_clean:.3f}",
                     f"{ratio:.1f}", f"{right_flagged:.3f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=0.015)
    parser.add_argument("--mocks", type=int, default=2000)
    parser.add_argument("--anomaly-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-defaults", action="store_true")
    args = parser.parse_args()

    data = labelled_real_spectra(MEASURE)
    archive, rows, cls, z = data.archive, data.rows, data.cls, data.z
    results = archive.results[rows]
    train, rng = split_half(cls, args.seed)
    held = np.flatnonzero(~train)
    part_a = np.zeros(cls.size, bool)
    part_a[np.random.default_rng([args.seed, 11]).permutation(held)[: held.size // 2]] = True
    part_b = ~train & ~part_a
    spectype = np.char.strip(np.asarray(results["SPECTYPE"]).astype(str))
    wrong = (spectype != cls) | ~(delta_z(np.asarray(results["Z"], float), z) <= 0.0033)

    def calibrate(pick: np.ndarray, what: str):
        return calibrate_thresholds(results[pick], ~wrong[pick], args.rate, provenance={
            "labels": "../shared/data/labels.csv (survey pipelines' labels)",
            "spectra": f"{pick.sum()} real labelled spectra ({what}; seed {args.seed}), "
                       f"see benchmarks/bench_flags.py",
            "models": "gasnet3-sdss, gasnet2-classifier, gasnet2-redshift"})

    def flagged(pick: np.ndarray, thresholds) -> np.ndarray:
        flags = apply_flags(results[pick], thresholds)
        zwarn = np.asarray(results["ZWARN"][pick]).astype(np.int64).copy()
        for bit, mask in flags.bits.items():
            zwarn[mask] |= int(bit)
        return zwarn

    # two-fold: calibrate on A, measure on B, and the other way round; the shipped
    # thresholds are calibrated on the whole held-out half
    zwarn = np.zeros(cls.size, np.int64)
    zwarn[part_b] = flagged(part_b, calibrate(part_a, "held-out part A"))
    zwarn[part_a] = flagged(part_a, calibrate(part_b, "held-out part B"))
    held_mask = ~train
    thresholds = calibrate(held_mask, "the half kept out of GaSNet-II training")
    zwarn[train] = flagged(train, thresholds)
    print(f"machine: {machine()}")
    print(f"data: {cls.size} labelled real spectra; held-out half {held_mask.sum()} "
          f"({wrong[held_mask].sum()} wrong) in two parts A {part_a.sum()} / B "
          f"{part_b.sum()}: each part is flagged with thresholds calibrated on the other; "
          f"rate {args.rate}")
    print("shipped thresholds (calibrated on the whole held-out half): " + ", ".join(
        f"{k} {getattr(thresholds, k):.3g}" for k in (
            "low_snr", "large_chi2", "degenerate", "z_disagree", "low_prob", "class_doubt")))
    header = ("bit", "flagged", "wrong|flagged", "wrong|unflagged", "ratio", "right flagged")
    for name, pick in (("held-out half, two-fold (never flagged with thresholds calibrated "
                        "on itself)", held_mask),
                       ("training half (the classifier saw these), shipped thresholds",
                        train)):
        print(f"\n{name}: {pick.sum()} spectra, {wrong[pick].sum()} wrong")
        print(table(bit_table(zwarn[pick], wrong[pick], (*ENGINE_BITS, *NEW_BITS)), header))

    published = load_model()
    reference = reference_set(published, archive.arrays.arrays["flux"][rows][train],
                              archive.arrays.arrays["ivar"][rows][train], cls[train])
    mocks = draw_mocks(published, reference, args.mocks, rng,
                       anomaly_fraction=args.anomaly_fraction)
    with tempfile.TemporaryDirectory() as folder:
        path = write_mocks(mocks, published.obs_loglam, Path(folder) / "mocks.fits")
        calibrated = write_thresholds(thresholds, Path(folder) / "thresholds.asdf")
        config = {**MEASURE, "stages": [*MEASURE["stages"],
                                        {"flag-anomaly": {"thresholds": str(calibrated)}}],
                  "output": {"arrays": []}}
        mock_results = run_pipeline(config, [str(path)], progress=False).results
    kind = np.char.strip(mocks["ANOMALY"].astype(str))
    m_zwarn = np.asarray(mock_results["ZWARN"]).astype(np.int64)
    m_type = np.char.strip(np.asarray(mock_results["SPECTYPE"]).astype(str))
    m_wrong = (m_type != mocks["CLASS"]) | ~(
        delta_z(np.asarray(mock_results["Z"], float), mocks["Z"]) <= 0.0033)
    score = np.nan_to_num(np.asarray(mock_results["ANOMALY_SCORE"], float), nan=-np.inf)
    top = np.argsort(-score)[: max(1, round(np.mean(kind != "") * kind.size))]
    groups = (("clean, right", (kind == "") & ~m_wrong), ("clean, wrong", (kind == "") & m_wrong),
              ("line", kind == "line"), ("superposed", kind == "superposed"))
    mock_rows = []
    for bit in (*NEW_BITS, None):
        mask = (m_zwarn & sum(int(b) for b in NEW_BITS)) != 0 if bit is None \
            else (m_zwarn & int(bit)) != 0
        mock_rows.append(("any new bit" if bit is None else bit.name,
                          *[f"{mask[g].mean():.3f}" for _, g in groups]))
    mock_rows.append(("in top ANOMALY_SCORE",
                      *[f"{np.isin(np.flatnonzero(g), top).mean():.3f}" for _, g in groups]))
    print(f"\nmocks with injected anomalies ({args.mocks}, anomaly fraction "
          f"{args.anomaly_fraction}): fraction flagged per group; 'in top' = among the "
          f"{top.size} highest ANOMALY_SCORE")
    print(table(mock_rows, ("bit", *[f"{name} ({g.sum()})" for name, g in groups])))

    if args.write_defaults:
        target = REPO / "gasnet_plugin" / "data" / DEFAULT_THRESHOLDS
        write_thresholds(thresholds, target)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
