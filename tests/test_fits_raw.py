"""The fast paths (SDSS spec files, LAMOST spectra, DESI coadds) give exactly what
astropy's path gives, and fall back when they must."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits
from conftest import DESI_FILE as DESI_FILE_PATH
from conftest import LAMOST_FILES, SDSS_FILES

import gasnet_plugin.io.readers as readers_module
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.fits_raw import RawFitsError, read_columns, read_hdus
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra

READERS = PluginHost().readers


def both_paths(path):
    fast = read_spectra(path, readers=READERS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(readers_module, "_read_raw", lambda *args: (None, None))
        slow = read_spectra(path, readers=READERS)
    return fast, slow


def assert_same_spectra(fast, slow):
    """Bit for bit: grid, units, flux, ivar, mask, label rows (values and kinds), header
    cards."""
    assert len(fast) == len(slow) == 1
    a, b = fast[0], slow[0]
    np.testing.assert_array_equal(a.spectral_axis.value, b.spectral_axis.value)
    assert a.spectral_axis.unit == b.spectral_axis.unit and a.flux.unit == b.flux.unit
    assert a.flux.dtype == b.flux.dtype and a.uncertainty.array.dtype == b.uncertainty.array.dtype
    np.testing.assert_array_equal(a.flux.value, b.flux.value)
    np.testing.assert_array_equal(a.uncertainty.array, b.uncertainty.array)
    np.testing.assert_array_equal(a.mask, b.mask)
    rows_a, rows_b = a.meta["rows"], b.meta["rows"]
    assert rows_a.colnames == rows_b.colnames
    for name in rows_a.colnames:
        np.testing.assert_array_equal(np.asarray(rows_a[name]), np.asarray(rows_b[name]),
                                      err_msg=name)
        assert rows_a[name].dtype.kind == rows_b[name].dtype.kind, name
    assert header_cards(a) == header_cards(b)


def header_cards(spectrum):
    """The primary header's cards as written, or the error astropy gives on reading a
    damaged card (the same on both paths)."""
    try:
        return [card.image for card in spectrum.meta["header"].cards]
    except ValueError as exc:        # astropy's VerifyError is a ValueError
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("path", SDSS_FILES + LAMOST_FILES, ids=lambda p: p.name)
def test_fast_sdss_and_lamost_paths_equal_astropy_path(path):
    reader = READERS.get("sdss-spec" if path in SDSS_FILES else "lamost-dr1")
    assert reader.identify_raw(read_hdus(path.read_bytes()))
    spectra, raw = readers_module._read_raw(str(path), "auto", READERS)
    assert spectra is not None and raw is not None       # the fast path took it
    assert_same_spectra(*both_paths(path))


def test_a_scaled_lamost_image_goes_the_usual_way(tmp_path):
    """A LAMOST file whose primary image is stored scaled (BSCALE): the fast path refuses
    it and astropy's path reads it, applying the scale."""
    with fits.open(LAMOST_FILES[0]) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    path = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(header=header)
    hdu.data = np.nan_to_num(data / 0.001).clip(-32000, 32000).astype(np.int16)
    hdu.header["BSCALE"] = 0.001
    hdu.writeto(path)
    raw = path.read_bytes()
    assert READERS.get("lamost-dr1").identify_raw(read_hdus(raw))
    with pytest.raises(RawFitsError, match="float32"):
        READERS.get("lamost-dr1").read_raw(raw, read_hdus(raw), str(path))
    fast, slow = both_paths(path)
    assert_same_spectra(fast, slow)
    assert fast[0].flux.value[100] == pytest.approx(0.001 * hdu.data[0, 100], rel=1e-6)


@pytest.mark.parametrize("path", SDSS_FILES[:2], ids=lambda p: p.name)
def test_header_cards_hold_astropys_values(path):
    """Every value card of every HDU, parsed on demand, has astropy's value (strings
    without trailing blanks), and the data of each HDU start where astropy finds them."""
    hdus = read_hdus(path.read_bytes())
    with fits.open(path) as hdul:
        assert len(hdus) == len(hdul)
        for raw, hdu in zip(hdus, hdul, strict=True):
            assert raw.data_start == hdu.fileinfo()["datLoc"]
            expected = {card.keyword: card.value for card in hdu.header.cards
                        if card.keyword not in ("COMMENT", "HISTORY", "", "CONTINUE")}
            assert set(raw.cards) == set(expected)
            for keyword, value in expected.items():
                got = raw.cards[keyword]
                if isinstance(value, str):
                    assert got == value.rstrip(), keyword
                elif isinstance(value, float):
                    assert got == pytest.approx(value, rel=1e-15), keyword
                else:
                    assert got == value and type(got) is type(value), keyword


