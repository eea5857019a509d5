"""Robustness: generated bad spectra and damaged files against the whole default pipeline.

Each generated input must end in one of two ways: its row is there, flagged with a reason
(or, if unflagged, with finite results); or the command fails with a clear message naming
the file. Never a traceback, never a lost row, never a change to another spectrum's result.
The counts these tests reach are summed in ``FUZZ_COUNTS`` and checked at the end of each
test (the docs quote them).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import InverseVariance
from conftest import DATA, REPO, SDSS_FILES
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from specutils import Spectrum

from gasnet_plugin.api import as_config, process_spectra, run_pipeline
from gasnet_plugin.host.runner import Pipeline
from gasnet_plugin.io.archive import ArchiveError, read_archive
from gasnet_plugin.io.model_file import read_model, write_model
from gasnet_plugin.io.readers import read_spectra
from gasnet_plugin.models.eigen_model import ModelError, load_model
from gasnet_plugin.zwarning import FATAL

CONFIG = as_config(REPO / "example_configs" / "default.yaml")
FLAM = u.Unit("1e-17 erg / (s cm2 Angstrom)")
GOOD = [read_spectra(SDSS_FILES[1])[0], read_spectra(SDSS_FILES[3])[0]]   # BOSS QSO, galaxy
ENGINE_COLUMNS = ("Z", "ZERR", "CHI2")


def run_alone() -> list[dict]:
    return [s.meta for s in process_spectra(CONFIG, GOOD)]


BASELINE = run_alone()


# -- generated bad spectra ---------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
absurd = st.sampled_from([1e30, -1e30, 1e38, 1e-38, -1e-38, 3e38])


@st.composite
def bad_spectrum(draw) -> tuple[str, Spectrum]:
    """A spectrum with one kind of damage, and the name of that kind."""
    kind = draw(st.sampled_from([
        "nan_flux", "inf_flux", "nan_ivar", "inf_ivar", "negative_ivar", "zero_ivar",
        "all_masked", "unsorted", "too_short", "outside_grid", "wrong_flux_unit",
        "wrong_axis_unit", "absurd_values", "constant", "partly_masked"]))
    n = draw(st.integers(50, 3000)) if kind != "too_short" else draw(st.integers(1, 3))
    start = draw(st.floats(3000, 6000))
    wave = start + np.cumsum(np.full(n, draw(st.floats(0.3, 5.0))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    flux = rng.normal(draw(finite), 1.0 + abs(draw(finite)) * 0.01, n)
    ivar = np.full(n, draw(st.floats(1e-4, 1e4)))
    mask = None
    unit, axis_unit = FLAM, u.AA
    where = rng.random(n) < draw(st.floats(0.0, 1.0))
    where[rng.integers(n)] = True                            # at least one damaged pixel
    if kind == "nan_flux":
        flux[where] = np.nan
    elif kind == "inf_flux":
        flux[where] = rng.choice([np.inf, -np.inf], where.sum())
    elif kind == "nan_ivar":
        ivar[where] = np.nan
    elif kind == "inf_ivar":
        ivar[where] = np.inf
    elif kind == "negative_ivar":
        ivar[where] = -np.abs(ivar[where]) - 1.0
    elif kind == "zero_ivar":
        ivar[:] = 0.0
    elif kind == "all_masked":
        mask = np.ones(n, dtype=bool)
    elif kind == "partly_masked":
        mask = where
    elif kind == "unsorted":            # specutils itself refuses other orders; see files
        wave = wave[::-1].copy()
    elif kind == "outside_grid":        # all red of 9200 Å or blue of 3600 Å
        wave = wave - wave[0] + draw(st.sampled_from([9300.0, 2e4, 1e6]))
        if draw(st.booleans()):
            wave = 100.0 + (wave - wave[0]) * 3000.0 / (wave[-1] - wave[0] + 1.0)
    elif kind == "wrong_flux_unit":
        unit = draw(st.sampled_from([u.m, u.s, u.kg, u.K]))
    elif kind == "wrong_axis_unit":
        axis_unit = draw(st.sampled_from([u.pix, u.km / u.s]))
    elif kind == "absurd_values":
        flux[where] = draw(absurd)
        if draw(st.booleans()):
            ivar[:] = draw(st.sampled_from([1e30, 1e-30, 1e38]))
    elif kind == "constant":
        flux[:] = draw(finite)
    if kind == "wrong_axis_unit" and axis_unit == u.km / u.s:
        wave = np.linspace(-3000, 3000, n)
    spectrum = Spectrum(flux=flux * unit, spectral_axis=wave * axis_unit,
                        uncertainty=InverseVariance(ivar, unit=unit**-2), mask=mask)
    return kind, spectrum


FLAG_EXPECTED = {"nan_flux", "inf_flux", "nan_ivar", "inf_ivar", "negative_ivar", "zero_ivar",
                 "all_masked", "unsorted", "too_short", "outside_grid",
                 "wrong_flux_unit", "wrong_axis_unit", "constant"}
"""Damage that must set a ZWARN bit (the others may still be measurable)."""

FUZZ_COUNTS = {"spectra": 0, "files": 0}


@settings(max_examples=150, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(bad_spectrum(), min_size=5, max_size=10))
def test_bad_spectra_get_flagged_rows_and_spare_the_others(bad):
    kinds = [k for k, _ in bad]
    spectra = [GOOD[0], *[s for _, s in bad], GOOD[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = [s.meta for s in process_spectra(CONFIG, spectra)]
    FUZZ_COUNTS["spectra"] += len(bad)
    assert len(out) == len(spectra)                          # no lost row
    for meta, reference in zip((out[0], out[-1]), BASELINE, strict=True):
        for name in ENGINE_COLUMNS:                          # the good ones are untouched
            np.testing.assert_allclose(meta[name], reference[name], rtol=1e-5)
        assert meta["ZWARN"] == reference["ZWARN"]
    for kind, meta in zip(kinds, out[1:-1], strict=True):
        zwarn, reason = int(meta["ZWARN"]), str(meta["ZWARN_REASON"])
        if kind in FLAG_EXPECTED:
            assert zwarn != 0, kind
        if zwarn != 0:
            assert reason, kind
        if zwarn & int(FATAL) == 0:                          # measured: the numbers are real
            assert all(np.isfinite(meta[name]) for name in ("Z", "CHI2")), (kind, reason)


# -- damaged files -----------------------------------------------------------------------------


def fits_variants(source: Path, rng: np.random.Generator, tmp: Path) -> list[Path]:
    """Damaged copies of ``source``: truncated, an HDU dropped, a column dropped, and
    (SDSS files) a duplicated or unsorted wavelength."""
    data = source.read_bytes()
    out = []
    cut = tmp / f"cut-{rng.integers(1e9)}.fits"
    cut.write_bytes(data[: int(rng.integers(1, len(data) - 1))])
    out.append(cut)
    with fits.open(source) as hdul:
        drop = int(rng.integers(0, len(hdul)))
        hdus = [h.copy() for i, h in enumerate(hdul) if i != drop]
        if drop == 0:                                      # a new, empty primary HDU
            hdus = [fits.PrimaryHDU(), *hdus]
        kept = fits.HDUList(hdus)
        no_hdu = tmp / f"nohdu-{rng.integers(1e9)}.fits"
        kept.writeto(no_hdu)
        out.append(no_hdu)
        tables = [i for i, h in enumerate(hdul) if isinstance(h, fits.BinTableHDU)]
        if tables:
            index = int(rng.choice(tables))
            columns = hdul[index].columns
            gone = columns.names[int(rng.integers(len(columns.names)))]
            edited = fits.HDUList([h.copy() for h in hdul])
            edited[index] = fits.BinTableHDU.from_columns(
                [c for c in columns if c.name != gone], header=hdul[index].header)
            no_column = tmp / f"nocol-{rng.integers(1e9)}.fits"
            edited.writeto(no_column)
            out.append(no_column)
        if len(hdul) > 1 and isinstance(hdul[1], fits.BinTableHDU) \
                and "loglam" in hdul[1].columns.names:
            edited = fits.HDUList([h.copy() for h in hdul])
            loglam = edited[1].data["loglam"]
            k = int(rng.integers(1, loglam.size))
            if rng.random() < 0.5:
                loglam[k] = loglam[k - 1]                       # duplicated
            else:
                loglam[[k - 1, k]] = loglam[[k, k - 1]]         # unsorted
            bad_grid = tmp / f"grid-{rng.integers(1e9)}.fits"
            edited.writeto(bad_grid)
            out.append(bad_grid)
    return out


@settings(max_examples=40, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(DATA.glob("*.fits"))))
def test_damaged_fits_files_are_flagged_and_spare_the_others(seed, source):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        damaged = fits_variants(source, rng, Path(folder))
        inputs = [SDSS_FILES[1], *damaged, SDSS_FILES[3]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = Pipeline(CONFIG).run(inputs, progress=False).results
    FUZZ_COUNTS["files"] += len(damaged)
    sources = [str(s) for s in results["SOURCE"]]
    for path in inputs:                                      # every file has its rows
        assert str(path) in sources
    first, last = results[0], results[-1]
    for row, reference in ((first, BASELINE[0]), (last, BASELINE[1])):
        np.testing.assert_allclose(row["Z"], reference["Z"], rtol=1e-5)
    for row in results[1:-1]:
        zwarn, reason = int(row["ZWARN"]), str(row["ZWARN_REASON"])
        if zwarn:
            assert reason
        named = re.findall(r"(\S+\.fits)", reason)
        assert all(name == str(row["SOURCE"]) for name in named)   # its own file, if any
        if zwarn & int(FATAL) == 0:
            assert np.isfinite(row["Z"]) and np.isfinite(row["CHI2"])


def damage_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncate, or overwrite a few random bytes."""
    if rng.random() < 0.5:
        return data[: int(rng.integers(0, len(data) - 1))]
    damaged = bytearray(data)
    for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
        damaged[position] = int(rng.integers(0, 256))
    return bytes(damaged)


