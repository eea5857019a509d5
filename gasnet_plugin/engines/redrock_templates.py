"""Redrock-format templates from the SDSS pipeline's idlspec2d eigen-templates.

Redrock's galaxy template is not distributed with it; the SDSS spectro pipeline's
``spEigenGal-*.fits`` (4 galaxy eigenspectra on a log10-λ rest grid, ``COEFF0``/``COEFF1``)
serve instead. A Redrock template file is a primary HDU ``BASIS_VECTORS`` ``(nbasis, nwave)``
with ``CRVAL1``/``CDELT1`` (and ``LOGLAM = 1`` for a log10 grid), ``RRTYPE``, ``RRSUBTYP``,
``VERSION`` and ``RRIGM``, and optionally a ``REDSHIFTS`` HDU with the scan grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits


def idlspec2d_to_redrock(source: str | os.PathLike[str], target: str | os.PathLike[str],
                         spectype: str = "GALAXY", subtype: str = "",
                         z_range: tuple[float, float] | None = None,
                         dloglam_z: float = 3e-4, overwrite: bool = False) -> Path:
    """Write an idlspec2d eigen-template file as a Redrock template.

    Parameters
    ----------
    source
        ``spEigen*.fits`` (primary image ``(nbasis, nwave)``, log10-λ grid in
        ``COEFF0``/``COEFF1``).
    target
        Output file; Redrock finds templates named ``rrtemplate-*.fits``.
    spectype, subtype
        ``RRTYPE`` and ``RRSUBTYP``.
    z_range
        If given, a ``REDSHIFTS`` HDU from ``z_min`` to ``z_max`` in steps of ``dloglam_z``
        in log10(1 + z); otherwise Redrock's default range for the type.
    """
    source, target = Path(source), Path(target)
    with fits.open(source) as hdul:
        header = hdul[0].header
        basis = np.asarray(hdul[0].data, dtype=np.float64)
        if basis.ndim != 2 or "COEFF0" not in header or "COEFF1" not in header:
            raise ValueError(f"{source}: not an idlspec2d eigen-template (2-D primary image "
                             "with COEFF0/COEFF1)")
        out = fits.PrimaryHDU(basis)
        out.header["CRVAL1"] = (float(header["COEFF0"]), "log10 rest wavelength of pixel 0")
        out.header["CDELT1"] = (float(header["COEFF1"]), "log10 wavelength step")
        out.header["LOGLAM"] = (1, "CRVAL1/CDELT1 are log10(Angstrom)")
        out.header["RRTYPE"] = spectype.upper()
        out.header["RRSUBTYP"] = subtype.upper()
        out.header["RRIGM"] = "None"
        out.header["VERSION"] = f"idlspec2d-{source.stem}"
        out.header["INSPEC"] = source.name
        out.header["EXTNAME"] = "BASIS_VECTORS"
    hdus = [out]
    if z_range is not None:
        z_min, z_max = z_range
        redshifts = 10 ** np.arange(np.log10(1 + z_min), np.log10(1 + z_max), dloglam_z) - 1
        hdus.append(fits.ImageHDU(redshifts, name="REDSHIFTS"))
    fits.HDUList(hdus).writeto(target, overwrite=overwrite)
    return target
