"""``gasnet train eigen``: learn per-class eigenspectra and encoders, GaSNet-III's recipe.

For every class, on labelled spectra of that class (resampled onto the model's grid and
preprocessed as the engine does): the encoder predicts amplitude and mixture weights, the
model spectrum ``m = amp · coef @ E`` on the rest-frame grid is cut at the lag of the
*known* redshift, and the loss is the χ² per pixel of the observed fluctuation against
that window (GaSNet-III's χ² loss on the rest-frame overlap). The eigenspectra ``E`` and
the encoder are learned together with Adam and a step learning-rate decay.

Seeds (torch and numpy) make runs repeatable; a validation split drives early stopping
(the best validation state is kept); checkpoints are ASDF files (the model so far, the
optimiser's moment arrays, the epoch, the history, the random state) from which training
resumes. Training starts from scratch (random eigenspectra, fresh encoder: GaSNet-III's
initialisation) or from an existing model (fine-tuning).
"""

from __future__ import annotations

import copy
import datetime
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gasnet_plugin.engines.eigen_preprocess import preprocess
from gasnet_plugin.io.asdf_files import write_asdf_atomically
from gasnet_plugin.models.eigen_model import (
    ENCODER_TYPE,
    EigenModel,
    EigenTemplate,
    ModelError,
    build_encoder,
)


@dataclass
class TrainSettings:
    """Hyper-parameters of a training run (all recorded in the model's provenance)."""

    n_eigen: int = 10
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_step: int = 20
    lr_gamma: float = 0.5
    val_fraction: float = 0.2
    patience: int = 8
    seed: int = 0
    device: str = "cpu"


@dataclass
class ClassData:
    """Preprocessed training spectra of one class: ``fluct``, ``ivar`` ``(n, N)`` float32
    and the known redshift ``z`` ``(n,)``."""

    fluct: torch.Tensor
    ivar: torch.Tensor
    z: np.ndarray


@dataclass
class History:
    """Per class and epoch: training and validation χ² per pixel."""

    train: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)


class EigenNetwork(torch.nn.Module):
    """One class's trainable eigenspectra ``(K, L)`` and encoder (GaSNet-III's network)."""

    def __init__(self, template: EigenTemplate) -> None:
        super().__init__()
        self.eigenvectors = torch.nn.Parameter(torch.from_numpy(
            np.array(template.eigenvectors, dtype=np.float32)))
        self.encoder = build_encoder(template).train()
        self.n_eigen = template.n_eigen

    def forward(self, fluct: torch.Tensor) -> torch.Tensor:
        out = self.encoder(fluct[:, None, :])
        amplitude = torch.abs(out[:, self.n_eigen:self.n_eigen + 1])
        weights = out[:, :self.n_eigen] ** 2
        weights = weights / torch.sum(weights, dim=1, keepdim=True).clamp_min(1e-30)
        return (amplitude * weights) @ self.eigenvectors


def lag_of(template: EigenTemplate, obs_loglam0: float, n_obs: int, z: np.ndarray,
           ) -> np.ndarray:
    """The whole lag (rest pixel on observed pixel 0) of redshifts ``z``, within the
    full-overlap lags ``0 .. L − N``."""
    rest = template.rest_loglam
    step = (rest[-1] - rest[0]) / (rest.size - 1)
    lag = np.rint((obs_loglam0 - np.log10(1 + z) - rest[0]) / step).astype(np.int64)
    return np.clip(lag, 0, rest.size - n_obs)


def window_chi2(model: torch.Tensor, lags: torch.Tensor, fluct: torch.Tensor,
                ivar: torch.Tensor) -> torch.Tensor:
    """χ² per valid pixel of each spectrum against ``model[:, lag:lag+N]``, ``(B,)``."""
    n_obs = fluct.shape[1]
    index = lags[:, None] + torch.arange(n_obs, device=model.device)[None, :]
    window = torch.gather(model, 1, index)
    return torch.sum(ivar * (fluct - window) ** 2, dim=1) / ivar.gt(0).sum(dim=1).clamp_min(1)


