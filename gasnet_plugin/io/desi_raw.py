"""DESI coadds from the file's mapped bytes: the fast path of the ``desi-coadd`` reader.

A DESI coadd of 500 targets is ~220 MB, of which the reader needs the b, r and z arms'
flux, ivar and mask images (~48 MB) and FIBERMAP's TARGETID column. Through astropy,
reading them costs parsing every header card, a byte-swapped copy of each image and the
join's several passes over the pixels (:func:`~gasnet_plugin.io.desi.join_arms`). Here the
file is memory-mapped, the headers are those :mod:`~gasnet_plugin.io.fits_raw` already
parsed, and one compiled pass per arm (numba) reads each image's big-endian values in
place and writes the joined spectrum: the same numbers, bit for bit, in the same order
(overlaps summed in float64, arm by arm), as the astropy path.

Anything this does not handle (scaled float images, other mask types, missing HDUs,
inconsistent shapes) raises :class:`~gasnet_plugin.io.fits_raw.RawFitsError`, and the
reader's astropy path then reads the file and reports what is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

from gasnet_plugin.io.desi import ARMS, arm_layout, finish_overlaps
from gasnet_plugin.io.fits_raw import (
    RawFitsError,
    RawHDU,
    extension_index,
    read_columns,
    read_image,
)
from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import SDSS_FLUX_UNIT, build_spectrum, parse_flux_unit

if TYPE_CHECKING:
    import mmap

    from specutils import Spectrum


def _image(mapped: bytes | mmap.mmap, hdu: RawHDU, what: str, bitpix: int) -> np.ndarray:
    """:func:`~gasnet_plugin.io.fits_raw.read_image` of a coadd image: 32-bit data as its
    stored words read as native uint32 (big-endian bytes, swapped by the join), BITPIX −64
    as big-endian float64."""
    return read_image(mapped, hdu, what, bitpix, ">f8" if bitpix == -64 else "=u4")


def read_raw(mapped: bytes | mmap.mmap, hdus: list[RawHDU], source: str,
             ) -> list[Spectrum]:
    """The reader's ``read`` from the file's (mapped) bytes; see the module docstring."""
    names = extension_index(hdus)
    arms = [arm for arm in ARMS if f"{arm}_FLUX" in names]
    waves, images = [], []
    for arm in arms:
        for part in ("WAVELENGTH", "IVAR"):
            if f"{arm}_{part}" not in names:
                raise RawFitsError(f"arm {arm} has flux but no {arm}_{part} HDU")
        flux, ivar = (_image(mapped, hdus[names[f"{arm}_{part}"]], f"{arm}_{part}", -32)
                      for part in ("FLUX", "IVAR"))
        # the mask's stored word that means 0: 0, or −2³¹ for unsigned 32-bit (BZERO 2³¹)
        mask, mask_zero = flux, np.uint32(0)
        if f"{arm}_MASK" in names:
            mask_hdu = hdus[names[f"{arm}_MASK"]]
            zero = float(mask_hdu.cards.get("BZERO", 0))
            if zero not in (0, 2**31) or float(mask_hdu.cards.get("BSCALE", 1)) != 1:
                raise RawFitsError(f"{arm}_MASK: only 32-bit integer masks are handled")
            mask = _image(mapped, mask_hdu, f"{arm}_MASK", 32)
            mask_zero = np.uint32(int(zero))
        wave = _image(mapped, hdus[names[f"{arm}_WAVELENGTH"]], f"{arm}_WAVELENGTH",
                      -64)[0].astype(np.float64)
        if not (flux.shape == ivar.shape == mask.shape and flux.shape[1] == wave.size):
            raise RawFitsError(f"arm {arm}: flux, ivar, mask and wavelength do not match")
        waves.append(wave)
        images.append((flux, ivar, mask, mask_zero, f"{arm}_MASK" in names))
    if not arms or len({image[0].shape[0] for image in images}) != 1:
        raise RawFitsError("arms with different numbers of spectra")
    layout = arm_layout(waves)
    n_spectra, n_pix = images[0][0].shape[0], layout.coverage.size
    flux_out = np.empty((n_spectra, n_pix), dtype=np.float32)
    ivar_out = np.empty((n_spectra, n_pix), dtype=np.float32)
    # pixels no arm covers (none on DESI's grid) stay 0
    uncovered = layout.coverage == 0
    flux_out[:, uncovered] = 0.0
    ivar_out[:, uncovered] = 0.0
    shared_column = np.full(n_pix, -1, dtype=np.int64)
    shared_column[layout.shared] = np.arange(layout.shared.size)
    weighted = np.zeros((n_spectra, layout.shared.size))
    weight = np.zeros((n_spectra, layout.shared.size))
    for offset, (flux, ivar, mask, mask_zero, has_mask) in zip(layout.offsets, images,
                                                                strict=True):
        _join_arm(flux, ivar, mask, has_mask, mask_zero, offset, shared_column,
                  flux_out, ivar_out, weighted, weight)
    finish_overlaps(flux_out, ivar_out, layout.shared, weighted, weight)

    fibermap = hdus[names["FIBERMAP"]]
    targetid = read_columns(mapped, fibermap, ["TARGETID"])["TARGETID"]
    if targetid.size != n_spectra:
        raise RawFitsError(f"FIBERMAP has {targetid.size} rows for {n_spectra} spectra")
    first = names[f"{arms[0]}_FLUX"]
    unit = parse_flux_unit(hdus[first].cards.get("BUNIT"), SDSS_FLUX_UNIT)
    rows = label_rows(n_spectra, source, SURVEY="DESI", HDU=first,
                      ROW=np.arange(n_spectra), TARGETID=targetid)
    return [build_spectrum(layout.wave, flux_out, ivar_out, ivar_out == 0, unit, rows,
                           header=hdus[0].header)]


@numba.njit(cache=True, nogil=True)
def _swapped(word: np.uint32) -> np.uint32:
    """A 32-bit word with its bytes reversed (big-endian ↔ native little-endian)."""
    return (((word & 0xFF) << 24) | ((word & 0xFF00) << 8) | ((word >> 8) & 0xFF00)
            | ((word >> 24) & 0xFF))


@numba.njit(cache=True, nogil=True)
def _join_arm(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, has_mask: bool,
              mask_zero: np.uint32, offset: int, shared_column: np.ndarray,
              flux_out: np.ndarray, ivar_out: np.ndarray, weighted: np.ndarray,
              weight: np.ndarray) -> None:
    """One arm into the joined spectrum, in one pass over its pixels.

    ``flux``, ``ivar``, ``mask``: ``(n, P_arm)`` the stored big-endian 32-bit words read
    as native uint32 (flux and ivar float32, byte-swapped here). A pixel is valid where
    its mask word is ``mask_zero`` (or there is no mask), ivar > 0 and both values are
    finite. Union pixels this arm alone covers (``shared_column`` −1) get its value, or 0
    and 0 where invalid; shared ones add ivar·flux and ivar (float64) to ``weighted`` and
    ``weight`` at their column."""
    n_rows, n_pix = flux.shape
    words = np.empty(2, dtype=np.uint32)
    values = words.view(np.float32)
    for row in range(n_rows):
        for pixel in range(n_pix):
            words[0] = _swapped(flux[row, pixel])
            words[1] = _swapped(ivar[row, pixel])
            f, w = values[0], values[1]
            good = (w > 0) and np.isfinite(f) and np.isfinite(w)
            if has_mask and _swapped(mask[row, pixel]) != mask_zero:
                good = False
            at = offset + pixel
            column = shared_column[at]
            if column < 0:
                flux_out[row, at] = f if good else np.float32(0.0)
                ivar_out[row, at] = w if good else np.float32(0.0)
            elif good:
                weighted[row, column] += np.float64(w) * np.float64(f)
                weight[row, column] += np.float64(w)
