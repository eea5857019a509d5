"""Named stellar templates (SDSS's ``spEigenStar``) and the fit that picks a star's type.

The SDSS spectroscopic pipeline (idlspec2d) types a star by the best-fitting of its named
stellar spectra; Redrock does the same with its archetypes. The shipped file
``gasnet_plugin/data/sdss-star-templates.asdf`` holds the 123 spectra of
``spEigenStar-55734.fits`` (their names, e.g. ``"K3V (32147)"``, and fluxes on a rest-frame
log10-λ grid), converted by :func:`templates_from_idlspec2d`.

:func:`fit_star_templates` fits every template to every star at its redshift: the template
times a free amplitude plus a quadratic polynomial in wavelength (for flux-calibration and
extinction differences), by weighted least squares; the lowest χ² names the type. The sums
are matrix products over pixels, one per whole-pixel shift of the star's redshift (stars
span ±0.005 in z: a few dozen shifts), so the cost is a handful of BLAS calls per batch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_STAR_TEMPLATES = "sdss-star-templates.asdf"
"""File name of the shipped templates in ``gasnet_plugin/data``."""
POLY_DEGREE = 2
"""Degree of the additive polynomial fitted with each template."""


class StarTemplatesError(ValueError):
    """A star-templates file is missing or malformed; the message names the file."""


@dataclass
class StarTemplates:
    """Named stellar spectra on one rest-frame log10-λ grid.

    Attributes
    ----------
    names
        ``T`` template names as SDSS gives them (``"K3V (32147)"``).
    loglam0, dloglam
        log10 Å of the first pixel and the step.
    flux
        ``(T, N)`` float32 template fluxes (arbitrary scale each).
    source
        Where they came from.
    """

    names: list[str]
    loglam0: float
    dloglam: float
    flux: np.ndarray
    source: str

    def spectral_types(self) -> np.ndarray:
        """The type of each template as SDSS writes a subclass: the MK spectral type
        without the luminosity class or catalogue number (``"K3V (32147)"`` → ``"K3"``,
        ``"sdF3 (140283)"`` → ``"sdF3"``); names without one stay whole (``"Carbon"``)."""
        out = []
        for name in self.names:
            match = re.match(r"(e?sd:?)?([OBAFGKMLT])([0-9.]*)(?!dwarf)", name.split(" (")[0])
            out.append(f"{(match.group(1) or '').replace(':', '')}{match.group(2)}"
                       f"{match.group(3).rstrip('.')}" if match else name.split(" (")[0])
        return np.array(out)


def templates_from_idlspec2d(path: str | os.PathLike[str]) -> StarTemplates:
    """Read SDSS's ``spEigenStar-*.fits``: fluxes ``(T, N)`` in HDU 0, names in ``NAMEi``,
    grid from ``COEFF0``/``COEFF1``."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        header = hdul[0].header
        flux = np.asarray(hdul[0].data, dtype=np.float32)
        names = [str(header[f"NAME{i}"]) for i in range(flux.shape[0])]
        return StarTemplates(names, float(header["COEFF0"]), float(header["COEFF1"]), flux,
                             Path(path).name)


def write_star_templates(templates: StarTemplates, path: str | os.PathLike[str]) -> Path:
    """Validate against the ``star_templates`` schema and write (atomically)."""
    from gasnet_plugin.io.asdf_extension import STAR_TEMPLATES_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import write_validated

    tree = {"star_templates": {"names": list(templates.names),
                               "loglam0": float(templates.loglam0),
                               "dloglam": float(templates.dloglam),
                               "flux": np.asarray(templates.flux, dtype=np.float32),
                               "source": templates.source}}
    return write_validated(tree, path, STAR_TEMPLATES_SCHEMA_URI, StarTemplatesError,
                           "star templates", all_array_compression="zlib")


def load_star_templates(path: str | os.PathLike[str] = "default") -> StarTemplates:
    """Read and validate a star-templates file (``"default"``: the shipped one)."""
    from gasnet_plugin.io.asdf_extension import STAR_TEMPLATES_SCHEMA_URI
    from gasnet_plugin.io.asdf_files import read_validated

    if str(path) == "default":
        path = Path(str(resources.files("gasnet_plugin.data").joinpath(
            DEFAULT_STAR_TEMPLATES)))
    path = Path(path)
    if not path.is_file():
        raise StarTemplatesError(f"{path}: no such star-templates file")

    def extract(af: Any) -> StarTemplates:
        tree = af["star_templates"]
        flux = np.asarray(tree["flux"], dtype=np.float32)
        names = [str(n) for n in tree["names"]]
        if flux.ndim != 2 or flux.shape[0] != len(names) or not np.all(np.isfinite(flux)):
            raise StarTemplatesError(f"{path}: flux must be (templates, pixels), finite, "
                                     f"one row per name")
        return StarTemplates(names, float(tree["loglam0"]), float(tree["dloglam"]), flux,
                             str(tree["source"]))

    return read_validated(path, STAR_TEMPLATES_SCHEMA_URI, extract, StarTemplatesError,
                          "gasnet star-templates file")


