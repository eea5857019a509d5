"""The ``gasnet3`` engine: GaSNet-III's eigenspectra χ² scan over every class and redshift.

For a batch of ``B`` spectra on the model's observed grid (``N`` pixels):

1. **Preprocess** as GaSNet-III does: an unweighted polynomial continuum (degree 5 in
   log10 λ) fitted to the pixels with ivar > 0, subtracted; the fluctuation divided by its
   RMS over all pixels and the ivar multiplied by that RMS² (float32). Pixels with no data
   (ivar 0) are set to the continuum (``masked_flux="continuum"``) or kept as given
   (``"keep"``, GaSNet-III's own behaviour).
2. **Encode**: each class's encoder gives amplitude and non-negative mixture weights; the
   model spectrum of class ``c`` is ``m_c = amp · coef @ E_c`` on the rest-frame grid.
3. **χ² curves** over every lag, all classes, in one pass of FFT correlations:
   ``χ²(s) = Σ w f² − 2 Σ_j w_j f_j m(s + j) + Σ_j w_j m(s + j)²``. ``lags="range"`` (the
   default) scans the full-overlap lags ``s = 0 .. L − N``, i.e. exactly ``z_max .. z_min``;
   ``lags="gasnet3"`` reproduces GaSNet-III's 'same'-padded curve of ``L`` lags with its
   edge ramp applied twice.
4. **Candidates**: the lowest local minima across all classes, each more than
   ``min_velocity_separation`` km/s from the better ones.
5. **Refit** (beyond GaSNet-III): at the best ``n_refit`` candidates, an exact
   ivar-weighted linear least-squares fit of the class's K eigenspectra coefficients at the
   lag and its two neighbours; a parabola through the three χ² values gives the sub-pixel
   redshift, and its curvature the redshift error (Δχ² = 1). Candidates are re-ranked by
   the refitted χ²; ``DELTACHI2`` is the χ² difference between the best two (which are more
   than ``min_velocity_separation`` apart), and GaSNet-III's degeneracy ``R`` is reported
   as ``DEGENERACY``.

Everything is batched torch on the configured device: no Python loop per spectrum or per
redshift (loops run over classes and candidate ranks only).

GaSNet-III: Zhong et al., arXiv:2412.21130 (MIT-licensed code, github.com/Fucheng-Zhong/
GaSNet-III); see ``gasnet_plugin/data/LICENSE-GaSNet-III``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import EngineInput, EngineResult, RedshiftEngine
from gasnet_plugin.models.eigen_model import EigenModel, EigenTemplate, build_encoder, load_model
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.stages.base import RunContext

C_KMS = 299792.458
"""Speed of light, km/s."""


# -- preprocessing -----------------------------------------------------------------------------


def polynomial_continuum(flux: torch.Tensor, ivar: torch.Tensor, loglam: torch.Tensor,
                         degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted least-squares polynomial in log10 λ through the pixels with ivar > 0.

    The same function as ``np.polyval(np.polyfit(x[good], f[good], degree), x)``, solved
    for the whole batch at once on a centred, scaled abscissa (better conditioned).

    Parameters
    ----------
    flux, ivar
        ``(B, N)``.
    loglam
        ``(N,)`` float64, log10 Å.
    degree
        Polynomial degree.

    Returns
    -------
    continuum
        ``(B, N)`` float32.
    ok
        ``(B,)`` bool: the row had more valid pixels than coefficients.
    """
    x = (loglam - loglam.mean()) / ((loglam[-1] - loglam[0]) / 2)
    basis = torch.stack([x**p for p in range(degree + 1)], dim=1)          # (N, D)
    n_coef = degree + 1
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(-1, n_coef * n_coef)   # (N, D²)
    good = (ivar > 0).to(torch.float64)                                      # (B, N)
    normal = (good @ outer).reshape(-1, n_coef, n_coef)                      # (B, D, D)
    rhs = (good * flux.to(torch.float64)) @ basis                            # (B, D)
    ok = good.sum(dim=1) > degree + 1
    eye = torch.eye(degree + 1, dtype=torch.float64, device=flux.device)
    normal = torch.where(ok[:, None, None], normal, eye)
    coefficients = torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1)
    return (coefficients @ basis.T).to(torch.float32), ok


@dataclass
class Preprocessed:
    """A batch after GaSNet-III's preprocessing, all ``(B, N)`` float32 except ``norm``
    ``(B, 1)`` and ``ok`` ``(B,)`` bool: ``flux = continuum + norm · fluctuation``."""

    fluctuation: torch.Tensor
    ivar: torch.Tensor
    continuum: torch.Tensor
    norm: torch.Tensor
    ok: torch.Tensor


def preprocess(flux: torch.Tensor, ivar: torch.Tensor, loglam: torch.Tensor, degree: int,
               masked_flux: str = "continuum") -> Preprocessed:
    """GaSNet-III's preprocessing of a batch (see the module docstring), float32."""
    flux = flux.to(torch.float32)
    ivar = ivar.to(torch.float32)
    continuum, ok = polynomial_continuum(flux, ivar, loglam, degree)
    fluctuation = flux - continuum
    if masked_flux == "continuum":
        fluctuation = torch.where(ivar > 0, fluctuation, torch.zeros_like(fluctuation))
    norm = torch.sqrt(torch.mean(fluctuation**2, dim=1, keepdim=True))
    ok = ok & (norm[:, 0] > 0) & torch.isfinite(norm[:, 0])
    norm = torch.where(ok[:, None], norm, torch.ones_like(norm))
    return Preprocessed(fluctuation / norm, ivar * norm**2, continuum, norm, ok)


