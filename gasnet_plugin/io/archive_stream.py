"""Writing a results archive column by column, so that memory does not grow with the run.

A run of ten million spectra has a ~34 GB results table; :class:`StreamedArchiveWriter`
never holds it. Tables arrive in row order (one per results shard, a few thousand rows);
each column's bytes are appended to a spool file of its own (pass 1). When all have come,
the archive is written as one ordinary ASDF file (pass 2): asdf writes the YAML tree of a
*one-row* template of the table (so tags, schemas and the table's layout are asdf's and
asdf-astropy's own), the row count is set in each array's ``shape``, and each column's
block is copied from its spool in chunks, with its MD5 checksum. Memory is one shard plus
a chunk; disk is the archive's size once more while it is written.

The file is the same as an in-memory write would give, block for block (``tests`` compare
the two): one block per column, in the table's column order, uncompressed, checksummed.
Columns that differ between shards are harmonised as :func:`merge_results` does: a column
missing from a shard (its stage failed) gets NaN, -1, False or ``""``; strings get the
widest width seen; numbers the common type.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asdf
import numpy as np
from astropy.table import Table

CHUNK_BYTES = 16 * 2**20
"""Bytes of a column converted and written at a time."""

_BLOCK_MAGIC = b"\xd3BLK"
_BLOCK_HEADER = struct.Struct(">I4sQQQ16s")   # flags, compression, allocated, used, data, md5
_SHAPE = re.compile(rb"(shape: \[)1([,\]])")


def fill_value(dtype: np.dtype) -> Any:
    """The value of a result column for rows that lack it: NaN, -1, False or ``""``."""
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return -1
    if dtype.kind == "b":
        return False
    return ""


@dataclass
class _Column:
    """A column being spooled: its segments' dtypes and row counts, its metadata."""

    trailing: tuple[int, ...]
    description: str | None
    unit: Any
    spool: Path
    segments: list[tuple[np.dtype | None, int]] = field(default_factory=list)
    """(dtype, rows) per table; dtype ``None``: the table lacked the column (fill)."""

    def final_dtype(self) -> np.dtype:
        kinds = [dt for dt, _ in self.segments if dt is not None]
        return np.result_type(*kinds).newbyteorder("<")


