"""The redshift-engine protocol: what the redshift-scan stage hands an engine and gets back.

An engine is a small object (scikit-learn's estimator shape): hyper-parameters go to
``__init__`` and are validated against the class's ``parameters`` JSON schema;
:meth:`RedshiftEngine.setup` loads models once; :meth:`RedshiftEngine.measure` turns a batch
of spectra on the common grid into one row of results per spectrum. Engines register through
the ``gasnet_register_engines`` hook and are chosen by name in the redshift-scan stage's
``engine`` parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gasnet_plugin.host.config import validate_parameters
from gasnet_plugin.zwarning import ZWarn

if TYPE_CHECKING:
    from gasnet_plugin.stages.base import RunContext

REQUIRED_COLUMNS = ("Z", "ZERR", "SPECTYPE", "SUBTYPE", "CHI2", "DELTACHI2")
"""Columns every engine returns (Redrock/DESI names)."""
SOLUTION_BITS = ZWarn.Z_AT_EDGE | ZWarn.BAD_FIT
"""ZWARN bits that belong to a solution (they follow it when a decision picks another)."""


@dataclass
class EngineInput:
    """Spectra on the common grid, as the resample stage left them.

    Attributes
    ----------
    flux
        ``(B, P)`` float32 flux densities (the batch's flux unit).
    ivar
        ``(B, P)`` float32 inverse variances; 0 marks pixels with no data.
    loglam
        ``(P,)`` float64 pixel centres, log10 Å.
    want_curves
        Whether the caller wants the per-class χ² curves in the result.
    """

    flux: np.ndarray
    ivar: np.ndarray
    loglam: np.ndarray
    want_curves: bool = False


@dataclass
class ClassBest:
    """One class's best solution for each of ``B`` spectra, whatever its rank overall.

    The evidence a class decision weighs (:mod:`gasnet_plugin.class_decision`): an
    engine that fits every class returns one per class, so that a class that loses the
    lowest-χ² race by chance still has its best redshift, exact χ² and model.

    Attributes
    ----------
    z, zerr, chi2
        ``(B,)`` the class's best redshift, its 1σ statistical error and its χ² (NaN
        where not measured).
    zwarn
        ``(B,)`` int64 ZWARN bits of this solution itself (e.g. ``Z_AT_EDGE``,
        ``BAD_FIT``): the bits that follow the solution when a decision picks it.
    coef
        ``(B, K)`` the fit's coefficients.
    model
        ``(B, P)`` the best-fit model in the input flux unit, or ``None``.
    n_lags
        Redshift trials the class's scan made (its look-elsewhere freedom).
    n_coef
        Free linear coefficients of the class's fit.
    """

    z: np.ndarray
    zerr: np.ndarray
    chi2: np.ndarray
    zwarn: np.ndarray
    coef: np.ndarray
    model: np.ndarray | None
    n_lags: int
    n_coef: int

    @classmethod
    def concatenate(cls, parts: Sequence[ClassBest]) -> ClassBest:
        """The best solutions of consecutive row chunks, stacked in row order."""
        first = parts[0]
        return cls(
            z=np.concatenate([p.z for p in parts]),
            zerr=np.concatenate([p.zerr for p in parts]),
            chi2=np.concatenate([p.chi2 for p in parts]),
            zwarn=np.concatenate([p.zwarn for p in parts]),
            coef=np.concatenate([p.coef for p in parts]),
            model=None if any(p.model is None for p in parts)
            else np.concatenate([p.model for p in parts]),
            n_lags=first.n_lags, n_coef=first.n_coef)


@dataclass
class EngineResult:
    """What an engine returns for a batch of ``B`` spectra.

    Attributes
    ----------
    columns
        Column name → ``(B,)`` (or ``(B, n)``) array; at least :data:`REQUIRED_COLUMNS`.
        ``Z`` is the redshift, ``ZERR`` its 1σ error, ``CHI2`` the best fit's χ²,
        ``DELTACHI2`` the χ² difference to the best solution more than 1000 km/s away.
    zwarn
        ``(B,)`` int64 ZWARN bits the engine sets (:mod:`gasnet_plugin.zwarning`).
    reasons
        ZWARN bit → the reason recorded for rows with that bit: one text, or ``(B,)``
        texts (one per row).
    model
        ``(B, P)`` best-fit model spectrum on the grid in the input flux unit, or ``None``
        if the engine has none.
    curves
        Optional per-class χ² curves: class → ``(B, S)`` float32, with ``curve_z`` giving
        the redshift of each of the ``S`` lags.
    curve_z
        Class → ``(S,)`` redshifts of the curve samples.
    class_best
        Class → :class:`ClassBest`, every class's best solution (empty if the engine does
        not fit every class; the class decision then keeps the engine's answer).
    """

    columns: dict[str, np.ndarray]
    zwarn: np.ndarray
    reasons: dict[int, str | np.ndarray] = field(default_factory=dict)
    model: np.ndarray | None = None
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    curve_z: dict[str, np.ndarray] = field(default_factory=dict)
    class_best: dict[str, ClassBest] = field(default_factory=dict)

    @classmethod
    def concatenate(cls, parts: Sequence[EngineResult]) -> EngineResult:
        """The results of consecutive row chunks of one batch, stacked in row order (what
        an engine that measures a batch in chunks returns).

        A reason given as one text by every chunk that has it stays one text; otherwise
        it becomes one text per row (a chunk without it gives the bit's name, as the
        stage would).
        """
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        sizes = [p.zwarn.size for p in parts]
        reasons: dict[int, str | np.ndarray] = {}
        for bit in dict.fromkeys(k for p in parts for k in p.reasons):
            given = [p.reasons.get(bit) for p in parts]
            texts = {g for g in given if isinstance(g, str)}
            if len(texts) == 1 and all(g is None or isinstance(g, str) for g in given):
                reasons[bit] = texts.pop()
                continue
            default = ZWarn(bit).name or str(bit)
            reasons[bit] = np.concatenate([
                np.asarray(g, dtype=object) if g is not None and not isinstance(g, str)
                else np.full(n, default if g is None else g, dtype=object)
                for g, n in zip(given, sizes, strict=True)])
        return cls(
            columns={name: np.concatenate([np.asarray(p.columns[name]) for p in parts])
                     for name in first.columns},
            zwarn=np.concatenate([p.zwarn for p in parts]),
            reasons=reasons,
            model=None if any(p.model is None for p in parts)
            else np.concatenate([p.model for p in parts]),
            curves={name: np.concatenate([p.curves[name] for p in parts])
                    for name in first.curves},
            curve_z=first.curve_z,
            class_best={name: ClassBest.concatenate([p.class_best[name] for p in parts])
                        for name in first.class_best})


class RedshiftEngine:
    """Base class of a redshift engine used by the redshift-scan stage.

    Subclasses set :attr:`name`, :attr:`summary` and :attr:`parameters` and implement
    :meth:`measure`. Parameters follow the same rules as a stage's.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    parameters: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = validate_parameters(self.parameters, params,
                                          where=f"redshift engine {self.name!r}")

    def setup(self, context: RunContext) -> None:
        """Prepare for a run (load models, pick the device). Called once, before any batch."""

    def measure(self, spectra: EngineInput) -> EngineResult:
        """Measure class and redshift of every spectrum of ``spectra``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
