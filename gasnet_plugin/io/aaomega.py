"""Reader for 2dF/AAOmega spectra as 2dfdr writes them (AAT: 2dFGRS, 2QZ, WiggleZ, GAMA,
OzDES, 2dFLenS).

The primary image is the flux: one spectrum (``NAXIS = 1``, a single-fibre file) or one
row per fibre (``NAXIS = 2``, a combined frame); the ``VARIANCE`` extension has the same
shape; an optional ``WAVELENGTH`` extension gives the pixel wavelengths, else the linear
WCS does (``λ = CRVAL1 + (i + 1 − CRPIX1)·CDELT1``, Å). The ``FIBRES`` table names the
targets (``NAME``) and, in a combined frame, which fibres hold programme targets
(``TYPE = 'P'``; sky, guide and parked fibres are not read).

AAOmega has a blue and a red arm split by a dichroic (``DICHROIC = 'X5700'``: the crossover
near 5700 Å); 2dfdr splices the two halves ("Splicing blue and red data frames" in the
history), and their relative flux scale is often off: the 2dF QSO of our test files
steps down by a factor 1.9 at the splice, which no smooth continuum absorbs and which
made the scan place Mg II on the step (z = 1.04 instead of 2.003). The reader finds the
splice pixel — the largest lasting step of the noise level (median over 20 pixels on
each side, so a sky line does not count) within ±200 Å of the dichroic's wavelength —
and scales the red half so that the median flux of the 80 pixels on each side (20
pixels away from the splice) agree (:func:`match_spliced_arms`). The factor
applied is in ``meta["arm_scale"]`` (1 when nothing was changed).

2dfdr works in air unless told otherwise: wavelengths are air unless the primary header
has ``VACUUM = T``, and air is converted to vacuum. The flux is in counts (not
flux-calibrated); the file states no unit, and none is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import build_spectrum

if TYPE_CHECKING:
    from specutils import Spectrum


def _extension(hdul: fits.HDUList, name: str) -> fits.hdu.base.ExtensionHDU | None:
    for hdu in hdul[1:]:
        if str(hdu.header.get("EXTNAME", "")).strip().upper() == name:
            return hdu
    return None


SPLICE_SEARCH = 200.0
"""Å either side of the dichroic's nominal wavelength searched for the splice."""
SPLICE_GAP, SPLICE_WINDOW = 20, 80
"""Pixels skipped next to the splice, and pixels whose median flux is matched, per side."""
MAX_ARM_SCALE = 5.0
"""A ratio beyond this (or its inverse) is not an arm mismatch: nothing is changed."""


def dichroic_wavelength(header: fits.Header) -> float | None:
    """Nominal crossover of the dichroic in Å (``'X5700'`` → 5700), ``None`` if unknown."""
    digits = "".join(ch for ch in str(header.get("DICHROIC", "")) if ch.isdigit())
    return float(digits) if digits else None


