"""A galaxy's stellar continuum as SDSS fits it, for measuring its emission lines.

Balmer emission in a galaxy sits in the stellar Balmer absorption; measured against a
straight local continuum, Hβ emission can vanish and Hα equivalent widths come out low.
SDSS measures a galaxy's lines on top of its velocity-dispersion fit (idlspec2d:
``spreduce1d`` calls ``vdispfit`` and hands its model, ``dispflux``, to ``speclinefit`` as
the galaxy's background), and so does this module:

* the basis is the first :data:`EIGEN_COLUMNS` (24) eigenspectra of the ELODIE stellar
  library, SDSS's ``spEigenElodie.fits`` (shipped as
  ``gasnet_plugin/data/sdss-elodie-eigenspectra.asdf``, rest frame, 4126–6797 Å),
  Gaussian-broadened to each dispersion of :data:`DISPERSIONS_KMS` (0, 25, …, 850 km/s),
  plus :data:`POLY_TERMS` (5) polynomial terms;
* pixels within ±6·10⁻⁴ in log10 λ (±414 km/s) of 14 emission lines, and the first and
  last 4 pixels of the templates, are left out (``vdispfit``'s mask);
* the fit is weighted linear least squares at every dispersion; the model at the best one
  is the continuum (NaN beyond the templates' range, where the line fit falls back on its
  local linear continuum, as ``speclinefit`` adds flat terms there).

Three simplifications, none of which changed a subclass of the 24 SDSS-labelled galaxies
of ``../shared/data`` (docs/subtype.rst): the dispersion is searched with the first
:data:`SEARCH_COLUMNS` (5) eigenspectra, as BOSS's redshift-marginalized dispersion
likelihood does (``vdispfit(columns=lindgen(5), npoly=5)``), on every
:data:`SEARCH_EVERY`-th dispersion with a parabola between them, and the model is then the
24-eigenspectra fit at the grid dispersion nearest the parabola's minimum; and each galaxy
is placed on the templates' grid at its whole-pixel redshift shift (``vdispfit`` at a
tenth of a pixel). The fitted dispersion comes back with the continuum (against SDSS's
``VDISP`` of two legacy galaxies: 175 and 225 km/s for 180 and 230).

Batched: on the templates' grid, a galaxy is its weights ``w`` and weighted flux ``w f``
(zero off its spectrum and on the masked pixels; one compiled pass per galaxy). The design
rows (eigenspectra and polynomials) are then the same for every galaxy: the search's normal
equations for a whole chunk at every searched dispersion are two matrix products, the
weights with the design rows' pairwise products and the weighted fluxes with the design
rows (both made once, with the basis: :class:`SearchRows`); the model's, at each galaxy's
own dispersion, one matrix product of the design with the weighted design rows of the
galaxies that share that dispersion. The loops run over dispersions, not spectra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numba
import numpy as np

from gasnet_plugin.emission_lines import C_KMS
from gasnet_plugin.io.wavelength_medium import air_to_vacuum
from gasnet_plugin.models.star_templates import (
    StarTemplates,
    as_contiguous_floats,
    grid_step_mismatch,
    load_star_templates,
    measurable_redshift,
)

DEFAULT_CONTINUUM_TEMPLATES = "sdss-elodie-eigenspectra.asdf"
"""File name of the shipped eigenspectra in ``gasnet_plugin/data`` (the star-templates
format, one row per eigenspectrum)."""
EIGEN_COLUMNS = 24
"""Eigenspectra in the continuum's model (``spreduce1d``: ``columns=lindgen(24)``)."""
SEARCH_COLUMNS = 5
"""Eigenspectra used to find the dispersion (BOSS's dispersion likelihood:
``columns=lindgen(5)``)."""
POLY_TERMS = 5
"""Polynomial terms (degrees 0–4) fitted with the eigenspectra (``vdispfit``'s ``npoly``)."""
DISPERSIONS_KMS = 25.0 * np.arange(35)
"""Velocity dispersions the continuum is fitted at, km/s (``vdispfit``: 35 steps of 25
km/s)."""
SEARCH_EVERY = 4
"""The dispersion is searched on every fourth of :data:`DISPERSIONS_KMS` (0, 100, …, 800
km/s); a parabola through the lowest χ² and its two neighbours places it, and the model is
fitted at the grid dispersion nearest that (``vdispfit`` fits its parabola to its whole
grid, and takes the model of the grid point nearest its minimum likewise)."""
MODEL_ROWS = 16
"""Galaxies whose weighted design rows (``(16, 29, N)`` float64, ~8 MB) are formed at once
for the model's normal equations."""
MASKED_LINES_AIR = (3725.94, 3727.24, 3970.072, 4101.73, 4340.46, 4861.3632, 4958.911,
                    5006.843, 6300.32, 6548.05, 6562.801, 6583.45, 6716.44, 6730.82)
