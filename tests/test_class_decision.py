"""The class decision: the estimator, its parameters file, and the redshift-scan stage's use."""

from __future__ import annotations

from pathlib import Path

import asdf
import numpy as np
import pytest

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.class_decision import (
    WEIGHT_NAMES,
    ClassDecision,
    ClassEvidence,
    DecisionError,
    read_decision,
    systematic_error,
    write_decision,
)
from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.zwarning import ZWarn

DATA = Path(__file__).parent / "data"
CLASSES = ["GALAXY", "QSO", "STAR"]
N_LAGS = np.array([4000, 7800, 44])


def synthetic_evidence(n: int, seed: int) -> tuple[ClassEvidence, np.ndarray, np.ndarray]:
    """Spectra whose true class has an informative classifier probability, while the χ²
    race is won by chance by the class with most redshift trials on a third of them (the
    faint-star failure): χ² of the true class 0 + noise, of the others +3 ± 3, and −5 for
    QSO on the "faint" third."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    chi2 = 3000 + 3 + 3 * rng.normal(size=(n, 3))
    chi2[np.arange(n), truth] = 3000 + rng.normal(size=n)
    faint = rng.random(n) < 1 / 3
    chi2[faint, 1] -= 5 + rng.random(faint.sum()) * 5
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), truth] += 3
    probability = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    z_true = np.where(truth == 2, 0.0, rng.uniform(0.1, 2, n))
    z = np.tile(z_true[:, None], (1, 3)) + rng.normal(scale=1e-4, size=(n, 3))
    evidence = ClassEvidence(CLASSES, chi2, z, np.full((n, 3), 1e-4), N_LAGS,
                             np.full(3, 10), np.full(n, 4000), probability)
    return evidence, np.array(CLASSES)[truth], z_true


def test_fit_learns_to_trust_the_classifier_and_penalise_freedom():
    evidence, truth, z = synthetic_evidence(3000, 0)
    model = ClassDecision().fit(evidence, truth, z)
    weights = dict(zip(WEIGHT_NAMES, model.weights_, strict=True))
    assert weights["classifier"] > 0.3
    test, truth_t, _ = synthetic_evidence(2000, 1)
    decided = model.predict(test)
    lowest = np.array(CLASSES)[np.argmin(test.chi2, axis=1)]
    assert np.mean(decided.spectype == truth_t) > np.mean(lowest == truth_t) + 0.1
    np.testing.assert_allclose(decided.probability.sum(axis=1), 1.0, rtol=1e-12)
    # calibrated: the mean probability of the decided class matches its accuracy
    top = decided.probability.max(axis=1)
    assert abs(top.mean() - np.mean(decided.spectype == truth_t)) < 0.03


def test_close_decisions_are_marked_and_missing_classes_never_win():
    evidence, truth, z = synthetic_evidence(500, 2)
    model = ClassDecision(min_probability=0.9).fit(evidence, truth, z)
    evidence.chi2[:10, 2] = np.nan                 # STAR not measured on these rows
    evidence.chi2[10:12] = np.nan                  # nothing measured
    decided = model.predict(evidence)
    assert np.all(decided.spectype[:10] != "STAR")
    assert np.all(decided.index[10:12] == -1) and np.all(decided.spectype[10:12] == "")
    assert not decided.close[10:12].any()
    top = decided.probability[np.arange(500), np.maximum(decided.index, 0)]
    measured = decided.index >= 0
    np.testing.assert_array_equal(decided.close[measured], top[measured] < 0.9)


def test_systematic_error_reaches_the_coverage():
    rng = np.random.default_rng(3)
    true_z = rng.uniform(0, 2, 4000)
    z = true_z + rng.normal(scale=3e-4, size=true_z.size) * (1 + true_z)
    zerr = np.full(z.size, 1e-4)                   # the statistical error alone is too small
    sigma = systematic_error(z, true_z, zerr)
    covered = np.abs(z - true_z) <= np.hypot(zerr, sigma * (1 + z))
    assert abs(covered.mean() - 0.68) < 0.01
    assert 2e-4 < sigma < 4e-4
    assert systematic_error(z, true_z, np.full(z.size, 1.0)) == 0.0   # already enough


def test_parameters_round_trip_and_bad_files_are_refused(tmp_path):
    evidence, truth, z = synthetic_evidence(300, 4)
    model = ClassDecision().fit(evidence, truth, z)
    path = write_decision(model, tmp_path / "decision.asdf")
    back = read_decision(path)
    np.testing.assert_array_equal(back.weights_, model.weights_)
    assert back.sigma_sys_ == pytest.approx(model.sigma_sys_)
    np.testing.assert_array_equal(back.predict(evidence).spectype,
                                  model.predict(evidence).spectype)
    tree = model.as_tree()
    tree["weights"]["classifier"] = -1.0
    asdf.AsdfFile({"class_decision": tree}).write_to(tmp_path / "negative.asdf")
    with pytest.raises(DecisionError, match="negative.asdf"):
        read_decision(tmp_path / "negative.asdf")
    with pytest.raises(DecisionError, match="no such class-decision file"):
        read_decision(tmp_path / "missing.asdf")


def test_shipped_decision_loads_with_every_weight():
    model = read_decision()
    assert model.weights_.shape == (len(WEIGHT_NAMES),)
    assert set(model.sigma_sys_) == set(CLASSES)


# -- in the pipeline -------------------------------------------------------------------------

CONFIG = {"stages": ["resample", "classify", "redshift-scan", "reconstruct"],
          "output": {"arrays": ["model"]}}


@pytest.fixture(scope="module")
def decided_and_scan_only():
    inputs = [str(DATA)]
    decided = run_pipeline(CONFIG, inputs)
    scan = run_pipeline({**CONFIG, "stages": [
        "resample", "classify", {"redshift-scan": {"decision": "none"}}, "reconstruct"]},
        inputs)
    return decided, scan


def test_every_class_best_is_in_the_archive(decided_and_scan_only):
    results = decided_and_scan_only[0].results
    measured = np.isfinite(np.asarray(results["Z"], float))
    for name in CLASSES:
        for column in (f"Z_{name}", f"CHI2_{name}", f"PROB_{name}"):   # ZERR: NaN if BAD_FIT
            assert np.all(np.isfinite(np.asarray(results[column], float)[measured])), column
        assert np.all(np.abs(np.asarray(results["Z_STAR"], float)[measured]) <= 0.0051)
        # a class's best is at least as good as any candidate of that class
        cand = np.where(np.asarray(results["CAND_SPECTYPE"]) == name,
                        np.asarray(results["CAND_CHI2"], float), np.inf)
        assert np.all(np.asarray(results[f"CHI2_{name}"])[measured]
                      <= np.nanmin(cand, axis=1)[measured] + 1e-6)


def test_the_answer_is_the_decided_class_with_its_own_fit(decided_and_scan_only):
    decided, scan = decided_and_scan_only
    results = decided.results
    measured = np.isfinite(np.asarray(results["Z"], float))
    spectype = np.asarray(results["SPECTYPE"])
    for row in np.flatnonzero(measured):
        name = spectype[row]
        assert results["Z"][row] == results[f"Z_{name}"][row]
        assert results["CHI2"][row] == results[f"CHI2_{name}"][row]
        probabilities = [results[f"PROB_{c}"][row] for c in CLASSES]
        assert CLASSES[int(np.argmax(probabilities))] == name
    # ZERR carries the systematic term: never below the statistical error
    stat = np.array([results[f"ZERR_{t}"][i] for i, t in enumerate(spectype) if t])
    assert np.all(np.asarray(results["ZERR"], float)[measured] >= stat - 1e-15)
    # the scan-only answer is kept, and is the whole answer with decision: none
    np.testing.assert_array_equal(results["SCAN_SPECTYPE"], scan.results["SPECTYPE"])
    np.testing.assert_array_equal(np.asarray(results["SCAN_Z"]), np.asarray(scan.results["Z"]))
    assert "PROB_STAR" not in scan.results.colnames
    # the reconstruction is the decided class's model
    switched = measured & (spectype != np.asarray(results["SCAN_SPECTYPE"]))
    model_d = decided.arrays.arrays["model"]
    model_s = scan.arrays.arrays["model"]
    same = ~switched & measured
    np.testing.assert_array_equal(model_d[same], model_s[same])
    assert not np.any(np.all(model_d[switched] == model_s[switched], axis=1))


def test_close_decisions_carry_the_bit_with_a_reason(decided_and_scan_only):
    results = decided_and_scan_only[0].results
    zwarn = np.asarray(results["ZWARN"])
    top = np.array([results[f"PROB_{t}"][i] if t else np.nan
                    for i, t in enumerate(results["SPECTYPE"])])
    close = np.isfinite(top) & (top < read_decision().min_probability)
    np.testing.assert_array_equal((zwarn & int(ZWarn.CLASS_UNCERTAIN)) != 0, close)
    for row in np.flatnonzero(close):
        assert "class decision close" in results["ZWARN_REASON"][row]


def test_a_bad_decision_file_is_a_config_error(tmp_path):
    (tmp_path / "bad.asdf").write_bytes(b"not asdf")
    config = {"stages": ["resample", {"redshift-scan": {"decision": str(tmp_path / "bad.asdf")}}]}
    with pytest.raises(ConfigError, match="bad.asdf"):
        run_pipeline(config, [str(DATA / "spec-0266-51602-0013.fits")])
