"""The eigenspectra model (GaSNet-III): per class, K eigenspectra and an encoder.

A model is plain data (arrays and numbers) so that it round-trips through ASDF with no
pickle: :class:`EigenModel` holds the observed grid, the preprocessing settings, the
provenance and one :class:`EigenTemplate` per class. :func:`build_encoder` turns a
template's encoder weights into a torch module.

Grids are log10 Å. A class's rest-frame grid is the observed grid extended by its z range:
``L = N + log10(1 + z_max)/Δ − log10(1 + z_min)/Δ`` pixels. Aligning rest pixel ``s`` with
observed pixel 0 means ``1 + z = 10**(obs_loglam[0] − rest_loglam[s])``; ``s = 0`` is
``z_max`` and ``s = L − N`` is ``z_min``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_MODEL = "gasnet3-sdss.asdf"
"""File name of the default model shipped in ``gasnet_plugin/data``."""

ENCODER_TYPE = "gasnet3-encoder"


class ModelError(ValueError):
    """A model file is missing, malformed or inconsistent; the message names the file."""


@dataclass
class EigenTemplate:
    """One class of an eigenspectra model.

    Attributes
    ----------
    name
        The class (``GALAXY``, ``QSO``, ``STAR``): the ``SPECTYPE`` it gives.
    eigenvectors
        ``(K, L)`` float32 eigenspectra on :attr:`rest_loglam` (flux units of the
        preprocessed, RMS-normalised fluctuation).
    rest_loglam
        ``(L,)`` float64 rest-frame log10 λ of the eigenspectra pixels, increasing.
    z_min, z_max
        The redshift range the rest-frame grid covers.
    encoder
        Architecture hyper-parameters (``type``, ``channels``, ``kernel_size``, ``stride``,
        ``padding``, ``pool``, ``n_inputs``, ``n_outputs``).
    encoder_weights
        Parameter name → array, as :func:`build_encoder`'s module names them.
    """

    name: str
    eigenvectors: np.ndarray
    rest_loglam: np.ndarray
    z_min: float
    z_max: float
    encoder: dict[str, Any]
    encoder_weights: dict[str, np.ndarray]

    @property
    def n_eigen(self) -> int:
        """K, the number of eigenspectra."""
        return int(self.eigenvectors.shape[0])


@dataclass
class EigenModel:
    """An eigenspectra model: what the ``gasnet3`` engine and ``reconstruct`` need.

    Attributes
    ----------
    name
        A short identifier (recorded in results as ``MODEL``).
    obs_loglam
        ``(N,)`` observed grid (log10 Å) the encoders take, float64.
    templates
        One per class, in the order classes are reported.
    preprocessing
        ``poly_deg`` (continuum polynomial degree in log10 λ) and ``normalise``
        (``"rms"``: fluctuation divided by its RMS over all pixels).
    provenance
        What the model was made from and when (``source``, ``trained_on``, ``created``,
        ``citation``, ``license``, ...).
    """

    name: str
    obs_loglam: np.ndarray
    templates: list[EigenTemplate]
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"poly_deg": 5,
                                                                    "normalise": "rms"})
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names in model order."""
        return [t.name for t in self.templates]

    @property
    def dloglam(self) -> float:
        """Observed pixel width, dex."""
        return float((self.obs_loglam[-1] - self.obs_loglam[0]) / (self.obs_loglam.size - 1))

    def template(self, name: str) -> EigenTemplate:
        """The template of class ``name``."""
        for template in self.templates:
            if template.name == name:
                return template
        raise KeyError(f"model {self.name!r} has no class {name!r} (it has "
                       f"{', '.join(self.classes)})")

    def check(self) -> None:
        """Raise :class:`ModelError` if shapes or grids are inconsistent."""
        n_obs = self.obs_loglam.size
        if self.obs_loglam.ndim != 1 or n_obs < 16 or not np.all(np.diff(self.obs_loglam) > 0):
            raise ModelError("obs_loglam must be a 1-D increasing grid of at least 16 pixels")
        if not self.templates:
            raise ModelError("the model has no class templates")
        if len(set(self.classes)) != len(self.classes):
            raise ModelError(f"class names repeat: {self.classes}")
        for t in self.templates:
            where = f"class {t.name!r}"
            if t.eigenvectors.ndim != 2:
                raise ModelError(f"{where}: eigenvectors must be 2-D (K, L)")
            if t.eigenvectors.dtype.kind != "f" or not np.all(np.isfinite(t.eigenvectors)):
                raise ModelError(f"{where}: eigenvectors must be finite floats")
            if not np.any(t.eigenvectors):
                raise ModelError(f"{where}: eigenvectors are all zero")
            for name, weights in t.encoder_weights.items():
                array = np.asarray(weights)
                if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
                    raise ModelError(f"{where}: encoder weight {name!r} is not finite numbers")
            k, length = t.eigenvectors.shape
            if t.rest_loglam.shape != (length,):
                raise ModelError(f"{where}: rest_loglam has {t.rest_loglam.shape} pixels, "
                                 f"eigenvectors {length}")
            if length < n_obs:
                raise ModelError(f"{where}: rest grid ({length}) shorter than observed ({n_obs})")
            if not t.z_max > t.z_min > -1:
                raise ModelError(f"{where}: bad z range {t.z_min}..{t.z_max}")
            if t.encoder.get("type") != ENCODER_TYPE:
                raise ModelError(f"{where}: unknown encoder type {t.encoder.get('type')!r}")
            if t.encoder["n_inputs"] != n_obs or t.encoder["n_outputs"] != k + 1:
                raise ModelError(f"{where}: encoder takes {t.encoder['n_inputs']} pixels and "
                                 f"gives {t.encoder['n_outputs']} numbers; the model needs "
                                 f"{n_obs} and K + 1 = {k + 1}")
            try:
                build_encoder(t)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise ModelError(f"{where}: encoder weights do not fit the architecture: "
                                 f"{exc}") from None

    def z_of_lag(self, template: EigenTemplate, obs_loglam0: float | None = None) -> np.ndarray:
        """Redshift of each full-overlap lag ``s = 0 .. L − N`` (rest pixel ``s`` on observed
        pixel 0), ``(L − N + 1,)``; decreasing from ``z_max`` to ``z_min``."""
        first = self.obs_loglam[0] if obs_loglam0 is None else obs_loglam0
        n_lags = template.rest_loglam.size - self.obs_loglam.size + 1
        return 10.0 ** (first - template.rest_loglam[:n_lags]) - 1.0