"""Air wavelengths (Å) of the emission lines ``vdispfit`` leaves out of the fit."""
MASK_HALF_WIDTH_DLOGLAM = 6e-4
"""Half width of the pixels left out around each line, in log10 λ (±414 km/s)."""
EDGE_PIXELS = 4
"""Template pixels left out at each end (their broadening is not complete)."""
CHUNK_ROWS = 128
"""Galaxies fitted together: each takes a few template-length float64 rows (~17 kB each).
The results are the same at any chunk size to float64 rounding (each row's normal
equations are its own, but the matrix products that form them may sum in another order for
another number of rows); a run's chunks are fixed by its batches, so a run repeated gives
the same bits."""


@dataclass(frozen=True)
class SearchRows:
    """The dispersion search's design rows at every searched dispersion, shared by all
    galaxies, with their pairwise products: the weights times ``pairs`` and the weighted
    fluxes times ``rows`` are every galaxy's normal equations at every searched
    dispersion, two matrix products for a whole chunk.

    Attributes
    ----------
    dispersions
        ``(S',)`` indices of the searched dispersions (every :data:`SEARCH_EVERY`-th).
    rows
        ``(U, N)`` float64: the polynomials (once), then each searched dispersion's
        :data:`SEARCH_COLUMNS` eigenspectra.
    row_index
        ``(S', D)``: the row of ``rows`` of each design row (eigenspectra, then
        polynomials, as :meth:`DispersionBasis.design`) at each searched dispersion.
    pairs
        ``(R, N)`` float64: the distinct products of two rows that share a design (the
        polynomials' products once, not once per dispersion).
    pair_index
        ``(S', D, D)``: the row of ``pairs`` of each normal-matrix entry.
    """

    dispersions: np.ndarray
    rows: np.ndarray
    row_index: np.ndarray
    pairs: np.ndarray
    pair_index: np.ndarray


def search_rows(broadened: np.ndarray, poly: np.ndarray, columns: int = SEARCH_COLUMNS,
                ) -> SearchRows:
    """:class:`SearchRows` of the eigenspectra ``broadened`` ``(S, E, N)`` (the first
    ``columns`` of each) and the polynomials ``poly`` ``(Q, N)``, on every
    :data:`SEARCH_EVERY`-th dispersion (the step :func:`_parabola_minimum` assumes)."""
    dispersions = np.arange(0, broadened.shape[0], SEARCH_EVERY)
    n_poly, n_dim = poly.shape[0], columns + poly.shape[0]
    rows = np.vstack([poly, *(broadened[s, :columns].astype(np.float64)
                              for s in dispersions)])
    row_index = np.empty((dispersions.size, n_dim), dtype=np.int64)
    for k in range(dispersions.size):
        row_index[k, :columns] = n_poly + k * columns + np.arange(columns)
        row_index[k, columns:] = np.arange(n_poly)
    known: dict[tuple[int, int], int] = {}
    pairs = []
    pair_index = np.empty((dispersions.size, n_dim, n_dim), dtype=np.int64)
    for k in range(dispersions.size):
        for a in range(n_dim):
            for b in range(a, n_dim):
                key = (min(row_index[k, a], row_index[k, b]),
                       max(row_index[k, a], row_index[k, b]))
                if key not in known:
                    known[key] = len(pairs)
                    pairs.append(rows[key[0]] * rows[key[1]])
                pair_index[k, a, b] = pair_index[k, b, a] = known[key]
    return SearchRows(dispersions, rows, row_index, np.array(pairs), pair_index)


