"""An example third-party redshift engine, installed as its own distribution.

It shows the whole protocol an outside package needs: a ``RedshiftEngine`` subclass with
``name``, ``summary`` and a ``parameters`` JSON schema, a ``measure`` that returns an
``EngineResult``, and a ``gasnet_register_engines`` hook exposed through the ``gasnet``
entry-point group (see this folder's ``pyproject.toml``). Nothing in gasnet-plugin names it.

The method is deliberately simple: the strongest emission peak (in S/N, after a running
median continuum) is taken to be one line, ``line`` Å at rest (Hα by default), so
``Z = λ_peak / line − 1``. It is a demonstration, not a redshift fitter to trust.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import EngineInput, EngineResult, RedshiftEngine


class StrongestLineEngine(RedshiftEngine):
    """Redshift from the strongest emission peak, assumed to be one known line."""

    name = "strongest-line"
    summary = "z from the strongest emission peak taken as one line (example plugin)"
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "line": {"type": "number", "exclusiveMinimum": 0, "default": 6564.61,
                 "description": "rest wavelength of the line the peak is taken to be, Å"},
        "window": {"type": "integer", "minimum": 3, "default": 101,
                   "description": "running-median width for the continuum, pixels"},
    }

    def measure(self, spectra: EngineInput) -> EngineResult:
        flux, ivar = np.asarray(spectra.flux, float), np.asarray(spectra.ivar, float)
        n_rows = flux.shape[0]
        half = self.params["window"] // 2
        padded = np.pad(flux, ((0, 0), (half, half)), mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=1)
        continuum = np.median(windows, axis=2)
        snr = (flux - continuum) * np.sqrt(ivar)
        peak = np.argmax(np.where(ivar > 0, snr, -np.inf), axis=1)
        wave = 10.0 ** np.asarray(spectra.loglam)
        z = wave[peak] / self.params["line"] - 1.0
        pixel = np.log(10) * (spectra.loglam[1] - spectra.loglam[0])
        columns = {
            "Z": z, "ZERR": (1 + z) * pixel, "SPECTYPE": np.full(n_rows, "GALAXY"),
            "SUBTYPE": np.full(n_rows, ""), "CHI2": np.full(n_rows, np.nan),
            "DELTACHI2": np.full(n_rows, np.nan),
            "PEAK_SNR": snr[np.arange(n_rows), peak],
        }
        return EngineResult(columns=columns, zwarn=np.zeros(n_rows, dtype=np.int64))


@hookimpl
def gasnet_register_engines(registry) -> None:
    registry.add(StrongestLineEngine)
