"""The GaSNet-II networks (arXiv:2311.04146): a CNN classifier and a redshift regressor.

Both read the resampled spectrum on a model's observed grid (``N`` pixels, log10 Å) as two
channels: the flux, zero where there is no data and L2-normalised × √N over the spectrum
(GaSNet-II's input), and the valid-pixel mask (1 where ``ivar > 0``), so that gaps and
coverage edges are seen as such rather than as zero flux.

The trunk is a residual 1-D CNN: a strided stem convolution, then residual blocks (two
``kernel_size`` convolutions with batch normalisation, the first with stride 2, and a 1×1
strided shortcut), flattened — positions are kept, which the redshift needs. Then:

* **classifier** — dropout → Linear(→ ``hidden``) → ReLU → dropout → Linear(→ labels);
  softmax probabilities over a configurable label set (``GALAXY/QSO/STAR``, the SDSS
  subclasses, star spectral types, ...);
* **regressor** — ``n_heads`` independently initialised heads (Linear → ReLU → Linear),
  each predicting ``ln(1 + z)`` (in standardised units: ``target_offset`` and
  ``target_scale`` of the training set, kept in the architecture); ``z̄`` is the mean of
  the heads and ``σ`` their spread (standard deviation), times ``sigma_scale`` calibrated
  on the validation split.

A :class:`CNNModel` is plain data (architecture numbers, weight arrays, labels, grid,
provenance), so it round-trips through the project's ASDF tag ``cnn_model`` with no pickle.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gasnet_plugin.models.batch_norm_folding import fold_batch_norms
from gasnet_plugin.models.eigen_model import ModelError
from gasnet_plugin.models.float32_precision import full_float32

DEFAULT_CLASSIFIER = "gasnet2-classifier.asdf"
"""File name of the default classifier shipped in ``gasnet_plugin/data``."""
DEFAULT_REGRESSOR = "gasnet2-redshift.asdf"
"""File name of the default redshift regressor shipped in ``gasnet_plugin/data``."""
TASKS = ("classify", "redshift")
LABEL_SETS = ("class", "subclass", "star-type")
"""How a label is made from the truth: the class (``GALAXY``, ``QSO``, ``STAR``); the
class and survey subclass (``"GALAXY STARBURST"``, ``"STAR K5"``, SDSS's 13 subclasses
where the survey uses them); the spectral type letter of stars (``A``, ``F``, ``G``, ...)."""


def default_architecture(task: str, n_inputs: int) -> dict[str, Any]:
    """The default hyper-parameters: chosen so that the classifier runs at ≈ 0.1 ms per
    spectrum on one CPU core (stem stride 8); the regressor keeps 4× finer positions."""
    return {"type": "gasnet2-resnet", "n_inputs": n_inputs, "in_channels": 2,
            "channels": [8, 16, 16, 32, 32, 64, 64], "kernel_size": 5,
            "stem_stride": 8 if task == "classify" else 4, "hidden": 128,
            "dropout": 0.3, "n_heads": 1 if task == "classify" else 10}


@dataclass
class CNNModel:
    """A GaSNet-II network and what is needed to use it.

    Attributes
    ----------
    name
        A short identifier (recorded in results as ``CNN_MODEL``).
    task
        ``"classify"`` (probabilities over :attr:`labels`) or ``"redshift"`` (z and σ).
    obs_loglam
        ``(N,)`` float64 observed grid (log10 Å) the network reads.
    architecture
        Hyper-parameters (:func:`default_architecture`).
    weights
        Parameter and buffer name → array, as :class:`GaSNet2Network` names them.
    labels
        The label set of a classifier, in output order (empty for a regressor).
    label_set
        How labels were made from the truth (:data:`LABEL_SETS`).
    z_range
        ``(z_min, z_max)`` a regressor was trained on; predictions are clipped to it.
    sigma_scale
        Factor on the heads' spread that makes it a calibrated 1σ (1 for a classifier).
    provenance
        What the model was trained on, when, with which settings, and its validation scores.
    """

    name: str
    task: Literal["classify", "redshift"]
    obs_loglam: np.ndarray
    architecture: dict[str, Any]
    weights: dict[str, np.ndarray]
    labels: list[str] = field(default_factory=list)
    label_set: str = "class"
    z_range: tuple[float, float] = (0.0, 0.0)
    sigma_scale: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        """Outputs per head: the number of labels (classifier) or 1 (regressor)."""
        return len(self.labels) if self.task == "classify" else 1

    def check(self) -> None:
        """Raise :class:`~gasnet_plugin.models.eigen_model.ModelError` if inconsistent."""
        if self.task not in TASKS:
            raise ModelError(f"unknown task {self.task!r} (one of {', '.join(TASKS)})")
        if self.obs_loglam.ndim != 1 or self.obs_loglam.size < 64 \
                or not np.all(np.diff(self.obs_loglam) > 0):
            raise ModelError("obs_loglam must be a 1-D increasing grid of at least 64 pixels")
        if self.architecture.get("n_inputs") != self.obs_loglam.size:
            raise ModelError(f"the network reads {self.architecture.get('n_inputs')} pixels, "
                             f"the grid has {self.obs_loglam.size}")
        if self.task == "classify" and (len(self.labels) < 2
                                        or len(set(self.labels)) != len(self.labels)):
            raise ModelError(f"a classifier needs at least 2 distinct labels, has {self.labels}")
        if self.task == "redshift" and not self.z_range[1] > self.z_range[0] > -1:
            raise ModelError(f"bad z range {self.z_range}")
        if not np.isfinite(self.sigma_scale) or self.sigma_scale <= 0:
            raise ModelError(f"sigma_scale must be > 0, is {self.sigma_scale}")
        try:
            self.network()
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"weights do not fit the architecture: {exc}") from None

    def network(self) -> GaSNet2Network:
        """The network with this model's weights, in eval mode, float32, on the CPU."""
        module = GaSNet2Network(self.architecture, self.n_outputs)
        state = {name: torch.from_numpy(np.array(array)) for name, array in self.weights.items()}
        module.load_state_dict(state, strict=True)
        return module.eval()


