"""Emission-line measurements, the SDSS subclass rules, star templates and the subtype stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gasnet_plugin.api import run_pipeline
from gasnet_plugin.emission_lines import ANY_SIGMAS, C_KMS, line_names, measure_lines
from gasnet_plugin.models.star_templates import fit_star_templates, load_star_templates
from gasnet_plugin.subtypes import (
    bpt_subtype,
    broad_line_dominated,
    emission_subtype,
    has_broad_line,
)

DATA = Path(__file__).parent / "data"
LOGLAM = np.log10(3600.0) + 1e-4 * np.arange(4076)


def gaussian(loglam: np.ndarray, center: float, sigma_kms: float, flux: float) -> np.ndarray:
    """A Gaussian line of total ``flux`` (per Å) at observed ``center`` Å, width in km/s."""
    wave = 10.0**loglam
    sigma_aa = center * sigma_kms / C_KMS
    return flux * np.exp(-0.5 * ((wave - center) / sigma_aa) ** 2) / (np.sqrt(2 * np.pi)
                                                                         * sigma_aa)


def synthetic(z: float, lines: dict[float, tuple[float, float]], n: int = 200, noise=0.05,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy spectra: continuum 1 plus lines {rest Å: (flux, σ km/s)} at ``z``."""
    rng = np.random.default_rng(seed)
    model = np.ones(LOGLAM.size)
    for rest, (flux, sigma) in lines.items():
        model += gaussian(LOGLAM, rest * (1 + z), sigma, flux * (1 + z))
    flux = model + noise * rng.normal(size=(n, LOGLAM.size))
    return flux.astype(np.float32), np.full(flux.shape, noise**-2, np.float32)


def test_line_flux_width_and_ew_are_recovered_with_honest_errors():
    z = 0.1
    flux, ivar = synthetic(z, {6564.61: (20.0, 150.0), 6585.27: (8.0, 150.0),
                               6549.86: (8.0 / 2.96, 150.0), 4862.68: (6.0, 150.0),
                               5008.24: (3.0, 150.0), 4960.30: (3.0 / 2.98, 150.0)})
    m = measure_lines(flux, ivar, LOGLAM, np.full(len(flux), z))
    observed = 20.0 * (1 + z)           # flux in the observed frame
    pull = (m["HALPHA_FLUX"] - observed) / m["HALPHA_FLUX_ERR"]
    assert abs(np.median(m["HALPHA_FLUX"]) / observed - 1) < 0.03
    assert 0.6 < np.std(pull) < 1.6
    assert abs(np.median(m["HALPHA_EW"]) - 20.0) < 1.0          # rest-frame Å, continuum 1
    assert abs(np.median(m["HALPHA_SIGMA"]) - 150.0) < 45.0      # on the width grid
    assert abs(np.median(m["NII_6584_FLUX"]) / (8.0 * (1 + z)) - 1) < 0.05
    np.testing.assert_allclose(m["NII_6548_FLUX"], m["NII_6584_FLUX"] / 2.96)
    assert abs(np.median(m["OIII_5007_FLUX"]) / (3.0 * (1 + z)) - 1) < 0.1
    # no broad component was put in: it is not significant
    assert np.median(m["HALPHA_BROAD_DCHI2"]) < 10
    # lines off the grid are NaN, every line has every quantity
    assert np.all(np.isnan(m["LYALPHA_FLUX"])) and np.all(np.isnan(m["CIV_1549_FLUX"]))
    assert {k.rsplit("_", 1)[0] for k in m if k.endswith("_SIGMA")} >= set(line_names())


def test_a_broad_balmer_line_is_found_and_makes_a_qso():
    z = 0.1
    narrow, ivar = synthetic(z, {6564.61: (10.0, 120.0), 6585.27: (4.0, 120.0)}, n=50)
    broad, _ = synthetic(z, {6564.61: (10.0, 120.0), 6585.27: (4.0, 120.0),
                             6565.0: (150.0, 2000.0)}, n=50, seed=1)
    zs = np.full(50, z)
    m_n, m_b = measure_lines(narrow, ivar, LOGLAM, zs), measure_lines(broad, ivar, LOGLAM, zs)
    assert np.all(m_b["HALPHA_BROAD_DCHI2"] > 100) and np.median(m_n["HALPHA_BROAD_DCHI2"]) < 10
    assert abs(np.median(m_b["HALPHA_BROAD_EW"]) - 150) < 25
    assert np.all(broad_line_dominated(m_b)) and not np.any(broad_line_dominated(m_n))
    assert np.all(["BROADLINE" in s for s in emission_subtype(m_b, zs)])
    assert not np.any(["BROADLINE" in s for s in emission_subtype(m_n, zs)])


