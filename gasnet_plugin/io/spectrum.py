"""Building the :class:`~specutils.Spectrum` objects that readers return."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import astropy.units as u
import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import set_labels
from gasnet_plugin.io.wavelength_medium import air_to_vacuum

if TYPE_CHECKING:
    from astropy.table import Table
    from specutils import Spectrum

SDSS_FLUX_UNIT = u.Unit("1e-17 erg / (s cm2 Angstrom)")
"""Flux density unit of SDSS, BOSS and DESI spectra."""


def find_column(hdu: fits.BinTableHDU, name: str) -> fits.Column | None:
    """The column of ``hdu`` called ``name``, whatever its case; ``None`` if absent."""
    for column in hdu.columns:
        if column.name.lower() == name.lower():
            return column
    return None


def parse_flux_unit(text: str | None, default: u.UnitBase) -> u.UnitBase:
    """A flux unit from a FITS ``BUNIT``/``TUNIT`` string, ``default`` if absent.

    Survey spellings are repaired first: ``Ang`` → ``Angstrom``, ``cm^2`` → ``cm2``.

    Raises
    ------
    ValueError
        When the string is present but not a unit.
    """
    if text is None or not str(text).strip():
        return default
    return _parse_unit(str(text))


@functools.lru_cache(maxsize=128)
def _parse_unit(text: str) -> u.UnitBase:
    """:func:`parse_flux_unit` of a non-empty string (a survey writes the same few: each
    is parsed once per process; units are immutable)."""
    text = text.strip().replace("^", "")
    if "Ang" in text and "Angstrom" not in text:
        text = text.replace("Ang", "Angstrom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        try:
            return u.Unit(text, format="fits")
        except ValueError:
            return u.Unit(text)


def build_spectrum(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                   mask: np.ndarray | None, flux_unit: u.UnitBase | None, rows: Table,
                   wavelength_in_air: bool = False, **meta: Any) -> Spectrum:
    """A Spectrum with an inverse-variance uncertainty, a mask and its label rows.

    Every reader states its flux unit and wavelength medium here, the same way: the unit
    becomes the flux's (the resample stage writes it to ``FLUX_UNIT``), and the rows'
    ``AIR_TO_VACUUM`` says whether the wavelengths were converted.

    Parameters
    ----------
    wavelength
        Pixel centres, Å, shape ``(P,)``: vacuum, or air when ``wavelength_in_air``.
    flux
        Flux density in ``flux_unit``, shape ``(P,)`` or ``(n, P)``.
    ivar
        Inverse variance of ``flux``, in ``flux_unit**-2``, same shape as ``flux``.
    mask
        ``True`` where a pixel is bad, same shape as ``flux``; ``None`` for no mask.
    flux_unit
        Unit of ``flux``; ``None`` when the file states none (the flux is then
        dimensionless, and ``FLUX_UNIT`` is empty).
    rows
        Label rows (:func:`gasnet_plugin.io.labels.label_rows`), one per spectrum.
    wavelength_in_air
        ``wavelength`` is in air: it is converted to vacuum
        (:func:`~gasnet_plugin.io.wavelength_medium.air_to_vacuum`) and ``AIR_TO_VACUUM``
        is set.
    **meta
        Further ``meta`` entries (e.g. the primary ``header``).
    """
    # specutils and astropy.nddata load when the first spectrum is built, not at import
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    flux = np.asarray(flux)
    n_spectra = 1 if flux.ndim == 1 else flux.shape[0]
    if len(rows) != n_spectra:
        raise ValueError(f"{len(rows)} label rows for {n_spectra} spectra")
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength_in_air:
        wavelength = air_to_vacuum(wavelength)
    set_labels(rows, AIR_TO_VACUUM=bool(wavelength_in_air))
    if flux_unit is None:
        flux_unit = u.dimensionless_unscaled
    if not flux.dtype.isnative:
        flux = flux.astype(flux.dtype.newbyteorder("="))
    return Spectrum(
        # the reader's array becomes the spectrum's flux, not a copy of it (a file of 1000
        # spectra: 16 MB less to copy and to hold at once)
        flux=u.Quantity(flux, flux_unit, copy=False),
        spectral_axis=wavelength * u.AA,
        # nor is the ivar copied (astropy's default): a 16 MB transient per 1000 spectra
        uncertainty=InverseVariance(np.asarray(ivar), unit=flux_unit**-2, copy=False),
        mask=None if mask is None else np.asarray(mask, dtype=bool),
        meta={"rows": rows, **meta},
    )


def register_specutils_loader(label: str, identifies: Callable[[fits.HDUList], bool],
                              reads: Callable[[fits.HDUList, str], Spectrum],
                              ) -> Callable[..., Spectrum]:
    """Register a reader with specutils' loader registry as format ``label``, so that
    ``Spectrum.read(path)`` (or ``format=label``) reads its files outside gasnet.

    Parameters
    ----------
    label
        The specutils format name.
    identifies
        Whether an open FITS file is of this format.
    reads
        The spectrum of an open FITS file (``reads(hdul, source)``).

    Returns
    -------
    The registered loader (takes a path, a file object or an ``HDUList``).
    """
    from specutils import Spectrum
    from specutils.io.parsing_utils import read_fileobj_or_hdulist
    from specutils.io.registers import data_loader

    def identify(origin: str, *args: Any, **kwargs: Any) -> bool:
        try:
            with read_fileobj_or_hdulist(*args, **kwargs) as hdul:
                return identifies(hdul)
        except Exception:
            return False

    def loader(file_obj: Any, **kwargs: Any) -> Spectrum:
        source = file_obj if isinstance(file_obj, str) else getattr(file_obj, "name",
                                                                    "<hdulist>")
        with read_fileobj_or_hdulist(file_obj, **kwargs) as hdul:
            return reads(hdul, str(source))

    loader.__doc__ = f"specutils loader for {label!r} files (path, file object or HDUList)."
    return data_loader(label, identifier=identify, dtype=Spectrum, extensions=["fits", "fit"],
                       priority=10)(loader)
