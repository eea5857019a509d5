"""Results shards: how a run streams to disk, resumes after a kill, and shares work.

A run writing ``OUTPUT`` keeps its shards in ``OUTPUT.parts/``::

    manifest.json          what run the shards belong to (config, inputs, shard size)
    shard-000000.asdf      rows [0, S) of the results, in input order
    shard-000001.asdf      rows [S, 2S)
    ...

Shard ``k`` always holds rows ``[k S, (k+1) S)`` of the run's global order (``S`` the
config's ``spectra_per_shard``), whoever wrote it: the local executor as it streams, a
resumed run, or a Dask worker. Each shard is an ASDF file (schema ``results_shard-1.0.0``)
written atomically, so a shard on disk is complete. Its record says where the next
spectrum is (the cursor a resumed run restarts from). The merge checks that the shards
cover every row exactly once before the archive is written; then the folder is removed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asdf
from asdf.exceptions import ValidationError
from astropy.table import Table

from gasnet_plugin.io.archive import ArchiveError, SpectrumArrays, arrays_in_memory
from gasnet_plugin.io.asdf_extension import URI_BASE
from gasnet_plugin.io.asdf_files import read_validated, write_asdf_atomically

if TYPE_CHECKING:
    from gasnet_plugin.host.config import PipelineConfig
    from gasnet_plugin.host.runner import BatchOutput, Cursor

SHARD_SCHEMA_URI = URI_BASE + "schemas/results_shard-1.0.0"
MANIFEST_NAME = "manifest.json"
SHARD_NAME = re.compile(r"^shard-(\d{6,})\.asdf$")

RUN_KEYS_FREE_TO_CHANGE = ("executor", "progress")
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
            inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            inputs.append([str(path), -1, -1])
    return {"format": "gasnet-shards-1", "config": settings, "inputs": inputs,
            "spectra_per_shard": int(spectra_per_shard)}


class ShardStore:
    """The shards of one run in ``folder`` (see the module docstring).

    Parameters
    ----------
    folder
        ``OUTPUT.parts``.
    spectra_per_shard
        Rows of every shard but the last (set by :meth:`open` for the run's config).
    """

    def __init__(self, folder: str | Path, spectra_per_shard: int = 0) -> None:
        self.folder = Path(folder)
        self.spectra_per_shard = spectra_per_shard

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
        if keep and self.exists():
            try:
                recorded = json.loads((self.folder / MANIFEST_NAME).read_text())
            except (OSError, ValueError) as exc:
                raise ArchiveError(f"{self.folder / MANIFEST_NAME}: unreadable ({exc}); "
                                   "start again with --overwrite") from exc
            differs = [key for key in identity if recorded.get(key) != identity[key]]
            if differs:
                raise ArchiveError(
                    f"{self.folder}: the stopped run had a different "
                    f"{' and '.join(differs)}; resume with the same config and inputs, "
                    "or start again with --overwrite")
            return
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        (self.folder / MANIFEST_NAME).write_text(json.dumps(identity, indent=1))

    def remove(self) -> None:
        """Delete the folder (after the archive is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- shards ----------------------------------------------------------------------------

    def path(self, index: int) -> Path:
        """The file of shard ``index``."""
        return self.folder / f"shard-{index:06d}.asdf"

    def indices(self) -> list[int]:
        """Indices of the shards on disk, sorted (temporary files are not shards)."""
        found = (SHARD_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def write(self, index: int, outputs: Sequence[BatchOutput], names: Sequence[str]) -> Path:
        """Write shard ``index`` from the outputs of its batches (atomically)."""
        from gasnet_plugin.host.runner import assemble_outputs

        results, arrays = assemble_outputs(outputs, names)
        end = outputs[-1].end
        record = {"index": int(index), "start_row": int(index * self.spectra_per_shard),
                  "n_rows": len(results), "end_file": int(end.file), "end_row": int(end.row)}
        tree: dict[str, Any] = {"shard": record, "results": results}
        if arrays is not None:
            tree["arrays"] = arrays
        af = asdf.AsdfFile(tree, custom_schema=SHARD_SCHEMA_URI)
        try:
            af.validate()
        except ValidationError as exc:
            raise ArchiveError(f"{self.path(index)}: shard fails its schema: "
                               f"{exc.message}") from exc
        return write_asdf_atomically(af, self.path(index))

    def read(self, index: int) -> tuple[dict[str, int], Table, SpectrumArrays | None]:
        """Shard ``index``: its record, results and arrays (validated)."""
        def extract(af: asdf.AsdfFile) -> tuple[dict[str, int], Table, SpectrumArrays | None]:
            return dict(af["shard"]), Table(af["results"], copy=True), arrays_in_memory(af)

        return read_validated(self.path(index), SHARD_SCHEMA_URI, extract, ArchiveError,
                              "gasnet results shard")

    def record(self, index: int) -> dict[str, int]:
        """The record of shard ``index`` (without loading its results)."""
        try:
            with asdf.open(self.path(index), lazy_load=True, memmap=False) as af:
                return {k: int(v) for k, v in af["shard"].items()}
        except Exception as exc:
            raise ArchiveError(f"{self.path(index)}: cannot read shard record: "
                               f"{type(exc).__name__}: {exc}") from exc

    def resume_point(self) -> tuple[int, Cursor]:
        """The first shard missing from the unbroken run of shards 0, 1, ... on disk, and
        the cursor where its spectra start (the end of the shard before it)."""
        from gasnet_plugin.host.runner import Cursor

        present = set(self.indices())
        index = 0
        while index in present:
            index += 1
        if index == 0:
            return 0, Cursor()
        record = self.record(index - 1)
        return index, Cursor(record["end_file"], record["end_row"])

    def merge(self, names: Sequence[str]) -> tuple[Table, SpectrumArrays | None]:
        """The results (and archived arrays) of all shards, in row order.

        Raises
        ------
        ArchiveError
            If the shards do not tile the rows: a gap, an overlap, or a shard that is not
            full before the last one (no row lost, none duplicated).
        """
        from gasnet_plugin.host.runner import BatchOutput, Cursor, assemble_outputs

        indices = self.indices()
        if indices != list(range(len(indices))):
            missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
            raise ArchiveError(f"{self.folder}: shards {missing} are missing")
        outputs = []
        next_row = 0
        for index in indices:
            record, results, arrays = self.read(index)
            if record["index"] != index or record["start_row"] != next_row \
                    or record["n_rows"] != len(results):
                raise ArchiveError(f"{self.path(index)}: holds rows from "
                                   f"{record['start_row']} ({len(results)} rows), expected "
                                   f"rows from {next_row}")
            if index < indices[-1] and len(results) != self.spectra_per_shard:
                raise ArchiveError(f"{self.path(index)}: {len(results)} rows, expected "
                                   f"{self.spectra_per_shard}")
            next_row += len(results)
            outputs.append(BatchOutput(
                results=results,
                arrays={} if arrays is None else arrays.arrays,
                array_axes={} if arrays is None else arrays.axes,
                loglam=None if arrays is None or arrays.loglam.size == 0 else arrays.loglam,
                flux_unit="" if arrays is None else arrays.flux_unit,
                end=Cursor(record["end_file"], record["end_row"])))
        if not outputs:
            raise ArchiveError(f"{self.folder}: no shards to merge")
        return assemble_outputs(outputs, names)