def test_bpt_follows_the_sdss_dividing_line():
    def lines(halpha, nii, hbeta, oiii, ew=20.0, snr=20.0, ew_err=2.0):
        values = {"HALPHA": halpha, "NII_6584": nii, "HBETA": hbeta, "OIII_5007": oiii}
        out = {}
        for name, flux in values.items():
            out[f"{name}_FLUX"] = np.array([flux])
            out[f"{name}_FLUX_ERR"] = np.array([flux / snr])
        out["HALPHA_EW"] = np.array([ew])
        out["HALPHA_EW_ERR"] = np.array([ew_err])
        return out

    at_rest = np.zeros(1)
    assert bpt_subtype(lines(10, 1, 3, 1), at_rest)[0] == "STARFORMING"   # low [N II], [O III]
    assert bpt_subtype(lines(10, 1, 3, 1, ew=80), at_rest)[0] == "STARBURST"
    assert bpt_subtype(lines(10, 10, 3, 30), at_rest)[0] == "AGN"        # high both
    assert bpt_subtype(lines(10, 10, 3, 30, snr=2), at_rest)[0] == ""    # too weak: no class
    # SDSS compares its observed-frame EW with 50 Å: a rest-frame 45 Å is a STARBURST at
    # z = 0.2 (54 Å observed), not at z = 0.05 (47 Å)
    assert bpt_subtype(lines(10, 1, 3, 1, ew=45), np.array([0.2]))[0] == "STARBURST"
    assert bpt_subtype(lines(10, 1, 3, 1, ew=45), np.array([0.05]))[0] == "STARFORMING"
    # and as SDSS's code does, only an EW measured at 3σ makes a STARBURST
    assert bpt_subtype(lines(10, 1, 3, 1, ew=80, ew_err=30), at_rest)[0] == "STARFORMING"


def test_broadline_follows_the_sdss_code():
    """BROADLINE: σ − 5 σ_err > 200 km/s on a line at 10σ, Lyα left out (idlspec2d's
    spreduce1d); a width at the top of its grid is at least the point below the top."""
    def lines(name, sigma, sigma_err, snr=20.0):
        out = {}
        for line in line_names():
            for quantity in ("FLUX", "FLUX_ERR", "SIGMA", "SIGMA_ERR", "DCHI2"):
                out[f"{line}_{quantity}"] = np.full(1, np.nan)
        out[f"{name}_FLUX"], out[f"{name}_FLUX_ERR"] = np.array([snr]), np.array([1.0])
        out[f"{name}_SIGMA"], out[f"{name}_SIGMA_ERR"] = np.array([sigma]), np.array([sigma_err])
        return out

    assert has_broad_line(lines("CIV_1549", 2000.0, 100.0))[0]
    assert not has_broad_line(lines("CIV_1549", 2000.0, 400.0))[0]     # not at 5σ
    assert not has_broad_line(lines("CIV_1549", 2000.0, 100.0, snr=8.0))[0]
    assert not has_broad_line(lines("LYALPHA", 2000.0, 100.0))[0]      # SDSS skips Lyα
    # the top of the width grid has no error: the line is broader than the point below it
    assert has_broad_line(lines("CIV_1549", ANY_SIGMAS[-1], np.nan))[0]
    assert not has_broad_line(lines("HALPHA", 40.0, np.nan))[0]        # bottom of the grid


def templates_at_rest(templates, pick) -> np.ndarray:
    """``(len(pick), P)`` float64: the templates ``pick`` on :data:`LOGLAM` at z = 0, each
    divided by its median (noiseless stars of those types)."""
    start = round((LOGLAM[0] - templates.loglam0) / templates.dloglam)
    flux = templates.flux[pick, start:start + LOGLAM.size].astype(np.float64)
    return flux / np.median(flux, axis=1, keepdims=True)


def test_each_star_template_recovers_its_own_type():
    templates = load_star_templates()
    pick = np.array([5, 40, 55, 70, 85, 100])                          # A, B, F, G, K, M
    flux = templates_at_rest(templates, pick)
    rng = np.random.default_rng(3)
    ivar = np.full(flux.shape, 1 / 0.02**2)
    fit = fit_star_templates(templates, flux + 0.02 * rng.normal(size=flux.shape), ivar,
                             LOGLAM, np.zeros(pick.size))
    np.testing.assert_array_equal(fit.index, pick)
    assert np.all(np.isfinite(fit.rchi2)) and np.all(fit.rchi2 < 1.5)
    types = templates.spectral_types()
    assert types[templates.names.index("K3V (32147)")] == "K3"
    assert types[templates.names.index("Ldwarf")] == "Ldwarf"