@pytest.fixture(scope="module")
def clean_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    archive = folder / "run.asdf"
    config = {"stages": ["resample", "redshift-scan", "reconstruct"],
              "output": {"arrays": ["flux", "model"]}}
    run_pipeline(config, [str(SDSS_FILES[1])], archive)
    model = write_model(load_model(), folder / "model.asdf")
    return archive, model


def test_damaged_archives_and_models_are_refused_or_read_intact(clean_files):
    """Truncated or byte-damaged ASDF files: a clear error naming the file, or (when the
    damage hit nothing that matters, e.g. a comment) a file whose contents are unchanged.
    Binary blocks carry checksums, so damaged arrays are always refused."""
    archive_path, model_path = clean_files
    original_archive = read_archive(archive_path)
    original_model = read_model(model_path)
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "intact": 0, "changed": []}
    with tempfile.TemporaryDirectory() as folder:
        for trial in range(200):
            source = archive_path if trial % 2 == 0 else model_path
            target = Path(folder) / f"damaged-{trial}.asdf"
            target.write_bytes(damage_bytes(source.read_bytes(), rng))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loaded = read_archive(target) if source == archive_path \
                        else read_model(target)
            except (ArchiveError, ModelError) as exc:
                assert target.name in str(exc)
                outcomes["refused"] += 1
                continue
            if source == archive_path:
                same = all(np.array_equal(np.asarray(loaded.results[c]),
                                          np.asarray(original_archive.results[c]))
                           for c in original_archive.results.colnames
                           if original_archive.results[c].dtype.kind != "f") and \
                    np.array_equal(loaded.arrays.arrays["flux"],
                                   original_archive.arrays.arrays["flux"])
            else:
                same = all(np.array_equal(a.eigenvectors, b.eigenvectors)
                           for a, b in zip(loaded.templates, original_model.templates,
                                           strict=True))
            if same:
                outcomes["intact"] += 1
            else:
                outcomes["changed"].append(trial)
    FUZZ_COUNTS["files"] += 200
    print(f"damaged ASDF files: {outcomes['refused']} refused, {outcomes['intact']} intact, "
          f"{len(outcomes['changed'])} changed")
    assert outcomes["refused"] + outcomes["intact"] + len(outcomes["changed"]) == 200
    # a damaged number in the YAML text can survive the schema; binary arrays cannot
    assert len(outcomes["changed"]) <= 10, outcomes