def fresh_template(name: str, obs_loglam: np.ndarray, z_min: float, z_max: float,
                   n_eigen: int, generator: torch.Generator) -> EigenTemplate:
    """A class template initialised as GaSNet-III does (uniform random eigenspectra, a
    freshly initialised encoder) on the grid the z range needs."""
    n_obs = obs_loglam.size
    delta = float((obs_loglam[-1] - obs_loglam[0]) / (n_obs - 1))
    n_rest = round(n_obs + math.log10(1 + z_max) / delta - math.log10(1 + z_min) / delta)
    top = obs_loglam[-1]
    rest = np.linspace(-n_obs * delta - math.log10(1 + z_max), -math.log10(1 + z_min),
                       n_rest) + top
    arch = {"type": ENCODER_TYPE, "channels": [8, 16, 32], "kernel_size": 9, "stride": 5,
            "padding": 1, "pool": 2, "n_inputs": n_obs, "n_outputs": n_eigen + 1}
    probe = EigenTemplate(name, np.zeros((n_eigen, n_rest), np.float32), rest, z_min, z_max,
                          arch, {})
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    module = _fresh_encoder(probe)
    eigen = torch.rand((n_eigen, n_rest), generator=generator).numpy().astype(np.float32)
    return EigenTemplate(name, eigen, rest, z_min, z_max, arch,
                         {k: v.detach().numpy().copy() for k, v in module.state_dict().items()})


def _fresh_encoder(template: EigenTemplate) -> torch.nn.Module:
    arch = template.encoder
    layers: list[torch.nn.Module] = []
    previous = 1
    for channels in arch["channels"]:
        layers += [torch.nn.Conv1d(previous, channels, arch["kernel_size"], arch["stride"],
                                   arch["padding"]),
                   torch.nn.ReLU(), torch.nn.MaxPool1d(arch["pool"], arch["pool"])]
        previous = channels
    n = arch["n_inputs"]
    for _ in arch["channels"]:
        n = (n + 2 * arch["padding"] - arch["kernel_size"]) // arch["stride"] + 1
        n = (n - arch["pool"]) // arch["pool"] + 1
    layers += [torch.nn.Flatten(), torch.nn.Linear(n * arch["channels"][-1], arch["n_outputs"])]
    return torch.nn.Sequential(*layers)


def prepare(model: EigenModel, flux: np.ndarray, ivar: np.ndarray, spectype: np.ndarray,
            z: np.ndarray) -> dict[str, ClassData]:
    """Preprocess labelled spectra (on the model's grid) and split them by class, keeping
    those whose redshift lies in the class's range."""
    with torch.no_grad():
        pre = preprocess(torch.from_numpy(np.ascontiguousarray(flux, np.float32)),
                         torch.from_numpy(np.ascontiguousarray(ivar, np.float32)),
                         torch.from_numpy(model.obs_loglam), model.preprocessing["poly_deg"])
    ok = pre.ok.numpy()
    out = {}
    for template in model.templates:
        pick = np.flatnonzero(ok & (np.asarray(spectype) == template.name)
                              & (z >= template.z_min) & (z <= template.z_max))
        if pick.size:
            index = torch.from_numpy(pick)
            out[template.name] = ClassData(pre.fluctuation[index], pre.ivar[index], z[pick])
    return out


