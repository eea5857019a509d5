"""The class decision on real spectra, cross-validated across surveys; faint copies for the fit.

What it measures, and how it is split:

* **Which spectra.** The labelled real spectra of ``../shared/data/labels.csv``. The shipped
  GaSNet-II classifier was trained on half of them (``split_half``, seed 0), so its
  probabilities are only honest on the other half: the decision is fitted and scored on
  that *classifier-held-out half* (167 spectra). Figures on all 333 are printed too, marked.
* **Faint copies** (for the fit; reported apart, never mixed into the real figures). Every
  held-out spectrum is degraded ``--copies`` times to the noise of a real faint BOSS
  spectrum: scaled to the donor's flux level times a factor drawn in [0.3, 1.5], the
  donor's residual from its own fit (its real noise, masks and sky residuals) added, the
  ivars combined. Donors are the BOSS QSO-target spectra (their residuals only).
* **Cross-validation by survey.** SDSS, LAMOST and DESI in turn: the decision is fitted on
  the real held-out spectra and faint copies of the other two surveys and scored on the
  left-out survey's real spectra (and, apart, on its faint copies).

Methods compared on the same spectra: the decision, the scan alone (lowest χ² of the
class bests, GaSNet-III's rule on exact χ²), the CNN alone (classifier class, the scan's
best z of that class), and with ``--redrock`` the ``redrock`` engine (Redrock from the
``[redrock]`` extra, templates from ``../shared/data/templates``).

    python benchmarks/bench_decision.py [--copies 3] [--redrock] [--write-default]

``--write-default`` fits the decision on every held-out real spectrum and faint copy and
writes ``gasnet_plugin/data/class-decision.asdf``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from _common import REPO, machine, split_half, table
from bench_accuracy import labelled_real_spectra

from gasnet_plugin.class_decision import (
    WEIGHT_NAMES,
    ClassDecision,
    ClassEvidence,
    evidence_from_engine,
    write_decision,
)
from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.metrics import class_accuracy, redshift_metrics
from gasnet_plugin.models.gasnet2 import CNNPredictor, load_cnn_model

CLASSES = ["GALAXY", "QSO", "STAR"]
SURVEYS = ["SDSS", "LAMOST", "DESI"]


@dataclass
class Measured:
    """Evidence and labels of a set of spectra."""

    evidence: ClassEvidence
    cls: np.ndarray
    z: np.ndarray
    survey: np.ndarray
    cnn_class: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    real: np.ndarray
    zerr: np.ndarray


def measure(engine: Gasnet3Engine, classifier: CNNPredictor, regressor: CNNPredictor,
            flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray,
            ) -> tuple[ClassEvidence, np.ndarray, dict]:
    """Evidence, CNN class and the engine's per-class bests of spectra on the grid."""
    result = engine.measure(EngineInput(flux, ivar, loglam))
    labels = classifier.classify(flux, ivar)
    prediction = regressor.redshift(flux, ivar)
    probability = {label: labels.probabilities[:, i] for i, label in enumerate(labels.labels)}
    evidence = evidence_from_engine(result.class_best, (ivar > 0).sum(axis=1), probability,
                                    prediction.z, prediction.z_err)
    return evidence, labels.best.astype(str), result.class_best