def test_fuzz_totals_reach_the_goal():
    """The fuzz tests above (they run first, in file order) tried ≥ 1000 generated inputs;
    each of them checks that none crashed and no row was lost."""
    if FUZZ_COUNTS["spectra"] == 0:
        pytest.skip("run with the fuzz tests above")
    print(f"fuzz counts: {FUZZ_COUNTS}")
    assert FUZZ_COUNTS["spectra"] + FUZZ_COUNTS["files"] >= 1000


# -- safe loading and atomic writes ------------------------------------------------------------


def test_no_pickle_anywhere_in_the_package():
    sources = [p for p in (REPO / "gasnet_plugin").rglob("*.py")]
    offenders = []
    for path in sources:
        text = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle|"
                     r"import joblib)", text, re.M):
            offenders.append(f"{path}: imports a pickle library")
        if "allow_pickle=True" in text:
            offenders.append(f"{path}: allow_pickle=True")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path}: torch.load without weights_only=True")
    assert not offenders


def test_unknown_tag_versions_are_refused(tmp_path, clean_files):
    archive_path, model_path = clean_files
    for source, reader, error in ((archive_path, read_archive, ArchiveError),
                                  (model_path, read_model, ModelError)):
        text = source.read_bytes()
        for old, new in ((b"run_info-1.0.0", b"run_info-9.0.0"),
                         (b"eigen_model-1.0.0", b"eigen_model-9.0.0"),
                         (b"tags/run_info-1.0.0", b"tags/run_nfo-1.0.0")):
            if old not in text:
                continue
            bad = tmp_path / f"{source.stem}-{new.decode().replace('/', '_')}.asdf"
            bad.write_bytes(text.replace(old, new))
            with pytest.raises(error, match=re.escape(bad.name)):
                reader(bad)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    archive = run_pipeline(CONFIG, [str(SDSS_FILES[1])])
    import asdf

    def broken_write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"#ASDF 1.0.0\nhalf")
        raise OSError("disk full")

    monkeypatch.setattr(asdf.AsdfFile, "write_to", broken_write)
    target = tmp_path / "out.asdf"
    with pytest.raises(OSError, match="disk full"):
        archive.write(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="disk full"):
        write_model(load_model(), tmp_path / "model.asdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bunit", ["W/(m2 nm)", "1E-40 erg/cm^2/s/Ang", "erg/(s cm2 Angstrom)"])
