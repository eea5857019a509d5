"""Emission-line measurements at a known redshift: flux, equivalent width and width.

Lines are fitted in *groups* of neighbours that share a window (Hα with [N II], Hβ with
[O III], ...). In each group's rest-frame window every spectrum is modelled as a local
linear continuum plus Gaussian lines, linear in their amplitudes for fixed widths::

    f(λ) = c0 + c1 t + Σ_k A_k g_k(λ; σ)      t ∈ [−1, 1] across the window

``g_k`` is a unit-flux Gaussian in velocity (the amplitude ``A_k`` is the line flux, in the
spectrum's flux unit × Å). The narrow lines of a group share one width ``σ_n``, its broad
component (Hα, Hβ) another ``σ_b``; doublets with a fixed ratio ([N II] 6548/6584, [O III]
4959/5007) are one profile. Widths are taken from grids; for every spectrum and grid point
the amplitudes are the exact weighted least-squares solution, and the grid point with the
lowest χ² is kept (its curvature along the grid, in ln σ, gives the width error). Reading
a group's windows from the batch and the fits at every width combination are compiled
passes per spectrum (:mod:`gasnet_plugin.line_fit_kernels`); the rest is batched numpy
over spectra.

Reported per line: ``FLUX`` ± ``FLUX_ERR`` (observed frame), ``EW`` ± ``EW_ERR`` (rest frame,
Å, positive for emission: flux / continuum at the line / (1 + z)) and ``SIGMA`` ±
``SIGMA_ERR`` (km/s, as observed: the instrument's resolution, ~70 km/s for SDSS, is not
removed). A line whose window is less than ``MIN_COVERAGE`` covered by valid pixels is
NaN. Broad
components also get ``DCHI2``: how much better the fit is with the broad component than
without (its significance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

C_KMS = 299792.458
"""Speed of light, km/s."""
NARROW_SIGMAS = np.array([40.0, 60.0, 90.0, 130.0, 190.0, 280.0, 400.0, 600.0])
"""Grid of narrow-line widths σ, km/s."""
BROAD_SIGMAS = np.array([0.0, 900.0, 1400.0, 2100.0, 3200.0, 4800.0])
"""Grid of broad-component widths σ, km/s (0: no broad component)."""
ANY_SIGMAS = np.concatenate([NARROW_SIGMAS, BROAD_SIGMAS[1:], [7000.0]])
"""Grid for lines that can be narrow or broad (Mg II, C IV, Lyα), km/s."""
WIDTH_GRIDS = {"narrow": NARROW_SIGMAS, "broad": BROAD_SIGMAS, "any": ANY_SIGMAS}
"""The width grid of each kind of line."""
MIN_PIXELS = 8
"""Valid pixels a group's window needs."""
MIN_COVERAGE = 0.6
"""Fraction of a group's window that must lie on the grid with valid pixels."""
GROUP_ROWS = 256
"""Spectra a group is fitted for at once: the pieces that threads share
(:func:`measure_lines`); a spectrum's fit does not depend on the others in its piece."""


@dataclass(frozen=True)
class Line:
    """One measured line.

    Attributes
    ----------
    name
        Column prefix, e.g. ``HALPHA``.
    wavelength
        Rest vacuum wavelength, Å.
    kind
        ``"narrow"``, ``"broad"`` or ``"any"`` (its own width over :data:`ANY_SIGMAS`).
    partner
        A weaker line fixed to this one's profile: (name, rest wavelength Å, flux ratio).
    """

    name: str
    wavelength: float
    kind: str = "narrow"
    partner: tuple[str, float, float] | None = None


@dataclass(frozen=True)
class LineGroup:
    """Lines fitted together in one rest-frame window ``(low, high)`` Å."""

    window: tuple[float, float]
    lines: tuple[Line, ...]


