"""Shared fixtures: the real spectra in tests/data (no ../shared needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
REPO = DATA.parent.parent
SHARED = REPO.parent / "shared" / "data"

SDSS_FILES = sorted(DATA.glob("spec-[0-9]*-[0-9]*-[0-9]*.fits"))
LAMOST_FILES = sorted(DATA.glob("spec-*_sp*.fits"))
DESI_FILE = DATA / "desi-coadd-2targets.fits"


@pytest.fixture
def sdss_folder_with_corrupt_file(tmp_path: Path) -> Path:
    """A folder of the SDSS fixtures plus one truncated copy (``spec-corrupt.fits``)."""
    folder = tmp_path / "sdss"
    folder.mkdir()
    for path in SDSS_FILES:
        shutil.copy(path, folder / path.name)
    (folder / "spec-corrupt.fits").write_bytes(SDSS_FILES[0].read_bytes()[:30000])
    return folder


@pytest.fixture(scope="module")
def engine():
    """The default ``gasnet3`` engine, set up on the CPU (once per test module)."""
    from gasnet_plugin.engines.gasnet3 import Gasnet3Engine

    scanner = Gasnet3Engine()
    scanner.setup()
    return scanner


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` where this checkout has it; the test is skipped elsewhere."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED


@pytest.fixture
def collector_per_batch(monkeypatch: pytest.MonkeyPatch):
    """The garbage collector's thresholds as each batch is processed (``Pipeline.
    process_batch`` recording them into the list this returns); afterwards the test
    checks they were a run's and that the caller's are back."""
    import gc

    from gasnet_plugin.host.runner import Pipeline

    seen: list[tuple[int, ...]] = []
    process_batch = Pipeline.process_batch

    def recording(self, batch):
        seen.append(gc.get_threshold())
        return process_batch(self, batch)

    monkeypatch.setattr(Pipeline, "process_batch", recording)
    before = gc.get_threshold()
    yield seen
    assert gc.get_threshold() == before, "the caller's collector thresholds not restored"


def require(module: str, flag: str) -> None:
    """Skip without ``module``, unless CI says it must be there (``flag`` set)."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get(flag):
            pytest.fail(f"{module} is required here ({flag} is set) but not installed")
        pytest.skip(f"{module} is not installed")
