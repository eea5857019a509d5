"""Reading multi-spectrum files: milliseconds per spectrum, one core.

Two kinds of file that hold many spectra:

* a DESI coadd of ``--n-desi`` spectra (default 500, the size of a DESI healpix coadd),
  built in a temporary folder from the real ``coadd-1-80693-thru20210204.fits`` of
  ``../shared/data/spectra/desi`` by repeating its 5 targets in every per-target HDU
  (FIBERMAP, SCORES, and the b/r/z FLUX, IVAR, MASK and RESOLUTION images): a file of
  the real size and layout (~220 MB, most of it resolution data no reader uses);
* a table of 1000 mock spectra (``gasnet simulate``, one of ``--mocks`` or made here).

Each is read with ``read_spectra`` (what a run does per file: the file's headers are
probed for a fast path, then the file is parsed) and, as the baseline in the same
process, the way reading went before the probe: the file's bytes read whole, then parsed
from memory by the reader's astropy path. For the DESI coadd a third line is that
astropy path reading the file itself (what ``read_spectra`` did before the coadd reader
had a fast path). All must give the same spectra. Best of ``--repeat``.

    python benchmarks/bench_multispectrum_read.py [--n-desi 500] [--mocks DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, SHARED, machine, table

from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.readers import pick_reader, read_spectra

DESI_SOURCE = SHARED / "spectra" / "desi" / "coadd-1-80693-thru20210204.fits"


def big_desi_coadd(source: Path, n_spectra: int, out: Path) -> Path:
    """``source`` with its targets repeated to ``n_spectra`` in every per-target HDU."""
    from astropy.io import fits

    with fits.open(source) as hdul:
        n_targets = int(hdul["FIBERMAP"].header["NAXIS2"])
        reps = -(-n_spectra // n_targets)
        built = fits.HDUList()
        for hdu in hdul:
            if isinstance(hdu, fits.PrimaryHDU):
                built.append(fits.PrimaryHDU(header=hdu.header))
            elif isinstance(hdu, fits.BinTableHDU) and hdu.header["NAXIS2"] == n_targets:
                built.append(fits.BinTableHDU(np.tile(hdu.data, reps)[:n_spectra],
                                              header=hdu.header, name=hdu.name))
            elif hdu.data is not None and hdu.data.ndim >= 2 \
                    and hdu.data.shape[0] == n_targets:
                tiled = np.tile(hdu.data, (reps,) + (1,) * (hdu.data.ndim - 1))[:n_spectra]
                built.append(fits.ImageHDU(tiled, header=hdu.header, name=hdu.name))
            else:
                built.append(hdu.copy())
        built.writeto(out, overwrite=True)
    return out


def read_whole_then_parse(path: Path, readers) -> list:
    """The baseline: the file's bytes read whole, then parsed from memory."""
    from astropy.io import fits

    with fits.open(io.BytesIO(path.read_bytes()), memmap=False) as hdul:
        return pick_reader(hdul, str(path), readers).read(hdul, str(path))


def read_by_astropy(path: Path, readers) -> list:
    """``read_spectra`` with the fast paths turned off: astropy opens the file itself."""
    from gasnet_plugin.io import readers as readers_module

    fast_paths = readers_module._read_raw
    readers_module._read_raw = lambda *args: (None, None)
    try:
        return read_spectra(path, "auto", readers)
    finally:
        readers_module._read_raw = fast_paths


def best_of(repeat: int, read) -> tuple[float, list]:
    """The best wall time of ``repeat`` calls of ``read``, and what it returned."""
    best, spectra = np.inf, None
    for _ in range(repeat):
        began = time.perf_counter()
        spectra = read()
        best = min(best, time.perf_counter() - began)
    return best, spectra


def same(a: list, b: list) -> bool:
    """The two reads gave the same spectra (flux, inverse variance, wavelengths)."""
    return len(a) == len(b) and all(
        np.array_equal(x.flux.value, y.flux.value)
        and np.array_equal(x.uncertainty.array, y.uncertainty.array)
        and np.array_equal(x.spectral_axis.value, y.spectral_axis.value)
        for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-desi", type=int, default=500)
    parser.add_argument("--mocks", default=None, help="folder of mock FITS files (1000 each)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    readers = PluginHost().readers
    folder = Path(tempfile.mkdtemp(prefix="multispectrum-"))
    try:
        files = {"DESI coadd": big_desi_coadd(DESI_SOURCE, args.n_desi,
                                              folder / "coadd-big.fits")}
        if args.mocks:
            files["mock table"] = sorted(Path(args.mocks).glob("*.fits"))[0]
        else:
            subprocess.run([sys.executable, "-m", "gasnet_plugin.cli", "simulate",
                            str(REPO / "tests" / "data"), "-n", "1000", "--per-file", "1000",
                            "-o", str(folder / "mocks"), "--seed", "3"], check=True,
                           capture_output=True)
            files["mock table"] = sorted((folder / "mocks").glob("*.fits"))[0]
        rows = []
        for kind, path in files.items():
            read_spectra(path, "auto", readers)                       # warm
            probed, spectra = best_of(args.repeat,
                                      lambda p=path: read_spectra(p, "auto", readers))
            whole, baseline = best_of(args.repeat,
                                      lambda p=path: read_whole_then_parse(p, readers))
            n = sum(len(s.meta["rows"]) for s in spectra)
            mb = path.stat().st_size / 2**20
            rows.append((f"{kind}: read_spectra (headers probed)", n, f"{mb:.0f}",
                         f"{1e3 * probed / n:.3f}", f"{whole / probed:.1f}x",
                         "yes" if same(spectra, baseline) else "NO"))
            rows.append((f"{kind}: baseline, file read whole first", n, f"{mb:.0f}",
                         f"{1e3 * whole / n:.3f}", "1x", ""))
            if kind == "DESI coadd":
                # the reader's astropy path from the file (before its fast path existed)
                usual, by_astropy = best_of(args.repeat,
                                            lambda p=path: read_by_astropy(p, readers))
                rows.append((f"{kind}: astropy path, from the file", n, f"{mb:.0f}",
                             f"{1e3 * usual / n:.3f}", f"{whole / usual:.1f}x",
                             "yes" if same(spectra, by_astropy) else "NO"))
    finally:
        shutil.rmtree(folder)
    print(f"machine: {machine()}; one thread")
    print(table(rows, ("what", "spectra", "file MB", "ms/spectrum", "speed-up",
                       "same spectra")))


if __name__ == "__main__":
    main()
