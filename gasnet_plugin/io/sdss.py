"""Reader for SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` files (SDSS-I/II legacy and III/IV).

HDU1 (COADD) holds ``loglam``, ``flux``, ``ivar`` and ``and_mask`` per pixel; HDU2 (SPECOBJ)
the pipeline's labels. The mask is ``and_mask != 0``, as specutils' own SDSS loader sets it.
``loglam`` is stored as float32; where the primary header's ``COEFF0``/``COEFF1`` describe
the same grid (to 1e-5 dex) the axis is rebuilt from them in float64, so that pixels that
lie on the common grid stay exactly on it.

:meth:`SdssSpecReader.read_raw` gives the same spectra from the file's bytes without
astropy's table machinery (:mod:`gasnet_plugin.io.fits_raw`): HDU2's ~240 columns are
never turned into objects, only the six label columns are read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.fits_raw import RawFitsError, RawHDU, column_names, read_columns
from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import (
    SDSS_FLUX_UNIT,
    build_spectrum,
    find_column,
    parse_flux_unit,
)

if TYPE_CHECKING:
    from specutils import Spectrum

_REQUIRED_COLUMNS = {"loglam", "flux", "ivar"}
_LABELS = (("CLASS", "SURVEY_CLASS"), ("SUBCLASS", "SURVEY_SUBCLASS"), ("Z", "SURVEY_Z"),
           ("Z_ERR", "SURVEY_ZERR"), ("ZWARNING", "SURVEY_ZWARNING"),
           ("SN_MEDIAN_ALL", "SURVEY_SN_MEDIAN_ALL"))
"""HDU2 (SPECOBJ) column → our label column."""


def snapped_loglam(loglam: np.ndarray, header: fits.Header) -> np.ndarray:
    """``loglam`` (log10 Å) in float64, snapped to ``COEFF0 + k·COEFF1`` where that fits.

    Returns the float64 copy of ``loglam`` unchanged when the header has no coefficients or
    any pixel lies more than 1e-5 dex off the grid they describe.
    """
    loglam = np.asarray(loglam, dtype=np.float64)
    coeff0, coeff1 = header.get("COEFF0"), header.get("COEFF1")
    if coeff0 is None or not coeff1:
        return loglam
    k = np.round((loglam - coeff0) / coeff1)
    snapped = coeff0 + k * coeff1
    return snapped if np.all(np.abs(snapped - loglam) < 1e-5) else loglam


def _spectrum(loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None,
              header: fits.Header, labels: dict, source: str) -> Spectrum:
    """The Spectrum of one spec file, whichever way its columns were read."""
    return build_spectrum(10.0**loglam, np.asarray(flux, dtype=np.float32),
                          np.asarray(ivar, dtype=np.float32), mask,
                          parse_flux_unit(header.get("BUNIT"), SDSS_FLUX_UNIT),
                          label_rows(1, source, **labels), header=header)


class SdssSpecReader:
    """SDSS/BOSS ``spec`` files: one spectrum per file with its SPECOBJ labels."""

    name = "sdss-spec"
    spectra_per_file = 1
    """Every file gives exactly one spectrum (a run's row count needs no read)."""
    summary = "SDSS/BOSS spec-PLATE-MJD-FIBER.fits (HDU1 coadd, HDU2 labels)"

    def identify(self, hdul: fits.HDUList) -> bool:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            return False
        columns = {name.lower() for name in hdul[1].columns.names}
        return columns >= _REQUIRED_COLUMNS and find_column(hdul[1], "flux").format.repeat == 1

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        coadd = hdul[1].data
        header = hdul[0].header
        names = {name.lower() for name in coadd.columns.names}
        missing = _REQUIRED_COLUMNS - names
        if missing:
            raise ValueError(f"HDU1 lacks column(s) {sorted(missing)}")
        loglam = snapped_loglam(coadd["loglam"], header)
        mask = np.asarray(coadd["and_mask"]) != 0 if "and_mask" in names else None
        labels = {"SURVEY": "SDSS", "HDU": 1, "ROW": 0}
        if len(hdul) > 2 and isinstance(hdul[2], fits.BinTableHDU) and len(hdul[2].data):
            specobj = hdul[2].data
            for column, label in _LABELS:
                if column in specobj.columns.names:
                    labels[label] = specobj[column][0]
        return [_spectrum(loglam, coadd["flux"], coadd["ivar"], mask, header, labels, source)]

    # -- the fast path ---------------------------------------------------------------------

    def identify_raw(self, hdus: list[RawHDU]) -> bool:
        """:meth:`identify` on :func:`~gasnet_plugin.io.fits_raw.read_hdus`' headers."""
        if len(hdus) < 2:
            return False
        try:
            names = {name.lower() for name in column_names(hdus[1])}
        except RawFitsError:
            return False
        if not names >= _REQUIRED_COLUMNS:
            return False
        flux = [n.lower() for n in column_names(hdus[1])].index("flux")
        return str(hdus[1].cards[f"TFORM{flux + 1}"]).strip().lstrip("1") == "E"

    def read_raw(self, raw: bytes, hdus: list[RawHDU], source: str) -> list[Spectrum]:
        """:meth:`read` from the file's bytes (see the module docstring); raises
        :class:`~gasnet_plugin.io.fits_raw.RawFitsError` for anything it does not handle."""
        header = hdus[0].header
        names = {name.lower(): name for name in column_names(hdus[1])}
        wanted = ["loglam", "flux", "ivar"] + (["and_mask"] if "and_mask" in names else [])
        coadd = read_columns(raw, hdus[1], [names[n] for n in wanted])
        coadd = {n.lower(): v for n, v in coadd.items()}
        loglam = snapped_loglam(coadd["loglam"], header)
        mask = coadd["and_mask"] != 0 if "and_mask" in coadd else None
        labels = {"SURVEY": "SDSS", "HDU": 1, "ROW": 0}
        if len(hdus) > 2 and str(hdus[2].cards.get("XTENSION", "")).strip() == "BINTABLE" \
                and int(hdus[2].cards.get("NAXIS2", 0)):
            present = set(column_names(hdus[2]))
            columns = [column for column, _ in _LABELS if column in present]
            values = read_columns(raw, hdus[2], columns)
            for column, label in _LABELS:
                if column in values:
                    labels[label] = values[column][0]
        return [_spectrum(loglam, coadd["flux"], coadd["ivar"], mask, header, labels, source)]