def test_a_neighbours_flux_unit_changes_no_other_result(tmp_path, bunit):
    """A file with another (or absurd) flux unit first in the batch: every other
    spectrum's result is bit for bit what it is beside a neighbour with the usual unit,
    and what it is alone to float32 rounding (units are never rescaled into a
    neighbour's, so no float32 overflow or underflow)."""
    from astropy.io import fits

    from gasnet_plugin.api import run_pipeline

    hostile, benign = tmp_path / "a-hostile.fits", tmp_path / "a-benign.fits"
    with fits.open(DATA / "spec-0266-51602-0013.fits") as hdul:
        hdul.writeto(benign)
        hdul[0].header["BUNIT"] = bunit
        hdul.writeto(hostile)
    others = [str(DATA / "spec-3655-55240-0660.fits"), str(DATA / "spec-9367-57758-0500.fits")]
    config = {"stages": ["resample", "classify", "redshift-scan", "reconstruct"]}
    beside_hostile = run_pipeline(config, [str(hostile), *others]).results
    beside_benign = run_pipeline(config, [str(benign), *others]).results
    assert beside_hostile["FLUX_UNIT"][0] != beside_benign["FLUX_UNIT"][0]
    for name in ("Z", "ZERR", "SPECTYPE", "CHI2", "NPIX_VALID", "ZWARN", "P_QSO", "PROB_QSO"):
        np.testing.assert_array_equal(np.asarray(beside_hostile[name])[1:],
                                      np.asarray(beside_benign[name])[1:], err_msg=name)
    for k, path in enumerate(others, start=1):
        alone = run_pipeline(config, [path]).results
        assert alone["SPECTYPE"][0] == beside_hostile["SPECTYPE"][k]
        assert alone["NPIX_VALID"][0] == beside_hostile["NPIX_VALID"][k]
        np.testing.assert_allclose(alone["Z"][0], beside_hostile["Z"][k], rtol=1e-7)


