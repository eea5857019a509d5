"""Results shards: how a run streams to disk, resumes after a kill, and shares work.

A run writing ``OUTPUT`` keeps its shards in ``OUTPUT.parts/``::

    manifest.json          what run the shards belong to (config, inputs, shard size)
    shard-000000.asdf      rows [0, n0) of the results, in input order
    shard-000512.asdf      rows [512, 512 + n1): a shard is named by its first row
    ...

A shard holds whole batches of the run's global order, at most ``S`` rows (the config's
``spectra_per_shard``): the local executor closes one every ``S`` spectra, every
``shard_seconds`` or when it is stopped (SIGTERM, Ctrl-C), a Dask worker computes one
of ``S`` rows (or what is left of a gap). Shards start on batch boundaries, so a resumed
or distributed run forms the same batches as one from the beginning. Each shard is an ASDF
file (schema ``results_shard-1.0.0``) written atomically, so a shard on disk is complete,
and writing one again (a retried task) replaces it. Its record says where the next
spectrum is (the cursor a resumed run restarts from). The merge checks that the shards
cover every row exactly once before the archive is written; then the folder is removed.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asdf
from asdf.exceptions import ValidationError
from astropy.table import Table

from gasnet_plugin.host.batch_outputs import BatchOutput, Cursor, assemble_outputs
from gasnet_plugin.io.archive import ArchiveError, SpectrumArrays, arrays_in_memory
from gasnet_plugin.io.asdf_extension import URI_BASE
from gasnet_plugin.io.asdf_files import read_validated, write_asdf_atomically

if TYPE_CHECKING:
    from gasnet_plugin.host.config import PipelineConfig

SHARD_SCHEMA_URI = URI_BASE + "schemas/results_shard-1.0.0"
MANIFEST_NAME = "manifest.json"
SHARD_NAME = re.compile(r"^shard-(\d{6,})\.asdf$")

RUN_KEYS_FREE_TO_CHANGE = ("executor", "progress", "shard_seconds", "read_ahead")
"""Config keys a resumed run may change: they decide where and how visibly the work runs,
not what it computes."""


def parts_folder(output: str | Path) -> Path:
    """Where the shards of a run writing ``output`` live: ``OUTPUT.parts`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def same_run(recorded_config: dict[str, Any], config: PipelineConfig) -> bool:
    """Whether an archive's recorded config computes what ``config`` computes."""
    def settings(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in RUN_KEYS_FREE_TO_CHANGE}

    return settings(recorded_config) == settings(config.as_dict())


def run_identity(config: PipelineConfig, files: Sequence[Path], spectra_per_shard: int
                 ) -> dict[str, Any]:
    """What must be equal for shards to be reused: the config (less the keys in
    :data:`RUN_KEYS_FREE_TO_CHANGE`), the input files with their sizes and modification
    times, and the shard size."""
    settings = {k: v for k, v in config.as_dict().items() if k not in RUN_KEYS_FREE_TO_CHANGE}
    inputs = []
    for path in files:
        try:
            stat = path.stat()
            inputs.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            inputs.append([str(path.absolute()), -1, -1])
    return {"format": "gasnet-shards-1", "config": settings, "inputs": inputs,
            "spectra_per_shard": int(spectra_per_shard)}


def _file_identity(path: Path) -> tuple[int, int, int]:
    """What tells one file at ``path`` from another written there later: inode, size and
    modification time (ns). An atomic replace gives a new inode."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class ShardStore:
    """The shards of one run in ``folder`` (see the module docstring).

    Parameters
    ----------
    folder
        ``OUTPUT.parts``.
    spectra_per_shard
        Rows a shard holds at most (set by :meth:`open` for the run's config).
    """

    def __init__(self, folder: str | Path, spectra_per_shard: int = 0) -> None:
        self.folder = Path(folder)
        self.spectra_per_shard = spectra_per_shard
        # shard records known without opening the file: first row → (the file's identity
        # when its record was taken, record); a file replaced since is read again
        self._records: dict[int, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self.hand_over = False
        """Keep the last shard written in memory for :meth:`checked_shard` to take instead
        of reading the file back (set by :class:`StreamedMerge`, which takes each shard
        as soon as it is written)."""
        self._last_written: tuple[int, tuple[int, int, int], dict[str, Any], Table,
                                  SpectrumArrays | None] | None = None

    def exists(self) -> bool:
        """Whether a run left shards (or at least its manifest) here."""
        return (self.folder / MANIFEST_NAME).is_file()

    def open(self, config: PipelineConfig, files: Sequence[Path], spectra_per_shard: int,
             keep: bool) -> None:
        """Start (``keep`` false: any old shards are discarded) or take up (``keep``
        true) the shards of this run.

        Raises
        ------
        ArchiveError
            When taking up shards written by another config or for other input files,
            naming the folder and what differs.
        """
        identity = run_identity(config, files, spectra_per_shard)
        self.spectra_per_shard = spectra_per_shard
        self._run_id = None
        if keep and self.exists():
            try:
                recorded = json.loads((self.folder / MANIFEST_NAME).read_text())
            except (OSError, ValueError) as exc:
                raise ArchiveError(f"{self.folder / MANIFEST_NAME}: unreadable ({exc}); "
                                   "start again with --overwrite") from exc
            differs = [key for key in identity if recorded.get(key) != identity[key]]
            if differs:
                what = " and ".join("another config" if key == "config" else f"other {key}"
                                    for key in differs)
                raise ArchiveError(
                    f"{self.folder}: the stopped run used {what}; resume with the same "
                    "config and inputs, or start again with --overwrite")
            return
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        (self.folder / MANIFEST_NAME).write_text(
            json.dumps({**identity, "run_id": uuid.uuid4().hex}, indent=1))

    @property
    def run_id(self) -> str:
        """The identity of the run these shards belong to (from the manifest): every shard
        records it, and the merge refuses a shard of another run."""
        if getattr(self, "_run_id", None) is None:
            try:
                manifest = json.loads((self.folder / MANIFEST_NAME).read_text())
            except (OSError, ValueError) as exc:
                raise ArchiveError(f"{self.folder / MANIFEST_NAME}: unreadable ({exc})") \
                    from exc
            self._run_id = str(manifest.get("run_id", ""))
        return self._run_id

    def remove(self) -> None:
        """Delete the folder (after the archive is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- shards ----------------------------------------------------------------------------

    def path(self, start_row: int) -> Path:
        """The file of the shard whose first run row is ``start_row``."""
        return self.folder / f"shard-{start_row:06d}.asdf"

    def indices(self) -> list[int]:
        """First rows of the shards on disk, sorted (temporary files are not shards)."""
        found = (SHARD_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def write(self, start_row: int, outputs: Sequence[BatchOutput], names: Sequence[str],
              consume: bool = False) -> Path:
        """Write the shard of run rows from ``start_row`` from the outputs of its batches
        (atomically; a shard already there is replaced). With ``consume`` the outputs'
        results are emptied as the shard's table is stacked (the executors, which let the
        outputs go after, use it so that a shard's rows are not held twice)."""

        results, arrays = assemble_outputs(outputs, names, consume)
        end = outputs[-1].end
        index = start_row
        record = {"index": int(start_row), "start_row": int(start_row),
                  "n_rows": len(results), "end_file": int(end.file), "end_row": int(end.row),
                  "run": self.run_id}
        tree: dict[str, Any] = {"shard": record, "results": results}
        if arrays is not None:
            tree["arrays"] = arrays
        af = asdf.AsdfFile(tree, custom_schema=SHARD_SCHEMA_URI)
        try:
            af.validate()
        except ValidationError as exc:
            raise ArchiveError(f"{self.path(index)}: shard fails its schema: "
                               f"{exc.message}") from exc
        path = write_asdf_atomically(af, self.path(index))
        identity = _file_identity(path)
        self._records[index] = (identity, dict(record))
        self._last_written = (index, identity, dict(record), results, arrays) \
            if self.hand_over else None
        return path

    def read(self, index: int, validate: bool = True,
             ) -> tuple[dict[str, int], Table, SpectrumArrays | None]:
        """Shard ``index``: its record, results and arrays, validated against the shard
        schema unless ``validate`` is false (for a shard this run wrote: it was validated
        before it was written, and validating its ~150 columns again is most of the cost of
        reading it back)."""
        def extract(af: asdf.AsdfFile) -> tuple[dict[str, int], Table, SpectrumArrays | None]:
            return dict(af["shard"]), Table(af["results"], copy=True), arrays_in_memory(af)

        path = self.path(index)
        if validate:
            return read_validated(path, SHARD_SCHEMA_URI, extract, ArchiveError,
                                  "gasnet results shard")
        try:
            with asdf.open(path, lazy_load=False, memmap=False) as af:
                return extract(af)
        except Exception as exc:
            raise ArchiveError(f"{path}: cannot read gasnet results shard: "
                               f"{type(exc).__name__}: {exc}") from exc

    def record(self, index: int) -> dict[str, int]:
        """The record of shard ``index`` (without loading its results). A record this
        store wrote or read is reused while the file is the same one (same inode, size and
        modification time): opening a shard parses its whole tree (~30 ms for ~370
        columns), and the merge checks every shard's record before it starts."""
        path = self.path(index)
        try:
            identity = _file_identity(path)
            cached = self._records.get(index)
            if cached is not None and cached[0] == identity:
                return dict(cached[1])
            with asdf.open(path, lazy_load=True, memmap=False) as af:
                record = {k: (str(v) if k == "run" else int(v)) for k, v in af["shard"].items()}
        except Exception as exc:
            raise ArchiveError(f"{path}: cannot read shard record: "
                               f"{type(exc).__name__}: {exc}") from exc
        self._records[index] = (identity, record)
        return dict(record)

    def resume_point(self) -> tuple[int, Cursor]:
        """The first run row not covered by the unbroken run of shards from row 0 on disk,
        and the cursor where it starts (the end of the shard before it)."""

        present = set(self.indices())
        row, cursor = 0, Cursor()
        while row in present:
            record = self.record(row)
            if record["n_rows"] <= 0:
                break
            row += record["n_rows"]
            cursor = Cursor(record["end_file"], record["end_row"])
        return row, cursor

    def covered(self) -> list[tuple[int, int]]:
        """``(first row, rows)`` of every shard on disk, by first row."""
        return [(start, self.record(start)["n_rows"]) for start in self.indices()]

    def in_order(self, expected_rows: int | None = None,
                 ) -> Iterator[tuple[dict[str, int], Table, SpectrumArrays | None]]:
        """Each shard's record, results and arrays, in row order, one shard in memory at
        a time.

        Raises
        ------
        ArchiveError
            Before any shard is loaded, if the shards do not tile the rows
            (:meth:`check_tiling`); while loading, for a shard of another run or whose
            table disagrees with its record (:meth:`checked_shard`). No row lost, none
            duplicated.
        """
        self.check_tiling(expected_rows)
        for index in self.indices():
            yield self.checked_shard(index)

    def checked_shard(self, index: int, validate: bool = True,
                      ) -> tuple[dict[str, int], Table, SpectrumArrays | None]:
        """Shard ``index`` (:meth:`read`), refused unless it is of this run and holds the
        rows its name says (its record is then known to :meth:`record`). Without
        ``validate``, the shard this store has just written (:attr:`hand_over`) is taken
        from memory while its file is the one written: the same table the file holds (the
        tests compare the archives)."""
        try:
            identity = _file_identity(self.path(index))
        except OSError as exc:
            raise ArchiveError(f"{self.path(index)}: cannot read gasnet results shard: "
                               f"{type(exc).__name__}: {exc}") from exc
        last = self._last_written
        if not validate and last is not None and last[:2] == (index, identity):
            self._last_written = None
            record, results, arrays = last[2:]
        else:
            record, results, arrays = self.read(index, validate)
        if record.get("run", self.run_id) != self.run_id:
            raise ArchiveError(f"{self.path(index)}: a shard of another run "
                               f"({record.get('run')}, this run is {self.run_id}): "
                               "refusing to merge it")
        if record["index"] != index or record["start_row"] != index \
                or record["n_rows"] != len(results) or not len(results):
            raise ArchiveError(f"{self.path(index)}: holds rows from "
                               f"{record['start_row']} ({len(results)} rows), expected "
                               f"rows from {index}")
        self._records[index] = (identity, {k: (str(v) if k == "run" else int(v))
                                           for k, v in record.items()})
        return record, results, arrays

    def check_tiling(self, expected_rows: int | None = None) -> None:
        """Raise :class:`ArchiveError` unless the shards tile the rows (records only: no
        results are loaded), so a merge never starts on shards that cannot make an
        archive."""
        next_row = 0
        for start, n_rows in self.covered():
            if start != next_row:
                raise ArchiveError(f"{self.folder}: rows [{next_row}, {start}) are missing"
                                   if start > next_row else
                                   f"{self.folder}: shard from row {start} overlaps rows "
                                   f"before {next_row}")
            next_row += n_rows
        if not next_row:
            raise ArchiveError(f"{self.folder}: no shards to merge")
        if expected_rows is not None and next_row != expected_rows:
            raise ArchiveError(f"{self.folder}: shards hold {next_row} rows, the inputs "
                               f"{expected_rows}: rows [{next_row}, {expected_rows}) are "
                               "missing")

    def merge(self, names: Sequence[str], expected_rows: int | None = None,
              ) -> tuple[Table, SpectrumArrays | None]:
        """The results (and archived arrays) of all shards, in row order, in memory (see
        :meth:`in_order` for the checks; :class:`StreamedMerge` is the way that does not
        hold the table)."""

        outputs = [BatchOutput(
            results=results,
            arrays={} if arrays is None else arrays.arrays,
            array_axes={} if arrays is None else arrays.axes,
            loglam=None if arrays is None or arrays.loglam.size == 0 else arrays.loglam,
            flux_unit="" if arrays is None else arrays.flux_unit,
            end=Cursor(record["end_file"], record["end_row"]))
            for record, results, arrays in self.in_order(expected_rows)]
        return assemble_outputs(outputs, names)


class StreamedMerge:
    """The archive's table written from the shards without holding it
    (:class:`~gasnet_plugin.io.archive_stream.StreamedArchiveWriter`), spooled in row order
    *while the run goes*: each time a shard is written, every shard from the next row on
    that is on disk is added. So at the end only the spooled columns are copied into the
    archive, and the merge does not wait for the last worker to start (with many Dask
    workers the driver, otherwise idle, keeps up with them).

    Use :meth:`shard_done` as the executors' ``on_shard`` callback, then :meth:`write`;
    :meth:`close` removes the spools.

    A shard announced through :meth:`shard_done` was written by this run, after its writer
    validated it against the shard schema: it is taken without validating it again (its
    record is still checked), from memory when this process has just written it (the
    local executor) and from its file otherwise (Dask and process workers). Shards found
    on disk otherwise (those a resumed run takes up) are validated.
    """

    def __init__(self, store: ShardStore) -> None:
        from gasnet_plugin.io.archive_stream import StreamedArchiveWriter

        self.store = store
        store.hand_over = True        # each shard written is added from memory
        self.writer = StreamedArchiveWriter(store.folder)
        self.next_row = 0
        self.n_failed = 0
        self.written_by_this_run: set[int] = set()

    def shard_done(self, start_row: int | None = None) -> None:
        """A shard was written (the one from ``start_row``, when given): add the shards on
        disk from the next row on, in order."""
        from gasnet_plugin.io.archive import count_failed

        if start_row is not None:
            self.written_by_this_run.add(start_row)
        present = set(self.store.indices())
        while self.next_row in present:
            _, results, _ = self.store.checked_shard(
                self.next_row, validate=self.next_row not in self.written_by_this_run)
            self.writer.add(results)
            self.n_failed += count_failed(results)
            self.next_row += len(results)

    def write(self, output: Path, run: Callable[[int, int], Any], total: int) -> None:
        """Write the archive once every shard is there.

        Parameters
        ----------
        output
            The archive.
        run
            ``run(n_spectra, n_failed)`` → the run record.
        total
            The run's rows.
        """
        from gasnet_plugin.io.archive import ARCHIVE_SCHEMA_URI

        self.store.check_tiling(expected_rows=total)
        self.shard_done()
        if self.next_row != total:
            raise ArchiveError(f"{self.store.folder}: merged {self.next_row} rows of "
                               f"{total}")
        self.writer.write(output, {"results": self.writer.template(),
                                   "run": run(self.next_row, self.n_failed)},
                          schema_uri=ARCHIVE_SCHEMA_URI)

    def close(self) -> None:
        """Remove the spools."""
        self.writer.close()