LINE_GROUPS = (
    LineGroup((6440.0, 6690.0), (
        Line("HALPHA", 6564.61),
        Line("NII_6584", 6585.27, partner=("NII_6548", 6549.86, 1 / 2.96)),
        Line("HALPHA_BROAD", 6564.61, "broad"))),
    LineGroup((4770.0, 5060.0), (
        Line("HBETA", 4862.68),
        Line("OIII_5007", 5008.24, partner=("OIII_4959", 4960.30, 1 / 2.98)),
        Line("HBETA_BROAD", 4862.68, "broad"))),
    LineGroup((6690.0, 6770.0), (Line("SII_6716", 6718.29), Line("SII_6731", 6732.67))),
    LineGroup((3690.0, 3770.0), (Line("OII_3727", 3728.48),)),
    LineGroup((2700.0, 2900.0), (Line("MGII_2800", 2799.49, "any"),)),
    LineGroup((1450.0, 1650.0), (Line("CIV_1549", 1549.06, "any"),)),
    LineGroup((1160.0, 1290.0), (Line("LYALPHA", 1215.67, "any"),)),
)
"""The measured lines: Hα, [N II] 6548/6584, Hβ, [O III] 4959/5007, [S II] 6717/6731,
[O II] 3727, Mg II, C IV and Lyα, and broad Hα and Hβ components."""


def line_names() -> list[str]:
    """Every reported line, partners included, in table order."""
    names = []
    for group in LINE_GROUPS:
        for line in group.lines:
            names.append(line.name)
            if line.partner:
                names.append(line.partner[0])
    return names


QUANTITIES = ("FLUX", "FLUX_ERR", "EW", "EW_ERR", "SIGMA", "SIGMA_ERR")
"""What is reported per line (column ``<LINE>_<QUANTITY>``)."""


