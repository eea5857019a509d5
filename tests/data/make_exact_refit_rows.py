"""Make ``exact-refit-qso-rows.npz``: the rows of one exact refit's walk on real spectra.

The 20 QSO-class rows (float32 fluctuation and ivar on the engine's grid, and the centre
lags the walk starts from) that the default pipeline on ``../shared/data/spectra``, its
files listed as ``gasnet run`` lists them, hands to the exact refit's walk in its 18th
refit. They hold the DESI QSO whose last bit depended on whether the kernels had just been
compiled (when the walk was one compiled function calling the others). Run from the
repository root with ``GASNET_SHARED_DATA`` set::

    python tests/data/make_exact_refit_rows.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import gasnet_plugin.engines.eigen_refit as eigen_refit
from gasnet_plugin.api import as_config
from gasnet_plugin.host.inputs import expand_inputs
from gasnet_plugin.host.runner import Pipeline

OUT = Path(__file__).parent / "exact-refit-qso-rows.npz"
CALL = 18


def main() -> None:
    shared = Path(os.environ["GASNET_SHARED_DATA"])
    walk = eigen_refit._walk
    calls = [0]

    def recording_walk(scan, f, w, s_now, chis, coefs, compiled):
        calls[0] += 1
        if calls[0] == CALL:
            np.savez_compressed(OUT, fluctuation=f.numpy(), ivar=w.numpy(),
                                lags=np.asarray(s_now, dtype=np.int64))
        walk(scan, f, w, s_now, chis, coefs, compiled)

    eigen_refit._walk = recording_walk
    config = as_config(Path(__file__).parents[2] / "example_configs" / "default.yaml")
    config.progress = False
    files = expand_inputs([shared / "spectra"])      # as ``gasnet run`` lists them
    pipeline = Pipeline(config)
    for _ in pipeline.stream(files):
        pass


if __name__ == "__main__":
    main()
