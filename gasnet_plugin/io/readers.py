"""Spectrum readers: survey files into specutils :class:`~specutils.Spectrum` objects.

A reader turns one open FITS file into a list of spectra. Each spectrum is 1-D ``(P,)`` or
2-D ``(n, P)`` (``n`` spectra sharing one spectral axis), carries an
:class:`~astropy.nddata.InverseVariance` uncertainty and a mask (``True`` = bad pixel), and
has ``meta["rows"]``: the identifier and ``SURVEY_*`` label rows of
:mod:`gasnet_plugin.io.labels`, one per spectrum.

Built-in readers (in the order ``reader: auto`` tries them):

============  ==================================================================
name          files
============  ==================================================================
sdss-spec     SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits`` (HDU1 coadd, HDU2 labels)
desi-coadd    DESI ``coadd-*.fits`` (b, r, z arms joined on their common grid)
lamost-dr1    LAMOST 1-D spectra, DR1–DR7 (also a specutils loader, "LAMOST DR1 1D")
sdss-spspec   SDSS-I/II DR7 ``spSpec`` files (labels in the header)
sdss-plate    SDSS ``spPlate`` files, labels from the ``spZbest`` file beside them
eso-1d        ESO SDP 1-D spectra, e.g. 4MOST L1 (also a specutils loader, "ESO SDP 1D")
aaomega-2df   2dF/AAOmega spectra written by 2dfdr (air wavelengths unless VACUUM = T)
deep2-spec1d  DEEP2/DEIMOS ``spec1d`` files (blue and red halves joined; air)
table         tabular FITS: rows of flux/ivar vectors on a shared grid
specutils     anything specutils' own loader registry identifies (last)
============  ==================================================================

Every reader gives vacuum wavelengths (air is converted, and ``AIR_TO_VACUUM`` says so)
and states the flux unit as the flux's unit (dimensionless when the file states none; the
resample stage writes it to ``FLUX_UNIT``, empty then).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from astropy.io import fits

from gasnet_plugin import hookimpl

if TYPE_CHECKING:
    from specutils import Spectrum

    from gasnet_plugin.host.registry import Registry


class SpectrumReader(Protocol):
    """What a reader provides (register instances with ``gasnet_register_readers``)."""

    name: str
    """Name a config's ``reader`` key refers to."""
    summary: str
    """One line saying which files the reader reads."""

    def identify(self, hdul: fits.HDUList) -> bool:
        """Whether this reader understands the open FITS file ``hdul``."""

    def read(self, hdul: fits.HDUList, source: str) -> list[Spectrum]:
        """The spectra in ``hdul``, each with ``meta["rows"]`` labels; ``source`` is its path.

        Raise an exception with a clear message when the file cannot be read; the host
        records it against the file and goes on.
        """


COMPRESSED_SUFFIXES = (".gz", ".fz", ".bz2")
"""Files the fast paths leave to astropy (their bytes are not the FITS layout)."""


class UnreadableFileError(Exception):
    """A file could not be read; the message names the file and what is wrong."""


def _not_a_file(path: Path) -> str:
    """What a path that is not a regular file is (never opened: a FIFO would block)."""
    import stat

    if path.is_symlink() and not path.exists():
        return "a broken symbolic link (or a link loop)"
    if path.is_dir():
        return "a folder, not a file"
    if path.exists():
        kind = stat.S_IFMT(path.stat().st_mode)
        names = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR:
                 "a character device", stat.S_IFBLK: "a block device"}
        return f"not a regular file ({names.get(kind, 'special file')})"
    return "no such file"


def pick_reader(hdul: fits.HDUList, source: str,
                readers: Registry[SpectrumReader]) -> SpectrumReader:
    """The first registered reader that identifies ``hdul``; if none does, the error
    says what went wrong while they looked (a damaged file, not only an unknown one)."""
    errors = []
    for reader in readers:
        try:
            if reader.identify(hdul):
                return reader
        except Exception as exc:  # a reader's identify must not decide for the others
            errors.append(f"{reader.name}: {type(exc).__name__}: {exc}")
    seen = f"; while looking: {errors[0]}" if errors else ""
    raise UnreadableFileError(
        f"{source}: no registered reader identifies this file (tried: "
        f"{', '.join(readers.names())}){seen}")


