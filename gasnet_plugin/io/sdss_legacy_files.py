"""Readers for the SDSS archive's older and bulk layouts: DR7 ``spSpec`` files and
``spPlate`` files with their ``spZbest`` redshift files.

**spSpec** (SDSS-I/II DR7 ``spSpec-MJD-PLATE-FIBER.fits``, the DR7 archive's one file per
spectrum): the primary image is 5 × P — flux, continuum-subtracted flux, error (σ), pixel
mask, sky — on ``log10 λ = COEFF0 + i·COEFF1`` (vacuum, ``VACUUM = T``); the labels are
header keywords: ``Z``, ``Z_ERR``, ``SPEC_CLN`` (the DR7 class code, decoded below),
``ZWARNING`` where present, ``PLATEID``/``MJD``/``FIBERID``. A pixel is bad where its error
is 0 or its mask has a bit that means bad data (:data:`SPSPEC_BAD_BITS`). The mask's bit 30
marks *emission lines* in DR7 spSpec files (it is set on [O II] 3727 of the galaxy in our
fixtures), so "mask ≠ 0", as specutils' own spSpec loader reads it, would throw away the
lines a redshift rests on; only the bad-data bits are used.

**spPlate + spZbest** (idlspec2d's per-plate files; 640 fibres for SDSS-I/II, 1000 for
BOSS): ``spPlate-PLATE-MJD.fits`` holds flux (HDU0, fibres × P), inverse variance (HDU1),
and-mask (HDU2), or-mask (HDU3) on one log-linear grid (``COEFF0``/``COEFF1``);
``spZbest-PLATE-MJD.fits`` holds the pipeline's CLASS, SUBCLASS, Z, Z_ERR, ZWARNING per
fibre (HDU1, matched on ``FIBERID``). The reader looks for the spZbest file beside the
spPlate file (same folder, then its sub-folders, e.g. idlspec2d's ``RUN1D/``); without
one, the spectra are read with empty labels. A folder or file list that holds both gives
one row per fibre: the spZbest file is read as the spPlate's companion, not as an input
(:func:`gasnet_plugin.host.inputs.expand_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.sdss_plate_names import PLATE_MJD
from gasnet_plugin.io.spectrum import SDSS_FLUX_UNIT, build_spectrum, parse_flux_unit

if TYPE_CHECKING:
    from specutils import Spectrum

SPEC_CLN = {0: ("UNKNOWN", ""), 1: ("STAR", ""), 2: ("GALAXY", ""), 3: ("QSO", ""),
            4: ("QSO", "HIZ_QSO"), 5: ("SKY", ""), 6: ("STAR", "STAR_LATE"),
            7: ("GALAXY", "GAL_EM")}
"""DR7 ``SPEC_CLN`` code → (class, subclass) in the spelling of later SDSS releases."""

SPSPEC_BAD_BITS = sum(1 << bit for bit in (*range(9), 18, 22, 23, 24, 25, 26, 27))
"""SDSS pixel-mask bits that mean bad data: the fibre bits 0–8 (NOPLUG … NEARWHOPPER),
FULLREJECT (18), NOSKY (22), BRIGHTSKY (23), NODATA (24), COMBINEREJ (25), BADFLUXFACTOR
(26), BADSKYCHI (27). Informational bits (LOWFLAT, SCATTEREDLIGHT, the spSpec EMLINE bit
30) do not mask a pixel."""



def _loglam(header: fits.Header, npix: int) -> np.ndarray:
    return header["COEFF0"] + header["COEFF1"] * np.arange(npix)


def _has_log_grid(header: fits.Header) -> bool:
    return "COEFF0" in header and "COEFF1" in header and header.get("NAXIS") == 2


def spspec_flux_unit(header: fits.Header):
    """The flux unit of an spSpec file. DR7 headers write ``BUNIT = '1.0E-17 erg/cm/s/Ang'``
    (the square of cm lost); a BUNIT that is not a flux density per wavelength is read as
    SDSS's 1e-17 erg s⁻¹ cm⁻² Å⁻¹, which is what the DR7 data model states."""
    try:
        unit = parse_flux_unit(header.get("BUNIT"), SDSS_FLUX_UNIT)
    except ValueError:
        return SDSS_FLUX_UNIT
    return unit if unit.is_equivalent(SDSS_FLUX_UNIT) else SDSS_FLUX_UNIT


