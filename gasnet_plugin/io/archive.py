"""The results archive: one ASDF file per run, validated on write and on read.

Layout (schema ``results_archive-1.0.0``)::

    results: astropy Table     one row per input spectrum, in input order
    run:     RunInfo           config, software versions, inputs, counts
    arrays:  SpectrumArrays    optional per-spectrum arrays on the common grid

``asdf.open(path)["results"]`` gives the table with only asdf and asdf-astropy installed.
Writes are atomic: the file is written under a temporary name in the same folder and
renamed into place, so a failed run never leaves a half-written archive behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asdf
import numpy as np
from asdf.exceptions import ValidationError
from astropy.table import Table

from gasnet_plugin.io.asdf_extension import ARCHIVE_SCHEMA_URI
from gasnet_plugin.io.asdf_files import read_validated, write_asdf_atomically
from gasnet_plugin.io.text_columns import compact_text_columns, text_columns_as_str
from gasnet_plugin.zwarning import FATAL, ZWarn


class ArchiveError(Exception):
    """An archive could not be written or read; the message names the file."""


@dataclass
class RunInfo:
    """What produced an archive.

    Attributes
    ----------
    config
        The configuration that ran, in the layout of a config file.
    software
        Package name → version string.
    created
        ISO 8601 UTC time the archive was written.
    inputs
        Input files in the order read.
    n_spectra
        Rows in the results table.
    n_failed
        Rows with a fatal ``ZWARN`` bit (no measurement).
    """

    config: dict[str, Any]
    software: dict[str, str]
    created: str
    inputs: list[str]
    n_spectra: int
    n_failed: int


@dataclass
class SpectrumArrays:
    """Per-spectrum arrays on the common grid.

    Attributes
    ----------
    loglam
        Pixel centres, log10 Å, shape ``(P,)``.
    flux_unit
        Unit of the flux-like arrays.
    arrays
        Name → array ``(N, ...)``, row ``i`` belonging to results row ``i``.
    axes
        Name → what the array's trailing axes mean where they are not the grid
        (``chi2_curves``: ``classes`` and ``z``, ``(C, S)``).
    """

    loglam: np.ndarray
    flux_unit: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunArchive:
    """A run's results: the table, the run record and optional arrays."""

    results: Table
    run: RunInfo
    arrays: SpectrumArrays | None = None

    def check(self) -> None:
        """Raise :class:`ArchiveError` if the parts disagree on the number of spectra."""
        n = len(self.results)
        if self.run.n_spectra != n:
            raise ArchiveError(f"run record says {self.run.n_spectra} spectra, table has {n}")
        if self.arrays is not None:
            for name, array in self.arrays.arrays.items():
                if array.shape[0] != n:
                    raise ArchiveError(f"array {name!r} has {array.shape[0]} rows for {n}")

    def tree(self) -> dict[str, Any]:
        """The ASDF tree (without the optional parts that are absent); text columns as
        stored (:mod:`~gasnet_plugin.io.text_columns`)."""
        stored = compact_text_columns(Table(self.results, copy=False))
        tree: dict[str, Any] = {"results": stored, "run": self.run}
        if self.arrays is not None:
            tree["arrays"] = self.arrays
        return tree

    def write(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Validate and write the archive atomically; returns the path written.

        Raises
        ------
        ArchiveError
            If the file exists and ``overwrite`` is false, or the archive fails its schema.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArchiveError(f"{path}: exists (pass overwrite to replace it)")
        self.check()
        af = asdf.AsdfFile(self.tree(), custom_schema=ARCHIVE_SCHEMA_URI)
        try:
            af.validate()
        except ValidationError as exc:
            raise ArchiveError(f"{path}: archive fails its schema: {exc.message}") from exc
        return write_asdf_atomically(af, path)

    def columns(self, names: list[str]) -> dict[str, np.ndarray]:
        """Some columns of the results table, by name."""
        return {name: np.asarray(self.results[name]) for name in names}

    def summary(self) -> str:
        """A few lines describing the archive (what ``gasnet info`` prints)."""
        results, run = self.results, self.run
        zwarn = np.asarray(results["ZWARN"]) if "ZWARN" in results.colnames else None
        stages = [next(iter(stage)) for stage in run.config.get("stages", [])]
        lines = [
            f"spectra:   {run.n_spectra} from {len(run.inputs)} input file(s)",
            f"failed:    {run.n_failed} (fatal ZWARN bit)",
            f"created:   {run.created}",
            f"stages:    {' -> '.join(stages)}",
            "software:  " + ", ".join(f"{k} {v}" for k, v in sorted(run.software.items())),
            f"columns:   {', '.join(results.colnames)}",
        ]
        if zwarn is not None:
            lines.append(f"ZWARN=0:   {int(np.sum(zwarn == 0))} of {len(zwarn)}")
            bits = [(bit.name, int(np.count_nonzero(zwarn & int(bit)))) for bit in ZWarn]
            lines.append("ZWARN bits: " + (", ".join(f"{name} {n}" for name, n in bits if n)
                                           or "none set"))
        if "SPECTYPE" in results.colnames:
            spectype = np.asarray(results["SPECTYPE"]).astype(str)
            types, counts = np.unique(spectype, return_counts=True)
            lines.append("SPECTYPE:  " + ", ".join(f"{t or '-'} {c}"
                                                   for t, c in zip(types, counts, strict=True)))
            if "Z" in results.colnames:
                lines.append("Z quantiles (5 %, 25 %, 50 %, 75 %, 95 %) per SPECTYPE:")
                z = np.asarray(results["Z"], dtype=float)
                for name in types:
                    values = z[(spectype == name) & np.isfinite(z)]
                    if name and values.size:
                        q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
                        lines.append(f"  {name:<7} n={values.size:<6} "
                                     + "  ".join(f"{v:.4f}" for v in q))
        if self.arrays is not None:
            lines.append("arrays:    " + ", ".join(
                f"{name} {array.shape}" for name, array in self.arrays.arrays.items()))
        return "\n".join(lines)


class ArchiveFile(RunArchive):
    """An archive on disk whose table is read only when used: what ``run_to_file``
    returns, so that a run of millions of spectra does not end by reading its whole
    archive back. ``results`` reads the table (validated) on first use; :meth:`columns`
    memory-maps a few columns without reading the others."""

    def __init__(self, path: str | os.PathLike[str], run: RunInfo) -> None:
        self.path = Path(path)
        self.run = run
        self.arrays = None
        self._results: Table | None = None

    @property
    def results(self) -> Table:  # type: ignore[override]
        """The whole table, read (and validated) on first use."""
        if self._results is None:
            self._results = read_archive(self.path).results
        return self._results

    def columns(self, names: list[str]) -> dict[str, np.ndarray]:
        """Memory-mapped columns (:func:`~gasnet_plugin.io.archive_stream.read_columns`)."""
        from gasnet_plugin.io.archive_stream import read_columns

        return read_columns(self.path, names)


def count_failed(results: Table) -> int:
    """Rows with a fatal ``ZWARN`` bit."""
    return int(np.count_nonzero(np.asarray(results["ZWARN"]) & int(FATAL)))


def arrays_in_memory(af: asdf.AsdfFile) -> SpectrumArrays | None:
    """The ``arrays`` of an open archive or shard, copied out of the file (or ``None``)."""
    arrays = af.tree.get("arrays")
    if arrays is None:
        return None
    return SpectrumArrays(
        loglam=np.array(arrays.loglam), flux_unit=arrays.flux_unit,
        arrays={k: np.array(v) for k, v in arrays.arrays.items()},
        axes={k: {n: np.array(x) if hasattr(x, "shape") else x for n, x in v.items()}
              for k, v in arrays.axes.items()})


def read_archive(path: str | os.PathLike[str]) -> RunArchive:
    """Read and validate a results archive (fully into memory; for a few columns of a
    large one, :meth:`ArchiveFile.columns`).

    Raises
    ------
    ArchiveError
        If the file is missing, not ASDF, truncated, carries unknown or mismatched tags, or
        fails the archive schema; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file")
    def extract(af: asdf.AsdfFile) -> tuple[Table, Any, SpectrumArrays | None]:
        return (text_columns_as_str(Table(af["results"], copy=True)), af["run"],
                arrays_in_memory(af))

    results, run, arrays = read_validated(path, ARCHIVE_SCHEMA_URI, extract, ArchiveError,
                                          "gasnet results archive")
    if not isinstance(run, RunInfo):
        raise ArchiveError(f"{path}: 'run' is not a gasnet run record")
    archive = RunArchive(results=results, run=run, arrays=arrays)
    try:
        archive.check()
    except ArchiveError as exc:
        raise ArchiveError(f"{path}: {exc}") from exc
    return archive