def test_columns_match_astropy_including_scaled_and_string_columns():
    from astropy.io import fits

    path = SDSS_FILES[0]
    raw = path.read_bytes()
    hdus = read_hdus(raw)
    with fits.open(path) as hdul:
        for index in (1, 2):
            names = list(hdul[index].columns.names)
            ours = read_columns(raw, hdus[index], names[:60])
            for name in names[:60]:
                expected = hdul[index].data[name]
                if expected.dtype.kind in "SU":
                    assert list(ours[name]) == [str(v) for v in expected], name
                else:
                    np.testing.assert_array_equal(ours[name], expected, err_msg=name)


def test_what_it_cannot_read_goes_the_usual_way(tmp_path):
    gz = tmp_path / (SDSS_FILES[0].name + ".gz")
    with open(SDSS_FILES[0], "rb") as source, gzip.open(gz, "wb") as target:
        shutil.copyfileobj(source, target)
    fast, _ = both_paths(SDSS_FILES[0])
    np.testing.assert_array_equal(read_spectra(gz, readers=READERS)[0].flux.value,
                                  fast[0].flux.value)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(SDSS_FILES[0].read_bytes()[:-5000])
    with pytest.raises(RawFitsError):
        read_hdus(truncated.read_bytes())

    def outcome(read):
        try:
            return read()[0].flux.value.tolist()
        except UnreadableFileError as exc:
            return str(exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(readers_module, "_read_raw", lambda *args: (None, None))
        usual = outcome(lambda: read_spectra(truncated, readers=READERS))
    assert outcome(lambda: read_spectra(truncated, readers=READERS)) == usual


def test_only_a_file_a_fast_path_takes_is_read_whole(monkeypatch):
    """The headers are probed from the file; its bytes are read whole only for a reader
    whose fast path takes them so (an SDSS spec file), not for a DESI coadd, whose fast
    path maps the file and reads the images it needs (a 500-target coadd is ~200 MB,
    mostly resolution data no reader uses)."""
    from conftest import DESI_FILE

    from gasnet_plugin.io.fits_raw import read_hdus_from

    sdss = SDSS_FILES[0]
    spectra, raw = readers_module._read_raw(str(sdss), "auto", READERS)
    assert raw == sdss.read_bytes() and len(spectra) == 1
    # a DESI coadd's fast path maps the file instead: nothing is read whole
    spectra, raw = readers_module._read_raw(str(DESI_FILE), "auto", READERS)
    assert raw is None and len(spectra[0].meta["rows"]) == 2
    # the probe's HDUs are those parsed from the whole bytes
    with open(DESI_FILE, "rb") as handle:
        probed = read_hdus_from(handle, DESI_FILE.stat().st_size)
    whole = read_hdus(DESI_FILE.read_bytes())
    assert [(h.text, h.data_start, h.data_size) for h in probed] == \
        [(h.text, h.data_start, h.data_size) for h in whole]
    assert len(read_spectra(DESI_FILE, readers=READERS)[0].meta["rows"]) == 2


def synthetic_coadd(path, n_targets, rng, mask_arms=("B", "R"), flux_scale=None):
    """A DESI-like coadd: three overlapping arms on one 0.8 Å grid, with masked pixels
    (also in the overlaps), NaN flux, infinite, zero and negative ivar; the arms without
    a mask in ``mask_arms`` have no MASK HDU; 1-D images for one target."""
    hdus = [fits.PrimaryHDU(header=fits.Header([("SPGRP", "healpix")])),
            fits.BinTableHDU.from_columns(
                [fits.Column("TARGETID", "K", array=np.arange(n_targets) + 39627000),
                 fits.Column("OBJTYPE", "3A", array=["TGT"] * n_targets)],
                name="FIBERMAP")]
    for arm, (first, size) in zip("BRZ", ((0, 90), (70, 100), (150, 60)), strict=True):
        wave = 3600.0 + 0.8 * (first + np.arange(size))
        flux = rng.normal(1, 0.5, (n_targets, size)).astype(np.float32)
        ivar = rng.uniform(0.1, 3, (n_targets, size)).astype(np.float32)
        flux[rng.random(flux.shape) < 0.03] = np.nan
        ivar[rng.random(ivar.shape) < 0.03] = np.inf
        ivar[rng.random(ivar.shape) < 0.05] = 0
        ivar[rng.random(ivar.shape) < 0.03] = -1
        mask = np.where(rng.random(flux.shape) < 0.1, 2**31 + 4, 0).astype(np.uint32)
        squeeze = (lambda a: a[0]) if n_targets == 1 else (lambda a: a)
        hdus.append(fits.ImageHDU(wave, name=f"{arm}_WAVELENGTH"))
        hdus.append(fits.ImageHDU(squeeze(flux), name=f"{arm}_FLUX"))
        hdus[-1].header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
        if flux_scale is not None and arm == "R":
            hdus[-1] = fits.ImageHDU(np.nan_to_num(squeeze(flux) / flux_scale).astype(np.int16),
                                     name="R_FLUX")
            hdus[-1].header["BSCALE"] = flux_scale
        hdus.append(fits.ImageHDU(squeeze(ivar), name=f"{arm}_IVAR"))
        if arm in mask_arms:
            hdus.append(fits.ImageHDU(squeeze(mask), name=f"{arm}_MASK"))
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize("n_targets", [1, 7])
def test_fast_desi_path_equals_astropy_path(tmp_path, n_targets):
    """The real coadd fixture and synthetic ones with every kind of bad pixel: the mapped
    fast path (the compiled join) gives astropy's path's spectra bit for bit."""
    from conftest import DESI_FILE

    for path in (DESI_FILE, synthetic_coadd(tmp_path / "coadd.fits", n_targets,
                                            np.random.default_rng(n_targets))):
        assert READERS.get("desi-coadd").identify_raw(read_hdus(path.read_bytes()))
        spectra, raw = readers_module._read_raw(str(path), "auto", READERS)
        assert spectra is not None and raw is None      # the fast path took it
        fast, slow = both_paths(path)
        assert_same_spectra(fast, slow)
        assert len(fast[0].meta["rows"]) == (2 if path == DESI_FILE else n_targets)


def test_desi_files_the_fast_path_does_not_handle_go_the_usual_way(tmp_path):
    """A scaled integer flux image: the fast path refuses it (RawFitsError) and astropy's
    path reads the file, applying the scale."""
    from gasnet_plugin.io.desi_raw import read_raw

    path = synthetic_coadd(tmp_path / "scaled.fits", 3, np.random.default_rng(5),
                           flux_scale=0.01)
    raw = path.read_bytes()
    with pytest.raises(RawFitsError, match="R_FLUX"):
        read_raw(raw, read_hdus(raw), str(path))
    fast, slow = both_paths(path)
    assert_same_spectra(fast, slow)


@pytest.mark.filterwarnings("ignore")       # astropy warns about the damaged cards
@pytest.mark.parametrize("path", [SDSS_FILES[0], LAMOST_FILES[0], DESI_FILE_PATH],
                         ids=lambda p: p.name)
def test_damaged_bytes_never_make_the_fast_paths_differ_or_crash(tmp_path, path):
    """60 copies of a fixture with a few bytes overwritten (half of them in the headers):
    where both paths read the copy, the spectra are the same; otherwise each read either
    gives spectra or an UnreadableFileError, nothing else. (The fast paths read what
    they use: a damaged card elsewhere, which astropy refuses, does not stop them.)"""
    import warnings

    rng = np.random.default_rng(7)
    data = path.read_bytes()
    both_read = 0
    for k in range(60):
        damaged = bytearray(data)
        in_headers = k % 2 == 0
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, min(len(data), 40000) if in_headers else len(data)))
            damaged[at] = int(rng.integers(32, 127) if in_headers else rng.integers(0, 256))
        copy = tmp_path / f"damaged-{k}.fits"
        copy.write_bytes(bytes(damaged))
        outcomes = []
        with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
            warnings.simplefilter("ignore")
            for fast in (True, False):
                if not fast:
                    patch.setattr(readers_module, "_read_raw", lambda *args: (None, None))
                try:
                    outcomes.append(read_spectra(copy, readers=READERS))
                except UnreadableFileError:
                    outcomes.append(None)
        if all(outcome is not None for outcome in outcomes):
            assert_same_spectra(*outcomes)
            both_read += 1
    assert both_read > 10