# -- spSpec -------------------------------------------------------------------------------

def is_spspec(hdul: fits.HDUList) -> bool:
    """A DR7 spSpec file: 5 × P primary image on a COEFF0/1 grid with ``SPEC_CLN``."""
    header = hdul[0].header
    return (_has_log_grid(header) and header.get("NAXIS2") in (4, 5)
            and "SPEC_CLN" in header and not str(header.get("TELESCOP", "")).startswith("LAMOST"))


class SdssSpSpecReader:
    """SDSS-I/II DR7 ``spSpec`` files: one spectrum per file, labels in the header."""

    name = "sdss-spspec"
    summary = "SDSS-I/II DR7 spSpec files (5 × P primary image, labels in the header)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return is_spspec(hdul)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        header = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float32)
        error, pixel_mask = data[2], data[3].astype(np.int64)
        good = (error > 0) & np.isfinite(error) & np.isfinite(data[0])
        ivar = np.where(good, 1.0 / np.where(good, error, 1.0) ** 2, 0.0).astype(np.float32)
        mask = ~good | ((pixel_mask & SPSPEC_BAD_BITS) != 0)
        survey_class, subclass = SPEC_CLN.get(int(header.get("SPEC_CLN", 0)), ("UNKNOWN", ""))
        plate, mjd, fiber = (header.get(k, -1) for k in ("PLATEID", "MJD", "FIBERID"))
        rows = label_rows(1, source, SURVEY="SDSS", HDU=0, ROW=0,
                          OBJECT=f"{plate:04d}-{mjd:05d}-{fiber:03d}",
                          SURVEY_CLASS=survey_class, SURVEY_SUBCLASS=subclass,
                          SURVEY_Z=header.get("Z", np.nan),
                          SURVEY_ZERR=header.get("Z_ERR", np.nan),
                          SURVEY_ZWARNING=header.get("ZWARNING", -1))
        wave = 10.0 ** _loglam(header, data.shape[1])
        return [build_spectrum(wave, np.nan_to_num(data[0]), ivar, mask, spspec_flux_unit(header),
                               rows,
                               wavelength_in_air=header.get("VACUUM") is False,
                               header=header)]


# -- spPlate + spZbest ----------------------------------------------------------------------

def is_spplate(hdul: fits.HDUList) -> bool:
    """An spPlate file: fibres × P flux on a COEFF0/1 grid and an inverse-variance image of
    the same shape in HDU1."""
    header = hdul[0].header
    return (_has_log_grid(header) and len(hdul) >= 2
            and isinstance(hdul[1], fits.ImageHDU)
            and hdul[1].header.get("NAXIS1") == header.get("NAXIS1")
            and hdul[1].header.get("NAXIS2") == header.get("NAXIS2")
            and not str(header.get("TELESCOP", "")).startswith("LAMOST"))


def plate_and_mjd(path: str | Path, header: fits.Header | None = None) -> tuple[int, int] | None:
    """(plate, MJD) of an spPlate/spZbest file from its header, else its name."""
    if header is not None and "PLATEID" in header and "MJD" in header:
        return int(header["PLATEID"]), int(header["MJD"])
    match = PLATE_MJD.search(Path(path).name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_spzbest(source: str | Path, plate: int, mjd: int) -> Path | None:
    """The ``spZbest-PLATE-MJD.fits`` beside ``source``: in its folder, else in a
    sub-folder (sorted by name); ``None`` if there is none."""
    folder = Path(source).parent
    name = f"spZbest-{plate:04d}-{mjd:05d}.fits"
    if (folder / name).is_file():
        return folder / name
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / name).is_file():
            return sub / name
    return None