@pytest.fixture(scope="module")
def subtyped():
    config = {"stages": ["resample", "classify", "redshift-scan", "reconstruct", "subtype"]}
    return run_pipeline(config, [str(DATA)]).results


def test_the_stage_fills_subtype_and_the_line_columns(subtyped):
    results = subtyped
    spectype = np.asarray(results["SPECTYPE"]).astype(str)
    subtype = np.asarray(results["SUBTYPE"]).astype(str)
    stars = spectype == "STAR"
    assert stars.any() and np.all(subtype[stars] != "")
    assert np.all(np.char.str_len(np.asarray(results["STAR_TEMPLATE"])[stars].astype(str)) > 0)
    qso_lines = (spectype == "QSO") & ["BROADLINE" in s for s in subtype]
    assert qso_lines.sum() >= 5
    assert str(results["HALPHA_EW"].unit) == "Angstrom"
    assert str(results["MGII_2800_SIGMA"].unit) == "km / s"
    for name in line_names():
        assert f"{name}_FLUX" in results.colnames and f"{name}_SIGMA_ERR" in results.colnames
    # no lines measured on stars, no template fitted to galaxies and QSOs
    assert np.all(np.isnan(np.asarray(results["HALPHA_FLUX"])[stars]))
    assert np.all(np.isnan(np.asarray(results["STAR_TEMPLATE_RCHI2"])[~stars]))


def test_bad_continuum_templates_are_a_config_error(tmp_path):
    """A continuum-templates file that is not one, or has fewer eigenspectra than the fit
    takes, is refused at set-up with its name."""
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.models.star_templates import write_star_templates
    from gasnet_plugin.stellar_continuum import load_continuum_templates

    (tmp_path / "bad.asdf").write_bytes(b"not asdf")
    short = load_continuum_templates()
    short.flux = short.flux[:3]
    short.names = short.names[:3]
    write_star_templates(short, tmp_path / "three.asdf")
    for name, message in (("bad.asdf", "bad.asdf"),
                          ("three.asdf", r"three\.asdf: .* 3 rows, 24 are needed")):
        config = {"stages": ["resample", "classify", "redshift-scan", "reconstruct",
                             {"subtype": {"continuum_templates": str(tmp_path / name)}}]}
        with pytest.raises(ConfigError, match=message):
            run_pipeline(config, [str(DATA / "spec-0266-51602-0013.fits")])


def test_templates_on_another_pixel_step_are_refused_before_reading(tmp_path):
    """Templates whose log-λ step is not the batch grid's are a config error at set-up
    that names them and the step to use (not an error in every batch)."""
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.models.star_templates import load_star_templates, write_star_templates

    coarse = load_star_templates()
    coarse.flux, coarse.dloglam = coarse.flux[:, ::2], 2 * coarse.dloglam
    write_star_templates(coarse, tmp_path / "coarse.asdf")
    config = {"stages": ["resample", "classify", "redshift-scan", "reconstruct",
                         {"subtype": {"star_templates": str(tmp_path / "coarse.asdf")}}]}
    with pytest.raises(ConfigError, match=r"star_templates '.*coarse\.asdf' have 0\.0002 dex "
                                          r"pixels, the batch grid 0\.0001 dex: set the "
                                          r"resample stage's dloglam to 0\.0002"):
        run_pipeline(config, [str(DATA / "spec-0266-51602-0013.fits")])


def test_eigenspectra_are_read_from_an_idlspec2d_file_and_written_back(tmp_path):
    """``spEigenElodie``-like FITS (eigenspectra in HDU 0, grid in COEFF0/COEFF1): the
    first rows are kept with their grid, and survive the star-templates file format."""
    from astropy.io import fits

    from gasnet_plugin.models.star_templates import write_star_templates
    from gasnet_plugin.stellar_continuum import (
        eigenspectra_from_idlspec2d,
        load_continuum_templates,
    )

    eigen = np.arange(30 * 50, dtype=np.float32).reshape(30, 50)
    header = fits.Header({"COEFF0": 3.6155, "COEFF1": 1e-4})
    fits.PrimaryHDU(eigen, header).writeto(tmp_path / "spEigenElodie.fits")
    read = eigenspectra_from_idlspec2d(tmp_path / "spEigenElodie.fits", columns=24)
    assert read.flux.shape == (24, 50) and np.array_equal(read.flux, eigen[:24])
    assert (read.loglam0, read.dloglam) == (3.6155, 1e-4)
    assert read.source == "spEigenElodie.fits, columns 0-23"
    back = load_continuum_templates(write_star_templates(read, tmp_path / "e.asdf"))
    assert back.names == read.names and np.array_equal(back.flux, read.flux)


