"""What a stage and a redshift engine look like to the host.

Stages follow scikit-learn's estimator shape: hyper-parameters go to ``__init__`` (validated
against the class's ``parameters`` JSON schema, defaults filled in) and nothing else happens
there; :meth:`Stage.setup` loads what a run needs once (models, devices); :meth:`Stage.process`
annotates one :class:`~gasnet_plugin.host.batch.SpectrumBatch` in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from gasnet_plugin.engines.protocol import RedshiftEngine
from gasnet_plugin.host.config import validate_parameters

__all__ = ["RedshiftEngine", "RunContext", "Stage"]

if TYPE_CHECKING:
    from gasnet_plugin.host.batch import SpectrumBatch
    from gasnet_plugin.host.plugins import PluginHost


@dataclass
class RunContext:
    """What the host hands every stage once, before the first batch.

    Attributes
    ----------
    plugins
        The plugin host with the stage, engine and reader registries.
    device
        The torch device stages should compute on (``"cpu"`` or ``"cuda[:N]"``).
    options
        Run-wide settings from the config's top level (``output``, ``batch_size``, ...).
    """

    plugins: PluginHost
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class of a pipeline stage.

    Subclasses set :attr:`name`, :attr:`summary` and :attr:`parameters`, and implement
    :meth:`process`.

    Attributes
    ----------
    name
        The name a config uses in its ``stages`` list.
    summary
        One line saying what the stage does (shown by ``gasnet stages``).
    parameters
        JSON-schema ``properties`` of the stage's keyword parameters; every property has a
        ``default`` and a ``description`` (units included).
    params
        The validated parameters of this instance, defaults filled in.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    parameters: ClassVar[dict[str, dict[str, Any]]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    """Stages that must come earlier in the pipeline (checked before anything runs)."""

    def __init__(self, **params: Any) -> None:
        self.params = validate_parameters(self.parameters, params, where=f"stage {self.name!r}")

    def bind(self, plugins: PluginHost) -> None:
        """Resolve named parts (e.g. an engine) in the registries; called when the pipeline
        is built, before anything is read. Raise ``LookupError`` or ``ConfigError``."""

    def setup(self, context: RunContext) -> None:
        """Prepare for a run (load models, pick the device). Called once, before any batch."""

    def check_grid(self, loglam: Any) -> None:
        """Refuse (``ConfigError``) a common grid ``(P,)`` log10 Å the stage's models were not
        made for; called after :meth:`setup`, before anything is read."""

    def process(self, batch: SpectrumBatch) -> None:
        """Annotate ``batch`` in place: add columns to ``batch.rows`` and arrays as needed."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
