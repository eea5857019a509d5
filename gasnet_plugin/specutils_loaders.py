"""Our readers as specutils loaders, for use outside gasnet.

Importing this module registers, with specutils' own loader registry:

- ``"LAMOST DR1 1D"``: LAMOST 1-D low-resolution spectra, DR1 to DR7
  (:mod:`gasnet_plugin.io.lamost`);
- ``"ESO SDP 1D"``: ESO science-data-product 1-D spectra, as 4MOST L1 and the VLT
  instruments deliver them (:mod:`gasnet_plugin.io.eso_sdp`).

::

    import gasnet_plugin.specutils_loaders  # noqa: F401  (registers the formats)
    from specutils import Spectrum

    spectrum = Spectrum.read("spec-55862-B6212_sp06-003.fits", format="LAMOST DR1 1D")
    spectrum = Spectrum.read("ADP.2024-01-01T00:00:00.000.fits")   # identified by itself

Both identify their files, so ``format=`` may be left out. To have them in every Python
session without the import, put that import line in a file under ``~/.specutils/``:
specutils runs the ``.py`` files there when it is imported. The spectra are returned as
our readers give them: vacuum wavelengths in Å, inverse-variance uncertainty, a mask, and
the file's labels in ``meta["rows"]``.
"""

from __future__ import annotations

from gasnet_plugin.io.eso_sdp import ESO_FORMAT, eso_spectra, is_eso_spectrum
from gasnet_plugin.io.lamost import LAMOST_FORMAT, is_lamost_dr1, lamost_spectrum
from gasnet_plugin.io.spectrum import register_specutils_loader

lamost_dr1_loader = register_specutils_loader(LAMOST_FORMAT, is_lamost_dr1, lamost_spectrum)
"""specutils loader for LAMOST 1-D spectra (path, file object or HDUList)."""

eso_sdp_loader = register_specutils_loader(
    ESO_FORMAT, is_eso_spectrum, lambda hdul, source: eso_spectra(hdul, source)[0])
"""specutils loader for ESO SDP 1-D spectra (the first row of HDU1)."""

FORMATS = (LAMOST_FORMAT, ESO_FORMAT)
"""The specutils format names this module registers."""

__all__ = ["FORMATS", "eso_sdp_loader", "lamost_dr1_loader"]
