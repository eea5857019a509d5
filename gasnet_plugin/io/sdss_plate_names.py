"""File names of SDSS per-plate files (no heavy imports: the input listing uses it)."""

from __future__ import annotations

import re
from pathlib import Path

PLATE_MJD = re.compile(r"sp(?:Plate|Zbest|Zall)-(\d{4,})-(\d{5})")
"""``spPlate-PLATE-MJD``, ``spZbest-PLATE-MJD``, ``spZall-PLATE-MJD``: plate and MJD."""


def is_companion(path: Path, inputs: set[Path]) -> bool:
    """``path`` is an spZbest/spZall file whose spPlate is among ``inputs``."""
    match = PLATE_MJD.search(path.name)
    if not match or path.name.startswith("spPlate"):
        return False
    plate = f"spPlate-{match.group(1)}-{match.group(2)}"
    return any(other.name.startswith(plate) for other in inputs)


def is_redshift_file(path: str | Path) -> bool:
    """An ``spZbest``/``spZall`` file: the SDSS pipeline's redshifts, no spectra."""
    name = Path(path).name
    return name.startswith(("spZbest-", "spZall-")) and PLATE_MJD.search(name) is not None