# -- the scan ----------------------------------------------------------------------------------


def encode_coefficients(encoder: torch.nn.Module, n_eigen: int, fluctuation: torch.Tensor,
                        ) -> torch.Tensor:
    """GaSNet-III's encoder head: ``(B, N)`` → coefficients ``(B, K)``, the amplitude
    ``|x_K|`` times the non-negative mixture weights ``x_k² / Σ x²``."""
    out = encoder(fluctuation[:, None, :])
    amplitude = torch.abs(out[:, n_eigen:n_eigen + 1])
    weights = out[:, :n_eigen] ** 2
    return amplitude * weights / torch.sum(weights, dim=1, keepdim=True)


def encode(encoder: torch.nn.Module, eigenvectors: torch.Tensor, fluctuation: torch.Tensor,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's model on the rest-frame grid ``(B, L)`` and its coefficients
    ``(B, K)``."""
    coefficients = encode_coefficients(encoder, eigenvectors.shape[0], fluctuation)
    return coefficients @ eigenvectors, coefficients


def fast_length(n: int) -> int:
    """The smallest FFT length ≥ ``n`` of the form ``2**k`` or ``3 · 2**k`` (the fastest
    sizes for torch's CPU FFT, measured)."""
    n = int(n)
    power = 1 << max(n - 1, 1).bit_length()
    three = 3 * (1 << max((n - 1) // 3, 1).bit_length())
    return min(power, three) if three >= n else power


def chi2_curves(model: torch.Tensor, fluctuation: torch.Tensor, ivar: torch.Tensor,
                lags: str = "range") -> torch.Tensor:
    """χ² of ``model`` slid over the observed spectra, every lag at once (FFT).

    Parameters
    ----------
    model
        ``(B, L)`` model spectra on the rest-frame grid.
    fluctuation, ivar
        ``(B, N)`` preprocessed spectra, ``N ≤ L``.
    lags
        ``"range"``: lags ``s = 0 .. L − N`` (rest pixel ``s`` on observed pixel 0), shape
        ``(B, L − N + 1)``. ``"gasnet3"``: GaSNet-III's 'same' correlation, ``L`` lags
        ``s = t − (N − 1)//2``, multiplied twice by its edge ramp, shape ``(B, L)``.
    """
    n_obs, length = fluctuation.shape[1], model.shape[1]
    shift = (n_obs - 1) // 2
    if lags == "range":
        n_fft = fast_length(length)
        index = torch.arange(0, length - n_obs + 1, device=model.device)
    elif lags == "gasnet3":
        n_fft = fast_length(length + n_obs - 1 - shift)
        index = (torch.arange(length, device=model.device) - shift) % n_fft
    else:
        raise ValueError(f"lags must be 'range' or 'gasnet3', not {lags!r}")
    spectra = torch.stack([ivar, 2 * fluctuation * ivar], dim=1)             # (B, 2, N)
    models = torch.stack([model**2, model], dim=1)                          # (B, 2, L)
    spectra_f = torch.fft.rfft(spectra, n=n_fft)
    models_f = torch.fft.rfft(models, n=n_fft)
    correlation = torch.fft.irfft(
        models_f[:, 0] * spectra_f[:, 0].conj() - models_f[:, 1] * spectra_f[:, 1].conj(),
        n=n_fft)
    constant = torch.sum((fluctuation.double() ** 2) * ivar.double(), dim=1, keepdim=True)
    curves = correlation[:, index].double() + constant
    if lags == "gasnet3":
        half = n_obs // 2
        ramp = torch.ones(length, dtype=torch.float64, device=model.device)
        steps = torch.arange(half, dtype=torch.float64, device=model.device) / half
        ramp[:half] = 2 - steps
        ramp[-half:] = 1 + steps
        curves = curves * ramp**2
    return curves


@dataclass
class ClassSpectra:
    """Fourier transforms of one class's eigenspectra, for :func:`chi2_curves_fast`.

    ``m = c @ E`` is linear in the coefficients and ``m² = Σ_{k≤l} c_k c_l (2 − δ_kl) E_k E_l``
    is linear in their pairwise products, so the transforms of ``m`` and ``m²`` are matrix
    products with these precomputed rows (real and imaginary parts side by side).

    Attributes
    ----------
    n_fft
        FFT length, ≥ L.
    single
        ``(K, 2F)`` float32: ``rfft(E_k)``, F = n_fft//2 + 1.
    pairs
        ``(P, 2F)`` float32: ``rfft(E_k E_l)`` for the ``P = K(K+1)/2`` pairs ``k ≤ l``.
    pair_k, pair_l
        ``(P,)`` indices of the pairs.
    pair_weight
        ``(P,)`` 1 on the diagonal, 2 off it.
    """

    n_fft: int
    single: torch.Tensor
    pairs: torch.Tensor
    pair_k: torch.Tensor
    pair_l: torch.Tensor
    pair_weight: torch.Tensor

    @classmethod
    def from_eigenvectors(cls, eigenvectors: torch.Tensor, n_fft: int | None = None,
                          ) -> ClassSpectra:
        """Transforms of ``eigenvectors`` ``(K, L)`` at ``n_fft`` (≥ L; default the
        fastest length ≥ L)."""
        k, length = eigenvectors.shape
        n_fft = n_fft or fast_length(length)
        e64 = eigenvectors.double()
        pair_k, pair_l = torch.triu_indices(k, k, device=eigenvectors.device)
        single = torch.fft.rfft(e64, n=n_fft)
        pairs = torch.fft.rfft(e64[pair_k] * e64[pair_l], n=n_fft)

        def as_real(x: torch.Tensor) -> torch.Tensor:
            return torch.view_as_real(x).reshape(x.shape[0], -1).float().contiguous()

        weight = torch.where(pair_k == pair_l, 1.0, 2.0).to(eigenvectors.device)
        return cls(n_fft, as_real(single), as_real(pairs), pair_k, pair_l, weight.float())


def spectra_transforms(fluctuation: torch.Tensor, ivar: torch.Tensor, n_fft: int,
                       ) -> torch.Tensor:
    """Complex conjugates of ``rfft(ivar)`` and ``rfft(2·f·ivar)``, ``(B, 2, F)``, for the
    χ² curves (correlations multiply by the conjugate)."""
    spectra = torch.stack([ivar, 2 * fluctuation * ivar], dim=1)
    return torch.fft.rfft(spectra, n=n_fft).conj_physical_()


def chi2_curves_fast(coefficients: torch.Tensor, transforms: ClassSpectra,
                     spectra_f: torch.Tensor, constant: torch.Tensor, n_obs: int,
                     n_lags: int) -> torch.Tensor:
    """The ``"range"`` χ² curves of :func:`chi2_curves` from the model coefficients.

    Parameters
    ----------
    coefficients
        ``(B, K)``: the model is ``coefficients @ E``.
    transforms
        The class's precomputed eigenspectra transforms.
    spectra_f
        :func:`spectra_transforms` at ``transforms.n_fft``.
    constant
        ``(B, 1)`` ``Σ w f²``.
    n_obs, n_lags
        ``N`` and the number of lags ``L − N + 1``.

    Returns
    -------
    ``(B, n_lags)`` float32 (about 7 significant digits: the exact refit recomputes the χ²
    of the candidates in float64).
    """
    n_rows = coefficients.shape[0]
    pair_coef = coefficients[:, transforms.pair_k] * coefficients[:, transforms.pair_l] \
        * transforms.pair_weight
    m1 = torch.view_as_complex((coefficients @ transforms.single).reshape(n_rows, -1, 2))
    m2 = torch.view_as_complex((pair_coef @ transforms.pairs).reshape(n_rows, -1, 2))
    product = m2.mul_(spectra_f[:, 0]).sub_(m1.mul_(spectra_f[:, 1]))
    correlation = torch.fft.irfft(product, n=transforms.n_fft)[:, :n_lags]
    return correlation.add_(constant)


def local_minima(curves: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` bool: finite samples no higher than their neighbours (the two ends: than
    their one neighbour)."""
    mask = torch.isfinite(curves)
    middle = curves[:, 1:-1]
    mask[:, 1:-1] &= (middle <= curves[:, :-2]) & (middle <= curves[:, 2:])
    mask[:, 0] &= curves[:, 0] <= curves[:, 1]
    mask[:, -1] &= curves[:, -1] <= curves[:, -2]
    return mask


def minima_only(curves: torch.Tensor) -> torch.Tensor:
    """``curves`` with every sample that is not a local minimum set to +inf (a new tensor)."""
    return curves.masked_fill(~local_minima(curves), math.inf)


def pick_separated_window(values: torch.Tensor, count: int, halfwidth: int,
                          in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` lowest entries of ``values`` ``(B, M)``, each more than ``halfwidth``
    samples from every better one (a window of ``2·halfwidth + 1`` is blanked after each
    pick). Returns indices ``(B, count)`` and values ``(B, count)``; inf where none is left.
    ``in_place`` lets it blank ``values`` itself instead of a copy.
    """
    remaining = values if in_place else values.clone()
    offsets = torch.arange(-halfwidth, halfwidth + 1, device=values.device)
    indices, picked = [], []
    for _ in range(count):
        best = torch.argmin(remaining, dim=1)
        indices.append(best)
        picked.append(remaining.gather(1, best[:, None])[:, 0])
        window = (best[:, None] + offsets[None, :]).clamp(0, values.shape[1] - 1)
        remaining.scatter_(1, window, math.inf)
    return torch.stack(indices, dim=1), torch.stack(picked, dim=1)


# -- the engine --------------------------------------------------------------------------------


@dataclass
class _ClassScan:
    """One class's tensors on the device."""

    template: EigenTemplate
    encoder: torch.nn.Module
    eigenvectors: torch.Tensor       # (K, L) float32
    rest_loglam: torch.Tensor        # (L,) float64
    z_lag: np.ndarray                # (S,) z of each full-overlap lag
    transforms: ClassSpectra         # FFTs of the eigenspectra and their products


class Gasnet3Engine(RedshiftEngine):
    """GaSNet-III eigenspectra χ² scan with sub-pixel refit, ZERR, DELTACHI2 and candidates."""

    name = "gasnet3"
    summary = ("GaSNet-III eigenspectra χ² scan over every class and redshift (FFT), with "
               "refit, sub-pixel z, ZERR and DELTACHI2")
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "model": {"type": "string", "default": "default",
                  "description": "model file (ASDF) or 'default' (the shipped SDSS model)"},
        "classes": {"type": "array", "items": {"type": "string"}, "default": [],
                    "description": "classes to scan (empty: every class of the model)"},
        "n_candidates": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5,
                         "description": "candidates (class, z, χ²) kept per spectrum"},
        "n_refit": {"type": "integer", "minimum": 0, "maximum": 20, "default": 3,
                    "description": "best candidates refitted exactly (0: GaSNet-III's "
                                   "encoder χ² only, z on the pixel grid)"},
        "min_velocity_separation": {"type": "number", "exclusiveMinimum": 0,
                                    "default": 1000.0,
                                    "description": "km/s between distinct candidates "
                                                   "(and for DELTACHI2)"},
        "small_delta_chi2": {"type": "number", "minimum": 0, "default": 9.0,
                             "description": "DELTACHI2 below this sets SMALL_DELTA_CHI2"},
        "masked_flux": {"enum": ["continuum", "keep"], "default": "continuum",
                        "description": "flux of pixels with ivar 0 before encoding: the "
                                       "continuum, or kept as given (GaSNet-III)"},
        "min_valid_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                               "description": "fewer valid pixels than this fraction of the "
                                              "grid sets LITTLE_DATA"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model: EigenModel | None = None
        self.device = torch.device("cpu")
        self._scans: list[_ClassScan] = []
        self._offsets = np.zeros(0, dtype=np.int64)

    # -- setup ----------------------------------------------------------------------------

    def setup(self, context: RunContext | None = None, model: EigenModel | None = None,
              device: str | None = None) -> None:
        """Load the model and move encoders and eigenspectra to the device."""
        self.model = model or load_model(self.params["model"])
        self.device = torch.device(device or (context.device if context else "cpu"))
        wanted = self.params["classes"] or self.model.classes
        unknown = sorted(set(wanted) - set(self.model.classes))
        if unknown:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(f"redshift engine 'gasnet3': classes {unknown} not in model "
                              f"{self.model.name!r} (it has {', '.join(self.model.classes)})")
        self._scans = []
        # one FFT length for every class (the longest's): the spectra are transformed once
        n_fft = fast_length(max(t.rest_loglam.size for t in self.model.templates))
        for template in self.model.templates:
            if template.name not in wanted:
                continue
            eigenvectors = torch.from_numpy(template.eigenvectors).to(self.device)
            self._scans.append(_ClassScan(
                template=template,
                encoder=build_encoder(template).to(self.device),
                eigenvectors=eigenvectors,
                rest_loglam=torch.from_numpy(template.rest_loglam).to(self.device),
                z_lag=self.model.z_of_lag(template),
                transforms=ClassSpectra.from_eigenvectors(eigenvectors, n_fft)))
        per_lag = math.log(10) * self.model.dloglam
        top = max(math.log1p(scan.z_lag[0]) for scan in self._scans)
        self._offsets = np.array([round((top - math.log1p(scan.z_lag[0])) / per_lag)
                                  for scan in self._scans], dtype=np.int64)

    @property
    def classes(self) -> list[str]:
        """The classes scanned, in model order."""
        return [scan.template.name for scan in self._scans]

    def check_grid(self, loglam: np.ndarray) -> None:
        """Refuse a batch grid the model was not made for (length or > 0.5 px offset)."""
        obs = self.model.obs_loglam
        if loglam.shape != obs.shape or np.max(np.abs(loglam - obs)) > 0.5 * self.model.dloglam:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(
                f"model {self.model.name!r} takes {obs.size} pixels from "
                f"{10**obs[0]:.1f} to {10**obs[-1]:.1f} Å at {self.model.dloglam:.6g} dex; "
                f"the batch grid has {loglam.size} pixels from {10**loglam[0]:.1f} to "
                f"{10**loglam[-1]:.1f} Å: set the resample stage to the model's grid")

    # -- measuring ------------------------------------------------------------------------

    def measure(self, spectra: EngineInput) -> EngineResult:
        """Class, redshift, error, χ², Δχ² and candidates for every spectrum."""
        if self.model is None:
            self.setup()
        self.check_grid(spectra.loglam)
        if spectra.flux.shape[0] == 0:
            return self._empty_result(spectra)
        with torch.no_grad():
            return self._measure(spectra)

    def _empty_result(self, spectra: EngineInput) -> EngineResult:
        """A result for zero spectra with the usual columns, dtypes and shapes (measured on
        one flat placeholder spectrum and cut to zero rows)."""
        n_pix = spectra.loglam.size
        one = EngineInput(np.ones((1, n_pix), np.float32), np.ones((1, n_pix), np.float32),
                          spectra.loglam, spectra.want_curves)
        with torch.no_grad():
            result = self._measure(one)
        result.columns = {k: np.asarray(v)[:0] for k, v in result.columns.items()}
        result.zwarn = result.zwarn[:0]
        result.reasons = {k: (v if isinstance(v, str) else np.asarray(v)[:0])
                          for k, v in result.reasons.items()}
        result.model = None if result.model is None else result.model[:0]
        result.curves = {k: v[:0] for k, v in result.curves.items()}
        return result

    def _measure(self, spectra: EngineInput) -> EngineResult:
        device = self.device
        loglam = torch.from_numpy(np.asarray(spectra.loglam, dtype=np.float64)).to(device)
        flux = torch.from_numpy(np.ascontiguousarray(spectra.flux, dtype=np.float32)).to(device)
        ivar = torch.from_numpy(np.ascontiguousarray(spectra.ivar, dtype=np.float32)).to(device)
        n_rows, n_obs = flux.shape
        pre = preprocess(flux, ivar, loglam, self.model.preprocessing["poly_deg"],
                         self.params["masked_flux"])

        # χ² curves of every class (B, S_c), then their lower envelope on one ln(1 + z) grid
        curves = []
        constant = torch.sum(pre.fluctuation.double() ** 2 * pre.ivar.double(), dim=1,
                             keepdim=True).float()
        spectra_f: dict[int, torch.Tensor] = {}
        for scan in self._scans:
            coefficients = encode_coefficients(scan.encoder, scan.eigenvectors.shape[0],
                                               pre.fluctuation)
            n_fft = scan.transforms.n_fft
            if n_fft not in spectra_f:
                spectra_f[n_fft] = spectra_transforms(pre.fluctuation, pre.ivar, n_fft)
            curves.append(chi2_curves_fast(coefficients, scan.transforms, spectra_f[n_fft],
                                           constant, n_obs, scan.z_lag.size))
        envelope, envelope_class = self._envelope(curves)

        # candidates: lowest local minima of the envelope, each more than the velocity
        # separation (a whole number of lags) from the better ones
        n_cand = self.params["n_candidates"]
        halfwidth = int(self._separation_lags())
        cand_u, cand_chi2_t = pick_separated_window(minima_only(envelope), n_cand, halfwidth,
                                                    in_place=True)
        cand_class = envelope_class.gather(1, cand_u).cpu().numpy()
        cand_lag = cand_u.cpu().numpy() - self._offsets[cand_class]
        cand_chi2 = cand_chi2_t.cpu().numpy()
        found = np.isfinite(cand_chi2)
        cand_lag = np.where(found, cand_lag, 0)
        cand_z = np.where(found, self._z_of(cand_class, cand_lag), np.nan)
        cand_zerr = np.full(cand_z.shape, np.nan)

        n_refit = min(self.params["n_refit"], n_cand)
        k_max = max(s.eigenvectors.shape[0] for s in self._scans)
        best_coef = np.full((n_rows, k_max), np.nan)
        best_model = torch.zeros((n_rows, n_obs), dtype=torch.float32, device=device)
        refit_ok = np.zeros(n_rows, dtype=bool)
        refit_chi2 = cand_chi2.copy()
        if n_refit:
            # the best candidate refined (walk + parabola); the next ones fitted at their lag
            fits = [self._refit(pre, cand_class[:, rank], cand_lag[:, rank], found[:, rank],
                                refine=rank == 0) for rank in range(n_refit)]
            winner = np.argmin(np.where(np.isfinite(np.stack([f["chi2"] for f in fits], 1)),
                                        np.stack([f["chi2"] for f in fits], 1), np.inf), axis=1)
            switched = winner != 0
            if switched.any():       # a later candidate fits better: refine it instead
                rows_w = np.flatnonzero(switched)
                lag_w = cand_lag[rows_w, winner[rows_w]]
                class_w = cand_class[rows_w, winner[rows_w]]
                use_w = np.zeros(n_rows, dtype=bool)
                use_w[rows_w] = True
                lag_full = np.zeros(n_rows, dtype=np.int64)
                class_full = np.full(n_rows, -1)
                lag_full[rows_w], class_full[rows_w] = lag_w, class_w
                refined = self._refit(pre, class_full, lag_full, use_w, refine=True)
                for rows_r, rank in ((rows_w, winner[rows_w]),):
                    for key in ("chi2", "z", "zerr", "ok", "lag", "coef"):
                        for r, k in zip(rows_r, rank, strict=True):
                            fits[k][key][r] = refined[key][r]
                    for k in np.unique(rank):
                        pick = torch.from_numpy(rows_r[rank == k]).to(device)
                        fits[k]["model"][pick] = refined["model"][pick]
            for rank, fit in enumerate(fits):
                refit_chi2[:, rank] = fit["chi2"]
                cand_z[:, rank] = fit["z"]
                cand_zerr[:, rank] = fit["zerr"]
                cand_lag[:, rank] = fit["lag"]
            # re-rank the refitted candidates by their exact χ²
            order = np.argsort(np.where(np.isfinite(refit_chi2[:, :n_refit]),
                                        refit_chi2[:, :n_refit], np.inf), axis=1, kind="stable")
            rest_ranks = np.broadcast_to(np.arange(n_refit, n_cand), (n_rows, n_cand - n_refit))
            full_order = np.concatenate([order, rest_ranks], axis=1)
            refit_chi2 = np.take_along_axis(refit_chi2, full_order, 1)
            cand_z = np.take_along_axis(cand_z, full_order, 1)
            cand_zerr = np.take_along_axis(cand_zerr, full_order, 1)
            cand_class = np.take_along_axis(cand_class, full_order, 1)
            cand_lag = np.take_along_axis(cand_lag, full_order, 1)
            rows_all = np.arange(n_rows)
            best_model = torch.stack([f["model"] for f in fits], dim=1)[
                torch.arange(n_rows, device=device), torch.from_numpy(order[:, 0]).to(device)]
            best_coef = np.stack([f["coef"] for f in fits], axis=1)[rows_all, order[:, 0]]
            refit_ok = np.stack([f["ok"] for f in fits], axis=1)[rows_all, order[:, 0]]

        chi2 = refit_chi2
        zwarn = np.zeros(n_rows, dtype=np.int64)
        reasons: dict[int, str] = {}

        # GaSNet-III's degeneracy R on the winning class's encoder curve: the two lowest
        # minima at least 0.01 dex apart
        win_class = cand_class[:, 0]
        two = np.full((n_rows, 2), np.inf)  # float64: R is a small difference of χ²
        for c, curve in enumerate(curves):
            rows_c = np.flatnonzero(win_class == c)
            if rows_c.size:
                sub = minima_only(curve[torch.from_numpy(rows_c).to(device)])
                _, picked = pick_separated_window(sub, 2, round(0.01 / self.model.dloglam) - 1,
                                                  in_place=True)
                two[rows_c] = picked.cpu().numpy()
        degeneracy = np.where(np.isfinite(two[:, 1]), (two[:, 1] - two[:, 0]) / two[:, 0], -1.0)

        # Δχ² to the best candidate more than the separation away (the refit may have moved
        # candidates a few pixels closer together)
        separation = self.params["min_velocity_separation"] / C_KMS
        with np.errstate(invalid="ignore"):
            apart = np.abs(np.log1p(cand_z) - np.log1p(cand_z[:, :1])) > separation
        others = np.where(apart & np.isfinite(chi2), chi2, np.inf).min(axis=1)
        delta_chi2 = np.where(np.isfinite(others), others - chi2[:, 0], np.nan)
        small = np.isfinite(delta_chi2) & (delta_chi2 < self.params["small_delta_chi2"])
        zwarn[small] |= int(ZWarn.SMALL_DELTA_CHI2)
        reasons[int(ZWarn.SMALL_DELTA_CHI2)] = (
            f"DELTACHI2 < {self.params['small_delta_chi2']:g} to the best solution more than "
            f"{self.params['min_velocity_separation']:g} km/s away")
        n_range = np.array([s.z_lag.size for s in self._scans])
        at_edge = (cand_lag[:, 0] == 0) | (cand_lag[:, 0] == n_range[win_class] - 1)
        zwarn[at_edge] |= int(ZWarn.Z_AT_EDGE)
        reasons[int(ZWarn.Z_AT_EDGE)] = "best redshift at the edge of its class's z range"
        if n_refit:
            zwarn[~refit_ok] |= int(ZWarn.BAD_FIT)
            reasons[int(ZWarn.BAD_FIT)] = ("χ² minimum not refined (no positive curvature or "
                                           "singular fit): z on the pixel grid, ZERR NaN")
        n_valid = (spectra.ivar > 0).sum(axis=1)
        little = n_valid < self.params["min_valid_fraction"] * n_obs
        zwarn[little] |= int(ZWarn.LITTLE_DATA)
        reasons[int(ZWarn.LITTLE_DATA)] = (
            f"fewer than {self.params['min_valid_fraction']:.0%} of the grid's pixels valid")
        # nothing to measure: no signal left after the continuum (a flat spectrum), too few
        # pixels for the continuum, or values whose χ² leaves the float range
        no_signal = ~pre.ok.cpu().numpy()
        with np.errstate(invalid="ignore"):
            broken = ~np.isfinite(chi2[:, 0]) | ~np.isfinite(cand_z[:, 0])
        unmeasurable = no_signal | broken
        if unmeasurable.any():
            zwarn[unmeasurable] |= int(ZWarn.NODATA)
            reasons[int(ZWarn.NODATA)] = np.where(
                no_signal, "no signal to fit: flat after continuum subtraction, or too few "
                           "valid pixels for the continuum",
                "non-finite χ²: flux or ivar values beyond the float32 range of the fit")
            for array in (cand_z, chi2, cand_zerr):
                array[unmeasurable] = np.nan
            delta_chi2[unmeasurable] = np.nan
            degeneracy[unmeasurable] = np.nan
            best_coef[unmeasurable] = np.nan
            if n_refit:
                best_model[torch.from_numpy(unmeasurable).to(device)] = float("nan")

        names = np.array(self.classes)
        zerr = cand_zerr[:, 0] if n_refit else np.full(n_rows, np.nan)
        model_flux = (pre.continuum + pre.norm * best_model).cpu().numpy() if n_refit else None
        columns = {
            "Z": cand_z[:, 0],
            "ZERR": zerr,
            "SPECTYPE": names[win_class],
            "SUBTYPE": np.full(n_rows, "", dtype="<U1"),
            "CHI2": chi2[:, 0],
            "DELTACHI2": delta_chi2,
            "NPIXELS": n_valid.astype(np.int32),
            "RCHI2": chi2[:, 0] / np.maximum(n_valid - best_coef.shape[1], 1),
            "DEGENERACY": degeneracy,
            "COEFF": best_coef.astype(np.float32),
            "CAND_SPECTYPE": names[cand_class],
            "CAND_Z": cand_z,
            "CAND_CHI2": chi2,
        }
        curves_out = {scan.template.name: curve.float().cpu().numpy()
                      for scan, curve in zip(self._scans, curves, strict=True)} \
            if spectra.want_curves else {}
        return EngineResult(columns=columns, zwarn=zwarn, reasons=reasons, model=model_flux,
                            curves=curves_out,
                            curve_z={s.template.name: s.z_lag for s in self._scans})

    def _separation_lags(self) -> float:
        """The velocity separation in lags (pixels of ln(1 + z))."""
        per_lag = math.log(10) * self.model.dloglam
        return self.params["min_velocity_separation"] / C_KMS / per_lag

    def _envelope(self, curves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The lower envelope of the class curves on one grid ``u = lag + offset[class]``
        (lags of every class aligned in ln(1 + z)); returns ``(B, U)`` χ² and the class
        index of each sample (``(B, U)``, int64)."""
        n_rows = curves[0].shape[0]
        device = curves[0].device
        size = int(max(o + c.shape[1] for o, c in zip(self._offsets, curves, strict=True)))
        envelope = torch.full((n_rows, size), math.inf, dtype=curves[0].dtype, device=device)
        which = torch.zeros((n_rows, size), dtype=torch.int64, device=device)
        for c, curve in enumerate(curves):
            o = int(self._offsets[c])
            part = envelope[:, o:o + curve.shape[1]]
            better = curve < part
            part.copy_(torch.minimum(part, curve))
            which[:, o:o + curve.shape[1]].masked_fill_(better, c)
        return envelope, which

    def _z_of(self, class_index: np.ndarray, lag: np.ndarray) -> np.ndarray:
        """Redshift of integer ``lag`` of class ``class_index`` (arrays of one shape)."""
        out = np.full(lag.shape, np.nan)
        for c, scan in enumerate(self._scans):
            hit = class_index == c
            out[hit] = scan.z_lag[np.clip(lag[hit], 0, scan.z_lag.size - 1)]
        return out

    def _refit(self, pre: Preprocessed, class_index: np.ndarray, lag: np.ndarray,
               use: np.ndarray, refine: bool = True) -> dict[str, Any]:
        """Exact weighted least-squares fit of the K coefficients at ``lag − 1, lag,
        lag + 1`` for each row (its class ``class_index``), then the sub-pixel minimum.

        If a neighbouring lag fits better, the fit walks there first (at most
        :attr:`max_walk` pixels). With ``refine=False`` only the lag itself is fitted: z on
        the pixel grid, ZERR NaN. Returns per row ``chi2`` (at the refined minimum), ``z``,
        ``zerr``, ``ok``, the final integer ``lag``, the
        model ``(B, N)`` in normalised units at the refined lag (the lag's coefficients,
        eigenspectra interpolated linearly between lags) and the coefficients ``(B, K)``;
        NaN (model 0) for rows not fitted.
        """
        n_rows, n_obs = pre.fluctuation.shape
        device = self.device
        chi2 = np.full(n_rows, np.nan)
        z = np.full(n_rows, np.nan)
        zerr = np.full(n_rows, np.nan)
        ok = np.zeros(n_rows, dtype=bool)
        k_max = max(s.eigenvectors.shape[0] for s in self._scans)
        coef_out = np.full((n_rows, k_max), np.nan)
        model_out = torch.zeros((n_rows, n_obs), dtype=torch.float32, device=device)
        lag_out = lag.astype(np.int64).copy()
        for c, scan in enumerate(self._scans):
            rows_np = np.flatnonzero(use & (class_index == c))
            if rows_np.size == 0:
                continue
            rows = torch.from_numpy(rows_np).to(device)
            n_range = scan.z_lag.size
            f = pre.fluctuation[rows]
            w = pre.ivar[rows]
            s_now = lag[rows_np].astype(np.int64).copy()
            if not refine:
                x, chis, coefs = self._three_lags(scan, f, w, s_now, offsets=(1,))
                chi2[rows_np] = chis[:, 0]
                z[rows_np] = scan.z_lag[s_now]
                ok[rows_np] = True
                coef_out[rows_np, : coefs[0].shape[1]] = coefs[0].cpu().numpy()
                model_out[rows] = (coefs[0].float()[:, None, :]
                                   @ x[:, :, 1:1 + n_obs])[:, 0]
                continue
            x, chis, coefs = self._three_lags(scan, f, w, s_now)
            # walk downhill (at most max_walk pixels) while a neighbour fits better
            for _ in range(self.max_walk):
                chi_m = np.where(s_now - 1 >= 0, chis[:, 0], np.inf)
                chi_p = np.where(s_now + 1 <= n_range - 1, chis[:, 2], np.inf)
                move = np.where((chi_m < chis[:, 1]) & (chi_m <= chi_p), -1,
                                np.where(chi_p < chis[:, 1], 1, 0))
                moving = np.flatnonzero(move)
                if moving.size == 0:
                    break
                s_now[moving] += move[moving]
                # one step keeps two of the three fits; fit only the new outer lag
                for step, new_offset in ((-1, 0), (1, 2)):
                    sub = moving[move[moving] == step]
                    if sub.size == 0:
                        continue
                    picked = torch.from_numpy(sub).to(device)
                    x_m, chis_m, coefs_m = self._three_lags(
                        scan, f[picked], w[picked], s_now[sub],
                        offsets=(new_offset,))
                    x[picked] = x_m
                    # window positions 0, 1, 2 are lags centre − 1, centre, centre + 1
                    keep = [1, 2] if step == -1 else [0, 1]   # new positions ...
                    old = [0, 1] if step == -1 else [1, 2]    # ... taken from these
                    shifted = chis[sub].copy()
                    shifted[:, keep] = chis[sub][:, old]
                    shifted[:, new_offset] = chis_m[:, 0]
                    chis[sub] = shifted
                    old_coefs = [coefs[o][picked] for o in range(3)]
                    for k_new, k_old in zip(keep, old, strict=True):
                        coefs[k_new][picked] = old_coefs[k_old]
                    coefs[new_offset][picked] = coefs_m[0]
            chi_m, chi_0, chi_p = chis[:, 0], chis[:, 1], chis[:, 2]
            lag_out[rows_np] = s_now
            s0_np = s_now.astype(np.float64)
            # neighbours outside the full-overlap range are not valid lags
            chi_m = np.where(s0_np - 1 >= 0, chi_m, np.nan)
            chi_p = np.where(s0_np + 1 <= n_range - 1, chi_p, np.nan)
            curvature = chi_m - 2 * chi_0 + chi_p
            good = np.isfinite(curvature) & (curvature > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = np.where(good, 0.5 * (chi_m - chi_p) / curvature, 0.0)
            delta = np.clip(delta, -1.0, 1.0)
            best_chi = np.where(good, chi_0 - 0.25 * (chi_m - chi_p) * delta, chi_0)
            with np.errstate(invalid="ignore", divide="ignore"):
                sigma_lag = np.where(good, np.sqrt(2.0 / curvature), np.nan)
            rest = scan.template.rest_loglam
            step = (rest[-1] - rest[0]) / (rest.size - 1)
            position = s0_np + delta
            rest_at = rest[0] + position * step
            z_rows = 10.0 ** (self.model.obs_loglam[0] - rest_at) - 1.0
            chi2[rows_np] = best_chi
            z[rows_np] = z_rows
            zerr[rows_np] = (1 + z_rows) * math.log(10) * step * sigma_lag
            ok[rows_np] = good
            a0 = coefs[1]
            coef_out[rows_np, : a0.shape[1]] = a0.cpu().numpy()
            # eigenspectra at the refined lag: blend lag and its neighbour on delta's side
            frac = torch.from_numpy(np.abs(delta)).to(device, torch.float32)[:, None, None]
            side = torch.from_numpy(np.where(delta < 0, 0, 2)).to(device)
            index = side[:, None, None] + torch.arange(n_obs, device=device)[None, None, :]
            x_side = torch.gather(x, 2, index.expand(-1, x.shape[1], -1))
            blended = (1 - frac) * x[:, :, 1:1 + n_obs] + frac * x_side
            model_out[rows] = (a0.float()[:, None, :] @ blended)[:, 0]
        return {"chi2": chi2, "z": z, "zerr": zerr, "ok": ok, "model": model_out,
                "coef": coef_out, "lag": lag_out}

    max_walk: ClassVar[int] = 4
    """Pixels the refit may walk from the encoder's lag towards a better exact fit."""

    def _three_lags(self, scan: _ClassScan, f: torch.Tensor, w: torch.Tensor,
                    lags: np.ndarray, offsets: tuple[int, ...] = (0, 1, 2),
                    ) -> tuple[torch.Tensor, np.ndarray, list[torch.Tensor]]:
        """Exact weighted linear fits of the class's eigenspectra at ``lags − 1, lags,
        lags + 1``.

        Returns the eigenspectra windows ``(b, K, N + 2)`` (from ``lag − 1``), the χ²
        ``(b, 3)`` and the coefficients (three ``(b, K)`` tensors)."""
        n_obs = f.shape[1]
        device = self.device
        padded = torch.nn.functional.pad(scan.eigenvectors, (1, 1))  # zeros beyond the grid
        window = padded.unfold(1, n_obs + 2, 1)                       # (K, L − N + 1, N + 2)
        x = window[:, torch.from_numpy(lags).to(device)].permute(1, 0, 2)
        chis, coefs = [], []
        for offset in offsets:
            xo = x[:, :, offset:offset + n_obs]                       # (b, K, N)
            normal = ((xo * w[:, None, :]) @ xo.transpose(1, 2)).double()
            rhs = (xo @ (w * f)[:, :, None]).double()[:, :, 0]
            scale = torch.diagonal(normal, dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
            ridge = 1e-10 * scale[:, None, None] * torch.eye(
                normal.shape[1], dtype=torch.float64, device=device)
            a = torch.linalg.solve(normal + ridge, rhs[:, :, None])[:, :, 0]
            # χ² from the residual, not Σwf² − bᵀa: no cancellation, so the small χ²
            # differences between neighbouring lags (the curvature) keep their precision
            residual = f - (a.float()[:, None, :] @ xo)[:, 0]
            chis.append(torch.sum((w * residual * residual).double(), dim=1))
            coefs.append(a)
        return x, torch.stack(chis, dim=1).cpu().numpy(), coefs


def gasnet3_original_outputs(engine: Gasnet3Engine, spectra: EngineInput,
                             ) -> dict[str, dict[str, np.ndarray]]:
    """GaSNet-III's own per-class outputs, computed the way its code computes them.

    Flux at ivar-0 pixels kept, the 'same'-padded χ² curve with its edge ramp applied
    twice, ``Best_fit_z = 10**(mid(obs grid) − rest[argmin]) − 1`` (note its half-pixel
    offset from exact alignment), ``min_chi_square = min/N`` and the degeneracy ``R``
    from the two lowest interior minima at least 0.01 dex apart. For checking this
    engine against the stored outputs of the original code.

    Returns
    -------
    dict
        Class → ``{"Best_fit_z", "min_chi_square", "Degeneracy", "curve"}`` arrays.
    """
    if engine.model is None:
        engine.setup()
    engine.check_grid(spectra.loglam)
    device = engine.device
    loglam = torch.from_numpy(np.asarray(spectra.loglam, dtype=np.float64)).to(device)
    out: dict[str, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        pre = preprocess(torch.from_numpy(np.asarray(spectra.flux, np.float32)).to(device),
                         torch.from_numpy(np.asarray(spectra.ivar, np.float32)).to(device),
                         loglam, engine.model.preprocessing["poly_deg"], masked_flux="keep")
        n_obs = pre.fluctuation.shape[1]
        middle = (spectra.loglam[0] + spectra.loglam[-1]) / 2
        for scan in engine._scans:
            model, _ = encode(scan.encoder, scan.eigenvectors, pre.fluctuation)
            curves = chi2_curves(model, pre.fluctuation, pre.ivar, lags="gasnet3")
            best = torch.argmin(curves, dim=1).cpu().numpy()
            interior = local_minima(curves)
            interior[:, 0] = interior[:, -1] = False        # find_peaks skips the ends
            minima = curves.masked_fill(~interior, math.inf)
            distance = round(0.01 / engine.model.dloglam)      # find_peaks(distance=100)
            _, two = pick_separated_window(minima, 2, distance - 1)
            two = two.cpu().numpy()
            rest = scan.template.rest_loglam
            out[scan.template.name] = {
                "Best_fit_z": 10.0 ** (middle - rest[best]) - 1.0,
                "min_chi_square": curves.min(dim=1).values.cpu().numpy() / n_obs,
                "Degeneracy": np.where(np.isfinite(two[:, 1]),
                                       (two[:, 1] - two[:, 0]) / two[:, 0], -1.0),
                "curve": curves.cpu().numpy(),
            }
    return out


@hookimpl
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    registry.add(Gasnet3Engine)
