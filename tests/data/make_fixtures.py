"""Regenerate the real-spectrum fixtures in this folder from ``../shared/data``.

Not needed to run the tests (the fixtures are committed); kept as the record of where
they come from. Run from the repository root::

    python tests/data/make_fixtures.py ../shared/data

Files copied unchanged: four SDSS spec files (BOSS QSO, galaxy and CV star; SDSS-I
galaxy) and two LAMOST DR1 stars; into ``tests/other_formats/``, from
``spectra/other_formats``, the 2dF/AAOmega galaxy (vacuum) and QSO (air), the DR7
``spSpec`` galaxy (``sample_sdss.fits``) and a gzipped LAMOST DR7 star.

Files built from the committed SDSS fixtures into ``tests/other_formats/`` (so they need
only the repository: ``python tests/data/make_fixtures.py --derived``):

- ``eso-sdp-0266-51602-0013.fits``: the SDSS-I galaxy ``spec-0266-51602-0013.fits`` as an
  ESO science-data-product 1-D spectrum (ESO-044286: empty primary with
  ``PRODCATG = 'SCIENCE.SPECTRUM'``, one-row binary table WAVE [nm, vacuum ``em.wl``],
  FLUX, ERR, QUAL with their utypes and units).
- ``4most-l1-like-0266-51602-0013.fits``: the same spectrum laid out as a 4MOST L1
  spectrum would be (``TELESCOP = 'ESO-VISTA'``, ``INSTRUME = '4MOST'``, ``TARGETID``;
  WAVE in Å and in **air**, ``em.wl;obs.atmos``; FLUX and ERR_FLUX by name only, no
  utypes), to test air wavelengths, name matching and labels.
- ``spPlate-3655-55240.fits`` and ``spZbest-3655-55240.fits``: an SDSS plate file pair
  holding the two BOSS plate-3655 fixtures (fibres 2 and 660) on the plate's common
  log-λ grid: flux, ivar, and-mask, or-mask, and a plug-map with their FIBERID; spZbest
  with their SPECOBJ labels. Files trimmed (same values, fewer rows or columns):

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
- ``../other_formats/spec1d.1153.151.12004808.fits``: the DEEP2 ``spec1d`` file of
  ``spectra/other_formats`` with only its ``Bxspf-B``/``Bxspf-R`` HDUs and their SPEC,
  LAMBDA and IVAR columns.
- ``../redrock-templates/``: a tiny Redrock template set: ``spEigenGal-56436.fits`` (the SDSS
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
OTHER_FORMATS = [
    "spectra/other_formats/emlLinearVacuumNoHelio.fits",
    "spectra/other_formats/quasarLinearSkyAirNoHelio.fits",
    "spectra/other_formats/sample_sdss.fits",
    "spectra/other_formats/spec-57287-KP193637N444141V03_sp10-161.fits.gz",
]
"""Copied into ``tests/other_formats/`` (a folder apart, so that runs on this folder keep
their spectra)."""


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


def trim_deep2(source: Path, target: Path) -> None:
    with fits.open(source) as hdul:
        keep = [fits.PrimaryHDU(header=hdul[0].header)]
        for name in ("Bxspf-B", "Bxspf-R"):
            hdu = hdul[name]
            columns = [c for c in hdu.columns if c.name in ("SPEC", "LAMBDA", "IVAR")]
            table = fits.BinTableHDU.from_columns(columns, name=name)
            for key in ("OBJNO", "OBJECT", "EXPTIME"):
                table.header[key] = hdu.header[key]
            keep.append(table)
        fits.HDUList(keep).writeto(target, overwrite=True)


def _sdss_spectrum(path: Path):
    from gasnet_plugin.io.sdss import snapped_loglam

    with fits.open(path) as hdul:
        coadd, specobj = hdul[1].data, hdul[2].data
        return (snapped_loglam(coadd["loglam"], hdul[0].header), coadd["flux"], coadd["ivar"],
                coadd["and_mask"], coadd["or_mask"], specobj[0], hdul[0].header)


def eso_from_sdss(source: Path, target: Path, fourmost: bool) -> None:
    """An ESO SDP 1-D file (or a 4MOST-L1-like one) holding an SDSS spec file's spectrum."""
    import numpy as np

    from gasnet_plugin.io.wavelength_medium import vacuum_to_air

    loglam, flux, ivar, and_mask, _, _, header = _sdss_spectrum(source)
    wave = 10.0**loglam
    err = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
    qual = (and_mask != 0).astype(np.int32)
    n = wave.size
    primary = fits.PrimaryHDU()
    for key, value in (("ORIGIN", "ESO"), ("PRODCATG", "SCIENCE.SPECTRUM"),
                       ("OBJECT", f"SDSS {header['PLATEID']}-{header['MJD']}-"
                                  f"{header['FIBERID']}"),
                       ("RA", header["RA"]), ("DEC", header["DEC"]), ("SPECSYS", "TOPOCENT"),
                       ("FLUXCAL", "ABSOLUTE"), ("WAVELMIN", wave[0] / 10),
                       ("WAVELMAX", wave[-1] / 10)):
        primary.header[key] = value
    if fourmost:
        primary.header["TELESCOP"] = "ESO-VISTA"
        primary.header["INSTRUME"] = "4MOST"
        primary.header["TARGETID"] = 266516020013
        primary.header["SURVEY"] = "4MOST-TEST"
        wave_column = fits.Column("WAVE", f"{n}D", unit="Angstrom",
                                  array=[vacuum_to_air(wave)])
        columns = [wave_column,
                   fits.Column("FLUX", f"{n}E", unit="1e-17 erg/(s cm2 Angstrom)", array=[flux]),
                   fits.Column("ERR_FLUX", f"{n}E", unit="1e-17 erg/(s cm2 Angstrom)",
                               array=[err])]
    else:
        primary.header["TELESCOP"] = "SDSS 2.5-M"
        primary.header["INSTRUME"] = "SDSS"
        unit = "10**(-17)erg.s**(-1).cm**(-2).angstrom**(-1)"
        columns = [fits.Column("WAVE", f"{n}D", unit="nm", array=[wave / 10]),
                   fits.Column("FLUX", f"{n}E", unit=unit, array=[flux]),
                   fits.Column("ERR", f"{n}E", unit=unit, array=[err]),
                   fits.Column("QUAL", f"{n}J", array=[qual])]
    table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
    if fourmost:
        table.header["TUCD1"] = "em.wl;obs.atmos"
    else:
        for i, (utype, ucd) in enumerate((
                ("spec:Data.SpectralAxis.Value", "em.wl"),
                ("spec:Data.FluxAxis.Value", "phot.flux.density;em.wl"),
                ("spec:Data.FluxAxis.Accuracy.StatError",
                 "stat.error;phot.flux.density;em.wl"),
                ("spec:Data.FluxAxis.Quality", "meta.code.qual")), start=1):
            table.header[f"TUTYP{i}"] = utype
            table.header[f"TUCD{i}"] = ucd
    fits.HDUList([primary, table]).writeto(target, overwrite=True)


