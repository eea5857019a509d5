"""The resample stage: every spectrum of a batch onto one common log10-λ grid.

Resampling is flux-conserving: each output pixel is the exact overlap-weighted mean of
the flux densities of the input pixels it covers (bin-overlap integration of a piecewise
constant flux density, in Å, as specutils' ``FluxConservingResampler`` does). Inverse
variance is propagated exactly for independent input pixels:
``var_out = Σ p_i² var_i / (Σ p_i)²`` with ``p_i`` the overlap in Å.

Masks are carried: input pixels that are masked, have ``ivar <= 0`` or non-finite values
take no part, the mean runs over the valid overlap only, and an output pixel with no valid
input gets flux 0 and ivar 0. Input pixel edges are the midpoints between pixel centres
(the outer edges half a spacing out), as specutils defines them; output pixel ``j`` spans
``10**(loglam_j ± dloglam/2)`` Å.

The whole batch is resampled at once: the ragged input spectra are padded into ``(N, M)``
arrays and one compiled kernel (numba, :mod:`gasnet_plugin.flux_rebinning`) walks each
row's input and output edges together, O(M + P) per spectrum, with no Python loop per
spectrum or per pixel.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

import astropy.units as u
import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.stages.base import Stage
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from specutils import SpectralAxis, Spectrum

    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.stages.base import RunContext


def loglam_grid(wavelength_min: float, wavelength_max: float, dloglam: float) -> np.ndarray:
    """Pixel centres of the common grid, log10 Å, shape ``(P,)``.

    The first and last centres are ``log10(wavelength_min)`` and ``log10(wavelength_max)``
    rounded to whole multiples of ``dloglam``, so that spectra already on such a grid (SDSS,
    LAMOST) map onto it pixel for pixel. The default 3600–9200 Å at 1e-4 dex gives 4076
    pixels from 3.5563 to 3.9638.
    """
    first = round(np.log10(wavelength_min) / dloglam)
    last = round(np.log10(wavelength_max) / dloglam)
    return np.arange(first, last + 1, dtype=np.float64) * dloglam


def _inverse_variance(spectrum: Spectrum) -> np.ndarray | None:
    from astropy.nddata import InverseVariance

    uncertainty = spectrum.uncertainty
    if uncertainty is None:
        return None
    if not isinstance(uncertainty, InverseVariance):
        uncertainty = uncertainty.represent_as(InverseVariance)
    array = np.asarray(uncertainty.array)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


class ResampleStage(Stage):
    """Resample every spectrum onto the common log10-λ grid (flux-conserving)."""

    name = "resample"
    summary = "flux-conserving resampling onto the common log10-λ grid, ivar and mask carried"
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "wavelength_min": {"type": "number", "exclusiveMinimum": 0, "default": 3600.0,
                           "description": "first pixel centre of the grid, Å (snapped to a "
                                          "multiple of dloglam in log10)"},
        "wavelength_max": {"type": "number", "exclusiveMinimum": 0, "default": 9200.0,
                           "description": "last pixel centre of the grid, Å"},
        "dloglam": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-4,
                    "description": "pixel width, log10 Å (dex)"},
        "use_mask": {"type": "boolean", "default": True,
                     "description": "drop input pixels flagged in the spectrum's mask "
                                    "(SDSS: and_mask != 0)"},
    }
    arrays: ClassVar[dict[str, str]] = {
        "flux": "flux on the common grid, (N, P), each row in its own FLUX_UNIT",
        "ivar": "inverse variance on the common grid, (N, P); 0 = no data",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        low, high, step = (self.params[k] for k in ("wavelength_min", "wavelength_max",
                                                     "dloglam"))
        if not all(np.isfinite(v) for v in (low, high, step)):
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(f"stage 'resample': wavelength_min, wavelength_max and dloglam "
                              f"must be finite (got {low}, {high}, {step})")
        if np.log10(high / low) / step > MAX_GRID_PIXELS:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError(f"stage 'resample': {low}-{high} Å at {step:g} dex is "
                              f"{np.log10(high / low) / step:.3g} pixels, more than "
                              f"{MAX_GRID_PIXELS:,}")
        if self.params["wavelength_max"] <= self.params["wavelength_min"]:
            from gasnet_plugin.host.config import ConfigError

            raise ConfigError("stage 'resample': wavelength_max must exceed wavelength_min")

    def setup(self, context: RunContext) -> None:
        from gasnet_plugin.flux_rebinning import load_kernels

        load_kernels()          # numba loads here, once, not with the plugin or the first batch

    @functools.cached_property
    def grid_axis(self) -> tuple[SpectralAxis, Any]:
        """The common grid as a spectral axis (Å, shape ``(P,)``) and its WCS for a batch's
        ``(N, P)`` flux, made once and shared by every batch's spectrum. (A WCS does not
        depend on N. Made per batch, specutils builds a lookup-table WCS with a model
        class of its own, ~1 ms, and drops it as cyclic garbage that only the
        collector's full passes free: :mod:`gasnet_plugin.host.collector`.) The axis is
        read-only."""
        from specutils import Spectrum

        template = Spectrum(flux=np.zeros((1, self.loglam.size), dtype=np.float32) * u.one,
                            spectral_axis=10.0**self.loglam * u.AA)
        axis = template.spectral_axis
        axis.flags.writeable = False        # shared by every batch: none may change it
        return axis, template.wcs

    @property
    def loglam(self) -> np.ndarray:
        """Pixel centres of the output grid, log10 Å, shape ``(P,)``."""
        return loglam_grid(self.params["wavelength_min"], self.params["wavelength_max"],
                           self.params["dloglam"])

    def process(self, batch: SpectrumBatch) -> None:
        from astropy.nddata import InverseVariance
        from specutils import Spectrum

        from gasnet_plugin.flux_rebinning import median_snr, rebin_flux_conserving

        loglam = self.loglam
        half = self.params["dloglam"] / 2
        out_edges = 10.0 ** np.concatenate([loglam - half, loglam[-1:] + half])
        n_rows = len(batch)

        accepted = self._accepted_blocks(batch)
        flux_unit = self._common_unit([block for block, *_ in accepted])
        width = max([wave.size for _, _, wave, _ in accepted], default=1)
        # padded inputs; only each row's first n_pixels (+1 edges) are ever read
        centers = np.empty((n_rows, width))
        # float32 when every input is (survey files are), so the copy stays cheap; the
        # kernel accumulates in float64 either way
        dtype = np.result_type(np.float32, *[b.spectrum.data.dtype for b, *_ in accepted],
                               *[iv.dtype for *_, iv in accepted])
        flux = np.empty((n_rows, width), dtype=dtype)
        ivar = np.empty((n_rows, width), dtype=dtype)
        dropped = np.empty((n_rows, width), dtype=bool)
        n_pixels = np.zeros(n_rows, dtype=np.int64)
        units = np.full(n_rows, "", dtype=object)
        unit_names: dict[u.UnitBase, str] = {}
        for block, start, wave, block_ivar in accepted:
            n, m = len(block), wave.size
            rows = slice(start, start + n)
            spectrum = block.spectrum
            if spectrum.unit not in unit_names:      # dict lookup: units hash quickly
                unit_names[spectrum.unit] = spectrum.unit.to_string()
            # each row keeps its own unit (FLUX_UNIT): never rescaled into a neighbour's,
            # so a spectrum's result does not depend on the batch it is in
            centers[rows, :m] = wave
            flux[rows, :m] = np.reshape(spectrum.data, (n, m))
            ivar[rows, :m] = block_ivar.reshape(n, m)
            if self.params["use_mask"] and spectrum.mask is not None:
                dropped[rows, :m] = np.reshape(spectrum.mask, (n, m))
            else:
                dropped[rows, :m] = False
            n_pixels[rows] = m
            units[rows] = unit_names[spectrum.unit]
        has_row_data = n_pixels > 0
        n_pixels[~batch.usable] = 0          # rows flagged fatal earlier are not resampled

        # the grid's arrays are float32: written so by the kernel, no float64 copy made
        flux32, ivar32, n_broken, n_valid = rebin_flux_conserving(
            centers, flux, ivar, n_pixels, out_edges, dropped, out_dtype=np.float32)
        batch.flag(n_valid < 0, ZWarn.BAD_INPUT,
                   "wavelengths are not finite and strictly increasing")
        batch.flag(n_broken > 0, ZWarn.BAD_PIXELS,
                   [f"{n} pixel(s) with non-finite flux or ivar, or negative ivar, were masked"
                    for n in n_broken[n_broken > 0]])

        usable_rows = has_row_data & batch.usable
        npix_valid = (ivar32 > 0).sum(axis=1)
        # a spectrum far coarser than the grid (2 pixels spread over 4076) is no measurement
        native = ((centers >= out_edges[0]) & (centers <= out_edges[-1])
                  & (np.arange(width)[None, :] < n_pixels[:, None])).sum(axis=1)
        coarse = usable_rows & (npix_valid > COARSE_FACTOR * np.maximum(native, 1))
        batch.flag(coarse, ZWarn.BAD_INPUT,
                   [f"{n} input pixels within the grid, spread over {v} grid pixels: the "
                    f"spectrum is far coarser than the grid (> {COARSE_FACTOR}x)"
                    for n, v in zip(native[coarse], npix_valid[coarse], strict=True)])
        usable_rows &= ~coarse
        no_input = usable_rows & (n_valid == 0)
        no_overlap = usable_rows & (n_valid > 0) & (npix_valid == 0)
        batch.flag(no_input, ZWarn.NODATA, "no valid input pixel (all masked or ivar <= 0)")
        batch.flag(no_overlap, ZWarn.NODATA,
                   f"no valid pixel within the grid {10**loglam[0]:.0f}-{10**loglam[-1]:.0f} "
                   "Angstrom")

        beyond = ~(np.isfinite(flux32) & np.isfinite(ivar32))
        if beyond.any():        # values a float32 grid cannot hold: drop those pixels
            n_beyond = beyond.sum(axis=1)
            batch.flag(n_beyond > 0, ZWarn.BAD_PIXELS,
                       [f"{n} pixel(s) beyond the float32 range were masked"
                        for n in n_beyond[n_beyond > 0]])
            flux32[beyond] = 0.0
            ivar32[beyond] = 0.0
            npix_valid = (ivar32 > 0).sum(axis=1)
            lost = usable_rows & (npix_valid == 0) & (n_beyond > 0)
            batch.flag(lost, ZWarn.NODATA, "no pixel within the float32 range")
        snr_median = median_snr(flux32, ivar32)

        batch.rows["FLUX_UNIT"] = units.astype(str)
        batch.rows["FLUX_UNIT"].description = "flux unit of the input spectrum"
        batch.rows["NPIX_VALID"] = npix_valid.astype(np.int32)
        batch.rows["NPIX_VALID"].description = "pixels with ivar > 0 on the common grid"
        batch.rows["SNR_MEDIAN"] = snr_median
        batch.rows["SNR_MEDIAN"].description = "median flux·sqrt(ivar) over valid grid pixels"

        batch.arrays["flux"] = flux32
        batch.arrays["ivar"] = ivar32
        batch.spectrum = Spectrum(
            flux=u.Quantity(flux32, flux_unit, copy=False),
            spectral_axis=self.grid_axis[0],
            wcs=self.grid_axis[1],
            uncertainty=InverseVariance(ivar32, unit=flux_unit**-2, copy=False),
            mask=ivar32 == 0,
            meta={"rows": batch.rows, "loglam": loglam},
        )

    def _accepted_blocks(self, batch: SpectrumBatch,
                         ) -> list[tuple[Any, int, np.ndarray, np.ndarray]]:
        """Blocks whose arrays can be resampled, as ``(block, first row, λ in Å, ivar)``;
        the others are flagged BAD_INPUT with the reason."""
        accepted = []
        for block, start in zip(batch.blocks, batch.block_starts(), strict=True):
            rows = np.arange(start, start + len(block))
            if block.spectrum is None:
                continue
            reason, wave, ivar = _check_block(block.spectrum)
            if reason is not None:
                batch.flag(rows, ZWarn.BAD_INPUT, reason)
                continue
            accepted.append((block, int(start), wave, ivar))
        return accepted

    @staticmethod
    def _common_unit(blocks: list[Any]) -> u.UnitBase:
        """The flux unit every block has, or dimensionless when they differ (then each row's
        unit is only in ``FLUX_UNIT``; nothing is converted)."""
        if not blocks:
            return u.dimensionless_unscaled
        first = blocks[0].spectrum.unit
        if all(block.spectrum.unit == first for block in blocks):
            return first
        return u.dimensionless_unscaled


FLUX_DENSITY_UNITS = (u.erg / u.s / u.cm**2 / u.AA, u.Jy, u.dimensionless_unscaled,
                      u.photon / u.s / u.cm**2 / u.AA, u.photon / u.s / u.cm**2 / u.Hz)
"""Units a flux may be equivalent to: f_λ, f_ν, dimensionless, photon flux densities."""
COUNT_UNITS = (u.ct, u.adu, u.electron, u.photon)


COARSE_FACTOR = 8
"""A spectrum whose valid grid pixels outnumber its own pixels in the grid's range by more
than this is refused (BAD_INPUT): it would be interpolation, not data."""
MAX_GRID_PIXELS = 1_000_000
"""A common grid may have at most this many pixels (10⁻⁶ dex over the optical)."""


def _is_flux_density(unit: u.UnitBase | None) -> bool:
    """Whether ``unit`` is a spectral flux density, counts (per anything) or dimensionless."""
    if unit is None:
        return True
    if any(unit.is_equivalent(target) for target in FLUX_DENSITY_UNITS):
        return True
    bases = set(unit.decompose().bases) | set(getattr(unit, "bases", []))
    return any(count in bases for count in COUNT_UNITS)


def _check_block(spectrum: Spectrum) -> tuple[str | None, np.ndarray, np.ndarray]:
    """Why a spectrum cannot be resampled (or ``None``), its wavelengths (Å) and ivar."""
    empty = np.zeros(0)
    axis = spectrum.spectral_axis
    if not _is_flux_density(spectrum.unit):
        return (f"flux unit {spectrum.unit} is not a spectral flux density, counts or "
                f"dimensionless", empty, empty)
    try:
        wave = axis.value if axis.unit == u.AA \
            else axis.to_value(u.AA, equivalencies=u.spectral())
    except (u.UnitsError, ValueError):
        return (f"spectral axis in {spectrum.spectral_axis.unit} is not a wavelength",
                empty, empty)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size < 2:
        return f"{wave.size} pixel(s); at least 2 are needed", empty, empty
    # finite, strictly increasing wavelengths are checked by the kernel (n_valid = -1)
    shape = spectrum.data.shape
    if shape[-1] != wave.size:
        return (f"flux has {shape[-1]} pixels but the spectral axis "
                f"{wave.size}"), empty, empty
    ivar = _inverse_variance(spectrum)
    if ivar is None:
        return "no inverse-variance (or other) uncertainty", empty, empty
    if ivar.shape != shape:
        return f"uncertainty shape {ivar.shape} differs from flux {shape}", \
            empty, empty
    if spectrum.mask is not None and np.shape(spectrum.mask) != shape:
        return f"mask shape {np.shape(spectrum.mask)} differs from flux", empty, empty
    return None, wave, ivar


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(ResampleStage)
