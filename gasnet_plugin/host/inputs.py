"""Turning the INPUT arguments of a run (files, folders, glob patterns) into a file list."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from gasnet_plugin.host.config import ConfigError

SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
"""File names a folder contributes (case-insensitive)."""


class InputError(ConfigError):
    """An INPUT argument names nothing that exists."""


def _is_spectrum_file(path: Path) -> bool:
    """A folder entry named like a spectrum file. Entries that are not regular files
    (broken links, link loops, FIFOs, folders named ``*.fits``) are kept: the reader gives
    each one a flagged row saying what it is, instead of skipping it silently."""
    return path.name.lower().endswith(SPECTRUM_SUFFIXES)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input files, in a deterministic order.

    Each item is a file (taken as is), a folder (its FITS files, not recursive, sorted by
    name) or a glob pattern (its matches, sorted). A file named twice is read once, at its
    first place.

    Raises
    ------
    InputError
        When an item matches nothing, or nothing is given.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_spectrum_file(p))
            if not found:
                raise InputError(f"{path}: folder holds no FITS files "
                                 f"({', '.join(SPECTRUM_SUFFIXES)})")
        elif path.exists() or path.is_symlink():
            found = [path]
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            if not found:
                raise InputError(f"{item}: pattern matches no file")
        else:
            raise InputError(f"{item}: no such file or folder")
        files.extend(found)
    if not files:
        raise InputError("no input files given")
    return list(dict.fromkeys(files))
