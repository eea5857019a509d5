"""Regenerate the real-spectrum fixtures in this folder from ``../shared/data``.

Not needed to run the tests (the fixtures are committed); kept as the record of where
they come from. Run from the repository root::

    python tests/data/make_fixtures.py ../shared/data

Files copied unchanged: four SDSS spec files (BOSS QSO, galaxy and CV star; SDSS-I
galaxy) and two LAMOST DR1 stars. Files trimmed (same values, fewer rows or columns):

- ``desi-coadd-2targets.fits``: the first two targets of DESI
  ``coadd-1-80693-thru20210204.fits`` (FIBERMAP and the b/r/z WAVELENGTH, FLUX, IVAR and
  MASK HDUs; resolution matrices dropped).
- ``gasnet3-reference.fits``: GaSNet-III's own stored outputs for real SDSS spectra
  (``spectra/gasnet3_tables``): HDU ``QSO10``, the 10 QSOs that were run through all three
  published encoders (flux, ivar, labels, and per encoder ``Best_fit_z_<CLASS>``,
  ``min_chi_square_<CLASS>``, ``Degeneracy_<CLASS>``); HDU ``MIXED``, the first 20 rows of
  the mixed-class table run through the STAR encoder; HDU ``GRID``, the observed grid
  ``input_grid``; HDU ``QSO_CURVES``, the QSO encoder's stored χ² curves of the first two
  QSO10 rows.
- ``redrock-templates/``: a tiny Redrock template set: ``spEigenGal-56436.fits`` (the SDSS
  pipeline's galaxy eigen-templates, unchanged; the tests convert it), Redrock's
  ``rrtemplate-QSO-None-v0.1.fits`` (unchanged) and ``rrtemplate-STAR-G-tiny.fits``
  (Redrock's G-star template averaged from 0.1 Å to 1 Å pixels).
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


def gasnet3_reference(tables: Path, target: Path, n_mixed: int = 20) -> None:
    from astropy.table import Table

    labels = ["CLASS", "SUBCLASS", "PLATE", "MJD", "FIBERID", "Z", "flux", "ivar"]
    qso = None
    for cls in ("GALAXY", "QSO", "STAR"):
        with fits.open(tables / f"test_Encoder_SDSS_{cls}_reconstruction_examples.fits") as h:
            data = Table(h[1].data)
            grid = h[2].data["input_grid"][0]
        if qso is None:
            qso = data[labels]
        for name in ("Best_fit_z", "min_chi_square", "Degeneracy"):
            qso[f"{name}_{cls}"] = data[name]
        if cls == "QSO":
            curves = Table({"chi_square_curve_QSO": data["chi_square_curve"][:2, 0, :]})
    with fits.open(tables / "test_classfy_Encoder_SDSS_STAR_reconstruction_examples.fits") as h:
        mixed = Table(h[1].data)[: n_mixed][
            [*labels, "Best_fit_z", "min_chi_square", "Degeneracy"]]
    hdus = [fits.PrimaryHDU(), fits.table_to_hdu(qso), fits.table_to_hdu(mixed),
            fits.table_to_hdu(Table({"input_grid": [grid]})), fits.table_to_hdu(curves)]
    for hdu, name in zip(hdus[1:], ("QSO10", "MIXED", "GRID", "QSO_CURVES"), strict=True):
        hdu.name = name
    fits.HDUList(hdus).writeto(target, overwrite=True)


def redrock_tiny(shared: Path, target: Path) -> None:
    import numpy as np

    target.mkdir(exist_ok=True)
    shutil.copy(shared / "templates/sdss_idlspec2d/spEigenGal-56436.fits", target)
    shutil.copy(shared / "templates/redrock/rrtemplate-QSO-None-v0.1.fits", target)
    with fits.open(shared / "templates/redrock/rrtemplate-STAR-G-v0.1.fits") as hdul:
        header = hdul[0].header.copy()
        basis = hdul[0].data
        n = basis.shape[1] // 10 * 10
        coarse = basis[:, :n].reshape(basis.shape[0], -1, 10).mean(axis=2)
        header["CRVAL1"] = header["CRVAL1"] + 4.5 * header["CDELT1"]
        header["CDELT1"] = 10 * header["CDELT1"]
        header["RRSUBTYP"] = "G"
        out = fits.PrimaryHDU(coarse.astype(np.float32), header=header)
        out.header["EXTNAME"] = "BASIS_VECTORS"
        fits.HDUList([out]).writeto(target / "rrtemplate-STAR-G-tiny.fits", overwrite=True)


def main(shared: Path) -> None:
    here = Path(__file__).resolve().parent
    for relative in COPIED:
        shutil.copy(shared / relative, here / Path(relative).name)
    trim_desi(shared / "spectra/desi/coadd-1-80693-thru20210204.fits",
              here / "desi-coadd-2targets.fits", 2)
    gasnet3_reference(shared / "spectra/gasnet3_tables", here / "gasnet3-reference.fits")
    redrock_tiny(shared, here / "redrock-templates")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