def read_spectra(path: str | os.PathLike[str], reader: str = "auto",
                 readers: Registry[SpectrumReader] | None = None) -> list[Spectrum]:
    """Read every spectrum of one file.

    Parameters
    ----------
    path
        The file (FITS, optionally gzipped).
    reader
        A registered reader name, or ``"auto"`` to identify the format.
    readers
        The reader registry; by default the one of a fresh
        :class:`~gasnet_plugin.host.plugins.PluginHost`.

    Returns
    -------
    list of Spectrum
        Each with ``meta["rows"]`` (see the module docstring).

    Raises
    ------
    UnreadableFileError
        When the file is missing, not FITS, of no known format, or malformed; the message
        starts with the path.
    """
    if readers is None:
        from gasnet_plugin.host.plugins import PluginHost

        readers = PluginHost().readers
    from gasnet_plugin.io.sdss_plate_names import is_redshift_file

    source = str(path)
    if not Path(source).is_file():
        raise UnreadableFileError(f"{source}: {_not_a_file(Path(source))}")
    if is_redshift_file(source):
        raise UnreadableFileError(
            f"{source}: an spZbest/spZall file holds the SDSS pipeline's redshifts, not "
            f"spectra; it is read with its spPlate-PLATE-MJD.fits (give that file, or the "
            f"folder holding both)")
    fast, raw = _read_raw(source, reader, readers)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # bytes a fast path read (and gave up on) are parsed, not read again
            with fits.open(source if raw is None else io.BytesIO(raw), memmap=False) as hdul:
                if reader == "auto":
                    chosen = pick_reader(hdul, source, readers)
                else:
                    chosen = readers.get(reader)
                    if not chosen.identify(hdul):
                        raise UnreadableFileError(
                            f"{source}: not a {reader!r} file ({chosen.summary}); "
                            f"use reader: auto to identify the format")
                spectra = chosen.read(hdul, source)
        _refuse_truncated(source, caught)
        return spectra
    except UnreadableFileError:
        raise
    except OSError as exc:
        raise UnreadableFileError(f"{source}: not a readable FITS file: {exc}") from exc
    except Exception as exc:
        _refuse_truncated(source, caught)
        raise UnreadableFileError(f"{source}: {type(exc).__name__}: {exc}") from exc


def spectra_in_file(path: str | os.PathLike[str], reader: str = "auto",
                    readers: Registry[SpectrumReader] | None = None) -> int | None:
    """How many spectra :func:`read_spectra` gives for ``path``, known from its headers
    alone, or ``None`` when only reading it tells.

    Known when the fast-path reader that would read the file says it holds one spectrum
    per file (``spectra_per_file = 1``: SDSS ``spec``, LAMOST DR1): 1, which is also what
    an unreadable file counts for in a run. Costs the header probe of
    :mod:`gasnet_plugin.io.fits_raw`, not the read (a run's row count per file,
    :mod:`gasnet_plugin.host.process_executor`)."""
    from gasnet_plugin.io.fits_raw import read_hdus_from

    if readers is None:
        from gasnet_plugin.host.plugins import PluginHost

        readers = PluginHost().readers
    source = str(path)
    if source.endswith(COMPRESSED_SUFFIXES) or not Path(source).is_file():
        return None
    try:
        with open(source, "rb") as handle:
            hdus = read_hdus_from(handle, os.fstat(handle.fileno()).st_size)
        chosen = _fast_reader(hdus, reader, readers)
    except Exception:  # anything odd: reading decides
        return None
    return 1 if chosen is not None and getattr(chosen, "spectra_per_file", None) == 1 \
        else None


