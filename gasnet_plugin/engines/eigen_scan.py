"""The eigenspectra χ² scan (GaSNet-III): encoder coefficients and χ² curves over every lag.

The model spectrum of class ``c`` is ``m_c = amp · coef @ E_c`` on the rest-frame grid
(the encoder gives amplitude and non-negative mixture weights). Its χ² against a spectrum
at every lag ``s`` is ``Σ w f² − 2 Σ_j w_j f_j m(s + j) + Σ_j w_j m(s + j)²``: two
correlations, computed for every lag at once with FFTs (:func:`chi2_curves_fast` works in
coefficient space with precomputed transforms of the eigenspectra), or for a class with few
lags summed directly on the CPU (:func:`chi2_curves_summed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from gasnet_plugin.models.eigen_model import EigenTemplate


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


FFT_ROW_BLOCK = 16
"""Spectra transformed together by :func:`spectra_transforms`: their zero-padded copies
and transforms (~1.5 MB at 12288 points) stay in cache. In a one-off timing on one core,
64 spectra cost 33 µs each in blocks of 16 against 58–108 µs in one call; the transforms
are the same bit for bit (each row's FFT is its own)."""


def spectra_transforms(fluctuation: torch.Tensor, ivar: torch.Tensor, n_fft: int,
                       ) -> torch.Tensor:
    """Complex conjugates of ``rfft(ivar)`` and ``rfft(2·f·ivar)``, ``(B, 2, F)``, for the
    χ² curves (correlations multiply by the conjugate); on the CPU formed
    :data:`FFT_ROW_BLOCK` spectra at a time (elsewhere in one call)."""
    n_rows = fluctuation.shape[0]
    dtype = torch.promote_types(fluctuation.dtype, ivar.dtype).to_complex()
    out = torch.empty((n_rows, 2, n_fft // 2 + 1), dtype=dtype, device=fluctuation.device)
    step = FFT_ROW_BLOCK if fluctuation.device.type == "cpu" else max(n_rows, 1)
    for start in range(0, n_rows, step):
        block = slice(start, start + step)
        spectra = torch.stack([ivar[block], 2 * fluctuation[block] * ivar[block]], dim=1)
        torch.fft.rfft(spectra, n=n_fft, out=out[block])
    return out.conj_physical_()


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


def direct_is_cheaper(n_lags: int, n_obs: int, n_coef: int, n_fft: int) -> bool:
    """Whether a class's curves cost fewer multiply-adds summed directly over its
    ``n_lags`` lags (``2 · S · N``, :mod:`~gasnet_plugin.engines.direct_chi2_kernels`)
    than the coefficient products of :func:`chi2_curves_fast` alone
    (``(K + K (K + 1) / 2) · 2F``, before its inverse FFT)."""
    n_freq = n_fft // 2 + 1
    return 2 * n_lags * n_obs < (n_coef + n_coef * (n_coef + 1) // 2) * 2 * n_freq


def chi2_curves_summed(scan: ClassScan, coefficients: torch.Tensor,
                       fluctuation: torch.Tensor, ivar: torch.Tensor, constant: torch.Tensor,
                       ) -> torch.Tensor:
    """:func:`chi2_curves_fast`'s curves ``(B, S)`` float32 summed directly over the lags
    by the compiled CPU kernel (for a class where :func:`direct_is_cheaper`); the
    arguments as there, on the CPU."""
    from gasnet_plugin.engines.direct_chi2_kernels import chi2_curves_direct

    out = torch.empty((fluctuation.shape[0], scan.n_lags), dtype=torch.float32)
    chi2_curves_direct(scan.eigenvectors.numpy(),
                       np.ascontiguousarray(coefficients.numpy(), dtype=np.float32),
                       np.ascontiguousarray(fluctuation.numpy(), dtype=np.float32),
                       np.ascontiguousarray(ivar.numpy(), dtype=np.float32), out.numpy())
    return out.add_(constant)


@dataclass
class ClassScan:
    """One class of an eigenspectra model, ready to scan on a device.

    Attributes
    ----------
    template
        The class's eigenspectra, rest-frame grid and encoder weights.
    encoder
        The class's encoder network.
    eigenvectors
        ``(K, L)`` float32 on the device.
    rest_loglam
        ``(L,)`` float64 rest-frame grid, log10 Å.
    z_lag
        ``(S,)`` redshift of each full-overlap lag (``S = L − N + 1``, high z first).
    transforms
        FFTs of the eigenspectra and their products (:class:`ClassSpectra`).
    summed
        Its curves are summed directly over the lags (:func:`chi2_curves_summed`, on the
        CPU where :func:`direct_is_cheaper`) instead of through the FFTs.
    """

    template: EigenTemplate
    encoder: torch.nn.Module
    eigenvectors: torch.Tensor
    rest_loglam: torch.Tensor
    z_lag: np.ndarray
    transforms: ClassSpectra
    summed: bool = False

    @property
    def n_coef(self) -> int:
        """Free coefficients of the class's fit (K)."""
        return int(self.eigenvectors.shape[0])

    @property
    def n_lags(self) -> int:
        """Redshift trials of the class's scan (S)."""
        return int(self.z_lag.size)

    @cached_property
    def padded_eigenvectors(self) -> torch.Tensor:
        """:attr:`eigenvectors` with one zero pixel at each end, ``(K, L + 2)`` (the exact
        refit's windows reach one pixel beyond the lags)."""
        return torch.nn.functional.pad(self.eigenvectors, (1, 1))
