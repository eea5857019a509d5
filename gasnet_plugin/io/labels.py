"""The identifier and survey-label columns every reader fills, one row per spectrum.

Readers attach these rows to each :class:`~specutils.Spectrum` they return as
``spectrum.meta["rows"]`` (an :class:`~astropy.table.Table` with one row per spectrum:
one row for a 1-D spectrum, ``n`` rows for a 2-D ``(n, P)`` spectrum). The host copies them
into the results table, so a run can be scored with no extra files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import Table

# name: (dtype, fill value for "not in the file", description)
LABEL_COLUMNS: dict[str, tuple[Any, Any, str]] = {
    "SOURCE": (str, "", "path of the input file"),
    "HDU": (np.int16, -1, "index of the HDU the spectrum came from (-1: none)"),
    "ROW": (np.int32, -1, "row of the spectrum within its HDU (-1: none)"),
    "TARGETID": (np.int64, -1, "survey target identifier, where the file has one (-1: none)"),
    "OBJECT": (str, "", "target name as the file gives it (empty if none)"),
    "SURVEY": (str, "", "survey the file comes from (SDSS, DESI, LAMOST; empty if unknown)"),
    "SURVEY_CLASS": (str, "", "class given by the survey pipeline"),
    "SURVEY_SUBCLASS": (str, "", "subclass given by the survey pipeline"),
    "SURVEY_Z": (np.float64, np.nan, "redshift given by the survey pipeline"),
    "SURVEY_ZERR": (np.float64, np.nan, "redshift error given by the survey pipeline"),
    "SURVEY_ZWARNING": (np.int64, -1, "survey pipeline redshift warning bits (-1: none)"),
    "SURVEY_SN_MEDIAN_ALL": (np.float32, np.nan, "survey's median S/N per pixel (SDSS)"),
    "AIR_TO_VACUUM": (np.bool_, False, "the file's wavelengths were in air and were "
                      "converted to vacuum by the reader"),
}


def _clean(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return value.strip()
    return value


def printable_path(path: str) -> str:
    """A path as text that can be stored anywhere (YAML, ASDF, a table): bytes of a file
    name that are not UTF-8 (kept by ``os.fsdecode`` as surrogates) are written as
    ``\\xNN`` escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def label_rows(n: int, source: str, **columns: Any) -> Table:
    """A table of ``n`` label rows with every column of :data:`LABEL_COLUMNS`.

    Parameters
    ----------
    n
        Number of spectra.
    source
        Path of the input file (same for every row).
    **columns
        Values for other columns of :data:`LABEL_COLUMNS`: a scalar (same for every row) or a
        sequence of length ``n``. Missing columns get their fill value.

    Raises
    ------
    KeyError
        For a column that is not a label column.
    """
    unknown = set(columns) - set(LABEL_COLUMNS)
    if unknown:
        raise KeyError(f"not label columns: {sorted(unknown)}")
    # the table made at once from the arrays, then described: adding the columns one by
    # one costs twice as much, and this runs once per file read
    table = Table({name: _label_column(
        name, printable_path(source) if name == "SOURCE" else columns.get(name, fill), n)
        for name, (_, fill, _) in LABEL_COLUMNS.items()}, copy=False)
    for name, (_, _, description) in LABEL_COLUMNS.items():
        table.columns[name].info.description = description
    return table


def set_labels(rows: Table, **columns: Any) -> None:
    """Replace label columns of ``rows`` in place (a scalar or one value per row); unlike
    ``rows[name] = value``, a longer string is not cut to the column's old width."""
    for name, value in columns.items():
        if name not in LABEL_COLUMNS:
            raise KeyError(f"not a label column: {name}")
        rows.replace_column(name, _label_column(name, value, len(rows)))
        rows[name].description = LABEL_COLUMNS[name][2]


def _label_column(name: str, value: Any, n: int) -> np.ndarray:
    """The ``n`` values of label column ``name`` from a scalar or a sequence."""
    dtype = LABEL_COLUMNS[name][0]
    if np.ndim(value) == 0:
        value = [_clean(value)] * n
    else:
        value = [_clean(v) for v in value]
        if len(value) != n:
            raise ValueError(f"column {name}: {len(value)} values for {n} spectra")
    if dtype is str:
        return np.array(value, dtype=str) if n else np.array([], dtype="U1")
    return np.array(value, dtype=dtype)
