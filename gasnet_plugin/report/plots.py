"""Figures of a results archive (matplotlib, Agg backend: no screen needed).

Per spectrum: the data with the reconstruction and the main lines marked at the fitted z,
the residual, and every class's χ² curve with its minima. Per run: z against z_true, Δz
against S/N, the confusion matrix and an anomaly gallery.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gasnet_plugin.evaluate import Evaluation, Truth
    from gasnet_plugin.io.archive import RunArchive

LINES = {
    # rest-frame vacuum wavelengths, Å: emission lines
    "Lyα": 1215.67, "C IV": 1549.06, "C III]": 1908.73, "Mg II": 2799.49, "[O II]": 3728.48,
    "Hδ": 4102.89, "Hγ": 4341.68, "Hβ": 4862.68, "[O III]": 5008.24, "Hα": 6564.61,
    "[N II]": 6585.27, "[S II]": 6725.0,
}
MEASURED = {"Lyα": "LYALPHA", "C IV": "CIV_1549", "Mg II": "MGII_2800", "[O II]": "OII_3727",
            "Hβ": "HBETA", "[O III]": "OIII_5007", "Hα": "HALPHA", "[N II]": "NII_6584",
            "[S II]": "SII_6716"}
"""Marked line → the subtype stage's column prefix of its measurement."""
STELLAR = {"Hα": 6564.61, "Hβ": 4862.68, "Hγ": 4341.68, "Hδ": 4102.89, "Ca K": 3934.78,
           "Ca H": 3969.59, "G": 4305.6, "Mg b": 5176.7, "Na D": 5895.6, "TiO": 7053.0}
"""Rest vacuum wavelengths (Å) of the absorption features marked on stars."""
QSO_LINES = ("Lyα", "C IV", "C III]", "Mg II", "Hδ", "Hγ", "Hβ", "[O III]", "Hα")
"""The emission lines marked on QSOs (the rest of LINES are galaxy lines)."""
ABSORPTION = {"Ca K": 3934.78, "Ca H": 3969.59, "G": 4305.6, "Mg b": 5176.7, "Na D": 5895.6}
CLASS_COLOURS = {"GALAXY": "tab:blue", "QSO": "tab:orange", "STAR": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray, width: int = 5) -> np.ndarray:
    """Boxcar mean over the finite samples; NaN where a window has none."""
    kernel = np.ones(width)
    finite = np.isfinite(values)
    total = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite & (count > 0), total / count, np.nan)


def _measured_snr(row: object, prefix: str) -> float | None:
    """Flux S/N of the subtype stage's measurement of line ``prefix`` in ``row`` (None if
    not measured)."""
    names = getattr(row, "colnames", [])
    if not prefix or f"{prefix}_FLUX" not in names:
        return None
    flux, error = float(row[f"{prefix}_FLUX"]), float(row[f"{prefix}_FLUX_ERR"])
    return flux / error if np.isfinite(flux) and np.isfinite(error) and error > 0 else None


def lines_of_class(spectype: str) -> list[tuple[str, float, str]]:
    """``(name, rest Å, colour)`` of the features marked for a class: galaxies their
    emission (blue) and absorption (green) lines, QSOs their broad and narrow emission
    lines, stars their absorption features; everything for an unknown class."""
    if spectype == "STAR":
        return [(n, w, "tab:green") for n, w in STELLAR.items()]
    if spectype == "QSO":
        return [(n, LINES[n], "tab:blue") for n in QSO_LINES]
    return [*((n, w, "tab:blue") for n, w in LINES.items()),
            *((n, w, "tab:green") for n, w in ABSORPTION.items())]


def label_levels(positions: list[float], low: float, high: float,
                 min_gap: float = 0.018, n_levels: int = 3) -> list[int]:
    """A text row (0, 1, 2, ...) for each label at ``positions`` (Å) so that labels
    closer than ``min_gap`` of the axis width never share a row (Hα and [N II], Ca H and
    K): each label takes the first row whose last label is far enough."""
    order = np.argsort(positions)
    span = (high - low) * min_gap
    last = [-np.inf] * n_levels
    levels = [0] * len(positions)
    for i in order:
        free = [r for r in range(n_levels) if positions[i] - last[r] >= span]
        row = free[0] if free else int(np.argmin(last))
        levels[i] = row
        last[row] = positions[i]
    return levels


def flux_unit_of(archive: RunArchive, row: object) -> str:
    """The flux unit of a row: its ``FLUX_UNIT``, else the archive's, else "unit unknown"."""
    unit = str(row["FLUX_UNIT"]).strip() if "FLUX_UNIT" in getattr(row, "colnames", []) else ""
    return unit or archive.arrays.flux_unit or "unit unknown"


