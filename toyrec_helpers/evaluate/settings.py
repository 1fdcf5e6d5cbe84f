"""The settings of the cold-start evaluation protocol, grouped by what they control.

:class:`EvalConfig` holds the protocol's own settings (shots, seeds, split, metrics,
bootstrap) and four groups: the supervised global model (:class:`SupervisedSettings`), the
article baseline (:class:`ArticleSettings`), the inner loop shared by every adapted method
(:class:`InnerSettings`) and meta-training (:class:`OuterSettings`). Results files store the
settings under flat names (``global_epochs``, ``inner_lr_grid``, ...):
:meth:`EvalConfig.to_dict` and :meth:`EvalConfig.from_dict` translate through one table,
:data:`FLAT_NAMES`.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from toyrec_helpers.baselines import BRACKETED_LR_GRID
from toyrec_helpers.checks import check_choice, check_int, check_number, int_tuple
from toyrec_helpers.meta import MetaConfig

__all__ = [
    "FLAT_NAMES", "ArticleSettings", "EvalConfig", "InnerSettings", "OuterSettings",
    "SupervisedSettings"
]

CATALOGUE_EXCLUDE: tuple[str, ...] = ("first_max_k", "support")
CI_METHODS: tuple[str, ...] = ("paired", "pooled")


def _put(settings: object, name: str, value: Any) -> None:
    """Store a cleaned value on a frozen settings object (only from its own checks)."""
    object.__setattr__(settings, name, value)


def _check_ints(settings: object, minimums: dict[str, int]) -> None:
    label = type(settings).__name__
    for name, minimum in minimums.items():
        _put(settings, name, check_int(getattr(settings, name), f"{label}.{name}", minimum))


def _check_rates(settings: object, names: tuple[str, ...]) -> None:
    label = type(settings).__name__
    for name in names:
        _put(settings, name, check_number(getattr(settings, name), f"{label}.{name}"))


@dataclass(frozen=True)
class SupervisedSettings:
    """The global feature model (:func:`~toyrec_helpers.baselines.fit_global`).

    Parameters
    ----------
    embedding_dim, hidden
        Model size.
    epochs, lr, batch_size
        Supervised training (``batch_size`` also serves the article's pretraining).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    embedding_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 6
    lr: float = 3e-3
    batch_size: int = 512

    def __post_init__(self) -> None:
        _put(self, "hidden", tuple(check_int(h, "SupervisedSettings.hidden", 1)
                                   for h in self.hidden))
        _check_ints(self, {"embedding_dim": 1, "epochs": 1, "batch_size": 1})
        _check_rates(self, ("lr",))


@dataclass(frozen=True)
class ArticleSettings:
    """The article baseline (:func:`~toyrec_helpers.baselines.fit_article`): its
    id-embedding size and pretraining, and its Adam ``steps`` per new user (their rate is
    tuned on :attr:`InnerSettings.lr_grid`, by the rule of every adapted method).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    embedding_dim: int = 16
    epochs: int = 5
    lr: float = 1e-2
    steps: int = 5

    def __post_init__(self) -> None:
        _check_ints(self, {"embedding_dim": 1, "epochs": 1, "steps": 0})
        _check_rates(self, ("lr",))


@dataclass(frozen=True)
class InnerSettings:
    """The inner loop of every adapted method: ``steps`` gradient steps, with the rate
    tuned on ``lr_grid`` (:func:`~toyrec_helpers.baselines.tune_rate_bracketed`), which
    is extended by up to ``lr_extend`` rates on a side when the best rate lies at its edge.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    steps: int = 5
    lr_grid: tuple[float, ...] = BRACKETED_LR_GRID
    lr_extend: int = 2

    def __post_init__(self) -> None:
        _check_ints(self, {"steps": 0, "lr_extend": 0})
        try:
            grid = tuple(self.lr_grid)
        except TypeError:
            grid = ()
        if len(grid) < 2:
            raise ValueError(f"InnerSettings.lr_grid: expected at least two positive finite "
                             f"rates, got {self.lr_grid!r}")
        _put(self, "lr_grid", tuple(check_number(g, "InnerSettings.lr_grid") for g in grid))


@dataclass(frozen=True)
class OuterSettings:
    """Meta-training (:func:`~toyrec_helpers.meta.meta_train`): tasks per meta-batch,
    Adam rate, epochs, the early-stopping patience on meta-validation, and the episodes.

    Parameters
    ----------
    meta_batch, outer_lr, epochs, patience
        Meta-batch size, Adam rate, most epochs, and epochs without a lower validation
        MSE before stopping.
    resample : bool
        ``True``: every epoch draws one new episode per meta-train shopper from their
        whole history (:class:`~toyrec_helpers.episodes.EpisodeSampler`, K drawn from
        ``k_range``), and validation uses ``val_per_shopper`` such episodes per
        meta-validation shopper, drawn once. ``False``: the fixed first-``train_k``
        episodes of chapter 5 for both.
    k_range : (int, int) or None
        Range of support sizes of resampled episodes; ``None`` = ``(min(ks), max(ks))``,
        one model serving every evaluated K.
    val_per_shopper : int
        Resampled validation episodes per meta-validation shopper.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    meta_batch: int = 32
    outer_lr: float = 1e-3
    epochs: int = 10
    patience: int = 3
    resample: bool = True
    k_range: tuple[int, int] | None = None
    val_per_shopper: int = 4

    def __post_init__(self) -> None:
        _check_ints(self, {"meta_batch": 1, "epochs": 1, "patience": 1, "val_per_shopper": 1})
        _check_rates(self, ("outer_lr",))
        if not isinstance(self.resample, bool):
            raise ValueError(f"OuterSettings.resample: expected True or False, "
                             f"got {self.resample!r}")
        if self.k_range is not None:
            k_range = int_tuple(self.k_range, "OuterSettings.k_range", 1, distinct=False)
            if len(k_range) != 2 or k_range[0] > k_range[1]:
                raise ValueError(f"OuterSettings.k_range: expected None or (low, high) with "
                                 f"1 <= low <= high, got {self.k_range!r}")
            _put(self, "k_range", k_range)


_GROUPS: dict[str, type] = {"supervised": SupervisedSettings, "article": ArticleSettings,
                            "inner": InnerSettings, "outer": OuterSettings}

_STORED_AS: dict[str, dict[str, str]] = {
    "supervised": {"epochs": "global_epochs", "lr": "global_lr"},
    "article": {name: f"article_{name}" for name in ("embedding_dim", "epochs", "lr", "steps")},
    "inner": {"steps": "inner_steps", "lr_grid": "inner_lr_grid", "lr_extend": "inner_lr_extend"},
}
"""Stored names of the group fields that differ from the field's own name."""


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of the cold-start evaluation protocol (see :mod:`toyrec_helpers.evaluate`).

    Parameters
    ----------
    ks : tuple of int
        Support sizes (shots) to evaluate; sorted on construction. Default (1, 3, 5, 10).
    seeds : tuple of int
        Training seeds. Default (0, 1, 2).
    fractions, split_seed
        Shares of meta-train, meta-validation and meta-test shoppers, and the seed of the
        (fixed) split.
    min_query : int
        Fewest query ratings (after the first ``max(ks)``) a meta-test shopper needs.
    train_k, train_q : int
        Support size of fixed meta-training and meta-validation episodes (with
        ``outer.resample=False``), and the query size ``Q`` of every such episode.
    supervised : SupervisedSettings
        The global feature model.
    article : ArticleSettings
        The article baseline.
    inner : InnerSettings
        Inner loop of every adapted method, and the grid its rate is tuned on.
    outer : OuterSettings
        Meta-training.
    relevance_threshold : float
        Query ratings at or above it are relevant for ``hr@10`` and ``ndcg@10``.
    catalogue_exclude : {"first_max_k", "support"}
        Items left out of the catalogue ranking: each shopper's first ``max(ks)`` rated
        items (the same candidates at every K), or only the K support items.
    n_boot, ci_level, bootstrap_seed
        Bootstrap resamples, interval coverage and seed.
    ci_method : {"paired", "pooled"}
        Resample shoppers jointly across seeds, or independently within each seed.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    ks: tuple[int, ...] = (1, 3, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    min_query: int = 1
    train_k: int = 5
    train_q: int = 10
    supervised: SupervisedSettings = field(default_factory=SupervisedSettings)
    article: ArticleSettings = field(default_factory=ArticleSettings)
    inner: InnerSettings = field(default_factory=InnerSettings)
    outer: OuterSettings = field(default_factory=OuterSettings)
    relevance_threshold: float = 4.0
    catalogue_exclude: str = "first_max_k"
    n_boot: int = 1000
    ci_level: float = 0.95
    ci_method: str = "paired"
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        _put(self, "ks", tuple(sorted(int_tuple(self.ks, "EvalConfig.ks", 1))))
        _put(self, "seeds", int_tuple(self.seeds, "EvalConfig.seeds", 0))
        fractions = tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"EvalConfig.fractions: expected three non-negative shares "
                             f"summing to 1, got {self.fractions!r}")
        _put(self, "fractions", fractions)
        for name, kind in _GROUPS.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"EvalConfig.{name}: expected {kind.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")
        _check_ints(self, {"min_query": 1, "train_k": 0, "train_q": 1, "n_boot": 1,
                           "split_seed": 0, "bootstrap_seed": 0})
        check_number(self.relevance_threshold, "EvalConfig.relevance_threshold",
                     positive=False)
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"EvalConfig.ci_level: expected 0 < ci_level < 1, "
                             f"got {self.ci_level!r}")
        check_choice(self.catalogue_exclude, "EvalConfig.catalogue_exclude", CATALOGUE_EXCLUDE)
        check_choice(self.ci_method, "EvalConfig.ci_method", CI_METHODS)

    @property
    def train_k_range(self) -> tuple[int, int]:
        """The support sizes of resampled meta-training and validation episodes:
        ``outer.k_range``, or ``(min(ks), max(ks))``."""
        return self.outer.k_range or (min(self.ks), max(self.ks))

    def to_dict(self) -> dict[str, Any]:
        """The settings under their stored flat names (:data:`FLAT_NAMES`), as JSON-ready
        values (tuples become lists)."""
        out = {}
        for flat, group, name in FLAT_NAMES:
            value = getattr(self if group is None else getattr(self, group), name)
            out[flat] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> EvalConfig:
        """The settings written by :meth:`to_dict` (a results file's ``protocol`` block;
        other keys are ignored, missing ones take their defaults)."""
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        for key, group, name in FLAT_NAMES:
            if key in flat:
                value = flat[key]
                value = tuple(value) if isinstance(value, list) else value
                (top if group is None else groups[group])[name] = value
        return cls(**top, **{g: _GROUPS[g](**kw) for g, kw in groups.items()})

    def meta_config(
        self, inner_lr: float, *, adapt: str = "all", order: str = "second",
        meta_sgd: str = "off",
    ) -> MetaConfig:
        """The :class:`~toyrec_helpers.meta.MetaConfig` of an adapted method: this
        protocol's inner steps and meta-training settings, the given inner rate and
        adaptation (``adapt``, ``order``, ``meta_sgd``)."""
        return MetaConfig(inner_steps=self.inner.steps, inner_lr=float(inner_lr),
                          adapt=adapt, order=order, meta_sgd=meta_sgd,
                          outer_lr=self.outer.outer_lr, meta_batch=self.outer.meta_batch,
                          epochs=self.outer.epochs)


def _flat_names() -> tuple[tuple[str, str | None, str], ...]:
    names: list[tuple[str, str | None, str]] = []
    for top in fields(EvalConfig):
        if top.name in _GROUPS:
            renamed = _STORED_AS.get(top.name, {})
            names += [(renamed.get(f.name, f.name), top.name, f.name)
                      for f in fields(_GROUPS[top.name])]
        else:
            names.append((top.name, None, top.name))
    return tuple(names)


FLAT_NAMES: tuple[tuple[str, str | None, str], ...] = _flat_names()
"""The stored (flat) name of every setting, in the order of the results file (the fields
of :class:`EvalConfig`, each group's fields in its place):
``(flat name, group or None, field)``."""