@pytest.mark.parametrize("config", [
    {"stages": ["resample"], "batch_size": 1.0},
    {"stages": ["resample", {"classify": {"chunk": 2.0}}]},
    {"stages": ["resample", {"redshift-scan": {"engine_params": {"n_candidates": 5.0}}}]},
], ids=["batch_size", "chunk", "n_candidates"])
def test_integers_in_a_config_must_be_integers(config):
    """1.0 is a float here: a ConfigError naming the key, before anything runs."""
    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.host.runner import Pipeline

    with pytest.raises(ConfigError, match="is not of type 'integer'"):
        Pipeline(as_config(config))


@pytest.mark.parametrize("config", [
    "stages: [reconstruct]",
    "stages: [redshift-scan, resample]",
    "stages: [{resample: {wavelength_min: 3601}}, redshift-scan]",
    "stages: [{resample: {wavelength_max: .inf}}]",
    "stages: [{resample: {dloglam: .nan}}]",
    "stages: [{resample: {dloglam: 1.0e-10}}]",
    "stages: [resample, {redshift-scan: {engine_params: {model: /nonexistent.asdf}}}]",
], ids=["reconstruct-alone", "scan-before-resample", "grid-off-model", "inf-grid", "nan-step",
        "huge-grid", "missing-model"])
def test_setup_errors_exit_2_before_any_work(tmp_path, config):
    """A config that cannot work: exit 2 with the reason, nothing read, no shard folder
    left to block the next plain run."""
    import subprocess
    import sys

    path = tmp_path / "config.yaml"
    path.write_text(config + "\n")
    out = tmp_path / "out.asdf"
    done = subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", "run", str(path),
                           str(DATA / "spec-0266-51602-0013.fits"), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gasnet: error:") and "Traceback" not in done.stderr
    assert not out.exists() and not (tmp_path / "out.asdf.parts").exists()