def _galaxy_grid(n_pix: int = 4076) -> np.ndarray:
    return np.log10(3700.0) + 1e-4 * np.arange(n_pix)


def test_galaxy_continuum_in_chunks_equals_one_fit(monkeypatch):
    """The stellar continuum fitted in chunks of rows is the one fitted all at once, to
    float64 rounding (each row's normal equations are its own; the matrix products that
    form them sum in an order that can depend on how many rows they hold)."""
    import gasnet_plugin.stellar_continuum as continuum

    rng = np.random.default_rng(3)
    loglam = _galaxy_grid(3000)
    n_rows = 2 * continuum.CHUNK_ROWS + 5
    flux = (1 + 0.1 * rng.standard_normal((n_rows, loglam.size))).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, flux.shape).astype(np.float32)
    z = rng.uniform(0.0, 0.4, n_rows)
    z[4] = np.nan
    chunked = continuum.fit_stellar_continuum(flux, ivar, loglam, z)
    monkeypatch.setattr(continuum, "CHUNK_ROWS", 10 * n_rows)
    monkeypatch.setattr(continuum, "MODEL_ROWS", 3)
    whole = continuum.fit_stellar_continuum(flux, ivar, loglam, z)
    assert np.isnan(chunked.model[4]).all() and np.isnan(chunked.dispersion_kms[4])
    assert np.isfinite(chunked.model[0]).any()
    np.testing.assert_allclose(chunked.model, whole.model, rtol=1e-10, atol=0)
    np.testing.assert_array_equal(chunked.dispersion_kms, whole.dispersion_kms)


