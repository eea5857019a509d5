"""Reader for LAMOST 1-D spectra (DR1 to DR7 low resolution), also the specutils loader
``"LAMOST DR1 1D"`` that :mod:`gasnet_plugin.specutils_loaders` registers (specutils has
none for LAMOST)::

    import gasnet_plugin.specutils_loaders
    Spectrum.read("spec-55862-B6212_sp06-003.fits", format="LAMOST DR1 1D")

The primary image is 5 × N: flux, inverse variance, sub-continuum (flux normalised by
the continuum), and-mask and or-mask. The wavelength grid is log-linear:
``log10 λ = COEFF0 + i·COEFF1``. CLASS, SUBCLASS, Z and Z_ERR are header keywords. DR1
fluxes are only relatively calibrated and the file states no unit: none is recorded.
Wavelengths are vacuum (``VACUUM = T``); a file saying ``VACUUM = F`` is converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.fits_raw import read_image
from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum

if TYPE_CHECKING:
    from specutils import Spectrum

    from gasnet_plugin.io.fits_raw import RawHDU

LAMOST_FORMAT = "LAMOST DR1 1D"


def is_lamost_dr1(hdul: fits.HDUList) -> bool:
    """Whether ``hdul`` is a LAMOST 1-D spectrum with the 5-row primary image."""
    return _is_lamost_primary(hdul[0].header)


def _is_lamost_primary(values: Mapping[str, Any]) -> bool:
    """:func:`is_lamost_dr1` on the primary header's values (astropy's header, or the
    fast path's parsed cards)."""
    return (str(values.get("TELESCOP", "")).strip().startswith("LAMOST")
            and values.get("NAXIS") == 2 and int(values.get("NAXIS2", 0)) >= 2
            and "COEFF0" in values and "COEFF1" in values)


def lamost_spectrum(hdul: fits.HDUList, source: str) -> Spectrum:
    """The spectrum of a LAMOST DR1 file, with its header labels in ``meta["rows"]``."""
    header = hdul[0].header
    return _spectrum(np.asarray(hdul[0].data, dtype=np.float32), header, header, source)


def _spectrum(data: np.ndarray, values: Mapping[str, Any], header: fits.Header,
              source: str) -> Spectrum:
    """The spectrum from the primary image ``data`` ``(5, N)`` float32 and the primary
    header's ``values`` (astropy's header, or the fast path's parsed cards)."""
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"primary image has shape {data.shape}; expected 5 x N")
    npix = data.shape[1]
    loglam = values["COEFF0"] + values["COEFF1"] * np.arange(npix)
    mask = data[3] != 0 if data.shape[0] > 3 else None
    rows = label_rows(1, source, SURVEY="LAMOST", HDU=0, ROW=0,
                      OBJECT=str(values.get("DESIG", "")).strip(),
                      SURVEY_CLASS=values.get("CLASS", ""),
                      SURVEY_SUBCLASS=values.get("SUBCLASS", ""),
                      SURVEY_Z=values.get("Z", np.nan), SURVEY_ZERR=values.get("Z_ERR", np.nan))
    return build_spectrum(10.0**loglam, data[0], data[1], mask, None, rows,
                          wavelength_in_air=values.get("VACUUM") is False, header=header)


class LamostDR1Reader:
    """LAMOST DR1 1-D spectra: one spectrum per file with its header labels."""

    name = "lamost-dr1"
    spectra_per_file = 1
    """Every file gives exactly one spectrum (a run's row count needs no read)."""
    summary = "LAMOST DR1 1-D spec-*.fits (5 × N primary image, labels in the header)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return is_lamost_dr1(hdul)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        return [lamost_spectrum(hdul, source)]

    # -- the fast path ---------------------------------------------------------------------

    def identify_raw(self, hdus: list[RawHDU]) -> bool:
        """:meth:`identify` on :func:`~gasnet_plugin.io.fits_raw.read_hdus`' headers."""
        return _is_lamost_primary(hdus[0].cards)

    def read_raw(self, raw: bytes, hdus: list[RawHDU], source: str) -> list[Spectrum]:
        """:meth:`read` from the file's bytes: the primary image read in place (float32,
        unscaled; anything else raises :class:`~gasnet_plugin.io.fits_raw.RawFitsError`
        and goes astropy's way), its labels from the parsed header cards."""
        primary = hdus[0]
        data = read_image(raw, primary, "the float32 primary image", -32, ">f4").astype(np.float32)
        return [_spectrum(data, primary.cards, primary.header, source)]