def _fast_reader(hdus: list, reader: str, readers: Registry[SpectrumReader],
                 ) -> SpectrumReader | None:
    """The reader whose fast path (``identify_raw``/``read_raw``) takes a file of these
    headers: the first in the registry's order that identifies it (and is the one asked
    for), unless a reader without a fast path comes first; ``None`` if none."""
    for candidate in readers:
        if reader != "auto" and candidate.name != reader:
            continue
        if not hasattr(candidate, "read_raw"):
            return None          # an earlier reader without a fast path decides
        if candidate.identify_raw(hdus):
            return candidate
    return None


def _read_raw(source: str, reader: str, readers: Registry[SpectrumReader],
              ) -> tuple[list[Spectrum] | None, bytes | None]:
    """The spectra from the file's bytes by the first reader with a fast path
    (``identify_raw``/``read_raw``, :mod:`gasnet_plugin.io.fits_raw`) that identifies it
    (and is the one asked for), and the bytes read (``None`` if none were); spectra
    ``None``: astropy reads the file as always. Any failure here falls back too, so errors
    are reported by the usual path.

    A fast path gets the file's bytes read whole, or, where it says ``reads_mapped`` (it
    needs a small part of a large file: a DESI coadd), the file memory-mapped."""
    from gasnet_plugin.io.fits_raw import TruncatedFitsError, read_hdus_from

    candidates = [r for r in readers if hasattr(r, "read_raw")
                  and (reader == "auto" or r.name == reader)]
    if not candidates or source.endswith(COMPRESSED_SUFFIXES):
        return None, None
    raw = None
    try:
        with open(source, "rb") as handle:
            # the headers only: a file no fast path takes (a DESI coadd of 500 spectra is
            # ~200 MB, mostly resolution data no reader uses) is not read whole here
            try:
                hdus = read_hdus_from(handle, os.fstat(handle.fileno()).st_size)
            except TruncatedFitsError as exc:   # before astropy allocates what it says
                raise UnreadableFileError(f"{source}: {exc}") from None
            candidate = _fast_reader(hdus, reader, readers)
            if candidate is None:
                return None, None
            if getattr(candidate, "reads_mapped", False):
                return _read_mapped(candidate, handle, hdus, source), None
            handle.seek(0)
            raw = handle.read()
            return candidate.read_raw(raw, hdus, source), raw
    except UnreadableFileError:
        raise
    except Exception:  # anything odd (RawFitsError, ...): astropy's path decides and reports
        return None, raw


def _read_mapped(candidate: SpectrumReader, handle: BinaryIO, hdus: list,
                 source: str) -> list[Spectrum]:
    """``candidate.read_raw`` on the file open in ``handle``, memory-mapped read-only; the
    map is closed after (or, should the spectra still view it, when they go)."""
    import contextlib
    import mmap

    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return candidate.read_raw(mapped, hdus, source)
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()


def _refuse_truncated(source: str, caught: list[warnings.WarningMessage]) -> None:
    """Raise if astropy warned that the file is shorter than its headers say."""
    for warning in caught:
        if "truncated" in str(warning.message):
            raise UnreadableFileError(f"{source}: file is truncated ({warning.message})")


@hookimpl
def gasnet_register_readers(registry: Registry[SpectrumReader]) -> None:
    from gasnet_plugin.io.aaomega import AaomegaReader
    from gasnet_plugin.io.deep2 import Deep2Spec1dReader
    from gasnet_plugin.io.desi import DesiCoaddReader
    from gasnet_plugin.io.eso_sdp import EsoSpectrumReader
    from gasnet_plugin.io.lamost import LamostDR1Reader
    from gasnet_plugin.io.sdss import SdssSpecReader
    from gasnet_plugin.io.sdss_legacy_files import SdssPlateReader, SdssSpSpecReader
    from gasnet_plugin.io.specutils_fallback import SpecutilsReader
    from gasnet_plugin.io.tabular import TabularReader

    for reader in (SdssSpecReader(), DesiCoaddReader(), LamostDR1Reader(), SdssSpSpecReader(),
                   SdssPlateReader(), EsoSpectrumReader(), AaomegaReader(),
                   Deep2Spec1dReader(), TabularReader(), SpecutilsReader()):
        registry.add(reader)