def _window_starts(loglam: np.ndarray, one_plus_z: np.ndarray,
                   window: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each spectrum's observed window lies on the grid (``one_plus_z`` ``(B,)``:
    1 + z, 1 where z is not measurable): its first pixel ``(B,)`` (int64), its upper end ``(B,)``
    (log10 Å) and the window's width in pixels ``M``
    (:func:`~gasnet_plugin.line_fit_kernels.gather_windows` reads it)."""
    dloglam = (loglam[-1] - loglam[0]) / (loglam.size - 1)
    width = int(np.ceil(np.log10(window[1] / window[0]) / dloglam)) + 1
    start = np.searchsorted(loglam, np.log10(window[0] * one_plus_z)).astype(np.int64)
    return start, np.log10(window[1] * one_plus_z), width


def _gather(flux: np.ndarray, ivar: np.ndarray, continuum: np.ndarray | None,
            loglam: np.ndarray, wave: np.ndarray, one_plus_z: np.ndarray, rows: np.ndarray,
            start: np.ndarray, upper: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    """The windows ``(b, M)`` of the spectra ``rows`` as the fit reads them (``wave``:
    the grid in Å; ``one_plus_z``, ``start``, ``upper``: :func:`_window_starts`): flux
    minus the continuum model, weights, the model, rest wavelength (Å) and its ln (the
    compiled :func:`~gasnet_plugin.line_fit_kernels.gather_windows`)."""
    from gasnet_plugin.line_fit_kernels import gather_windows

    out = [np.empty((rows.size, width)) for _ in range(5)]
    gather_windows(flux, ivar, np.empty((0, 0)) if continuum is None else continuum,
                   loglam, wave, start, upper, one_plus_z, rows, *out)
    return tuple(out)


def measure_lines(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, z: np.ndarray,
                  continuum: np.ndarray | None = None, threads: int = 1,
                  ) -> dict[str, np.ndarray]:
    """Measure every line of :data:`LINE_GROUPS` in ``B`` spectra at redshifts ``z``.

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``.
    z
        ``(B,)`` redshifts (not finite or not above −1: nothing measured).
    continuum
        ``(B, P)`` a model continuum to subtract first (e.g. the stellar continuum of
        :mod:`gasnet_plugin.stellar_continuum`; NaN rows: none), or ``None``. The local
        linear term is still fitted on top; equivalent widths are then relative to the
        model continuum plus that term at the line.
    threads
        Pieces measured at once, on threads: each group's spectra in parts of
        :data:`GROUP_ROWS` (:func:`~gasnet_plugin.thread_map.thread_map`; every spectrum's
        fit is its own, so the results are the same for any number).

    Returns
    -------
    dict
        ``"<LINE>_<QUANTITY>"`` → ``(B,)`` float64 (:data:`QUANTITIES`), plus
        ``"<LINE>_DCHI2"`` for the broad components.
    """
    from gasnet_plugin.line_fit_kernels import count_valid
    from gasnet_plugin.models.star_templates import as_contiguous_floats, measurable_redshift
    from gasnet_plugin.thread_map import thread_map

    n_rows = flux.shape[0]
    z = np.asarray(z, dtype=np.float64)
    out = {f"{name}_{q}": np.full(n_rows, np.nan) for name in line_names() for q in QUANTITIES}
    out.update({f"{line.name}_DCHI2": np.full(n_rows, np.nan) for group in LINE_GROUPS
                for line in group.lines if line.kind == "broad"})
    flux, ivar = as_contiguous_floats(flux), as_contiguous_floats(ivar)
    if continuum is not None:
        continuum = np.ascontiguousarray(continuum, dtype=np.float64)
    measurable = measurable_redshift(z)
    wave, one_plus_z = 10.0**loglam, np.where(measurable, 1 + z, 1.0)
    pieces = []                         # (group, its windows, rows of one part)
    for group in LINE_GROUPS:
        start, upper, width = _window_starts(loglam, one_plus_z, group.window)
        n_valid = count_valid(flux, ivar, loglam, start, upper, width)
        covered = measurable & (n_valid >= max(MIN_PIXELS, MIN_COVERAGE * width))
        rows = np.flatnonzero(covered)
        pieces += [(group, (start, upper, width), rows[first:first + GROUP_ROWS])
                   for first in range(0, rows.size, GROUP_ROWS)]

    def measure(piece: tuple[LineGroup, tuple[np.ndarray, np.ndarray, int], np.ndarray],
                ) -> None:
        group, (start, upper, width), rows = piece
        windows = _gather(flux, ivar, continuum, loglam, wave, one_plus_z, rows, start,
                          upper, width)
        for name, values in _fit_group(group, *windows, z[rows]).items():
            out[name][rows] = values        # its group's columns, its own rows

    thread_map(measure, pieces, threads)
    return out


def _fit_group(group: LineGroup, f: np.ndarray, w: np.ndarray, model: np.ndarray,
               rest: np.ndarray, ln_rest: np.ndarray, z: np.ndarray,
               ) -> dict[str, np.ndarray]:
    """The measurements of one group's lines in ``B`` spectra at redshifts ``z`` ``(B,)``
    from their windows ``(B, M)`` (:func:`_gather`): flux minus the continuum model,
    weights, the model, and rest wavelength (Å) and its ln."""
    n_rows = z.size
    out: dict[str, np.ndarray] = {}
    one_plus_z = (1 + z)[:, None]
    grid = _sigma_grid(group)                                       # (S, n_kinds)
    _, chi2, _ = _fit_widths(group, ln_rest, f, w, one_plus_z)      # (B, S)
    kinds = _kinds(group)
    usable = (w > 0).sum(axis=1) >= MIN_PIXELS
    best = np.argmin(chi2, axis=1)
    # refine the narrow widths between grid points (parabola in ln σ) and refit there
    parabolas = {kind: _width_parabola(chi2, grid[:, c], best)
                 for c, kind in enumerate(kinds)}
    widths = {kind: (grid[best, c] if kind == "broad" else parabolas[kind][0])[:, None]
              for c, kind in enumerate(kinds)}
    amp, covariance, _ = _solve_at(group, ln_rest, f, w, one_plus_z, widths)
    t = np.linspace(-1, 1, f.shape[1])
    for k, line in enumerate(group.lines):
        d = 2 + k
        column = kinds.index(_kind(line))
        sigma = widths[_kind(line)][:, 0]
        sigma_err = parabolas[_kind(line)][1]
        value, error = amp[:, d], np.sqrt(np.maximum(covariance[:, d, d], 0.0))
        if line.kind == "broad":
            # the broad component at its best width, and how much it improves the fit
            # over the best fit without it (narrow widths refined in both)
            has = grid[:, column] > 0
            fits = []
            for keep in (has, ~has):
                best_k = np.argmin(np.where(keep[None, :], chi2, np.inf), axis=1)
                widths_k = {kind: (grid[best_k, c] if kind == "broad" else
                                   _width_parabola(chi2, grid[:, c], best_k)[0])[:, None]
                            for c, kind in enumerate(kinds)}
                fits.append((best_k, *_solve_at(group, ln_rest, f, w, one_plus_z,
                                                widths_k)))
            (best_b, amp_b, cov_b, chi2_b), (_, _, _, chi2_nb) = fits
            value = amp_b[:, d]
            error = np.sqrt(np.maximum(cov_b[:, d, d], 0.0))
            sigma = grid[best_b, column]
            sigma_err = np.full(n_rows, np.nan)
            out[f"{line.name}_DCHI2"] = np.where(usable, chi2_nb - chi2_b, np.nan)
        entries = [(line.name, 1.0, line.wavelength)]
        if line.partner:
            entries.append((line.partner[0], line.partner[2], line.partner[1]))
        for name, ratio, wavelength in entries:
            # the continuum under the line: the model plus the local linear term there
            at = np.argmin(np.abs(rest - wavelength), axis=1)[:, None]
            continuum_center = (np.take_along_axis(model, at, 1)[:, 0] + amp[:, 0]
                                + amp[:, 1] * t[at[:, 0]])
            with np.errstate(invalid="ignore", divide="ignore"):
                ew = ratio * value / continuum_center / (1 + z)
                ew_err = ratio * error / np.abs(continuum_center) / (1 + z)
            for quantity, values in (("FLUX", ratio * value), ("FLUX_ERR", ratio * error),
                                     ("EW", ew), ("EW_ERR", ew_err), ("SIGMA", sigma),
                                     ("SIGMA_ERR", sigma_err)):
                out[f"{name}_{quantity}"] = np.where(usable, values, np.nan)
    return out


def _fit_widths(group: LineGroup, ln_rest: np.ndarray, f: np.ndarray, w: np.ndarray,
                one_plus_z: np.ndarray, widths: dict[str, np.ndarray] | None = None,
                covariance: bool = False,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The group's weighted least-squares fit at every width combination ``S`` of its grid
    (:func:`_sigma_grid` order), or at one combination per row where ``widths`` gives a
    kind's widths per row ``(B, 1)`` (km/s); the compiled
    :func:`~gasnet_plugin.line_fit_kernels.fit_widths`.

    Returns the amplitudes ``(B, S, D)`` (design columns: the linear continuum (2), then
    the group's lines in order), the χ² ``(B, S)`` and, with ``covariance``, the inverse
    normal matrices ``(B, S, D, D)``."""
    from gasnet_plugin.line_fit_kernels import fit_widths

    n_rows, n_pix = f.shape
    line_kind, part_line, part_ln_center, part_scale = _group_arrays(group)
    kinds = _kinds(group)
    chosen: dict[str, np.ndarray] = {**WIDTH_GRIDS, **(widths or {})}
    axes = [np.broadcast_to(chosen[kind], (n_rows, np.shape(chosen[kind])[-1]))
            for kind in kinds]
    n_widths = np.array([axis.shape[1] for axis in axes], dtype=np.int64)
    packed = np.zeros((len(kinds), n_rows, int(n_widths.max())))
    for a, axis in enumerate(axes):
        packed[a, :, :axis.shape[1]] = axis
    n_combos = int(np.prod(n_widths))
    n_dim = 2 + len(group.lines)
    amplitude = np.empty((n_rows, n_combos, n_dim))
    chi2 = np.empty((n_rows, n_combos))
    inverse = (np.empty((n_rows, n_combos, n_dim, n_dim)) if covariance
               else np.empty((0, 0, 0, 0)))
    fit_widths(np.ascontiguousarray(ln_rest), np.linspace(-1, 1, n_pix),
               np.ascontiguousarray(f), np.ascontiguousarray(w), 1.0 / one_plus_z[:, 0],
               line_kind, part_line, part_ln_center, part_scale, packed, n_widths, amplitude,
               chi2, inverse)
    return amplitude, chi2, inverse if covariance else None


