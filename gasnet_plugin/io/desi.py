"""Reader for DESI ``coadd-*.fits`` files: the b, r and z arms joined into one spectrum.

The arms share one linear wavelength grid (0.8 Å steps) and overlap by a few tens of Å.
They are joined as desispec's ``coadd_cameras`` does: on the union grid, each pixel is the
inverse-variance weighted mean of the arms that measured it validly (mask 0, ivar > 0).
A pixel no arm measured validly is masked with ivar 0.

Plain files go through the reader's fast path (:mod:`gasnet_plugin.io.desi_raw`: the file
memory-mapped, the join compiled); this module's astropy path reads the rest and gives
the same spectra bit for bit.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import SDSS_FLUX_UNIT, build_spectrum, parse_flux_unit

if TYPE_CHECKING:
    import mmap

    from specutils import Spectrum

    from gasnet_plugin.io.fits_raw import RawHDU

ARMS = ("B", "R", "Z")


@dataclass(frozen=True)
class ArmLayout:
    """Where arms on one linear grid lie on their union grid.

    Attributes
    ----------
    wave
        ``(P,)`` the union grid's pixel centres, Å.
    offsets
        Per arm, the union pixel of its first pixel.
    coverage
        ``(P,)`` int64, how many arms cover each union pixel.
    shared
        The union pixels more than one arm covers (the overlaps: tens of pixels).
    """

    wave: np.ndarray
    offsets: tuple[int, ...]
    coverage: np.ndarray
    shared: np.ndarray


def arm_layout(waves: list[np.ndarray]) -> ArmLayout:
    """The union grid of arms whose pixel centres ``waves`` (per arm ``(P_arm,)``, Å) lie on
    one linear grid.

    Raises
    ------
    ValueError
        When the arms do not share one increasing linear grid, or lie so far apart that
        the union grid would be mostly gap.
    """
    if not all(len(w) > 1 and np.all(np.isfinite(w)) for w in waves):
        raise ValueError("an arm's wavelengths are not finite, or it has fewer than 2 pixels")
    step = waves[0][1] - waves[0][0]
    if not step > 0:
        raise ValueError("the arms' wavelengths do not increase")
    start = min(w[0] for w in waves)
    offsets = []
    for wave in waves:
        offset = (wave[0] - start) / step
        expected = wave[0] + step * np.arange(len(wave))
        if abs(offset - round(offset)) > 1e-3 or np.max(np.abs(wave - expected)) > 1e-3 * step:
            raise ValueError("the arms are not on one common linear wavelength grid")
        offsets.append(round(offset))
    npix = max(o + len(w) for o, w in zip(offsets, waves, strict=True))
    own = sum(len(w) for w in waves)
    if npix > 2 * own:      # arms far apart: the union grid would be mostly gap
        raise ValueError(f"the arms span {npix} pixels of their grid for {own} pixels of "
                         f"data ({min(w[0] for w in waves):.1f}-"
                         f"{max(w[-1] for w in waves):.1f} Angstrom): refusing to allocate the gap")
    coverage = np.zeros(npix, dtype=np.int64)
    for offset, wave in zip(offsets, waves, strict=True):
        coverage[offset:offset + len(wave)] += 1
    return ArmLayout(start + step * np.arange(npix), tuple(offsets), coverage,
                     np.flatnonzero(coverage > 1))


def join_arms(waves: list[np.ndarray], fluxes: list[np.ndarray], ivars: list[np.ndarray],
              masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join spectrograph arms that lie on one linear grid.

    Parameters
    ----------
    waves
        Per arm, pixel centres in Å, shape ``(P_arm,)``, all with the same step.
    fluxes, ivars, masks
        Per arm, shape ``(n, P_arm)``; ``masks`` non-zero where a pixel is bad.

    Returns
    -------
    wave, flux, ivar
        On the union grid: ``(P,)``, ``(n, P)``, ``(n, P)`` (float64, float32, float32).

    Raises
    ------
    ValueError
        When the arms do not share one linear grid (:func:`arm_layout`).
    """
    layout = arm_layout(waves)
    coverage, shared = layout.coverage, layout.shared
    npix = coverage.size
    n_spectra = fluxes[0].shape[0]
    flux_out = np.zeros((n_spectra, npix), dtype=np.float32)
    ivar_out = np.zeros((n_spectra, npix), dtype=np.float32)
    weighted = np.zeros((n_spectra, shared.size))
    weight = np.zeros((n_spectra, shared.size))
    for offset, flux, ivar, mask in zip(layout.offsets, fluxes, ivars, masks, strict=True):
        good = (mask == 0) & (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar)
        window = slice(offset, offset + flux.shape[1])
        # where one arm alone measured a pixel, the weighted mean is its own value: copied
        alone = (coverage[window] == 1)[None, :]
        np.copyto(flux_out[:, window], np.where(good, flux, 0.0), where=alone)
        np.copyto(ivar_out[:, window], np.where(good, ivar, 0.0), where=alone)
        # where arms overlap: the inverse-variance weighted mean (float64), in arm order
        inside = (shared >= offset) & (shared < offset + flux.shape[1])
        local = shared[inside] - offset
        w = np.where(good[:, local], ivar[:, local], 0.0).astype(np.float64)
        weighted[:, inside] += w * np.where(good[:, local], flux[:, local], 0.0)
        weight[:, inside] += w
    finish_overlaps(flux_out, ivar_out, shared, weighted, weight)
    return layout.wave, flux_out, ivar_out


