"""Resample throughput: our batch resampler against specutils' FluxConservingResampler.

Both run in this process on the same real spectra (``../shared/data/spectra``: SDSS
legacy and BOSS, DESI coadds, LAMOST DR1; or ``tests/data`` with ``--fixtures``). Ours
resamples the whole set as one batch, single-threaded numpy; specutils resamples a subset
one spectrum at a time (it is slow). Flux agreement is checked on every spectrum specutils
did, wherever both are defined (every contributing input pixel valid).

    python benchmarks/bench_resample.py [--repeat 3] [--reference 40] [--fixtures]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")        # one core for both sides

import astropy.units as u
import numpy as np
from _common import REPO, SHARED, machine, table
from astropy.nddata import InverseVariance
from specutils import SpectralAxis, Spectrum
from specutils.manipulation import FluxConservingResampler

from gasnet_plugin.host.batch import InputBlock, SpectrumBatch
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra
from gasnet_plugin.stages.resample import ResampleStage


def load(fixtures: bool) -> list[Spectrum]:
    """Every 1-D spectrum of the chosen files (2-D blocks split)."""
    if fixtures:
        files = sorted((REPO / "tests" / "data").glob("*.fits"))
    else:
        files = sorted((SHARED / "spectra").glob("[dls]*/*.fits"))
    spectra = []
    for path in files:
        try:
            blocks = read_spectra(path)
        except UnreadableFileError:
            continue                                    # e.g. a catalogue in the folder
        for block in blocks:
            if block.flux.ndim == 1:
                spectra.append(block)
            else:
                spectra.extend(block[i] for i in range(block.flux.shape[0]))
    return spectra


def assemble(spectra: list[Spectrum]) -> SpectrumBatch:
    """The host's part: one batch of the spectra with their label rows."""
    return SpectrumBatch([InputBlock(rows=s.meta["rows"][:1], spectrum=s) for s in spectra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", type=int, default=40,
                        help="spectra specutils resamples (it takes ~0.2 s each)")
    parser.add_argument("--fixtures", action="store_true", help="use tests/data only")
    args = parser.parse_args()

    spectra = load(args.fixtures)
    stage = ResampleStage(use_mask=False)               # specutils has no mask handling
    loglam = stage.loglam
    edges = 10 ** np.concatenate([loglam - 5e-5, loglam[-1:] + 5e-5])
    grid = SpectralAxis(edges * u.AA, bin_specification="edges")

    stage.process(assemble(spectra[:2]))               # load the compiled kernel
    best = best_total = np.inf
    for _ in range(args.repeat):
        start = time.perf_counter()
        batch = assemble(spectra)
        assembled = time.perf_counter()
        stage.process(batch)
        done = time.perf_counter()
        best = min(best, done - assembled)
        best_total = min(best_total, done - start)
    ours_rate = len(spectra) / best
    total_rate = len(spectra) / best_total

    rng = np.random.default_rng(0)
    picked = rng.choice(len(spectra), size=min(args.reference, len(spectra)), replace=False)
    resampler = FluxConservingResampler(extrapolation_treatment="zero_fill")
    worst = 0.0
    compared = 0
    start = time.perf_counter()
    references = []
    for index in picked:
        s = spectra[index]
        plain = Spectrum(flux=s.flux, spectral_axis=s.spectral_axis, uncertainty=s.uncertainty)
        with np.errstate(all="ignore"):
            references.append(resampler(plain, grid))
    reference_time = time.perf_counter() - start
    reference_rate = len(picked) / reference_time

    for index, theirs in zip(picked, references, strict=True):
        s = spectra[index]
        valid_in = (s.uncertainty.represent_as(InverseVariance).array > 0).astype(float)
        with np.errstate(all="ignore"):
            indicator = resampler(Spectrum(flux=valid_in * u.Jy, spectral_axis=s.spectral_axis),
                                  grid).flux.value
        f_ref = theirs.flux.to_value(batch.spectrum.flux.unit) \
            if theirs.flux.unit.is_equivalent(batch.spectrum.flux.unit) else theirs.flux.value
        f_our = batch.arrays["flux"][index].astype(float)
        both = (indicator > 1 - 1e-12) & (batch.arrays["ivar"][index] > 0) & (f_ref != 0)
        if both.any():
            worst = max(worst, float(np.max(np.abs(f_our[both] / f_ref[both] - 1))))
            compared += int(both.sum())

    print(f"machine: {machine()}")
    print(f"data: {len(spectra)} real spectra ({'tests/data' if args.fixtures else SHARED}); "
          f"grid {loglam.size} px; best of {args.repeat}")
    print(table([
        ("gasnet-plugin resample stage", len(spectra), f"{best:.3f}", f"{ours_rate:,.0f}",
         f"{ours_rate / reference_rate:,.0f}"),
        ("  + host batch assembly", len(spectra), f"{best_total:.3f}", f"{total_rate:,.0f}",
         f"{total_rate / reference_rate:,.0f}"),
        ("specutils FluxConservingResampler", len(picked), f"{reference_time:.2f}",
         f"{reference_rate:,.1f}", "1"),
    ], ("resampler", "spectra", "seconds", "spectra/s/core", "ratio vs specutils")))
    print(f"speed-up of the stage: {ours_rate / reference_rate:,.0f}x (target >= 1000x); "
          f"with batch assembly {total_rate / reference_rate:,.0f}x")
    print(f"flux agreement: max |ours/specutils - 1| = {worst:.2e} over {compared:,} pixels "
          f"of {len(picked)} spectra (target <= 1e-5)")


if __name__ == "__main__":
    main()