@cache
def _group_arrays(group: LineGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The group's lines for :func:`~gasnet_plugin.line_fit_kernels.fit_widths`: each
    line's kind (index into :func:`_kinds`), and per Gaussian (a line and its fixed
    partner) its line, ln rest wavelength and ``ratio · c / (√(2π) λ)``."""
    kinds = _kinds(group)
    line_kind, part_line, part_ln_center, part_scale = [], [], [], []
    for index, line in enumerate(group.lines):
        line_kind.append(kinds.index(_kind(line)))
        parts = [(line.wavelength, 1.0)]
        if line.partner:
            parts.append((line.partner[1], line.partner[2]))
        for wavelength, ratio in parts:
            part_line.append(index)
            part_ln_center.append(np.log(wavelength))
            part_scale.append(ratio * C_KMS / (np.sqrt(2 * np.pi) * wavelength))
    return (np.array(line_kind, dtype=np.int64), np.array(part_line, dtype=np.int64),
            np.array(part_ln_center), np.array(part_scale))


def _kind(line: Line) -> str:
    return "broad" if line.kind == "broad" else ("any" if line.kind == "any" else "narrow")


def _kinds(group: LineGroup) -> list[str]:
    """The kinds of width a group fits, sorted by name (the axes of its width grid)."""
    return sorted({_kind(line) for line in group.lines})


def _sigma_grid(group: LineGroup) -> np.ndarray:
    """``(S, n_kinds)`` the width combinations tried for a group (kinds sorted by name)."""
    mesh = np.meshgrid(*[WIDTH_GRIDS[k] for k in _kinds(group)], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _solve_at(group: LineGroup, ln_rest: np.ndarray, f: np.ndarray, w: np.ndarray,
              one_plus_z: np.ndarray, widths: dict[str, np.ndarray],
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitudes ``(B, D)``, their covariance ``(B, D, D)`` and χ² ``(B,)`` at one width
    per kind and row (``widths``: kind → ``(B, 1)`` km/s; 0 drops a component)."""
    amplitude, chi2, covariance = _fit_widths(group, ln_rest, f, w, one_plus_z, widths,
                                              covariance=True)
    return amplitude[:, 0], covariance[:, 0], chi2[:, 0]