def test_search_rows_give_every_searched_dispersions_normal_equations():
    """The search's shared rows and their pairwise products (the polynomials' products
    stored once) give, for any weights, each searched dispersion's normal matrix and
    right-hand side of its own design rows."""
    import gasnet_plugin.stellar_continuum as continuum

    basis = continuum.default_dispersion_basis()
    search = basis.search
    n_dim = continuum.SEARCH_COLUMNS + continuum.POLY_TERMS
    np.testing.assert_array_equal(
        search.dispersions, np.arange(0, continuum.DISPERSIONS_KMS.size,
                                      continuum.SEARCH_EVERY))
    # each dispersion: 15 products of its eigenspectra and 25 with the polynomials; the
    # polynomials' 15 once
    assert search.pairs.shape[0] == search.dispersions.size * (15 + 25) + 15
    rng = np.random.default_rng(8)
    w = rng.uniform(0.0, 2.0, (3, basis.n_pix))
    wf = rng.normal(size=w.shape)
    normal = (w @ search.pairs.T)[:, search.pair_index]
    rhs = (wf @ search.rows.T)[:, search.row_index]
    for k, dispersion in enumerate(search.dispersions):
        design = basis.design(dispersion, continuum.SEARCH_COLUMNS)
        assert design.shape[0] == n_dim
        for row in range(w.shape[0]):
            np.testing.assert_allclose(normal[row, k], (design * w[row]) @ design.T,
                                       rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(rhs[row, k], design @ wf[row], rtol=1e-12,
                                       atol=1e-9)


def test_galaxy_continuum_is_sdss_vdispfit_by_least_squares():
    """Each galaxy's dispersion and continuum are those of float64 least-squares fits built
    pixel by pixel: the search eigenspectra and polynomials at every searched dispersion,
    the parabola through the lowest χ² and its neighbours, then all the eigenspectra at the
    grid dispersion nearest its minimum; emission-line pixels, the templates' end pixels
    and pixels beyond the templates are left out, and the model is NaN beyond them."""
    import gasnet_plugin.stellar_continuum as continuum

    basis = continuum.default_dispersion_basis()
    rng = np.random.default_rng(5)
    loglam = _galaxy_grid(3000)
    z = np.array([0.05, 0.21, 0.37])
    flux = (1 + 0.2 * rng.standard_normal((z.size, loglam.size))).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, flux.shape).astype(np.float32)
    ivar[1, 100:300] = 0
    got = continuum.fit_stellar_continuum(flux, ivar, loglam, z)
    rest_loglam = basis.loglam0 + basis.dloglam * np.arange(basis.n_pix)
    masked_lines = np.log10(continuum.air_to_vacuum(np.array(continuum.MASKED_LINES_AIR)))
    searched = np.arange(0, continuum.DISPERSIONS_KMS.size, continuum.SEARCH_EVERY)
    for row in range(z.size):
        pixel = np.round((loglam - np.log10(1 + z[row]) - basis.loglam0)
                         / basis.dloglam).astype(int)
        covered = (pixel >= continuum.EDGE_PIXELS) & (
            pixel < basis.n_pix - continuum.EDGE_PIXELS)
        near_line = np.zeros(loglam.size, dtype=bool)
        for line in masked_lines:
            near_line |= np.abs(rest_loglam[np.clip(pixel, 0, basis.n_pix - 1)] - line) <= (
                continuum.MASK_HALF_WIDTH_DLOGLAM)
        w = np.where(covered & ~near_line, ivar[row], 0.0).astype(np.float64)
        root = np.sqrt(w)
        clipped = np.clip(pixel, 0, basis.n_pix - 1)

        def fit(dispersion: int, columns: int, row=row, clipped=clipped, root=root):
            design = basis.design(dispersion, columns)[:, clipped]
            coef = np.linalg.lstsq((design * root).T, flux[row] * root, rcond=None)[0]
            return coef @ design, np.sum((root * (flux[row] - coef @ design)) ** 2)

        chi2 = np.array([fit(s, continuum.SEARCH_COLUMNS)[1] for s in searched])
        low = int(np.argmin(chi2))
        if 0 < low < chi2.size - 1:
            left, mid, right = chi2[low - 1:low + 2]
            position = low + 0.5 * (left - right) / (left - 2 * mid + right)
        else:
            position = low
        best = int(np.round(position * continuum.SEARCH_EVERY))
        assert got.dispersion_kms[row] == continuum.DISPERSIONS_KMS[best]
        expected = np.where(covered, fit(best, continuum.EIGEN_COLUMNS)[0], np.nan)
        np.testing.assert_allclose(got.model[row], expected, rtol=1e-6, atol=1e-6)
        assert np.isnan(got.model[row][~covered]).all()


def test_galaxy_continuum_finds_the_dispersion_and_ignores_emission_lines():
    """A galaxy made of the eigenspectra broadened to 200 km/s, with noise and strong
    emission lines, gets its dispersion back to one grid step, and a continuum that the
    lines do not pull up (they are left out of the fit)."""
    import gasnet_plugin.stellar_continuum as continuum

    basis = continuum.default_dispersion_basis()
    rng = np.random.default_rng(8)
    loglam = _galaxy_grid()
    z = np.full(6, 0.08)
    true = int(np.flatnonzero(continuum.DISPERSIONS_KMS == 200.0)[0])
    coef = np.zeros((z.size, continuum.EIGEN_COLUMNS))
    coef[:, 0] = 1.0
    coef[:, 1:4] = 0.3 * rng.standard_normal((z.size, 3))
    galaxy_rest = coef @ basis.broadened[true].astype(np.float64)
    galaxy_rest = 10 + galaxy_rest / np.abs(galaxy_rest).mean(axis=1, keepdims=True)
    pixel = np.round((loglam - np.log10(1.08) - basis.loglam0) / basis.dloglam).astype(int)
    inside = (pixel >= 0) & (pixel < basis.n_pix)
    clean = np.where(inside, galaxy_rest[:, np.clip(pixel, 0, basis.n_pix - 1)], 10.0)
    lines = sum(gaussian(loglam, rest * 1.08, 120.0, 40.0)
                for rest in (4862.68, 5008.24, 6564.61, 6585.27))
    noise = 0.02
    flux = (clean + lines + noise * rng.standard_normal(clean.shape)).astype(np.float32)
    ivar = np.full(flux.shape, noise**-2, np.float32)
    got = continuum.fit_stellar_continuum(flux, ivar, loglam, z)
    assert np.all(np.abs(got.dispersion_kms - 200.0) <= 25.0)
    halpha = np.abs(10**loglam - 6564.61 * 1.08) < 5.0
    assert np.all(np.abs(got.model[:, halpha] - clean[:, halpha]) < 0.05)