def degrade(flux: np.ndarray, ivar: np.ndarray, donor_ivar: np.ndarray,
            donor_spikes: np.ndarray, copies: int, rng: np.random.Generator,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``copies`` faint versions of each spectrum ``(B, P)`` with the noise of real faint
    spectra.

    Each copy takes a random donor and a target S/N: the source is scaled so that its
    median S/N per pixel under the donor's ivar is the donor's own times a factor in
    [0.5, 2] (log-uniform); Gaussian noise from the donor's ivar and the donor's residual
    spikes (sky-line residuals, cosmic rays: ``donor_spikes``) are added; the ivar is the
    donor's combined with the scaled source's, 0 where either has no data. Returns flux,
    ivar ``(B·copies, P)`` and the source index of each copy."""
    source = np.repeat(np.arange(flux.shape[0]), copies)
    donor = rng.integers(0, donor_ivar.shape[0], source.size)
    factor = np.exp(rng.uniform(np.log(0.5), np.log(2.0), source.size))
    valid = (ivar[source] > 0) & (donor_ivar[donor] > 0)
    sigma = np.where(valid, 1.0 / np.sqrt(np.where(valid, donor_ivar[donor], 1.0)), 0.0)
    # median S/N of the unscaled source under the donor's noise, and the donor's own
    snr_source = np.nanmedian(np.where(valid, np.abs(flux[source]) / np.where(
        valid, sigma, 1.0), np.nan), axis=1)
    scale = (factor * DONOR_SNR / np.maximum(snr_source, 1e-30))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        new_ivar = np.where(valid, 1.0 / (1.0 / donor_ivar[donor]
                                          + scale**2 / ivar[source]), 0.0)
    noise = rng.normal(size=sigma.shape) * sigma + donor_spikes[donor]
    new_flux = np.where(valid, scale * flux[source] + noise, 0.0)
    return new_flux.astype(np.float32), new_ivar.astype(np.float32), source


DONOR_SNR = 1.0
"""Set by :func:`main`: the donors' median S/N per pixel."""


def residual_spikes(residual: np.ndarray, ivar: np.ndarray, clip: float = 4.0) -> np.ndarray:
    """The sharp part of fit residuals ``(B, P)``: residual minus its 31-pixel running
    median, kept only where it exceeds ``clip`` σ (sky-line residuals, cosmic rays), else 0.
    Broad mismatch of the donor's own fit (its emission lines) is not carried over."""
    from scipy.ndimage import median_filter

    sharp = residual - median_filter(residual, size=(1, 31), mode="nearest")
    return np.where(np.abs(sharp) * np.sqrt(ivar) > clip, sharp, 0.0)


def scan_only(ev: ClassEvidence) -> np.ndarray:
    """Index of the lowest-χ² class (GaSNet-III's rule on the exact χ²)."""
    return np.argmin(np.where(np.isfinite(ev.chi2), ev.chi2, np.inf), axis=1)


def scores(name: str, method: str, truth: np.ndarray, true_z: np.ndarray,
           pred: np.ndarray, z: np.ndarray, zerr: np.ndarray | None,
           label_zerr: np.ndarray) -> tuple:
    """One table row; "in 1σ" counts |Δz| ≤ √(ZERR² + label error²)."""
    m = redshift_metrics(z, true_z, None if zerr is None else np.hypot(zerr, label_zerr))
    stars = truth == "STAR"
    return (name, method, m.n, f"{class_accuracy(list(truth), list(pred)):.3f}",
            f"{class_accuracy(list(truth[stars]), list(pred[stars])):.3f}"
            if stars.any() else "–",
            f"{m.gf[0.0033]:.3f}", f"{m.gf[0.001]:.3f}", f"{m.mad:.1e}",
            f"{m.catastrophic[0.01]:.3f}",
            "–" if zerr is None else f"{m.within_1sigma:.2f}")


HEADER = ("set", "method", "n", "class acc", "star acc", "GF<.0033", "GF<.001", "MAD",
          "cat>.01", "in 1σ")


def report(name: str, data: Measured, rows_of: dict[str, np.ndarray], out: list,
           decided: tuple[np.ndarray, np.ndarray, np.ndarray],
           extra: dict[str, tuple] | None = None) -> None:
    """Rows of the comparison table for ``data`` overall and per class."""
    ev = data.evidence
    names = np.array(ev.classes)
    rows_all = np.arange(len(data.cls))
    scan = scan_only(ev)
    cnn = np.array([ev.classes.index(c) for c in data.cnn_class])
    methods = {
        "decision": decided,
        "scan only": (names[scan], ev.z[rows_all, scan], ev.zerr[rows_all, scan]),
        "CNN class + its z": (names[cnn], ev.z[rows_all, cnn], ev.zerr[rows_all, cnn]),
    }
    methods.update(extra or {})
    for subset, rows in rows_of.items():
        if rows.size == 0:
            continue
        for method, (pred, z, zerr) in methods.items():
            out.append(scores(f"{name} {subset}", method, data.cls[rows], data.z[rows],
                              np.asarray(pred)[rows], np.asarray(z)[rows],
                              None if zerr is None else np.asarray(zerr)[rows],
                              data.zerr[rows]))


def subsets(cls: np.ndarray) -> dict[str, np.ndarray]:
    out = {"ALL": np.arange(cls.size)}
    out.update({c: np.flatnonzero(cls == c) for c in CLASSES})
    return out


def concat(a: Measured, b: Measured) -> Measured:
    def cat(x, y):
        return None if x is None else np.concatenate([x, y])

    ea, eb = a.evidence, b.evidence
    ev = ClassEvidence(ea.classes, cat(ea.chi2, eb.chi2), cat(ea.z, eb.z),
                       cat(ea.zerr, eb.zerr), ea.n_lags, ea.n_coef,
                       cat(ea.n_valid, eb.n_valid), cat(ea.probability, eb.probability),
                       cat(ea.cnn_z, eb.cnn_z), cat(ea.cnn_zerr, eb.cnn_zerr))
    return Measured(ev, cat(a.cls, b.cls), cat(a.z, b.z), cat(a.survey, b.survey),
                    cat(a.cnn_class, b.cnn_class), cat(a.flux, b.flux), cat(a.ivar, b.ivar),
                    cat(a.real, b.real), cat(a.zerr, b.zerr))


def take(m: Measured, rows: np.ndarray) -> Measured:
    return Measured(m.evidence.subset(rows), m.cls[rows], m.z[rows], m.survey[rows],
                    m.cnn_class[rows], m.flux[rows], m.ivar[rows], m.real[rows],
                    m.zerr[rows])


def fit_weights(m: Measured) -> np.ndarray:
    """Likelihood weights of a fitting set: each class weighs the same in total (the class
    mix differs between surveys), and spectra with little data (under 10 % of the grid
    valid, flagged LITTLE_DATA) weigh nothing."""
    weight = np.zeros(m.cls.size)
    usable = m.evidence.n_valid >= 0.1 * m.flux.shape[1]
    for c in CLASSES:
        rows = usable & (m.cls == c)
        weight[rows] = usable.sum() / len(CLASSES) / max(rows.sum(), 1)
    return weight


def decide(model: ClassDecision, m: Measured) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = model.predict(m.evidence)
    return d.spectype, d.z, d.zerr


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=3, help="faint copies per spectrum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redrock", action="store_true", help="also run the redrock engine")
    parser.add_argument("--write-default", action="store_true")
    parser.add_argument("--dump", help="write the fitting set's features here (.npz)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)

    data = labelled_real_spectra()
    label_zerr = np.nan_to_num(np.asarray(
        data.archive.results["SURVEY_ZERR"][data.rows], dtype=float))   # unknown: 0
    loglam = data.archive.arrays.loglam
    flux, ivar = data.flux.astype(np.float32), data.ivar.astype(np.float32)
    trained, _ = split_half(data.cls, 0)          # the classifier's training half
    held = ~trained

    engine = Gasnet3Engine()
    engine.setup()
    classifier = CNNPredictor(load_cnn_model("default", "classify"))
    regressor = CNNPredictor(load_cnn_model("default", "redshift"))

    t0 = time.perf_counter()
    evidence, cnn_class, class_best = measure(engine, classifier, regressor, flux, ivar, loglam)
    real = Measured(evidence, data.cls, data.z, data.survey, cnn_class, flux, ivar,
                    np.ones(data.cls.size, dtype=bool), label_zerr)
    seconds = time.perf_counter() - t0

    # noise donors: the BOSS QSO-target spectra (their ivar, masks and residual spikes)
    global DONOR_SNR
    donors = np.flatnonzero((data.source == "picca") & (data.survey == "SDSS"))
    residual = np.where(ivar[donors] > 0, flux[donors] - class_best["QSO"].model[donors], 0.0)
    snr_d = np.nanmedian(np.where(ivar[donors] > 0, np.abs(flux[donors])
                                  * np.sqrt(ivar[donors]), np.nan), axis=1)
    DONOR_SNR = float(np.median(snr_d))
    faint_flux, faint_ivar, source = degrade(flux[held], ivar[held], ivar[donors],
                                             residual_spikes(residual, ivar[donors]),
                                             args.copies, rng)
    held_rows = np.flatnonzero(held)[source]
    ev_f, cnn_f, _ = measure(engine, classifier, regressor, faint_flux, faint_ivar, loglam)
    faint = Measured(ev_f, data.cls[held_rows], data.z[held_rows], data.survey[held_rows],
                     cnn_f, faint_flux, faint_ivar, np.zeros(source.size, dtype=bool),
                     label_zerr[held_rows])
    snr = np.median(np.where(faint_ivar > 0, np.abs(faint_flux) * np.sqrt(faint_ivar), np.nan),
                    axis=1)

    print(f"machine: {machine()}")
    print(f"{len(data.cls)} labelled real spectra; classifier-held-out half: {held.sum()} "
          f"({', '.join(f'{c} {np.sum(data.cls[held] == c)}' for c in CLASSES)}); "
          f"{faint.cls.size} faint copies (median S/N per pixel {np.nanmedian(snr):.2f}; "
          f"donors {np.median(snr_d):.2f}); engine + CNNs {seconds / len(data.cls) * 1e3:.1f} "
          "ms per spectrum")

    held_real = take(real, np.flatnonzero(held))
    # cross-validation by survey: fit on the other surveys' real + faint, score the left out
    cv_real = {k: np.empty(held_real.cls.size, dtype=object) for k in ("spectype",)}
    cv_z = np.full(held_real.cls.size, np.nan)
    cv_zerr = np.full(held_real.cls.size, np.nan)
    cv_f_type = np.empty(faint.cls.size, dtype=object)
    cv_f_z = np.full(faint.cls.size, np.nan)
    cv_f_zerr = np.full(faint.cls.size, np.nan)
    fitted = {}
    for survey in SURVEYS:
        train = concat(take(held_real, np.flatnonzero(held_real.survey != survey)),
                       take(faint, np.flatnonzero(faint.survey != survey)))
        model = ClassDecision().fit(train.evidence, train.cls, train.z,
                                    sample_weight=fit_weights(train), calibrate=train.real,
                                    label_zerr=train.zerr)
        fitted[survey] = model
        test = np.flatnonzero(held_real.survey == survey)
        t, z, e = decide(model, take(held_real, test))
        cv_real["spectype"][test], cv_z[test], cv_zerr[test] = t, z, e
        test_f = np.flatnonzero(faint.survey == survey)
        t, z, e = decide(model, take(faint, test_f))
        cv_f_type[test_f], cv_f_z[test_f], cv_f_zerr[test_f] = t, z, e
    print(f"\nweights fitted per left-out survey ({', '.join(WEIGHT_NAMES)}; "
          "sigma_sys per class):")
    for survey, model in fitted.items():
        print(f"  without {survey:6s}: {np.round(model.weights_, 3)}  "
              f"{ {k: float(f'{v:.2g}') for k, v in model.sigma_sys_.items()} }")

    extra_real, extra_faint = {}, {}
    if args.redrock:
        extra_real["redrock"], extra_faint["redrock"] = run_redrock(held_real, faint, loglam)

    rows: list[tuple] = []
    report("real held-out", held_real, subsets(held_real.cls), rows,
           (cv_real["spectype"].astype(str), cv_z, cv_zerr), extra_real)
    report("faint copies", faint, subsets(faint.cls), rows,
           (cv_f_type.astype(str), cv_f_z, cv_f_zerr), extra_faint)
    for survey in SURVEYS:
        rows_s = np.flatnonzero(held_real.survey == survey)
        report(f"real {survey}", take(held_real, rows_s), {"ALL": np.arange(rows_s.size)},
               rows, (cv_real["spectype"].astype(str)[rows_s], cv_z[rows_s], cv_zerr[rows_s]))
    print("\nleave-one-survey-out (each row scored by a decision fitted without its survey)")
    print(table(rows, HEADER))

    final = concat(held_real, faint)
    model = ClassDecision().fit(final.evidence, final.cls, final.z,
                                sample_weight=fit_weights(final), calibrate=final.real,
                                label_zerr=final.zerr)
    t0 = time.perf_counter()
    for _ in range(20):
        model.predict(final.evidence)
    cost = (time.perf_counter() - t0) / 20 / final.cls.size
    print(f"\nfitted on all held-out real + faint ({final.cls.size}): weights "
          f"{np.round(model.weights_, 3)}, sigma_sys {model.sigma_sys_}; decision cost "
          f"{cost * 1e3:.4f} ms per spectrum")
    # all 333 real spectra with that decision: the classifier saw half of them
    rows_all: list[tuple] = []
    report("all real (classifier saw half)", real, subsets(real.cls), rows_all,
           decide(model, real))
    print(table(rows_all, HEADER))
    if args.dump:
        np.savez(args.dump, features=final.evidence.features(), chi2=final.evidence.chi2,
                 cls=final.cls.astype(str), real=final.real, survey=final.survey.astype(str),
                 z=final.z, zc=final.evidence.z, nvalid=final.evidence.n_valid,
                 snr=np.nanmedian(np.where(final.ivar > 0, np.abs(final.flux)
                                           * np.sqrt(final.ivar), np.nan), axis=1))
    if args.write_default:
        model.provenance_.update({
            "fitted_on": f"{held_real.cls.size} real spectra of ../shared/data labels.csv "
                         "(the half the shipped classifier never saw) and "
                         f"{faint.cls.size} faint copies of them with BOSS noise",
            "script": "benchmarks/bench_decision.py --write-default"})
        path = write_decision(model, REPO / "gasnet_plugin" / "data" / "class-decision.asdf")
        print(f"wrote {path}")


def run_redrock(held_real: Measured, faint: Measured, loglam: np.ndarray,
                ) -> tuple[tuple, tuple]:
    """The redrock engine's SPECTYPE, Z, ZERR on both sets (one thread)."""
    from bench_engines import template_folder

    from gasnet_plugin.engines.redrock import RedrockEngine

    engine = RedrockEngine(templates=str(template_folder()))
    engine.setup()
    out = []
    for m in (held_real, faint):
        t0 = time.perf_counter()
        cols = engine.measure(EngineInput(m.flux, m.ivar, loglam)).columns
        print(f"redrock: {(time.perf_counter() - t0) / m.cls.size * 1e3:.0f} ms per spectrum")
        out.append((np.asarray(cols["SPECTYPE"]).astype(str), np.asarray(cols["Z"]),
                    np.asarray(cols["ZERR"])))
    return out[0], out[1]


if __name__ == "__main__":
    main()