@dataclass(frozen=True)
class DispersionBasis:
    """The eigenspectra broadened to every dispersion, and the fixed parts of the fit.

    Attributes
    ----------
    loglam0, dloglam
        log10 Å of the templates' first pixel, and their step.
    dispersions_kms
        ``(S,)`` the dispersions, km/s (:data:`DISPERSIONS_KMS`).
    broadened
        ``(S, E, N)`` float32: the ``E`` eigenspectra (each scaled to unit RMS) broadened
        to each of the ``S`` dispersions.
    poly
        ``(Q, N)`` float64 Legendre polynomials of degree 0 … Q−1 across the ``N`` pixels
        (on any galaxy's pixels they span the same functions as ``vdispfit``'s).
    fitted
        ``(N,)`` bool: pixels that enter the fit (away from the ends and the lines).
    search
        The dispersion search's rows and their products (:func:`search_rows`).
    """

    loglam0: float
    dloglam: float
    dispersions_kms: np.ndarray
    broadened: np.ndarray
    poly: np.ndarray
    fitted: np.ndarray
    search: SearchRows

    @property
    def n_pix(self) -> int:
        return self.broadened.shape[2]

    def design(self, dispersion: int, columns: int) -> np.ndarray:
        """``(columns + Q, N)`` float64 design rows at dispersion index ``dispersion``."""
        return np.vstack([self.broadened[dispersion, :columns].astype(np.float64),
                          self.poly])


def dispersion_basis(templates: StarTemplates, columns: int = EIGEN_COLUMNS,
                     dispersions_kms: np.ndarray = DISPERSIONS_KMS) -> DispersionBasis:
    """Broaden the first ``columns`` eigenspectra of ``templates`` to every dispersion
    (Gaussian in log λ, ``vdispfit``'s kernel of ±4σ, edges held) and build the mask."""
    from scipy.ndimage import gaussian_filter1d

    if templates.flux.shape[0] < columns:
        raise ValueError(f"continuum templates {templates.source!r} have "
                         f"{templates.flux.shape[0]} rows, {columns} are needed")
    eigen = templates.flux[:columns].astype(np.float64)
    rms = np.sqrt(np.mean(eigen**2, axis=1, keepdims=True))
    if not np.all(rms > 0):
        raise ValueError(f"continuum templates {templates.source!r}: eigenspectra "
                         f"{np.flatnonzero(~(rms[:, 0] > 0)).tolist()} are all zero")
    eigen = eigen / rms
    pixel_kms = (10**templates.dloglam - 1) * C_KMS
    broadened = np.stack([
        eigen if sigma == 0 else gaussian_filter1d(eigen, sigma / pixel_kms, axis=1,
                                                   mode="nearest", truncate=4.0)
        for sigma in dispersions_kms]).astype(np.float32)
    n_pix = eigen.shape[1]
    loglam = templates.loglam0 + templates.dloglam * np.arange(n_pix)
    fitted = np.ones(n_pix, dtype=bool)
    fitted[:EDGE_PIXELS] = fitted[n_pix - EDGE_PIXELS:] = False
    for line in np.log10(air_to_vacuum(np.asarray(MASKED_LINES_AIR))):
        fitted &= np.abs(loglam - line) > MASK_HALF_WIDTH_DLOGLAM
    x = np.linspace(-1, 1, n_pix)
    poly = np.polynomial.legendre.legvander(x, POLY_TERMS - 1).T.copy()
    return DispersionBasis(float(templates.loglam0), float(templates.dloglam),
                           np.asarray(dispersions_kms, dtype=np.float64), broadened, poly,
                           fitted, search_rows(broadened, poly))