def _width_parabola(chi2: np.ndarray, sigmas: np.ndarray, best: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The χ² parabola in ln σ through each row's best grid point and its two neighbours
    on that width's axis (other widths fixed): the width at its vertex (the grid value at
    an edge or without positive curvature; within one grid step) and the 1σ error of the
    width from its curvature (NaN at an edge), both ``(B,)``."""
    refined = sigmas[best].astype(float)
    error = np.full(chi2.shape[0], np.nan)
    values = np.unique(sigmas[sigmas > 0])
    if values.size < 3:
        return refined, error
    step = _axis_step(sigmas, values)   # neighbours share every other width: a flat offset
    # rows whose best width is an inner value of the axis (not an edge, not 0)
    position = np.minimum(np.searchsorted(values, sigmas[best]), values.size - 1)
    at = np.flatnonzero((position >= 1) & (position <= values.size - 2)
                        & (values[position] == sigmas[best]))
    r, best_at = position[at], best[at]
    c0 = chi2[at, best_at]
    cm, cp = chi2[at, best_at - step], chi2[at, best_at + step]
    lo, hi = np.log(values[r - 1] / values[r]), np.log(values[r + 1] / values[r])
    # vertex of the parabola through (lo, cm), (0, c0), (hi, cp)
    a = ((cp - c0) / hi - (cm - c0) / lo) / (hi - lo)
    b = (cm - c0) / lo - a * lo
    curvature = (cm - 2 * c0 + cp) / hi**2
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = np.where(a > 0, -b / (2 * a), 0.0)
        error[at] = np.where(curvature > 0, values[r] * np.sqrt(2 / curvature), np.nan)
    refined[at] = values[r] * np.exp(np.clip(vertex, lo, hi))
    return refined, error


def _axis_step(sigmas: np.ndarray, values: np.ndarray) -> int:
    """Flat-index distance between neighbouring values of one width axis of the grid."""
    first = np.flatnonzero(sigmas == values[0])[0]
    second = np.flatnonzero(sigmas == values[1])[0]
    return int(second - first)