def test_output_paths_that_cannot_work_are_clear_errors(tmp_path):
    """Exit 2 with a reason, no traceback, no temporary file left, nothing deleted that the
    run did not create, and never an input overwritten."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text("stages: [resample]\n")
    spectrum = tmp_path / "in.fits"
    spectrum.write_bytes((DATA / "spec-0266-51602-0013.fits").read_bytes())
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "blocked.asdf.parts").write_text("a file in the way")
    foreign = tmp_path / "foreign.asdf.parts"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    cases = {"/proc/x.asdf": "cannot write", str(a_file / "x.asdf"): "not a folder",
             "": "output path is empty",
             str(tmp_path / "blocked.asdf"): "not a shard folder",
             str(tmp_path / "foreign.asdf"): "no gasnet run made",
             str(spectrum): "one of the inputs"}
    for output, reason in cases.items():
        done = subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", "run", str(config),
                               str(spectrum), "-o", output, "--overwrite"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (output, done.stderr)
        assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (foreign / "mine.txt").read_text() == "keep me"
    assert spectrum.read_bytes() == (DATA / "spec-0266-51602-0013.fits").read_bytes()
    assert not list(tmp_path.glob("**/.*tmp*"))


def test_a_file_name_that_is_not_utf8_is_stored_safely_and_resume_takes_relative_paths(
        tmp_path, monkeypatch):
    """A non-UTF-8 name is written escaped (the run and its resume do not crash), and a
    resume given the inputs relative where the first run had them absolute is the same
    run."""
    import os

    from gasnet_plugin.api import run_pipeline

    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"spec-\xff.fits")
    with open(odd, "wb") as handle:
        handle.write((DATA / "spec-0266-51602-0013.fits").read_bytes())
    config = {"stages": ["resample"]}
    out = tmp_path / "out.asdf"
    archive = run_pipeline(config, [str(folder)], out)
    assert "spec-\\xff.fits" in str(archive.results["SOURCE"][0])
    assert np.asarray(archive.results["NPIX_VALID"])[0] > 0
    monkeypatch.chdir(tmp_path)
    again = run_pipeline(config, ["in"], "out.asdf", resume=True)
    assert len(again.results) == 1


def test_model_and_threshold_contents_are_checked_at_load(tmp_path):
    """NaN or all-zero eigenvectors, NaN encoder weights, NaN thresholds (in a file or as
    an override): refused at setup, naming what is wrong."""
    import copy

    from gasnet_plugin.api import run_pipeline
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.models.eigen_model import ModelError, load_model

    model = load_model()
    for broken, reason in (("nan", "finite"), ("zero", "all zero"), ("weight", "weight")):
        bad = copy.deepcopy(model)
        template = bad.templates[0]
        if broken == "nan":
            template.eigenvectors = np.full_like(template.eigenvectors, np.nan)
        elif broken == "zero":
            template.eigenvectors = np.zeros_like(template.eigenvectors)
        else:
            key = next(iter(template.encoder_weights))
            template.encoder_weights[key] = np.full_like(template.encoder_weights[key], np.inf)
        with pytest.raises(ModelError, match=reason):
            bad.check()
    config = {"stages": ["resample", "classify", "redshift-scan",
                         {"flag-anomaly": {"large_chi2": float("nan")}}]}
    with pytest.raises(ConfigError, match="large_chi2 must be a finite number"):
        run_pipeline(config, [str(DATA / "spec-0266-51602-0013.fits")])


def test_an_asdf_file_full_of_aliases_is_refused_before_parsing(tmp_path):
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    lines = ["#ASDF 1.0.0", "#ASDF_STANDARD 1.5.0", "%YAML 1.1", "%TAG ! tag:stsci.edu:asdf/",
             "--- !core/asdf-1.1.0", "a: &a [1, 2]",
             "b: [" + ", ".join(["*a"] * 200_000) + "]", "..."]
    bomb = tmp_path / "bomb.asdf"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArchiveError, match="200,000 YAML aliases"):
        read_archive(bomb)


def test_yaml_aliases_are_refused_in_a_config(tmp_path):
    """A billion-laughs config is a ConfigError at once, not minutes of expansion."""
    from gasnet_plugin.host.config import ConfigError, load_config

    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nstages: [resample]\noutput: {arrays: *l8}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)


def test_no_input_is_dropped_silently_and_reasons_say_what_happened(tmp_path):
    """Broken links, link loops, FIFOs, folders named *.fits, files with no spectrum, a
    corrupt .fits.gz and a 2-pixel spectrum over the whole grid: each gets a flagged row
    whose reason says what it is."""
    import gzip
    import os

    from astropy.io import fits

    from gasnet_plugin.api import process_spectra, run_pipeline
    from gasnet_plugin.zwarning import ZWarn

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.fits").write_bytes((DATA / "spec-0266-51602-0013.fits").read_bytes())
    os.symlink(folder / "missing.fits", folder / "broken.fits")
    os.symlink(folder / "loop.fits", folder / "loop.fits")
    os.mkfifo(folder / "pipe.fits")
    (folder / "adir.fits").mkdir()
    empty = fits.BinTableHDU.from_columns([
        fits.Column("flux", "4076E", array=np.zeros((0, 4076), np.float32)),
        fits.Column("ivar", "4076E", array=np.zeros((0, 4076), np.float32))])
    empty.header["COEFF0"], empty.header["COEFF1"] = np.log10(3600.0), 1e-4
    fits.HDUList([fits.PrimaryHDU(), empty]).writeto(folder / "empty.fits")
    with gzip.open(folder / "corrupt.fits.gz", "wb") as handle:
        handle.write((DATA / "spec-0266-51602-0013.fits").read_bytes()[:4000])
    results = run_pipeline({"stages": ["resample"]}, [str(folder)]).results
    reasons = {Path(str(s)).name: str(r) for s, r in zip(results["SOURCE"],
                                                           results["ZWARN_REASON"], strict=True)}
    assert "broken symbolic link" in reasons["broken.fits"]
    assert "broken symbolic link" in reasons["loop.fits"]
    assert "FIFO" in reasons["pipe.fits"]
    assert "folder, not a file" in reasons["adir.fits"]
    assert "holds no spectrum" in reasons["empty.fits"]
    assert reasons.get("corrupt.fits.gz")
    assert reasons["good.fits"] == ""

    from specutils import Spectrum

    coarse = Spectrum(flux=np.array([1.0, 2.0]) * u.Unit("1e-17 erg / (s cm2 Angstrom)"),
                      spectral_axis=np.array([3601.0, 9199.0]) * u.AA,
                      uncertainty=InverseVariance(np.ones(2)))
    meta = process_spectra({"stages": ["resample"]}, [coarse])[0].meta
    assert int(meta["ZWARN"]) & int(ZWarn.BAD_INPUT)
    assert "coarser than the grid" in str(meta["ZWARN_REASON"])


def test_small_files_cannot_make_a_reader_allocate_gigabytes(tmp_path):
    """A header declaring far more data than the file holds (a corrupted GCOUNT), and DESI
    arms placed absurdly far apart: refused from the headers, quickly, with the reason."""

    from gasnet_plugin.io.desi import join_arms
    from gasnet_plugin.io.readers import UnreadableFileError, read_spectra

    raw = (DATA / "desi-coadd-2targets.fits").read_bytes()
    at = raw.find(b"GCOUNT  =")
    bad = tmp_path / "gcount.fits"
    bad.write_bytes(raw[:at] + b"GCOUNT  =            999999999" + raw[at + 30:])
    with pytest.raises(UnreadableFileError, match="declares .* bytes of data"):
        read_spectra(bad)
    wave = 3600.0 + 0.8 * np.arange(100)
    far = 4e8 + 0.8 * np.arange(100)
    ones = np.ones((1, 100), np.float32)
    with pytest.raises(ValueError, match="refusing to allocate the gap"):
        join_arms([wave, far], [ones, ones], [ones, ones], [ones * 0, ones * 0])


def test_desi_arms_with_decreasing_or_nan_wavelengths_are_refused_by_name(tmp_path):
    """Through either reading path (the fast one maps the file), a coadd whose wavelengths
    decrease or hold NaN is an unreadable file with the reason, not garbage."""
    from astropy.io import fits

    from gasnet_plugin.io.readers import UnreadableFileError, read_spectra

    for name, wave, reason in (
            ("decreasing", 9000.0 - 0.8 * np.arange(50), "do not increase"),
            ("nan", np.where(np.arange(50) == 7, np.nan, 3600.0 + 0.8 * np.arange(50)),
             "not finite")):
        path = tmp_path / f"coadd-{name}.fits"
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=[1, 2])],
                                          name="FIBERMAP"),
            fits.ImageHDU(wave, name="B_WAVELENGTH"),
            fits.ImageHDU(np.ones((2, 50), np.float32), name="B_FLUX"),
            fits.ImageHDU(np.ones((2, 50), np.float32), name="B_IVAR")]).writeto(path)
        with pytest.raises(UnreadableFileError, match=f"{path.name}.*{reason}"):
            read_spectra(path)


def test_a_full_disk_is_a_clear_error_with_no_temporary_file(tmp_path):
    """A write that fails (file-size limit standing in for a full disk): exit 2 naming
    the output and the cause, no traceback, no temporary file left."""
    import shutil
    import subprocess
    import sys

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    config = tmp_path / "config.yaml"
    config.write_text("stages: [resample]\noutput: {arrays: [flux, ivar]}\n")
    out = tmp_path / "out" / "out.asdf"
    out.parent.mkdir()
    done = subprocess.run(["prlimit", "--fsize=19000", sys.executable, "-m",
                           "gasnet_plugin.cli", "run", str(config), str(DATA), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "cannot write the results" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(out.parent.glob("**/*tmp*"))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-45, 45), st.sampled_from(["erg / (s cm2 Angstrom)", "W / (m2 nm)", "Jy",
                                                "ct / s", "mJy", "W / (m2 um)"]))
def test_fuzz_hostile_neighbour_units(tmp_path, power, unit):
    """Any flux unit and scale on a neighbour (10^-45 .. 10^45): the other spectra of the
    batch give bit for bit what they give beside a neighbour with the usual unit."""
    from gasnet_plugin.api import process_spectra

    good = read_spectra(DATA / "spec-3655-55240-0660.fits")[0]
    other = read_spectra(DATA / "spec-0266-51602-0013.fits")[0]
    hostile = other.__class__(flux=other.flux.value * u.Unit(f"1e{power} {unit}"),
                              spectral_axis=other.spectral_axis,
                              uncertainty=InverseVariance(other.uncertainty.array,
                                                          unit=u.Unit(f"1e{power} {unit}") ** -2),
                              mask=other.mask, meta=other.meta)
    config = {"stages": ["resample", "classify", "redshift-scan"]}
    beside_hostile = process_spectra(config, [hostile, good])[1].meta
    beside_usual = process_spectra(config, [other, good])[1].meta
    for name in ("Z", "ZERR", "SPECTYPE", "CHI2", "NPIX_VALID", "ZWARN", "PROB_GALAXY"):
        a, b = beside_hostile[name], beside_usual[name]
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), name
