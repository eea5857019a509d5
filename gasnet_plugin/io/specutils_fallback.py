"""The last reader in the order: any file that specutils' own loader registry identifies.

It catches the formats our readers do not know (specutils ships loaders for many
instruments: APOGEE, JWST, MaNGA, 6dFGS, GAMA, HST/COS, …, and the generic
``wcs1d-fits`` and ``tabular-fits``). specutils reads the file; this turns its
:class:`~specutils.Spectrum` into our form:

- the spectral axis in Å (from any spectral unit: nm, μm, Hz, eV); a pixel axis is refused;
  pixels in decreasing wavelength are reversed; a FITS WCS whose ``CTYPE1`` is ``AWAV``
  (the FITS standard's air wavelength) is converted to vacuum;
- the uncertainty as inverse variance (standard deviation or variance are converted). A
  spectrum with no uncertainty gets a constant one estimated from its pixel-to-pixel scatter
  (1.4826 × the median absolute deviation of first differences / √2): redshifts need
  weights, and this is the weight a flat-noise spectrum would have;
- the flux unit as specutils gives it (a dimensionless flux is recorded as none).

The format specutils chose is written to ``meta["specutils_format"]``. When specutils
identifies several formats, the specific loaders win over ``tabular-fits`` and
``wcs1d-fits`` (which identify almost any FITS table or image). A file that specutils
identifies but cannot turn into a wavelength-calibrated spectrum (a catalogue read as
``tabular-fits``) gets the usual flagged row, with specutils' reason.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.io import registry as io_registry

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum

if TYPE_CHECKING:
    from specutils import Spectrum

GENERIC_FORMATS = ("tabular-fits", "wcs1d-fits")
"""specutils formats that identify almost any table or image: tried last."""
OWN_FORMATS = ("LAMOST DR1 1D", "ESO SDP 1D")
"""Our own loaders registered with specutils; their files have their own readers."""


def specutils_formats(hdul: fits.HDUList) -> list[str]:
    """The specutils formats that identify ``hdul``, specific ones first."""
    from specutils import Spectrum

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            formats = io_registry.identify_format("read", Spectrum, None, None, [hdul], {})
        except Exception:
            return []
    formats = [f for f in formats if f not in OWN_FORMATS]
    return sorted(formats, key=lambda f: (f in GENERIC_FORMATS, GENERIC_FORMATS.index(f)
                                          if f in GENERIC_FORMATS else 0, f))


def _in_air(spectrum: Spectrum, header: fits.Header) -> bool:
    ctype = ""
    wcs = getattr(spectrum, "wcs", None)
    if wcs is not None and getattr(wcs, "wcs", None) is not None:
        ctype = str(wcs.wcs.ctype[0])
    return (ctype or str(header.get("CTYPE1", ""))).upper().startswith("AWAV")


def _inverse_variance(spectrum: Spectrum, flux: np.ndarray) -> np.ndarray:
    """Inverse variance of ``flux`` in the flux unit squared⁻¹ (see the module docstring)."""
    from astropy.nddata import InverseVariance

    if spectrum.uncertainty is not None:
        ivar = spectrum.uncertainty.represent_as(InverseVariance)
        unit = ivar.unit
        values = np.asarray(ivar.array, dtype=np.float64)
        if unit is not None and spectrum.flux.unit is not None \
                and unit != spectrum.flux.unit**-2:
            values = (values * unit).to_value(spectrum.flux.unit**-2)
        return np.where(np.isfinite(values) & (values > 0), values, 0.0)
    diffs = np.diff(flux, axis=-1)
    median = np.nanmedian(diffs, axis=-1, keepdims=True)
    sigma = 1.4826 * np.nanmedian(np.abs(diffs - median), axis=-1, keepdims=True) / np.sqrt(2)
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.inf)
    return np.broadcast_to(1.0 / sigma**2, flux.shape).copy()


def from_specutils(spectrum: Spectrum, source: str, header: fits.Header,
                   specutils_format: str) -> Spectrum:
    """Our form of a spectrum specutils read (see the module docstring)."""
    axis = spectrum.spectral_axis
    if axis.unit.physical_type not in ("length", "frequency", "energy", "wavenumber"):
        raise ValueError(f"specutils read it as {specutils_format!r}, but its spectral axis "
                         f"is in {axis.unit or 'no unit'}, not wavelength")
    wave = axis.to_value(u.AA, equivalencies=u.spectral())
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    if flux.ndim > 2 or flux.shape[-1] != wave.size:
        raise ValueError(f"specutils read it as {specutils_format!r} with flux of shape "
                         f"{flux.shape}; expected (P,) or (n, P) with P = {wave.size}")
    ivar = _inverse_variance(spectrum, flux)
    mask = ~np.isfinite(flux) | (ivar == 0)
    if spectrum.mask is not None:
        mask |= np.asarray(spectrum.mask, dtype=bool).reshape(flux.shape)
    order = np.argsort(wave, kind="stable")
    wave, flux, ivar, mask = wave[order], flux[..., order], ivar[..., order], mask[..., order]
    n = 1 if flux.ndim == 1 else flux.shape[0]
    unit = spectrum.flux.unit
    rows = label_rows(n, source, ROW=np.arange(n) if n > 1 else 0,
                      OBJECT=str(header.get("OBJECT", "")).strip())
    result = build_spectrum(wave, np.where(mask, 0.0, flux).astype(np.float32),
                            np.where(mask, 0.0, ivar).astype(np.float32), mask,
                            None if unit in (None, u.dimensionless_unscaled) else unit, rows,
                            wavelength_in_air=_in_air(spectrum, header), header=header)
    result.meta["specutils_format"] = specutils_format
    return result


class SpecutilsReader:
    """Any format specutils' loader registry identifies (tried after all our readers)."""

    name = "specutils"
    summary = "any file specutils' own loaders identify (wcs1d-fits, tabular-fits, …)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return bool(specutils_formats(hdul))

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        from specutils import Spectrum

        errors = []
        for specutils_format in specutils_formats(hdul):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    spectrum = Spectrum.read(hdul, format=specutils_format)
                return [from_specutils(spectrum, source, hdul[0].header, specutils_format)]
            except Exception as exc:
                errors.append(f"{specutils_format}: {exc}")
        raise ValueError("specutils identified the file but could not read it as a "
                         "wavelength-calibrated spectrum (" + "; ".join(errors) + ")")
