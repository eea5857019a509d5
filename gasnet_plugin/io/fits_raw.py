"""A minimal FITS reader for the few binary-table columns a spectrum reader needs.

astropy builds a ``Column`` object for every column of a table HDU it opens; a BOSS
``spec`` file's HDU2 has about 240, and that costs two thirds of reading the file
(docs/readers.rst measures it). This walks the file's headers itself (80-character cards
in 2880-byte blocks), reads the structural keywords it needs from the cards' text, builds
an ``astropy.io.fits.Header`` only when asked (:attr:`RawHDU.header`), and reads only the
requested columns of a binary table as one numpy view of the table's bytes (a structured
dtype with the columns' offsets), applying ``TSCALn``/``TZEROn``.

It handles plain, uncompressed files with fixed-width numeric and string columns, and
refuses (``RawFitsError``) anything else (compressed or gzipped files, variable-length
arrays, bit columns, a truncated file): the readers then fall back to astropy, so
behaviour never differs, only speed.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from astropy.io import fits

BLOCK = 2880
"""Bytes of a FITS block."""
CARD = 80
"""Bytes of a header card."""
_END = b"END" + b" " * 77
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])")
_CODES = {"L": "S1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}


class RawFitsError(ValueError):
    """The file is not something this minimal reader handles (use astropy instead)."""


class TruncatedFitsError(RawFitsError):
    """The headers declare more data than the file holds: no reader should allocate it."""


_VALUE = re.compile(r"^\s*(?:'((?:[^']|'')*)'|([^/]*))")


def parse_value(field: str) -> str | int | float | bool:
    """The value of a card from its value field (the text after ``"= "``): a string without
    its quotes and trailing blanks, a number as int or float, T/F as bool."""
    match = _VALUE.match(field)
    if match.group(1) is not None:
        return match.group(1).replace("''", "'").rstrip()
    word = (match.group(2) or "").strip()
    if word in ("T", "F"):
        return word == "T"
    try:
        return int(word)
    except ValueError:
        try:
            return float(word.replace("D", "E"))
        except ValueError:
            return word


class HeaderCards(Mapping[str, "str | int | float | bool"]):
    """Keyword → value of the value cards of a header's text, each value parsed
    (:func:`parse_value`) when first asked for: a BOSS HDU2 has ~900 cards, of which a
    reader needs a few dozen. A keyword given twice keeps its last value."""

    def __init__(self, text: str) -> None:
        self._fields = {text[i:i + 8].rstrip(): text[i + 10:i + CARD]
                        for i in range(0, len(text), CARD) if text[i + 8:i + 10] == "= "}
        self._values: dict[str, str | int | float | bool] = {}

    @property
    def fields(self) -> Mapping[str, str]:
        """Keyword → the card's unparsed value field (the text after ``"= "``)."""
        return self._fields

    def __getitem__(self, keyword: str) -> str | int | float | bool:
        if keyword not in self._values:
            self._values[keyword] = parse_value(self._fields[keyword])
        return self._values[keyword]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass
class RawHDU:
    """One HDU: its header's text and cards, and where its data lie in the file's bytes."""

    text: str
    cards: HeaderCards
    data_start: int
    data_size: int

    @property
    def header(self) -> fits.Header:
        """The header as astropy parses it (built on first use)."""
        if not hasattr(self, "_header"):
            self._header = fits.Header.fromstring(self.text)
        return self._header


def read_hdus(raw: bytes) -> list[RawHDU]:
    """Every HDU of the FITS file ``raw``: headers parsed, data located (not read)."""
    return read_hdus_from(io.BytesIO(raw), len(raw))


