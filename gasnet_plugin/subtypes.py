"""SUBTYPE from emission-line physics (galaxies, QSOs), as SDSS defines its subclasses.

The SDSS-III spectroscopic pipeline (Bolton et al. 2012, AJ 144, 144, §5: "subclass")
classifies galaxies and quasars with emission lines by the [N II]/Hα – [O III]/Hβ (BPT)
diagram, and marks broad lines:

* ``AGN``: log10([O III]5007/Hβ) > 0.7 − 1.2 · (log10([N II]6584/Hα) + 0.4)
  (the dividing line of the SDSS pipeline);
* ``STARFORMING``: below that line;
* ``STARBURST``: star-forming with an Hα equivalent width above 50 Å, the equivalent width
  as SDSS measures it: observed frame (its ``LINEEW`` is ``LINEAREA / LINECONTLEVEL``,
  the line's area in observed Å over the continuum per observed Å; idlspec2d's
  ``linebackfit``), i.e. our rest-frame ``HALPHA_EW`` × (1 + z);
* ``BROADLINE``, appended: a line other than Lyα detected at 10σ whose width σ exceeds
  200 km/s at 5σ.

The rules follow the code that applies them, idlspec2d's ``spreduce1d.pro`` ("Classify
galaxies and QSO's based upon emission lines"): the diagram needs all four lines with
``LINEAREA`` > 3 ``LINEAREA_ERR`` (else the BPT part stays empty, as SDSS leaves SUBTYPE
empty when the lines are too weak); STARBURST needs ``LINEEW`` > 50 Å *and* > 3
``LINEEW_ERR``; BROADLINE takes the largest ``LINESIGMA`` − 5 ``LINESIGMA_ERR`` over the
lines with ``LINEAREA`` > 10 ``LINEAREA_ERR``, Lyα left out. Our width comes from a grid
(:mod:`gasnet_plugin.emission_lines`), so two cases of ours have no SDSS counterpart: broad
components (Hα, Hβ) count as broad lines when their flux is positive at 10σ and adding
them improves the fit by Δχ² > 25 (5σ); a line whose width sits at the top of its grid
(no width error) is at least as broad as the grid's point below the top; any other width
without an error (the bottom of the grid, or a χ² without positive curvature there) is
taken as known to 30 %.

A galaxy with a *dominant* broad Balmer line is what SDSS and Redrock call a QSO (their
templates see the broad line): :func:`broad_line_dominated` marks rows whose broad Hα
(or Hβ where Hα is off the grid) has a rest-frame equivalent width above
``QSO_BROAD_EW`` (20 Å) at 10σ; the subtype stage then sets SPECTYPE QSO
(``broadline_is_qso``). Weaker broad lines keep GALAXY with ``BROADLINE`` in SUBTYPE,
as SDSS does (e.g. "GALAXY AGN BROADLINE").
"""

from __future__ import annotations

import numpy as np

from gasnet_plugin.emission_lines import LINE_GROUPS, WIDTH_GRIDS

BPT_SNR = 3.0
"""Flux S/N each of Hα, Hβ, [O III] 5007 and [N II] 6584 needs for a BPT subtype."""
STARBURST_EW = 50.0
"""Observed-frame Hα equivalent width (Å; SDSS's ``LINEEW``) above which a star-forming
galaxy is a STARBURST."""
STARBURST_EW_SNR = 3.0
"""Significance the Hα equivalent width of a STARBURST needs (SDSS: ``LINEEW`` > 3
``LINEEW_ERR``)."""
BROAD_SNR = 10.0
"""Flux S/N of a broad line."""
BROAD_SIGMA = 200.0
"""Width σ (km/s) a broad line exceeds at ``BROAD_SIGMA_NSIGMA`` σ."""
BROAD_SIGMA_NSIGMA = 5.0
BROAD_DCHI2 = 25.0
"""Δχ² a broad Balmer component must add."""
QSO_BROAD_EW = 20.0
"""Rest-frame equivalent width (Å) of a broad Balmer line that makes a galaxy a QSO."""
NARROW_LINES = ("HALPHA", "HBETA", "OIII_5007", "NII_6584", "MGII_2800", "CIV_1549")
"""Lines whose own width can make them broad (SDSS's code leaves Lyα out)."""
BROAD_COMPONENTS = ("HALPHA_BROAD", "HBETA_BROAD")
_LINE_KINDS = {line.name: line.kind for group in LINE_GROUPS for line in group.lines}


def _snr(lines: dict[str, np.ndarray], name: str) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(lines[f"{name}_FLUX"] / lines[f"{name}_FLUX_ERR"], nan=0.0)


def _sigma_lower_bound(lines: dict[str, np.ndarray], name: str) -> np.ndarray:
    """σ − 5 σ_err of line ``name`` (km/s, ``(B,)``), where the width has an error; at the
    top of the line's width grid the grid's point below the top (the width lies beyond
    it); any other width without an error (bottom of the grid, no positive curvature)
    σ − 5 · 0.3 σ."""
    sigma = lines[f"{name}_SIGMA"]
    error = lines[f"{name}_SIGMA_ERR"]
    grid = WIDTH_GRIDS[_LINE_KINDS[name]]
    at_top = ~np.isfinite(error) & (sigma >= grid[-1])
    error = np.where(np.isfinite(error), error, 0.3 * sigma)
    return np.where(at_top, grid[-2], sigma - BROAD_SIGMA_NSIGMA * error)


def bpt_subtype(lines: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """``AGN``, ``STARFORMING``, ``STARBURST`` or ``""`` per row of ``lines`` (measured at
    redshifts ``z``, ``(B,)``; see the module docstring)."""
    names = ("HALPHA", "HBETA", "OIII_5007", "NII_6584")
    detected = np.all([_snr(lines, n) > BPT_SNR for n in names], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.log10(lines["NII_6584_FLUX"] / lines["HALPHA_FLUX"])
        y = np.log10(lines["OIII_5007_FLUX"] / lines["HBETA_FLUX"])
        agn = y > 0.7 - 1.2 * (x + 0.4)
        starburst = (lines["HALPHA_EW"] * (1 + np.asarray(z, dtype=float)) > STARBURST_EW) \
            & (lines["HALPHA_EW"] > STARBURST_EW_SNR * lines["HALPHA_EW_ERR"])
    return np.where(detected, np.where(agn, "AGN", np.where(starburst, "STARBURST",
                                                            "STARFORMING")), "")


def has_broad_line(lines: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: some line is detected at 10σ with σ > 200 km/s at 5σ, or a broad Balmer
    component is positive at 10σ and significant (Δχ² > 25)."""
    n_rows = lines["HALPHA_FLUX"].shape[0]
    broad = np.zeros(n_rows, dtype=bool)
    for name in NARROW_LINES:
        with np.errstate(invalid="ignore"):
            broad |= (_snr(lines, name) > BROAD_SNR) \
                & (_sigma_lower_bound(lines, name) > BROAD_SIGMA)
    for name in BROAD_COMPONENTS:
        with np.errstate(invalid="ignore"):
            broad |= (_snr(lines, name) > BROAD_SNR) \
                & (np.nan_to_num(lines[f"{name}_DCHI2"]) > BROAD_DCHI2)
    return broad


def broad_line_dominated(lines: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: the broad Hα component (or broad Hβ where Hα is not measured) has a
    rest-frame equivalent width above ``QSO_BROAD_EW`` at 10σ with Δχ² > 25."""
    out = np.zeros(lines["HALPHA_FLUX"].shape[0], dtype=bool)
    halpha_measured = np.isfinite(lines["HALPHA_BROAD_FLUX"])
    for name, use in (("HALPHA_BROAD", halpha_measured), ("HBETA_BROAD", ~halpha_measured)):
        with np.errstate(invalid="ignore"):
            out |= use & (_snr(lines, name) > BROAD_SNR) \
                & (np.nan_to_num(lines[f"{name}_DCHI2"]) > BROAD_DCHI2) \
                & (np.nan_to_num(lines[f"{name}_EW"]) > QSO_BROAD_EW)
    return out


def emission_subtype(lines: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """SDSS's galaxy/QSO subclass per row (lines measured at redshifts ``z``): the BPT class
    and ``BROADLINE``, space-joined (``"STARBURST BROADLINE"``), ``""`` when neither
    applies."""
    bpt = bpt_subtype(lines, z)
    broad = has_broad_line(lines)
    joined = np.char.add(np.char.add(bpt.astype("<U16"),
                                     np.where((bpt != "") & broad, " ", "")),
                         np.where(broad, "BROADLINE", ""))
    return joined.astype(str)