def spectrum_figure(archive: RunArchive, index: int, path: Path) -> Path:
    """Data, model, residual and χ² curves of results row ``index`` (needs the arrays
    ``flux`` and ``model``; ``residual``, ``ivar`` and ``chi2_curves`` when present)."""
    plt = _pyplot()
    row = archive.results[index]
    arrays = archive.arrays.arrays
    wave = 10 ** np.asarray(archive.arrays.loglam)
    flux = arrays["flux"][index]
    ivar = arrays.get("ivar", np.ones_like(arrays["flux"]))[index]
    model = arrays["model"][index]
    valid = ivar > 0 if "ivar" in arrays else flux != 0
    has_curves = "chi2_curves" in arrays
    fig, axes = plt.subplots(3 if has_curves else 2, 1, figsize=(11, 7.5 if has_curves else 5.5),
                             gridspec_kw={"height_ratios": [3, 1, 2] if has_curves else [3, 1]})
    top, middle = axes[0], axes[1]
    shown = np.where(valid, flux, np.nan)
    top.plot(wave, _smooth(shown, 3), color="0.45", lw=0.6, label="data (3-px smoothed)")
    top.plot(wave, np.where(valid, model, np.nan), color="crimson", lw=1.0,
             label="reconstruction")
    z = float(row["Z"]) if np.isfinite(row["Z"]) else None
    low, high = np.nanpercentile(shown, [1, 99]) if np.isfinite(shown).any() else (0, 1)
    span = high - low or 1.0
    top.set_ylim(low - 0.15 * span, high + 0.3 * span)
    if z is not None:
        marks = []
        for name, rest, colour in lines_of_class(str(row["SPECTYPE"])):
            observed = rest * (1 + z)
            if wave[0] < observed < wave[-1]:
                snr = _measured_snr(row, MEASURED.get(name, ""))
                detected = snr is not None and snr > 3 and colour == "tab:blue"
                top.axvline(observed, color=colour, lw=1.2 if detected else 0.6,
                            ls="-" if detected else ":", alpha=0.6 if detected else 1.0)
                marks.append((observed, f"{name} S/N {snr:.0f}" if detected else name,
                              colour, detected))
        for (observed, label, colour, detected), level in zip(
                marks, label_levels([m[0] for m in marks], wave[0], wave[-1]), strict=True):
            top.text(observed, high + (0.28 - 0.1 * level) * span, label, rotation=90,
                     fontsize=7, ha="center", va="top", color=colour,
                     fontweight="bold" if detected else "normal")
    zerr = f" ± {row['ZERR']:.1e}" if np.isfinite(row["ZERR"]) else ""
    truth = f"; survey {row['SURVEY_CLASS']} z={row['SURVEY_Z']:.4f}" \
        if str(row["SURVEY_CLASS"]).strip() else ""
    top.set_title(f"{Path(str(row['SOURCE'])).name} [{row['ROW']}]: {row['SPECTYPE']} "
                  f"z={row['Z']:.5f}{zerr}, Δχ²={row['DELTACHI2']:.1f}, ZWARN={row['ZWARN']}"
                  f"{truth}", fontsize=9)
    top.set_ylabel(f"flux [{flux_unit_of(archive, row)}]", fontsize=8)
    top.legend(fontsize=7, loc="upper right")
    residual = arrays["residual"][index] if "residual" in arrays else flux - model
    if "ivar" in arrays:
        middle.plot(wave, _smooth(np.where(valid, residual * np.sqrt(ivar), np.nan), 3),
                    color="0.3", lw=0.5)
        middle.set_ylabel("residual [σ]", fontsize=8)
    else:
        middle.plot(wave, _smooth(np.where(valid, residual, np.nan), 3), color="0.3", lw=0.5)
        middle.set_ylabel("residual (no ivar archived)", fontsize=8)
    middle.axhline(0, color="crimson", lw=0.6)
    middle.set_xlabel("observed wavelength [Å]", fontsize=8)
    if has_curves:
        bottom = axes[2]
        axes_info = archive.arrays.axes["chi2_curves"]
        curves = arrays["chi2_curves"][index]
        for c, name in enumerate(axes_info["classes"]):
            zc = np.asarray(axes_info["z"][c])
            ok = np.isfinite(zc) & np.isfinite(curves[c])
            if ok.any():
                bottom.plot(zc[ok], curves[c][ok], lw=0.7, color=CLASS_COLOURS.get(name),
                            label=name)
        for cz, cchi, cclass in zip(row["CAND_Z"], row["CAND_CHI2"], row["CAND_SPECTYPE"],
                                    strict=True):
            if np.isfinite(cz):
                bottom.plot([cz], [cchi], "v", color=CLASS_COLOURS.get(str(cclass), "k"), ms=5)
        bottom.set_xscale("symlog", linthresh=0.01)
        bottom.set_xlabel("z", fontsize=8)
        bottom.set_ylabel("χ²", fontsize=8)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_figures(archive: RunArchive, truth: Truth, evaluation: Evaluation,
                folder: Path) -> dict[str, Path]:
    """z vs z_true, Δz vs S/N and the confusion matrix; returns name → PNG path."""
    plt = _pyplot()
    results = archive.results
    z = np.asarray(results["Z"], dtype=float)
    spectype = np.array([str(s) for s in results["SPECTYPE"]])
    known = truth.known & np.isfinite(z)
    out = {}

    fig, ax = plt.subplots(figsize=(5.5, 5))
    flagged = np.asarray(results["ZWARN"]) != 0
    for name, colour in CLASS_COLOURS.items():
        pick = known & (spectype == name)
        ax.scatter(truth.z[pick & ~flagged], z[pick & ~flagged], s=10, color=colour,
                   label=f"SPECTYPE {name}", alpha=0.8)
        ax.scatter(truth.z[pick & flagged], z[pick & flagged], s=22, facecolors="none",
                   edgecolors=colour, linewidths=0.9)
    ax.scatter([], [], s=22, facecolors="none", edgecolors="0.3",
               label="open: ZWARN ≠ 0 (flagged)")
    top = float(np.nanmax(np.concatenate([truth.z[known], z[known], [0.1]]))) * 1.05
    ax.plot([0, top], [0, top], color="0.5", lw=0.6)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("z (truth)")
    ax.set_ylabel("Z (gasnet)")
    ax.legend(fontsize=8)
    ax.set_title(f"{int(known.sum())} spectra with a truth", fontsize=9)
    out["z_vs_truth"] = folder / "z_vs_truth.png"
    fig.tight_layout()
    fig.savefig(out["z_vs_truth"], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    snr = np.asarray(results["SNR_MEDIAN"], dtype=float)
    dz = np.abs(z - truth.z) / (1 + truth.z)
    for name, colour in CLASS_COLOURS.items():
        pick = known & (spectype == name)
        ax.scatter(np.clip(snr[pick], 0.1, None), np.clip(dz[pick], 1e-7, None), s=10,
                   color=colour, label=name, alpha=0.8)
    ax.axhline(0.0033, color="crimson", lw=0.7, ls="--", label="Δz = 0.0033")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("median S/N per pixel")
    ax.set_ylabel("Δz = |Z − z| / (1 + z)")
    ax.legend(fontsize=7)
    out["dz_vs_snr"] = folder / "dz_vs_snr.png"
    fig.tight_layout()
    fig.savefig(out["dz_vs_snr"], dpi=90)
    plt.close(fig)

    c = evaluation.classification
    matrix = np.asarray(c["confusion"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(c["classes"])), c["classes"])
    ax.set_yticks(range(len(c["classes"])), c["classes"])
    ax.set_xlabel("SPECTYPE")
    ax.set_ylabel("truth")
    ax.set_title(f"class accuracy {c['accuracy']:.3f}", fontsize=9)
    out["confusion"] = folder / "confusion.png"
    fig.tight_layout()
    fig.savefig(out["confusion"], dpi=90)
    plt.close(fig)
    return out


def thumbnail(archive: RunArchive, index: int, path: Path) -> Path:
    """A small data-and-model plot for the anomaly gallery."""
    plt = _pyplot()
    row = archive.results[index]
    arrays = archive.arrays.arrays
    wave = 10 ** np.asarray(archive.arrays.loglam)
    fig, ax = plt.subplots(figsize=(4, 1.8))
    flux = arrays["flux"][index]
    valid = arrays["ivar"][index] > 0 if "ivar" in arrays else flux != 0
    ax.plot(wave, _smooth(np.where(valid, flux, np.nan), 5), color="0.45", lw=0.5)
    if "model" in arrays and np.isfinite(arrays["model"][index]).all():
        ax.plot(wave, np.where(valid, arrays["model"][index], np.nan), color="crimson", lw=0.7)
    ax.set_title(f"{Path(str(row['SOURCE'])).name}[{row['ROW']}] {row['SPECTYPE']} "
                 f"z={row['Z']:.3f}", fontsize=7)
    ax.set_ylabel(f"flux [{flux_unit_of(archive, row)}]", fontsize=6)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
