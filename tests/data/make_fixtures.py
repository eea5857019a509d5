"""Regenerate the real-spectrum fixtures in this folder from ``../shared/data``.

Not needed to run the tests (the fixtures are committed); kept as the record of where
they come from. Run from the repository root::

    python tests/data/make_fixtures.py ../shared/data

Files copied unchanged: four SDSS spec files (BOSS QSO, galaxy and CV star; SDSS-I
galaxy) and two LAMOST DR1 stars. Files trimmed (same values, fewer rows or columns):

- ``desi-coadd-2targets.fits``: the first two targets of DESI
  ``coadd-1-80693-thru20210204.fits`` (FIBERMAP and the b/r/z WAVELENGTH, FLUX, IVAR and
  MASK HDUs; resolution matrices dropped).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from astropy.io import fits

COPIED = [
    "spectra/sdss_boss/spec-3655-55240-0002.fits",
    "spectra/sdss_boss/spec-3655-55240-0660.fits",
    "spectra/sdss_boss/spec-9367-57758-0500.fits",
    "spectra/sdss_legacy/spec-0266-51602-0013.fits",
    "spectra/lamost_dr1/spec-55862-B6212_sp06-003.fits",
    "spectra/lamost_dr1/spec-55862-B6212_sp06-005.fits",
]


def trim_desi(source: Path, target: Path, n_targets: int) -> None:
    with fits.open(source) as hdul:
        keep = [fits.PrimaryHDU(header=hdul[0].header)]
        fibermap = hdul["FIBERMAP"]
        keep.append(fits.BinTableHDU(fibermap.data[:n_targets], header=fibermap.header))
        for arm in "BRZ":
            keep.append(hdul[f"{arm}_WAVELENGTH"].copy())
            for part in ("FLUX", "IVAR", "MASK"):
                hdu = hdul[f"{arm}_{part}"]
                keep.append(fits.ImageHDU(hdu.data[:n_targets], header=hdu.header,
                                          name=hdu.name))
        fits.HDUList(keep).writeto(target, overwrite=True)


def main(shared: Path) -> None:
    here = Path(__file__).resolve().parent
    for relative in COPIED:
        shutil.copy(shared / relative, here / Path(relative).name)
    trim_desi(shared / "spectra/desi/coadd-1-80693-thru20210204.fits",
              here / "desi-coadd-2targets.fits", 2)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
