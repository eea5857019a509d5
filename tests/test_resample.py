"""The resample stage: against specutils on real spectra, and analytic cases."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import InverseVariance
from conftest import DESI_FILE, SDSS_FILES
from specutils import SpectralAxis, Spectrum
from specutils.manipulation import FluxConservingResampler

from gasnet_plugin.api import process_spectra
from gasnet_plugin.flux_rebinning import pixel_edges, rebin_flux_conserving
from gasnet_plugin.host.batch import InputBlock, SpectrumBatch
from gasnet_plugin.io.labels import label_rows
from gasnet_plugin.io.readers import read_spectra
from gasnet_plugin.stages.resample import ResampleStage, loglam_grid
from gasnet_plugin.zwarning import ZWarn

FLAM = u.Unit("1e-17 erg / (s cm2 Angstrom)")


def resample(spectra: list[Spectrum], **params) -> SpectrumBatch:
    """Run the resample stage on in-memory spectra as one batch."""
    blocks = [InputBlock(rows=label_rows(1 if s.flux.ndim == 1 else s.flux.shape[0], "mem"),
                         spectrum=s) for s in spectra]
    batch = SpectrumBatch(blocks)
    ResampleStage(**params).process(batch)
    return batch


def spectrum(wave, flux, ivar, mask=None) -> Spectrum:
    return Spectrum(flux=np.asarray(flux, float) * FLAM, spectral_axis=np.asarray(wave) * u.AA,
                    uncertainty=InverseVariance(np.asarray(ivar, float), unit=FLAM**-2),
                    mask=mask)


def test_default_grid_is_the_gasnet_grid():
    grid = loglam_grid(3600.0, 9200.0, 1e-4)
    assert grid.size == 4076
    assert grid[0] == pytest.approx(3.5563) and grid[-1] == pytest.approx(3.9638)


@pytest.mark.parametrize("path", [SDSS_FILES[0], DESI_FILE], ids=["sdss", "desi"])
def test_agrees_with_specutils_on_real_spectra(path):
    spectra = read_spectra(path)
    ours = resample(spectra, use_mask=False)
    # give specutils our exact output edges (its midpoint rule on the centres would put
    # them ~1e-8 off the geometric edges, a visible shift for grid-aligned SDSS pixels)
    loglam = ours.spectrum.meta["loglam"]
    edges = 10 ** np.concatenate([loglam - 0.5e-4, loglam[-1:] + 0.5e-4])
    grid = SpectralAxis(edges * u.AA, bin_specification="edges")
    reference = FluxConservingResampler(extrapolation_treatment="zero_fill")
    rows = 0
    for spec in spectra:
        one = [spec] if spec.flux.ndim == 1 else [spec[i] for i in range(spec.flux.shape[0])]
        for single in one:
            # specutils ignores masks; give it the same data with no mask.
            plain = Spectrum(flux=single.flux, spectral_axis=single.spectral_axis,
                             uncertainty=single.uncertainty)
            theirs = reference(plain, grid)
            f_ref = theirs.flux.value
            iv_ref = theirs.uncertainty.represent_as(InverseVariance).array
            f_our = ours.arrays["flux"][rows].astype(float)
            iv_our = ours.arrays["ivar"][rows].astype(float)
            # "defined in both": specutils averages ivar=0 pixels in, we leave them out, so
            # compare where every contributing input pixel is valid (indicator resampled to 1)
            valid_in = (plain.uncertainty.array > 0).astype(float)
            indicator = reference(Spectrum(flux=valid_in * u.Jy,
                                           spectral_axis=plain.spectral_axis), grid).flux.value
            both = (indicator > 1 - 1e-12) & (iv_our > 0) & (np.abs(f_ref) > 0)
            assert both.sum() > 1000
            # float32 storage limits us to ~6e-8; 1e-5 is the target.
            np.testing.assert_allclose(f_our[both], f_ref[both], rtol=1e-5)
            np.testing.assert_allclose(iv_our[both], iv_ref[both], rtol=1e-5)
            rows += 1
    assert rows == len(ours)


def test_constant_spectrum_stays_constant():
    wave = np.linspace(3000, 10000, 3511)
    batch = resample([spectrum(wave, np.full(wave.size, 7.5), np.ones(wave.size))])
    flux = batch.arrays["flux"][0]
    assert np.all(batch.arrays["ivar"][0] > 0)
    np.testing.assert_allclose(flux, 7.5, rtol=1e-6)


def test_flux_is_conserved():
    rng = np.random.default_rng(1)
    centers = np.sort(rng.uniform(3500, 9300, 2000))[None, :]
    in_edges = pixel_edges(centers)
    flux = rng.normal(10, 3, (1, 2000))
    out_edges = np.geomspace(3600, 9200, 777)
    out, _, n_broken, n_valid = rebin_flux_conserving(centers, flux, np.ones_like(flux),
                                                      np.array([2000]), out_edges)
    assert n_broken[0] == 0 and n_valid[0] == 2000
    total_out = np.sum(out[0] * np.diff(out_edges))
    # the input integral over exactly the output span
    fine = np.linspace(3600, 9200, 2_000_001)
    pixel = np.clip(np.searchsorted(in_edges[0], fine, side="right") - 1, 0, 1999)
    total_in = np.trapezoid(flux[0][pixel], fine)
    assert total_out == pytest.approx(total_in, rel=1e-5)


def test_float32_output_is_the_float64_output_rounded_once():
    """``out_dtype=float32`` (what the stage asks for) gives, bit for bit, the float64
    result cast to float32, on real spectra of both input dtypes."""
    spectra = [s for path in SDSS_FILES for s in read_spectra(path)]
    n_pixels = np.array([s.flux.size for s in spectra])
    centers = np.zeros((len(spectra), n_pixels.max()))
    flux64, ivar64 = np.zeros_like(centers), np.zeros_like(centers)
    for row, s in enumerate(spectra):
        m = n_pixels[row]
        centers[row, :m] = s.spectral_axis.to_value(u.AA)
        flux64[row, :m], ivar64[row, :m] = s.flux.value, s.uncertainty.array
    loglam = loglam_grid(3600, 9200, 1e-4)
    out_edges = 10.0 ** np.concatenate([loglam - 5e-5, loglam[-1:] + 5e-5])
    for dtype in (np.float32, np.float64):
        flux, ivar = flux64.astype(dtype), ivar64.astype(dtype)
        wide = rebin_flux_conserving(centers, flux, ivar, n_pixels, out_edges)
        narrow = rebin_flux_conserving(centers, flux, ivar, n_pixels, out_edges,
                                       out_dtype=np.float32)
        assert narrow[0].dtype == narrow[1].dtype == np.float32
        for a, b in zip(wide, narrow, strict=True):
            np.testing.assert_array_equal(a.astype(b.dtype), b)


def test_flux_beyond_the_float32_range_is_masked_and_flagged():
    wave = np.linspace(3600, 9200, 1000)
    flux = np.ones(1000)
    flux[100:110] = 1e40                          # a float64 flux no float32 can hold
    batch = resample([spectrum(wave, flux, np.ones(1000)), spectrum(wave, np.ones(1000),
                                                                     np.ones(1000))])
    assert "beyond the float32 range" in batch.results()["ZWARN_REASON"][0]
    assert batch.rows["ZWARN"][0] & ZWarn.BAD_PIXELS
    assert not batch.rows["ZWARN"][1] & ZWarn.BAD_PIXELS
    flux32, ivar32 = batch.arrays["flux"][0], batch.arrays["ivar"][0]
    assert np.isfinite(flux32).all() and np.isfinite(ivar32).all()
    grid = 10.0 ** batch.spectrum.meta["loglam"]
    lost = ivar32 == 0
    assert lost.any() and flux32[lost].max() == 0.0
    # only grid pixels that overlap the ten huge input pixels are lost
    covered = (grid > wave[0]) & (grid < wave[-1])
    assert ((grid[lost] > wave[99]) & (grid[lost] < wave[110])).all()
    assert not (lost & covered & ((grid < wave[98]) | (grid > wave[111]))).any()


def test_ivar_of_rebinned_white_noise_matches_monte_carlo():
    rng = np.random.default_rng(2)
    wave = np.linspace(3550, 9300, 2500)
    sigma = rng.uniform(0.5, 2.0, wave.size)
    draws = 400
    flux = rng.normal(0.0, sigma, (draws, wave.size))
    ivar = np.broadcast_to(1 / sigma**2, flux.shape)
    block = Spectrum(flux=flux * FLAM, spectral_axis=wave * u.AA,
                     uncertainty=InverseVariance(ivar, unit=FLAM**-2))
    batch = resample([block])
    predicted = batch.arrays["ivar"][0]
    assert np.allclose(batch.arrays["ivar"], predicted)   # same noise model every row
    measured_var = batch.arrays["flux"].var(axis=0, ddof=1)
    ratio = measured_var * predicted
    # ratio ~ chi2(draws-1)/(draws-1): mean 1, sd sqrt(2/399) = 0.07 per pixel
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.01)
    assert 0.8 < np.median(ratio) < 1.2


def test_spectrum_on_the_grid_maps_pixel_for_pixel():
    loglam = loglam_grid(3600.0, 9200.0, 1e-4)
    rng = np.random.default_rng(3)
    flux = rng.normal(5, 1, loglam.size)
    ivar = rng.uniform(1, 2, loglam.size)
    # SDSS-like: pixel centres at 10**loglam, so edges are midpoints in λ, close to but not
    # exactly the log-midpoints; agreement is to the edge offset (~1e-9 relative)
    batch = resample([spectrum(10**loglam, flux, ivar)])
    np.testing.assert_allclose(batch.arrays["flux"][0][1:-1], flux[1:-1], rtol=2e-4)


def test_masked_pixels_carry_and_empty_pixels_get_zero_ivar():
    wave = np.linspace(3600, 9200, 3000)
    flux = np.full(wave.size, 3.0)
    mask = np.zeros(wave.size, dtype=bool)
    mask[1000:1200] = True
    flux[1000:1200] = 1e6                     # must not leak
    batch = resample([spectrum(wave, flux, np.ones(wave.size), mask=mask)])
    grid = 10 ** loglam_grid(3600.0, 9200.0, 1e-4)
    inside = (grid > wave[1001]) & (grid < wave[1198])
    assert np.all(batch.arrays["ivar"][0][inside] == 0)
    assert np.all(batch.spectrum.mask[0][inside])
    good = batch.arrays["ivar"][0] > 0
    np.testing.assert_allclose(batch.arrays["flux"][0][good], 3.0, rtol=1e-6)
    # use_mask=False lets the masked values in
    unmasked = resample([spectrum(wave, flux, np.ones(wave.size), mask=mask)], use_mask=False)
    assert unmasked.arrays["flux"][0][inside].max() > 1e5


def test_batch_equals_one_by_one():
    spectra = [s for path in SDSS_FILES for s in read_spectra(path)]
    together = resample(spectra)
    for index, spec in enumerate(spectra):
        alone = resample([spec])
        np.testing.assert_array_equal(alone.arrays["flux"][0], together.arrays["flux"][index])
        np.testing.assert_array_equal(alone.arrays["ivar"][0], together.arrays["ivar"][index])


def test_flux_and_ivar_are_views_from_reader_to_resampled_batch():
    """A file's flux and ivar become its spectrum's arrays, a batch's slice of a file
    views them, and the resampled spectrum's ivar is the archived one: no copies (a file
    of 1000 spectra would copy 16 MB per array)."""
    from gasnet_plugin.io.spectrum import build_spectrum

    rng = np.random.default_rng(3)
    wave = np.linspace(3600, 9200, 500)
    flux = rng.normal(size=(6, wave.size)).astype(np.float32)
    ivar = rng.uniform(1, 2, size=(6, wave.size)).astype(np.float32)
    read = build_spectrum(wave, flux, ivar, None, FLAM, label_rows(6, "mem"))
    assert np.shares_memory(read.flux.value, flux)
    assert np.shares_memory(read.uncertainty.array, ivar)

    part = InputBlock(rows=read.meta["rows"], spectrum=read).slice(2, 5)
    assert np.shares_memory(part.spectrum.uncertainty.array, ivar)
    np.testing.assert_array_equal(part.spectrum.uncertainty.array, ivar[2:5])

    batch = SpectrumBatch([part])
    ResampleStage().process(batch)
    assert batch.spectrum.uncertainty.array is batch.arrays["ivar"]


def test_bad_spectra_are_flagged_and_the_rest_kept():
    wave = np.linspace(3600, 9200, 1000)
    good = spectrum(wave, np.ones(1000), np.ones(1000))
    nan_flux = spectrum(wave, np.where(np.arange(1000) == 5, np.nan, 1.0), np.ones(1000))
    negative_ivar = spectrum(wave, np.ones(1000), np.where(np.arange(1000) < 3, -1.0, 1.0))
    no_valid = spectrum(wave, np.ones(1000), np.zeros(1000))
    unsorted = spectrum(wave[::-1].copy(), np.ones(1000), np.ones(1000))
    outside = spectrum(np.linspace(10000, 12000, 100), np.ones(100), np.ones(100))
    batch = resample([good, nan_flux, negative_ivar, no_valid, unsorted, outside])
    zwarn = np.asarray(batch.rows["ZWARN"])
    assert zwarn[0] == 0
    assert zwarn[1] == ZWarn.BAD_PIXELS and "non-finite" in batch.reasons[1][0]
    assert zwarn[2] == ZWarn.BAD_PIXELS
    assert zwarn[3] == ZWarn.NODATA and "no valid input pixel" in batch.reasons[3][0]
    assert zwarn[4] == ZWarn.BAD_INPUT and "strictly increasing" in batch.reasons[4][0]
    assert zwarn[5] == ZWarn.NODATA and "within the grid" in batch.reasons[5][0]
    np.testing.assert_allclose(batch.arrays["flux"][1][batch.arrays["ivar"][1] > 0], 1.0)
    assert np.all(batch.arrays["ivar"][3:] == 0)
    assert batch.rows["NPIX_VALID"][0] == 4076
    assert 4000 < batch.rows["NPIX_VALID"][2] < 4076   # its first 3 input pixels dropped


def test_pixel_edges_follow_specutils():
    wave = np.array([1.0, 2.0, 4.0, 5.0])
    np.testing.assert_allclose(pixel_edges(wave), [0.5, 1.5, 3.0, 4.5, 5.5])
    axis = Spectrum(flux=np.ones(4) * u.Jy, spectral_axis=wave * u.AA).spectral_axis
    np.testing.assert_allclose(pixel_edges(wave), axis.bin_edges.value)


def test_process_spectra_returns_annotated_spectra_on_the_grid():
    spectra = read_spectra(SDSS_FILES[0])
    out = process_spectra({"stages": ["resample"]}, spectra)
    assert len(out) == 1
    assert out[0].flux.shape == (4076,)
    assert out[0].meta["SOURCE"].endswith(SDSS_FILES[0].name)
    assert out[0].meta["NPIX_VALID"] > 1000


def test_median_snr_is_numpys_median_of_the_valid_pixels():
    """The compiled median S/N (a radix selection) against ``np.median``: odd and even
    counts, one and two pixels, ties, zeros and negative zeros, infinite values, rows with
    no valid pixel."""
    from gasnet_plugin.flux_rebinning import median_snr

    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(1, 40)) if trial % 2 else int(rng.integers(1, 3000))
        flux = rng.normal(size=(4, n)).astype(np.float32)
        flux[0] = np.round(flux[0], 1)                  # ties
        flux[1, : n // 3] = 0.0
        flux[1, n // 3: n // 2] = -0.0
        flux[2, 0], flux[2, -1] = np.inf, -np.inf
        ivar = rng.uniform(0.1, 3.0, size=(4, n)).astype(np.float32)
        ivar[rng.random((4, n)) < 0.2] = 0
        ivar[3] = 0 if trial % 3 == 0 else ivar[3]      # no valid pixel
        got = median_snr(flux, ivar)
        for row in range(4):
            valid = ivar[row] > 0
            expected = (np.float32(np.median(flux[row][valid] * np.sqrt(ivar[row][valid])))
                        if valid.any() else np.nan)
            np.testing.assert_array_equal(got[row], expected)
