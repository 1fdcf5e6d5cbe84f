"""The registry of evaluated methods: one entry per method, and how entries are fitted.

A method is a :class:`MethodSpec`: its name (as in tables), a fit function, whether its
scores are ratings or only a ranking, whether it depends on the training seed, and what it
needs from the data (e.g. the answer key). :func:`~toyrec_helpers.evaluate.evaluate` runs
every registered method in registration order; the command line offers the same names.
Adding a method is one fit function and one entry::

    @method("constant", description="the mean training rating for every item")
    def fit_constant(ctx: SeedContext) -> Recommender:
        return ConstantRecommender(ctx.data.train_interactions["rating"].mean())

A fit function receives a :class:`SeedContext` (the prepared data, the training seed, the
global model and the tuned inner rates of that seed, each computed once) and returns a
:class:`~toyrec_helpers.baselines.Recommender`, or a :class:`MethodFit` when it has a
tuned rate or a meta-training record to report. The built-in methods are registered by
:mod:`toyrec_helpers.evaluate.builtin`.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from toyrec_helpers.baselines import (
    AdaptedModelRecommender,
    FittedBaseline,
    Recommender,
    TuneResult,
    fit_global,
    tune_rate_bracketed,
)

if TYPE_CHECKING:
    from toyrec_helpers.evaluate.protocol import EvalData
    from toyrec_helpers.evaluate.settings import EvalConfig

__all__ = [
    "NEEDS", "FitFunction", "MethodFit", "MethodSpec", "SeedContext", "fit_method", "fit_methods",
    "get_method", "method", "method_names", "needs_answer_key", "register_method",
    "resolve_methods", "unregister_method"
]


@dataclass
class MethodFit:
    """What a fit function returns: the recommender and how it was fitted.

    Attributes
    ----------
    recommender : Recommender
        The fitted method.
    inner_lr : float
        The tuned rate (``NaN`` if none).
    best_epoch : int
        The kept meta-training epoch (-1 if not meta-trained).
    stopped_early : bool
        Whether meta-training stopped early.
    tuning : TuneResult or None
        How the rate was tuned (its bracket check and the unadapted validation error).
    epochs_run : int
        Meta-training epochs that ran (-1 if not meta-trained).
    val_mse : float
        Validation MSE of the fitted method (the kept meta-training epoch's, or the tuned
        rate's; ``NaN`` if none).
    lr_edge : {"", "low", "high"}
        For a rate tuned without a :class:`TuneResult` (e.g. on a ranking score): whether
        it lies at an edge of the rates tried (``tuning.edge`` otherwise).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    recommender: Recommender
    inner_lr: float = math.nan
    best_epoch: int = -1
    stopped_early: bool = False
    tuning: TuneResult | None = None
    epochs_run: int = -1
    val_mse: float = math.nan
    lr_edge: str = ""


FitFunction = Callable[["SeedContext"], "MethodFit | Recommender"]
"""``fit(ctx) -> Recommender or MethodFit``: how a method is trained for one seed."""


def _answer_key(data: EvalData) -> str:
    if data.answer_key is not None:
        return ""
    return f"an answer key, and this data set has none ({data.answer_key_note})"


def _ratings(data: EvalData) -> str:
    d = data.dataset
    if d.has_ratings:
        return ""
    why = ("it is a purchase log" if d.kind == "purchases"
           else f"every rating is {d.constant_rating:g}, so it is treated as a purchase log")
    return (f"ratings, and {d.path} has none ({why}); on a purchase log only ranking "
            "methods run")


NEEDS: dict[str, Callable[[EvalData], str]] = {"answer_key": _answer_key, "ratings": _ratings}
"""What a method may need from the data: need -> ``check(data)``, which returns why the
data lacks it ("needs ...") or ``""`` when it is there. A method that predicts ratings
always needs ``"ratings"`` (:meth:`MethodSpec.missing`); a ranking method trained on
ratings declares it."""


@dataclass(frozen=True)
class MethodSpec:
    """One method of the protocol.

    Parameters
    ----------
    name : str
        The method's name in tables, the JSON and ``--methods``.
    fit : callable
        ``fit(ctx: SeedContext) -> Recommender or MethodFit``.
    predicts_ratings : bool
        Whether its scores are ratings (``False``: a ranking only, no MAE/RMSE). Checked
        against the fitted recommender's own ``predicts_ratings``.
    seed_free : bool
        ``True`` if it does not depend on the training seed: fitted and scored once, its
        values repeated for each seed.
    needs : tuple of str
        What it needs from the data (keys of :data:`NEEDS`, e.g. ``"answer_key"``); by
        default a method is run only when the data has it.
    description : str
        One line for listings.
    default : bool
        Whether :func:`evaluate` runs it when no methods are named. ``False`` for options
        that are run by name only (e.g. the hybrid model's variants, chapter 7).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    name: str
    fit: FitFunction
    predicts_ratings: bool = True
    seed_free: bool = False
    needs: tuple[str, ...] = ()
    description: str = ""
    default: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or " " in self.name:
            raise ValueError(f"MethodSpec.name: expected a non-empty name without spaces, "
                             f"got {self.name!r}")
        if not callable(self.fit):
            raise TypeError(f"MethodSpec.fit: expected a callable fit(ctx), got "
                            f"{type(self.fit).__name__}")
        needs = (self.needs,) if isinstance(self.needs, str) else tuple(self.needs)
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"MethodSpec.needs: unknown need(s) {unknown}; known: "
                             f"{', '.join(NEEDS)}")
        object.__setattr__(self, "needs", needs)

    def missing(self, data: EvalData) -> str:
        """Why ``data`` cannot serve this method (``""`` when it can). A method that
        predicts ratings needs ratings, whether or not ``needs`` says so."""
        needs = self.needs
        if self.predicts_ratings and "ratings" not in needs:
            needs = ("ratings", *needs)
        reasons = [NEEDS[need](data) for need in needs]
        reasons = [r for r in reasons if r]
        return f"method {self.name!r} needs {'; '.join(reasons)}" if reasons else ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (after the ones already there, in table order).

    Raises
    ------
    ValueError
        If a method of that name exists and ``replace`` is false.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"argument 'spec': expected MethodSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"method {spec.name!r} is already registered; pass replace=True "
                         "to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> MethodSpec:
    """Remove a method from the registry and return its entry.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    get_method(name)
    return _REGISTRY.pop(name)


def method(
    name: str, *, predicts_ratings: bool = True, seed_free: bool = False,
    needs: Iterable[str] = (), description: str = "", default: bool = True,
) -> Callable[[FitFunction], FitFunction]:
    """Decorator: register the decorated fit function as method ``name``
    (see :class:`MethodSpec` for the arguments); the function is returned unchanged.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    def register(fit: FitFunction) -> FitFunction:
        register_method(MethodSpec(name, fit, predicts_ratings, seed_free, tuple(needs),
                                   description, default))
        return fit

    return register


def get_method(name: str) -> MethodSpec:
    """The registry entry of method ``name``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """The names of every registered method, in table order.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    return tuple(_REGISTRY)


def resolve_methods(methods: Iterable[str] | None, data: EvalData) -> tuple[str, ...]:
    """The methods to run, in table order.

    ``None`` = every registered method marked ``default`` whose needs the data meets
    (``"oracle"`` only when the data has an answer key). An unknown name, a repeated name,
    or a method whose needs the data does not meet is a ``ValueError`` that lists what is
    possible.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    names = method_names()
    if methods is None:
        return tuple(m for m in names
                     if _REGISTRY[m].default and not _REGISTRY[m].missing(data))
    if isinstance(methods, str):
        methods = [methods]
    asked = list(methods)
    unknown = [m for m in asked if m not in names]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid names: {', '.join(names)}")
    if len(set(asked)) != len(asked):
        raise ValueError(f"methods must be distinct, got {asked}")
    if not asked:
        raise ValueError(f"no method given; valid names: {', '.join(names)}")
    for name in asked:
        reason = _REGISTRY[name].missing(data)
        if reason:
            raise ValueError(reason)
    return tuple(m for m in names if m in asked)


def needs_answer_key(methods: Iterable[str] | None) -> bool:
    """Whether running ``methods`` (``None`` = all) may use the answer key.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if methods is None:
        return True
    return any("answer_key" in _REGISTRY[m].needs for m in methods if m in _REGISTRY)


class SeedContext:
    """What a fit function gets: the data, the seed, and what methods share in a seed.

    The global model (:meth:`global_fit`) and the tuned inner rates (:meth:`inner_lr`)
    are computed on first use and then shared by every method of the seed.

    Parameters
    ----------
    data : EvalData
        From :func:`~toyrec_helpers.evaluate.prepare`.
    seed : int
        The training seed.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    def __init__(self, data: EvalData, seed: int) -> None:
        self.data = data
        self.config: EvalConfig = data.config
        self.seed = int(seed)
        self._global: FittedBaseline | None = None
        self._lrs: dict[str, float] = {}
        self.tunings: dict[str, TuneResult] = {}
        """Every tuning of this seed by what was tuned (``what`` of :meth:`tune`)."""

    def global_fit(self) -> FittedBaseline:
        """The global feature model of this seed
        (:func:`~toyrec_helpers.baselines.fit_global` with the protocol's settings)."""
        if self._global is None:
            d, s = self.data, self.config.supervised
            self._global = fit_global(
                d.user_features, d.item_features, d.train_interactions, d.split.train,
                embedding_dim=s.embedding_dim, hidden=s.hidden, epochs=s.epochs, lr=s.lr,
                batch_size=s.batch_size, seed=self.seed)
        return self._global

    def tune(self, make: Callable[[float], Recommender], what: str = "inner learning rate",
             unadapted: Recommender | None = None) -> float:
        """The rate of ``make(rate)`` chosen on the meta-validation shoppers from the
        protocol's grid, extended when the best rate lies at an edge
        (:func:`~toyrec_helpers.baselines.tune_rate_bracketed`): the one tuning rule of
        every adapted method. The full result is kept in ``tunings[what]``."""
        inner = self.config.inner
        result = tune_rate_bracketed(make, self.data.val_batch, inner.lr_grid, what,
                                     unadapted=unadapted, max_extend=inner.lr_extend)
        self.tunings[what] = result
        return result.best

    def inner_lr(self, adapt: str) -> float:
        """The SGD inner rate tuned from the global model's parameters, adapting ``adapt``
        (``"all"``, ``"head"`` or ``"last"``); shared by every method of the seed that
        adapts so (its :class:`~toyrec_helpers.baselines.TuneResult`:
        :meth:`inner_tuning`)."""
        if adapt not in self._lrs:
            g = self.global_fit()
            self._lrs[adapt] = self.tune(
                lambda lr: AdaptedModelRecommender(g.model, g.params,
                                                   self.config.meta_config(lr, adapt=adapt)),
                f"inner learning rate ({adapt})", unadapted=g.recommender)
        return self._lrs[adapt]

    def inner_tuning(self, adapt: str) -> TuneResult:
        """How :meth:`inner_lr` tuned the rate for ``adapt``."""
        self.inner_lr(adapt)
        return self.tunings[f"inner learning rate ({adapt})"]


def fit_method(name: str, ctx: SeedContext) -> tuple[Recommender, dict[str, Any]]:
    """Fit one registered method for the seed of ``ctx``.

    Returns
    -------
    recommender : Recommender
    record : dict
        ``seed``, ``method``, ``inner_lr``, ``best_epoch``, ``stopped_early``,
        ``epochs_run``, ``lr_edge`` (``"low"``/``"high"`` when the tuned rate lies at an
        edge of the extended grid), ``val_mse`` and ``unadapted_val_mse`` (validation MSE
        of the method and of its model without adaptation), ``worse_than_unadapted``,
        ``seconds``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    spec = get_method(name)
    reason = spec.missing(ctx.data)
    if reason:
        raise ValueError(reason)
    start = time.perf_counter()
    out = spec.fit(ctx)
    fitted = out if isinstance(out, MethodFit) else MethodFit(out)
    rec = fitted.recommender
    if bool(getattr(rec, "predicts_ratings", None)) != spec.predicts_ratings:
        raise ValueError(f"method {name!r}: registered with predicts_ratings="
                         f"{spec.predicts_ratings}, but its recommender has "
                         f"predicts_ratings={getattr(rec, 'predicts_ratings', None)!r}")
    tuning = fitted.tuning
    val_mse = fitted.val_mse
    if tuning is not None and not math.isfinite(val_mse):
        val_mse = tuning.best_mse
    unadapted = math.nan if tuning is None else tuning.unadapted_mse
    record = {"seed": ctx.seed, "method": name, "inner_lr": fitted.inner_lr,
              "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
              "epochs_run": fitted.epochs_run,
              "lr_edge": fitted.lr_edge if tuning is None else tuning.edge,
              "val_mse": val_mse, "unadapted_val_mse": unadapted,
              "worse_than_unadapted": bool(val_mse > unadapted),
              "seconds": time.perf_counter() - start}
    return rec, record


def fit_methods(
    data: EvalData, seed: int, methods: Iterable[str] | None = None
) -> tuple[dict[str, Recommender], pd.DataFrame]:
    """Train the methods of one seed exactly as :func:`~toyrec_helpers.evaluate.evaluate`
    does.

    Parameters
    ----------
    data : EvalData
        From :func:`~toyrec_helpers.evaluate.prepare`.
    seed : int
        Training seed.
    methods : iterable of str, optional
        Default: all (see :func:`resolve_methods`).

    Returns
    -------
    recommenders : dict of str to Recommender
        By method name.
    fits : pandas.DataFrame
        One row per method, the record of :func:`fit_method`.

    Introduced in chapter 6 (book/06b_who_benefits.ipynb).
    """
    ctx = SeedContext(data, seed)
    recs, rows = {}, []
    for name in resolve_methods(methods, data):
        recs[name], info = fit_method(name, ctx)
        rows.append(info)
    return recs, pd.DataFrame(rows)
