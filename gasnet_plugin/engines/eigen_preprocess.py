"""GaSNet-III's preprocessing: continuum subtraction and normalisation of a batch.

An unweighted polynomial continuum (degree 5 in log10 λ) fitted to the pixels with
ivar > 0 is subtracted; the fluctuation is divided by its RMS over all pixels and the ivar
multiplied by that RMS² (float32). Pixels with no data (ivar 0) are set to the continuum
(``masked_flux="continuum"``) or kept as given (``"keep"``, GaSNet-III's own behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_last_basis: tuple | None = None
"""The last grid's continuum basis (see :func:`continuum_basis`): a run's batches share one
grid, so it is made once, not per chunk."""


def continuum_basis(loglam: torch.Tensor, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The polynomial basis on the centred, scaled abscissa, ``(N, D)`` float64, and its
    pairwise products ``(N, D²)``, for the grid ``loglam`` ``(N,)``. The last grid's are
    kept and returned again for an equal grid (same values, device and degree)."""
    global _last_basis
    last = _last_basis                     # one read: another thread may replace it
    if last is not None and last[0] == (degree, loglam.device, loglam.dtype) \
            and torch.equal(last[1], loglam):       # False for another shape
        return last[2], last[3]
    x = (loglam - loglam.mean()) / ((loglam[-1] - loglam[0]) / 2)
    basis = torch.stack([x**p for p in range(degree + 1)], dim=1)          # (N, D)
    n_coef = degree + 1
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(-1, n_coef * n_coef)   # (N, D²)
    _last_basis = ((degree, loglam.device, loglam.dtype), loglam.clone(), basis, outer)
    return basis, outer


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
    basis, outer = continuum_basis(loglam, degree)
    n_coef = degree + 1
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
