"""The classify stage: GaSNet-II class (or subclass) probabilities for every spectrum.

It runs a classifier (:mod:`gasnet_plugin.models.gasnet2`; the shipped 3-class
``GALAXY/QSO/STAR`` model by default, or any model file from ``gasnet train classifier``)
on the resampled spectra of the batch, vectorised over the batch, and writes

* ``P_<LABEL>``: the probability of each label (spaces in a label become ``_``:
  ``P_GALAXY``, ``P_STAR_K5``), temperature-calibrated on the training run's validation
  split;
* ``CNN_CLASS``: the most probable label, and ``CNN_PROB``: its probability;
* ``CNN_MODEL``: the classifier's name;
* with a ``regressor`` (the shipped one by default; ``""`` for none): ``CNN_Z`` and
  ``CNN_ZERR``, GaSNet-II's redshift (mean ± calibrated spread of the heads) — the second
  opinion the flag-anomaly stage compares with the scan's ``Z``.

Rows that could not be classified (bad input, no valid pixel) get NaN and ``""``. The
probabilities stay in ``batch.products["classify"]`` for later stages (flag-anomaly).
It needs the resample stage before it, on the model's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin import hookimpl
from gasnet_plugin.stages.base import RunContext, Stage

if TYPE_CHECKING:
    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.registry import Registry
    from gasnet_plugin.models.gasnet2 import Classification, CNNPredictor


def probability_column(label: str) -> str:
    """The column holding the probability of ``label`` (``"STAR K5"`` → ``P_STAR_K5``)."""
    return "P_" + "_".join(label.upper().split())


@dataclass
class ClassifyResult:
    """What the classify stage leaves for later stages: the classification of ``rows``
    (indices into the batch)."""

    rows: np.ndarray
    classification: Classification


class ClassifyStage(Stage):
    """Class probabilities from the GaSNet-II CNN classifier."""

    name = "classify"
    summary = "GaSNet-II CNN class probabilities (P_<LABEL>, CNN_CLASS, CNN_PROB) and " \
              "redshift (CNN_Z, CNN_ZERR)"
    requires: ClassVar[tuple[str, ...]] = ("resample",)
    parameters: ClassVar[dict[str, dict[str, Any]]] = {
        "model": {"type": "string", "default": "default",
                  "description": "classifier model file, or 'default' (the shipped 3-class "
                                 "GALAXY/QSO/STAR model)"},
        "regressor": {"type": "string", "default": "default",
                      "description": "redshift regressor model file for CNN_Z / CNN_ZERR, "
                                     "'default' (shipped), or '' for none"},
        "chunk": {"type": "integer", "minimum": 1, "default": 64,
                  "description": "most spectra per forward pass (bounds memory; the batch "
                                 "is cut into equal parts, same results)"},
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.predictor: CNNPredictor | None = None
        self.regressor: CNNPredictor | None = None

    def setup(self, context: RunContext) -> None:
        from gasnet_plugin.host.config import ConfigError
        from gasnet_plugin.models.eigen_model import ModelError
        from gasnet_plugin.models.gasnet2 import CNNPredictor, load_cnn_model

        try:
            model = load_cnn_model(self.params["model"], "classify")
            regressor = load_cnn_model(self.params["regressor"], "redshift") \
                if self.params["regressor"] else None
        except ModelError as exc:
            raise ConfigError(f"stage 'classify': {exc}") from None
        self.predictor = CNNPredictor(model, device=context.device, chunk=self.params["chunk"])
        if regressor is not None:
            self.regressor = CNNPredictor(regressor, device=context.device,
                                          chunk=self.params["chunk"])

    def check_grid(self, loglam: np.ndarray) -> None:
        from gasnet_plugin.models.gasnet2 import check_grid

        for predictor in (self.predictor, self.regressor):
            if predictor is not None:
                check_grid(predictor.model, loglam)

    def process(self, batch: SpectrumBatch) -> None:
        from gasnet_plugin.models.gasnet2 import check_grid, network_input

        if batch.spectrum is None:
            raise RuntimeError("classify needs the resample stage before it")
        if self.predictor is None:
            raise RuntimeError("classify: setup() was not called")
        model = self.predictor.model
        check_grid(model, batch.spectrum.meta["loglam"])
        n_rows = len(batch)
        rows = np.flatnonzero(batch.usable & (np.asarray(batch.rows["NPIX_VALID"]) > 0))
        flux = np.asarray(batch.spectrum.flux.value, dtype=np.float32)[rows]
        ivar = np.asarray(batch.spectrum.uncertainty.array, dtype=np.float32)[rows]
        # the classifier and the regressor read the same input: made once
        inputs = network_input(flux, ivar)
        result = self.predictor.classify(flux, ivar, inputs)
        for index, label in enumerate(result.labels):
            column = np.full(n_rows, np.nan, dtype=np.float32)
            column[rows] = result.probabilities[:, index]
            name = probability_column(label)
            batch.rows[name] = column
            batch.rows[name].description = f"classifier probability of {label}"
        best = np.full(n_rows, "", dtype=f"<U{max(len(x) for x in result.labels)}")
        best[rows] = result.best.astype(str)
        probability = np.full(n_rows, np.nan, dtype=np.float32)
        probability[rows] = result.best_probability
        batch.rows["CNN_CLASS"] = best
        batch.rows["CNN_CLASS"].description = "most probable classifier label"
        batch.rows["CNN_PROB"] = probability
        batch.rows["CNN_PROB"].description = "probability of CNN_CLASS"
        batch.rows["CNN_MODEL"] = np.full(n_rows, model.name)
        batch.rows["CNN_MODEL"].description = "classifier model"
        if self.regressor is not None:
            check_grid(self.regressor.model, batch.spectrum.meta["loglam"])
            prediction = self.regressor.redshift(flux, ivar, inputs)
            for name, values, text in (
                    ("CNN_Z", prediction.z, "GaSNet-II regressor redshift (mean of the heads)"),
                    ("CNN_ZERR", prediction.z_err, "calibrated 1-sigma spread of CNN_Z")):
                column = np.full(n_rows, np.nan)
                column[rows] = values
                batch.rows[name] = column
                batch.rows[name].description = text
        batch.products["classify"] = ClassifyResult(rows=rows, classification=result)


@hookimpl
def gasnet_register_stages(registry: Registry[type[Stage]]) -> None:
    registry.add(ClassifyStage)