def plate_from_specs(sources: list[Path], folder: Path) -> None:
    """spPlate + spZbest files holding SDSS spec files of one plate on a common grid."""
    import numpy as np
    from astropy.table import Table

    spectra = [_sdss_spectrum(path) for path in sources]
    step = 1e-4
    start = min(s[0][0] for s in spectra)
    stop = max(s[0][-1] for s in spectra)
    npix = round((stop - start) / step) + 1
    planes = {name: np.zeros((len(spectra), npix), dtype=dtype) for name, dtype in
              (("flux", np.float32), ("ivar", np.float32), ("and", np.int32),
               ("or", np.int32))}
    for row, (loglam, flux, ivar, and_mask, or_mask, _, _) in enumerate(spectra):
        first = round((loglam[0] - start) / step)
        cols = slice(first, first + loglam.size)
        planes["flux"][row, cols] = flux
        planes["ivar"][row, cols] = ivar
        planes["and"][row, cols] = and_mask
        planes["or"][row, cols] = or_mask
    header0 = spectra[0][6]
    plate, mjd = header0["PLATEID"], header0["MJD"]
    primary = fits.PrimaryHDU(planes["flux"])
    for key, value in (("PLATEID", plate), ("MJD", mjd), ("COEFF0", start), ("COEFF1", step),
                       ("BUNIT", "1E-17 erg/cm^2/s/Ang"), ("TELESCOP", "SDSS 2.5-M")):
        primary.header[key] = value
    fibers = [s[5]["FIBERID"] for s in spectra]
    plugmap = fits.BinTableHDU(Table({"FIBERID": np.array(fibers, dtype=np.int32)}))
    fits.HDUList([primary, fits.ImageHDU(planes["ivar"]), fits.ImageHDU(planes["and"]),
                  fits.ImageHDU(planes["or"]), fits.ImageHDU(np.ones_like(planes["flux"])),
                  plugmap]).writeto(folder / f"spPlate-{plate:04d}-{mjd:05d}.fits",
                                    overwrite=True)
    zbest = Table({name: [s[5][name] for s in spectra] for name in
                   ("PLATE", "MJD", "FIBERID", "CLASS", "SUBCLASS", "Z", "Z_ERR", "ZWARNING",
                    "SN_MEDIAN_ALL")})
    zbest = zbest[::-1]    # rows in another order than the plate's: matched on FIBERID
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(zbest)]).writeto(
        folder / f"spZbest-{plate:04d}-{mjd:05d}.fits", overwrite=True)


def derived(here: Path) -> None:
    """The fixtures built from committed ones (ESO, 4MOST-like, spPlate/spZbest)."""
    other = here.parent / "other_formats"
    sdss_galaxy = here / "spec-0266-51602-0013.fits"
    eso_from_sdss(sdss_galaxy, other / "eso-sdp-0266-51602-0013.fits", fourmost=False)
    eso_from_sdss(sdss_galaxy, other / "4most-l1-like-0266-51602-0013.fits", fourmost=True)
    plate_from_specs([here / "spec-3655-55240-0002.fits", here / "spec-3655-55240-0660.fits"],
                     other)


def main(shared: Path) -> None:
    here = Path(__file__).resolve().parent
    for relative in COPIED:
        shutil.copy(shared / relative, here / Path(relative).name)
    trim_desi(shared / "spectra/desi/coadd-1-80693-thru20210204.fits",
              here / "desi-coadd-2targets.fits", 2)
    gasnet3_reference(shared / "spectra/gasnet3_tables", here / "gasnet3-reference.fits")
    redrock_tiny(shared, here.parent / "redrock-templates")
    for relative in OTHER_FORMATS:
        shutil.copy(shared / relative, here.parent / "other_formats" / Path(relative).name)
    trim_deep2(shared / "spectra/other_formats/spec1d.1153.151.12004808.fits",
               here.parent / "other_formats" / "spec1d.1153.151.12004808.fits")
    derived(here)


if __name__ == "__main__":
    if sys.argv[1] == "--derived":
        derived(Path(__file__).resolve().parent)
    else:
        main(Path(sys.argv[1]))
