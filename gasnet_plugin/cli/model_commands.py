"""Commands about plugins, models and mocks: stages, simulate, redrock-templates,
import-gasnet3."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from gasnet_plugin.cli.common import (
    fail,
)
from gasnet_plugin.cli.group import main


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def stages(as_json: bool) -> None:
    """List the registered stages (in pipeline order), redshift engines and readers with
    their parameters."""
    from gasnet_plugin.host.plugins import PluginHost
    from gasnet_plugin.stages import PIPELINE_ORDER

    plugins = PluginHost()
    in_order = sorted(plugins.stages, key=lambda cls: (
        PIPELINE_ORDER.index(cls.name) if cls.name in PIPELINE_ORDER else len(PIPELINE_ORDER),
        cls.name))
    listing = {
        "stages": {cls.name: _describe(cls) for cls in in_order},
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
        fail(str(exc))
    usable = np.asarray(archive.results["NPIX_VALID"]) > 0
    if not usable.any():
        reasons = sorted({str(r) for r in archive.results["ZWARN_REASON"]})[:3]
        fail(f"none of the {len(archive.results)} input spectra could be read or has a valid "
             f"pixel on the grid; nothing to draw mocks from ({'; '.join(reasons)})")
    labels = np.array([str(c).strip().upper() for c in archive.results["SURVEY_CLASS"]])
    reference = reference_set(eigen, archive.arrays.arrays["flux"][usable],
                              archive.arrays.arrays["ivar"][usable], labels[usable])
    wanted = [c.strip().upper() for c in classes.split(",") if c.strip()] or None
    rng = np.random.default_rng(seed)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{output}: cannot make the folder: {exc.strerror or exc}")
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
        fail(str(exc))
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
        fail(str(exc))
    classes = ", ".join(f"{t.name} (K={t.n_eigen}, z {t.z_min:g}..{t.z_max:g})"
                        for t in model.templates)
    click.echo(f"wrote {output}: model {model.name!r}, {model.obs_loglam.size} pixels; "
               f"{classes}", err=True)
