"""``gasnet train classifier`` and ``gasnet train redshift``: fit the GaSNet-II networks.

Inputs are labelled spectra on the model grid (real ones, mocks from ``gasnet simulate``,
or both). Real spectra are few, so they are drawn ``real_repeat`` times per epoch, and
every draw is augmented (:func:`augment`): fresh Gaussian noise from their own ivar, a
masked stretch, a cut coverage edge, and a whole-pixel shift along the log-λ grid (for the
regressor the shift moves the target ``ln(1 + z)`` by exactly ``shift · Δ · ln 10``, so a
shifted spectrum is a true example at another redshift).

* classifier: cross-entropy weighted by inverse label frequency; after training a single
  temperature (fitted on the validation split, by minimum negative log-likelihood) is
  folded into the output layer, which calibrates the probabilities;
* regressor: Huber loss on ``ln(1 + z)`` per head, each head with its own bootstrap
  (Poisson(1)) weight per training spectrum and its own initialisation, so the heads
  disagree where the data leave the answer open; after training ``sigma_scale`` is set so
  that 68 % of validation spectra lie within 1σ.

Seeds make runs repeatable: the split, every epoch's order and augmentation derive from
``seed`` and the epoch number, so a resumed run continues exactly. The validation split
(stratified by label and by real/mock) drives early stopping; the best validation state is
kept. Checkpoints are ASDF files (model so far, best weights, optimiser moments, epoch,
history) — no pickle.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gasnet_plugin.io.asdf_files import write_asdf_atomically
from gasnet_plugin.models.eigen_model import ModelError
from gasnet_plugin.models.gasnet2 import (
    CNNModel,
    GaSNet2Network,
    default_architecture,
    network_input,
    redshift_from_heads,
)
from gasnet_plugin.models.train_eigen import _load_optimiser, _optimiser_arrays


@dataclass
class CNNTrainSettings:
    """Hyper-parameters of a training run (recorded in the model's provenance)."""

    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 8
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    real_repeat: int = 0
    """Draws of each real spectrum per epoch; 0 = enough for reals to be ≈ 1/4 of an epoch."""
    max_shift: int = 20
    """Largest augmentation shift, pixels of the grid."""
    huber_delta: float = 0.003
    """Huber loss transition, in ln(1 + z)."""


@dataclass
class TrainingSet:
    """Labelled spectra on the model grid.

    Attributes
    ----------
    flux, ivar
        ``(n, N)`` float32.
    target
        ``(n,)`` int64 label index (classifier) or float64 redshift (regressor).
    real
        ``(n,)`` bool: a real spectrum (augmented and repeated) rather than a mock.
    """

    flux: np.ndarray
    ivar: np.ndarray
    target: np.ndarray
    real: np.ndarray

    def __len__(self) -> int:
        return int(self.target.size)


@dataclass
class CNNHistory:
    """Per epoch: training loss, validation loss and the validation score (accuracy or
    GF(Δz ≤ 0.0033))."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    best_epoch: int = -1


def make_labels(spectype: np.ndarray, subclass: np.ndarray, label_set: str) -> np.ndarray:
    """Labels of a label set (:data:`~gasnet_plugin.models.gasnet2.LABEL_SETS`) from the
    truth; ``""`` where a spectrum has none in that set (it is then left out)."""
    spectype = np.array([str(s).strip().upper() for s in spectype], dtype=object)
    subclass = np.array([str(s).strip() for s in subclass], dtype=object)
    if label_set == "class":
        return spectype
    if label_set == "subclass":
        return np.array([f"{c} {s}".strip() if c else "" for c, s in zip(spectype, subclass,
                                                                            strict=True)],
                        dtype=object)
    if label_set == "star-type":
        return np.array([s[:1].upper() if c == "STAR" and s[:1].upper() in "OBAFGKM" and s
                         else "" for c, s in zip(spectype, subclass, strict=True)], dtype=object)
    raise ValueError(f"unknown label set {label_set!r}")


def split_validation(data: TrainingSet, fraction: float, seed: int,
                     strata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)``: ``fraction`` of each stratum (label × real/mock,
    strata with ≥ 3 members) goes to validation; seeded."""
    rng = np.random.default_rng([seed, 7])
    key = np.array([f"{s}|{r}" for s, r in zip(strata, data.real, strict=True)])
    val = np.zeros(len(data), dtype=bool)
    for value in np.unique(key):
        members = np.flatnonzero(key == value)
        if members.size >= 3:
            n_val = max(1, round(fraction * members.size))
            val[rng.choice(members, size=n_val, replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def augment(flux: torch.Tensor, ivar: torch.Tensor, generator: torch.Generator,
            max_shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented copies of a ``(B, N)`` batch and the ``(B,)`` whole-pixel shifts applied.

    Per spectrum: Gaussian noise of ``a / √ivar`` (``a`` uniform in 0–1) on valid pixels;
    with probability ½ a masked stretch of up to 15 % of the grid; with probability ⅓ the
    blue or red edge cut by up to 10 %; a shift by ``−max_shift … max_shift`` pixels
    (pixels shifted in from outside get ivar 0). Vectorised over the batch.
    """
    b, n = flux.shape
    valid = ivar > 0
    sigma = torch.where(valid, torch.rsqrt(ivar.clamp_min(1e-30)), torch.zeros(()))
    amount = torch.rand(b, 1, generator=generator)
    flux = flux + amount * sigma * torch.randn(b, n, generator=generator)
    ivar = torch.where(valid, ivar / (1.0 + amount**2), ivar)
    pixel = torch.arange(n)[None, :]
    start = (torch.rand(b, 1, generator=generator) * n).long()
    length = (torch.rand(b, 1, generator=generator) * 0.15 * n).long()
    length = length * (torch.rand(b, 1, generator=generator) < 0.5)
    hole = (pixel >= start) & (pixel < start + length)
    cut = (torch.rand(b, 1, generator=generator) * 0.1 * n).long()
    cut = cut * (torch.rand(b, 1, generator=generator) < 1 / 3)
    blue = torch.rand(b, 1, generator=generator) < 0.5
    edge = torch.where(blue, pixel < cut, pixel >= n - cut)
    ivar = torch.where(hole | edge, torch.zeros(()), ivar)
    shift = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)
    source = pixel - shift[:, None]
    inside = (source >= 0) & (source < n)
    source = source.clamp(0, n - 1)
    flux = torch.where(inside, torch.gather(flux, 1, source), torch.zeros(()))
    ivar = torch.where(inside, torch.gather(ivar, 1, source), torch.zeros(()))
    return flux, ivar, shift


def train_cnn(base: CNNModel, data: TrainingSet, settings: CNNTrainSettings,
              checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
              progress: bool = True, trained_on: str = "") -> tuple[CNNModel, CNNHistory]:
    """Train ``base`` (fresh or pretrained weights) on ``data``; returns the trained
    model, calibrated on the validation split, and the history."""
    regress = base.task == "redshift"
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    strata = (np.digitize(np.log1p(data.target), np.linspace(0, 2, 9)) if regress
              else data.target)
    train_idx, val_idx = split_validation(data, settings.val_fraction, settings.seed, strata)
    if val_idx.size == 0:
        raise ModelError("too few spectra for a validation split")
    if regress and base.provenance.get("source") == "scratch":
        # the heads predict standardised ln(1 + z): offset and scale from the training set
        ln1pz = np.log1p(data.target[train_idx])
        base = copy.copy(base)
        base.architecture = {**base.architecture, "target_offset": float(ln1pz.mean()),
                             "target_scale": float(max(ln1pz.std(), 1e-3))}
    network = GaSNet2Network(base.architecture, base.n_outputs)
    network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in base.weights.items()})
    network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.epochs)
    history, first_epoch = CNNHistory(), 0
    best_weights = _weights(network)
    if resume and checkpoint and Path(checkpoint).exists():
        state = read_cnn_checkpoint(checkpoint)
        network.load_state_dict({k: torch.from_numpy(np.array(v))
                                 for k, v in state["model"].weights.items()})
        _load_optimiser(optimiser, state["optimiser"])
        history, best_weights = state["history"], state["best_weights"]
        first_epoch = state["epoch"] + 1
        with warnings.catch_warnings():     # fast-forwarding the schedule, not training
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(first_epoch):
                scheduler.step()
    flux = torch.from_numpy(np.ascontiguousarray(data.flux, dtype=np.float32))
    ivar = torch.from_numpy(np.ascontiguousarray(data.ivar, dtype=np.float32))
    if regress:
        target = torch.from_numpy(np.log1p(data.target).astype(np.float32))
        step = float(np.mean(np.diff(base.obs_loglam))) * math.log(10.0)
        boot = torch.from_numpy(np.random.default_rng([settings.seed, 3]).poisson(
            1.0, size=(len(data), network.n_heads)).astype(np.float32))
    else:
        target = torch.from_numpy(data.target.astype(np.int64))
        counts = np.bincount(data.target[train_idx], minlength=base.n_outputs)
        class_weight = torch.from_numpy((counts.sum() / np.maximum(counts, 1)
                                         / base.n_outputs).astype(np.float32)).to(device)
    real_train = train_idx[data.real[train_idx]]
    repeat = settings.real_repeat or max(1, math.ceil(
        (train_idx.size - real_train.size) / 3 / max(real_train.size, 1)))

    def loss_of(out: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if regress:
            goal = (target[rows].to(device) + shift.to(device) * step)[:, None]
            per = torch.nn.functional.huber_loss(out[:, :, 0], goal.expand_as(out[:, :, 0]),
                                                 reduction="none", delta=settings.huber_delta)
            weight = boot[rows].to(device)
            return (per * weight).sum() / weight.sum().clamp_min(1.0) / settings.huber_delta
        return torch.nn.functional.cross_entropy(out[:, 0, :], target[rows].to(device),
                                                 weight=class_weight)

    stale = 0
    if history.val:
        best = min(history.val)
        stale = len(history.val) - 1 - history.best_epoch
    else:
        best = math.inf
    bar = tqdm(range(first_epoch, settings.epochs), desc=f"train {base.task}", unit="epoch",
               disable=not progress)
    for epoch in bar:
        # early stopping: ``patience`` epochs without a better validation loss, once it
        # has improved on the first epoch's (a network still at its first epoch's loss has
        # not started to learn: on a few real spectra an epoch is one step, and the loss
        # can stay flat for longer than the patience before it falls)
        if stale >= settings.patience and history.best_epoch > 0:
            break
        rng = np.random.default_rng([settings.seed, epoch])
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        torch.manual_seed(settings.seed * 100_003 + epoch)      # dropout: per epoch too
        order = rng.permutation(np.concatenate(
            [train_idx[~data.real[train_idx]], np.repeat(real_train, repeat)]))
        network.train()
        losses = []
        for chunk in np.array_split(order, max(1, order.size // settings.batch_size)):
            rows = torch.from_numpy(chunk)
            f, v = flux[rows], ivar[rows]
            shift = torch.zeros(rows.numel(), dtype=torch.long)
            if settings.augment:
                f, v, shift = augment(f, v, generator, settings.max_shift)
                if not regress:
                    shift = torch.zeros_like(shift)
            loss = loss_of(network(network_input(f, v).to(device)), rows, shift)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val_loss, score = _validate(network, base, flux, ivar, data, val_idx, loss_of, device)
        history.train.append(float(np.mean(losses)))
        history.val.append(val_loss)
        history.score.append(score)
        bar.set_postfix(train=f"{history.train[-1]:.4f}", val=f"{val_loss:.4f}",
                        score=f"{score:.3f}")
        if val_loss < best - 1e-6:
            best, stale, history.best_epoch = val_loss, 0, epoch
            best_weights = _weights(network)
        else:
            stale += 1
        if checkpoint:
            write_cnn_checkpoint(checkpoint, _with_weights(base, _weights(network)),
                                 best_weights, history, epoch, optimiser)
    network.load_state_dict({k: torch.from_numpy(v) for k, v in best_weights.items()})
    model = _with_weights(base, best_weights)
    scores = calibrate(model, network, flux, ivar, data, val_idx, device)
    model.provenance = {
        "source": f"gasnet train {'redshift' if regress else 'classifier'}"
                  f" from {base.provenance.get('source', 'scratch')!r}",
        "trained_on": trained_on or "labelled spectra (see the command line)",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {k: str(v) for k, v in settings.__dict__.items()},
        "n_train": int(train_idx.size), "n_validation": int(val_idx.size),
        "n_real": int(data.real.sum()), "best_epoch": int(history.best_epoch),
        "validation": scores,
    }
    return model, history


def _weights(network: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in network.state_dict().items()}


def _with_weights(base: CNNModel, weights: dict[str, np.ndarray]) -> CNNModel:
    model = copy.copy(base)
    model.weights = {k: np.array(v) for k, v in weights.items()}
    return model


def _forward(network: torch.nn.Module, flux: torch.Tensor, ivar: torch.Tensor,
             rows: np.ndarray, device: torch.device) -> torch.Tensor:
    network.eval()
    outs = []
    with torch.no_grad():
        for chunk in np.array_split(rows, max(1, rows.size // 512)):
            pick = torch.from_numpy(chunk)
            outs.append(network(network_input(flux[pick], ivar[pick]).to(device)).cpu())
    return torch.cat(outs)


def _validate(network: torch.nn.Module, base: CNNModel, flux: torch.Tensor,
              ivar: torch.Tensor, data: TrainingSet, val_idx: np.ndarray, loss_of: Any,
              device: torch.device) -> tuple[float, float]:
    out = _forward(network, flux, ivar, val_idx, device)
    rows = torch.from_numpy(val_idx)
    with torch.no_grad():
        loss = float(loss_of(out.to(device), rows, torch.zeros(rows.numel())))
    if base.task == "redshift":
        z = np.expm1(out[:, :, 0].numpy().astype(np.float64).mean(axis=1))
        truth = data.target[val_idx]
        score = float(np.mean(np.abs(z - truth) / (1 + truth) <= 0.0033))
    else:
        score = float(np.mean(out[:, 0, :].argmax(dim=1).numpy() == data.target[val_idx]))
    return loss, score


def calibrate(model: CNNModel, network: GaSNet2Network, flux: torch.Tensor,
              ivar: torch.Tensor, data: TrainingSet, val_idx: np.ndarray,
              device: torch.device) -> dict[str, float]:
    """Calibrate ``model`` on the validation spectra, in place, and return its scores there.

    Classifier: the temperature ``T`` (0.25–10) minimising the negative log-likelihood is
    folded into the output layer (logits ÷ T). Regressor: ``sigma_scale`` = the 68th
    percentile of ``|Δ ln(1+z)| / spread``.
    """
    out = _forward(network, flux, ivar, val_idx, device)
    if model.task == "redshift":
        ln1pz = out[:, :, 0].numpy()
        spread = ln1pz.astype(np.float64).std(axis=1, ddof=1)
        error = np.abs(ln1pz.astype(np.float64).mean(axis=1) - np.log1p(data.target[val_idx]))
        model.sigma_scale = float(max(np.percentile(error / np.maximum(spread, 1e-12), 68.27),
                                      1e-3))
        pred = redshift_from_heads(ln1pz, model)
        truth = data.target[val_idx]
        dz = np.abs(pred.z - truth) / (1 + truth)
        return {"GF_0.0033": float(np.mean(dz <= 0.0033)), "MAD": float(np.median(dz)),
                "within_1sigma": float(np.mean(np.abs(pred.z - truth) <= pred.z_err)),
                "sigma_scale": model.sigma_scale}
    logits = out[:, 0, :].double()
    truth = torch.from_numpy(data.target[val_idx].astype(np.int64))
    temperatures = np.exp(np.linspace(np.log(0.25), np.log(10.0), 200))
    nll = [float(torch.nn.functional.cross_entropy(logits / t, truth)) for t in temperatures]
    temperature = float(temperatures[int(np.argmin(nll))])
    model.weights = dict(model.weights)
    model.weights["out_weight"] = (model.weights["out_weight"] / temperature).astype(np.float32)
    model.weights["out_bias"] = (model.weights["out_bias"] / temperature).astype(np.float32)
    accuracy = float(np.mean(logits.argmax(dim=1).numpy() == truth.numpy()))
    return {"accuracy": accuracy, "temperature": temperature, "nll": float(min(nll))}


def fresh_cnn(task: str, obs_loglam: np.ndarray, labels: list[str], label_set: str,
              z_range: tuple[float, float], seed: int,
              architecture: dict[str, Any] | None = None) -> CNNModel:
    """An untrained model (torch's default initialisation under ``seed``)."""
    arch = architecture or default_architecture(task, obs_loglam.size)
    torch.manual_seed(seed)
    network = GaSNet2Network(arch, len(labels) if task == "classify" else 1)
    return CNNModel(name=f"gasnet2-{task}", task=task, obs_loglam=np.asarray(obs_loglam),
                    architecture=arch, weights=_weights(network),
                    labels=list(labels) if task == "classify" else [], label_set=label_set,
                    z_range=z_range, provenance={"source": "scratch", "trained_on": "",
                                                 "created": ""})


# -- checkpoints (ASDF, no pickle) ---------------------------------------------------------


def write_cnn_checkpoint(path: str | os.PathLike[str], model: CNNModel,
                         best_weights: dict[str, np.ndarray], history: CNNHistory, epoch: int,
                         optimiser: torch.optim.Optimizer) -> None:
    """Write a resumable training state (atomically)."""
    import asdf

    tree = {"model": model, "best_weights": best_weights, "epoch": int(epoch),
            "history": {"train": history.train, "val": history.val, "score": history.score,
                        "best_epoch": int(history.best_epoch)},
            "optimiser": _optimiser_arrays(optimiser)}
    write_asdf_atomically(asdf.AsdfFile(tree), path)


def read_cnn_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_cnn_checkpoint`."""
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            h = af["history"]
            state = {"model": af["model"], "epoch": int(af["epoch"]),
                     "best_weights": {k: np.array(v) for k, v in af["best_weights"].items()},
                     "history": CNNHistory([float(v) for v in h["train"]],
                                           [float(v) for v in h["val"]],
                                           [float(v) for v in h["score"]], int(h["best_epoch"])),
                     "optimiser": {k: {n: np.array(v) for n, v in s.items()}
                                   for k, s in af["optimiser"].items()}}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable training checkpoint: {exc}") from exc
    if not isinstance(state["model"], CNNModel):
        raise ModelError(f"{path}: the checkpoint holds no GaSNet-II network")
    return state
