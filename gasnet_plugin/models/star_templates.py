"""Named stellar templates (SDSS's ``spEigenStar``) and the fit that picks a star's type.

The SDSS spectroscopic pipeline (idlspec2d) types a star by the best-fitting of its named
stellar spectra; Redrock does the same with its archetypes. The shipped file
``gasnet_plugin/data/sdss-star-templates.asdf`` holds the 123 spectra of
``spEigenStar-55734.fits`` (their names, e.g. ``"K3V (32147)"``, and fluxes on a rest-frame
log10-λ grid), converted by :func:`templates_from_idlspec2d`.

:func:`fit_star_templates` fits every template to every star at its redshift: the template
times a free amplitude plus a quadratic polynomial in wavelength (for flux-calibration and
extinction differences), by weighted least squares; the lowest χ² names the type. Each star
is placed on the templates' rest-frame grid at its whole-pixel redshift shift, so that the
sums over pixels are two matrix products of a chunk of stars with all the templates; the
stars' side of those products is built in one compiled pass per star
(:mod:`~gasnet_plugin.models.star_fit_kernels`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_STAR_TEMPLATES = "sdss-star-templates.asdf"
"""File name of the shipped templates in ``gasnet_plugin/data``."""
POLY_DEGREE = 2
"""Degree of the additive polynomial fitted with each template."""
PIXEL_STEP_TOLERANCE = 0.01
"""Relative difference allowed between a grid's log-λ step and the templates' (the fits
place a spectrum on the templates' grid by whole pixels)."""
CHUNK_STARS = 64
"""Stars fitted together (sorted by redshift shift): their rest-frame arrays (``(64, K + 2,
P)`` doubles, ~8 MB) are made once and the templates read once per chunk."""


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
    _padded: dict[int, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def padded(self, n_pix: int) -> tuple[np.ndarray, np.ndarray]:
        """The fluxes and their squares, ``(T, N + 2 n_pix)`` float64 each, with
        ``n_pix`` zero pixels at both ends (made once per ``n_pix`` and kept): a window
        of ``n_pix`` pixels from any shift is a view."""
        if n_pix not in self._padded:
            flux = np.pad(self.flux.astype(np.float64), ((0, 0), (n_pix, n_pix)))
            self._padded[n_pix] = (flux, flux * flux)
        return self._padded[n_pix]

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
                       loglam: np.ndarray, z: np.ndarray, threads: int = 1) -> StarFit:
    """Fit every template to every star at its redshift (see the module docstring).

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``, whose step must be the
        templates' (to 1 %).
    z
        ``(B,)`` redshifts (rounded to whole pixels of the grid). A star is not fitted
        (index −1, χ² NaN) where its z is not finite or not above −1, or where fewer
        than :data:`POLY_DEGREE` + 3 of its pixels have a weight on the templates' range.
    threads
        Chunks of :data:`CHUNK_STARS` stars fitted at once, on threads
        (:func:`~gasnet_plugin.thread_map.thread_map`; the same results for any number).
    """
    from gasnet_plugin.thread_map import thread_map

    n_rows, n_pix = flux.shape
    n_templates = templates.flux.shape[0]
    step = grid_step_mismatch(loglam, templates.dloglam)
    if step is not None:
        raise ValueError(f"star templates have {templates.dloglam:g} dex pixels, the grid "
                         f"{step:g}")
    all_chi2 = np.full((n_rows, n_templates), np.inf)
    n_params = POLY_DEGREE + 2                  # the polynomial's terms and the amplitude
    # pixels with a weight (as the kernel weighs them: finite positive ivar, finite flux)
    n_valid = (np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)).sum(axis=1)
    z = np.asarray(z, dtype=np.float64)
    ok = measurable_redshift(z) & (n_valid > n_params)
    # template pixel of observed pixel 0, per star; how many of its pixels the templates
    # cover (a redshift far outside them leaves none)
    start = np.round((loglam[0] - np.log10(1 + np.where(ok, z, 0.0)) - templates.loglam0)
                     / templates.dloglam).astype(np.int64)
    on_templates = (np.minimum(start + n_pix, templates.flux.shape[1])
                    - np.maximum(start, 0))
    ok &= on_templates > n_params
    padded, padded_squared = templates.padded(n_pix)
    fitted = np.flatnonzero(ok)
    fitted = fitted[np.argsort(start[fitted], kind="stable")]   # neighbours in z together
    n_weighted = np.zeros(n_rows, dtype=np.int64)

    def fit_chunk(first: int) -> None:
        rows = fitted[first:first + CHUNK_STARS]
        all_chi2[rows], n_weighted[rows] = _fit_stars(padded, padded_squared, flux[rows],
                                                      ivar[rows], start[rows])

    thread_map(fit_chunk, range(0, fitted.size, CHUNK_STARS), threads)
    found = np.isfinite(all_chi2).any(axis=1)
    index = np.where(found, np.argmin(all_chi2, axis=1), -1)
    chi2 = np.where(found, all_chi2[np.arange(n_rows), np.maximum(index, 0)], np.nan)
    dof = np.maximum(n_weighted - n_params, 1)
    return StarFit(index, chi2, chi2 / dof, all_chi2)


