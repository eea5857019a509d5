"""Guards around a run's output: the path must be writable and nothing of a user's may be
in the way (:func:`check_output_path`), and one run writes an output at a time
(:class:`OutputLock`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gasnet_plugin.io.archive import ArchiveError


class OutputLock:
    """One run per output at a time: an exclusive ``flock`` on ``OUTPUT.lock`` held while
    the run writes (released by the system if the process dies)."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self._handle: Any = None

    def __enter__(self) -> OutputLock:
        import fcntl
        import os

        try:
            self._handle = open(self.path, "a+")
        except OSError as exc:
            raise ArchiveError(f"{self.path.with_suffix('')}: cannot write next to it: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip()
            self._handle.close()
            raise ArchiveError(f"{self.path.with_suffix('')}: another gasnet run is writing "
                               f"it{f' (process {holder})' if holder else ''}; wait for it "
                               "or choose another -o") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()


def check_output_path(output: Path) -> None:
    """Refuse an output path that cannot be written, before anything runs: an empty name,
    a parent that is missing or not a folder or not writable, or an ``OUTPUT.parts`` that
    is not a folder.

    Raises
    ------
    ArchiveError
        Naming the path and what is wrong.
    """
    import os

    if not output.name or str(output) in ("", "."):
        raise ArchiveError("the output path is empty: give -o OUT.asdf")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise ArchiveError(f"{output}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise ArchiveError(f"{output}: cannot write in {parent}")
    if output.is_dir():
        raise ArchiveError(f"{output}: is a folder")
    parts = output.with_name(output.name + ".parts")
    if parts.exists() and not parts.is_dir():
        raise ArchiveError(f"{parts}: exists and is not a shard folder; move it away")
    if parts.is_dir() and not (parts / "manifest.json").is_file() and any(parts.iterdir()):
        raise ArchiveError(f"{parts}: a folder that no gasnet run made (no manifest.json) "
                           "is in the way; nothing in it is deleted: move it away")
