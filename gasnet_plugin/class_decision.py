"""The class decision: one SPECTYPE, Z and ZERR per spectrum from all the evidence.

GaSNet-III picks the class whose model reaches the lowest χ². On faint spectra that rule
fails in a known way: the QSO model scans ~7,800 redshifts with 10 free amplitudes, the
STAR model 44, and the lowest χ² over many trials is lower by chance, so faint stars come
out QSO. The decision compares classes by evidence instead. For spectrum ``i`` and class
``c`` (every class's best solution, :class:`~gasnet_plugin.engines.protocol.ClassBest`)::

    s_ic = − a · Δ_ic / 2 − b · ln(1 + Δ_ic / 2)         fit: Δ_ic = (χ²_ic − min_c χ²_ic) / r_i,
                                                         the χ² difference in units of the
                                                         best fit's reduced χ² r_i ≥ 1;
                                                         linear (Gaussian evidence) and
                                                         saturating (model mismatch of
                                                         bright spectra) parts
           − g · ln(n_lags_c) − k_c · ln(N_i) / 2        Occam: look-elsewhere over the
                                                         class's redshift trials, and BIC's
                                                         price of its k_c coefficients
           + w · ln P_ic                                 the classifier's calibrated
                                                         probability (a prior per spectrum)
           − u · min(d_ic², 25)                          disagreement with the regressor:
                                                         d = |ln(1+z_c) − ln(1+CNN_Z)| / σ

    PROB_c = softmax_c(s_ic)

``r_i = max(χ²_best / (N_i − k), 1)`` guards against noise that the ivar underestimates,
``N_i`` is the number of valid pixels. The weights ``a, b, g, w, u ≥ 0`` are fitted by
maximum likelihood (multinomial logistic) on labelled spectra
(:meth:`ClassDecision.fit`), so ``PROB_<CLASS>`` are calibrated posteriors on that set.
Terms whose input is missing (no classifier, no regressor) are left out.

The decided class gives ``Z``; its error is the statistical ``ZERR`` of the χ² curvature
combined with a per-class systematic term fitted so that 68 % of the fitting set lie
within 1σ: ``ZERR² = ZERR_stat² + (σ_c · (1 + z))²``.

A decision is *close* when the decided class's probability is below
``min_probability``: the redshift-scan stage then sets the ``CLASS_UNCERTAIN`` ZWARN bit.

The estimator has scikit-learn's shape: hyper-parameters in ``__init__``, :meth:`fit`
learns ``weights_`` and ``sigma_sys_``, :meth:`predict` applies them; parameters are saved
as ASDF (schema ``class_decision-1.0.0``) and the shipped ones are
``gasnet_plugin/data/class-decision.asdf``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

WEIGHT_NAMES = ("chi2", "chi2_log", "occam", "classifier", "regressor")
"""The decision's weights, in order: a, b, g, w, u of the module docstring."""
PROB_FLOOR = 1e-6
"""Classifier probabilities are clipped here before the logarithm."""
ZPULL_CAP = 25.0
"""Cap of the squared regressor disagreement d² (a wrong regressor costs a bounded amount)."""
DEFAULT_DECISION = "class-decision.asdf"
"""File name of the shipped decision parameters in ``gasnet_plugin/data``."""


class DecisionError(ValueError):
    """A decision parameters file is missing or malformed; the message names the file."""


