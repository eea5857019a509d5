"""Readers for what astronomers have beyond SDSS/DESI/LAMOST DR1: ESO SDP 1-D (4MOST),
DR7 spSpec, spPlate + spZbest, 2dF/AAOmega, DEEP2, anything specutils reads; air
wavelengths, flux units, recursive folders and our specutils loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import DATA, REPO

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.host.inputs import InputError, expand_inputs
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.aaomega import match_spliced_arms
from gasnet_plugin.io.readers import UnreadableFileError, pick_reader, read_spectra
from gasnet_plugin.io.wavelength_medium import air_to_vacuum, vacuum_to_air
from gasnet_plugin.zwarning import ZWarn

FORMATS = DATA.parent / "other_formats"
SDSS_GALAXY = DATA / "spec-0266-51602-0013.fits"
ESO_FILE = FORMATS / "eso-sdp-0266-51602-0013.fits"
FOURMOST_FILE = FORMATS / "4most-l1-like-0266-51602-0013.fits"
TWODF_GALAXY = FORMATS / "emlLinearVacuumNoHelio.fits"
TWODF_QSO = FORMATS / "quasarLinearSkyAirNoHelio.fits"
DR7_SPSPEC = FORMATS / "sample_sdss.fits"
LAMOST_DR7 = FORMATS / "spec-57287-KP193637N444141V03_sp10-161.fits.gz"
DEEP2 = FORMATS / "spec1d.1153.151.12004808.fits"
SPPLATE = FORMATS / "spPlate-3655-55240.fits"
SPZBEST = FORMATS / "spZbest-3655-55240.fits"
DEFAULT = REPO / "example_configs" / "default.yaml"

LABELLED_Z = {  # from spectra/other_formats/README.md (Marz's tests) and the files' headers
    TWODF_GALAXY.name: 0.11245, TWODF_QSO.name: 2.00303, DR7_SPSPEC.name: 0.0410313,
    LAMOST_DR7.name: -1.716e-04}


@pytest.fixture(scope="module")
def formats_archive():
    """One default-pipeline run over the other-formats fixtures and the SDSS galaxy."""
    files = sorted(p for p in FORMATS.iterdir() if p.name != SPZBEST.name)
    # SPZBEST named after the others: not the companion of an input listed before it
    return run_pipeline(DEFAULT, [*map(str, files), str(SDSS_GALAXY)]).results


def _row(results, path: Path):
    (index,) = np.flatnonzero(np.asarray(results["SOURCE"]) == str(path))
    return results[index]


# -- air and vacuum ------------------------------------------------------------------------

def test_air_to_vacuum_matches_the_iau_line_wavelengths():
    # Hα and [O III] 5007: air (Å) → vacuum (Å), as tabulated by SDSS and NIST
    np.testing.assert_allclose(air_to_vacuum([6562.80, 5006.843]), [6564.61, 5008.24],
                               atol=0.01)
    wave = np.linspace(3000, 10000, 50)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(wave)), wave, atol=1e-6)
    assert air_to_vacuum([1500.0])[0] == 1500.0   # below 2000 Å: vacuum already
    shift = air_to_vacuum([5000.0])[0] / 5000.0 - 1
    assert 2.7e-4 < shift < 2.9e-4                 # the ~2.8e-4 in z an unconverted file loses


# -- each format: the reader that takes it, units, medium ---------------------------------

@pytest.mark.parametrize(("path", "reader", "flux_unit", "air"), [
    (ESO_FILE, "eso-1d", "1e-17 erg / (Angstrom s cm2)", False),
    (FOURMOST_FILE, "eso-1d", "1e-17 erg / (Angstrom s cm2)", True),
    (TWODF_GALAXY, "aaomega-2df", "", False),
    (TWODF_QSO, "aaomega-2df", "", True),
    (DR7_SPSPEC, "sdss-spspec", "1e-17 erg / (Angstrom s cm2)", False),
    (LAMOST_DR7, "lamost-dr1", "", False),
    (DEEP2, "deep2-spec1d", "", True),
    (SPPLATE, "sdss-plate", "1e-17 erg / (Angstrom s cm2)", False),
], ids=lambda v: v.name if isinstance(v, Path) else None)
def test_each_format_is_read_with_its_unit_and_medium(path, reader, flux_unit, air):
    readers = PluginHost().readers
    opener = fits.open(path)
    with opener as hdul:
        assert pick_reader(hdul, str(path), readers).name == reader
    spectra = read_spectra(path)
    rows = spectra[0].meta["rows"]
    assert spectra[0].flux.unit.to_string() == flux_unit   # "" = the file states none
    assert set(rows["AIR_TO_VACUUM"]) == {air}
    wave = spectra[0].spectral_axis.to_value(u.AA)
    assert np.all(np.diff(wave) > 0) and 3000 < wave[0] < wave[-1] < 10500
    assert np.isfinite(spectra[0].flux.value).all()


def test_eso_file_holds_the_sdss_spectrum_pixel_for_pixel():
    (sdss,) = read_spectra(SDSS_GALAXY)
    for path in (ESO_FILE, FOURMOST_FILE):   # nm + vacuum; Å + air (converted back)
        (eso,) = read_spectra(path)
        np.testing.assert_allclose(eso.spectral_axis.to_value(u.AA),
                                   sdss.spectral_axis.to_value(u.AA), rtol=1e-9)
        np.testing.assert_allclose(eso.flux.value, sdss.flux.value, rtol=1e-6)
        good = sdss.uncertainty.array > 0
        np.testing.assert_allclose(eso.uncertainty.array[good], sdss.uncertainty.array[good],
                                   rtol=1e-5)
    (eso,) = read_spectra(ESO_FILE)
    assert eso.mask.sum() >= sdss.mask.sum()   # QUAL from and_mask, plus ERR = 0 pixels
    row = read_spectra(FOURMOST_FILE)[0].meta["rows"][0]
    assert (row["SURVEY"], row["TARGETID"], row["OBJECT"]) == (
        "4MOST-TEST", 266516020013, "SDSS 266-51602-13")


def test_eso_reader_refuses_flux_without_error_and_pairs_reduced_columns(tmp_path):
    n = 500
    wave = np.linspace(400.0, 900.0, n)
    primary = fits.PrimaryHDU()
    primary.header["PRODCATG"] = "SCIENCE.SPECTRUM"
    columns = [fits.Column("WAVE", f"{n}D", unit="nm", array=[wave]),
               fits.Column("FLUX", f"{n}E", unit="erg cm**(-2) s**(-1) angstrom**(-1)",
                           array=[np.ones(n)]),
               fits.Column("FLUX_REDUCED", f"{n}E", unit="adu", array=[np.full(n, 7.0)]),
               fits.Column("ERR_REDUCED", f"{n}E", unit="adu", array=[np.full(n, 0.5)])]
    path = tmp_path / "reduced.fits"
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns)]).writeto(path)
    # calibrated FLUX has no error: the reduced pair is used, never FLUX with ERR_REDUCED
    (spectrum,) = read_spectra(path)
    assert spectrum.flux.value[0] == 7.0 and spectrum.flux.unit == u.adu
    np.testing.assert_allclose(spectrum.uncertainty.array, 4.0)
    only_flux = tmp_path / "no-error.fits"
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns[:2])]).writeto(only_flux)
    with pytest.raises(UnreadableFileError, match="no-error.fits.*no error column"):
        read_spectra(only_flux)


def test_spspec_keeps_emission_line_pixels_the_mask_marks():
    (spectrum,) = read_spectra(DR7_SPSPEC)
    with fits.open(DR7_SPSPEC) as hdul:
        bits = hdul[0].data[3].astype(np.int64)
    emline = (bits & (1 << 30)) != 0          # DR7 spSpec's EMLINE bit ([O II] here)
    assert emline.sum() > 10
    assert not spectrum.mask[emline].any()
    row = spectrum.meta["rows"][0]
    assert (row["SURVEY_CLASS"], row["OBJECT"]) == ("GALAXY", "1307-52999-323")


def test_spplate_rows_get_their_spzbest_labels_by_fiber():
    (plate,) = read_spectra(SPPLATE)
    rows = plate.meta["rows"]
    assert list(rows["OBJECT"]) == ["3655-55240-0002", "3655-55240-0660"]
    for row_index, spec_path in enumerate(sorted(DATA.glob("spec-3655-55240-*.fits"))):
        (single,) = read_spectra(spec_path)
        srow = single.meta["rows"][0]
        assert rows["SURVEY_CLASS"][row_index] == srow["SURVEY_CLASS"]
        assert rows["SURVEY_Z"][row_index] == pytest.approx(srow["SURVEY_Z"])
        wave = plate.spectral_axis.to_value(u.AA)
        first = np.argmin(np.abs(wave - single.spectral_axis.to_value(u.AA)[0]))
        n = single.flux.size
        np.testing.assert_allclose(plate.flux.value[row_index, first:first + n],
                                   single.flux.value)


def test_spzbest_alone_says_to_give_its_spplate():
    with pytest.raises(UnreadableFileError, match="spZbest.*give that file"):
        read_spectra(SPZBEST)


def test_aaomega_splice_matching_finds_the_step_not_a_sky_line():
    rng = np.random.default_rng(1)
    wave = np.linspace(3800, 8800, 5000)
    flux = np.where(wave < 5760, 2.0, 1.0) + rng.normal(0, 0.02, (3, wave.size))
    variance = np.where(wave < 5760, 0.04, 0.01) * np.ones((3, 1))
    sky = np.abs(wave - 5577) < 4
    variance[:, sky] *= 50                    # a sky line: a spike, not a step
    flux2, _, scale = match_spliced_arms(wave, flux, variance, 5700.0)
    np.testing.assert_allclose(scale, 2.0, rtol=0.02)
    np.testing.assert_allclose(np.median(flux2[:, wave > 5800]), 2.0, rtol=0.02)


# -- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LABELLED_Z))
def test_labelled_spectra_of_other_formats_get_their_redshifts(formats_archive, name):
    row = _row(formats_archive, FORMATS / name)
    assert abs(row["Z"] - LABELLED_Z[name]) / (1 + LABELLED_Z[name]) < 0.0033


def test_flux_units_reach_the_archive(formats_archive):
    units = dict(zip(formats_archive["SOURCE"], formats_archive["FLUX_UNIT"], strict=True))
    assert units[str(ESO_FILE)] == units[str(SDSS_GALAXY)] == "1e-17 erg / (Angstrom s cm2)"
    assert units[str(TWODF_QSO)] == ""       # 2dfdr counts: the file states no unit


def test_eso_and_4most_files_give_the_sdss_redshift(formats_archive):
    z_sdss = _row(formats_archive, SDSS_GALAXY)["Z"]
    for path in (ESO_FILE, FOURMOST_FILE):
        assert abs(_row(formats_archive, path)["Z"] - z_sdss) < 1e-4


def test_every_other_format_file_is_measured(formats_archive):
    bad = (np.asarray(formats_archive["ZWARN"]) & int(ZWarn.BAD_INPUT)) != 0
    assert not bad.any(), np.asarray(formats_archive["ZWARN_REASON"])[bad]
    # every file but spZbest gives rows; the spPlate two (+1 for the SDSS galaxy)
    assert len(formats_archive) == len(list(FORMATS.iterdir())) - 1 + 1 + 1


# -- folders --------------------------------------------------------------------------------

def test_folders_are_read_recursively_and_spzbest_is_a_companion(tmp_path):
    nested = tmp_path / "survey" / "plate3655" / "run1d"
    nested.mkdir(parents=True)
    shutil.copy(SPPLATE, tmp_path / "survey" / "plate3655")
    shutil.copy(SPZBEST, nested)          # idlspec2d's layout: spZbest in a sub-folder
    shutil.copy(SDSS_GALAXY, tmp_path / "survey")
    files = expand_inputs([tmp_path / "survey"])
    assert [f.name for f in files] == [SPPLATE.name, SDSS_GALAXY.name]  # sorted by path
    (plate,) = read_spectra(files[0])
    assert plate.meta["rows"]["SURVEY_CLASS"][0] == "QSO"   # found in run1d/
    only_sub = tmp_path / "release" / "plate3655"
    only_sub.mkdir(parents=True)
    shutil.copy(SPPLATE, only_sub)
    with pytest.raises(InputError, match="not searched recursively.*sub-folders .plate3655"):
        expand_inputs([tmp_path / "release"], recursive=False)
    assert expand_inputs([tmp_path / "release"]) == [only_sub / SPPLATE.name]
    empty = tmp_path / "empty" / "a"
    empty.mkdir(parents=True)
    with pytest.raises(InputError, match="in it or in its 1 sub-folder"):
        expand_inputs([tmp_path / "empty"])


def test_cli_no_recursive_reads_only_the_folder(tmp_path):
    from gasnet_plugin.cli import main

    (tmp_path / "top" / "sub").mkdir(parents=True)
    shutil.copy(SDSS_GALAXY, tmp_path / "top")
    shutil.copy(ESO_FILE, tmp_path / "top" / "sub")
    out = tmp_path / "out.asdf"
    result = CliRunner().invoke(main, ["run", str(DEFAULT), str(tmp_path / "top"), "-o",
                                       str(out), "--no-recursive"])
    assert result.exit_code == 0, result.output
    assert "1 spectrum from 1 file" in result.output


# -- specutils ------------------------------------------------------------------------------

def test_specutils_reader_takes_what_specutils_knows(tmp_path):
    """An IRAF-style 1-D image with an air (AWAV) WCS and no uncertainty."""
    (sdss,) = read_spectra(SDSS_GALAXY)
    vacuum = sdss.spectral_axis.to_value(u.AA)
    step = 1.0
    air = np.arange(vacuum_to_air(vacuum[:1])[0], vacuum_to_air(vacuum[-1:])[0], step)
    flux = np.interp(air_to_vacuum(air), vacuum, sdss.flux.value)
    hdu = fits.PrimaryHDU(flux.astype(np.float32))
    for key, value in (("CTYPE1", "AWAV"), ("CUNIT1", "Angstrom"), ("CRPIX1", 1.0),
                       ("CRVAL1", air[0]), ("CDELT1", step), ("BUNIT", "erg/(s cm2 Angstrom)")):
        hdu.header[key] = value
    path = tmp_path / "iraf.fits"
    hdu.writeto(path)
    (spectrum,) = read_spectra(path)
    assert spectrum.meta["specutils_format"] == "wcs1d-fits"
    row = spectrum.meta["rows"][0]
    assert row["AIR_TO_VACUUM"] and spectrum.flux.unit == u.Unit("erg / (Angstrom s cm2)")
    np.testing.assert_allclose(spectrum.spectral_axis.to_value(u.AA), air_to_vacuum(air))
    ivar = spectrum.uncertainty.array
    assert np.all(ivar > 0) and np.ptp(ivar) == 0   # estimated from the scatter: constant


def test_a_catalogue_gets_a_flagged_row_saying_why(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[1.0, 2.0]),
                                           fits.Column("Z", "D", array=[0.1, 0.2])])
    path = tmp_path / "catalogue.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(UnreadableFileError, match="catalogue.fits.*specutils identified.*"
                                                  "wavelength"):
        read_spectra(path)


def test_our_formats_work_with_spectrum_read():
    from specutils import Spectrum

    import gasnet_plugin.specutils_loaders  # noqa: F401  (registers the formats)

    lamost = Spectrum.read(DATA / "spec-55862-B6212_sp06-003.fits", format="LAMOST DR1 1D")
    assert lamost.meta["rows"]["SURVEY"][0] == "LAMOST"
    eso = Spectrum.read(ESO_FILE, format="ESO SDP 1D")
    (ours,) = read_spectra(ESO_FILE)
    np.testing.assert_array_equal(eso.flux.value, ours.flux.value)
    assert Spectrum.read(FOURMOST_FILE).meta["rows"]["AIR_TO_VACUUM"][0]   # identified