class StreamedArchiveWriter:
    """Write a results table that arrives in row-ordered parts, without holding it.

    Parameters
    ----------
    workdir
        A folder for the spool files (removed by :meth:`close`).

    Use :meth:`add` for each part in row order, then :meth:`write`; :meth:`close` (or the
    context manager) removes the spools.
    """

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="columns-", dir=workdir))
        self._columns: dict[str, _Column] = {}
        self.n_rows = 0

    def __enter__(self) -> StreamedArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the spool files."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def add(self, table: Table) -> None:
        """Append the rows of ``table`` (the next rows of the results, in order)."""
        n = len(table)
        for name in table.colnames:
            column = table[name]
            values = np.ascontiguousarray(np.asarray(column))
            spec = self._columns.get(name)
            if spec is None:
                spec = _Column(trailing=values.shape[1:], description=column.description,
                               unit=column.unit,
                               spool=self._dir / f"{len(self._columns):05d}.bin")
                if self.n_rows:      # rows before this part lacked the column
                    spec.segments.append((None, self.n_rows))
                self._columns[name] = spec
            elif values.shape[1:] != spec.trailing:
                raise ValueError(f"column {name}: shape {values.shape[1:]} after "
                                 f"{spec.trailing}")
            with open(spec.spool, "ab") as spool:
                spool.write(values.tobytes())
            spec.segments.append((values.dtype, n))
        for name, spec in self._columns.items():
            if name not in table.colnames:
                spec.segments.append((None, n))
        self.n_rows += n

    def template(self) -> Table:
        """A one-row table with the final columns (order, dtypes, descriptions, units)."""
        table = Table()
        for name, spec in self._columns.items():
            dtype = spec.final_dtype()
            table[name] = np.full((1, *spec.trailing), fill_value(dtype), dtype=dtype)
            table[name].description = spec.description
            table[name].unit = spec.unit
        return table

    def write(self, path: str | os.PathLike[str], tree: dict[str, Any],
              schema_uri: str | None = None) -> Path:
        """Write the archive atomically.

        Parameters
        ----------
        path
            The archive.
        tree
            The ASDF tree with ``tree["results"]`` set to :meth:`template` (the one-row
            table whose rows are filled from the spools); other entries are written as
            given and must hold no arrays.
        schema_uri
            Schema the tree is validated against (with the template's one row; the row
            count does not enter the schemas).
        """
        path = Path(path)
        names = list(self._columns)
        af = asdf.AsdfFile(tree, custom_schema=schema_uri)
        if schema_uri is not None:
            af.validate()
        buffer = io.BytesIO()
        af.write_to(buffer, include_block_index=False)
        raw = buffer.getvalue()
        start = raw.find(_BLOCK_MAGIC)
        if start < 0:
            raise ValueError("the template wrote no blocks")
        header = raw[:start]
        header, n_shapes = _SHAPE.subn(rb"\g<1>" + str(self.n_rows).encode() + rb"\g<2>", header)
        sources = [int(s) for s in re.findall(rb"\n\s+source: (\d+)\n", header)]
        if n_shapes != len(names) or sources != list(range(len(names))):
            raise ValueError(f"template has {n_shapes} arrays / sources {sources[:5]}…, "
                             f"expected one block per column ({len(names)})")
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as out:
                out.write(header)
                for name in names:
                    self._write_block(out, self._columns[name])
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        return path

    def _write_block(self, out: io.BufferedWriter, spec: _Column) -> None:
        """One column's ASDF block: header, then the spool converted chunk by chunk."""
        dtype = spec.final_dtype()
        row_items = int(np.prod(spec.trailing, dtype=np.int64))
        nbytes = self.n_rows * row_items * dtype.itemsize
        out.write(_BLOCK_MAGIC + struct.pack(">H", _BLOCK_HEADER.size))
        header_at = out.tell()
        out.write(_BLOCK_HEADER.pack(0, b"\0\0\0\0", nbytes, nbytes, nbytes, b"\0" * 16))
        md5 = hashlib.md5(usedforsecurity=False)
        with open(spec.spool, "rb") if spec.spool.exists() else contextlib.nullcontext() as spool:
            for seg_dtype, rows in spec.segments:
                done = 0
                step = max(1, CHUNK_BYTES // max(row_items * dtype.itemsize, 1))
                while done < rows:
                    n = min(step, rows - done)
                    if seg_dtype is None:
                        chunk = np.full((n, *spec.trailing), fill_value(dtype), dtype=dtype)
                    else:
                        chunk = np.fromfile(spool, dtype=seg_dtype, count=n * row_items)
                        chunk = chunk.astype(dtype, copy=False)
                    data = np.ascontiguousarray(chunk).tobytes()
                    md5.update(data)
                    out.write(data)
                    done += n
        end = out.tell()
        out.seek(header_at)
        out.write(_BLOCK_HEADER.pack(0, b"\0\0\0\0", nbytes, nbytes, nbytes, md5.digest()))
        out.seek(end)


def _column_dtype(datatype: Any, byteorder: str) -> np.dtype:
    """The numpy dtype of an ASDF ndarray ``datatype`` (``float64``, ``[ucs4, 12]``, ...)."""
    order = "<" if byteorder == "little" else ">"
    if isinstance(datatype, list | tuple):
        kind, width = datatype
        return np.dtype(f"{order}U{width}" if kind == "ucs4" else f"S{width}")
    return np.dtype(str(datatype)).newbyteorder(order)


def read_columns(path: str | os.PathLike[str], names: list[str]) -> dict[str, np.ndarray]:
    """Some columns of an archive's ``results`` table, memory-mapped, without building the
    table (which reads every column): what a ten-million-row archive needs to list, e.g.,
    its failed rows.

    Parameters
    ----------
    path
        An archive (uncompressed blocks, as gasnet writes them).
    names
        The columns wanted.

    Returns
    -------
    dict
        Name → read-only ``np.memmap`` of shape ``(N, ...)``.

    Raises
    ------
    KeyError
        For a name that is not a column.
    """
    path = Path(path)
    with asdf.open(path, _force_raw_types=True, lazy_load=True, memmap=False) as af:
        columns = {str(c["name"]): c["data"] for c in af.tree["results"]["columns"]}
        wanted = {}
        for name in names:
            node = columns[name]
            wanted[name] = (int(node["source"]), _column_dtype(node["datatype"],
                                                               node["byteorder"]),
                            tuple(int(n) for n in node["shape"]))
    offsets = _block_data_offsets(path, max(source for source, _, _ in wanted.values()))
    return {name: np.memmap(path, dtype=dtype, mode="r", offset=offsets[source], shape=shape)
            for name, (source, dtype, shape) in wanted.items()}


def _block_data_offsets(path: Path, last: int) -> list[int]:
    """File offsets of the data of blocks 0…``last`` (walking the block headers)."""
    offsets = []
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
        start = head.find(_BLOCK_MAGIC)
        while start < 0 and len(head) == 1 << 20:   # a tree larger than 1 MB
            more = handle.read(1 << 20)
            if not more:
                break
            position = len(head)
            head += more
            start = head.find(_BLOCK_MAGIC, max(position - 4, 0))
        if start < 0:
            raise ValueError(f"{path}: no data blocks")
        position = start
        for _ in range(last + 1):
            handle.seek(position)
            magic = handle.read(4)
            if magic != _BLOCK_MAGIC:
                raise ValueError(f"{path}: no block at byte {position}")
            (header_size,) = struct.unpack(">H", handle.read(2))
            _flags, compression, allocated, _, _, _ = _BLOCK_HEADER.unpack(
                handle.read(header_size)[:_BLOCK_HEADER.size])
            if compression != b"\0\0\0\0":
                raise ValueError(f"{path}: compressed blocks cannot be memory-mapped")
            offsets.append(position + 6 + header_size)
            position += 6 + header_size + allocated
    return offsets