def measurable_redshift(z: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: redshifts a spectrum can have (finite and above −1), the rows every
    fit of the subtype stage measures at all."""
    z = np.asarray(z, dtype=np.float64)
    return np.isfinite(z) & (z > -1)


def grid_step_mismatch(loglam: np.ndarray, dloglam: float) -> float | None:
    """The log10-λ step of the grid ``loglam`` ``(P,)`` where it differs from the
    templates' ``dloglam`` by more than :data:`PIXEL_STEP_TOLERANCE`; ``None`` where it
    matches (or the grid has a single pixel)."""
    if loglam.size < 2:
        return None
    step = float((loglam[-1] - loglam[0]) / (loglam.size - 1))
    return step if abs(step / dloglam - 1) > PIXEL_STEP_TOLERANCE else None


def as_contiguous_floats(array: np.ndarray) -> np.ndarray:
    """``array`` as a contiguous float32 or float64 array (float32 stays float32), the
    inputs the compiled kernels are compiled for."""
    return np.ascontiguousarray(array, dtype=np.float32 if array.dtype == np.float32
                                else np.float64)


def _fit_stars(padded: np.ndarray, padded_squared: np.ndarray, flux: np.ndarray,
               ivar: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """χ² ``(b, T)`` of every template (times an amplitude, plus a polynomial of degree
    :data:`POLY_DEGREE` in x ∈ [−1, 1] across the observed pixels) fitted to ``b`` stars
    (``flux``, ``ivar`` ``(b, P)``) whose observed pixel 0 is template pixel ``start``
    ``(b,)``; inf where the amplitude is not positive, and for a star with no more
    weighted pixels on the templates than the fit has terms. Also the number of
    weighted pixels ``(b,)`` each fit sums over. ``padded`` and ``padded_squared``:
    :meth:`StarTemplates.padded`.

    Every star is moved onto one rest-frame window of the templates, so that all share the
    templates' matrix: two products over the stars instead of two per redshift shift
    (each of which would read all the templates again)."""
    from gasnet_plugin.models.star_fit_kernels import rest_frame_sides

    n_stars, n_pix = flux.shape
    n_templates = padded.shape[0]
    k = POLY_DEGREE + 1
    x = np.linspace(-1, 1, n_pix)                  # the polynomial's variable, per pixel
    powers = np.stack([x**power for power in range(k)])                    # (K, P)
    n_rest = padded.shape[1] - 2 * n_pix
    shift = np.clip(start, -n_pix, n_rest)
    low = int(shift.min())
    width = n_pix + int(shift.max()) - low
    window = slice(low + n_pix, low + n_pix + width)
    t = padded[:, window]                                                   # (T, R)
    # observed pixel p of star b is window pixel p + shift_b − low; in the rest window:
    # the weighted polynomial terms (the weights themselves first) and the weighted flux
    # (compiled, one pass per star), with the polynomial's own sums
    sides = np.empty((n_stars, k + 1, width))
    xx = np.empty((n_stars, k, k))
    fx = np.empty((n_stars, k))
    flux_norm = np.empty(n_stars)
    n_weighted = np.empty(n_stars, dtype=np.int64)
    rest_frame_sides(as_contiguous_floats(flux), as_contiguous_floats(ivar),
                     (shift - low).astype(np.int64), t.any(axis=0), powers, sides, xx, fx,
                     flux_norm, n_weighted)
    tt = sides[:, 0] @ padded_squared[:, window].T                          # (b, T)
    against = (sides.reshape(-1, width) @ t.T).reshape(n_stars, k + 1, n_templates)
    tx = against[:, :k].transpose(0, 2, 1)                                  # (b, T, K)
    ft = against[:, k]                                                      # (b, T)
    # the polynomial solved once per star; each template then adds one dimension, whose
    # least-squares amplitude and χ² follow from the Schur complement (no (K+1)² system
    # per template and star)
    ridge = 1e-12 * np.einsum("bii->b", xx)[:, None, None] / k * np.eye(k)
    # a star with no more weighted pixels here than the fit has terms (the polynomial's
    # and the amplitude) has no fit: an identity in place of its (near) zero normal
    # matrix keeps the batched solve defined, and its χ² is inf
    empty = n_weighted <= k + 1
    gram = np.where(empty[:, None, None], np.eye(k), xx + ridge)           # (b, K, K)
    solved_fx = np.linalg.solve(gram, fx[..., None])[..., 0]                # (b, K)
    solved_tx = np.linalg.solve(gram, tx.transpose(0, 2, 1))                # (b, K, T)
    chi2_poly = flux_norm - np.einsum("bk,bk->b", fx, solved_fx)
    # the template's part not explained by the polynomial: its norm and overlap with f
    norm = tt - np.einsum("btk,bkt->bt", tx, solved_tx)                     # (b, T)
    overlap = ft - np.einsum("btk,bk->bt", tx, solved_fx)                   # (b, T)
    with np.errstate(invalid="ignore", divide="ignore"):
        amplitude = overlap / norm
        chi2 = chi2_poly[:, None] - overlap * amplitude
    # a positive template only, and one not (numerically) within the polynomial's span
    good = (norm > 1e-12 * tt) & (amplitude > 0) & ~empty[:, None]
    return np.where(good, chi2, np.inf), n_weighted
