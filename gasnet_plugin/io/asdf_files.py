"""Reading and writing our ASDF files (archives, models, thresholds, checkpoints).

Writes are atomic: a file is whole or absent, never half-written. Reads of validated files
go through one path: the whole file into memory, our schema applied, block checksums
checked, asdf's warnings (unknown tags, ...) turned into refusals, and every failure
reported with the file's name.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asdf
from asdf.exceptions import AsdfWarning, ValidationError

T = TypeVar("T")


def write_asdf_atomically(af: asdf.AsdfFile, path: str | os.PathLike[str],
                          **write_options: Any) -> Path:
    """Write ``af`` under a temporary name beside ``path`` and rename it into place
    (``os.replace`` is atomic on POSIX); the temporary file never outlives a failure."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        af.write_to(temporary, **write_options)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return path


def write_validated(tree: dict[str, Any], path: str | os.PathLike[str], schema_uri: str,
                    error: type[Exception], what: str, **write_options: Any) -> Path:
    """Validate ``tree`` against ``schema_uri`` and write it atomically to ``path``.

    Raises
    ------
    error
        ``"<path>: <what> fail their schema: ..."``; nothing is written.
    """
    path = Path(path)
    af = asdf.AsdfFile(tree, custom_schema=schema_uri)
    try:
        af.validate()
    except ValidationError as exc:
        raise error(f"{path}: {what} fail their schema: {exc.message}") from exc
    return write_asdf_atomically(af, path, **write_options)


MAX_YAML_ALIASES = 10_000
"""YAML aliases an ASDF file's tree may hold (ours hold a handful); millions expand to a
tree that takes minutes and gigabytes to build."""
_ALIAS = re.compile(rb"(?<![\w'\"])\*[A-Za-z0-9_.-]+")


def refuse_alias_bombs(path: Path, error: type[Exception]) -> None:
    """Raise ``error`` if the YAML tree of the ASDF file ``path`` holds more than
    :data:`MAX_YAML_ALIASES` aliases (checked on the raw text, before parsing)."""
    tree = b""
    try:
        with open(path, "rb") as handle:        # the tree only: it ends at "\n...\n"
            while len(tree) < 64 * 1024 * 1024:
                chunk = handle.read(1024 * 1024)
                tree += chunk
                end = tree.find(b"\n...\n", max(len(tree) - len(chunk) - 4, 0))
                if end >= 0:
                    tree = tree[:end]
                    break
                if not chunk:
                    break
    except OSError:
        return                      # the reader reports it
    count = len(_ALIAS.findall(tree))
    if count > MAX_YAML_ALIASES:
        raise error(f"{path}: refused: its tree holds {count:,} YAML aliases (at most "
                    f"{MAX_YAML_ALIASES:,}); a file built to expand without bound")


def read_validated(path: Path, schema_uri: str, extract: Callable[[asdf.AsdfFile], T],
                   error: type[Exception], what: str) -> T:
    """Open ``path`` fully into memory, validate it against ``schema_uri`` (asdf 6 does
    not apply a ``custom_schema`` on open by itself) and with block checksums, and return
    ``extract(af)``.

    Raises
    ------
    error
        ``"<path>: not a valid <what>: ..."`` (schema), ``"<path>: refused: ..."`` (an asdf
        warning, e.g. an unknown tag), ``"<path>: cannot read <what>: ..."`` (anything
        else); an ``error`` raised by ``extract`` passes unchanged.
    """
    refuse_alias_bombs(path, error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AsdfWarning)
            with asdf.open(path, custom_schema=schema_uri, lazy_load=False, memmap=False,
                           validate_checksums=True) as af:
                af.validate()
                return extract(af)
    except error:
        raise
    except ValidationError as exc:
        raise error(f"{path}: not a valid {what}: {exc.message}") from exc
    except AsdfWarning as exc:
        raise error(f"{path}: refused: {exc}") from exc
    except Exception as exc:
        raise error(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc
