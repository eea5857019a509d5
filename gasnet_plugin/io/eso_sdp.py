"""Reader for ESO 1-D spectra in the science-data-product (SDP) layout, also the specutils
loader ``"ESO SDP 1D"`` that :mod:`gasnet_plugin.specutils_loaders` registers.

This is how ESO's archive delivers every reduced 1-D spectrum (UVES, X-shooter, FORS,
VIMOS/LEGA-C, GIRAFFE, …) and how 4MOST delivers its L1 spectra (ESO Science Data
Products Standard, ESO-044286; 4MOST adopts it for its Phase-3 products):

- a primary header with no data (``PRODCATG = 'SCIENCE.SPECTRUM'``, ``OBJECT``,
  ``SPECSYS``, ``TELESCOP``, ``INSTRUME``);
- a binary-table extension with **one row per spectrum** whose array columns hold the
  spectral axis and fluxes: ``WAVE``, ``FLUX``, ``ERR`` and optionally ``QUAL``
  (0 = good); spectra that are not flux-calibrated carry ``FLUX_REDUCED`` and
  ``ERR_REDUCED`` instead (or beside them).

Columns are found by their IVOA utype (``TUTYPn``: ``…SpectralAxis.Value``,
``…FluxAxis.Value``, ``…FluxAxis.Accuracy.StatError``, ``…Data.FluxAxis.Quality``) and,
where the file has no utypes, by name (``WAVE``/``WAVELENGTH``/``LAMBDA``; ``FLUX``;
``ERR``/``ERR_FLUX``/``FLUX_ERR``/``ERROR``; ``QUAL``/``QUALITY``). A flux and its error
are always taken from the same namespace: calibrated ``FLUX`` with ``ERR``, else
``FLUX_REDUCED`` with ``ERR_REDUCED`` (mixing them would be wrong by the whole flux
calibration).

Units come from ``TUNITn``: the spectral axis is converted to Å (ESO writes nm or Å); the
flux unit is the flux column's (none stated → recorded as none). Air or vacuum is stated only
by the spectral axis's UCD: ``TUCDn = 'em.wl;obs.atmos'`` is air (converted to vacuum),
``'em.wl'`` vacuum. Labels: ``OBJECT`` from the primary header; ``Z``/``REDSHIFT``,
``Z_ERR``, ``CLASS``, ``SUBCLASS`` and an integer ``TARGETID`` where a header has them
(4MOST-style products); ``SURVEY`` from the ``SURVEY`` keyword, else ``INSTRUME``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import astropy.units as u
import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum

if TYPE_CHECKING:
    from specutils import Spectrum

ESO_FORMAT = "ESO SDP 1D"

_UTYPE_WAVE = "spectralaxis.value"
_UTYPE_FLUX = "fluxaxis.value"
_UTYPE_ERR = "fluxaxis.accuracy.staterror"
_UTYPE_QUAL = "fluxaxis.quality"
_WAVE_NAMES = ("WAVE", "WAVELENGTH", "LAMBDA")
_FLUX_ERR_NAMES = (("FLUX", ("ERR", "ERR_FLUX", "FLUX_ERR", "ERROR")),
                   ("FLUX_REDUCED", ("ERR_REDUCED",)))
_QUAL_NAMES = ("QUAL", "QUALITY")


def _utype(header: fits.Header, index: int) -> str:
    """The utype of column ``index`` (0-based), lower case, without its namespace."""
    text = str(header.get(f"TUTYP{index + 1}", "")).strip().lower()
    return text.split("data.", 1)[-1] if "data." in text else text


def _columns(hdu: fits.BinTableHDU) -> dict[str, int] | None:
    """Indices of the ``wave``, ``flux``, ``err`` and ``qual`` columns of ``hdu`` (``err``
    and ``qual`` optional); ``None`` when it has no spectral axis and flux of equal length."""
    names = [name.upper() for name in hdu.columns.names]
    header = hdu.header
    utypes = [_utype(header, i) for i in range(len(names))]
    found: dict[str, int] = {}
    for role, utype in (("wave", _UTYPE_WAVE), ("flux", _UTYPE_FLUX), ("err", _UTYPE_ERR),
                        ("qual", _UTYPE_QUAL)):
        if utype in utypes:
            found[role] = utypes.index(utype)
    if "wave" not in found:
        wave = [names.index(n) for n in _WAVE_NAMES if n in names]
        if wave:
            found["wave"] = wave[0]
    # a flux and its error from the same namespace (utypes, else the first name pair that
    # has both; a flux without any error is kept only so that the error message names it)
    if "flux" not in found or "err" not in found:
        found.pop("flux", None)
        found.pop("err", None)
        for flux_name, err_names in _FLUX_ERR_NAMES:
            errs = [names.index(n) for n in err_names if n in names]
            if flux_name in names and errs:
                found["flux"], found["err"] = names.index(flux_name), errs[0]
                break
        else:
            fluxes = [names.index(f) for f, _ in _FLUX_ERR_NAMES if f in names]
            if fluxes:
                found["flux"] = fluxes[0]
    if "qual" not in found:
        qual = [names.index(n) for n in _QUAL_NAMES if n in names]
        if qual:
            found["qual"] = qual[0]
    if "wave" not in found or "flux" not in found:
        return None
    repeat = [hdu.columns[found[r]].format.repeat for r in found]
    return found if repeat[0] > 1 and len(set(repeat)) == 1 else None


def is_eso_spectrum(hdul: fits.HDUList) -> bool:
    """Whether ``hdul`` is an ESO SDP 1-D spectrum (see the module docstring): HDU1 a
    binary table with array columns for the spectral axis and flux, and either
    ``PRODCATG`` naming a spectrum or ``ORIGIN = 'ESO'`` in the primary header."""
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
        return False
    header = hdul[0].header
    declared = str(header.get("PRODCATG", "")).strip().upper().startswith("SCIENCE.SPECTRUM")
    eso = str(header.get("ORIGIN", "")).strip().upper().startswith("ESO")
    return (declared or eso) and _columns(hdul[1]) is not None


def _wavelength_unit(column: fits.Column, wave: np.ndarray) -> u.UnitBase:
    """The spectral axis unit from ``TUNIT``; without one, nm when values lie below 2500
    (an optical axis in nm), else Å."""
    if column.unit and str(column.unit).strip():
        text = str(column.unit).strip()
        return u.Unit({"angstrom": "Angstrom", "angstroms": "Angstrom"}.get(text.lower(), text))
    return u.nm if np.nanmedian(wave) < 2500 else u.AA


def _flux_unit(column: fits.Column) -> u.UnitBase | None:
    """The flux column's unit; ``None`` when it states none or one astropy cannot parse."""
    from gasnet_plugin.io.spectrum import parse_flux_unit

    text = column.unit
    if text is None or not str(text).strip():
        return None
    try:
        return parse_flux_unit(str(text), u.dimensionless_unscaled)
    except ValueError:
        return None