def read_hdus_from(handle: BinaryIO, size: int) -> list[RawHDU]:
    """Every HDU of the FITS file open in ``handle`` (``size`` bytes long): the headers
    read and parsed, the data located and skipped, not read (a reader that needs them
    reads the file's bytes, whose offsets ``data_start`` gives)."""
    handle.seek(0)
    if handle.read(9) != b"SIMPLE  =":
        raise RawFitsError("not a plain FITS file")
    hdus, position = [], 0
    while position + BLOCK <= size:
        handle.seek(position)
        header = bytearray()
        end = -1
        while end < 0:                  # header blocks up to the one with the END card
            block = handle.read(BLOCK)
            if len(block) < BLOCK:
                raise RawFitsError("a header without END")
            end = block.find(_END)
            while end >= 0 and end % CARD:   # the END card on a card boundary (a string
                end = block.find(_END, end + 1)   # value may hold its text)
            if end >= 0:
                end += len(header)
            header += block
        start = position + len(header)                       # data start
        text = header[:end + CARD].decode("ascii")
        cards = HeaderCards(text)
        naxis = int(cards.get("NAXIS", 0))
        data_size = 0
        if naxis:
            data_size = abs(int(cards["BITPIX"])) // 8 * int(cards.get("GCOUNT", 1)) * (
                int(cards.get("PCOUNT", 0))
                + int(np.prod([int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)])))
        if start + data_size > size:
            raise TruncatedFitsError(f"file is truncated: HDU {len(hdus)} declares "
                                     f"{data_size:,} bytes of data, the file holds "
                                     f"{max(size - start, 0):,} after its header")
        hdus.append(RawHDU(text, cards, start, data_size))
        position = start + -(-data_size // BLOCK) * BLOCK
    if not hdus:
        raise RawFitsError("no HDU")
    return hdus


@dataclass(frozen=True)
class TableLayout:
    """A binary table's columns: names (``TTYPEn``), formats (``TFORMn``) and the byte
    offset of each within a row, in column order."""

    names: list[str]
    formats: list[str]
    offsets: list[int]
    row_bytes: int


def table_layout(hdu: RawHDU) -> TableLayout:
    """The columns of binary table ``hdu``, found once and kept on it (a BOSS HDU2 has
    ~240 columns, whose offsets a read needs up to the last column it reads; the
    ``TTYPEn``/``TFORMn`` value fields are taken from the cards as split when the header
    was read, and each distinct format is parsed once)."""
    cached = getattr(hdu, "_layout", None)
    if cached is not None:
        return cached
    if str(hdu.cards.get("XTENSION", "")).strip() != "BINTABLE":
        raise RawFitsError("not a binary table")
    n_columns = int(hdu.cards["TFIELDS"])
    fields = hdu.cards.fields
    try:
        formats = [_string_value(fields[f"TFORM{i}"]) for i in range(1, n_columns + 1)]
    except KeyError as missing:
        raise RawFitsError(f"no {missing.args[0]} card") from None
    names = [_string_value(fields.get(f"TTYPE{i}", "''")).strip()
             for i in range(1, n_columns + 1)]
    offsets, offset = [], 0
    for tform in formats:
        offsets.append(offset)
        offset += _field_bytes(tform)
    layout = TableLayout(names, formats, offsets, offset)
    hdu._layout = layout
    return layout


def _string_value(field: str) -> str:
    """A card's value field as text: a quoted string without its quotes and trailing
    blanks (:func:`parse_value`), anything else as written."""
    if field.startswith("'"):           # the usual case, without a regular expression
        end = field.find("'", 1)
        if end > 0 and field[end + 1:end + 2] != "'":
            return field[1:end].rstrip()
    return str(parse_value(field))


def extension_index(hdus: list[RawHDU]) -> dict[str, int]:
    """EXTNAME (upper case) → HDU index, the first HDU of each name."""
    out: dict[str, int] = {}
    for index, hdu in enumerate(hdus):
        name = str(hdu.cards.get("EXTNAME", "")).strip().upper()
        if name:
            out.setdefault(name, index)
    return out


def column_names(hdu: RawHDU) -> list[str]:
    """The names of a binary table's columns (``TTYPEn``), in order."""
    return list(table_layout(hdu).names)


def read_columns(raw: bytes, hdu: RawHDU, names: list[str]) -> dict[str, np.ndarray]:
    """The columns ``names`` (matched without regard to case) of binary table ``hdu``,
    as astropy's ``hdu.data[name]`` gives them (scaled, strings without trailing blanks,
    native byte order)."""
    header = hdu.cards
    layout = table_layout(hdu)
    lookup = {name.lower(): i for i, name in enumerate(layout.names)}
    n_rows, width = int(header["NAXIS2"]), int(header["NAXIS1"])
    if layout.row_bytes != width:
        raise RawFitsError("columns do not add up to the row width")
    out = {}
    for name in names:
        if name.lower() not in lookup:
            raise RawFitsError(f"no column {name}")
        i = lookup[name.lower()]
        repeat, code = _parse_tform(layout.formats[i])
        if code not in _CODES and code != "A":
            raise RawFitsError(f"column {name}: format {code} not handled")
        fmt = f"S{repeat}" if code == "A" else (
            _CODES[code] if repeat == 1 else (_CODES[code], (repeat,)))
        dtype = np.dtype({"names": ["v"], "formats": [fmt], "offsets": [layout.offsets[i]],
                          "itemsize": width})
        values = np.frombuffer(raw, dtype=dtype, count=n_rows, offset=hdu.data_start)["v"]
        if code == "A":
            out[name] = np.char.rstrip(np.char.decode(values, "ascii"))
            continue
        if code == "L":
            out[name] = values == b"T"
            continue
        scale, zero = header.get(f"TSCAL{i + 1}", 1), header.get(f"TZERO{i + 1}", 0)
        if code in "BIJK" and scale == 1 and zero == 2 ** (8 * values.dtype.itemsize - 1):
            unsigned = np.dtype(f"u{values.dtype.itemsize}")   # the unsigned-integer idiom
            out[name] = (values.astype(values.dtype.newbyteorder("=")).view(unsigned)
                         ^ np.array(zero, dtype=unsigned))
        elif scale != 1 or zero != 0:
            out[name] = values.astype(np.float64) * scale + zero
        else:
            out[name] = values.astype(values.dtype.newbyteorder("="))
    return out


def read_image(raw: bytes, hdu: RawHDU, what: str, bitpix: int,
               dtype: str) -> np.ndarray:
    """The data of image ``hdu`` in place (a view of ``raw``, no copy), ``(n, P)`` (``n`` =
    1 for a 1-D image), its stored values read as ``dtype`` (e.g. ``">f4"``; ``"=u4"``
    for a caller that swaps 32-bit words itself). The image must have ``BITPIX``
    ``bitpix``, one or two axes and, for floats, no scaling; anything else raises
    :class:`RawFitsError` naming ``what``."""
    cards = hdu.cards
    if str(cards.get("XTENSION", "IMAGE")).strip() != "IMAGE" or int(cards.get("PCOUNT", 0)):
        raise RawFitsError(f"{what}: not an image")
    naxis = int(cards.get("NAXIS", 0))
    if naxis not in (1, 2):
        raise RawFitsError(f"{what}: {naxis} axes")
    if int(cards["BITPIX"]) != bitpix:
        raise RawFitsError(f"{what}: BITPIX {cards['BITPIX']}, not {bitpix}")
    if bitpix < 0 and (float(cards.get("BSCALE", 1)) != 1 or float(cards.get("BZERO", 0)) != 0):
        raise RawFitsError(f"{what}: scaled values not handled")
    shape = (1, int(cards["NAXIS1"])) if naxis == 1 else (int(cards["NAXIS2"]),
                                                          int(cards["NAXIS1"]))
    return np.frombuffer(raw, dtype=dtype, count=shape[0] * shape[1],
                         offset=hdu.data_start).reshape(shape)


def _parse_tform(tform: str) -> tuple[int, str]:
    match = _TFORM.match(tform)
    if not match:
        raise RawFitsError(f"TFORM {tform!r} not understood")
    return int(match.group(1) or 1), match.group(2)


@functools.lru_cache(maxsize=256)
def _field_bytes(tform: str) -> int:
    repeat, code = _parse_tform(tform)
    sizes = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8,
             "M": 16, "P": 8, "Q": 16}
    if code == "X":
        return -(-repeat // 8)
    return repeat * sizes[code] if code not in "PQ" else sizes[code]
