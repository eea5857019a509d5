"""The ``gasnet`` command line.

Exit codes: 0 success; 1 the run finished but some inputs could not be measured (their
rows are flagged; see ``ZWARN_REASON``); 2 a usage or configuration error (nothing was
run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from gasnet_plugin import __version__

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


ROOT_OPTION = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder the labels CSV's paths are relative to (default: the CSV's folder).")


def labels_option(flag: str):
    """A labels-CSV option (shaped like labels.csv); default: the labels in the files."""
    return click.option(flag, type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        default=None,
                        help="Labels CSV (like labels.csv); default: the SURVEY_* labels "
                             "the readers found in the files.")


def _fail(message: str) -> None:
    click.echo(f"gasnet: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gasnet")
def main() -> None:
    """GaSNet spectral classification, redshifts and anomaly flags for survey spectra."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ASDF archive to write.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUTPUT if it exists (and the shards of a stopped run).")
@click.option("--resume", is_flag=True,
              help="Finish a stopped run: keep the shards in OUTPUT.parts/ and compute the "
                   "rest. Same archive as an uninterrupted run.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar over the files (default: on a terminal, >1 file).")
@click.option("--device", default=None,
              help="Torch device for every stage (cpu, cuda, cuda:N); overrides the config.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
              help="Where the batches run; overrides the config's executor.name.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address (implies --executor dask); default: a "
                   "LocalCluster on this machine.")