def _spzbest_labels(path: Path, fibers: np.ndarray) -> dict[str, np.ndarray]:
    """SURVEY_* label columns for ``fibers`` (1-based) from an spZbest file."""
    with fits.open(path, memmap=False) as hdul:
        table = hdul[1].data
        names = {n.upper() for n in table.columns.names}
        fiber_ids = (np.asarray(table["FIBERID"]) if "FIBERID" in names
                     else np.arange(1, len(table) + 1))
        order = np.argsort(fiber_ids, kind="stable")
        rows = order[np.clip(np.searchsorted(fiber_ids[order], fibers), 0, len(order) - 1)]
        missing = fiber_ids[rows] != fibers
        if missing.any():
            raise ValueError(f"{path}: no row for fibre(s) {fibers[missing][:5].tolist()}")
        labels = {}
        for column, label in (("CLASS", "SURVEY_CLASS"), ("SUBCLASS", "SURVEY_SUBCLASS"),
                              ("Z", "SURVEY_Z"), ("Z_ERR", "SURVEY_ZERR"),
                              ("ZWARNING", "SURVEY_ZWARNING"),
                              ("SN_MEDIAN_ALL", "SURVEY_SN_MEDIAN_ALL")):
            if column in names:
                labels[label] = np.asarray(table[column])[rows]
        return labels


def _plugmap_fibers(hdul: fits.HDUList, n_fibers: int) -> np.ndarray:
    """FIBERID of each row: from the plug-map (HDU5) when it has one per row, else 1…n."""
    if len(hdul) > 5 and isinstance(hdul[5], fits.BinTableHDU) \
            and "FIBERID" in [n.upper() for n in hdul[5].columns.names] \
            and len(hdul[5].data) == n_fibers:
        return np.asarray(hdul[5].data["FIBERID"], dtype=np.int64)
    return np.arange(1, n_fibers + 1)


class SdssPlateReader:
    """SDSS ``spPlate`` files (640 or 1000 spectra each) with labels from ``spZbest``."""

    name = "sdss-plate"
    summary = "SDSS spPlate-PLATE-MJD.fits (+ spZbest-PLATE-MJD.fits beside it for labels)"

    def identify(self, hdul: fits.HDUList) -> bool:
        return is_spplate(hdul)

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        header = hdul[0].header
        flux = np.asarray(hdul[0].data, dtype=np.float32)
        ivar = np.asarray(hdul[1].data, dtype=np.float32)
        mask = ~np.isfinite(flux) | ~(ivar > 0)
        if len(hdul) > 2 and isinstance(hdul[2], fits.ImageHDU) \
                and hdul[2].data is not None and hdul[2].data.shape == flux.shape:
            mask |= np.asarray(hdul[2].data) != 0
        n_fibers = flux.shape[0]
        fibers = _plugmap_fibers(hdul, n_fibers)
        ids = plate_and_mjd(source, header)
        labels: dict[str, np.ndarray] = {}
        if ids is not None:
            plate, mjd = ids
            companion = find_spzbest(source, plate, mjd)
            if companion is not None:
                labels = _spzbest_labels(companion, fibers)
            objects = np.char.add(f"{plate:04d}-{mjd:05d}-", np.char.zfill(fibers.astype(str), 4))
        else:
            objects = np.char.add("fiber ", fibers.astype(str))
        rows = label_rows(n_fibers, source, SURVEY="SDSS", HDU=0, ROW=fibers - 1,
                          OBJECT=objects, **labels)
        wave = 10.0 ** _loglam(header, flux.shape[1])
        return [build_spectrum(wave, np.nan_to_num(flux), np.where(mask, 0, ivar), mask,
                               parse_flux_unit(header.get("BUNIT"), SDSS_FLUX_UNIT), rows,
                               header=header)]