@dataclass
class ClassEvidence:
    """What the decision weighs for ``B`` spectra and ``C`` classes.

    Attributes
    ----------
    classes
        The ``C`` class names, in the order of the columns below.
    chi2, z, zerr
        ``(B, C)`` every class's best χ², redshift and statistical 1σ error.
    n_lags, n_coef
        ``(C,)`` redshift trials and free coefficients of each class's fit.
    n_valid
        ``(B,)`` valid pixels of each spectrum.
    probability
        ``(B, C)`` the classifier's calibrated probabilities, or ``None``.
    cnn_z, cnn_zerr
        ``(B,)`` the regressor's redshift and 1σ error, or ``None``.
    """

    classes: list[str]
    chi2: np.ndarray
    z: np.ndarray
    zerr: np.ndarray
    n_lags: np.ndarray
    n_coef: np.ndarray
    n_valid: np.ndarray
    probability: np.ndarray | None = None
    cnn_z: np.ndarray | None = None
    cnn_zerr: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> ClassEvidence:
        """The evidence of ``rows`` (indices or a mask)."""
        def pick(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[rows]

        return ClassEvidence(self.classes, self.chi2[rows], self.z[rows], self.zerr[rows],
                             self.n_lags, self.n_coef, self.n_valid[rows],
                             pick(self.probability), pick(self.cnn_z), pick(self.cnn_zerr))

    def features(self) -> np.ndarray:
        """``(B, C, 5)`` the terms the weights multiply (0 where an input is missing or a
        class was not measured); the score is ``features @ weights`` minus the fixed BIC
        term."""
        n_rows, n_classes = self.chi2.shape
        chi2 = np.where(np.isfinite(self.chi2), self.chi2, np.inf)
        best = chi2.min(axis=1, keepdims=True)
        k_best = self.n_coef[np.argmin(chi2, axis=1)][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            rchi2 = np.where(np.isfinite(best), best / np.maximum(self.n_valid[:, None] - k_best,
                                                                  1), 1.0)
            delta = np.where(np.isfinite(chi2), (chi2 - best) / np.maximum(rchi2, 1.0), 0.0)
        out = np.zeros((n_rows, n_classes, len(WEIGHT_NAMES)))
        delta = np.where(np.isfinite(best), delta, 0.0)
        out[:, :, 0] = -0.5 * delta
        out[:, :, 1] = -np.log1p(0.5 * delta)
        out[:, :, 2] = -np.log(np.asarray(self.n_lags, dtype=float))[None, :]
        if self.probability is not None:
            p = np.where(np.isfinite(self.probability), self.probability, 1.0 / n_classes)
            out[:, :, 3] = np.log(np.clip(p, PROB_FLOOR, 1.0))
        if self.cnn_z is not None and self.cnn_zerr is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                sigma2 = (self.zerr / (1 + self.z)) ** 2 \
                    + (self.cnn_zerr / (1 + self.cnn_z))[:, None] ** 2
                pull2 = (np.log1p(self.z) - np.log1p(self.cnn_z)[:, None]) ** 2 / sigma2
            out[:, :, 4] = -np.where(np.isfinite(pull2), np.minimum(pull2, ZPULL_CAP), 0.0)
        return out

    def occam_bic(self) -> np.ndarray:
        """``(B, C)`` the fixed BIC price ``k_c ln(N_i) / 2`` of each class's coefficients."""
        return 0.5 * self.n_coef[None, :] * np.log(np.maximum(self.n_valid, 2))[:, None]


@dataclass
class Decision:
    """The decided class, redshift and posterior for ``B`` spectra.

    Attributes
    ----------
    index
        ``(B,)`` int64 index of the decided class (into ``classes``; −1 if no class was
        measured).
    spectype
        ``(B,)`` decided class names (``""`` where none).
    probability
        ``(B, C)`` posterior probability of each class.
    z, zerr
        ``(B,)`` the decided class's redshift and its error, systematic term included.
    close
        ``(B,)`` bool: the decided class's probability is below ``min_probability``.
    """

    index: np.ndarray
    spectype: np.ndarray
    probability: np.ndarray
    z: np.ndarray
    zerr: np.ndarray
    close: np.ndarray


@dataclass
class ClassDecision:
    """Weighs per-class χ², Occam terms, the classifier and the regressor into one class.

    Parameters
    ----------
    min_probability
        A decided class less probable than this is *close* (``CLASS_UNCERTAIN``).
    l2
        Ridge penalty on the weights while fitting (pulls them towards ``prior``).
    prior
        Weights the ridge pulls towards: a = 1 (χ² as evidence), b = 0, g = 1 (one unit
        of ln n_lags, the look-elsewhere order of magnitude), w = 1 (Bayes' prior), u = 0.
    coverage
        Fraction within 1σ that the systematic term is fitted to.
    min_calibration_rows
        A class decided for fewer calibration spectra than this gets the systematic
        term fitted on all classes together.
    """

    min_probability: float = 0.9
    l2: float = 1.0
    prior: tuple[float, ...] = (1.0, 0.0, 1.0, 1.0, 0.0)
    coverage: float = 0.68
    min_calibration_rows: int = 20
    weights_: np.ndarray | None = None
    sigma_sys_: dict[str, float] = field(default_factory=dict)
    provenance_: dict[str, Any] = field(default_factory=dict)

    # -- applying ------------------------------------------------------------------------

    def scores(self, evidence: ClassEvidence) -> np.ndarray:
        """``(B, C)`` the log-evidence score of each class (−inf where not measured)."""
        if self.weights_ is None:
            raise RuntimeError("ClassDecision: fit() or read_decision() first")
        s = evidence.features() @ self.weights_ - evidence.occam_bic()
        return np.where(np.isfinite(evidence.chi2), s, -np.inf)

    def predict_proba(self, evidence: ClassEvidence) -> np.ndarray:
        """``(B, C)`` posterior class probabilities (NaN rows where no class was measured)."""
        s = self.scores(evidence)
        top = s.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            e = np.exp(s - np.where(np.isfinite(top), top, 0.0))
            return e / e.sum(axis=1, keepdims=True)

    def predict(self, evidence: ClassEvidence) -> Decision:
        """Decide class, redshift and error for every spectrum."""
        probability = self.predict_proba(evidence)
        measured = np.isfinite(probability).all(axis=1)
        index = np.where(measured, np.argmax(np.where(measured[:, None], probability, 0), 1),
                         -1)
        rows = np.arange(index.size)
        pick = np.maximum(index, 0)
        z = np.where(measured, evidence.z[rows, pick], np.nan)
        zerr_stat = np.where(measured, evidence.zerr[rows, pick], np.nan)
        sigma = np.array([self.sigma_sys_.get(c, 0.0) for c in evidence.classes])[pick]
        zerr = np.sqrt(zerr_stat**2 + (sigma * (1 + z)) ** 2)
        names = np.asarray(evidence.classes)
        spectype = np.where(measured, names[pick], "")
        with np.errstate(invalid="ignore"):
            close = measured & (probability[rows, pick] < self.min_probability)
        return Decision(index, spectype, probability, z, zerr, close)

    # -- fitting -------------------------------------------------------------------------

    def fit(self, evidence: ClassEvidence, true_class: np.ndarray, true_z: np.ndarray,
            sample_weight: np.ndarray | None = None,
            calibrate: np.ndarray | None = None,
            label_zerr: np.ndarray | None = None) -> ClassDecision:
        """Fit the weights (multinomial maximum likelihood with a ridge towards ``prior``)
        and then the per-class systematic redshift errors.

        Parameters
        ----------
        evidence
            The fitting set's evidence (``B`` spectra).
        true_class
            ``(B,)`` labelled classes (rows whose class is not in ``evidence.classes`` or
            that have no measurement are ignored).
        true_z
            ``(B,)`` labelled redshifts.
        sample_weight
            ``(B,)`` weights of the rows in the likelihood (default 1).
        calibrate
            ``(B,)`` bool: the rows the systematic errors are fitted on (default all).
            Fit them on real spectra only: degraded or mock copies carry their own noise.
        label_zerr
            ``(B,)`` 1σ errors of the labelled redshifts (NaN: unknown, taken as 0): the
            systematic term covers what is left after them.
        """
        from scipy.optimize import minimize

        classes = list(evidence.classes)
        target = np.array([classes.index(c) if c in classes else -1 for c in true_class])
        use = (target >= 0) & np.isfinite(evidence.chi2).all(axis=1)
        features = evidence.features()[use]
        fixed = -evidence.occam_bic()[use]
        y = target[use]
        weight = np.ones(use.sum()) if sample_weight is None else sample_weight[use]
        prior = np.asarray(self.prior, dtype=float)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            s = features @ theta + fixed
            top = s.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
            p = np.exp(s - log_norm[:, None])
            nll = np.sum(weight * (log_norm - s[np.arange(y.size), y]))
            onehot = np.zeros_like(p)
            onehot[np.arange(y.size), y] = 1
            grad = np.einsum("b,bc,bck->k", weight, p - onehot, features)
            penalty = self.l2 * np.sum((theta - prior) ** 2)
            return (nll + penalty) / weight.sum(), (grad + 2 * self.l2 * (theta - prior)) \
                / weight.sum()

        solution = minimize(loss, prior.copy(), jac=True, method="L-BFGS-B",
                            bounds=[(0.0, None)] * len(WEIGHT_NAMES))
        self.weights_ = solution.x
        self.sigma_sys_ = {}
        decided = self.predict(evidence)
        on = use if calibrate is None else use & np.asarray(calibrate, bool)
        known = np.zeros(use.size) if label_zerr is None else np.nan_to_num(
            np.asarray(label_zerr, float))
        rows_all = np.arange(use.size)
        zerr = np.hypot(evidence.zerr[rows_all, np.maximum(decided.index, 0)], known)
        true_z = np.asarray(true_z, float)
        pooled = systematic_error(decided.z[on], true_z[on], zerr[on], self.coverage)
        for c, name in enumerate(classes):
            rows = on & (decided.index == c)
            self.sigma_sys_[name] = pooled if rows.sum() < self.min_calibration_rows \
                else systematic_error(decided.z[rows], true_z[rows], zerr[rows],
                                      self.coverage)
        self.provenance_ = {"created": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"), "n_spectra": int(use.sum())}
        return self

    # -- files ---------------------------------------------------------------------------

    def as_tree(self) -> dict[str, Any]:
        """The parameters as an ASDF tree (schema ``class_decision-1.0.0``)."""
        if self.weights_ is None:
            raise RuntimeError("ClassDecision: nothing fitted to write")
        return {"weights": {n: float(v) for n, v in zip(WEIGHT_NAMES, self.weights_,
                                                        strict=True)},
                "sigma_sys": {k: float(v) for k, v in self.sigma_sys_.items()},
                "min_probability": float(self.min_probability),
                "coverage": float(self.coverage),
                "provenance": dict(self.provenance_)}


def systematic_error(z: np.ndarray, true_z: np.ndarray, zerr: np.ndarray,
                     coverage: float = 0.68) -> float:
    """The smallest ``σ ≥ 0`` with ``|z − true_z| ≤ √(zerr² + (σ (1 + z))²)`` for a
    fraction ``coverage`` of the rows (0 if none are given or the statistical error is
    already enough; rows that can never be covered count as misses)."""
    ok = np.isfinite(z) & np.isfinite(true_z)
    if not ok.any():
        return 0.0
    z, true_z = z[ok], true_z[ok]
    zerr = np.where(np.isfinite(zerr[ok]), zerr[ok], 0.0)
    # the σ at which each row becomes covered, then the coverage quantile of those
    need = np.sqrt(np.maximum((z - true_z) ** 2 - zerr**2, 0.0)) / (1 + z)
    return float(np.quantile(need, coverage, method="higher")) if need.size else 0.0


# -- parameters files ------------------------------------------------------------------------


def default_decision_path() -> Path:
    """The shipped decision parameters."""
    return Path(str(resources.files("gasnet_plugin.data").joinpath(DEFAULT_DECISION)))


def write_decision(decision: ClassDecision, path: str | os.PathLike[str]) -> Path:
    """Validate against the ``class_decision`` schema and write (atomically)."""
    from gasnet_plugin.io.asdf_extension import DECISION_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import write_validated

    return write_validated({"class_decision": decision.as_tree()}, path, DECISION_SCHEMA_URI,
                           DecisionError, "decision parameters")


def read_decision(path: str | os.PathLike[str] = "default") -> ClassDecision:
    """Read and validate a decision parameters file (``"default"``: the shipped one)."""
    from gasnet_plugin.io.asdf_extension import DECISION_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import read_validated

    path = default_decision_path() if str(path) == "default" else Path(path)
    if not path.is_file():
        raise DecisionError(f"{path}: no such class-decision file")

    def extract(af: Any) -> ClassDecision:
        tree = af["class_decision"]
        weights = np.array([float(tree["weights"][n]) for n in WEIGHT_NAMES])
        sigma = {str(k): float(v) for k, v in tree["sigma_sys"].items()}
        if not np.all(np.isfinite(weights)) or not all(np.isfinite(list(sigma.values()))):
            raise DecisionError(f"{path}: non-finite decision weights or systematic errors")
        return ClassDecision(min_probability=float(tree["min_probability"]),
                             coverage=float(tree["coverage"]), weights_=weights,
                             sigma_sys_=sigma, provenance_=dict(tree["provenance"]))

    return read_validated(path, DECISION_SCHEMA_URI, extract, DecisionError,
                          "gasnet class-decision file")


def evidence_from_engine(class_best: dict[str, Any], n_valid: np.ndarray,
                         probability: dict[str, np.ndarray] | None = None,
                         cnn_z: np.ndarray | None = None,
                         cnn_zerr: np.ndarray | None = None) -> ClassEvidence:
    """The evidence of an engine's per-class bests
    (:attr:`~gasnet_plugin.engines.protocol.EngineResult.class_best`), with the
    classifier's probabilities (label → ``(B,)``; classes it lacks count as unknown) and
    the regressor's redshift where given."""
    classes = list(class_best)
    bests = [class_best[c] for c in classes]
    prob = None
    if probability:
        n_rows = bests[0].z.size
        prob = np.stack([np.asarray(probability.get(c, np.full(n_rows, np.nan)), float)
                         for c in classes], axis=1)
    return ClassEvidence(
        classes=classes,
        chi2=np.stack([b.chi2 for b in bests], axis=1),
        z=np.stack([b.z for b in bests], axis=1),
        zerr=np.stack([b.zerr for b in bests], axis=1),
        n_lags=np.array([b.n_lags for b in bests]),
        n_coef=np.array([b.n_coef for b in bests]),
        n_valid=np.asarray(n_valid),
        probability=prob,
        cnn_z=None if cnn_z is None else np.asarray(cnn_z, float),
        cnn_zerr=None if cnn_zerr is None else np.asarray(cnn_zerr, float))
