"""SUBTYPE against the survey labels, and what the subtype stage costs.

Runs the default pipeline (``example_configs/default.yaml``) on every labelled real
spectrum of ``../shared/data`` and compares SUBTYPE with the labels' subclasses, per
class, on the spectra whose decided class is the labelled one:

* galaxies with SDSS labels (DESI's Redrock has no such subclasses): SDSS's AGN /
  STARBURST / STARFORMING / "" (BROADLINE counted apart);
* QSOs: BROADLINE present or not;
* stars: the spectral-type letter (O B A F G K M) of SUBTYPE against the label's (LAMOST
  and SDSS types). The learned ``star-type`` classifier of docs/gasnet2.rst is scored
  beside SUBTYPE on the same held-out stars by ``bench_cnn.py`` (with ``--swap-halves``
  for the other fold).

Nothing here is fitted: the rules are SDSS's and the templates SDSS's, so every spectrum is
a test spectrum. The cost is the subtype stage's time per spectrum on one thread (from
the run's stage timers).

    python benchmarks/bench_subtype.py
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import REPO, SHARED, machine, table
from bench_accuracy import match, read_labels, survey_of

from gasnet_plugin.api import as_config
from gasnet_plugin.host.runner import Pipeline


def letter(subtype: str) -> str:
    """The spectral-type letter of a star subtype (``"sdF3"`` → ``F``; ``""`` if none)."""
    for char in subtype.replace("sd", "").replace("e", ""):
        if char in "OBAFGKM":
            return char
    return ""


def confusion(truth: list[str], pred: list[str], title: str) -> str:
    labels = sorted(set(truth) | set(pred))
    counts = Counter(zip(truth, pred, strict=True))
    rows = [(t or "''", *[counts[(t, p)] for p in labels]) for t in labels]
    return f"{title} (rows: label, columns: SUBTYPE)\n" + table(
        rows, ("", *[p or "''" for p in labels]))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "example_configs" / "default.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = read_labels(SHARED)
    files = sorted({str(SHARED / label["path"].split("#")[0]) for label in labels})
    pipeline = Pipeline(as_config(args.config))
    results = pipeline.run(files, progress=False).results
    pairs = match(labels, results, SHARED)
    rows = np.array([i for _, i in pairs])
    cls = np.array([lab["cls"] for lab, _ in pairs])
    sub = np.array([lab["subclass"] for lab, _ in pairs])
    survey = np.array([survey_of(lab) for lab, _ in pairs])
    spectype = np.asarray(results["SPECTYPE"][rows]).astype(str)
    subtype = np.asarray(results["SUBTYPE"][rows]).astype(str)
    print(f"machine: {machine()}")
    print(f"{len(rows)} labelled real spectra through {args.config}")

    summary: list[tuple] = []
    # galaxies: the BPT part
    gal = np.flatnonzero((cls == "GALAXY") & (spectype == "GALAXY") & (survey == "SDSS"))
    bpt_truth = [s.replace("BROADLINE", "").strip() for s in sub[gal]]
    bpt_pred = [s.replace("BROADLINE", "").strip() for s in subtype[gal]]
    agree = np.mean([t == p for t, p in zip(bpt_truth, bpt_pred, strict=True)])
    summary.append(("GALAXY", "AGN / STARBURST / STARFORMING / ''", len(gal), f"{agree:.2f}"))
    print("\n" + confusion(bpt_truth, bpt_pred, "galaxies"))
    # QSOs: BROADLINE
    qso = np.flatnonzero((cls == "QSO") & (spectype == "QSO"))
    labelled = np.array(["BROADLINE" in s for s in sub[qso]])
    found = np.array(["BROADLINE" in s for s in subtype[qso]])
    summary.append(("QSO", "BROADLINE (labelled BROADLINE)", int(labelled.sum()),
                    f"{np.mean(found[labelled]):.2f}"))
    summary.append(("QSO", "BROADLINE (label without subclass)", int((~labelled).sum()),
                    f"{np.mean(found[~labelled]):.2f} called BROADLINE"))
    # stars: the letter
    star = np.flatnonzero((cls == "STAR") & (spectype == "STAR"))
    truth = np.array([letter(s) for s in sub[star]])
    pred = np.array([letter(s) for s in subtype[star]])
    typed = truth != ""
    for name in ("LAMOST", "SDSS"):
        picked = typed & (survey[star] == name)
        summary.append(("STAR", f"type letter ({name} labels)", int(picked.sum()),
                        f"{np.mean(truth[picked] == pred[picked]):.2f}"))
    summary.append(("STAR", "type letter (all)", int(typed.sum()),
                    f"{np.mean(truth[typed] == pred[typed]):.2f}"))
    print("\n" + confusion(list(truth[typed]), list(pred[typed]), "stars, type letter"))
    switched = np.asarray(results["BROADLINE_QSO"][rows], dtype=bool)
    for name in ("GALAXY", "QSO"):
        summary.append((name, "GALAXY fit called QSO (dominant broad line)",
                        int((cls == name).sum()), f"{int(switched[cls == name].sum())} rows"))
    print("\n" + table(summary, ("class", "what", "n", "agreement")))

    seconds = pipeline.stage_seconds
    print("\nstage cost, ms per spectrum (one thread, "
          f"{len(results)} spectra): " + ", ".join(
              f"{name} {t / len(results) * 1e3:.3f}" for name, t in seconds.items()))


if __name__ == "__main__":
    main()
