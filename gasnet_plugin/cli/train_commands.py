"""``gasnet train``: eigenspectra, the GaSNet-II classifier and the regressor."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from gasnet_plugin.cli.common import (
    ROOT_OPTION,
    fail,
    labels_option,
)
from gasnet_plugin.cli.group import main


@main.group()
def train() -> None:
    """Train models (eigenspectra and encoders)."""


@train.command("eigen")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (ASDF) to write.")
@labels_option("--labels")
@ROOT_OPTION
@click.option("--init", "init", default="default", show_default=True,
              help="'default' or a model file to fine-tune, or 'scratch' (its z ranges and "
                   "grid from the default model).")
@click.option("-k", "--n-eigen", type=int, default=10, show_default=True,
              help="Eigenspectra per class (scratch only).")
@click.option("--classes", default="", help="Comma-separated classes to train (default: all).")
@click.option("--epochs", type=int, default=50, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--patience", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ASDF checkpoint written every epoch.")
@click.option("--resume", is_flag=True, help="Resume from --checkpoint.")
@click.option("--progress/--no-progress", default=True)
def train_eigen_command(inputs: tuple[str, ...], output: Path, labels: Path | None,
                        root: Path | None, init: str, n_eigen: int, classes: str, epochs: int,
                        batch_size: int, lr: float, val_fraction: float, patience: int,
                        seed: int, device: str, checkpoint: Path | None, resume: bool,
                        progress: bool) -> None:
    """Learn eigenspectra and encoders from labelled spectra in INPUTS (GaSNet-III's
    recipe: χ² on the rest-frame overlap at the known redshift)."""
    import torch

    from gasnet_plugin.api import run_pipeline
    from gasnet_plugin.evaluate import truth_from_archive, truth_from_csv
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.io.model_file import write_model
    from gasnet_plugin.models.eigen_model import EigenModel, ModelError, load_model
    from gasnet_plugin.models.train_eigen import (
        TrainSettings,
        fresh_template,
        prepare,
        train_eigen,
    )

    try:
        base = load_model("default" if init == "scratch" else init)
        archive = run_pipeline({"stages": ["resample"], "output": {"arrays": ["flux", "ivar"]}},
                               list(inputs), progress=False)
    except (ModelError, ConfigError) as exc:
        fail(str(exc))
    wanted = [c.strip().upper() for c in classes.split(",") if c.strip()] or base.classes
    if init == "scratch":
        generator = torch.Generator().manual_seed(seed)
        base = EigenModel(f"scratch-k{n_eigen}", base.obs_loglam, [
            fresh_template(t.name, base.obs_loglam, t.z_min, t.z_max, n_eigen, generator)
            for t in base.templates if t.name in wanted], dict(base.preprocessing), {})
    truth = truth_from_csv(archive.results, labels, root) if labels \
        else truth_from_archive(archive.results)
    usable = truth.known & (np.asarray(archive.results["NPIX_VALID"]) > 0)
    spectype = np.where(np.isin(truth.spectype, wanted), truth.spectype, "")
    data = prepare(base, archive.arrays.arrays["flux"][usable],
                   archive.arrays.arrays["ivar"][usable], spectype[usable].astype(str),
                   truth.z[usable])
    if not data:
        fail("no labelled spectrum of the wanted classes within their z ranges")
    counts = ", ".join(f"{k} {v.z.size}" for k, v in data.items())
    settings = TrainSettings(n_eigen=n_eigen, epochs=epochs, batch_size=batch_size,
                             learning_rate=lr, val_fraction=val_fraction, patience=patience,
                             seed=seed, device=device)
    model, history = train_eigen(base, data, settings, checkpoint, resume, progress,
                                 trained_on=f"{counts} labelled spectra from {len(inputs)} "
                                            f"input(s); labels: {truth.source}")
    model.name = output.stem
    write_model(model, output, overwrite=True)
    best = ", ".join(f"{k} χ²/pix {min(v):.3f} (epoch {history.best_epoch.get(k, 0)})"
                     for k, v in history.val.items() if v)
    click.echo(f"wrote {output}: trained on {counts}; best validation {best}", err=True)


def _cnn_training_options(function):
    """The options 'gasnet train classifier' and 'gasnet train redshift' share."""
    options = [
        click.argument("inputs", nargs=-1),
        click.option("--mocks", "mocks", multiple=True,
                     help="Mock spectra from gasnet simulate (files, folders, globs; "
                          "repeatable): trained on without the real-spectrum augmentation "
                          "repeats."),
        click.option("-o", "--output", required=True,
                     type=click.Path(dir_okay=False, path_type=Path), help="Model file to write."),
        labels_option("--labels"), ROOT_OPTION,
        click.option("--init", default="scratch", show_default=True,
                     help="'scratch' or a model file to fine-tune."),
        click.option("--epochs", type=int, default=40, show_default=True),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--lr", type=float, default=2e-3, show_default=True),
        click.option("--val-fraction", type=float, default=0.2, show_default=True),
        click.option("--patience", type=int, default=8, show_default=True,
                     help="Epochs without a better validation loss before training stops "
                          "(counted once the loss has fallen below the first epoch's)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--augment/--no-augment", default=True, show_default=True,
                     help="Noise, masked stretches, cut edges and pixel shifts."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="ASDF checkpoint written every epoch."),
        click.option("--resume", is_flag=True, help="Resume from --checkpoint."),
        click.option("--progress/--no-progress", default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _labelled_on_grid(inputs: tuple[str, ...], labels: Path | None, root: Path | None,
                      grid: dict | None = None):
    """Resample 'inputs' (onto the default grid, or 'grid': resample parameters) and
    return '(flux, ivar, loglam, truth)' of the spectra with a valid pixel."""
    from gasnet_plugin.api import run_pipeline
    from gasnet_plugin.evaluate import truth_from_archive, truth_from_csv

    stage = {"resample": grid} if grid else "resample"
    archive = run_pipeline({"stages": [stage], "output": {"arrays": ["flux", "ivar"]}},
                           list(inputs), progress=False)
    truth = truth_from_csv(archive.results, labels, root) if labels \
        else truth_from_archive(archive.results)
    usable = np.asarray(archive.results["NPIX_VALID"]) > 0
    truth.spectype, truth.z = truth.spectype[usable], truth.z[usable]
    truth.subclass = truth.subclass[usable]
    return (archive.arrays.arrays["flux"][usable], archive.arrays.arrays["ivar"][usable],
            archive.arrays.loglam, truth)


def _train_cnn(task: str, label_set: str, inputs: tuple[str, ...], mocks: tuple[str, ...],
               output: Path, labels: Path | None, root: Path | None, init: str, epochs: int,
               batch_size: int, lr: float, val_fraction: float, patience: int, seed: int,
               device: str, augment: bool, checkpoint: Path | None, resume: bool,
               progress: bool) -> None:
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.io.model_file import read_model, write_model
    from gasnet_plugin.models.eigen_model import ModelError
    from gasnet_plugin.models.gasnet2 import CNNModel
    from gasnet_plugin.models.train_cnn import (
        CNNTrainSettings,
        TrainingSet,
        fresh_cnn,
        make_labels,
        train_cnn,
    )

    if not inputs and not mocks:
        fail("give labelled spectra (INPUTS), --mocks, or both")
    try:
        base = None if init == "scratch" else read_model(init, kind=CNNModel)
        if base is not None and base.task != task:
            fail(f"{init}: a {base.task} model cannot be trained for {task}")
        grid = None
        if base is not None:
            step = float(np.mean(np.diff(base.obs_loglam)))
            grid = {"wavelength_min": float(10 ** base.obs_loglam[0]),
                    "wavelength_max": float(10 ** base.obs_loglam[-1]), "dloglam": step}
        parts = [(_labelled_on_grid(files, labels if real else None, root, grid), real)
                 for files, real in ((inputs, True), (mocks, False)) if files]
    except (ModelError, ConfigError) as exc:
        fail(str(exc))
    loglam = parts[0][0][2]
    flux, ivar, real, z_values, names = [], [], [], [], []
    for (f, v, _, truth), is_real in parts:
        tags = make_labels(truth.spectype, truth.subclass, label_set) if task == "classify" \
            else truth.spectype
        keep = (tags != "") & np.isfinite(truth.z)
        flux.append(f[keep])
        ivar.append(v[keep])
        names.append(tags[keep].astype(str))
        z_values.append(truth.z[keep])
        real.append(np.full(keep.sum(), is_real))
    names_all = np.concatenate(names)
    if names_all.size < 10:
        fail(f"only {names_all.size} labelled spectra usable for {task} training")
    if task == "classify":
        label_list = list(base.labels) if base is not None else sorted(set(names_all))
        unknown = sorted(set(names_all) - set(label_list))
        if unknown:
            fail(f"labels {unknown} are not in the model's label set {label_list}")
        if len(label_list) < 2:
            fail(f"a classifier needs at least 2 labels; the data have {label_list}")
        index = {name: i for i, name in enumerate(label_list)}
        targets = np.array([index[name] for name in names_all], dtype=np.int64)
    else:
        label_list = []
        targets = np.concatenate(z_values)
    data = TrainingSet(np.concatenate(flux), np.concatenate(ivar), targets,
                       np.concatenate(real))
    z_all = np.concatenate(z_values)
    if base is None:
        z_range = (min(-0.01, float(z_all.min())), max(0.01, float(z_all.max())))
        base = fresh_cnn(task, loglam, label_list, label_set, z_range, seed)
    settings = CNNTrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=lr,
                                val_fraction=val_fraction, patience=patience, seed=seed,
                                device=device, augment=augment)
    counts = ", ".join(f"{name} {n}" for name, n in zip(*np.unique(names_all,
                                                                   return_counts=True),
                                                         strict=True))
    trained_on = (f"{int(data.real.sum())} real + {int((~data.real).sum())} mock spectra "
                  f"({counts}); labels: {labels or 'SURVEY_* columns'}")
    try:
        model, history = train_cnn(base, data, settings, checkpoint, resume, progress,
                                   trained_on=trained_on)
    except ModelError as exc:
        fail(str(exc))
    model.name = output.stem
    write_model(model, output, overwrite=True)
    click.echo(f"wrote {output}: {trained_on}; best epoch {history.best_epoch}; validation "
               + ", ".join(f"{k} {v:.4g}" for k, v in model.provenance["validation"].items()),
               err=True)


@train.command("classifier")
@_cnn_training_options
@click.option("--label-set", type=click.Choice(["class", "subclass", "star-type"]),
              default="class", show_default=True,
              help="class: GALAXY/QSO/STAR; subclass: class + survey subclass (SDSS's 13); "
                   "star-type: the spectral-type letter of stars.")
def train_classifier_command(label_set: str, **options) -> None:
    """Train a GaSNet-II CNN classifier on labelled spectra in INPUTS and/or --mocks."""
    _train_cnn("classify", label_set, **options)


@train.command("redshift")
@_cnn_training_options
def train_redshift_command(**options) -> None:
    """Train a GaSNet-II redshift regressor (ensemble of heads: z̄ ± σ) on labelled spectra
    in INPUTS and/or --mocks."""
    _train_cnn("redshift", "class", **options)
