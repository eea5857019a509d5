"""Speed of the gasnet3 engine and of resample + scan + reconstruct, per spectrum per core.

One torch thread, batch mode, model loading excluded (setup before timing). The spectra
are the real labelled spectra of ``../shared/data`` (SDSS/BOSS, DESI, LAMOST, GaSNet-III
rows), read once; the best of ``--repeat`` runs is reported. The baseline, run in the same
process on a few of the same spectra, is GaSNet-III's own way of computing the χ² curves:
two direct 'same'-padded ``conv1d`` per spectrum and class (its ``chi_square_curve``),
after the same preprocessing and encoder. ``--device cuda`` times the GPU when there is one.
On the CPU a second table times the exact refit alone on the same rows through its
compiled kernels and through its torch products (the path of other devices), in the same
process.

    python benchmarks/bench_gasnet3.py [--batch 256] [--repeat 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import re
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from _common import SHARED, machine, table

from gasnet_plugin.engines.eigen_preprocess import preprocess
from gasnet_plugin.engines.eigen_scan import encode
from gasnet_plugin.engines.gasnet3 import Gasnet3Engine
from gasnet_plugin.engines.protocol import EngineInput
from gasnet_plugin.host.batch import InputBlock, SpectrumBatch
from gasnet_plugin.host.plugins import PluginHost
from gasnet_plugin.io.readers import UnreadableFileError, read_spectra
from gasnet_plugin.stages.base import RunContext
from gasnet_plugin.stages.reconstruct import ReconstructStage
from gasnet_plugin.stages.redshift_scan import RedshiftScanStage
from gasnet_plugin.stages.resample import ResampleStage


def real_blocks() -> list[InputBlock]:
    """Every labelled spectrum's file, read into input blocks (once)."""
    import csv

    with open(SHARED / "labels.csv") as handle:
        paths = sorted({re.sub(r"#.*$", "", row["path"]) for row in csv.DictReader(handle)})
    blocks = []
    for path in paths:
        try:
            for spectrum in read_spectra(SHARED / path):
                blocks.append(InputBlock(rows=spectrum.meta["rows"], spectrum=spectrum))
        except UnreadableFileError:
            continue
    return blocks


