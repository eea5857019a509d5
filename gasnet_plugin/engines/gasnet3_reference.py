"""GaSNet-III's own per-class outputs, computed the way its code computes them (for
checking the ``gasnet3`` engine against the stored outputs of the original code)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from gasnet_plugin.engines.candidates import local_minima, pick_separated_window
from gasnet_plugin.engines.eigen_preprocess import preprocess
from gasnet_plugin.engines.eigen_scan import chi2_curves, encode

if TYPE_CHECKING:
    from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
    from gasnet_plugin.engines.protocol import EngineInput


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
