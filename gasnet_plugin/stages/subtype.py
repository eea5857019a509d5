"""The subtype stage: emission-line measurements and SUBTYPE, as SDSS defines its subclasses.

It reads the decided class and redshift (``SPECTYPE``, ``Z``; the redshift-scan stage) and
the resampled spectra, and adds:

* for GALAXY and QSO rows (galaxies after subtracting a stellar continuum,
  :mod:`gasnet_plugin.stellar_continuum`), every line of
  :mod:`gasnet_plugin.emission_lines` (Hα, Hβ,
  [O III] 4959/5007, [N II] 6548/6584, [O II] 3727, [S II] 6717/6731, Mg II, C IV, Lyα, broad
  Hα and Hβ): ``<LINE>_FLUX``, ``_FLUX_ERR`` (``FLUX_UNIT`` × Å), ``_EW``, ``_EW_ERR``
  (rest-frame Å), ``_SIGMA``, ``_SIGMA_ERR`` (km/s), and ``<LINE>_DCHI2`` for the broad
  components; SUBTYPE from the BPT diagram and broad lines (:mod:`gasnet_plugin.subtypes`:
  ``AGN``, ``STARFORMING``, ``STARBURST``, ``BROADLINE`` and combinations, or ``""``);
* for STAR rows, the best of the named stellar templates
  (:mod:`gasnet_plugin.models.star_templates`): SUBTYPE is its spectral type as SDSS writes
  it (``"K3"``), ``STAR_TEMPLATE`` its full name and ``STAR_TEMPLATE_RCHI2`` its reduced χ².

With ``broadline_is_qso`` (default), a GALAXY whose broad Balmer line dominates is called
QSO, as SDSS and Redrock do (``SPECTYPE`` changes, ``BROADLINE_QSO`` is True); its redshift
stays the galaxy fit's. Everything is batched; loops run over line groups and chunks of
rows only, and with ``threads`` > 1 (``null``: as many as torch has) those independent
pieces run side by side (:func:`~gasnet_plugin.thread_map.thread_map`), with the same
results for any number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.stages.base import RunContext, Stage

if TYPE_CHECKING:
    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.models.star_templates import StarTemplates
    from gasnet_plugin.stellar_continuum import DispersionBasis

UNITS = {"FLUX": "FLUX_UNIT × Å", "FLUX_ERR": "FLUX_UNIT × Å", "EW": "Angstrom",
         "EW_ERR": "Angstrom", "SIGMA": "km / s", "SIGMA_ERR": "km / s"}
"""Unit of each line quantity (the flux is in the row's ``FLUX_UNIT`` times Å)."""
MEANING = {"FLUX": "line flux", "FLUX_ERR": "1-sigma error of the line flux",
           "EW": "rest-frame equivalent width (emission > 0)",
           "EW_ERR": "1-sigma error of the equivalent width",
           "SIGMA": "Gaussian width sigma as observed (instrument included)",
           "SIGMA_ERR": "1-sigma error of the width (NaN at the edge of the width grid)"}


class SubtypeStage(Stage):
    """Line measurements and SDSS-style subclasses for galaxies, QSOs and stars."""

    name = "subtype"
    summary = ("emission-line fluxes, EWs and widths; SUBTYPE from the BPT diagram, broad "
               "lines and named stellar templates")
    requires: ClassVar[tuple[str, ...]] = ("resample", "redshift-scan")
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "star_templates": {"type": "string", "default": "default",
                           "description": "named stellar templates (ASDF) or 'default' "
                                          "(SDSS spEigenStar-55734, 123 spectra)"},
        "continuum_templates": {"type": "string", "default": "default",
                                "description": "eigenspectra (ASDF, star-templates format) "
                                               "of the galaxies' stellar continuum, or "
                                               "'default' (SDSS spEigenElodie, 24 columns)"},
        "broadline_is_qso": {"type": "boolean", "default": True,
                             "description": "call a GALAXY whose broad Balmer line dominates "
                                            "QSO, as SDSS and Redrock do"},
        "threads": {"type": ["integer", "null"], "minimum": 1, "default": 1,
                    "description": "threads for the fits' independent pieces (the same "
                                   "results for any number); null: torch's thread count "
                                   "(every core in a local run)"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.templates: StarTemplates | None = None
        self.galaxy_basis: DispersionBasis | None = None
        self._blas: Any = None          # threadpoolctl.ThreadpoolController (setup)
        self._units: dict[str, Any] = {}  # quantity -> astropy unit (parsed once)

    def setup(self, context: RunContext) -> None:
        from gasnet_plugin.host.config import ConfigError
        from gasnet_plugin.line_fit_kernels import load_kernels as load_line_kernels
        from gasnet_plugin.models.star_fit_kernels import load_kernels as load_star_kernels
        from gasnet_plugin.models.star_templates import StarTemplatesError, load_star_templates
        from gasnet_plugin.stellar_continuum import (
            default_dispersion_basis,
            dispersion_basis,
            load_continuum_templates,
            load_kernels,
        )

        try:
            self.templates = load_star_templates(self.params["star_templates"])
        except StarTemplatesError as exc:
            raise ConfigError(f"stage 'subtype': {exc}") from None
        continuum = self.params["continuum_templates"]
        try:
            self.galaxy_basis = (default_dispersion_basis() if continuum == "default" else
                                 dispersion_basis(load_continuum_templates(continuum)))
        except StarTemplatesError as exc:       # the file itself (its name is in the text)
            raise ConfigError(f"stage 'subtype': {exc}") from None
        except ValueError as exc:               # too few eigenspectra in it
            raise ConfigError(f"stage 'subtype': {continuum}: {exc}") from None
        load_kernels()          # numba loads here, once, not with the first batch
        load_line_kernels()
        load_star_kernels()
        from astropy import units
        from threadpoolctl import ThreadpoolController

        # found once, here: finding the BLAS libraries reads /proc (~10 ms)
        self._blas = ThreadpoolController()

        self._units = {quantity: units.Unit(unit) for quantity, unit in UNITS.items()
                       if unit in ("Angstrom", "km / s")}

    def check_grid(self, loglam: np.ndarray) -> None:
        """Refuse a grid whose step is not the templates' (the fits place a spectrum on
        the templates' grid by whole pixels), and make the star templates' padded copies
        for its length now, not in the first batch."""
        from gasnet_plugin.host.config import ConfigError
        from gasnet_plugin.models.star_templates import grid_step_mismatch

        if self.templates is None or self.galaxy_basis is None:
            raise RuntimeError("subtype: setup() was not called")
        for what, dloglam in (("star_templates", self.templates.dloglam),
                              ("continuum_templates", self.galaxy_basis.dloglam)):
            step = grid_step_mismatch(loglam, dloglam)
            if step is not None:
                raise ConfigError(f"{what} {self.params[what]!r} have {dloglam:g} dex "
                                  f"pixels, the batch grid {step:g} dex: set the resample "
                                  f"stage's dloglam to {dloglam:g}")
        self.templates.padded(loglam.size)

    def process(self, batch: SpectrumBatch) -> None:
        import torch

        if self._blas is None:
            raise RuntimeError("subtype: setup() was not called")
        # one BLAS thread: matrix products then sum in one order, so a spectrum's result
        # is bit for bit the same on a laptop, a Dask worker or a resumed run; several
        # cores (``threads``) fit independent chunks of rows and line groups side by side
        threads = self.params["threads"] or torch.get_num_threads()
        with self._blas.limit(limits=1, user_api="blas"):
            self._process(batch, threads=threads)

    def _process(self, batch: SpectrumBatch, threads: int = 1) -> None:
        from gasnet_plugin.emission_lines import QUANTITIES, line_names, measure_lines
        from gasnet_plugin.models.star_templates import fit_star_templates
        from gasnet_plugin.stellar_continuum import fit_stellar_continuum
        from gasnet_plugin.subtypes import broad_line_dominated, emission_subtype

        if batch.spectrum is None or "SPECTYPE" not in batch.rows.colnames:
            raise RuntimeError("subtype needs resample and redshift-scan before it")
        n_rows = len(batch)
        flux = np.asarray(batch.spectrum.flux.value, dtype=np.float32)
        ivar = np.asarray(batch.spectrum.uncertainty.array, dtype=np.float32)
        loglam = batch.spectrum.meta["loglam"]
        spectype = np.asarray(batch.rows["SPECTYPE"]).astype(str)
        z = np.asarray(batch.rows["Z"], dtype=float)
        measured = batch.usable & np.isfinite(z)
        subtype = np.full(n_rows, "", dtype=object)

        emitting = np.flatnonzero(measured & np.isin(spectype, ["GALAXY", "QSO"]))
        # galaxies: lines on top of a stellar continuum (Balmer absorption); QSOs: local
        continuum = np.full((emitting.size, flux.shape[1]), np.nan)
        galaxies = spectype[emitting] == "GALAXY"
        if galaxies.any():
            rows = emitting[galaxies]
            continuum[galaxies] = fit_stellar_continuum(
                flux[rows], ivar[rows], loglam, z[rows], self.galaxy_basis, threads).model
        lines = measure_lines(flux[emitting], ivar[emitting], loglam, z[emitting], continuum,
                              threads)
        for name in line_names():
            for quantity in QUANTITIES:
                column = np.full(n_rows, np.nan)
                column[emitting] = lines[f"{name}_{quantity}"]
                key = f"{name}_{quantity}"
                batch.rows[key] = column
                batch.rows[key].description = f"{name}: {MEANING[quantity]} [{UNITS[quantity]}]"
                if quantity in self._units:
                    batch.rows[key].unit = self._units[quantity]
        for key in [k for k in lines if k.endswith("_DCHI2")]:
            column = np.full(n_rows, np.nan)
            column[emitting] = lines[key]
            batch.rows[key] = column
            batch.rows[key].description = (f"{key[:-6]}: chi2 improvement from adding the "
                                           "broad component")
        subtype[emitting] = emission_subtype(lines, z[emitting])
        to_qso = np.zeros(n_rows, dtype=bool)
        if self.params["broadline_is_qso"]:
            to_qso[emitting] = broad_line_dominated(lines) & (spectype[emitting] == "GALAXY")
            if to_qso.any():
                spectype[to_qso] = "QSO"
                batch.rows["SPECTYPE"] = spectype.astype(f"<U{max(len(s) for s in spectype)}")
        batch.rows["BROADLINE_QSO"] = to_qso
        batch.rows["BROADLINE_QSO"].description = ("GALAXY fit called QSO for its dominant "
                                                   "broad Balmer line (SDSS convention)")

        stars = np.flatnonzero(measured & (spectype == "STAR"))
        template = np.full(n_rows, "", dtype=object)
        rchi2 = np.full(n_rows, np.nan)
        if stars.size:
            fit = fit_star_templates(self.templates, flux[stars], ivar[stars], loglam,
                                     z[stars], threads)
            found = fit.index >= 0
            types = self.templates.spectral_types()
            names = np.asarray(self.templates.names)
            subtype[stars[found]] = types[fit.index[found]]
            template[stars[found]] = names[fit.index[found]]
            rchi2[stars] = fit.rchi2
        batch.rows["SUBTYPE"] = np.asarray(subtype, dtype=str)
        batch.rows["SUBTYPE"].description = ("SDSS-style subclass: BPT class and BROADLINE for "
                                             "galaxies and QSOs, spectral type for stars")
        batch.rows["STAR_TEMPLATE"] = np.asarray(template, dtype=str)
        batch.rows["STAR_TEMPLATE"].description = "best-fitting named stellar template"
        batch.rows["STAR_TEMPLATE_RCHI2"] = rchi2
        batch.rows["STAR_TEMPLATE_RCHI2"].description = "reduced chi2 of STAR_TEMPLATE"


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(SubtypeStage)
