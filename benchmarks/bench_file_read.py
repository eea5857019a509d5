"""Reading survey files: milliseconds per file through the fast paths and through astropy.

Every FITS file of the spectra folders of ``../shared/data`` (SDSS/BOSS and legacy
``spec`` files, LAMOST DR1 spectra, DESI coadds), read with ``read_spectra`` as a run
reads them (headers probed, then the reader's fast path where it has one) and, as the
baseline in the same process, with the fast paths turned off (each reader's astropy
path). CPU time of one thread; the two ways alternate ``--repeat`` times and the best of
each is kept. Both must give the same spectra.

    python benchmarks/bench_file_read.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import SHARED, machine, table
from bench_multispectrum_read import read_by_astropy, same

from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra

FOLDERS = ("sdss_boss", "sdss_legacy", "lamost_dr1", "desi")


def spectrum_files(folder: Path, readers) -> list[Path]:
    """The files of ``folder`` that hold spectra (catalogues and redshift files left out)."""
    files = []
    for path in sorted(folder.glob("*.fits*")):
        try:
            read_spectra(path, "auto", readers)
        except UnreadableFileError:
            continue
        files.append(path)
    return files


def cpu_seconds(read, files: list[Path]) -> tuple[float, list]:
    began = time.process_time()
    spectra = [read(path) for path in files]
    return time.process_time() - began, spectra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    readers = PluginHost().readers
    rows = []
    for name in FOLDERS:
        files = spectrum_files(SHARED / "spectra" / name, readers)
        if not files:
            continue
        fast_best, slow_best = np.inf, np.inf
        for _ in range(args.repeat):
            seconds, fast = cpu_seconds(lambda p: read_spectra(p, "auto", readers), files)
            fast_best = min(fast_best, seconds)
            seconds, slow = cpu_seconds(lambda p: read_by_astropy(p, readers), files)
            slow_best = min(slow_best, seconds)
        n_spectra = sum(len(s.meta["rows"]) for spectra in fast for s in spectra)
        agree = all(same(a, b) for a, b in zip(fast, slow, strict=True))
        for label, seconds in (("read_spectra (fast paths)", fast_best),
                               ("astropy paths (baseline)", slow_best)):
            rows.append((f"{name}: {label}", len(files), n_spectra,
                         f"{seconds / len(files) * 1e3:.2f}",
                         f"{seconds / n_spectra * 1e3:.3f}",
                         f"{slow_best / seconds:.2f}x",
                         ("yes" if agree else "NO") if seconds == fast_best else ""))
    print(f"machine: {machine()}; one thread, CPU time, best of {args.repeat}")
    print(table(rows, ("what", "files", "spectra", "ms/file", "ms/spectrum", "speed-up",
                       "same spectra")))


if __name__ == "__main__":
    main()