@cache
def default_dispersion_basis() -> DispersionBasis:
    """:func:`dispersion_basis` of the shipped eigenspectra (made once per process)."""
    return dispersion_basis(load_continuum_templates("default"))


def load_continuum_templates(path: str | os.PathLike[str] = "default") -> StarTemplates:
    """The eigenspectra file (``"default"``: the shipped ``spEigenElodie`` columns)."""
    if str(path) == "default":
        path = Path(str(resources.files("gasnet_plugin.data").joinpath(
            DEFAULT_CONTINUUM_TEMPLATES)))
    return load_star_templates(path)


def eigenspectra_from_idlspec2d(path: str | os.PathLike[str],
                                columns: int = EIGEN_COLUMNS) -> StarTemplates:
    """Read SDSS's ``spEigenElodie.fits`` (eigenspectra ``(E, N)`` in HDU 0, grid from
    ``COEFF0``/``COEFF1``), its first ``columns`` rows, named by their column."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        header = hdul[0].header
        flux = np.asarray(hdul[0].data[:columns], dtype=np.float32)
        return StarTemplates([f"eigenspectrum {i}" for i in range(flux.shape[0])],
                             float(header["COEFF0"]), float(header["COEFF1"]), flux,
                             f"{Path(path).name}, columns 0-{flux.shape[0] - 1}")


@dataclass
class StellarContinuum:
    """The continuum fit of ``B`` galaxies: the model ``(B, P)`` on their grid (NaN where
    not fitted) and the dispersion it was fitted at ``(B,)`` (km/s, on the grid of
    the basis's dispersions, :data:`DISPERSIONS_KMS` by default; NaN where not fitted)."""

    model: np.ndarray
    dispersion_kms: np.ndarray


def fit_stellar_continuum(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray,
                          z: np.ndarray, basis: DispersionBasis | None = None,
                          threads: int = 1) -> StellarContinuum:
    """The stellar continuum of ``B`` galaxies at redshifts ``z`` (see the module
    docstring).

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``, whose step must be the
        templates' (to 1 %).
    z
        ``(B,)`` redshifts (rounded to whole pixels of the grid; not finite or not above
        −1: not fitted).
    basis
        :func:`dispersion_basis`; ``None``: the shipped one.
    threads
        Chunks of :data:`CHUNK_ROWS` galaxies fitted at once on threads, and within a
        chunk the models of the galaxies that share a dispersion, one dispersion per
        thread, with the threads left (:func:`~gasnet_plugin.thread_map.thread_map`; the
        same results for any number).
    """
    from gasnet_plugin.thread_map import thread_map

    basis = default_dispersion_basis() if basis is None else basis
    n_rows, n_pix = flux.shape
    step = grid_step_mismatch(loglam, basis.dloglam)
    if step is not None:
        raise ValueError(f"continuum templates have {basis.dloglam:g} dex pixels, the grid "
                         f"{step:g}")
    model = np.full((n_rows, n_pix), np.nan)
    dispersion = np.full(n_rows, np.nan)
    firsts = range(0, n_rows, CHUNK_ROWS)
    outer = max(1, min(threads, len(firsts)))

    def fit_chunk(first: int) -> None:
        rows = slice(first, first + CHUNK_ROWS)
        model[rows], dispersion[rows] = _fit_chunk(flux[rows], ivar[rows], loglam, z[rows],
                                                   basis, max(1, threads // outer))

    thread_map(fit_chunk, firsts, outer)
    return StellarContinuum(model, dispersion)


def _fit_chunk(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, z: np.ndarray,
               basis: DispersionBasis, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_stellar_continuum` of one chunk: the model ``(b, P)`` and the dispersion
    ``(b,)``."""
    from gasnet_plugin.thread_map import thread_map

    n_rows, n_pix = flux.shape
    n_rest = basis.n_pix
    ok = measurable_redshift(z)
    # template pixel of each galaxy's observed pixel 0
    shift = np.round((loglam[0] - np.log10(1 + np.where(ok, z, 0.0)) - basis.loglam0)
                     / basis.dloglam).astype(np.int64)
    w = np.empty((n_rows, n_rest))
    wf = np.empty((n_rows, n_rest))
    wff = np.empty(n_rows)
    _rest_frame(as_contiguous_floats(flux), as_contiguous_floats(ivar), shift,
                basis.fitted, w, wf, wff)
    # only galaxies with enough pixels on the templates are fitted
    fitted = np.flatnonzero(ok & ((w > 0).sum(axis=1) > 4 * (EIGEN_COLUMNS + POLY_TERMS)))
    w, wf, wff = w[fitted], wf[fitted], wff[fitted]
    # the dispersion: χ² of the search model on the coarse grid, then the parabola
    n_dispersions = basis.dispersions_kms.size
    chi2 = _search_chi2(w, wf, wff, basis.search)                            # (b', S')
    best = _parabola_minimum(chi2, n_dispersions)
    model_rest = np.empty((fitted.size, n_rest))

    def fit_model(s: int) -> None:
        rows = np.flatnonzero(best == s)          # each dispersion its own galaxies' rows
        model_rest[rows] = _model(w[rows], wf[rows], basis.design(s, EIGEN_COLUMNS))

    thread_map(fit_model, np.unique(best), threads)
    model = np.full((n_rows, n_pix), np.nan)
    model[fitted] = _to_observed(model_rest, shift[fitted], n_pix)
    dispersion = np.full(n_rows, np.nan)
    dispersion[fitted] = basis.dispersions_kms[best]
    return model, dispersion


@numba.njit(cache=True, nogil=True)
def _rest_frame(flux: np.ndarray, ivar: np.ndarray, shift: np.ndarray, fitted: np.ndarray,
                w: np.ndarray, wf: np.ndarray, wff: np.ndarray,
                ) -> None:  # pragma: no cover - compiled
    """Each galaxy on the templates' grid, in place: its weights ``w`` and weighted flux
    ``wf`` ``(b, N)`` at template pixel ``t`` (observed pixel ``t − shift``; 0 off its
    spectrum, on pixels not ``fitted``, where flux or ivar is not finite and where ivar
    is not positive), and
    ``wff`` ``(b,)`` = Σ w f², in float64."""
    n_rows, n_pix = flux.shape
    for b in range(n_rows):
        total = 0.0
        for t in range(fitted.size):
            p = t - shift[b]
            weight = 0.0
            value = 0.0
            if fitted[t] and 0 <= p < n_pix:
                f_p = np.float64(flux[b, p])
                w_p = np.float64(ivar[b, p])
                # a pixel's weight as in every fit (line_fit_kernels.pixel_weight)
                if np.isfinite(f_p) and np.isfinite(w_p) and w_p > 0.0:
                    weight = w_p
                    value = f_p
            w[b, t] = weight
            wf[b, t] = weight * value
            total += weight * value * value
        wff[b] = total


@numba.njit(cache=True, nogil=True)
def _to_observed(model_rest: np.ndarray, shift: np.ndarray,
                 n_pix: int) -> np.ndarray:  # pragma: no cover - compiled
    """The models ``(b, N)`` on the templates' grid back on the galaxies' pixels ``(b,
    P)``: observed pixel ``p`` is template pixel ``p + shift``; NaN beyond the templates
    and on their :data:`EDGE_PIXELS` end pixels."""
    n_rows, n_rest = model_rest.shape
    out = np.full((n_rows, n_pix), np.nan)
    for b in range(n_rows):
        for p in range(n_pix):
            t = p + shift[b]
            if EDGE_PIXELS <= t < n_rest - EDGE_PIXELS:
                out[b, p] = model_rest[b, t]
    return out


def load_kernels() -> None:
    """Load the compiled kernels now (numba's on-disk cache; compiled on the first call
    after an install), so that the cost is paid at set-up, not by the first batch."""
    one = np.ones((1, 3), dtype=np.float32)
    w, wf, wff = np.empty((1, 3)), np.empty((1, 3)), np.empty(1)
    for flux in (one, one.astype(np.float64)):
        _rest_frame(flux, flux, np.zeros(1, dtype=np.int64), np.ones(3, dtype=bool), w, wf,
                    wff)
    _to_observed(w, np.zeros(1, dtype=np.int64), 3)


def _parabola_minimum(chi2: np.ndarray, n_dispersions: int) -> np.ndarray:
    """Index ``(b,)`` into the grid of ``n_dispersions`` nearest the minimum of the parabola
    through the lowest of ``chi2`` ``(b, S')`` (on every :data:`SEARCH_EVERY`-th
    dispersion) and its two neighbours; at the grid's ends, the end itself (``vdispfit``
    mirrors the grid at 0, which puts the minimum there)."""
    n_search = chi2.shape[1]
    chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
    lowest = np.argmin(chi2, axis=1)
    inner = np.clip(lowest, 1, n_search - 2)
    left, mid, right = (np.take_along_axis(chi2, (inner + k)[:, None], 1)[:, 0]
                        for k in (-1, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        curvature = left - 2 * mid + right
        offset = np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)
    offset = np.clip(np.nan_to_num(offset), -1.0, 1.0)
    at_end = (lowest == 0) | (lowest == n_search - 1)
    position = np.where(at_end, lowest, inner + offset)                     # search units
    return np.clip(np.round(position * SEARCH_EVERY).astype(np.int64), 0, n_dispersions - 1)


def _normal_solve(normal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve normal equations ``(b, D, D)`` for ``rhs`` ``(b, D)``, with a ridge of 1e-12
    of the mean diagonal against a singular matrix."""
    n_dim = normal.shape[1]
    scale = np.einsum("bii->b", normal)[:, None, None] / n_dim
    normal = normal + 1e-12 * np.maximum(scale, 1e-300) * np.eye(n_dim)
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


def _search_chi2(w: np.ndarray, wf: np.ndarray, wff: np.ndarray, search: SearchRows,
                 ) -> np.ndarray:
    """χ² ``(b, S')`` of the search fits (:class:`SearchRows`) to ``b`` galaxies (weights
    ``w``, weighted fluxes ``wf`` ``(b, N)``, ``Σ w f²`` ``wff`` ``(b,)``) at every
    searched dispersion: every normal matrix from one product of the weights with the
    rows' pairwise products, every right-hand side from one of the weighted fluxes with
    the rows."""
    n_rows = w.shape[0]
    n_search, n_dim = search.row_index.shape
    normal = (w @ search.pairs.T)[:, search.pair_index]                     # (b, S', D, D)
    rhs = (wf @ search.rows.T)[:, search.row_index]                         # (b, S', D)
    solution = _normal_solve(normal.reshape(-1, n_dim, n_dim), rhs.reshape(-1, n_dim))
    return wff[:, None] - np.einsum("bsd,bsd->bs", rhs,
                                    solution.reshape(n_rows, n_search, n_dim))


def _model(w: np.ndarray, wf: np.ndarray, design: np.ndarray) -> np.ndarray:
    """The model ``(b, N)`` of the design rows ``(D, N)`` fitted to ``b`` galaxies
    (weights ``w``, weighted fluxes ``wf`` ``(b, N)``). Few galaxies share a dispersion,
    so here each galaxy's weighted design rows are formed (:data:`MODEL_ROWS` at a time)
    and all their normal matrices are one matrix product with the design, where
    pairwise products of the rows (as the search's, :class:`SearchRows`) would cost more
    to form than they save: 435 rows for each of 35 dispersions."""
    n_rows, n_dim = w.shape[0], design.shape[0]
    normal = np.empty((n_rows, n_dim, n_dim))
    for first in range(0, n_rows, MODEL_ROWS):
        part = slice(first, first + MODEL_ROWS)
        weighted = design[None] * w[part, None, :]                           # (m, D, N)
        product = design @ weighted.reshape(-1, w.shape[1]).T                # (D, m D)
        normal[part] = product.reshape(n_dim, -1, n_dim).transpose(1, 0, 2)
    return _normal_solve(normal, wf @ design.T) @ design
