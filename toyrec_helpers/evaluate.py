"""The cold-start evaluation protocol: every method, every K, several training seeds.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).

The protocol (every setting lives in one frozen :class:`EvalConfig`, written into the JSON)
---------------------------------------------------------------------------------------------
1. **Users, not ratings, are split.** ``split_users(n_users, (0.7, 0.1, 0.2), seed=0)``
   gives meta-train, meta-validation and meta-test shoppers; the split is the same for
   every training seed. Feature vocabularies and standardisation are fitted on the
   meta-train shoppers only (:func:`toyrec_helpers.features.encode_dataset`).
2. **Training data.** Everything that is *trained* (the global model, the article model,
   item popularity) sees the ratings of meta-train shoppers only
   (:attr:`EvalData.train_interactions` holds nothing else). Meta-training episodes
   (``K=5, Q=10``) come from meta-train shoppers; meta-validation episodes (``K=5, Q=10``)
   tune inner learning rates and pick the best meta-training epoch.
3. **Meta-test episodes.** For each meta-test shopper, in time order: the *support set*
   at shot ``K`` is their first ``K`` ratings (``K`` in ``ks``, default 1, 3, 5, 10); the
   *query set* is every rating after their first ``max(ks)`` ratings, **the same query
   for every K**. A K-shot curve therefore compares like with like: only what the method
   was told changes, never what it is judged on. Ratings ``K+1 .. max(ks)`` are used by
   neither side at shot ``K``. Shoppers with fewer than ``max(ks) + min_query`` ratings
   are skipped and counted (:attr:`EvalResult.skipped_users`, and the JSON's
   ``protocol.users.skipped``).
4. **Methods see only the support ratings of test shoppers.** Each recommender is
   called with a copy of the test batch whose query fields are blanked (zeros), and asked
   to score the whole catalogue; query ratings are used only by the metrics.
5. **Methods** (names as in tables): ``popularity`` (shrunk item mean, also its ranking
   score), ``popularity_count`` (the number of meta-train ratings of an item: a ranking
   only, no rating metrics), ``global``
   (:func:`~toyrec_helpers.baselines.fit_global`, no adaptation),
   ``article`` (:func:`~toyrec_helpers.baselines.fit_article`, per-user Adam steps),
   ``finetune`` (the global model plus ``inner_steps`` SGD steps on the support set),
   ``fomaml``, ``maml`` (second order), ``metasgd`` (Meta-SGD, one learned rate per
   parameter tensor, initialised at the tuned rate), ``maml_head`` (MAML adapting the
   decision layers only) and ``oracle`` (the ToyShop answer key, only for data made by
   the generator). Meta-learned methods start from that seed's global-model parameters
   and train with ``MetaConfig(inner_steps=5, inner_lr=<tuned>, meta_batch=32,
   outer_lr=1e-3, epochs=10)``, keeping the best meta-validation epoch (early stopping
   with patience 3).
6. **Fair tuning budget.** Every adapted method gets the same procedure for its inner
   learning rate: the grid ``inner_lr_grid`` (default
   :data:`~toyrec_helpers.baselines.INNER_LR_GRID`), scored by the mean query MSE of the
   meta-validation shoppers after adapting from the global model's parameters
   (:func:`~toyrec_helpers.baselines.tune_inner_lr`); ``finetune``, ``fomaml``, ``maml``
   and ``metasgd`` share the rate tuned for ``adapt="all"``, ``maml_head`` gets its own
   (``adapt="head"``), and ``article`` its Adam rate from the same grid by the same rule.
7. **Seeds.** Each training seed (default 0, 1, 2) changes model initialisation and the
   order of minibatches and meta-batches. Each method is trained once per seed and then
   evaluated at every K. ``popularity``, ``popularity_count`` and ``oracle`` do not depend
   on the seed: they are computed once and their values repeated for each seed.
8. **Metrics** (:mod:`toyrec_helpers.metrics`), one value per shopper: ``mae`` and
   ``rmse`` of the query ratings (skipped for methods whose scores are not ratings),
   ``ndcg@3`` (the query items ranked by predicted rating, graded by the true rating:
   the MeLU protocol), and ``hr@10`` and ``ndcg@10`` over the full catalogue (relevant
   = query items rated ``>= relevance_threshold``; candidates = every item except the
   shopper's first ``max(ks)`` rated items, the same candidates for every K; set
   ``catalogue_exclude="support"`` to exclude only the K support items). A shopper with
   no relevant query item has no catalogue value (``NaN``) and is not counted in
   ``n_users`` for those metrics.
9. **Summary.** The mean over seeds of the mean over shoppers, with a 95% percentile
   bootstrap interval. The same shoppers are scored under every seed, so by default
   (``ci_method="paired"``) shoppers are resampled *jointly* across seeds
   (:func:`~toyrec_helpers.metrics.bootstrap_ci` of each shopper's mean over seeds);
   ``ci_method="pooled"`` resamples shoppers independently within each seed
   (:func:`~toyrec_helpers.metrics.bootstrap_ci_pooled`), which treats the seeds as
   different shoppers and gives intervals up to ``sqrt(len(seeds))`` times too narrow.
   Neither interval includes seed-to-seed variation; :meth:`EvalResult.per_user` gives
   the values to look at it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from toyrec_helpers import metrics
from toyrec_helpers.baselines import (
    INNER_LR_GRID,
    AdaptedModelRecommender,
    ArticleRecommender,
    FittedBaseline,
    OracleRecommender,
    PopularityRecommender,
    Recommender,
    fit_article,
    fit_global,
    tune_inner_lr,
)
from toyrec_helpers.data import Dataset, load_dataset
from toyrec_helpers.episodes import (
    Episode,
    EpisodeBatch,
    UserSplit,
    collate,
    make_episodes,
    split_users,
)
from toyrec_helpers.features import EncodedFeatures, encode_dataset
from toyrec_helpers.meta import MetaConfig, meta_train
from toyrec_helpers.models import masked_mse
from toyrec_helpers.toyshop import answer_key, config_from_schema

__all__ = [
    "METHODS",
    "METRICS",
    "EvalConfig",
    "EvalData",
    "EvalResult",
    "check_json_path",
    "evaluate",
    "fit_methods",
    "format_table",
    "prepare",
    "resolve_methods",
    "score_recommender",
]

METHODS: tuple[str, ...] = (
    "popularity", "popularity_count", "global", "article", "finetune", "fomaml", "maml",
    "metasgd", "maml_head", "oracle",
)
"""Every method name :func:`evaluate` knows, in table order."""

METRICS: tuple[str, ...] = ("mae", "rmse", "ndcg@3", "hr@10", "ndcg@10")
"""Metric names, in table order."""

RATING_METRICS: tuple[str, ...] = ("mae", "rmse")
"""Metrics that need ratings (skipped for methods with ``predicts_ratings = False``)."""

PROTOCOL_NAME = "toyrec cold-start evaluation"
PROTOCOL_VERSION = 1

_SEED_FREE = ("popularity", "popularity_count", "oracle")  # do not depend on the training seed
_META = {  # method -> (adapt, order, meta_sgd)
    "fomaml": ("all", "first", "off"),
    "maml": ("all", "second", "off"),
    "metasgd": ("all", "second", "tensor"),
    "maml_head": ("head", "second", "off"),
}
_EXCLUDE = ("first_max_k", "support")
_CI = ("paired", "pooled")


# --------------------------------------------------------------------------- settings


def _int_tuple(value: Any, name: str, minimum: int) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = (value,)
    bad = [v for v in items
           if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum]
    if not items or bad:
        raise ValueError(f"EvalConfig.{name}: expected a non-empty sequence of integers >= "
                         f"{minimum}, got {value!r}")
    out = tuple(int(v) for v in items)
    if len(set(out)) != len(out):
        raise ValueError(f"EvalConfig.{name}: values must be distinct, got {value!r}")
    return out


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of the cold-start evaluation protocol (see the module docstring).

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
        Support and query sizes of meta-training and meta-validation episodes.
    embedding_dim, hidden, global_epochs, global_lr, batch_size
        The global feature model (:func:`~toyrec_helpers.baselines.fit_global`).
    article_embedding_dim, article_epochs, article_lr, article_steps
        The article baseline (:func:`~toyrec_helpers.baselines.fit_article`); its Adam rate
        per new user is tuned on ``inner_lr_grid``.
    inner_steps, inner_lr_grid
        Inner loop of every adapted method, and the grid its rate is tuned on.
    meta_batch, outer_lr, epochs, patience
        Meta-training (:func:`~toyrec_helpers.meta.meta_train`).
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
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    global_epochs: int = 6
    global_lr: float = 3e-3
    batch_size: int = 512
    article_embedding_dim: int = 16
    article_epochs: int = 5
    article_lr: float = 1e-2
    article_steps: int = 5
    inner_steps: int = 5
    inner_lr_grid: tuple[float, ...] = INNER_LR_GRID
    meta_batch: int = 32
    outer_lr: float = 1e-3
    epochs: int = 10
    patience: int = 3
    relevance_threshold: float = 4.0
    catalogue_exclude: str = "first_max_k"
    n_boot: int = 1000
    ci_level: float = 0.95
    ci_method: str = "paired"
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "ks", tuple(sorted(_int_tuple(self.ks, "ks", 1))))
        put(self, "seeds", _int_tuple(self.seeds, "seeds", 0))
        put(self, "hidden", tuple(int(h) for h in self.hidden))
        fractions = tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"EvalConfig.fractions: expected three non-negative shares "
                             f"summing to 1, got {self.fractions!r}")
        put(self, "fractions", fractions)
        grid = tuple(float(g) for g in self.inner_lr_grid)
        if not grid or not all(math.isfinite(g) and g > 0 for g in grid):
            raise ValueError(f"EvalConfig.inner_lr_grid: expected positive finite rates, "
                             f"got {self.inner_lr_grid!r}")
        put(self, "inner_lr_grid", grid)
        for name, minimum in (("min_query", 1), ("train_k", 0), ("train_q", 1),
                              ("embedding_dim", 1), ("global_epochs", 1), ("batch_size", 1),
                              ("article_embedding_dim", 1), ("article_epochs", 1),
                              ("article_steps", 0), ("inner_steps", 0), ("meta_batch", 1),
                              ("epochs", 1), ("patience", 1), ("n_boot", 1),
                              ("split_seed", 0), ("bootstrap_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"EvalConfig.{name}: expected an integer >= {minimum}, "
                                 f"got {value!r}")
        for name in ("global_lr", "article_lr", "outer_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"EvalConfig.{name}: expected a finite number > 0, "
                                 f"got {value!r}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"EvalConfig.ci_level: expected 0 < ci_level < 1, "
                             f"got {self.ci_level!r}")
        if self.catalogue_exclude not in _EXCLUDE:
            raise ValueError(f"EvalConfig.catalogue_exclude: expected one of {_EXCLUDE}, "
                             f"got {self.catalogue_exclude!r}")
        if self.ci_method not in _CI:
            raise ValueError(f"EvalConfig.ci_method: expected one of {_CI}, "
                             f"got {self.ci_method!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def meta_config(self, method: str, inner_lr: float) -> MetaConfig:
        """The :class:`~toyrec_helpers.meta.MetaConfig` of an adapted method.

        ``"finetune"`` adapts all parameters (the settings of ``"maml"``); the meta-learned
        methods are listed in the module docstring.
        """
        adapt, order, meta_sgd = _META.get(method, ("all", "second", "off"))
        return MetaConfig(inner_steps=self.inner_steps, inner_lr=float(inner_lr),
                          adapt=adapt, order=order, meta_sgd=meta_sgd,
                          outer_lr=self.outer_lr, meta_batch=self.meta_batch,
                          epochs=self.epochs)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EvalData:
    """Everything the protocol derives from a data set before any training.

    Attributes
    ----------
    dataset : Dataset
        The data.
    config : EvalConfig
        The settings used.
    split : UserSplit
        Meta-train, meta-validation and meta-test shoppers.
    user_features, item_features : EncodedFeatures
        Encoded with vocabularies fitted on the meta-train shoppers.
    train_interactions : pandas.DataFrame
        The ratings of meta-train shoppers only: all that supervised training and
        popularity see.
    train_episodes, val_episodes : list of Episode
        ``K = train_k``, ``Q = train_q`` episodes of meta-train and meta-validation
        shoppers.
    test_episodes : list of Episode
        One per evaluated meta-test shopper: support = the first ``max(ks)`` ratings,
        query = all the rest (the query of every K).
    skipped_users : numpy.ndarray
        Meta-test shoppers with too few ratings.
    answer_key : numpy.ndarray or None
        ``[n_users, n_items]`` expected ratings, when the data has an answer key and it was
        asked for.
    answer_key_note : str
        Why there is no answer key (empty when there is one).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    dataset: Dataset
    config: EvalConfig
    split: UserSplit
    user_features: EncodedFeatures
    item_features: EncodedFeatures
    train_interactions: pd.DataFrame
    train_episodes: list[Episode]
    val_episodes: list[Episode]
    test_episodes: list[Episode]
    skipped_users: np.ndarray
    answer_key: np.ndarray | None
    answer_key_note: str
    _batches: dict[int, EpisodeBatch] = field(default_factory=dict, repr=False)

    @property
    def users(self) -> np.ndarray:
        """The evaluated meta-test shoppers (one per test episode), int64."""
        return np.array([e.user for e in self.test_episodes], dtype=np.int64)

    @property
    def val_batch(self) -> EpisodeBatch:
        """The meta-validation episodes, collated."""
        if -1 not in self._batches:
            self._batches[-1] = collate(self.val_episodes)
        return self._batches[-1]

    def test_batch(self, k: int) -> EpisodeBatch:
        """The meta-test batch at shot ``k``: support = first ``k`` ratings, query = the
        ratings after the first ``max(ks)`` (the same for every ``k``)."""
        if k not in self.config.ks:
            raise ValueError(f"argument 'k': expected one of {self.config.ks}, got {k!r}")
        if k not in self._batches:
            self._batches[k] = collate([
                Episode(e.user, e.support_items[:k], e.support_ratings[:k], e.query_items,
                        e.query_ratings) for e in self.test_episodes])
        return self._batches[k]


