"""Air and vacuum wavelengths.

Our models and templates are on vacuum wavelengths (SDSS, BOSS, DESI and LAMOST deliver
vacuum). Many instruments deliver air wavelengths instead: 2dF/AAOmega (unless its header
says ``VACUUM = T``), DEEP2/DEIMOS, and ESO products whose spectral-axis UCD is
``em.wl;obs.atmos``. In the optical the two differ by a factor ≈ 1.00028, i.e. a shift of
≈ 2.8e-4 in redshift — our whole error budget — so readers convert air to vacuum before
anything else sees the spectrum.

The conversion is the refractive index of standard air of Ciddor (1996, Appl. Opt. 35,
1566), the formula SDSS's ``idlutils`` ``airtovac`` and the IAU standard use (Morton 2000,
ApJS 130, 403). It applies above 2000 Å; shorter wavelengths are left as they are (air
does not transmit there, so they are vacuum wavelengths already).
"""

from __future__ import annotations

import numpy as np

AIR_VALID_FROM = 2000.0
"""Å; below this, wavelengths are taken as vacuum already (IAU convention)."""


def _refractive_index(vacuum_wavenumber_sq: np.ndarray) -> np.ndarray:
    """n(air) − 1 + 1 for ``σ² = (10⁴ / λ_vac[Å])²`` in μm⁻² (Ciddor 1996, eq. 1)."""
    s2 = vacuum_wavenumber_sq
    return 1.0 + 5.792105e-2 / (238.0185 - s2) + 1.67917e-3 / (57.362 - s2)


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths of air wavelengths.

    Parameters
    ----------
    wavelength_air
        Air wavelengths in Å, any shape.

    Returns
    -------
    numpy.ndarray
        Vacuum wavelengths in Å (float64), same shape. The index depends on the vacuum
        wavelength, so the solution is found by fixed-point iteration (three steps reach
        1e-9 Å).
    """
    air = np.asarray(wavelength_air, dtype=np.float64)
    vacuum = air.copy()
    valid = air >= AIR_VALID_FROM
    for _ in range(3):
        s2 = (1e4 / vacuum[valid]) ** 2
        vacuum[valid] = air[valid] * _refractive_index(s2)
    return vacuum


def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Air wavelengths of vacuum wavelengths in Å (the inverse of :func:`air_to_vacuum`)."""
    vacuum = np.asarray(wavelength_vacuum, dtype=np.float64)
    air = vacuum.copy()
    valid = vacuum >= AIR_VALID_FROM
    air[valid] = vacuum[valid] / _refractive_index((1e4 / vacuum[valid]) ** 2)
    return air
