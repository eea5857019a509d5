"""How the text columns of results are stored: ASCII bytes where the text allows.

numpy keeps a text column at the width of its longest value, four bytes per character
(UCS-4). In a results row of the real spectra (3.4 kB) two thirds were text, and
``ZWARN_REASON`` alone is as wide as the longest reason of the whole run (a bad file's
path and error message: ~260 characters, 1 kB in every row). A ten-million-row archive
carried ~23 GB of four-byte characters, and every shard of a run held its rows at that
size while it filled.

So results are *stored* (the tables a batch hands to the shards, the shards, the
archive's spools and the archive file) with each text column as ASCII bytes (numpy
``S``; ASDF's ``[ascii, N]`` datatype; the FITS convention) when every value in it is
ASCII, and as UCS-4 (``U``, ASDF's ``ucs4``) otherwise: nothing is escaped or lost. Where
parts differ (one batch had a non-ASCII path), stacking them gives UCS-4 (numpy's
promotion of ``S`` and ``U``), to which ASCII bytes widen exactly. The messages gasnet
itself writes into ``ZWARN_REASON`` are ASCII ("chi2", "Angstrom") to keep it compact.

What a user *reads* is text as before: :func:`~gasnet_plugin.io.archive.read_archive`
and :meth:`~gasnet_plugin.host.runner.Pipeline.run` give ``str`` columns
(:func:`text_columns_as_str`). The memory-mapped columns of
:func:`~gasnet_plugin.io.archive_stream.read_columns` (for archives too large to read)
are the stored bytes: :func:`as_text` turns an element into ``str``. Opened with asdf
alone, the table has bytes columns; astropy decodes their elements to ``str``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import MaskedColumn, Table


def ascii_or_unicode(values: np.ndarray) -> np.ndarray:
    """A ``U`` array (any shape) as ASCII bytes of the same width in characters when every
    value is ASCII; otherwise (or for another dtype) ``values`` itself."""
    if values.dtype.kind != "U":
        return values
    try:
        return values.astype(f"S{max(values.dtype.itemsize // 4, 1)}")
    except UnicodeEncodeError:
        return values


def as_unicode(values: np.ndarray) -> np.ndarray:
    """A bytes ``S`` array (any shape) as ``U`` of the same width, decoded as ASCII (as
    UTF-8, invalid bytes replaced, if a file holds other bytes); other dtypes unchanged."""
    if values.dtype.kind != "S":
        return values
    width = max(values.dtype.itemsize, 1)
    try:
        return values.astype(f"U{width}")
    except UnicodeDecodeError:
        return np.char.decode(values, "utf-8", errors="replace").astype(f"U{width}")


def _convert_text_columns(table: Table, kind: str, convert: Any) -> Table:
    """Convert the plain columns of dtype kind ``kind`` (masked ones, which a plug-in
    stage may add, are left as they are: their mask would not survive)."""
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind != kind or isinstance(column, MaskedColumn):
            continue
        converted = convert(np.asarray(column))
        if converted.dtype.kind != kind:
            description, unit, meta = column.description, column.unit, column.meta
            table.replace_column(name, converted, copy=False)
            table[name].description, table[name].unit = description, unit
            table[name].meta.update(meta)
    return table


def compact_text_columns(table: Table) -> Table:
    """Store every text column of ``table`` as ASCII bytes where all its values are ASCII,
    in place (order, descriptions and units kept). Returns ``table``."""
    return _convert_text_columns(table, "U", ascii_or_unicode)


def text_columns_as_str(table: Table) -> Table:
    """Every bytes column of ``table`` as ``str`` (``U``), in place: the table as a user
    reads it. Returns ``table``."""
    return _convert_text_columns(table, "S", as_unicode)


def as_text(value: Any) -> str:
    """One element of a text column as ``str``: bytes are decoded as :func:`as_unicode`
    decodes them (ASCII, or UTF-8 with invalid bytes replaced), anything else is passed
    through ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
