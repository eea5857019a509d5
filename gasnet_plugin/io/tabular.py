"""Reader for tabular FITS: one row per spectrum, flux and ivar as vector columns on a
grid shared by all rows (the layout of GaSNet-III's result tables and of ``gasnet
simulate``).

The first binary table with vector columns ``flux`` and ``ivar`` (any case) holds the
spectra. The shared grid is found, in this order, in:

1. a vector column ``input_grid``, ``loglam`` or ``wavelength`` of the same length in
   another binary-table HDU (its first row);
2. the keywords ``COEFF0``/``COEFF1`` (log10 Å of pixel 0, step) of the spectra HDU or the
   primary header.

Grid values below 10 are log10 Å, others Å. Optional vector columns ``and_mask`` or
``mask`` give bad pixels; optional scalar columns ``CLASS``, ``SUBCLASS``, ``Z``, ``Z_ERR``,
``ZWARNING``, ``SN_MEDIAN_ALL`` and ``TARGETID`` become the rows' labels; the keyword
``SURVEY`` names the survey. The flux unit is the flux column's ``TUNIT`` (dimensionless if
absent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import astropy.units as u
import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum, find_column, parse_flux_unit

if TYPE_CHECKING:
    from specutils import Spectrum

GRID_COLUMNS = ("input_grid", "loglam", "wavelength")
LABEL_SOURCES = {"CLASS": "SURVEY_CLASS", "SUBCLASS": "SURVEY_SUBCLASS", "Z": "SURVEY_Z",
                 "Z_ERR": "SURVEY_ZERR", "ZWARNING": "SURVEY_ZWARNING",
                 "SN_MEDIAN_ALL": "SURVEY_SN_MEDIAN_ALL", "TARGETID": "TARGETID"}


def _spectra_hdu_index(hdul: fits.HDUList) -> int | None:
    for index, hdu in enumerate(hdul):
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        flux, ivar = find_column(hdu, "flux"), find_column(hdu, "ivar")
        if flux is not None and ivar is not None and flux.format.repeat > 1 \
                and flux.format.repeat == ivar.format.repeat:
            return index
    return None


def _shared_grid(hdul: fits.HDUList, index: int, npix: int) -> np.ndarray | None:
    """Pixel centres in Å of the spectra in HDU ``index``, or ``None`` if not found."""
    for hdu in hdul:
        if not isinstance(hdu, fits.BinTableHDU) or hdu is hdul[index] or not len(hdu.data):
            continue
        for name in GRID_COLUMNS:
            column = find_column(hdu, name)
            if column is not None and column.format.repeat == npix:
                grid = np.asarray(hdu.data[column.name][0], dtype=np.float64)
                return 10.0**grid if np.nanmax(grid) < 10 else grid
    for header in (hdul[index].header, hdul[0].header):
        if "COEFF0" in header and "COEFF1" in header:
            return 10.0 ** (header["COEFF0"] + header["COEFF1"] * np.arange(npix))
    return None


class TabularReader:
    """Tabular FITS with flux/ivar vector columns on a shared grid: one 2-D spectrum."""

    name = "table"
    summary = "tabular FITS: rows of flux/ivar vectors on a shared grid (HDU or COEFF0/1)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return _spectra_hdu_index(hdul) is not None

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        index = _spectra_hdu_index(hdul)
        if index is None:
            raise ValueError("no binary table with vector columns flux and ivar")
        hdu = hdul[index]
        flux_column = find_column(hdu, "flux")
        npix = flux_column.format.repeat
        wavelength = _shared_grid(hdul, index, npix)
        if wavelength is None:
            raise ValueError(f"no shared wavelength grid of {npix} pixels (a column "
                             f"{'/'.join(GRID_COLUMNS)} or keywords COEFF0/COEFF1)")
        data = hdu.data
        flux = np.asarray(data[flux_column.name], dtype=np.float32).reshape(len(data), npix)
        ivar = np.asarray(data[find_column(hdu, "ivar").name], dtype=np.float32).reshape(flux.shape)
        mask = None
        for name in ("and_mask", "mask"):
            column = find_column(hdu, name)
            if column is not None and column.format.repeat == npix:
                mask = np.asarray(data[column.name]).reshape(flux.shape) != 0
                break
        labels = {}
        for column_name, label in LABEL_SOURCES.items():
            column = find_column(hdu, column_name.lower())
            scalar = column is not None and (column.format.repeat == 1
                                             or column.format.format == "A")
            if scalar:
                labels[label] = np.asarray(data[column.name])
        survey = hdu.header.get("SURVEY", hdul[0].header.get("SURVEY", ""))
        rows = label_rows(len(data), source, SURVEY=survey, HDU=index,
                          ROW=np.arange(len(data)), **labels)
        unit = parse_flux_unit(flux_column.unit, u.dimensionless_unscaled)
        return [build_spectrum(wavelength, flux, ivar, mask, unit, rows,
                               header=hdul[0].header)]