def test_star_template_chi2_is_each_templates_least_squares_fit():
    """Every template's χ² (stars at different whole-pixel shifts, fitted together in the
    templates' rest window) is the weighted least-squares χ² of that template, shifted to
    the star, plus the polynomial, solved on its own in float64; templates whose best
    amplitude is not positive get inf."""
    from gasnet_plugin.models.star_templates import POLY_DEGREE

    templates = load_star_templates()
    rng = np.random.default_rng(11)
    z = np.array([0.0, -0.0013, 0.0021, 0.0021, 0.0007])
    start = np.round((LOGLAM[0] - np.log10(1 + z) - templates.loglam0)
                     / templates.dloglam).astype(int)
    truth = np.array([10, 60, 90, 90, 110])
    flux = np.stack([templates.flux[t, s:s + LOGLAM.size]
                     for t, s in zip(truth, start, strict=True)])
    flux = flux / np.median(flux, axis=1, keepdims=True)
    flux = flux + 0.05 * rng.normal(size=flux.shape)
    ivar = rng.uniform(100, 400, flux.shape)
    ivar[2, 500:900] = 0
    fit = fit_star_templates(templates, flux.astype(np.float32), ivar.astype(np.float32),
                             LOGLAM, z)
    x = np.linspace(-1, 1, LOGLAM.size)
    polynomial = np.stack([x**k for k in range(POLY_DEGREE + 1)])
    f64, w64 = flux.astype(np.float32).astype(np.float64), ivar.astype(np.float32)
    for row in range(z.size):
        window = templates.flux[:, start[row]:start[row] + LOGLAM.size].astype(np.float64)
        w = w64[row] * window.any(axis=0)
        root = np.sqrt(w)
        for t in rng.choice(len(templates.names), 12, replace=False):
            design = np.vstack([window[t], polynomial])
            coef, *_ = np.linalg.lstsq((design * root).T, f64[row] * root, rcond=None)
            chi2 = np.sum(w * (f64[row] - coef @ design) ** 2)
            if coef[0] > 0:
                np.testing.assert_allclose(fit.all_chi2[row, t], chi2, rtol=1e-7)
            else:
                assert fit.all_chi2[row, t] == np.inf
    np.testing.assert_array_equal(fit.index, truth)