@dataclass
class StarFit:
    """The best template of each of ``B`` stars: its index ``(B,)`` (−1: none fitted), χ²
    and reduced χ² ``(B,)``, and every template's χ² ``(B, T)``."""

    index: np.ndarray
    chi2: np.ndarray
    rchi2: np.ndarray
    all_chi2: np.ndarray


def fit_star_templates(templates: StarTemplates, flux: np.ndarray, ivar: np.ndarray,
                       loglam: np.ndarray, z: np.ndarray) -> StarFit:
    """Fit every template to every star at its redshift (see the module docstring).

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``, whose step must be the
        templates' (to 1 %).
    z
        ``(B,)`` redshifts (rounded to whole pixels of the grid).
    """
    n_rows, n_pix = flux.shape
    n_templates = templates.flux.shape[0]
    step = (loglam[-1] - loglam[0]) / (n_pix - 1)
    if abs(step / templates.dloglam - 1) > 0.01:
        raise ValueError(f"star templates have {templates.dloglam:g} dex pixels, the grid "
                         f"{step:g}")
    all_chi2 = np.full((n_rows, n_templates), np.inf)
    ok = np.isfinite(z) & ((ivar > 0).sum(axis=1) > POLY_DEGREE + 2)
    # template pixel of observed pixel 0, per star
    start = np.round((loglam[0] - np.log10(1 + np.where(ok, z, 0.0)) - templates.loglam0)
                     / templates.dloglam).astype(np.int64)
    x = np.linspace(-1, 1, n_pix)
    powers = np.stack([x**k for k in range(POLY_DEGREE + 1)])               # (K, P)
    padded = np.pad(templates.flux.astype(np.float64), ((0, 0), (n_pix, n_pix)))
    for shift in np.unique(start[ok]):
        rows = np.flatnonzero(ok & (start == shift))
        t = padded[:, shift + n_pix: shift + 2 * n_pix]                    # (T, P)
        w = ivar[rows].astype(np.float64) * (t.any(axis=0))[None, :]
        f = flux[rows].astype(np.float64)
        wf = w * f
        tt = w @ (t * t).T                                                  # (b, T)
        tx = ((w[:, None, :] * powers[None]).reshape(-1, n_pix) @ t.T).reshape(
            rows.size, POLY_DEGREE + 1, n_templates).transpose(0, 2, 1)     # (b, T, K)
        xx = np.einsum("bp,kp,lp->bkl", w, powers, powers)                  # (b, K, K)
        ft = wf @ t.T                                                       # (b, T)
        fx = wf @ powers.T                                                  # (b, K)
        k = POLY_DEGREE + 1
        normal = np.zeros((rows.size, n_templates, k + 1, k + 1))
        normal[:, :, 0, 0] = tt
        normal[:, :, 0, 1:] = tx
        normal[:, :, 1:, 0] = tx
        normal[:, :, 1:, 1:] = xx[:, None]
        rhs = np.concatenate([ft[:, :, None], np.broadcast_to(fx[:, None, :],
                                                              (rows.size, n_templates, k))], 2)
        normal += 1e-12 * np.einsum("btii->bt", normal)[:, :, None, None] * np.eye(k + 1)
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
        chi2 = np.sum(wf * f, axis=1)[:, None] - np.einsum("bti,bti->bt", coef, rhs)
        all_chi2[rows] = np.where(coef[:, :, 0] > 0, chi2, np.inf)   # a positive template
    found = np.isfinite(all_chi2).any(axis=1)
    index = np.where(found, np.argmin(all_chi2, axis=1), -1)
    chi2 = np.where(found, all_chi2[np.arange(n_rows), np.maximum(index, 0)], np.nan)
    dof = np.maximum((ivar > 0).sum(axis=1) - (POLY_DEGREE + 2), 1)
    return StarFit(index, chi2, chi2 / dof, all_chi2)