def _answer_key(dataset: Dataset) -> tuple[np.ndarray | None, str]:
    try:
        generated = config_from_schema(dataset.schema.raw) is not None
        if not generated:
            return None, f"{dataset.path} was not made by the ToyShop generator"
        return answer_key(dataset), ""
    except ValueError as exc:  # other generator version, or edited files
        return None, str(exc)


def prepare(
    dataset: Dataset | str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    with_answer_key: bool = True,
) -> EvalData:
    """Split, encode and cut a data set into the protocol's episodes (no training).

    Parameters
    ----------
    dataset : Dataset, path or None
        A loaded data set, a data directory, or ``None`` for the ToyShop.
    config : EvalConfig, optional
        Settings (default ``EvalConfig()``).
    with_answer_key : bool
        Compute the answer key when the data has one (needed for ``"oracle"``).

    Returns
    -------
    EvalData

    Raises
    ------
    ValueError
        If no meta-test shopper has ``max(ks) + min_query`` ratings, or no meta-train
        shopper has ``train_k + train_q``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    config = EvalConfig() if config is None else config
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    inter = dataset.interactions
    split = split_users(dataset.n_users, config.fractions, seed=config.split_seed)
    user_features, item_features, _, _ = encode_dataset(dataset, fit_users=split.train)
    train_interactions = inter[inter["user"].isin(split.train)].reset_index(drop=True)
    seed = config.split_seed  # orders ratings only when the data has no timestamps
    train = make_episodes(inter, split.train, config.train_k, config.train_q, seed=seed)
    val = make_episodes(inter, split.val, config.train_k, config.train_q, seed=seed)
    test = make_episodes(inter, split.test, max(config.ks), None, config.min_query, seed=seed)
    if len(train) == 0:
        raise ValueError(f"{dataset.path}: no meta-train shopper has train_k + train_q = "
                         f"{config.train_k + config.train_q} ratings")
    if len(test) == 0:
        raise ValueError(f"{dataset.path}: no meta-test shopper has max(ks) + min_query = "
                         f"{max(config.ks) + config.min_query} ratings; lower the largest K")
    key, note = _answer_key(dataset) if with_answer_key else (None, "not computed")
    return EvalData(
        dataset=dataset, config=config, split=split, user_features=user_features,
        item_features=item_features, train_interactions=train_interactions,
        train_episodes=train.episodes, val_episodes=val.episodes,
        test_episodes=test.episodes, skipped_users=test.skipped_users, answer_key=key,
        answer_key_note=note,
    )


def resolve_methods(methods: Iterable[str] | None, data: EvalData) -> tuple[str, ...]:
    """The methods to run, in table order.

    ``None`` = every method of :data:`METHODS`, ``"oracle"`` only when the data has an
    answer key. An unknown name, a repeated name, or ``"oracle"`` without an answer key is
    a ``ValueError`` that lists what is possible.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if methods is None:
        return tuple(m for m in METHODS if m != "oracle" or data.answer_key is not None)
    if isinstance(methods, str):
        methods = [methods]
    asked = list(methods)
    unknown = [m for m in asked if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid names: {', '.join(METHODS)}")
    if len(set(asked)) != len(asked):
        raise ValueError(f"methods must be distinct, got {asked}")
    if not asked:
        raise ValueError(f"no method given; valid names: {', '.join(METHODS)}")
    if "oracle" in asked and data.answer_key is None:
        raise ValueError(f"method 'oracle' needs an answer key, and this data set has none "
                         f"({data.answer_key_note})")
    return tuple(m for m in METHODS if m in asked)


# --------------------------------------------------------------------------- training


class _SeedFitter:
    """Fits the methods of one training seed, sharing the global model and tuned rates."""

    def __init__(self, data: EvalData, seed: int) -> None:
        self.data, self.config, self.seed = data, data.config, int(seed)
        self._global: FittedBaseline | None = None
        self._lrs: dict[str, float] = {}

    def base(self) -> FittedBaseline:
        if self._global is None:
            d, c = self.data, self.config
            self._global = fit_global(
                d.user_features, d.item_features, d.train_interactions, d.split.train,
                embedding_dim=c.embedding_dim, hidden=c.hidden, epochs=c.global_epochs,
                lr=c.global_lr, batch_size=c.batch_size, seed=self.seed)
        return self._global

    def inner_lr(self, adapt: str) -> float:
        if adapt not in self._lrs:
            g = self.base()
            method = "maml_head" if adapt == "head" else "maml"
            start = self.config.meta_config(method, self.config.inner_lr_grid[0])
            self._lrs[adapt], _ = tune_inner_lr(g.model, g.params, self.data.val_batch,
                                                start, self.config.inner_lr_grid)
        return self._lrs[adapt]

    def _article(self) -> tuple[Recommender, float]:
        d, c = self.data, self.config
        fitted = fit_article(d.train_interactions, d.split.train, d.dataset.n_users,
                             d.dataset.n_items, embedding_dim=c.article_embedding_dim,
                             epochs=c.article_epochs, lr=c.article_lr, batch_size=c.batch_size,
                             seed=self.seed, finetune_steps=c.article_steps)
        batch = d.val_batch
        has_query = batch.query_mask.sum(-1) > 0
        best: tuple[float, float] | None = None
        for lr in c.inner_lr_grid:  # the same grid and rule as tune_inner_lr
            rec = ArticleRecommender(fitted.model, fitted.params, steps=c.article_steps, lr=lr)
            pred = rec.predict(batch)
            mse = float(masked_mse(pred, batch.query_ratings, batch.query_mask)[has_query]
                        .mean()) if bool(torch.isfinite(pred).all()) else math.inf
            if best is None or mse < best[0]:
                best = (mse, float(lr))
        assert best is not None
        if not math.isfinite(best[0]):
            raise FloatingPointError(f"article: every Adam rate in {c.inner_lr_grid} diverged")
        lr = best[1]
        return ArticleRecommender(fitted.model, fitted.params, steps=c.article_steps, lr=lr,
                                  name="article"), lr

    def fit(self, method: str) -> tuple[Recommender, dict[str, Any]]:
        """One method's recommender and a small record of how it was fitted."""
        d, c = self.data, self.config
        start = time.perf_counter()
        info: dict[str, Any] = {"seed": self.seed, "method": method, "inner_lr": math.nan,
                                "best_epoch": -1, "stopped_early": False}
        rec: Recommender
        if method == "popularity":
            rec = PopularityRecommender(d.train_interactions, d.split.train, d.dataset.n_items)
        elif method == "popularity_count":
            rec = PopularityRecommender(d.train_interactions, d.split.train, d.dataset.n_items,
                                        by="count", name="popularity_count")
        elif method == "oracle":
            if d.answer_key is None:
                raise ValueError(f"method 'oracle' needs an answer key ({d.answer_key_note})")
            rec = OracleRecommender(d.answer_key)
        elif method == "global":
            rec = self.base().recommender
        elif method == "article":
            rec, info["inner_lr"] = self._article()
        elif method == "finetune":
            g, lr = self.base(), self.inner_lr("all")
            rec = AdaptedModelRecommender(g.model, g.params, c.meta_config("finetune", lr),
                                          name="finetune")
            info["inner_lr"] = lr
        elif method in _META:
            g, lr = self.base(), self.inner_lr(_META[method][0])
            result = meta_train(g.model, d.train_episodes, d.val_episodes,
                                c.meta_config(method, lr), seed=self.seed, progress=False,
                                patience=c.patience)
            rec = AdaptedModelRecommender(g.model, result.params, result.config,
                                          inner_lrs=result.inner_lrs, name=method)
            info.update(inner_lr=lr, best_epoch=result.best_epoch,
                        stopped_early=result.stopped_early)
        else:
            raise ValueError(f"unknown method {method!r}; valid names: {', '.join(METHODS)}")
        info["seconds"] = time.perf_counter() - start
        return rec, info


def fit_methods(
    data: EvalData, seed: int, methods: Iterable[str] | None = None
) -> tuple[dict[str, Recommender], pd.DataFrame]:
    """Train the methods of one seed exactly as :func:`evaluate` does.

    Parameters
    ----------
    data : EvalData
        From :func:`prepare`.
    seed : int
        Training seed.
    methods : iterable of str, optional
        Default: all (see :func:`resolve_methods`).

    Returns
    -------
    recommenders : dict of str to Recommender
        By method name.
    fits : pandas.DataFrame
        One row per method: ``seed``, ``method``, ``inner_lr`` (tuned rate, NaN if none),
        ``best_epoch`` (meta-training, -1 if none), ``stopped_early``, ``seconds``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    fitter = _SeedFitter(data, seed)
    recs, rows = {}, []
    for method in resolve_methods(methods, data):
        recs[method], info = fitter.fit(method)
        rows.append(info)
    return recs, pd.DataFrame(rows)


# --------------------------------------------------------------------------- scoring


def _blind(batch: EpisodeBatch) -> EpisodeBatch:
    """The batch a recommender gets: users and support only, query fields zeroed."""
    empty = torch.zeros((len(batch), 1), dtype=torch.int64)
    return dataclasses.replace(batch, query_items=empty,
                               query_ratings=empty.to(torch.float32),
                               query_mask=empty.to(torch.float32))


def _chunk_users(n_items: int) -> int:
    """Shoppers scored at once: about 500,000 (shopper, item) pairs, 16 to 512 shoppers."""
    return int(min(512, max(16, 500_000 // max(1, n_items))))


def score_recommender(recommender: Recommender, data: EvalData, k: int) -> dict[str, np.ndarray]:
    """Per-shopper metrics of one recommender at shot ``k``.

    The recommender scores the whole catalogue for each meta-test shopper from a batch
    that holds only the users and their ``k`` support ratings (the query fields are
    zeroed); query predictions are read off those scores.

    Parameters
    ----------
    recommender : Recommender
        A fitted method.
    data : EvalData
        From :func:`prepare`.
    k : int
        Shot, one of ``data.config.ks``.

    Returns
    -------
    dict of str to numpy.ndarray
        Metric name -> float64 ``[n_evaluated_users]`` (``NaN`` where undefined), in the
        order of :attr:`EvalData.users`; ``mae`` and ``rmse`` only when
        ``recommender.predicts_ratings``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    c = data.config
    batch = data.test_batch(k)
    n_items = data.dataset.n_items
    prefix = data.test_batch(max(c.ks)) if c.catalogue_exclude == "first_max_k" else batch
    names = [m for m in METRICS
             if recommender.predicts_ratings or m not in RATING_METRICS]
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    step = _chunk_users(n_items)
    for lo in range(0, len(batch), step):
        b = batch.select(slice(lo, lo + step))
        scores = recommender.predict(_blind(b), "all")
        if tuple(scores.shape) != (len(b), n_items):
            raise ValueError(f"{recommender.name}: predict(batch, 'all') returned shape "
                             f"{tuple(scores.shape)}, expected {(len(b), n_items)}")
        pred = scores.gather(1, b.query_items)
        y, m = b.query_ratings, b.query_mask
        if recommender.predicts_ratings:
            parts["mae"].append(metrics.mae(pred, y, m))
            parts["rmse"].append(metrics.rmse(pred, y, m))
        parts["ndcg@3"].append(metrics.ndcg_at_k(pred, y, m, k=3))
        p = prefix.select(slice(lo, lo + step))
        relevant, exclude = metrics.catalogue_masks(
            p.support_items, p.support_mask, b.query_items, y, m, n_items,
            threshold=c.relevance_threshold)
        parts["hr@10"].append(metrics.hit_rate_at_k(scores, relevant, exclude, k=10))
        parts["ndcg@10"].append(metrics.catalogue_ndcg_at_k(scores, relevant, exclude, k=10))
        del scores, relevant, exclude
    return {name: torch.cat(v).cpu().numpy() for name, v in parts.items()}


# --------------------------------------------------------------------------- results


def _summarise(
    values: Mapping[tuple[str, int, str], np.ndarray], methods: Sequence[str],
    config: EvalConfig,
) -> pd.DataFrame:
    rows = []
    for method in methods:
        for k in config.ks:
            for metric in METRICS:
                v = values.get((method, k, metric))
                if v is None:
                    continue
                per_user = v.mean(axis=0)  # NaN pattern does not depend on the seed
                n = metrics.n_valid(per_user)
                if n == 0:
                    ci = metrics.BootstrapCI(math.nan, math.nan, math.nan)
                elif config.ci_method == "paired":
                    ci = metrics.bootstrap_ci(per_user, config.n_boot, config.ci_level,
                                              config.bootstrap_seed)
                else:
                    arrays = [v[0]] if method in _SEED_FREE else list(v)
                    ci = metrics.bootstrap_ci_pooled(arrays, config.n_boot, config.ci_level,
                                                     config.bootstrap_seed)
                rows.append({"method": method, "k": int(k), "metric": metric,
                             "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                             "n_users": n})
    return pd.DataFrame(rows, columns=["method", "k", "metric", "mean", "ci_low", "ci_high",
                                       "n_users"])


def _is_evaluate_json(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(content, dict) and set(content) == {"data", "protocol", "summary"}
            and isinstance(content["protocol"], dict)
            and content["protocol"].get("name") == PROTOCOL_NAME)


def check_json_path(path: str | os.PathLike[str]) -> Path:
    """Check that :meth:`EvalResult.to_json` may write ``path``, before any work is done.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        If ``path`` exists and is not a JSON file written by :meth:`EvalResult.to_json`
        (nothing the user owns is overwritten), or is a directory.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path}: is a directory; expected a file name for the JSON")
    if path.exists() and not _is_evaluate_json(path):
        raise FileExistsError(f"{path}: exists and is not an evaluation JSON written by "
                              "toyrec_helpers.evaluate; refusing to replace it")
    return path


def _json_number(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    data : str
        The data directory.
    config : EvalConfig
        The settings.
    methods : tuple of str
        Methods evaluated, in table order.
    users : numpy.ndarray
        The evaluated meta-test shoppers; column ``j`` of :meth:`per_user` is ``users[j]``.
    skipped_users : numpy.ndarray
        Meta-test shoppers skipped for having too few ratings.
    values : dict
        ``(method, k, metric) -> float64 [n_seeds, n_users]`` per-shopper values (rows in
        the order of ``config.seeds``).
    fits : pandas.DataFrame
        One row per (seed, method): tuned ``inner_lr``, ``best_epoch``, ``stopped_early``,
        ``seconds`` of training.
    recommenders : dict of str to Recommender
        The trained methods of the last seed (for ablations and demos).
    split_sizes : dict of str to int
        ``train``, ``val``, ``test``, ``evaluated``, ``skipped`` shopper counts.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    data: str
    config: EvalConfig
    methods: tuple[str, ...]
    users: np.ndarray
    skipped_users: np.ndarray
    values: dict[tuple[str, int, str], np.ndarray]
    fits: pd.DataFrame
    recommenders: dict[str, Recommender]
    split_sizes: dict[str, int]
    _summary: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def per_user(self, method: str, k: int, metric: str) -> np.ndarray:
        """Per-shopper values, float64 ``[n_seeds, n_users]`` (a copy; NaN = undefined)."""
        key = (method, int(k), metric)
        if key not in self.values:
            raise KeyError(f"no values for method={method!r}, k={k!r}, metric={metric!r}; "
                           f"methods {self.methods}, ks {self.config.ks}, metrics {METRICS} "
                           "(mae/rmse only for methods that predict ratings)")
        return self.values[key].copy()

    def summary(self) -> pd.DataFrame:
        """One row per (method, k, metric): ``mean``, ``ci_low``, ``ci_high``, ``n_users``."""
        return self._summary.copy()

    def protocol(self) -> dict[str, Any]:
        """The ``protocol`` block of the JSON: settings, methods, shopper counts, and the
        tuned inner rates and best meta-training epochs per seed."""
        tuned: dict[str, dict[str, list[Any]]] = {"inner_lr": {}, "best_epoch": {}}
        for method in self.methods:
            rows = self.fits[self.fits["method"] == method]
            if rows["inner_lr"].notna().any():
                tuned["inner_lr"][method] = [_json_number(x) for x in rows["inner_lr"]]
            if (rows["best_epoch"] >= 0).any():
                tuned["best_epoch"][method] = [int(x) for x in rows["best_epoch"]]
        return {"name": PROTOCOL_NAME, "version": PROTOCOL_VERSION, **self.config.to_dict(),
                "methods": list(self.methods), "metrics": list(METRICS),
                "users": dict(self.split_sizes), "tuned": tuned}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"data", "protocol", "summary"}`` to ``path`` atomically.

        An existing file is replaced only if it is a previous evaluation JSON (see
        :func:`check_json_path`). Undefined values are written as ``null``.
        """
        path = check_json_path(path)
        summary = [{k: _json_number(v) for k, v in row.items()}
                   for row in self._summary.to_dict(orient="records")]
        text = json.dumps({"data": self.data, "protocol": self.protocol(), "summary": summary},
                          indent=2, allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


# --------------------------------------------------------------------------- evaluate


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (so a stored
    result does not record one machine's absolute paths), else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def evaluate(
    dataset: Dataset | str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    methods: Iterable[str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run the cold-start protocol: train every method per seed, score it at every K.

    Parameters
    ----------
    dataset : Dataset, path or None
        A loaded data set, a data directory, or ``None`` for the ToyShop.
    config : EvalConfig, optional
        Settings; default ``EvalConfig()`` (K = 1, 3, 5, 10; seeds 0, 1, 2).
    methods : iterable of str, optional
        Subset of :data:`METHODS`; default all (``"oracle"`` when there is an answer key).
    progress : bool
        Show a ``tqdm`` bar over (seed, method) steps.

    Returns
    -------
    EvalResult

    Raises
    ------
    ValueError
        Unknown method, ``"oracle"`` without an answer key, or no shopper to evaluate.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    config = EvalConfig() if config is None else config
    if not isinstance(config, EvalConfig):
        raise TypeError(f"argument 'config': expected EvalConfig, got {type(config).__name__}")
    if methods is not None and not isinstance(methods, str):
        methods = list(methods)
    wants_key = methods is None or "oracle" in methods
    data = prepare(dataset, config, with_answer_key=wants_key)
    chosen = resolve_methods(methods, data)
    n_users = len(data.test_episodes)
    values = {}
    fits, recommenders = [], {}
    cache: dict[str, tuple[Recommender, dict[str, dict[str, np.ndarray]]]] = {}
    bar = tqdm(total=len(config.seeds) * len(chosen), desc="evaluate", disable=not progress)
    for s, seed in enumerate(config.seeds):
        fitter = _SeedFitter(data, seed)
        last = s == len(config.seeds) - 1
        for method in chosen:
            bar.set_postfix_str(f"seed {seed}, {method}")
            if method in cache:  # seed-free: fitted and scored once
                rec, scored = cache[method]
                info = {"seed": seed, "method": method, "inner_lr": math.nan,
                        "best_epoch": -1, "stopped_early": False, "seconds": 0.0}
            else:
                rec, info = fitter.fit(method)
                scored = {}
                for k in config.ks:
                    try:
                        scored[str(k)] = score_recommender(rec, data, k)
                    except ValueError as exc:
                        raise ValueError(f"method {method!r}, seed {seed}, K={k}: {exc}") from exc
                if method in _SEED_FREE:
                    cache[method] = (rec, scored)
            fits.append(info)
            for k in config.ks:
                for metric, v in scored[str(k)].items():
                    key = (method, k, metric)
                    if key not in values:
                        values[key] = np.full((len(config.seeds), n_users), np.nan)
                    values[key][s] = v
            if last:
                recommenders[method] = rec
            bar.update(1)
    bar.close()
    split = data.split
    result = EvalResult(
        data=_display_path(data.dataset.path), config=config, methods=chosen, users=data.users,
        skipped_users=data.skipped_users.copy(), values=values, fits=pd.DataFrame(fits),
        recommenders=recommenders,
        split_sizes={"train": len(split.train), "val": len(split.val), "test": len(split.test),
                     "evaluated": n_users, "skipped": int(len(data.skipped_users))},
    )
    result._summary = _summarise(values, chosen, config)
    return result


# --------------------------------------------------------------------------- table


def _cell(row: Mapping[str, Any]) -> str:
    if not math.isfinite(row["mean"]):
        return "n/a"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = ["  ".join(h.ljust(w) if j == 0 else h.rjust(w)
                       for j, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))))
    return lines


def format_table(
    summary: pd.DataFrame, metric: str | None = None, k: int | Iterable[int] | None = None
) -> str:
    """A readable text table of :meth:`EvalResult.summary`.

    Cells read ``mean [ci_low, ci_high]``; ``-`` marks a metric not computed for a method
    (MAE/RMSE of a ranking-only score).

    Parameters
    ----------
    summary : pandas.DataFrame
        Columns ``method``, ``k``, ``metric``, ``mean``, ``ci_low``, ``ci_high``,
        ``n_users``.
    metric : str, optional
        Only this metric: one block, rows = methods, columns = K.
    k : int or iterable of int, optional
        Only these K. Without ``metric``: one block per K, rows = methods, columns =
        metrics, and a line with the number of shoppers per metric.

    Returns
    -------
    str

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    need = {"method", "k", "metric", "mean", "ci_low", "ci_high", "n_users"}
    missing = sorted(need - set(summary.columns))
    if missing:
        raise ValueError(f"argument 'summary': missing column(s) {missing}; expected "
                         "EvalResult.summary()")
    frame = summary
    if k is not None:
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
        frame = frame[frame["k"].isin(ks)]
    if metric is not None:
        frame = frame[frame["metric"] == metric]
    if len(frame) == 0:
        raise ValueError(f"no summary rows for metric={metric!r}, k={k!r}")
    methods = list(dict.fromkeys(frame["method"]))
    metric_order = [m for m in METRICS if m in set(frame["metric"])]
    metric_order += [m for m in dict.fromkeys(frame["metric"]) if m not in metric_order]
    cells = {(r["method"], int(r["k"]), r["metric"]): r for r in frame.to_dict("records")}
    ks_present = sorted({int(x) for x in frame["k"]})
    blocks = []
    if metric is not None:
        header = ["method"] + [f"K={kk}" for kk in ks_present]
        rows = [[m] + [_cell(cells[(m, kk, metric)]) if (m, kk, metric) in cells else "-"
                       for kk in ks_present] for m in methods]
        counts = sorted({int(r["n_users"]) for r in cells.values()})
        blocks.append([f"{metric}: mean [bootstrap CI] over shoppers "
                       f"(n = {', '.join(map(str, counts))})", *_grid(header, rows)])
    else:
        for kk in ks_present:
            header = ["method", *metric_order]
            rows = [[m] + [_cell(cells[(m, kk, x)]) if (m, kk, x) in cells else "-"
                           for x in metric_order] for m in methods]
            by_n: dict[int, list[str]] = {}
            for x in metric_order:
                ns = [int(cells[(m, kk, x)]["n_users"]) for m in methods if (m, kk, x) in cells]
                if ns:
                    by_n.setdefault(max(ns), []).append(x)
            n_text = "; ".join(f"{n} for {', '.join(xs)}" for n, xs in by_n.items())
            blocks.append([f"K = {kk}: mean [bootstrap CI] over shoppers (n = {n_text})",
                           *_grid(header, rows)])
    return "\n\n".join("\n".join(b) for b in blocks)

