"""Metric definitions (DESIGN.md): worked examples by hand."""

import numpy as np
import pytest

from gasnet_plugin.metrics import class_accuracy, confusion_matrix, delta_z, redshift_metrics


def test_delta_z_and_scores_by_hand():
    z_true = np.array([0.0, 1.0, 1.0, 0.5])
    z_pred = np.array([0.0005, 1.004, 1.1, np.nan])
    np.testing.assert_allclose(delta_z(z_pred[:3], z_true[:3]), [0.0005, 0.002, 0.05])
    m = redshift_metrics(z_pred, z_true, z_err=np.array([0.001, 0.001, 0.2, 0.1]))
    assert m.n == 4
    assert m.gf[0.0033] == pytest.approx(0.5) and m.gf[0.001] == pytest.approx(0.25)
    assert m.catastrophic[0.01] == pytest.approx(0.5)       # 0.05 and the NaN
    assert m.mad == pytest.approx((0.002 + 0.05) / 2)
    assert m.mae == pytest.approx((0.0005 + 0.002 + 0.05) / 3)
    assert m.within_1sigma == pytest.approx(2 / 3)           # rows 0 and 2 of 3 with z


def test_classification_scores():
    true = ["GALAXY", "QSO", "STAR", "STAR"]
    pred = ["GALAXY", "STAR", "STAR", "QSO"]
    assert class_accuracy(true, pred) == 0.5
    matrix = confusion_matrix(true, pred, ["GALAXY", "QSO", "STAR"])
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
