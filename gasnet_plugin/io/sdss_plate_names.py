"""File names of SDSS per-plate files (no heavy imports: the input listing uses it)."""

from __future__ import annotations

import re
from pathlib import Path

PLATE_MJD = re.compile(r"sp(?:Plate|Zbest|Zall)-(\d{4,})-(\d{5})")
"""``spPlate-PLATE-MJD``, ``spZbest-PLATE-MJD``, ``spZall-PLATE-MJD``: plate and MJD."""


def without_companions(files: list[Path]) -> list[Path]:
    """``files`` less the spZbest/spZall files whose spPlate (same plate and MJD) is also
    among them: the spPlate reader reads those as its companions."""
    def plate_mjd(path: Path) -> tuple[str, str] | None:
        match = PLATE_MJD.search(path.name)
        return (match.group(1), match.group(2)) if match else None

    plates = {plate_mjd(f) for f in files if f.name.startswith("spPlate")}
    return [f for f in files
            if f.name.startswith("spPlate") or (key := plate_mjd(f)) is None
            or key not in plates]


def is_redshift_file(path: str | Path) -> bool:
    """An ``spZbest``/``spZall`` file: the SDSS pipeline's redshifts, no spectra."""
    name = Path(path).name
    return name.startswith(("spZbest-", "spZall-")) and PLATE_MJD.search(name) is not None
