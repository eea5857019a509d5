"""The project's asdf extension: converters, and the manifest and schemas they use.

Registered through the ``asdf.extensions`` and ``asdf.resource_mappings`` entry points
(specutils' ``io/asdf`` is the model). One converter per type, each with ``to_yaml_tree``
and ``from_yaml_tree`` only; tags carry a version wildcard. Nothing here unpickles: every
value is YAML or an asdf ndarray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asdf.extension import Converter, ManifestExtension
from asdf.resource import DirectoryResourceMapping

URI_BASE = "asdf://gasnet-plugin.org/gasnet/"
MANIFEST_URI = URI_BASE + "manifests/gasnet-1.0.0"
ARCHIVE_SCHEMA_URI = URI_BASE + "schemas/results_archive-1.0.0"
MODEL_FILE_SCHEMA_URI = URI_BASE + "schemas/model_file-1.0.0"
THRESHOLDS_SCHEMA_URI = URI_BASE + "schemas/flag_thresholds-1.0.0"
DECISION_SCHEMA_URI = URI_BASE + "schemas/class_decision-1.0.0"
STAR_TEMPLATES_SCHEMA_URI = URI_BASE + "schemas/star_templates-1.0.0"
RESOURCES = Path(__file__).resolve().parent / "resources"


class RunInfoConverter(Converter):
    """:class:`~gasnet_plugin.io.archive.RunInfo` ↔ ``run_info`` tag."""

    tags = (URI_BASE + "tags/run_info-*",)
    types = ("gasnet_plugin.io.archive.RunInfo",)

    def to_yaml_tree(self, obj: Any, tag: str, ctx: Any) -> dict[str, Any]:
        return {"config": obj.config, "software": dict(obj.software), "created": obj.created,
                "inputs": list(obj.inputs), "n_spectra": int(obj.n_spectra),
                "n_failed": int(obj.n_failed)}

    def from_yaml_tree(self, node: dict[str, Any], tag: str, ctx: Any) -> Any:
        from gasnet_plugin.io.archive import RunInfo

        return RunInfo(**node)


class SpectrumArraysConverter(Converter):
    """:class:`~gasnet_plugin.io.archive.SpectrumArrays` ↔ ``spectrum_arrays`` tag."""

    tags = (URI_BASE + "tags/spectrum_arrays-*",)
    types = ("gasnet_plugin.io.archive.SpectrumArrays",)

    def to_yaml_tree(self, obj: Any, tag: str, ctx: Any) -> dict[str, Any]:
        tree = {"loglam": obj.loglam, "flux_unit": obj.flux_unit, "arrays": dict(obj.arrays)}
        if obj.axes:
            tree["axes"] = {name: dict(axes) for name, axes in obj.axes.items()}
        return tree

    def from_yaml_tree(self, node: dict[str, Any], tag: str, ctx: Any) -> Any:
        from gasnet_plugin.io.archive import SpectrumArrays

        return SpectrumArrays(**node)


class EigenModelConverter(Converter):
    """:class:`~gasnet_plugin.models.eigen_model.EigenModel` ↔ ``eigen_model`` tag."""

    tags = (URI_BASE + "tags/eigen_model-*",)
    types = ("gasnet_plugin.models.eigen_model.EigenModel",)

    def to_yaml_tree(self, obj: Any, tag: str, ctx: Any) -> dict[str, Any]:
        return {
            "name": obj.name,
            "obs_loglam": obj.obs_loglam,
            "templates": [{
                "name": t.name, "eigenvectors": t.eigenvectors, "rest_loglam": t.rest_loglam,
                "z_min": float(t.z_min), "z_max": float(t.z_max), "encoder": dict(t.encoder),
                "encoder_weights": dict(t.encoder_weights)} for t in obj.templates],
            "preprocessing": dict(obj.preprocessing),
            "provenance": dict(obj.provenance),
        }

    def from_yaml_tree(self, node: dict[str, Any], tag: str, ctx: Any) -> Any:
        import numpy as np

        from gasnet_plugin.models.eigen_model import EigenModel, EigenTemplate

        templates = [EigenTemplate(
            name=t["name"], eigenvectors=np.asarray(t["eigenvectors"], dtype=np.float32),
            rest_loglam=np.asarray(t["rest_loglam"], dtype=np.float64), z_min=t["z_min"],
            z_max=t["z_max"], encoder=dict(t["encoder"]),
            encoder_weights={k: np.asarray(v) for k, v in t["encoder_weights"].items()})
            for t in node["templates"]]
        return EigenModel(name=node["name"],
                          obs_loglam=np.asarray(node["obs_loglam"], dtype=np.float64),
                          templates=templates, preprocessing=dict(node["preprocessing"]),
                          provenance=dict(node["provenance"]))


class CNNModelConverter(Converter):
    """:class:`~gasnet_plugin.models.gasnet2.CNNModel` ↔ ``cnn_model`` tag."""

    tags = (URI_BASE + "tags/cnn_model-*",)
    types = ("gasnet_plugin.models.gasnet2.CNNModel",)

    def to_yaml_tree(self, obj: Any, tag: str, ctx: Any) -> dict[str, Any]:
        return {"name": obj.name, "task": obj.task, "obs_loglam": obj.obs_loglam,
                "architecture": dict(obj.architecture), "weights": dict(obj.weights),
                "labels": list(obj.labels), "label_set": obj.label_set,
                "z_range": [float(v) for v in obj.z_range],
                "sigma_scale": float(obj.sigma_scale), "provenance": dict(obj.provenance)}

    def from_yaml_tree(self, node: dict[str, Any], tag: str, ctx: Any) -> Any:
        import numpy as np

        from gasnet_plugin.models.gasnet2 import CNNModel

        return CNNModel(
            name=node["name"], task=node["task"],
            obs_loglam=np.asarray(node["obs_loglam"], dtype=np.float64),
            architecture=dict(node["architecture"]),
            weights={k: np.asarray(v) for k, v in node["weights"].items()},
            labels=[str(v) for v in node["labels"]], label_set=node["label_set"],
            z_range=(float(node["z_range"][0]), float(node["z_range"][1])),
            sigma_scale=float(node["sigma_scale"]), provenance=dict(node["provenance"]))


def get_extensions() -> list[ManifestExtension]:
    """Entry point ``asdf.extensions``: the gasnet extension."""
    return [ManifestExtension.from_uri(
        MANIFEST_URI,
        converters=[RunInfoConverter(), SpectrumArraysConverter(), EigenModelConverter(),
                    CNNModelConverter()])]


def get_resource_mappings() -> list[DirectoryResourceMapping]:
    """Entry point ``asdf.resource_mappings``: our schemas and manifests."""
    return [
        DirectoryResourceMapping(RESOURCES / "schemas", URI_BASE + "schemas/"),
        DirectoryResourceMapping(RESOURCES / "manifests", URI_BASE + "manifests/"),
    ]
