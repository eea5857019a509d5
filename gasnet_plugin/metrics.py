"""Redshift and classification metrics as the GaSNet papers use them (DESIGN.md).

``Δz = |z_pred − z_true| / (1 + z_true)``. Thresholds are parameters; the defaults are the
papers' (GF at 0.0033 ≈ 1000 km/s and 0.001; catastrophic above 0.01 and 0.0033).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def delta_z(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """``|z_pred − z_true| / (1 + z_true)``, elementwise."""
    z_pred, z_true = np.asarray(z_pred, float), np.asarray(z_true, float)
    return np.abs(z_pred - z_true) / (1.0 + z_true)


@dataclass
class RedshiftMetrics:
    """Redshift scores of a set of spectra (NaN where the set is empty).

    Attributes
    ----------
    n
        Spectra scored.
    gf
        Threshold → good fraction (Δz ≤ threshold).
    mad
        Median Δz (GaSNet's "MAD").
    nmad
        1.4826 × median |dz − median dz| with signed ``dz = (z_pred − z_true)/(1 + z_true)``.
    mae
        Mean Δz.
    catastrophic
        Threshold → fraction with Δz > threshold.
    within_1sigma
        Fraction with ``|z_pred − z_true| ≤ z_err`` (ideal ≈ 0.68), over rows with an error.
    """

    n: int
    gf: dict[float, float]
    mad: float
    nmad: float
    mae: float
    catastrophic: dict[float, float]
    within_1sigma: float


def redshift_metrics(z_pred: np.ndarray, z_true: np.ndarray, z_err: np.ndarray | None = None,
                     gf_thresholds: Sequence[float] = (0.0033, 0.001),
                     catastrophic_thresholds: Sequence[float] = (0.01, 0.0033),
                     ) -> RedshiftMetrics:
    """Score predicted redshifts against the truth (rows with a non-finite z_pred count as
    failures: Δz = inf)."""
    z_pred, z_true = np.asarray(z_pred, float), np.asarray(z_true, float)
    dz = np.where(np.isfinite(z_pred), delta_z(z_pred, z_true), np.inf)
    n = dz.size
    if n == 0:
        nan = float("nan")
        return RedshiftMetrics(0, {t: nan for t in gf_thresholds}, nan, nan, nan,
                               {t: nan for t in catastrophic_thresholds}, nan)
    signed = np.where(np.isfinite(z_pred), (z_pred - z_true) / (1 + z_true), np.inf)
    finite = np.isfinite(signed)
    nmad = float(1.4826 * np.median(np.abs(signed[finite] - np.median(signed[finite])))) \
        if finite.any() else float("nan")
    within = float("nan")
    if z_err is not None:
        z_err = np.asarray(z_err, float)
        has = np.isfinite(z_err) & np.isfinite(z_pred) & (z_err > 0)
        if has.any():
            within = float(np.mean(np.abs(z_pred[has] - z_true[has]) <= z_err[has]))
    return RedshiftMetrics(
        n=n,
        gf={t: float(np.mean(dz <= t)) for t in gf_thresholds},
        mad=float(np.median(dz)),
        nmad=nmad,
        mae=float(np.mean(dz[np.isfinite(dz)])) if np.isfinite(dz).any() else float("inf"),
        catastrophic={t: float(np.mean(dz > t)) for t in catastrophic_thresholds},
        within_1sigma=within,
    )


def confusion_matrix(true_class: Sequence[str], pred_class: Sequence[str],
                     classes: Sequence[str]) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted (a prediction outside
    ``classes`` is not counted in any column)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(true_class, pred_class, strict=True):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def class_accuracy(true_class: Sequence[str], pred_class: Sequence[str]) -> float:
    """Fraction of exact class matches."""
    t, p = np.asarray(true_class), np.asarray(pred_class)
    return float(np.mean(t == p)) if t.size else float("nan")


def expected_calibration_error(probabilities: np.ndarray, true_index: np.ndarray,
                               n_bins: int = 10) -> float:
    """Expected calibration error of classifier probabilities.

    ``probabilities`` ``(n, C)``, ``true_index`` ``(n,)`` the true label's column. Spectra
    are binned by their top probability into ``n_bins`` equal bins on [0, 1]; ECE is the
    count-weighted mean over bins of |accuracy − mean top probability| (0 = calibrated).
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape[0] == 0:
        return float("nan")
    top = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(true_index)
    bins = np.minimum((top * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() * abs(correct[members].mean() - top[members].mean())
    return float(total / top.size)