def _header_value(headers: tuple[fits.Header, ...], *keys: str, default=None):
    for header in headers:
        for key in keys:
            if key in header and header[key] not in (None, ""):
                return header[key]
    return default


def eso_spectra(hdul: fits.HDUList, source: str) -> list[Spectrum]:
    """The spectra of an ESO SDP file, one per table row, with labels in ``meta["rows"]``."""
    hdu = hdul[1]
    found = _columns(hdu)
    if found is None:
        raise ValueError("HDU1 has no WAVE and FLUX array columns of equal length")
    if len(hdu.data) == 0:
        raise ValueError("HDU1 has no rows (no spectrum)")
    headers = (hdul[0].header, hdu.header)
    columns = hdu.columns
    wave_column = columns[found["wave"]]
    ucd = str(hdu.header.get(f"TUCD{found['wave'] + 1}", "")).lower()
    in_air = "obs.atmos" in ucd
    flux_column = columns[found["flux"]]
    flux_unit = _flux_unit(flux_column)
    target = _header_value(headers, "TARGETID")
    labels = {
        "SURVEY": str(_header_value(headers, "SURVEY", "INSTRUME", default="")).strip(),
        "OBJECT": str(_header_value(headers, "OBJECT", default="")).strip(),
        "SURVEY_Z": _header_value(headers, "Z", "REDSHIFT", default=np.nan),
        "SURVEY_ZERR": _header_value(headers, "Z_ERR", "ZERR", default=np.nan),
        "SURVEY_CLASS": str(_header_value(headers, "CLASS", default="")).strip(),
        "SURVEY_SUBCLASS": str(_header_value(headers, "SUBCLASS", default="")).strip(),
        "TARGETID": target if isinstance(target, int | np.integer) else -1,
    }
    spectra = []
    for row in range(len(hdu.data)):   # ESO files hold one row; a few hold several
        record = hdu.data[row]
        wave = np.asarray(record[found["wave"]], dtype=np.float64).ravel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            wave = (wave * _wavelength_unit(wave_column, wave)).to_value(
                u.AA, equivalencies=u.spectral())
        flux = np.asarray(record[found["flux"]], dtype=np.float64).ravel()
        if "err" in found:
            err = np.asarray(record[found["err"]], dtype=np.float64).ravel()
            good_err = np.isfinite(err) & (err > 0)
            ivar = np.where(good_err, 1.0 / np.where(good_err, err, 1.0) ** 2, 0.0)
        else:
            raise ValueError(f"HDU1 has {columns[found['flux']].name} but no error column "
                             f"(ERR, ERR_FLUX or ERR_REDUCED): no inverse variance")
        mask = ~np.isfinite(flux) | (ivar == 0)
        if "qual" in found:
            mask |= np.asarray(record[found["qual"]]).ravel() != 0
        order = np.argsort(wave, kind="stable")
        rows = label_rows(1, source, HDU=1, ROW=row, **labels)
        spectra.append(build_spectrum(
            wave[order], np.nan_to_num(flux[order]).astype(np.float32),
            ivar[order].astype(np.float32), mask[order], flux_unit, rows,
            wavelength_in_air=in_air, header=hdul[0].header))
    return spectra


class EsoSpectrumReader:
    """ESO science-data-product 1-D spectra (4MOST L1, VLT instruments): one per row."""

    name = "eso-1d"
    summary = "ESO SDP 1-D spectra (binary table WAVE/FLUX/ERR[/QUAL], e.g. 4MOST L1)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return is_eso_spectrum(hdul)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        return eso_spectra(hdul, source)
