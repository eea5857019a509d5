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
def preprocessed(engine):
    """The real rows of the GaSNet-III reference file (galaxies, QSOs, stars), preprocessed
    as the engine does (once per test module)."""
    import numpy as np
    import torch
    from astropy.io import fits

    from gasnet_plugin.engines.eigen_preprocess import preprocess

    with fits.open(DATA / "gasnet3-reference.fits") as hdul:
        rows = {name: np.concatenate([hdul[t].data[name] for t in ("MIXED", "QSO10")])
                for name in ("flux", "ivar")}
        grid = hdul["GRID"].data["input_grid"][0].copy()
    return preprocess(torch.from_numpy(rows["flux"].astype(np.float32)),
                      torch.from_numpy(rows["ivar"].astype(np.float32)),
                      torch.from_numpy(grid.astype(np.float64)),
                      engine.model.preprocessing["poly_deg"], engine.params["masked_flux"])


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
