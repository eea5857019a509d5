"""Turning the INPUT arguments of a run (files, folders, glob patterns) into a file list."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.io.sdss_plate_names import without_companions

SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
"""File names a folder contributes (case-insensitive)."""


class InputError(ConfigError):
    """An INPUT argument names nothing that exists."""


def _is_spectrum_file(path: Path) -> bool:
    """A folder entry named like a spectrum file. Entries that are not regular files
    (broken links, link loops, FIFOs, folders named ``*.fits``) are kept: the reader gives
    each one a flagged row saying what it is, instead of skipping it silently."""
    return path.name.lower().endswith(SPECTRUM_SUFFIXES)


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The spectrum files of ``folder`` (and of its sub-folders when ``recursive``), sorted
    by path. Links to folders are not followed (a link loop cannot recurse forever)."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_spectrum_file(p))
    found = []
    for root, folders, names in os.walk(folder, followlinks=False):
        found.extend(Path(root) / name for name in names if _is_spectrum_file(Path(name)))
        # a folder (or a link to one) named like a spectrum file is listed, not entered:
        # it gets a flagged row saying what it is
        named_like_files = [name for name in folders if _is_spectrum_file(Path(name))]
        found.extend(Path(root) / name for name in named_like_files)
        folders[:] = sorted(name for name in folders if name not in named_like_files)
    return sorted(found)


def _nothing_found(folder: Path, recursive: bool) -> InputError:
    """The error for a folder without spectrum files, saying what was searched."""
    suffixes = ", ".join(SPECTRUM_SUFFIXES)
    if recursive:
        n_folders = sum(1 for _ in os.walk(folder, followlinks=False))
        return InputError(f"{folder}: no FITS files ({suffixes}) in it or in its "
                          f"{n_folders - 1} sub-folder(s), searched recursively")
    subfolders = [p.name for p in sorted(folder.iterdir()) if p.is_dir()]
    hint = (f"; it has sub-folders ({', '.join(subfolders[:5])}"
            f"{', …' if len(subfolders) > 5 else ''}): read them with --recursive"
            if subfolders else "")
    return InputError(f"{folder}: no FITS files ({suffixes}) in the folder itself "
                      f"(not searched recursively){hint}")


def expand_inputs(inputs: Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """The input files, in a deterministic order.

    Each item is a file (taken as is), a folder (its FITS files, sorted by path; with
    ``recursive`` also those of every sub-folder) or a glob pattern (its matches, sorted).
    A file named twice is read once, at its first place. An ``spZbest``/``spZall`` file
    whose ``spPlate`` file is also an input is left out: the spPlate reader reads it as
    its companion (:mod:`gasnet_plugin.io.sdss_legacy_files`).

    Raises
    ------
    InputError
        When an item matches nothing (the message says what was searched), or nothing is
        given.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _folder_files(path, recursive)
            if not found:
                raise _nothing_found(path, recursive)
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
    return without_companions(list(dict.fromkeys(files)))
