"""Model files: one model (eigenspectra or GaSNet-II network) in ASDF, validated on write
and on read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import asdf
from asdf.exceptions import ValidationError

from gasnet_plugin.io.asdf_extension import MODEL_FILE_SCHEMA_URI
from gasnet_plugin.io.asdf_files import read_validated, write_asdf_atomically
from gasnet_plugin.models.eigen_model import EigenModel, ModelError
from gasnet_plugin.models.gasnet2 import CNNModel

AnyModel = TypeVar("AnyModel", EigenModel, CNNModel)
KIND_NAMES = {EigenModel: "gasnet eigenspectra model", CNNModel: "gasnet GaSNet-II network"}


def write_model(model: EigenModel | CNNModel, path: str | os.PathLike[str], overwrite: bool = False,
                ) -> Path:
    """Check, validate and write ``model`` (zlib-compressed blocks, atomic replace)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelError(f"{path}: exists (pass overwrite to replace it)")
    model.check()
    af = asdf.AsdfFile({"model": model}, custom_schema=MODEL_FILE_SCHEMA_URI)
    try:
        af.validate()
    except ValidationError as exc:
        raise ModelError(f"{path}: model fails its schema: {exc.message}") from exc
    return write_asdf_atomically(af, path, all_array_compression="zlib")


def read_model(path: str | os.PathLike[str], kind: type[AnyModel] = EigenModel) -> AnyModel:
    """Read, validate and check a model file holding a model of type ``kind``.

    Raises
    ------
    ModelError
        If the file is missing, not ASDF, not a gasnet model file, fails the schema or is
        inconsistent (array shapes, encoder weights); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    model = read_validated(path, MODEL_FILE_SCHEMA_URI, lambda af: af["model"], ModelError,
                           "gasnet model file")
    if not isinstance(model, kind):
        raise ModelError(f"{path}: 'model' is not a {KIND_NAMES[kind]} (it is a "
                         f"{KIND_NAMES.get(type(model), type(model).__name__)})")
    try:
        model.check()
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return model