def finish_overlaps(flux_out: np.ndarray, ivar_out: np.ndarray, shared: np.ndarray,
                    weighted: np.ndarray, weight: np.ndarray) -> None:
    """Put the overlaps' weighted means into the joined ``(n, P)`` flux and ivar (in
    place): ``weighted`` (Σ ivar·flux) and ``weight`` (Σ ivar) are ``(n, len(shared))``
    float64 over the valid arms of each ``shared`` pixel."""
    mean = np.divide(weighted, weight, out=np.zeros_like(weighted), where=weight > 0)
    flux_out[:, shared] = mean
    ivar_out[:, shared] = weight


def _has_coadd_hdus(names: Container[str]) -> bool:
    """A FIBERMAP and some arm's flux among the HDU ``names`` (an ``HDUList`` or the fast
    path's EXTNAME index)."""
    return "FIBERMAP" in names and any(f"{arm}_FLUX" in names for arm in ARMS)


class DesiCoaddReader:
    """DESI coadds: one 2-D spectrum ``(n_targets, P)`` per file, TARGETID from FIBERMAP."""

    name = "desi-coadd"
    summary = "DESI coadd-*.fits (b/r/z arms joined; TARGETID from FIBERMAP)"

    reads_mapped = True
    """The fast path takes the file memory-mapped, not read whole (it needs ~a fifth)."""

    def identify(self, hdul: fits.HDUList) -> bool:
        return _has_coadd_hdus(hdul)

    def identify_raw(self, hdus: list[RawHDU]) -> bool:
        """:meth:`identify` on :func:`~gasnet_plugin.io.fits_raw.read_hdus`' headers."""
        from gasnet_plugin.io.fits_raw import extension_index

        return _has_coadd_hdus(extension_index(hdus))

    def read_raw(self, mapped: bytes | mmap.mmap, hdus: list[RawHDU],
                 source: str) -> list[Spectrum]:
        """:meth:`read` from the memory-mapped file (:mod:`gasnet_plugin.io.desi_raw`);
        raises :class:`~gasnet_plugin.io.fits_raw.RawFitsError` for what it does not
        handle."""
        from gasnet_plugin.io.desi_raw import read_raw

        return read_raw(mapped, hdus, source)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        arms = [arm for arm in ARMS if f"{arm}_FLUX" in hdul]
        waves, fluxes, ivars, masks = [], [], [], []
        for arm in arms:
            for part in ("WAVELENGTH", "IVAR"):
                if f"{arm}_{part}" not in hdul:
                    raise ValueError(f"arm {arm} has flux but no {arm}_{part} HDU")
            flux = np.atleast_2d(np.asarray(hdul[f"{arm}_FLUX"].data, dtype=np.float32))
            ivar = np.atleast_2d(np.asarray(hdul[f"{arm}_IVAR"].data, dtype=np.float32))
            mask = (np.atleast_2d(np.asarray(hdul[f"{arm}_MASK"].data))
                    if f"{arm}_MASK" in hdul else np.zeros(flux.shape, dtype=np.int32))
            wave = np.asarray(hdul[f"{arm}_WAVELENGTH"].data, dtype=np.float64)
            if not (flux.shape == ivar.shape == mask.shape and flux.shape[1] == wave.size):
                raise ValueError(f"arm {arm}: flux {flux.shape}, ivar {ivar.shape}, mask "
                                 f"{mask.shape} and wavelength {wave.shape} do not match")
            waves.append(wave)
            fluxes.append(flux)
            ivars.append(ivar)
            masks.append(mask)
        wave, flux, ivar = join_arms(waves, fluxes, ivars, masks)
        targetid = np.asarray(hdul["FIBERMAP"].data["TARGETID"])
        if targetid.size != flux.shape[0]:
            raise ValueError(f"FIBERMAP has {targetid.size} rows for {flux.shape[0]} spectra")
        unit = parse_flux_unit(hdul[f"{arms[0]}_FLUX"].header.get("BUNIT"), SDSS_FLUX_UNIT)
        rows = label_rows(flux.shape[0], source, SURVEY="DESI",
                          HDU=hdul.index_of(f"{arms[0]}_FLUX"),
                          ROW=np.arange(flux.shape[0]), TARGETID=targetid)
        return [build_spectrum(wave, flux, ivar, ivar == 0, unit, rows,
                               header=hdul[0].header)]