def match_spliced_arms(wave: np.ndarray, flux: np.ndarray, variance: np.ndarray,
                       crossover: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale the red half of spliced spectra to the blue half at the splice.

    Parameters
    ----------
    wave
        ``(P,)`` Å.
    flux, variance
        ``(n, P)``.
    crossover
        The dichroic's nominal wavelength, Å.

    Returns
    -------
    flux, variance
        ``(n, P)`` with pixels redward of each row's splice scaled by ``s`` (variance by
        ``s²``).
    scale
        ``(n,)`` the factors ``s`` (1 where no splice was found or the ratio was implausible).
    """
    n, npix = flux.shape
    scale = np.ones(n)
    near = np.flatnonzero(np.abs(wave - crossover) <= SPLICE_SEARCH)
    if near.size < 3:
        return flux, variance, scale
    # a splice is a lasting step of the noise level (a sky line is a spike): compare the
    # median log σ of the SPLICE_GAP pixels before and after each candidate
    lo, hi = max(near[0] - SPLICE_GAP, 0), min(near[-1] + SPLICE_GAP + 1, npix)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sigma = 0.5 * np.log(np.where(variance[:, lo:hi] > 0, variance[:, lo:hi], np.nan))
    windows = np.lib.stride_tricks.sliding_window_view(log_sigma, SPLICE_GAP, axis=1)
    level = np.nanmedian(windows, axis=2)          # level[:, k]: pixels lo+k … lo+k+GAP−1
    before = level[:, :-SPLICE_GAP]                 # ends at pixel lo+k+GAP−1
    after = level[:, SPLICE_GAP:]                   # starts at pixel lo+k+GAP
    jump = np.abs(after - before)
    jump = np.where(np.isfinite(jump), jump, 0.0)
    splice = lo + SPLICE_GAP - 1 + np.argmax(jump, axis=1)       # last blue pixel, (n,)
    offsets = np.arange(SPLICE_GAP, SPLICE_GAP + SPLICE_WINDOW)
    blue_idx = np.clip(splice[:, None] - offsets[None, :], 0, npix - 1)
    red_idx = np.clip(splice[:, None] + 1 + offsets[None, :], 0, npix - 1)
    rows = np.arange(n)[:, None]
    good = np.isfinite(flux) & (variance > 0)
    blue = np.where(good[rows, blue_idx], flux[rows, blue_idx], np.nan)
    red = np.where(good[rows, red_idx], flux[rows, red_idx], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nanmedian(blue, axis=1) / np.nanmedian(red, axis=1)
    plausible = np.isfinite(ratio) & (ratio > 1 / MAX_ARM_SCALE) & (ratio < MAX_ARM_SCALE)
    scale = np.where(plausible, ratio, 1.0)
    redward = np.arange(npix)[None, :] > splice[:, None]
    factor = np.where(redward, scale[:, None], 1.0)
    return flux * factor, variance * factor**2, scale


def is_aaomega(hdul: fits.HDUList) -> bool:
    """A 2dfdr file: AAOmega/2dF instrument, an image primary, a ``VARIANCE`` extension."""
    header = hdul[0].header
    instrument = str(header.get("INSTRUME", "")).upper()
    return (("2DF" in instrument or "AAOMEGA" in instrument or "TDFDRVER" in header)
            and header.get("NAXIS") in (1, 2) and _extension(hdul, "VARIANCE") is not None)


class AaomegaReader:
    """2dF/AAOmega single-fibre files and combined frames written by 2dfdr."""

    name = "aaomega-2df"
    summary = "2dF/AAOmega 2dfdr spectra (flux image + VARIANCE, FIBRES table)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return is_aaomega(hdul)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        header = hdul[0].header
        flux = np.atleast_2d(np.asarray(hdul[0].data, dtype=np.float64))
        variance = np.atleast_2d(np.asarray(_extension(hdul, "VARIANCE").data,
                                            dtype=np.float64))
        if variance.shape != flux.shape:
            raise ValueError(f"VARIANCE has shape {variance.shape}, flux {flux.shape}")
        npix = flux.shape[1]
        wave_hdu = _extension(hdul, "WAVELENGTH")
        if wave_hdu is not None and wave_hdu.data is not None \
                and np.asarray(wave_hdu.data).shape[-1] == npix:
            wave = np.asarray(wave_hdu.data, dtype=np.float64).reshape(-1, npix)[0]
        elif "CRVAL1" in header and "CDELT1" in header:
            wave = header["CRVAL1"] + (np.arange(npix) + 1 - header.get("CRPIX1", 1.0)) \
                * header["CDELT1"]
        else:
            raise ValueError("no WAVELENGTH extension and no linear WCS (CRVAL1/CDELT1)")
        fibres = _extension(hdul, "FIBRES")
        names = np.array([""] * flux.shape[0])
        keep = np.ones(flux.shape[0], dtype=bool)
        if fibres is not None and len(fibres.data) == flux.shape[0]:
            names = np.char.strip(np.asarray(fibres.data["NAME"]).astype(str))
            if flux.shape[0] > 1 and "TYPE" in fibres.columns.names:
                keep = np.char.strip(np.asarray(fibres.data["TYPE"]).astype(str)) == "P"
        if not keep.any():
            raise ValueError("no programme fibre (FIBRES TYPE 'P') in the frame")
        rows_index = np.flatnonzero(keep)
        flux, variance = flux[keep], variance[keep]
        crossover = dichroic_wavelength(header)
        spliced = "Splicing blue and red" in str(header.get("HISTORY", ""))
        scale = np.ones(len(rows_index))
        if crossover is not None and spliced:
            flux, variance, scale = match_spliced_arms(wave, flux, variance, crossover)
        good = np.isfinite(flux) & np.isfinite(variance) & (variance > 0)
        ivar = np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)
        rows = label_rows(len(rows_index), source, SURVEY="2dF", HDU=0, ROW=rows_index,
                          OBJECT=names[keep])
        flux = np.where(good, flux, 0.0).astype(np.float32)
        ivar = ivar.astype(np.float32)
        if header.get("NAXIS") == 1:          # a single-fibre file: a 1-D spectrum
            flux, ivar, good = flux[0], ivar[0], good[0]
        return [build_spectrum(wave, flux, ivar, ~good, None, rows,
                               wavelength_in_air=header.get("VACUUM") is not True,
                               header=header, arm_scale=scale)]