class ResidualBlock(nn.Module):
    """Conv(k, stride 2) → BN → ReLU → Conv(k) → BN, plus a 1×1 stride-2 shortcut; ReLU.
    ``(B, C_in, L)`` → ``(B, C_out, ⌈L/2⌉)``."""

    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))
    """Convolutions and the batch norms that follow them (for
    :func:`~gasnet_plugin.models.batch_norm_folding.fold_batch_norms`)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, 2, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, 2, bias=False),
                                      nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class GaSNet2Network(nn.Module):
    """The residual CNN trunk and ``n_heads`` dense heads.

    ``forward`` maps ``(B, 2, N)`` inputs (:func:`network_input`) to ``(B, n_heads,
    n_outputs)``: logits for a classifier (one head), ``ln(1 + z)`` per head for a
    regressor.
    """

    def __init__(self, architecture: dict[str, Any], n_outputs: int) -> None:
        super().__init__()
        arch = architecture
        if arch.get("type") != "gasnet2-resnet":
            raise ValueError(f"unknown network type {arch.get('type')!r}")
        channels, k = list(arch["channels"]), int(arch["kernel_size"])
        stride = int(arch["stem_stride"])
        self.stem = nn.Sequential(
            nn.Conv1d(int(arch["in_channels"]), channels[0], 2 * stride + 1, stride, stride,
                      bias=False),
            nn.BatchNorm1d(channels[0]), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, k)
                                      for a, b in itertools.pairwise(channels)])
        length = (int(arch["n_inputs"]) - 1) // stride + 1
        for _ in channels[1:]:
            length = (length - 1) // 2 + 1
        self.n_flat = length * channels[-1]
        self.n_heads, self.n_outputs = int(arch["n_heads"]), n_outputs
        hidden, dropout = int(arch["hidden"]), float(arch["dropout"])
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(self.n_flat, hidden * self.n_heads)
        # one output layer per head, applied as a batched matrix product
        bound = 1.0 / np.sqrt(hidden)
        self.out_weight = nn.Parameter(torch.empty(self.n_heads, hidden, n_outputs)
                                       .uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(self.n_heads, n_outputs).uniform_(-bound, bound))
        # a regressor's heads work in standardised units: output · scale + offset
        self.target_offset = float(arch.get("target_offset", 0.0))
        self.target_scale = float(arch.get("target_scale", 1.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened trunk output, ``(B, n_flat)``."""
        return torch.flatten(self.blocks(self.stem(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(self.dropout(self.features(x))))
        h = self.dropout(h).view(x.shape[0], self.n_heads, -1)
        out = torch.einsum("bhk,hko->bho", h, self.out_weight) + self.out_bias
        return out * self.target_scale + self.target_offset


def network_input(flux: np.ndarray | torch.Tensor, ivar: np.ndarray | torch.Tensor,
                  ) -> torch.Tensor:
    """The network's ``(B, 2, N)`` float32 input from ``(B, N)`` flux and inverse variance.

    Channel 0: flux where ``ivar > 0`` (0 elsewhere and where not finite), scaled to unit
    RMS over the ``N`` pixels (L2 norm = √N); an all-zero spectrum stays zero. Channel 1:
    1 where the pixel has data, else 0.
    """
    flux = torch.as_tensor(flux, dtype=torch.float32)
    ivar = torch.as_tensor(ivar, dtype=torch.float32)
    # finite and positive ivar, finite flux (|NaN| < inf is False); 2.4x faster than
    # torch.isfinite twice, in a one-off timing on one core, and the same mask
    valid = (ivar > 0) & (ivar < math.inf) & (flux.abs() < math.inf)
    values = torch.where(valid, flux, torch.zeros((), dtype=torch.float32))
    rms = torch.sqrt(torch.mean(values.double() ** 2, dim=1, keepdim=True)).float()
    values = values / torch.where(rms > 0, rms, torch.ones((), dtype=torch.float32))
    return torch.stack([values, valid.float()], dim=1)


@dataclass
class Classification:
    """A classifier's output for ``B`` spectra: ``probabilities`` ``(B, n_labels)``, the
    ``labels``, and per spectrum the best label and its probability."""

    probabilities: np.ndarray
    labels: list[str]

    @property
    def best(self) -> np.ndarray:
        """``(B,)`` the most probable label."""
        return np.asarray(self.labels, dtype=object)[np.argmax(self.probabilities, axis=1)]

    @property
    def best_probability(self) -> np.ndarray:
        """``(B,)`` the top probability."""
        return np.max(self.probabilities, axis=1)


@dataclass
class RedshiftPrediction:
    """A regressor's output for ``B`` spectra: ``z`` ``(B,)`` (mean of the heads),
    ``z_err`` ``(B,)`` (calibrated spread), ``z_heads`` ``(B, n_heads)``, and ``spread``
    ``(B,)``, the heads' raw standard deviation in ln(1 + z) (NaN for one head)."""

    z: np.ndarray
    z_err: np.ndarray
    z_heads: np.ndarray
    spread: np.ndarray


DEFAULT_CHUNK = 64
"""Spectra per forward pass by default. On one core (AMD EPYC, 256 mock-like spectra,
one-off timing) parts of 64 cost the regressor 0.17 ms per spectrum against 0.21–0.26 in
one pass of 256, the classifier about the same (0.085 against 0.075–0.084), and a pass of
256 needs ~75 MB of activations that parts of 64 keep within memory already held; the
outputs are the same bit for bit. End to end: ``benchmarks/bench_end_to_end.py``."""


class CNNPredictor:
    """Runs a :class:`CNNModel` on batches (built once; vectorised over the batch).

    Parameters
    ----------
    model
        The model.
    device
        Torch device (``"cpu"``, ``"cuda[:N]"``).
    chunk
        Most spectra per forward pass. A batch is cut into equal parts of at most
        ``chunk`` (sizes differing by one at most), never into a remainder of a few rows:
        the convolutions of 1 to 3 rows take another algorithm and round differently, so
        even parts keep a spectrum's outputs bit for bit those of the whole batch in one
        pass (tested). Parts of :data:`DEFAULT_CHUNK` keep the activations in cache.
    """

    def __init__(self, model: CNNModel, device: str = "cpu",
                 chunk: int = DEFAULT_CHUNK) -> None:
        self.model = model
        self.device = torch.device(device)
        # batch norms folded into their convolutions: the same function, fewer passes
        # (outputs to float32 rounding of the unfolded network's; tested)
        self.network = fold_batch_norms(model.network()).to(self.device)
        self.chunk = chunk

    def raw(self, flux: np.ndarray, ivar: np.ndarray, inputs: torch.Tensor | None = None,
            ) -> np.ndarray:
        """``(B, n_heads, n_outputs)`` float32 network outputs; spectra must lie on the
        model's grid (``(B, N)``). ``inputs``: :func:`network_input` of these spectra
        where another model has already made it (a classifier and a regressor read the
        same input; each row's input depends on that row alone)."""
        n = self.model.obs_loglam.size
        if flux.ndim != 2 or flux.shape[1] != n or ivar.shape != flux.shape:
            raise ValueError(f"model {self.model.name!r} reads (B, {n}) spectra on its grid; "
                             f"got flux {flux.shape}, ivar {ivar.shape}")
        out = np.empty((flux.shape[0], self.network.n_heads, self.network.n_outputs),
                       dtype=np.float32)
        n_parts = -(-flux.shape[0] // self.chunk)
        bounds = np.linspace(0, flux.shape[0], n_parts + 1).round().astype(int)
        if inputs is None:
            inputs = network_input(flux, ivar)
        elif tuple(inputs.shape) != (flux.shape[0], 2, n):
            raise ValueError(f"inputs {tuple(inputs.shape)} are not the network input of "
                             f"these {flux.shape[0]} spectra, (B, 2, {n})")
        with torch.inference_mode(), full_float32():
            for start, stop in itertools.pairwise(bounds):
                x = inputs[start:stop].to(self.device)
                out[start:stop] = self.network(x).float().cpu().numpy()
        return out

    def classify(self, flux: np.ndarray, ivar: np.ndarray,
                 inputs: torch.Tensor | None = None) -> Classification:
        """Label probabilities of every spectrum (``inputs``: see :meth:`raw`)."""
        if self.model.task != "classify":
            raise ValueError(f"model {self.model.name!r} is a {self.model.task} model")
        logits = torch.from_numpy(self.raw(flux, ivar, inputs)[:, 0, :])
        return Classification(torch.softmax(logits, dim=1).numpy(), list(self.model.labels))

    def redshift(self, flux: np.ndarray, ivar: np.ndarray,
                 inputs: torch.Tensor | None = None) -> RedshiftPrediction:
        """Redshift and calibrated 1σ error of every spectrum (``inputs``: see
        :meth:`raw`)."""
        if self.model.task != "redshift":
            raise ValueError(f"model {self.model.name!r} is a {self.model.task} model")
        return redshift_from_heads(self.raw(flux, ivar, inputs)[:, :, 0], self.model)


def redshift_from_heads(ln1pz: np.ndarray, model: CNNModel) -> RedshiftPrediction:
    """Combine ``(B, n_heads)`` ``ln(1 + z)`` predictions: z of the mean, σ from the spread
    (propagated to z, times ``sigma_scale``), clipped to the model's z range."""
    z_min, z_max = model.z_range
    mean = ln1pz.astype(np.float64).mean(axis=1)
    spread = ln1pz.astype(np.float64).std(axis=1, ddof=1) if ln1pz.shape[1] > 1 \
        else np.full(mean.shape, np.nan)
    z = np.clip(np.expm1(mean), z_min, z_max)
    z_err = model.sigma_scale * spread * (1.0 + z)
    return RedshiftPrediction(z=z, z_err=z_err, z_heads=np.expm1(ln1pz.astype(np.float64)),
                              spread=spread)


def check_grid(model: CNNModel, loglam: np.ndarray) -> None:
    """Refuse a batch grid a CNN model was not trained on (length, or > 0.5 px offset)."""
    obs = model.obs_loglam
    step = float((obs[-1] - obs[0]) / (obs.size - 1))
    if loglam.shape != obs.shape or np.max(np.abs(loglam - obs)) > 0.5 * step:
        from gasnet_plugin.host.config import ConfigError

        raise ConfigError(
            f"model {model.name!r} reads {obs.size} pixels from {10**obs[0]:.1f} to "
            f"{10**obs[-1]:.1f} Å at {step:.6g} dex; the batch grid has {loglam.size} pixels "
            f"from {10**loglam[0]:.1f} to {10**loglam[-1]:.1f} Å: set the resample stage to "
            f"the model's grid")


def default_cnn_path(task: str) -> Path:
    """Path of the default classifier or regressor shipped with the package."""
    name = DEFAULT_CLASSIFIER if task == "classify" else DEFAULT_REGRESSOR
    return Path(str(resources.files("gasnet_plugin.data").joinpath(name)))


def load_cnn_model(path: str | os.PathLike[str], task: str) -> CNNModel:
    """Read and validate a GaSNet-II model file (``"default"``: the shipped one for
    ``task``).

    Raises
    ------
    ModelError
        If the file is missing, not a gasnet CNN model, fails its schema, is inconsistent
        or is a model for another task; the message names the file.
    """
    from gasnet_plugin.io.model_file import read_model

    path = default_cnn_path(task) if str(path) == "default" else Path(path)
    model = read_model(path, kind=CNNModel)
    if model.task != task:
        raise ModelError(f"{path}: a {model.task} model, not a {task} model")
    for name, weights in model.weights.items():
        array = np.asarray(weights)
        if array.dtype.kind not in "fiub" or not np.all(np.isfinite(array)):
            raise ModelError(f"{path}: weight {name!r} is not finite numbers")
    return model