def run(config: Path, inputs: tuple[str, ...], output: Path, overwrite: bool, resume: bool,
        progress: bool | None, device: str | None, executor: str | None,
        scheduler: str | None) -> None:
    """Run the pipeline of CONFIG on INPUTS (files, folders or glob patterns).

    Memory stays flat however many spectra there are: results go to shards in
    OUTPUT.parts/ as the run goes and are merged into OUTPUT at the end.
    """
    from gasnet_plugin.api import as_config
    from gasnet_plugin.host.config import ConfigError, parse_config
    from gasnet_plugin.host.runner import Pipeline
    from gasnet_plugin.io.archive import ArchiveError
    from gasnet_plugin.zwarning import FATAL

    try:
        settings = as_config(config)
        overrides = settings.as_dict()
        if device is not None:
            overrides["device"] = device
        if scheduler is not None:
            executor = "dask"
            overrides["executor"]["scheduler"] = scheduler
        if executor is not None:
            overrides["executor"]["name"] = executor
        pipeline = Pipeline(parse_config(overrides, source=settings.source))
        archive = pipeline.run_to_file(inputs, output, resume=resume, overwrite=overwrite,
                                       progress=progress)
    except (ConfigError, ArchiveError) as exc:
        _fail(str(exc))
    run_info = archive.run
    click.echo(f"wrote {output}: {run_info.n_spectra} spectra from {len(run_info.inputs)} "
               f"file(s), {run_info.n_failed} could not be measured", err=True)
    if run_info.n_failed:
        results = archive.results
        fatal = results[(np.asarray(results["ZWARN"]) & int(FATAL)) != 0]
        for row in fatal[:10]:
            click.echo(f"  {row['ZWARN_REASON']}", err=True)
        if len(fatal) > 10:
            click.echo(f"  ... and {len(fatal) - 10} more (see ZWARN_REASON)", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def stages(as_json: bool) -> None:
    """List the registered stages, redshift engines and readers with their parameters."""
    from gasnet_plugin.host.plugins import PluginHost

    plugins = PluginHost()
    listing = {
        "stages": {cls.name: _describe(cls) for cls in plugins.stages},
        "engines": {cls.name: _describe(cls) for cls in plugins.engines},
        "readers": {reader.name: {"summary": reader.summary} for reader in plugins.readers},
        "plugins": plugins.plugin_names(),
    }
    if as_json:
        click.echo(json.dumps(listing, indent=2, default=str))
        return
    for section in ("stages", "engines"):
        click.echo(f"{section}:")
        if not listing[section]:
            click.echo("  (none registered)")
        for name, info in listing[section].items():
            click.echo(f"  {name}: {info['summary']}")
            for param, spec in info["parameters"].items():
                click.echo(f"      {param} = {spec['default']!r}  ({spec['type']}) "
                           f"{spec['description']}")
    click.echo("readers:")
    for name, info in listing["readers"].items():
        click.echo(f"  {name}: {info['summary']}")
    click.echo(f"plugins: {', '.join(listing['plugins'])}")


def _describe(cls: type) -> dict:
    return {
        "summary": cls.summary,
        "parameters": {
            name: {"default": spec.get("default"), "type": spec.get("type", "any"),
                   "description": spec.get("description", "")}
            for name, spec in cls.parameters.items()},
    }


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
def info(archive: Path) -> None:
    """Summarise a results ARCHIVE written by ``gasnet run``."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    click.echo(f"{archive}")
    click.echo(loaded.summary())


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@labels_option("--truth")
@ROOT_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the scores: .json (everything) or .ecsv (redshift table).")
def evaluate(archive: Path, truth: Path | None, root: Path | None,
             output: Path | None) -> None:
    """Score ARCHIVE against the truth: redshift metrics, confusion matrix, S/N bins, flags."""
    from gasnet_plugin.evaluate import (
        evaluate as score,
    )
    from gasnet_plugin.evaluate import (
        format_evaluation,
        truth_from_archive,
        truth_from_csv,
        write_evaluation,
    )
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    labels = truth_from_csv(loaded.results, truth, root) if truth \
        else truth_from_archive(loaded.results)
    evaluation = score(loaded.results, labels)
    click.echo(format_evaluation(evaluation))
    if output is not None:
        write_evaluation(evaluation, output)
        click.echo(f"wrote {output}", err=True)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and its figures.")
@labels_option("--truth")
@ROOT_OPTION
@click.option("--max-spectra", type=int, default=24, show_default=True,
              help="Spectra drawn one by one (flagged first).")
def report(archive: Path, output: Path, truth: Path | None, root: Path | None,
           max_spectra: int) -> None:
    """Write a static HTML report of ARCHIVE (figures need the 'plot' extra)."""
    from gasnet_plugin.evaluate import truth_from_csv
    from gasnet_plugin.io.archive import ArchiveError, read_archive

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("gasnet report needs matplotlib: pip install 'gasnet-plugin[plot]'")
    from gasnet_plugin.report.html import write_report

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    labels = truth_from_csv(loaded.results, truth, root) if truth else None
    page = write_report(loaded, output, labels, max_spectra=max_spectra,
                        title=f"gasnet run: {archive.name}")
    click.echo(f"wrote {page}", err=True)


@main.command("calibrate-flags")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@labels_option("--truth")
@ROOT_OPTION
@click.option("--rate", type=float, default=0.015, show_default=True,
              help="Fraction of right spectra each threshold lets through.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Thresholds file to write (use it as flag-anomaly's 'thresholds').")
def calibrate_flags(archive: Path, truth: Path | None, root: Path | None, rate: float,
                    output: Path) -> None:
    """Calibrate the flag-anomaly thresholds on ARCHIVE, a run (resample, classify,
    redshift-scan) over labelled spectra: each threshold flags RATE of the spectra whose
    class and redshift (Δz ≤ 0.0033) are right."""
    from gasnet_plugin.evaluate import WRONG_DZ, truth_from_archive, truth_from_csv
    from gasnet_plugin.io.archive import ArchiveError, read_archive
    from gasnet_plugin.metrics import delta_z
    from gasnet_plugin.stages.flag_anomaly import calibrate_thresholds, write_thresholds

    if not 0 < rate < 0.5:
        _fail(f"--rate must lie in (0, 0.5), got {rate}")
    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    results = loaded.results
    labels = truth_from_csv(results, truth, root) if truth else truth_from_archive(results)
    spectype = np.char.strip(np.asarray(results["SPECTYPE"]).astype(str)) \
        if "SPECTYPE" in results.colnames else None
    if spectype is None:
        _fail(f"{archive}: no SPECTYPE column: run redshift-scan (and classify) first")
    with np.errstate(invalid="ignore"):
        good = labels.known & (spectype == labels.spectype.astype(str)) \
            & (delta_z(np.asarray(results["Z"], float), labels.z) <= WRONG_DZ)
    try:
        thresholds = calibrate_thresholds(results, good, rate, provenance={
            "archive": str(archive), "labels": labels.source,
            "n_labelled": int(labels.known.sum()),
            "models": ", ".join(sorted({str(m) for name in ("MODEL", "CNN_MODEL")
                                        if name in results.colnames
                                        for m in results[name] if str(m)}))})
    except ValueError as exc:
        _fail(f"{archive}: {exc}")
    write_thresholds(thresholds, output)
    click.echo(f"wrote {output}: calibrated on {int(good.sum())} right spectra of "
               f"{int(labels.known.sum())} labelled", err=True)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top", type=int, default=20, show_default=True, help="How many to list.")
def anomalies(archive: Path, top: int) -> None:
    """List the most anomalous spectra of ARCHIVE (highest ANOMALY_SCORE), with why."""
    from gasnet_plugin.io.archive import ArchiveError, read_archive
    from gasnet_plugin.zwarning import describe

    try:
        loaded = read_archive(archive)
    except ArchiveError as exc:
        _fail(str(exc))
    results = loaded.results
    if "ANOMALY_SCORE" not in results.colnames:
        _fail(f"{archive}: no ANOMALY_SCORE column: run the flag-anomaly stage")
    score = np.asarray(results["ANOMALY_SCORE"], dtype=float)
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), kind="stable")[:top]
    click.echo(f"{'rank':>4}  {'score':>7}  {'source':<34} {'row':>4}  {'class':<6} "
               f"{'z':>8}  reason")
    for rank, i in enumerate(order, 1):
        source = Path(str(results["SOURCE"][i])).name
        bits = ", ".join(describe(int(results["ZWARN"][i])))
        reason = str(results["ANOMALY_REASON"][i])
        if bits:
            reason += f"; ZWARN {bits}: {results['ZWARN_REASON'][i]}"
        click.echo(f"{rank:>4}  {score[i]:7.2f}  {source[-34:]:<34} {int(results['ROW'][i]):>4}"
                   f"  {results['SPECTYPE'][i]!s:<6} {float(results['Z'][i]):8.4f}  "
                   f"{reason}")


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
        _fail(str(exc))
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
        _fail("no labelled spectrum of the wanted classes within their z ranges")
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
    """The options ``gasnet train classifier`` and ``gasnet train redshift`` share."""
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
        click.option("--patience", type=int, default=8, show_default=True),
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
    """Resample ``inputs`` (onto the default grid, or ``grid``: resample parameters) and
    return ``(flux, ivar, loglam, truth)`` of the spectra with a valid pixel."""
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
        _fail("give labelled spectra (INPUTS), --mocks, or both")
    try:
        base = None if init == "scratch" else read_model(init, kind=CNNModel)
        if base is not None and base.task != task:
            _fail(f"{init}: a {base.task} model cannot be trained for {task}")
        grid = None
        if base is not None:
            step = float(np.mean(np.diff(base.obs_loglam)))
            grid = {"wavelength_min": float(10 ** base.obs_loglam[0]),
                    "wavelength_max": float(10 ** base.obs_loglam[-1]), "dloglam": step}
        parts = [(_labelled_on_grid(files, labels if real else None, root, grid), real)
                 for files, real in ((inputs, True), (mocks, False)) if files]
    except (ModelError, ConfigError) as exc:
        _fail(str(exc))
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
        _fail(f"only {names_all.size} labelled spectra usable for {task} training")
    if task == "classify":
        label_list = list(base.labels) if base is not None else sorted(set(names_all))
        unknown = sorted(set(names_all) - set(label_list))
        if unknown:
            _fail(f"labels {unknown} are not in the model's label set {label_list}")
        if len(label_list) < 2:
            _fail(f"a classifier needs at least 2 labels; the data have {label_list}")
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
        _fail(str(exc))
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


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("-n", "n_mocks", type=int, required=True, help="Number of mock spectra.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the mock files (mock-00000.fits, ...).")
@click.option("--model", default="default", show_default=True, help="Model file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-file", type=int, default=10000, show_default=True)
@click.option("--classes", default="", help="Comma-separated classes (default: all).")
@click.option("--z-range", nargs=2, type=float, default=None, help="z_min z_max.")
@click.option("--anomalies", type=float, default=0.0, show_default=True,
              help="Fraction of mocks given an anomaly (unmodelled line or second object).")
@click.option("--snr-scale", type=float, default=1.0, show_default=True,
              help="Multiply the donors' S/N by this.")
@click.option("--coef-scatter", type=float, default=0.2, show_default=True,
              help="ln-scatter of the coefficients around the encoded real ones.")
def simulate(sources: tuple[str, ...], n_mocks: int, output: Path, model: str, seed: int,
             per_file: int, classes: str, z_range: tuple[float, float] | None,
             anomalies: float, snr_scale: float, coef_scatter: float) -> None:
    """Draw N labelled mock spectra from a model, borrowing continua, coefficients, noise
    and masks from the real spectra in SOURCES (files, folders, globs)."""
    from tqdm import tqdm

    from gasnet_plugin.api import run_pipeline
    from gasnet_plugin.host.config import ConfigError
    from gasnet_plugin.models.eigen_model import ModelError, load_model
    from gasnet_plugin.models.simulate import draw_mocks, reference_set, write_mocks

    try:
        eigen = load_model(model)
        archive = run_pipeline({"stages": ["resample"], "output": {"arrays": ["flux", "ivar"]}},
                               list(sources), progress=False)
    except (ModelError, ConfigError) as exc:
        _fail(str(exc))
    usable = np.asarray(archive.results["NPIX_VALID"]) > 0
    labels = np.array([str(c).strip().upper() for c in archive.results["SURVEY_CLASS"]])
    reference = reference_set(eigen, archive.arrays.arrays["flux"][usable],
                              archive.arrays.arrays["ivar"][usable], labels[usable])
    wanted = [c.strip().upper() for c in classes.split(",") if c.strip()] or None
    rng = np.random.default_rng(seed)
    output.mkdir(parents=True, exist_ok=True)
    written = 0
    with tqdm(total=n_mocks, unit="spectrum", disable=n_mocks < 5000, desc="simulate") as bar:
        for index, start in enumerate(range(0, n_mocks, per_file)):
            count = min(per_file, n_mocks - start)
            parts = []
            for chunk in range(0, count, 2048):
                size = min(2048, count - chunk)
                parts.append(draw_mocks(eigen, reference, size, rng, wanted, z_range,
                                        coef_scatter, snr_scale, anomalies))
                bar.update(size)
            mocks = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            write_mocks(mocks, eigen.obs_loglam, output / f"mock-{index:05d}.fits",
                        {"MODEL": eigen.name, "SEED": seed, "NREF": len(reference.flux)})
            written += count
    click.echo(f"wrote {written} mock spectra to {output} ({len(reference.flux)} real "
               f"spectra as sources and donors)", err=True)


@main.command("redrock-templates")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--galaxy", "galaxy", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="SDSS idlspec2d spEigenGal-*.fits to convert.")
@click.option("--copy", "copy_from", type=click.Path(file_okay=False, exists=True,
                                                      path_type=Path),
              multiple=True, help="Folder(s) of Redrock rrtemplate-*.fits to add (QSO, STAR).")
@click.option("--zmax", type=float, default=1.5, show_default=True,
              help="Highest galaxy redshift scanned.")
def redrock_templates(folder: Path, galaxy: Path, copy_from: tuple[Path, ...],
                      zmax: float) -> None:
    """Assemble a Redrock template FOLDER: a galaxy template from the SDSS pipeline's
    eigen-templates, plus Redrock's own QSO and STAR templates."""
    import shutil

    from gasnet_plugin.engines.redrock_templates import idlspec2d_to_redrock

    folder.mkdir(parents=True, exist_ok=True)
    try:
        idlspec2d_to_redrock(galaxy, folder / f"rrtemplate-GALAXY-{galaxy.stem}.fits",
                             z_range=(-0.005, zmax), overwrite=True)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    copied = [shutil.copy(p, folder) for source in copy_from
              for p in sorted(source.glob("rrtemplate-*.fits"))]
    click.echo(f"wrote {folder}: 1 galaxy template, {len(copied)} copied", err=True)


@main.command("import-gasnet3")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (ASDF) to write.")
@click.option("--name", default=None, help="Model name (default: the checkpoints' stem).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def import_gasnet3_command(directory: Path, output: Path, name: str | None,
                           overwrite: bool) -> None:
    """Convert GaSNet-III checkpoints in DIRECTORY (.pth + .json per class) to a model file."""
    from gasnet_plugin.io.model_file import write_model
    from gasnet_plugin.models.eigen_model import ModelError
    from gasnet_plugin.models.import_gasnet3 import import_gasnet3

    try:
        model = import_gasnet3(directory, name=name)
        write_model(model, output, overwrite=overwrite)
    except ModelError as exc:
        _fail(str(exc))
    classes = ", ".join(f"{t.name} (K={t.n_eigen}, z {t.z_min:g}..{t.z_max:g})"
                        for t in model.templates)
    click.echo(f"wrote {output}: model {model.name!r}, {model.obs_loglam.size} pixels; "
               f"{classes}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