def best_of(repeat: int, run) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def direct_gasnet3_curves(engine: Gasnet3Engine, spectra: EngineInput) -> None:
    """GaSNet-III's χ² curves: per spectrum and class, two direct 'same' conv1d (on the
    engine's device, waiting for the GPU's last kernel there)."""
    device = engine.device
    loglam = torch.from_numpy(spectra.loglam).to(device)
    pre = preprocess(torch.from_numpy(spectra.flux).to(device),
                     torch.from_numpy(spectra.ivar).to(device), loglam, 5, masked_flux="keep")
    for scan in engine._scans:
        model, _ = encode(scan.encoder, scan.eigenvectors, pre.fluctuation)
        for i in range(model.shape[0]):
            m, f, w = model[i:i + 1, None], pre.fluctuation[i:i + 1, None], pre.ivar[i:i + 1, None]
            ivar_term = torch.nn.functional.conv1d(m**2, w, padding="same")
            constant = torch.sum(f**2 * w, dim=-1, keepdim=True)
            correlation = torch.nn.functional.conv1d(m, 2 * f * w, padding="same")
            _ = torch.argmin(ivar_term + constant - correlation)
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_exact_refit(engine: Gasnet3Engine, spectra: EngineInput, repeat: int,
                     ) -> list[tuple[str, ...]]:
    """The exact refit of every class from its χ² curve's minimum, through the compiled
    CPU kernels and through the torch products (the path of other devices), on the same
    preprocessed rows; empty unless the engine runs on the CPU."""
    from gasnet_plugin.engines.eigen_refit import refit
    from gasnet_plugin.engines.gasnet3_measure import _curves

    if engine.device.type != "cpu":
        return []
    n_rows = spectra.flux.shape[0]
    with torch.no_grad():
        pre = preprocess(torch.from_numpy(np.ascontiguousarray(spectra.flux, np.float32)),
                         torch.from_numpy(np.ascontiguousarray(spectra.ivar, np.float32)),
                         torch.from_numpy(spectra.loglam), engine.model.preprocessing["poly_deg"],
                         engine.params["masked_flux"])
        lags = [torch.argmin(curve, dim=1).numpy() for curve in _curves(engine, pre)]
    use = np.ones(n_rows, dtype=bool)
    loglam0 = engine.model.obs_loglam[0]
    timed = {}
    for label, compiled in (("compiled CPU kernels (default on the CPU)", True),
                            ("torch products (the path of other devices)", False)):
        def run(compiled: bool = compiled) -> None:
            for scan, lag in zip(engine._scans, lags, strict=True):
                refit(scan, pre, lag, use, loglam0, compiled=compiled)

        run()
        timed[label] = best_of(repeat, run)
    baseline = timed["torch products (the path of other devices)"]
    return [(label, str(n_rows), f"{seconds:.3f}", f"{seconds / n_rows * 1e3:.3f}",
             f"{baseline / seconds:.2f}x") for label, seconds in timed.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=int, default=8, help="spectra for the baseline")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)

    blocks = real_blocks()
    context = RunContext(plugins=PluginHost(), device=args.device, options={"output": {}})
    resample = ResampleStage()
    scan = RedshiftScanStage()
    scan.setup(context)
    reconstruct = ReconstructStage()

    def batch_of_blocks() -> SpectrumBatch:
        return SpectrumBatch(blocks)

    whole = batch_of_blocks()
    resample.process(whole)
    n_all = len(whole)
    usable = np.flatnonzero(whole.usable)
    reps = -(-args.batch // usable.size)
    pick = np.tile(usable, reps)[: args.batch]
    flux = np.asarray(whole.spectrum.flux.value)[pick]
    ivar = np.asarray(whole.spectrum.uncertainty.array)[pick]
    loglam = whole.spectrum.meta["loglam"]
    spectra = EngineInput(flux, ivar, loglam)

    rows = []
    engines = {}
    for label, params in (("gasnet3 engine (default: refit 3, chunks of 64)", {}),
                          ("gasnet3 engine, the batch as one chunk", {"chunk_rows": args.batch}),
                          ("gasnet3 scan only (n_refit 0)", {"n_refit": 0}),
                          ("gasnet3 scan only, the batch as one chunk",
                           {"n_refit": 0, "chunk_rows": args.batch})):
        engine = Gasnet3Engine(**params)
        engine.setup(device=args.device)
        engine.measure(spectra)                                      # warm up
        seconds = best_of(args.repeat, lambda e=engine: e.measure(spectra))
        engines[label] = engine
        rows.append((label, args.batch, f"{seconds:.3f}", f"{seconds / args.batch * 1e3:.3f}"))

    def pipeline() -> None:
        batch = batch_of_blocks()
        resample.process(batch)
        scan.process(batch)
        reconstruct.process(batch)

    pipeline()
    seconds = best_of(args.repeat, pipeline)
    rows.append(("resample + scan + reconstruct (stages)", n_all, f"{seconds:.3f}",
                 f"{seconds / n_all * 1e3:.3f}"))

    refit_rows = time_exact_refit(engines["gasnet3 engine (default: refit 3, chunks of 64)"],
                                  spectra, args.repeat)

    small = EngineInput(flux[: args.baseline], ivar[: args.baseline], loglam)
    baseline_engine = engines["gasnet3 scan only (n_refit 0)"]
    seconds = best_of(1, lambda: direct_gasnet3_curves(baseline_engine, small))
    baseline_ms = seconds / args.baseline * 1e3
    rows.append(("baseline: GaSNet-III direct conv1d curves", args.baseline, f"{seconds:.3f}",
                 f"{baseline_ms:.3f}"))
    rows = [(*r, f"{baseline_ms / float(r[3]):,.0f}x") for r in rows]

    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(f"machine: {machine()}; device {device}")
    print(f"data: {n_all} real spectra from {SHARED} (engine rows: batches of {args.batch} "
          f"drawn from them); best of {args.repeat}; model loading excluded")
    print(table(rows, ("what", "spectra", "seconds", "ms/spectrum/core", "speed-up vs baseline")))
    if refit_rows:
        print("\nthe exact refit alone: every class refined from its curve minimum, same rows")
        print(table(refit_rows, ("exact fits through", "spectra", "seconds", "ms/spectrum/core",
                                 "speed-up vs torch")))


if __name__ == "__main__":
    main()
