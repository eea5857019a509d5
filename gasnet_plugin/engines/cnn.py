"""The ``cnn`` redshift engine: GaSNet-II's regressor and classifier (arXiv:2311.04146).

``Z`` is the mean of the regressor's ensemble of heads and ``ZERR`` their spread, scaled
by the model's ``sigma_scale`` (calibrated on the training run's validation split so that
68 % of spectra lie within 1σ). ``SPECTYPE`` (and ``SUBTYPE`` where the label set has
subclasses) come from the classifier; ``CNN_ZSPREAD`` is the raw spread of the heads in
ln(1 + z). The engine fits no model
spectrum: ``CHI2`` and ``DELTACHI2`` are NaN and the reconstruct stage has nothing to show.

Both networks run once per batch, vectorised over it. It is the fast, independent second
opinion beside the ``gasnet3`` scan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.engines.protocol import EngineInput, EngineResult, RedshiftEngine
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.models.gasnet2 import CNNModel, CNNPredictor
    from gasnet_plugin.stages.base import RunContext


def split_label(labels: np.ndarray, label_set: str) -> tuple[np.ndarray, np.ndarray]:
    """``(SPECTYPE, SUBTYPE)`` from classifier labels of a label set: ``"GALAXY"`` →
    (GALAXY, ""), ``"STAR K5"`` → (STAR, K5), star type ``"K"`` → (STAR, K)."""
    labels = np.asarray(labels, dtype=str)
    if label_set == "star-type":
        return np.full(labels.shape, "STAR", dtype="<U6"), labels
    parts = np.char.partition(labels, " ")
    return parts[..., 0], parts[..., 2]


class CNNEngine(RedshiftEngine):
    """GaSNet-II's CNN redshift (ensemble mean ± spread) and class."""

    name = "cnn"
    summary = "GaSNet-II CNN: z from an ensemble of regressor heads (mean ± spread), class " \
              "from the classifier"
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "regressor": {"type": "string", "default": "default",
                      "description": "redshift regressor model file, or 'default' (shipped)"},
        "classifier": {"type": "string", "default": "default",
                       "description": "classifier model file, 'default' (shipped), or '' "
                                      "for none (SPECTYPE '')"},
        "chunk": {"type": "integer", "minimum": 1, "default": 64,
                  "description": "most spectra per forward pass (bounds memory; the batch "
                                 "is cut into equal parts, same results)"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.model: CNNModel | None = None
        self._regressor: CNNPredictor | None = None
        self._classifier: CNNPredictor | None = None

    def setup(self, context: RunContext | None = None, device: str | None = None) -> None:
        """Load both models (``ConfigError`` naming the file if one is unusable)."""
        from gasnet_plugin.host.config import ConfigError
        from gasnet_plugin.models.eigen_model import ModelError
        from gasnet_plugin.models.gasnet2 import CNNPredictor, load_cnn_model

        device = device or (context.device if context else "cpu")
        try:
            self.model = load_cnn_model(self.params["regressor"], "redshift")
            self._regressor = CNNPredictor(self.model, device, self.params["chunk"])
            if self.params["classifier"]:
                self._classifier = CNNPredictor(
                    load_cnn_model(self.params["classifier"], "classify"), device,
                    self.params["chunk"])
        except ModelError as exc:
            raise ConfigError(f"redshift engine 'cnn': {exc}") from None

    def measure(self, spectra: EngineInput) -> EngineResult:
        from gasnet_plugin.models.gasnet2 import check_grid, network_input

        if self._regressor is None:
            self.setup()
        check_grid(self.model, spectra.loglam)
        n = spectra.flux.shape[0]
        flux = np.asarray(spectra.flux, dtype=np.float32)
        ivar = np.asarray(spectra.ivar, dtype=np.float32)
        inputs = network_input(flux, ivar)        # read by the classifier too
        prediction = self._regressor.redshift(flux, ivar, inputs)
        spectype, subtype = np.full(n, "", dtype="<U6"), np.full(n, "", dtype="<U1")
        if self._classifier is not None:
            check_grid(self._classifier.model, spectra.loglam)
            classes = self._classifier.classify(flux, ivar, inputs)
            spectype, subtype = split_label(classes.best, self._classifier.model.label_set)
        z_min, z_max = self.model.z_range
        at_edge = (prediction.z <= z_min) | (prediction.z >= z_max)
        zwarn = np.where(at_edge, int(ZWarn.Z_AT_EDGE), 0).astype(np.int64)
        return EngineResult(
            columns={"Z": prediction.z, "ZERR": prediction.z_err, "SPECTYPE": spectype,
                     "SUBTYPE": subtype, "CHI2": np.full(n, np.nan),
                     "DELTACHI2": np.full(n, np.nan), "CNN_ZSPREAD": prediction.spread},
            zwarn=zwarn,
            reasons={int(ZWarn.Z_AT_EDGE): f"cnn z at the edge of the regressor's range "
                                           f"{z_min:g}..{z_max:g}"})


@hookimpl
def gasnet_register_engines(registry: Registry[type[RedshiftEngine]]) -> None:
    registry.add(CNNEngine)
