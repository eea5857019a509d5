"""Import the GaSNet-III authors' published checkpoints into our model file.

A GaSNet-III model directory holds, per class, ``<name>_<CLASS>.pth`` (a torch state dict:
``eigenvectors`` K×L and ``encoder.*`` weights) and ``<name>_<CLASS>.json`` (grid, z range,
K). Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors only, never
arbitrary pickled objects. The grids are rebuilt exactly as GaSNet-III builds them.

GaSNet-III is MIT-licensed (c) 2024 Fucheng-Zhong; cite arXiv:2412.21130.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gasnet_plugin.models.eigen_model import ENCODER_TYPE, EigenModel, EigenTemplate, ModelError

CITATION = ("Zhong F., Napolitano N. R., et al., GaSNet-III: redshift and classification "
            "of galaxy, quasar and star spectra with eigenspectra and a CNN encoder, "
            "arXiv:2412.21130")
LICENSE = "MIT (c) 2024 Fucheng-Zhong (GaSNet-III); see gasnet_plugin/data/LICENSE-GaSNet-III"


def gasnet3_grids(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """GaSNet-III's observed and rest-frame log10-λ grids from a model's ``.json``.

    ``N = round(log10(λmax/λmin)/Δ + 1)`` observed pixels from ``log10 λmin`` to
    ``log10 λmax``; ``L = round(N + log10(1+zmax)/Δ − log10(1+zmin)/Δ)`` rest pixels from
    ``log10 λmax − NΔ − log10(1+zmax)`` to ``log10 λmax − log10(1+zmin)``.
    """
    wmin, wmax = float(cfg["wavelength_min"]), float(cfg["wavelength_max"])
    delta = float(cfg["delta_loglamd"])
    zmin, zmax = float(cfg["z_min"]), float(cfg["z_max"])
    n_obs = round(np.log10(wmax / wmin) / delta + 1)
    obs = np.linspace(np.log10(wmin), np.log10(wmax), n_obs, endpoint=True)
    n_rest = round(n_obs + np.log10(1 + zmax) / delta - np.log10(1 + zmin) / delta)
    rest = np.linspace(-n_obs * delta - np.log10(1 + zmax), -np.log10(1 + zmin), num=n_rest,
                       endpoint=True) + np.log10(wmax)
    return obs, rest


def _encoder_arch(weights: dict[str, np.ndarray], n_inputs: int) -> dict[str, Any]:
    convs = sorted((int(k.split(".")[0]), v) for k, v in weights.items()
                   if k.endswith(".weight") and v.ndim == 3)
    linear = [v for k, v in weights.items() if k.endswith(".weight") and v.ndim == 2]
    if not convs or len(linear) != 1:
        raise ModelError("encoder weights are not GaSNet-III's (Conv1d layers + one Linear)")
    return {"type": ENCODER_TYPE, "channels": [int(v.shape[0]) for _, v in convs],
            "kernel_size": int(convs[0][1].shape[-1]), "stride": 5, "padding": 1, "pool": 2,
            "n_inputs": int(n_inputs), "n_outputs": int(linear[0].shape[0])}


def import_gasnet3(directory: str | os.PathLike[str], name: str | None = None) -> EigenModel:
    """Build an :class:`EigenModel` from a GaSNet-III model directory.

    Parameters
    ----------
    directory
        Holds ``*.json`` files with a ``.pth`` of the same stem (one per class); the class
        is the last ``_``-separated part of the stem (``Encoder_SDSS_QSO`` → ``QSO``).
    name
        Model name; by default the common stem prefix (``Encoder_SDSS``).

    Raises
    ------
    ModelError
        If the directory holds no checkpoints, or one does not fit its ``.json``.
    """
    directory = Path(directory)
    pairs = [(j, j.with_suffix(".pth")) for j in sorted(directory.glob("*.json"))
             if j.with_suffix(".pth").is_file()]
    if not pairs:
        raise ModelError(f"{directory}: no GaSNet-III checkpoints (*.json with a .pth beside)")
    templates, grids, sources = [], [], []
    preprocessing = {"poly_deg": 5, "normalise": "rms"}
    for json_path, pth_path in pairs:
        try:
            cfg = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{json_path}: not a readable GaSNet-III .json: {exc}") from None
        try:
            state = torch.load(pth_path, weights_only=True, map_location="cpu")
        except Exception as exc:        # UnpicklingError for anything but plain tensors
            raise ModelError(f"{pth_path}: refused: not a plain state dict of tensors "
                             f"(loaded with weights_only=True): {exc}") from None
        if not isinstance(state, dict) or "eigenvectors" not in state:
            raise ModelError(f"{pth_path}: no 'eigenvectors' in the state dict")
        obs, rest = gasnet3_grids(cfg)
        eigenvectors = state["eigenvectors"].numpy().astype(np.float32)
        if eigenvectors.shape[1] != rest.size:
            raise ModelError(f"{pth_path}: eigenvectors have {eigenvectors.shape[1]} pixels, "
                             f"its .json grid {rest.size}")
        weights = {k.removeprefix("encoder."): v.numpy().copy() for k, v in state.items()
                   if k.startswith("encoder.")}
        class_name = json_path.stem.rsplit("_", 1)[-1].upper()
        templates.append(EigenTemplate(
            name=class_name, eigenvectors=eigenvectors, rest_loglam=rest,
            z_min=float(cfg["z_min"]), z_max=float(cfg["z_max"]),
            encoder=_encoder_arch(weights, obs.size), encoder_weights=weights))
        grids.append(obs)
        preprocessing["poly_deg"] = int(cfg.get("poly_deg", 5))
        digest = hashlib.sha256(pth_path.read_bytes()).hexdigest()[:16]
        sources.append(f"{pth_path.name} (sha256 {digest}…, {cfg.get('epochs', '?')} epochs)")
    if any(g.shape != grids[0].shape or not np.allclose(g, grids[0]) for g in grids):
        raise ModelError(f"{directory}: the classes use different observed grids")
    parts = [j.stem.split("_") for j, _ in pairs]
    common = [p[0] for p in itertools.takewhile(lambda p: len(set(p)) == 1,
                                                 zip(*parts, strict=False))]
    stem = "_".join(common) or "gasnet3"
    model = EigenModel(
        name=name or stem, obs_loglam=grids[0], templates=templates,
        preprocessing=preprocessing,
        provenance={
            "source": "GaSNet-III published checkpoints (github.com/Fucheng-Zhong/GaSNet-III): "
                      + "; ".join(sources),
            "trained_on": "SDSS spectra, the GaSNet-III training set (see arXiv:2412.21130)",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "converted_by": "gasnet import-gasnet3",
            "citation": CITATION,
            "license": LICENSE,
        })
    model.check()
    return model
