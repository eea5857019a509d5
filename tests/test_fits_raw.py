"""The fast SDSS path gives exactly what astropy's path gives, and falls back when it must."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits
from conftest import SDSS_FILES

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


@pytest.mark.parametrize("path", SDSS_FILES, ids=lambda p: p.name)
def test_fast_sdss_path_equals_astropy_path(path):
    assert READERS.get("sdss-spec").identify_raw(read_hdus(path.read_bytes()))
    fast, slow = both_paths(path)
    assert len(fast) == len(slow) == 1
    a, b = fast[0], slow[0]
    np.testing.assert_array_equal(a.spectral_axis.value, b.spectral_axis.value)
    assert a.spectral_axis.unit == b.spectral_axis.unit and a.flux.unit == b.flux.unit
    np.testing.assert_array_equal(a.flux.value, b.flux.value)
    np.testing.assert_array_equal(a.uncertainty.array, b.uncertainty.array)
    np.testing.assert_array_equal(a.mask, b.mask)
    rows_a, rows_b = a.meta["rows"], b.meta["rows"]
    assert rows_a.colnames == rows_b.colnames
    for name in rows_a.colnames:
        assert list(rows_a[name]) == list(rows_b[name]), name
        assert rows_a[name].dtype.kind == rows_b[name].dtype.kind, name
    assert dict(a.meta["header"]) == dict(b.meta["header"])


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
    """The headers are probed from the file; its bytes are read only for a reader with a
    fast path that takes it (an SDSS spec file), not for a DESI coadd, which astropy then
    reads from the file itself (a 500-target coadd is ~200 MB, mostly unused)."""
    from conftest import DESI_FILE

    from gasnet_plugin.io.fits_raw import read_hdus_from

    sdss = SDSS_FILES[0]
    spectra, raw = readers_module._read_raw(str(sdss), "auto", READERS)
    assert raw == sdss.read_bytes() and len(spectra) == 1
    assert readers_module._read_raw(str(DESI_FILE), "auto", READERS) == (None, None)
    # the probe's HDUs are those parsed from the whole bytes
    with open(DESI_FILE, "rb") as handle:
        probed = read_hdus_from(handle, DESI_FILE.stat().st_size)
    whole = read_hdus(DESI_FILE.read_bytes())
    assert [(h.text, h.data_start, h.data_size) for h in probed] == \
        [(h.text, h.data_start, h.data_size) for h in whole]
    assert len(read_spectra(DESI_FILE, readers=READERS)[0].meta["rows"]) == 2