def _not_measurements(flux: np.ndarray, ivar: np.ndarray, seed: int,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``flux, ivar`` with 4 % of the pixels each given a negative, NaN or infinite ivar
    or a NaN flux; and the same spectra with those pixels' ivar set to 0 instead."""
    rng = np.random.default_rng(seed)
    bad = rng.random(flux.shape) < 0.04
    kind = rng.integers(0, 4, flux.shape)
    hostile_flux, hostile_ivar = flux.copy(), ivar.copy()
    hostile_ivar[bad & (kind == 0)] = -ivar[bad & (kind == 0)]
    hostile_ivar[bad & (kind == 1)] = np.nan
    hostile_ivar[bad & (kind == 2)] = np.inf
    hostile_flux[bad & (kind == 3)] = np.nan
    masked_ivar = np.where(bad, 0, ivar).astype(ivar.dtype)
    return hostile_flux, hostile_ivar, masked_ivar


def test_pixels_that_are_not_measurements_count_as_masked_in_every_fit():
    """A negative, NaN or infinite ivar, or a NaN flux, is no measurement: the line
    measurements, the galaxy continuum and the star templates' χ² are exactly those of
    the same spectra with those pixels' ivar 0 (not a negative or infinite weight, not a
    NaN result)."""
    from gasnet_plugin.stellar_continuum import fit_stellar_continuum

    z = 0.1
    flux, ivar = synthetic(z, {6564.61: (20.0, 150.0), 4862.68: (6.0, 150.0),
                               5008.24: (3.0, 150.0)}, n=12)
    hostile_flux, hostile_ivar, masked_ivar = _not_measurements(flux, ivar, 1)
    redshifts = np.full(len(flux), z)
    hostile = measure_lines(hostile_flux, hostile_ivar, LOGLAM, redshifts)
    masked = measure_lines(flux, masked_ivar, LOGLAM, redshifts)
    assert np.isfinite(masked["HALPHA_FLUX"]).all()
    for name, values in masked.items():
        np.testing.assert_array_equal(hostile[name], values, err_msg=name)

    hostile_fit = fit_stellar_continuum(hostile_flux, hostile_ivar, LOGLAM, redshifts)
    masked_fit = fit_stellar_continuum(flux, masked_ivar, LOGLAM, redshifts)
    assert np.isfinite(masked_fit.dispersion_kms).all()
    np.testing.assert_array_equal(hostile_fit.model, masked_fit.model)
    np.testing.assert_array_equal(hostile_fit.dispersion_kms, masked_fit.dispersion_kms)

    templates = load_star_templates()
    star = templates_at_rest(templates, [10, 60, 90]).astype(np.float32)
    star_ivar = np.full(star.shape, 400.0, np.float32)
    hostile_flux, hostile_ivar, masked_ivar = _not_measurements(star, star_ivar, 2)
    hostile_stars = fit_star_templates(templates, hostile_flux, hostile_ivar, LOGLAM,
                                       np.zeros(3))
    masked_stars = fit_star_templates(templates, star, masked_ivar, LOGLAM, np.zeros(3))
    np.testing.assert_array_equal(masked_stars.index, [10, 60, 90])
    np.testing.assert_array_equal(hostile_stars.all_chi2, masked_stars.all_chi2)
    np.testing.assert_array_equal(hostile_stars.rchi2, masked_stars.rchi2)


def test_redshifts_no_spectrum_can_have_leave_only_their_row_unmeasured():
    """A redshift at or below −1, infinite, or putting the spectrum off the templates
    leaves its row unmeasured (NaN, index −1), with no error and no warning, and every
    other row exactly as when that row's z is NaN; a star partly on the templates is
    fitted on the pixels they cover, and its reduced χ² counts those pixels only."""
    import warnings

    from gasnet_plugin.models.star_templates import POLY_DEGREE
    from gasnet_plugin.stellar_continuum import fit_stellar_continuum

    # z = 5 has lines on the grid (Lyα) but puts the spectrum off both template sets
    bad = np.array([-1.0, -3.0, np.inf, -np.inf, 1e300, 5.0])
    flux, ivar = synthetic(0.1, {6564.61: (20.0, 150.0), 4862.68: (6.0, 150.0)},
                           n=bad.size + 2)
    z = np.concatenate([[0.1], bad, [0.1]])
    as_nan = np.where(np.isin(np.arange(z.size), [0, z.size - 1]), z, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = measure_lines(flux, ivar, LOGLAM, z)
        continuum = fit_stellar_continuum(flux, ivar, LOGLAM, z)
    assert np.isfinite(lines["HALPHA_FLUX"][[0, -1]]).all()
    assert np.isfinite(lines["LYALPHA_FLUX"][-2])
    for name, values in measure_lines(flux, ivar, LOGLAM,
                                      np.where(z == 5.0, z, as_nan)).items():
        np.testing.assert_array_equal(lines[name], values, err_msg=name)
    assert np.isnan(continuum.dispersion_kms[1:-1]).all()
    reference = fit_stellar_continuum(flux, ivar, LOGLAM, as_nan)
    np.testing.assert_array_equal(continuum.model, reference.model)

    templates = load_star_templates()
    stars = templates_at_rest(templates, [10, 60])
    star_flux = np.vstack([stars[0], np.tile(stars[1], (bad.size + 1, 1))]).astype(np.float32)
    star_ivar = np.full(star_flux.shape, 400.0, np.float32)
    # the last star at z = 1.5: only its blue pixels land on the templates' range
    star_z = np.concatenate([[0.0], bad, [1.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_star_templates(templates, star_flux, star_ivar, LOGLAM, star_z)
    np.testing.assert_array_equal(fit.index[1:-1], -1)
    assert np.isnan(fit.chi2[1:-1]).all() and fit.index[0] == 10
    reference = fit_star_templates(templates, star_flux, star_ivar, LOGLAM,
                                   np.where(np.isin(star_z, bad), np.nan, star_z))
    np.testing.assert_array_equal(fit.all_chi2, reference.all_chi2)
    start = round((LOGLAM[0] - np.log10(2.5) - templates.loglam0) / templates.dloglam)
    on_templates = np.sum((start + np.arange(LOGLAM.size)) >= 0)
    assert 0 < on_templates < LOGLAM.size and fit.index[-1] >= 0
    np.testing.assert_allclose(fit.rchi2[-1],
                               fit.chi2[-1] / (on_templates - POLY_DEGREE - 2), rtol=1e-12)


def test_the_fits_give_the_same_bits_on_any_number_of_threads(monkeypatch):
    """Chunks of rows, dispersions and line groups fitted side by side on threads give
    exactly the results of one thread (each piece is computed as it would be alone)."""
    import gasnet_plugin.emission_lines as lines_module
    import gasnet_plugin.models.star_templates as stars_module
    import gasnet_plugin.stellar_continuum as continuum_module

    # small pieces, so that a small batch has several of each
    monkeypatch.setattr(continuum_module, "CHUNK_ROWS", 8)
    monkeypatch.setattr(stars_module, "CHUNK_STARS", 4)
    monkeypatch.setattr(lines_module, "GROUP_ROWS", 5)
    rng = np.random.default_rng(8)
    n_rows = 19
    z = rng.uniform(0.02, 0.3, n_rows)
    flux = np.empty((n_rows, LOGLAM.size), np.float32)
    for row in range(n_rows):
        flux[row] = synthetic(z[row], {6564.61: (rng.uniform(5, 30), 150.0),
                                       4862.68: (rng.uniform(1, 8), 150.0),
                                       5008.24: (rng.uniform(1, 10), 120.0)},
                              n=1, seed=row)[0][0]
    ivar = np.full(flux.shape, 400.0, np.float32)
    templates = load_star_templates()
    star_z = rng.uniform(-5e-4, 5e-4, n_rows)
    results = []
    for threads in (1, 3):
        continuum = continuum_module.fit_stellar_continuum(flux, ivar, LOGLAM, z,
                                                           threads=threads)
        lines = measure_lines(flux, ivar, LOGLAM, z, continuum.model, threads=threads)
        stars = fit_star_templates(templates, flux, ivar, LOGLAM, star_z, threads=threads)
        results.append((continuum, lines, stars))
    (c1, l1, s1), (c3, l3, s3) = results
    assert np.unique(c1.dispersion_kms).size > 1 and np.isfinite(l1["HALPHA_FLUX"]).all()
    np.testing.assert_array_equal(c1.model, c3.model)
    np.testing.assert_array_equal(c1.dispersion_kms, c3.dispersion_kms)
    for name, values in l1.items():
        np.testing.assert_array_equal(values, l3[name], err_msg=name)
    np.testing.assert_array_equal(s1.all_chi2, s3.all_chi2)
    np.testing.assert_array_equal(s1.rchi2, s3.rchi2)


def test_the_stages_threads_change_no_result(monkeypatch):
    """The subtype stage with ``threads`` 3 (and null: torch's thread count) gives the
    results of one thread, every column, with pieces small enough that each fit has
    several; 0 threads is refused at set-up."""
    import torch

    import gasnet_plugin.emission_lines as lines_module
    import gasnet_plugin.models.star_templates as stars_module
    import gasnet_plugin.stellar_continuum as continuum_module
    import gasnet_plugin.thread_map as thread_map_module
    from gasnet_plugin.host.config import ConfigError

    monkeypatch.setattr(continuum_module, "CHUNK_ROWS", 1)
    monkeypatch.setattr(stars_module, "CHUNK_STARS", 1)
    monkeypatch.setattr(lines_module, "GROUP_ROWS", 1)
    asked: list[int] = []
    real_thread_map = thread_map_module.thread_map

    def recorded(work, items, threads):
        asked.append(threads)
        return real_thread_map(work, items, threads)

    monkeypatch.setattr(thread_map_module, "thread_map", recorded)
    stages = ["resample", "classify", "redshift-scan", "reconstruct"]
    one = run_pipeline({"stages": [*stages, {"subtype": {"threads": 1}}]},
                       [str(DATA)]).results
    assert asked and set(asked) == {1}
    for threads in (3, None):
        asked.clear()
        several = run_pipeline({"stages": [*stages, {"subtype": {"threads": threads}}]},
                               [str(DATA)]).results
        assert max(asked) == (threads or torch.get_num_threads())
        assert several.colnames == one.colnames
        for name in one.colnames:
            np.testing.assert_array_equal(several[name], one[name], err_msg=name)
    # several rows with lines, and several stars, so that the pieces were several
    measured = np.column_stack([np.isfinite(np.asarray(one[name], dtype=float))
                                for name in one.colnames if name.endswith("_FLUX")])
    assert measured.any(axis=1).sum() >= 4
    assert (np.char.str_len(np.asarray(one["STAR_TEMPLATE"]).astype(str)) > 0).sum() >= 2
    with pytest.raises(ConfigError, match="threads: 0 is less than the minimum of 1"):
        run_pipeline({"stages": [*stages, {"subtype": {"threads": 0}}]},
                     [str(DATA / "spec-0266-51602-0013.fits")])