def train_eigen(base: EigenModel, data: dict[str, ClassData], settings: TrainSettings,
                checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
                progress: bool = True, trained_on: str = "") -> tuple[EigenModel, History]:
    """Train (or fine-tune) every class of ``base`` that has data; returns the new model
    (classes without data are kept as they are) and the history."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = torch.device(settings.device)
    model = copy.deepcopy(base)
    history = History()
    start_state: dict[str, Any] = {}
    if resume and checkpoint and Path(checkpoint).exists():
        start_state = read_checkpoint(checkpoint)
        model = start_state["model"]
        history = start_state["history"]
    for index, template in enumerate(model.templates):
        name = template.name
        if name not in data:
            continue
        cls = data[name]
        n = cls.fluct.shape[0]
        order = rng.permutation(n)
        n_val = max(1, round(settings.val_fraction * n)) if n > 4 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        network = EigenNetwork(template).to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
        scheduler = torch.optim.lr_scheduler.StepLR(optimiser, settings.lr_step,
                                                    settings.lr_gamma)
        first_epoch = 0
        saved = start_state.get("classes", {}).get(name)
        if saved is not None:
            if saved["done"]:
                continue
            _load_optimiser(optimiser, saved["optimiser"])
            first_epoch = saved["epoch"] + 1
            for _ in range(first_epoch):
                scheduler.step()
        lags = torch.from_numpy(lag_of(template, model.obs_loglam[0], model.obs_loglam.size,
                                       cls.z)).to(device)
        fluct, ivar = cls.fluct.to(device), cls.ivar.to(device)
        history.train.setdefault(name, [])
        history.val.setdefault(name, [])
        best = min(history.val[name]) if history.val[name] else math.inf
        best_state = copy.deepcopy(network.state_dict())
        stale = 0
        bar = tqdm(range(first_epoch, settings.epochs), desc=f"train {name}", unit="epoch",
                   disable=not progress)
        for epoch in bar:
            network.train()
            shuffled = rng.permutation(train_idx)
            losses = []
            for batch in np.array_split(shuffled, max(1, len(shuffled) // settings.batch_size)):
                pick = torch.from_numpy(batch).to(device)
                loss = window_chi2(network(fluct[pick]), lags[pick], fluct[pick],
                                   ivar[pick]).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            network.eval()
            with torch.no_grad():
                pick = torch.from_numpy(val_idx if n_val else train_idx).to(device)
                val = float(window_chi2(network(fluct[pick]), lags[pick], fluct[pick],
                                        ivar[pick]).mean())
            history.train[name].append(float(np.mean(losses)))
            history.val[name].append(val)
            bar.set_postfix(train=f"{np.mean(losses):.3f}", val=f"{val:.3f}")
            if val < best - 1e-6:
                best, stale = val, 0
                best_state = copy.deepcopy(network.state_dict())
                history.best_epoch[name] = epoch
            else:
                stale += 1
            if checkpoint:
                model.templates[index] = _template_from(network, template)
                write_checkpoint(checkpoint, model, history, name, epoch, optimiser,
                                 done=False)
            if stale >= settings.patience:
                break
        network.load_state_dict(best_state)
        model.templates[index] = _template_from(network, template)
        if checkpoint:
            write_checkpoint(checkpoint, model, history, name, settings.epochs, optimiser,
                             done=True)
    model.provenance = {
        "source": f"gasnet train eigen from {base.name!r}",
        "trained_on": trained_on or "labelled spectra (see the command line)",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {k: str(v) for k, v in settings.__dict__.items()},
        "classes_trained": ", ".join(data),
        "citation": base.provenance.get("citation", ""),
        "license": base.provenance.get("license", ""),
    }
    return model, history


def _template_from(network: EigenNetwork, template: EigenTemplate) -> EigenTemplate:
    weights = {k: v.detach().cpu().numpy().copy() for k, v in network.encoder.state_dict().items()}
    return EigenTemplate(template.name, network.eigenvectors.detach().cpu().numpy().copy(),
                         template.rest_loglam, template.z_min, template.z_max,
                         dict(template.encoder), weights)


# -- checkpoints (ASDF, no pickle) ---------------------------------------------------------


def _optimiser_arrays(optimiser: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimiser.state_dict()
    return {str(k): {name: (v.cpu().numpy() if torch.is_tensor(v) else v)
                     for name, v in s.items()} for k, s in state["state"].items()}


def _load_optimiser(optimiser: torch.optim.Optimizer, arrays: dict[str, Any]) -> None:
    state = optimiser.state_dict()
    state["state"] = {int(k): {name: torch.as_tensor(np.asarray(v)) for name, v in s.items()}
                      for k, s in arrays.items()}
    optimiser.load_state_dict(state)


def write_checkpoint(path: str | os.PathLike[str], model: EigenModel, history: History,
                     current: str, epoch: int, optimiser: torch.optim.Optimizer,
                     done: bool) -> None:
    """Write a resumable training state (atomically)."""
    import asdf

    path = Path(path)
    previous = read_checkpoint(path)["classes"] if path.exists() else {}
    previous[current] = {"epoch": int(epoch), "done": bool(done),
                         "optimiser": _optimiser_arrays(optimiser)}
    tree = {"model": model, "history": {"train": history.train, "val": history.val,
                                        "best_epoch": history.best_epoch},
            "classes": previous}
    write_asdf_atomically(asdf.AsdfFile(tree), path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint`."""
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            model = af["model"]
            history = History(train={k: list(v) for k, v in af["history"]["train"].items()},
                              val={k: list(v) for k, v in af["history"]["val"].items()},
                              best_epoch=dict(af["history"]["best_epoch"]))
            classes = {name: {"epoch": int(c["epoch"]), "done": bool(c["done"]),
                              "optimiser": {k: {n: np.array(v) for n, v in s.items()}
                                            for k, s in c["optimiser"].items()}}
                       for name, c in af["classes"].items()}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable training checkpoint: {exc}") from exc
    if not isinstance(model, EigenModel):
        raise ModelError(f"{path}: the checkpoint holds no eigenspectra model")
    return {"model": model, "history": history, "classes": classes}
