"""Reader for DESI ``coadd-*.fits`` files: the b, r and z arms joined into one spectrum.

The arms share one linear wavelength grid (0.8 Å steps) and overlap by a few tens of Å.
They are joined as desispec's ``coadd_cameras`` does: on the union grid, each pixel is the
inverse-variance weighted mean of the arms that measured it validly (mask 0, ivar > 0).
A pixel no arm measured validly is masked with ivar 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.spectrum import SDSS_FLUX_UNIT, build_spectrum, parse_flux_unit

if TYPE_CHECKING:
    from specutils import Spectrum

ARMS = ("B", "R", "Z")


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
        When the arms do not share one linear grid.
    """
    step = waves[0][1] - waves[0][0]
    start = min(w[0] for w in waves)
    offsets = []
    for wave in waves:
        offset = (wave[0] - start) / step
        expected = wave[0] + step * np.arange(len(wave))
        if abs(offset - round(offset)) > 1e-3 or np.max(np.abs(wave - expected)) > 1e-3 * step:
            raise ValueError("the arms are not on one common linear wavelength grid")
        offsets.append(round(offset))
    npix = max(o + len(w) for o, w in zip(offsets, waves, strict=True))
    n_spectra = fluxes[0].shape[0]
    own = sum(len(w) for w in waves)
    if npix > 2 * own:      # arms far apart: the union grid would be mostly gap
        raise ValueError(f"the arms span {npix} pixels of their grid for {own} pixels of "
                         f"data ({min(w[0] for w in waves):.1f}-"
                         f"{max(w[-1] for w in waves):.1f} Å): refusing to allocate the gap")
    coverage = np.zeros(npix, dtype=np.int64)
    for offset, wave in zip(offsets, waves, strict=True):
        coverage[offset:offset + len(wave)] += 1
    shared = np.flatnonzero(coverage > 1)              # the arms' overlaps: tens of pixels
    flux_out = np.zeros((n_spectra, npix), dtype=np.float32)
    ivar_out = np.zeros((n_spectra, npix), dtype=np.float32)
    weighted = np.zeros((n_spectra, shared.size))
    weight = np.zeros((n_spectra, shared.size))
    for offset, flux, ivar, mask in zip(offsets, fluxes, ivars, masks, strict=True):
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
    mean = np.divide(weighted, weight, out=np.zeros_like(weighted), where=weight > 0)
    flux_out[:, shared] = mean
    ivar_out[:, shared] = weight
    wave = start + step * np.arange(npix)
    return wave, flux_out, ivar_out


class DesiCoaddReader:
    """DESI coadds: one 2-D spectrum ``(n_targets, P)`` per file, TARGETID from FIBERMAP."""

    name = "desi-coadd"
    summary = "DESI coadd-*.fits (b/r/z arms joined; TARGETID from FIBERMAP)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return "FIBERMAP" in hdul and any(f"{arm}_FLUX" in hdul for arm in ARMS)

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
