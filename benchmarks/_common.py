"""Helpers shared by the benchmarks: where the data is, and the machine line."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GASNET_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    """One line describing the machine the numbers were taken on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}")


def table(rows: list[tuple], header: tuple) -> str:
    """A plain-text table."""
    cells = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def split_half(classes, seed: int):
    """Boolean training mask: half of each class (GALAXY, QSO, STAR), seeded — the split
    every training benchmark uses, so the other half is never trained on."""
    import numpy as np

    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    train = np.zeros(classes.size, dtype=bool)
    for name in ("GALAXY", "QSO", "STAR"):
        members = np.flatnonzero(classes == name)
        train[rng.choice(members, size=members.size // 2, replace=False)] = True
    return train, rng


def same_table(a, b) -> bool:
    """Every column of astropy tables ``a`` and ``b`` bit for bit (NaN equal to NaN)."""
    import numpy as np

    return a.colnames == b.colnames and all(
        np.array_equal(np.asarray(a[c]), np.asarray(b[c]),
                       equal_nan=np.asarray(a[c]).dtype.kind == "f") for c in a.colnames)
