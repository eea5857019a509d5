"""The ``redrock`` engine: DESI's Redrock (``pip install 'gasnet-plugin[redrock]'``).

It runs Redrock's own ``zfind`` on the batch, as the spectra lie on the common grid, with a
Gaussian resolution matrix of ``resolution_sigma`` pixels (the resampled spectra carry
none), and maps its output into our columns: ``Z``, ``ZERR``, ``SPECTYPE``, ``SUBTYPE``,
``CHI2``, ``DELTACHI2``, ``RR_ZWARN`` (Redrock's own bits) and the candidates. Redrock's
bits map onto ours: ``SMALL_DELTA_CHI2`` → ``SMALL_DELTA_CHI2``, ``Z_FITLIMIT`` →
``Z_AT_EDGE``, ``LITTLE_COVERAGE`` → ``LITTLE_DATA``, the others (``NEGATIVE_MODEL``,
``BAD_MINFIT``, ``UNPLUGGED``, ...) → ``BAD_FIT``.

Templates: the ``templates`` parameter (a folder of ``rrtemplate-*.fits`` or one file), by
default ``$RR_TEMPLATE_DIR``. :mod:`gasnet_plugin.engines.redrock_templates` builds a
galaxy template from the SDSS idlspec2d eigen-templates (``gasnet redrock-templates``).

Redrock works target by target; building its ``Target`` objects is the one loop over
spectra here (the adapter's, not the hot path of our own engine).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import EngineInput, EngineResult, RedshiftEngine
from gasnet_plugin.host.config import ConfigError
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.stages.base import RunContext

REDROCK_BITS = {   # Redrock zwarning bit → ours
    "SMALL_DELTA_CHI2": ZWarn.SMALL_DELTA_CHI2,
    "Z_FITLIMIT": ZWarn.Z_AT_EDGE,
    "LITTLE_COVERAGE": ZWarn.LITTLE_DATA,
    "NODATA": ZWarn.NODATA,
}


def gaussian_resolution(n_pixels: int, sigma: float, half_width: int = 5) -> Any:
    """A banded (``scipy.sparse.dia_matrix``) Gaussian resolution matrix, rows summing
    to 1 (the first and last rows are not renormalised: Redrock masks rows whose sum is
    too low)."""
    import scipy.sparse

    offsets = np.arange(-half_width, half_width + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    return scipy.sparse.dia_matrix((np.repeat(kernel[:, None], n_pixels, axis=1), offsets),
                                   shape=(n_pixels, n_pixels))


class RedrockEngine(RedshiftEngine):
    """Redrock's zfind on the batch (optional extra ``redrock``)."""

    name = "redrock"
    summary = "DESI Redrock (PCA templates, its own zfind), mapped into our columns"
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "templates": {"type": "string", "default": "",
                      "description": "folder of rrtemplate-*.fits, or one file; '' = "
                                     "$RR_TEMPLATE_DIR"},
        "nminima": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3,
                    "description": "χ² minima Redrock refits per template"},
        "resolution_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                             "description": "Gaussian resolution, pixels of the common grid"},
        "quiet": {"type": "boolean", "default": True,
                  "description": "hide Redrock's progress messages"},
        "expected_classes": {"type": "array", "items": {"type": "string"},
                             "default": ["GALAXY", "QSO", "STAR"],
                             "description": "classes the run expects; one without a "
                                            "template is warned about at setup and flagged "
                                            "(MISSING_TEMPLATE) on every row"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._templates: dict[int, Any] = {}
        self.missing_classes: list[str] = []

    @property
    def template_path(self) -> str:
        path = self.params["templates"] or os.environ.get("RR_TEMPLATE_DIR", "")
        if not path:
            raise ConfigError("redrock engine: no templates (set engine_params.templates or "
                              "$RR_TEMPLATE_DIR)")
        if not os.path.exists(path):
            raise ConfigError(f"redrock engine: templates {path}: no such file or folder")
        return path

    def setup(self, context: RunContext | None = None) -> None:
        try:
            import redrock  # noqa: F401
        except ImportError:
            raise ConfigError("the redrock engine needs Redrock: "
                              "pip install 'gasnet-plugin[redrock]'") from None
        classes = template_classes(self.template_path)
        self.missing_classes = [c for c in self.params["expected_classes"] if c not in classes]
        if self.missing_classes:
            warnings.warn(f"redrock engine: no {', '.join(self.missing_classes)} template in "
                          f"{self.template_path} (it has {', '.join(sorted(classes))}): no "
                          f"spectrum can come out {' or '.join(self.missing_classes)}, and "
                          "every row gets ZWARN MISSING_TEMPLATE", UserWarning, stacklevel=2)

    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.redirect_stdout(io.StringIO()) if self.params["quiet"] \
            else contextlib.nullcontext()

    def measure(self, spectra: EngineInput) -> EngineResult:
        from redrock.targets import DistTargetsCopy, Spectrum, Target
        from redrock.templates import load_dist_templates
        from redrock.zfind import zfind
        from redrock.zwarning import ZWarningMask

        n_rows = spectra.flux.shape[0]
        wave = 10.0 ** np.asarray(spectra.loglam, dtype=np.float64)
        resolution = gaussian_resolution(wave.size, self.params["resolution_sigma"])
        targets = DistTargetsCopy([
            Target(i, [Spectrum(wave, np.array(spectra.flux[i], dtype=np.float64),
                                np.array(spectra.ivar[i], dtype=np.float64), resolution)])
            for i in range(n_rows)])
        with self._quiet():
            key = hash((wave.size, wave[0], wave[-1]))
            if key not in self._templates:
                self._templates[key] = load_dist_templates(
                    targets.wavegrids(), templates=self.template_path, mp_procs=1)
            _, zfit = zfind(targets, self._templates[key], mp_procs=1,
                            nminima=self.params["nminima"])
        zfit.sort(["targetid", "znum"])
        best = zfit[zfit["znum"] == 0]
        order = np.argsort(np.asarray(best["targetid"]))
        best = best[order]
        n_cand = int(np.max(zfit["znum"])) + 1
        cand_z = np.full((n_rows, n_cand), np.nan)
        cand_chi2 = np.full((n_rows, n_cand), np.nan)
        cand_type = np.full((n_rows, n_cand), "", dtype="<U12")
        tid, znum = np.asarray(zfit["targetid"]), np.asarray(zfit["znum"])
        cand_z[tid, znum] = zfit["z"]
        cand_chi2[tid, znum] = zfit["chi2"]
        cand_type[tid, znum] = [str(s).strip() for s in zfit["spectype"]]
        rr_zwarn = np.asarray(best["zwarn"], dtype=np.int64)
        zwarn = np.zeros(n_rows, dtype=np.int64)
        reasons: dict[int, str] = {}
        other = 0
        for flag in ZWarningMask.flags():
            name, bit = flag[0], int(flag[1])
            hit = (rr_zwarn & bit) != 0
            ours = REDROCK_BITS.get(name, ZWarn.BAD_FIT)
            zwarn[hit] |= int(ours)
            if hit.any():
                if ours == ZWarn.BAD_FIT:
                    other |= bit
                reasons.setdefault(int(ours), f"Redrock ZWARN {name}")
        if other:
            reasons[int(ZWarn.BAD_FIT)] = "Redrock ZWARN bits " + ", ".join(
                f[0] for f in ZWarningMask.flags() if int(f[1]) & other)
        if self.missing_classes:
            zwarn |= int(ZWarn.MISSING_TEMPLATE)
            reasons[int(ZWarn.MISSING_TEMPLATE)] = (
                f"no {', '.join(self.missing_classes)} template: the scan could not consider "
                f"{' or '.join(self.missing_classes)}")
        columns = {
            "Z": np.asarray(best["z"], dtype=np.float64),
            "ZERR": np.asarray(best["zerr"], dtype=np.float64),
            "SPECTYPE": np.array([str(s).strip() for s in best["spectype"]]),
            "SUBTYPE": np.array([str(s).strip() for s in best["subtype"]]),
            "CHI2": np.asarray(best["chi2"], dtype=np.float64),
            "DELTACHI2": np.asarray(best["deltachi2"], dtype=np.float64),
            "RR_ZWARN": rr_zwarn,
            "CAND_SPECTYPE": cand_type,
            "CAND_Z": cand_z,
            "CAND_CHI2": cand_chi2,
        }
        return EngineResult(columns=columns, zwarn=zwarn, reasons=reasons)


def template_classes(path: str) -> set[str]:
    """The classes (Redrock's ``RRTYPE``) of the ``rrtemplate-*.fits`` at ``path`` (a
    folder or one file)."""
    from astropy.io import fits

    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).glob("rrtemplate-*.fits"))
    classes = set()
    for file in files:
        try:
            rrtype = fits.getheader(file, 0).get("RRTYPE")
        except OSError:
            rrtype = None
        name = file.name.split("-")
        classes.add(str(rrtype).strip() if rrtype else (name[1] if len(name) > 2 else ""))
    return classes - {""}


@hookimpl
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    registry.add(RedrockEngine)
