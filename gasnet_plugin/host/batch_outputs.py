"""What is kept of a processed batch, and how consecutive batches' outputs are stacked.

A batch's spectra are let go once the stages are done with it; its results rows and the
per-spectrum arrays the config archives are kept as a :class:`BatchOutput`, with the
:class:`Cursor` just after its last spectrum (where a resumed run or a worker starts).
:func:`assemble_outputs` stacks consecutive outputs into one results table
(:func:`merge_results`: columns may differ between batches, a missing one is filled) and
the archived arrays (:func:`merge_arrays`). The runner, the shards and the executors use
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from gasnet_plugin.io.archive import SpectrumArrays
from gasnet_plugin.io.archive_stream import fill_value


def merge_results(tables: Sequence[Table], consume: bool = False) -> Table:
    """Stack result tables whose columns may differ (a batch whose stages failed lacks the
    later stages' columns); missing values get NaN, -1, False or an empty string.

    Each column is copied once: the stacked arrays become the table's columns. With
    ``consume`` each column is also removed from ``tables`` as soon as it is stacked, so
    that the parts' memory goes while the stack is built (a shard of 8192 mock rows, ~29
    MB, is then held once rather than twice while it is written); the tables are left
    without columns.
    """
    if len(tables) == 1:
        return tables[0]
    lengths = [len(table) for table in tables]
    kinds: dict[str, tuple[np.dtype, tuple[int, ...], str | None, Any]] = {}
    for table in tables:
        for name in table.colnames:
            if name not in kinds:
                column = table[name]
                kinds[name] = (column.dtype, column.shape[1:], column.description,
                               column.unit)
    merged = {}
    for name, (dtype, trailing, _, _) in kinds.items():
        merged[name] = np.concatenate([
            np.asarray(table[name]) if name in table.colnames
            else np.full((n, *trailing), fill_value(dtype), dtype=dtype)
            for table, n in zip(tables, lengths, strict=True)])
        if consume:
            for table in tables:
                if name in table.colnames:
                    table.remove_column(name)
    out = Table(merged, copy=False)     # the concatenations are new arrays: no copy
    for name, (_, _, description, unit) in kinds.items():
        out[name].description = description
        out[name].unit = unit
    return out


def merge_arrays(parts: Sequence[tuple[int, dict[str, np.ndarray]]],
                 names: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack the requested per-spectrum arrays of consecutive parts.

    Parameters
    ----------
    parts
        ``(n_rows, arrays)`` per part, in row order; a part lacking an array (its stage
        failed, or nothing in it could be resampled) gets zeros there.
    names
        The arrays wanted; one that no part has is left out.
    """
    merged = {}
    for name in names:
        template = next((arrays[name] for _, arrays in parts if name in arrays), None)
        if template is None:
            continue
        merged[name] = np.concatenate([
            arrays[name] if name in arrays
            else np.zeros((n, *template.shape[1:]), dtype=template.dtype)
            for n, arrays in parts])
    return merged


@dataclass(frozen=True)
class Cursor:
    """A place in a run's inputs: spectrum ``row`` (counted within its file) of input file
    ``file`` (index into the run's file list). Where a resumed run or a worker starts."""

    file: int = 0
    row: int = 0


@dataclass
class BatchOutput:
    """What is kept of one processed batch once its spectra are let go.

    Attributes
    ----------
    results
        Results rows, one per spectrum of the batch.
    arrays
        The per-spectrum arrays the config archives (``output.arrays``), each ``(n, ...)``.
    array_axes
        What those arrays' trailing axes mean.
    loglam
        The common grid, log10 Å, ``(P,)``; ``None`` if nothing in the batch was resampled.
    flux_unit
        Unit of the flux-like arrays (``""`` when unknown).
    end
        The cursor just after the batch's last spectrum.
    """

    results: Table
    arrays: dict[str, np.ndarray]
    array_axes: dict[str, dict[str, Any]]
    loglam: np.ndarray | None
    flux_unit: str
    end: Cursor

    def __len__(self) -> int:
        return len(self.results)


def assemble_outputs(outputs: Sequence[BatchOutput], names: Sequence[str],
                     consume: bool = False) -> tuple[Table, SpectrumArrays | None]:
    """The results table and (if ``names``) the archived arrays of consecutive outputs.
    With ``consume``, the outputs' results tables are emptied as they are stacked
    (:func:`merge_results`); the outputs are then spent (their rows are counted first)."""
    rows = [len(output) for output in outputs]
    results = merge_results([output.results for output in outputs], consume)
    if not names:
        return results, None
    loglam = next((o.loglam for o in outputs if o.loglam is not None), np.zeros(0))
    unit = next((o.flux_unit for o in outputs if o.loglam is not None), "")
    axes: dict[str, dict[str, Any]] = {}
    for output in outputs:
        axes.update(output.array_axes)
    arrays = SpectrumArrays(
        loglam=np.asarray(loglam), flux_unit=unit,
        arrays=merge_arrays([(n, o.arrays) for n, o in zip(rows, outputs, strict=True)],
                            names),
        axes={k: v for k, v in axes.items() if k in names})
    return results, arrays
