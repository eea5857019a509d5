"""Readers: SDSS/BOSS, DESI coadds, LAMOST DR1 and tabular FITS into specutils Spectrum."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import InverseVariance
from conftest import DESI_FILE, LAMOST_FILES, SDSS_FILES
from specutils import Spectrum

from gasnet_plugin.io.readers import UnreadableFileError, read_spectra


@pytest.mark.parametrize("path", SDSS_FILES, ids=lambda p: p.name)
def test_sdss_spec_files_carry_the_survey_labels(path):
    (spectrum,) = read_spectra(path)
    assert isinstance(spectrum, Spectrum)
    assert isinstance(spectrum.uncertainty, InverseVariance)
    assert spectrum.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)")
    row = spectrum.meta["rows"][0]
    with fits.open(path) as hdul:
        info = hdul[2].data[0]
        np.testing.assert_allclose(spectrum.flux.value, hdul[1].data["flux"])
        # the file's loglam is float32; the reader snaps it to the exact grid
        np.testing.assert_allclose(spectrum.spectral_axis.to_value(u.AA),
                                   10 ** hdul[1].data["loglam"].astype(float), rtol=1e-6)
    assert row["SURVEY"] == "SDSS"
    assert row["SURVEY_CLASS"] == info["CLASS"].strip()
    assert row["SURVEY_SUBCLASS"] == info["SUBCLASS"].strip()
    assert row["SURVEY_Z"] == pytest.approx(info["Z"])
    assert row["SURVEY_ZWARNING"] == info["ZWARNING"]
    assert row["SURVEY_SN_MEDIAN_ALL"] == pytest.approx(info["SN_MEDIAN_ALL"])
    assert row["SOURCE"] == str(path)


def test_desi_coadd_joins_the_arms_with_targetid():
    spectra = read_spectra(DESI_FILE)
    assert len(spectra) == 1
    (block,) = spectra
    with fits.open(DESI_FILE) as hdul:
        targetids = hdul["FIBERMAP"].data["TARGETID"]
        b_wave, z_wave = hdul["B_WAVELENGTH"].data, hdul["Z_WAVELENGTH"].data
    assert block.flux.shape[0] == len(targetids) == 2
    wave = block.spectral_axis.to_value(u.AA)
    assert wave[0] == pytest.approx(b_wave[0]) and wave[-1] == pytest.approx(z_wave[-1])
    assert np.all(np.diff(wave) > 0)
    np.testing.assert_array_equal(block.meta["rows"]["TARGETID"], targetids)
    assert list(block.meta["rows"]["ROW"]) == [0, 1]


def test_joined_arms_are_the_inverse_variance_weighted_mean_of_the_valid_arms():
    """Pixel by pixel, in float64: where one arm alone measured a pixel validly, its own
    flux and ivar; where arms overlap, the ivar-weighted mean of the valid ones; where
    none did (masked, ivar 0, NaN), flux 0 and ivar 0."""
    from gasnet_plugin.io.desi import join_arms

    rng = np.random.default_rng(2)
    step = 0.8
    waves = [3600.0 + step * np.arange(60), 3600.0 + step * (50 + np.arange(60)),
             3600.0 + step * (100 + np.arange(40))]
    fluxes = [rng.normal(1, 0.3, (4, w.size)).astype(np.float32) for w in waves]
    ivars = [rng.uniform(0.5, 4.0, (4, w.size)).astype(np.float32) for w in waves]
    masks = [np.zeros((4, w.size), np.int32) for w in waves]
    masks[0][1, 55] = 4                                   # masked in an overlap
    ivars[1][2, 3] = 0                                    # no weight in an overlap
    fluxes[1][3, 20] = np.nan                             # NaN where R is alone
    wave, flux, ivar = join_arms(waves, fluxes, ivars, masks)
    assert flux.dtype == ivar.dtype == np.float32
    np.testing.assert_allclose(wave, 3600.0 + step * np.arange(140))
    expected_flux = np.zeros((4, 140))
    expected_ivar = np.zeros((4, 140))
    for row in range(4):
        for pixel in range(140):
            values, weights = [], []
            for arm, first in enumerate((0, 50, 100)):
                i = pixel - first
                if 0 <= i < waves[arm].size and masks[arm][row, i] == 0 \
                        and ivars[arm][row, i] > 0 and np.isfinite(fluxes[arm][row, i]):
                    values.append(float(fluxes[arm][row, i]))
                    weights.append(float(ivars[arm][row, i]))
            if weights:
                expected_flux[row, pixel] = np.dot(values, weights) / np.sum(weights)
                expected_ivar[row, pixel] = np.sum(weights)
    np.testing.assert_allclose(flux, expected_flux.astype(np.float32), rtol=1e-7)
    np.testing.assert_array_equal(ivar, expected_ivar.astype(np.float32))
    assert flux[3, 70] == 0 and ivar[3, 70] == 0                    # the NaN pixel
    np.testing.assert_array_equal(flux[0, 10:40], fluxes[0][0, 10:40])   # B alone: as is


@pytest.mark.parametrize("path", LAMOST_FILES, ids=lambda p: p.name)
def test_lamost_dr1_reader_and_specutils_loader(path):
    (spectrum,) = read_spectra(path)
    row = spectrum.meta["rows"][0]
    header = fits.getheader(path)
    assert row["SURVEY"] == "LAMOST"
    assert row["SURVEY_CLASS"] == header["CLASS"].strip()
    assert row["SURVEY_Z"] == pytest.approx(header["Z"])
    wave = spectrum.spectral_axis.to_value(u.AA)
    np.testing.assert_allclose(np.log10(wave[0]), header["COEFF0"], atol=1e-6)
    # the specutils data loader that gasnet_plugin.specutils_loaders registers reads the
    # same spectrum
    import gasnet_plugin.specutils_loaders  # noqa: F401

    loaded = Spectrum.read(path, format="LAMOST DR1 1D")
    np.testing.assert_array_equal(loaded.flux.value, spectrum.flux.value)


def test_tabular_fits_rows_on_a_shared_grid(tmp_path):
    loglam = 3.5563 + 1e-4 * np.arange(500)
    flux = np.arange(3 * 500, dtype=np.float32).reshape(3, 500)
    ivar = np.ones_like(flux)
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="flux", format="500E", array=flux),
        fits.Column(name="ivar", format="500E", array=ivar),
        fits.Column(name="class", format="6A", array=np.array(["GALAXY", "QSO", "STAR"])),
        fits.Column(name="z", format="E", array=np.array([0.1, 1.5, 0.0])),
    ])
    # the gasnet3_tables layout: one row holding the grid as a vector
    grid = fits.BinTableHDU.from_columns([fits.Column(name="input_grid", format="500D",
                                                      array=loglam[None, :])])
    path = tmp_path / "rows.fits"
    fits.HDUList([fits.PrimaryHDU(), table, grid]).writeto(path)
    (block,) = read_spectra(path)
    assert block.flux.shape == (3, 500)
    np.testing.assert_allclose(block.spectral_axis.to_value(u.AA), 10**loglam)
    np.testing.assert_array_equal(block.flux.value, flux)
    rows = block.meta["rows"]
    assert list(rows["ROW"]) == [0, 1, 2]
    assert list(rows["SURVEY_CLASS"]) == ["GALAXY", "QSO", "STAR"]
    np.testing.assert_allclose(rows["SURVEY_Z"], [0.1, 1.5, 0.0], rtol=1e-6)


def test_unreadable_files_say_what_is_wrong(tmp_path):
    missing = tmp_path / "nothing.fits"
    with pytest.raises(UnreadableFileError, match="nothing.fits: no such file"):
        read_spectra(missing)
    truncated = tmp_path / "spec-cut.fits"
    truncated.write_bytes(SDSS_FILES[0].read_bytes()[:30000])
    with pytest.raises(UnreadableFileError, match="spec-cut.fits: .*truncated"):
        read_spectra(truncated)
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file at all\n" * 200)
    with pytest.raises(UnreadableFileError, match="notes.fits"):
        read_spectra(text)
    catalogue = tmp_path / "catalogue.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="RA", format="D", array=np.zeros(3))])]).writeto(catalogue)
    # specutils' tabular-fits loader identifies any table; it finds no wavelength column
    with pytest.raises(UnreadableFileError, match="catalogue.fits: .*wavelength"):
        read_spectra(catalogue)


def test_an_explicit_reader_that_does_not_fit_is_refused():
    with pytest.raises(UnreadableFileError, match="desi-coadd"):
        read_spectra(SDSS_FILES[0], reader="desi-coadd")
