"""Atomic ASDF writes: a file is whole or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import asdf


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