def _flat_size(n_inputs: int, arch: dict[str, Any]) -> int:
    n = n_inputs
    for _ in arch["channels"]:
        n = (n + 2 * arch["padding"] - arch["kernel_size"]) // arch["stride"] + 1
        n = (n - arch["pool"]) // arch["pool"] + 1
    return n * arch["channels"][-1]


def build_encoder(template: EigenTemplate) -> nn.Sequential:
    """The template's encoder as a torch module (eval mode, float32, on the CPU).

    Conv1d(kernel, stride, padding) → ReLU → MaxPool1d(pool), once per entry of
    ``channels``, then Flatten and Linear(→ K + 1): GaSNet-III's encoder. Parameter names
    (``"0.weight"``, ..., ``"10.bias"``) are the keys of ``encoder_weights``.
    """
    arch = template.encoder
    layers: list[nn.Module] = []
    previous = 1
    for channels in arch["channels"]:
        layers += [nn.Conv1d(previous, channels, kernel_size=arch["kernel_size"],
                             stride=arch["stride"], padding=arch["padding"]),
                   nn.ReLU(), nn.MaxPool1d(kernel_size=arch["pool"], stride=arch["pool"])]
        previous = channels
    layers += [nn.Flatten(), nn.Linear(_flat_size(arch["n_inputs"], arch), arch["n_outputs"])]
    module = nn.Sequential(*layers)
    state = {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
             for name, array in template.encoder_weights.items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def default_model_path() -> Path:
    """Path of the default model file shipped with the package."""
    return Path(str(resources.files("gasnet_plugin.data").joinpath(DEFAULT_MODEL)))


def load_model(path: str | os.PathLike[str] = "default") -> EigenModel:
    """Read and validate a model file (``"default"``: the shipped SDSS model).

    Loading goes through the project's asdf tag and schema and never unpickles.

    Raises
    ------
    ModelError
        If the file is missing, not a gasnet model, fails its schema or is inconsistent.
    """
    from gasnet_plugin.io.model_file import read_model

    return read_model(default_model_path() if str(path) == "default" else Path(path))
