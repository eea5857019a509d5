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
lowest χ² is kept (its curvature along the grid, in ln σ, gives the width error). Everything
is batched numpy over spectra, width grid and window pixels.

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


def _windows(loglam: np.ndarray, z: np.ndarray, window: tuple[float, float],
             ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices ``(B, M)`` of each spectrum's observed window and whether each is
    inside the window and the grid."""
    dloglam = (loglam[-1] - loglam[0]) / (loglam.size - 1)
    width = int(np.ceil(np.log10(window[1] / window[0]) / dloglam)) + 1
    start = np.searchsorted(loglam, np.log10(window[0] * (1 + np.nan_to_num(z, nan=0.0))))
    index = start[:, None] + np.arange(width)[None, :]
    inside = index < loglam.size
    index = np.minimum(index, loglam.size - 1)
    upper = np.log10(window[1] * (1 + np.nan_to_num(z, nan=0.0)))
    inside &= loglam[index] <= upper[:, None]
    return index, inside


def _profiles(rest: np.ndarray, lines: list[tuple[float, float]], sigma: np.ndarray,
              ) -> np.ndarray:
    """Unit-flux Gaussians ``(B, S, M)`` at rest wavelengths ``rest`` ``(B, M)`` (Å) for
    the lines ``[(wavelength Å, weight), ...]`` summed, widths ``sigma`` ``(S,)`` or per
    row ``(B, S)`` km/s, in observed-frame flux per observed Å: the caller divides by
    (1 + z)."""
    sigma = np.broadcast_to(sigma, (rest.shape[0], np.shape(sigma)[-1]))
    safe = np.where(sigma > 0, sigma, 1.0)[:, :, None]                    # (B, S, 1)
    # exp(−v²/2σ²) / (√(2π) σ_Å): per width a factor on v² and a scale, per pixel one exp;
    # widths of 0 get a zero scale (no component)
    exponent = -0.5 / safe**2
    out = None
    ln_rest = np.log(rest)[:, None, :]                                     # (B, 1, M)
    for wavelength, weight in lines:
        velocity_squared = (C_KMS * (ln_rest - np.log(wavelength))) ** 2
        scale = np.where(sigma[:, :, None] > 0,
                         weight * C_KMS / (np.sqrt(2 * np.pi) * wavelength * safe), 0.0)
        profile = np.exp(exponent * velocity_squared)
        profile *= scale
        out = profile if out is None else out + profile
    return out


def measure_lines(flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray, z: np.ndarray,
                  continuum: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measure every line of :data:`LINE_GROUPS` in ``B`` spectra at redshifts ``z``.

    Parameters
    ----------
    flux, ivar
        ``(B, P)`` on the log10-λ grid ``loglam`` ``(P,)``.
    z
        ``(B,)`` redshifts (NaN: nothing measured).
    continuum
        ``(B, P)`` a model continuum to subtract first (e.g. the stellar continuum of
        :mod:`gasnet_plugin.stellar_continuum`; NaN rows: none), or ``None``. The local
        linear term is still fitted on top; equivalent widths are then relative to the
        model continuum plus that term at the line.

    Returns
    -------
    dict
        ``"<LINE>_<QUANTITY>"`` → ``(B,)`` float64 (:data:`QUANTITIES`), plus
        ``"<LINE>_DCHI2"`` for the broad components.
    """
    n_rows = flux.shape[0]
    z = np.asarray(z, dtype=np.float64)
    out = {f"{name}_{q}": np.full(n_rows, np.nan) for name in line_names() for q in QUANTITIES}
    out.update({f"{line.name}_DCHI2": np.full(n_rows, np.nan) for group in LINE_GROUPS
                for line in group.lines if line.kind == "broad"})
    for group in LINE_GROUPS:
        index, inside = _windows(loglam, z, group.window)
        valid = inside & (np.take_along_axis(ivar, index, 1) > 0)
        covered = np.isfinite(z) & (valid.sum(axis=1) >= max(MIN_PIXELS,
                                                             MIN_COVERAGE * index.shape[1]))
        rows = np.flatnonzero(covered)
        if rows.size == 0:
            continue
        model = None if continuum is None else continuum[rows]
        fitted = _fit_group(group, flux[rows], ivar[rows], loglam, z[rows], index[rows],
                            inside[rows], model)
        for name, values in fitted.items():
            out[name][rows] = values
    return out


def _fit_group(group: LineGroup, flux: np.ndarray, ivar: np.ndarray, loglam: np.ndarray,
               z: np.ndarray, index: np.ndarray, inside: np.ndarray,
               continuum: np.ndarray | None) -> dict[str, np.ndarray]:
    """The measurements of one group's lines in ``B`` spectra whose window is covered."""
    n_rows = flux.shape[0]
    out: dict[str, np.ndarray] = {}
    f = np.take_along_axis(flux, index, 1).astype(np.float64)
    w = np.where(inside, np.take_along_axis(ivar, index, 1), 0.0).astype(np.float64)
    w = np.where(np.isfinite(f) & np.isfinite(w), w, 0.0)
    model = np.zeros_like(f)
    if continuum is not None:
        model = np.take_along_axis(continuum, index, 1).astype(np.float64)
        model = np.where(np.isfinite(model).all(axis=1, keepdims=True), model, 0.0)
    f = np.where(w > 0, f - model, 0.0)
    one_plus_z = (1 + z)[:, None]
    rest = 10.0 ** loglam[index] / one_plus_z
    grid = _sigma_grid(group)                                       # (S, n_kinds)
    normal, rhs = _normal_equations(group, rest, f, w, one_plus_z)  # (B, S, D, D)
    # components with zero width (no broad component) are dropped by a unit diagonal
    empty = np.einsum("bsdd->bsd", normal) <= 0
    normal = normal + empty[..., None] * np.eye(normal.shape[-1])
    amplitude = np.linalg.solve(normal, rhs[..., None])[..., 0]    # (B, S, D)
    chi2 = np.einsum("bm,bm->b", w, f * f)[:, None] - np.einsum("bsd,bsd->bs", amplitude,
                                                                  rhs)
    kinds = _kinds(group)
    usable = (w > 0).sum(axis=1) >= MIN_PIXELS
    best = np.argmin(chi2, axis=1)
    # refine the narrow widths between grid points (parabola in ln σ) and refit there
    parabolas = {kind: _width_parabola(chi2, grid[:, c], best)
                 for c, kind in enumerate(kinds)}
    widths = {kind: (grid[best, c] if kind == "broad" else parabolas[kind][0])[:, None]
              for c, kind in enumerate(kinds)}
    amp, covariance, _ = _solve_at(group, rest, f, w, one_plus_z, widths)
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
                fits.append((best_k, *_solve_at(group, rest, f, w, one_plus_z, widths_k)))
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


def _normal_equations(group: LineGroup, rest: np.ndarray, f: np.ndarray, w: np.ndarray,
                      one_plus_z: np.ndarray, widths: dict[str, np.ndarray] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted normal matrix ``(B, S, D, D)`` and right-hand side ``(B, S, D)`` of every
    width combination ``S`` of the group (:func:`_sigma_grid` order), design columns: the
    linear continuum (2) then the group's lines in order.

    Built from blocks, each a batched matrix product over the window's pixels: the
    continuum with itself, each width axis's profiles with the continuum and themselves,
    and the two axes' profiles with each other; the full matrices are only assembled.
    ``widths`` replaces a kind's grid by per-row widths ``(B, S_k)``."""
    n_rows, n_pix = f.shape
    kinds = _kinds(group)
    axes: dict[str, np.ndarray] = {**WIDTH_GRIDS, **(widths or {})}
    t = np.broadcast_to(np.linspace(-1, 1, n_pix), (n_rows, n_pix))
    continuum = np.stack([np.ones_like(t), t], axis=1)                     # (B, 2, M)
    wf = w * f
    profiles, members = {}, {}
    for kind in kinds:
        lines = [k for k, line in enumerate(group.lines) if _kind(line) == kind]
        members[kind] = lines
        stack = []
        for k in lines:
            line = group.lines[k]
            parts = [(line.wavelength, 1.0)]
            if line.partner:
                parts.append((line.partner[1], line.partner[2]))
            stack.append(_profiles(rest, parts, axes[kind]) / one_plus_z[:, :, None])
        profiles[kind] = np.stack(stack, axis=2)                           # (B, S_k, L_k, M)
    n_cont = 2
    n_dim = n_cont + len(group.lines)
    shape = [np.shape(axes[k])[-1] for k in kinds]
    normal = np.zeros((n_rows, *shape, n_dim, n_dim))
    rhs = np.zeros((n_rows, *shape, n_dim))
    sums = w @ np.stack([np.ones(n_pix), t[0], t[0] * t[0]]).T             # (B, 3)
    cc = sums[:, [[0, 1], [1, 2]]]                                        # Σw [1 t; t t²]
    normal[..., :n_cont, :n_cont] = cc.reshape(n_rows, *([1] * len(kinds)), n_cont, n_cont)
    rhs[..., :n_cont] = np.einsum("bim,bm->bi", continuum, wf).reshape(
        n_rows, *([1] * len(kinds)), n_cont)
    for a, kind in enumerate(kinds):
        p = profiles[kind]
        n_lines = len(members[kind])
        cols = [n_cont + k for k in members[kind]]
        pw = p * w[:, None, None, :]
        flat = pw.reshape(n_rows, -1, n_pix)
        cross = np.matmul(flat, continuum.transpose(0, 2, 1)).reshape(
            n_rows, shape[a], n_lines, n_cont)                             # (B, S_k, L_k, 2)
        self_block = np.matmul(pw, p.transpose(0, 1, 3, 2))                # (B, S_k, L_k, L_k)
        r = np.matmul(flat, f[:, :, None])[..., 0].reshape(n_rows, shape[a], n_lines)
        expand = [1] * len(kinds)
        expand[a] = shape[a]
        view = (n_rows, *expand)
        for i, ci in enumerate(cols):
            normal[..., ci, :n_cont] = cross[:, :, i].reshape(*view, n_cont)
            normal[..., :n_cont, ci] = cross[:, :, i].reshape(*view, n_cont)
            rhs[..., ci] = r[:, :, i].reshape(view)
            for j, cj in enumerate(cols):
                normal[..., ci, cj] = self_block[:, :, i, j].reshape(view)
        for b_axis in range(a + 1, len(kinds)):
            other = kinds[b_axis]
            q = profiles[other]
            cols_q = [n_cont + k for k in members[other]]
            mixed = np.matmul(flat, q.reshape(n_rows, -1, n_pix).transpose(0, 2, 1)).reshape(
                n_rows, shape[a], n_lines, shape[b_axis], len(cols_q))
            for i, ci in enumerate(cols):
                for j, cj in enumerate(cols_q):
                    block = mixed[:, :, i, :, j]                           # (B, S_a, S_b)
                    normal[..., ci, cj] = block
                    normal[..., cj, ci] = block
    return (normal.reshape(n_rows, -1, n_dim, n_dim), rhs.reshape(n_rows, -1, n_dim))


def _kind(line: Line) -> str:
    return "broad" if line.kind == "broad" else ("any" if line.kind == "any" else "narrow")


def _kinds(group: LineGroup) -> list[str]:
    """The kinds of width a group fits, sorted by name (the axes of its width grid)."""
    return sorted({_kind(line) for line in group.lines})


def _sigma_grid(group: LineGroup) -> np.ndarray:
    """``(S, n_kinds)`` the width combinations tried for a group (kinds sorted by name)."""
    mesh = np.meshgrid(*[WIDTH_GRIDS[k] for k in _kinds(group)], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _solve_at(group: LineGroup, rest: np.ndarray, f: np.ndarray, w: np.ndarray,
              one_plus_z: np.ndarray, widths: dict[str, np.ndarray],
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitudes ``(B, D)``, their covariance ``(B, D, D)`` and χ² ``(B,)`` at one width
    per kind and row (``widths``: kind → ``(B, 1)`` km/s; 0 drops a component)."""
    normal, rhs = _normal_equations(group, rest, f, w, one_plus_z, widths)
    normal, rhs = normal[:, 0], rhs[:, 0]
    normal = normal + (np.einsum("bdd->bd", normal) <= 0)[..., None] * np.eye(normal.shape[-1])
    amplitude = np.linalg.solve(normal, rhs[..., None])[..., 0]
    chi2 = np.einsum("bm,bm->b", w, f * f) - np.einsum("bd,bd->b", amplitude, rhs)
    return amplitude, np.linalg.inv(normal), chi2


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
    for r in range(1, values.size - 1):
        at = np.flatnonzero(sigmas[best] == values[r])
        if at.size == 0:
            continue
        c0 = chi2[at, best[at]]
        cm, cp = chi2[at, best[at] - step], chi2[at, best[at] + step]
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
