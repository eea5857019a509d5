"""Reader for DEEP2/DEIMOS ``spec1d.*.fits`` files (DEEP2 and DEEP3 data releases).

Each file holds one object's 1-D extractions, blue and red CCD halves in separate
binary-table HDUs, each with one row of ``SPEC``, ``LAMBDA`` (Å, per pixel) and ``IVAR``
arrays: ``Bxspf-B``/``Bxspf-R`` (optimal "boxcar" extraction, used when present) and
``Horne-B``/``Horne-R`` (Horne extraction). The two halves are joined end to end (they do
not overlap). DEIMOS wavelengths are in air and are converted to vacuum; fluxes are counts
per hour, not flux-calibrated, so no flux unit is recorded. ``OBJNO`` names the object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum

if TYPE_CHECKING:
    from specutils import Spectrum

EXTRACTIONS = ("BXSPF", "HORNE")
"""Extraction HDU prefixes in the order they are preferred."""


def _arms(hdul: fits.HDUList) -> tuple[fits.BinTableHDU, fits.BinTableHDU] | None:
    names = {str(h.header.get("EXTNAME", "")).strip().upper(): h for h in hdul[1:]}
    for prefix in EXTRACTIONS:
        blue, red = names.get(f"{prefix}-B"), names.get(f"{prefix}-R")
        if isinstance(blue, fits.BinTableHDU) and isinstance(red, fits.BinTableHDU):
            return blue, red
    return None


class Deep2Spec1dReader:
    """DEEP2/DEIMOS spec1d files: blue and red halves joined into one spectrum."""

    name = "deep2-spec1d"
    summary = "DEEP2/DEIMOS spec1d files (Bxspf-B/R or Horne-B/R: SPEC, LAMBDA, IVAR)"

    def identify(self, hdul: fits.HDUList) -> bool:
        arms = _arms(hdul)
        return arms is not None and all(
            {"SPEC", "LAMBDA", "IVAR"} <= {n.upper() for n in hdu.columns.names} for hdu in arms)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        blue, red = _arms(hdul)
        parts = [(np.asarray(h.data["LAMBDA"][0], dtype=np.float64).ravel(),
                  np.asarray(h.data["SPEC"][0], dtype=np.float64).ravel(),
                  np.asarray(h.data["IVAR"][0], dtype=np.float64).ravel()) for h in (blue, red)]
        wave, flux, ivar = (np.concatenate(v) for v in zip(*parts, strict=True))
        order = np.argsort(wave, kind="stable")
        wave, flux, ivar = wave[order], flux[order], ivar[order]
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (wave > 0)
        valid = wave > 0          # unused trailing pixels have λ = 0
        rows = label_rows(1, source, SURVEY="DEEP2", HDU=hdul.index_of(blue), ROW=0,
                          OBJECT=str(blue.header.get("OBJNO", "")).strip())
        return [build_spectrum(wave[valid], np.where(good, flux, 0.0)[valid].astype(np.float32),
                               np.where(good, ivar, 0.0)[valid].astype(np.float32),
                               ~good[valid], None, rows, wavelength_in_air=True,
                               header=hdul[0].header)]
