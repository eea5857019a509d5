"""The unit of work that flows through the stages: a batch of spectra and their rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.nddata import InverseVariance
from astropy.table import Table, vstack

from gasnet_plugin.zwarning import FATAL, ZWarn

if TYPE_CHECKING:
    from specutils import Spectrum


@dataclass
class InputBlock:
    """Spectra as read from one file (or a slice of them), with one label row each.

    Attributes
    ----------
    rows
        Label rows (:mod:`gasnet_plugin.io.labels`), one per spectrum.
    spectrum
        1-D ``(P,)`` for one spectrum or 2-D ``(n, P)`` sharing one spectral axis; ``None``
        when the file could not be read.
    error
        Why the file could not be read (then ``rows`` has one row for the file).
    file_index
        Position of the file in the run's input list (``-1`` for spectra not from a file).
    first_row
        Index, among all the spectra of that file, of this block's first spectrum; with
        ``file_index`` it is where a resumed run or a worker picks up.
    """

    rows: Table
    spectrum: Spectrum | None = None
    error: str | None = None
    file_index: int = -1
    first_row: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int) -> InputBlock:
        """The block of spectra ``start:stop`` (a view where possible)."""
        if start == 0 and stop == len(self):
            return self
        if self.spectrum is None:
            raise ValueError("a block without a spectrum (an unreadable file) has one row "
                             "and cannot be sliced")
        return self._remade(lambda array: array[start:stop], self.rows[start:stop],
                            self.first_row + start)

    def copy(self) -> InputBlock:
        """The block with arrays of its own: a :meth:`slice` views the arrays of the
        whole file it came from, and holding it holds them all."""
        if self.spectrum is None:
            return self
        return self._remade(lambda array: array.copy(), self.rows.copy(), self.first_row)

    def _remade(self, take: Callable[[Any], Any], rows: Table, first_row: int) -> InputBlock:
        """A block whose spectrum has ``take(array)`` of this one's flux, ivar and mask
        (same spectral axis, unit and meta; ``rows`` as its rows), no further copy made.

        The new spectrum shares this one's WCS: it depends on the spectral axis and the
        number of dimensions only, both the same. Without it specutils builds a lookup
        table WCS per spectrum, with a model class of its own (~1 ms each), and drops it
        as cyclic garbage that only the collector's full passes free
        (:mod:`gasnet_plugin.host.collector`)."""
        from specutils import Spectrum

        spectrum = self.spectrum
        uncertainty = spectrum.uncertainty
        return InputBlock(
            rows=rows,
            spectrum=Spectrum(
                flux=take(spectrum.flux),
                spectral_axis=spectrum.spectral_axis,
                wcs=spectrum.wcs,
                uncertainty=None if uncertainty is None
                else type(uncertainty)(take(uncertainty.array), unit=uncertainty.unit,
                                       copy=False),
                mask=None if spectrum.mask is None else take(spectrum.mask),
                meta={**spectrum.meta, "rows": rows},
            ),
            file_index=self.file_index,
            first_row=first_row,
        )


def stack_rows(tables: list[Table]) -> Table:
    """Stack label tables; one ``np.concatenate`` per column when they share their columns
    (the usual case, and much faster than :func:`astropy.table.vstack` for many small
    tables), else ``vstack``."""
    first = tables[0]
    if len(tables) == 1:
        return first.copy()
    names = first.colnames
    if any(t.colnames != names for t in tables):
        return vstack(tables, metadata_conflicts="silent")
    columns = {name: np.concatenate([np.asarray(t[name]) for t in tables]) for name in names}
    out = Table(columns)
    for name in names:
        out[name].description = first[name].description
        out[name].unit = first[name].unit
    return out


@dataclass
class SpectrumBatch:
    """A batch of spectra going through the stages together.

    Attributes
    ----------
    blocks
        The input blocks, in input order; their rows concatenated are :attr:`rows`.
    rows
        The results table of the batch, one row per spectrum in input order. Starts with
        the label columns and ``ZWARN``; stages add columns.
    spectrum
        The batch on the common grid, a 2-D :class:`~specutils.Spectrum` ``(N, P)`` with an
        inverse-variance uncertainty and a mask (``True`` where ivar is 0). Set by the
        resample stage; ``spectrum.meta["rows"]`` is :attr:`rows`.
    arrays
        Per-spectrum arrays stages offer for the archive, each ``(N, ...)``.
    reasons
        Per spectrum, the reasons of the ``ZWARN`` bits set so far.
    products
        What a stage leaves for later stages and is not archived as such (the redshift-scan
        stage's fit, for reconstruct), by name.
    array_axes
        Per archived array, what its trailing axes mean (e.g. the class names and redshifts
        of the χ² curves).
    """

    blocks: list[InputBlock]
    rows: Table = field(init=False)
    spectrum: Spectrum | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    array_axes: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: list[list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = stack_rows([block.rows for block in self.blocks])
        self.rows["ZWARN"] = np.zeros(len(self.rows), dtype=np.int64)
        self.rows["ZWARN"].description = "warning bits (gasnet_plugin.zwarning); 0 = trust it"
        self.reasons = [[] for _ in range(len(self.rows))]
        for start, block in zip(self.block_starts(), self.blocks, strict=True):
            if block.error is not None:
                self.flag(np.arange(start, start + len(block)), ZWarn.BAD_INPUT, block.error)

    def __len__(self) -> int:
        return len(self.rows)

    def block_starts(self) -> np.ndarray:
        """Index of each block's first row in :attr:`rows`, shape ``(n_blocks,)``."""
        sizes = np.array([len(block) for block in self.blocks], dtype=np.int64)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def flag(self, which: np.ndarray, bit: ZWarn, reason: str | list[str]) -> None:
        """Set ``bit`` in ``ZWARN`` and record the reason.

        Parameters
        ----------
        which
            Boolean mask ``(N,)`` or integer indices of the spectra to flag.
        bit
            The :class:`~gasnet_plugin.zwarning.ZWarn` bit.
        reason
            One reason for all, or one per flagged spectrum.
        """
        indices = np.flatnonzero(which) if np.asarray(which).dtype == bool \
            else np.asarray(which, dtype=np.int64)
        if indices.size == 0:
            return
        self.rows["ZWARN"][indices] |= int(bit)
        reasons = [reason] * indices.size if isinstance(reason, str) else list(reason)
        for index, text in zip(indices, reasons, strict=True):
            self.reasons[index].append(text)

    @property
    def usable(self) -> np.ndarray:
        """``(N,)`` bool: spectra with no fatal ``ZWARN`` bit, which stages should measure."""
        return (np.asarray(self.rows["ZWARN"]) & int(FATAL)) == 0

    def results(self) -> Table:
        """The results table with the ``ZWARN_REASON`` text column filled in."""
        table = self.rows.copy(copy_data=False)
        table["ZWARN_REASON"] = np.array(["; ".join(r) for r in self.reasons], dtype=str)
        table["ZWARN_REASON"].description = "why ZWARN bits are set"
        return table

    def spectra(self) -> list[Spectrum]:
        """One annotated 1-D Spectrum per row, its results row (and arrays) in ``meta``.

        On the common grid once the batch is resampled; before that (or if resampling
        failed) the input spectra themselves. For notebooks; the stages work on
        :attr:`spectrum` as a whole.
        """
        from specutils import Spectrum

        results = self.results()
        if self.spectrum is not None:
            grid = self.spectrum
            flux, ivar, mask = grid.flux, grid.uncertainty, grid.mask
            pieces = [(grid.spectral_axis, flux[i], ivar.array[i], ivar.unit, mask[i])
                      for i in range(len(self))]
        else:
            pieces = []
            for block in self.blocks:
                spectrum = block.spectrum
                if spectrum is None:
                    raise RuntimeError(f"{block.error} (no spectrum to return)")
                unc = spectrum.uncertainty
                one = spectrum.flux.ndim == 1
                for i in range(len(block)):
                    def pick(array: Any, i: int = i, one: bool = one) -> Any:
                        return array if array is None or one else array[i]

                    pieces.append((spectrum.spectral_axis, pick(spectrum.flux),
                                   None if unc is None else pick(unc.array),
                                   None if unc is None else unc.unit, pick(spectrum.mask)))
        out = []
        for index, (axis, flux, ivar, ivar_unit, mask) in enumerate(pieces):
            meta: dict[str, Any] = {name: results[name][index] for name in results.colnames}
            meta.update({name: array[index] for name, array in self.arrays.items()})
            out.append(Spectrum(
                flux=flux, spectral_axis=axis, mask=mask, meta=meta,
                uncertainty=None if ivar is None else InverseVariance(ivar, unit=ivar_unit)))
        return out
