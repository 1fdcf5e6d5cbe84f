"""Fitting and tuning the baselines: the global model, the article model, inner rates.

:func:`fit_global` and :func:`fit_article` train the two supervised baselines on the
meta-training users' ratings; :func:`tune_rate` is the one rule by which every adapted
method gets its rate (fine-tuning, MAML and its variants through :func:`tune_inner_lr`,
the article's Adam rate directly): the rate of a grid with the lowest mean query MSE of the
meta-validation users. The recommenders themselves, and the :class:`Recommender` interface
they share, are defined in :mod:`toyrec_helpers.recommenders` and exported here too, so
``from toyrec_helpers.baselines import ...`` reaches every baseline of chapter 3.

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.meta import MetaConfig
from toyrec_helpers.models import FeatureRecommender, IdEmbeddingRecommender, masked_mse
from toyrec_helpers.recommenders import (
    AdaptedModelRecommender,
    ArticleRecommender,
    FixedModelRecommender,
    OracleRecommender,
    PopularityRecommender,
    Recommender,
    adam_adapt,
    ratings_of,
    resolve_items,
)
from toyrec_helpers.training import SupervisedResult, train_supervised

__all__ = [
    "BRACKETED_LR_GRID", "INNER_LR_GRID", "Bracket", "TuneResult", "adam_adapt",
    "AdaptedModelRecommender", "bracket_search",
    "ArticleRecommender", "fit_article",
    "fit_global", "FittedBaseline", "FixedModelRecommender", "OracleRecommender",
    "PopularityRecommender", "ratings_of", "Recommender", "resolve_items", "tune_inner_lr",
    "tune_rate", "tune_rate_bracketed"
]

Params = dict[str, torch.Tensor]

INNER_LR_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
"""The coarse grid of inner learning rates of chapters 3 to 5 (default of
:func:`tune_inner_lr`). Its best rate for the ToyShop's global model, 0.01, lies at its
lower edge; the evaluation protocol tunes on :data:`BRACKETED_LR_GRID` instead."""

BRACKETED_LR_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
"""The evaluation protocol's grid of rates, log-spaced (half a decade apart) from 1e-4 to
0.3, for every adapted method alike (:func:`tune_rate_bracketed` extends it when the best
rate lies at an edge)."""


@dataclass
class FittedBaseline:
    """What :func:`fit_global` and :func:`fit_article` return.

    Attributes
    ----------
    recommender : FixedModelRecommender or ArticleRecommender
        The fitted method.
    model : torch.nn.Module
        The model, holding the trained parameters.
    params : dict of str to torch.Tensor
        The trained parameters (also ``training.params``).
    initial_params : dict of str to torch.Tensor
        The parameters before training (seeded initialisation).
    training : SupervisedResult
        History and best epoch of :func:`toyrec_helpers.training.train_supervised`.
    seconds : float
        Wall time of the whole fit.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    recommender: FixedModelRecommender | ArticleRecommender
    model: nn.Module
    params: Params
    initial_params: Params
    training: SupervisedResult
    seconds: float


def _fit(
    build: Callable[[float], nn.Module],
    wrap: Callable[[nn.Module, Params], FixedModelRecommender | ArticleRecommender],
    interactions: pd.DataFrame,
    train_users: np.ndarray | Sequence[int],
    val_users: np.ndarray | Sequence[int] | None,
    seed: int,
    train_kwargs: dict[str, object],
) -> FittedBaseline:
    """Build a model (seeded, output bias = mean training rating), train it on the
    ratings of ``train_users`` and wrap it as a recommender."""
    start = time.perf_counter()
    users, items, ratings = ratings_of(interactions, train_users)
    val = None if val_users is None else ratings_of(interactions, val_users)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
        torch.manual_seed(int(seed))
        model = build(float(ratings.mean()))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_supervised(model, users, items, ratings, seed=seed, val=val,
                              **train_kwargs)  # type: ignore[arg-type]
    model.load_state_dict(result.params)
    return FittedBaseline(
        recommender=wrap(model, result.params), model=model, params=result.params,
        initial_params=initial, training=result, seconds=time.perf_counter() - start)


def fit_global(
    user_features: EncodedFeatures,
    item_features: EncodedFeatures,
    interactions: pd.DataFrame,
    train_users: np.ndarray | Sequence[int],
    *,
    embedding_dim: int = 8,
    hidden: tuple[int, ...] = (64, 32),
    epochs: int = 6,
    lr: float = 3e-3,
    batch_size: int = 512,
    weight_decay: float = 0.0,
    seed: int = 0,
    val_users: np.ndarray | Sequence[int] | None = None,
    patience: int | None = None,
    progress: bool = False,
    name: str = "global",
) -> FittedBaseline:
    """Train the feature model on the meta-training users' ratings: the "global" baseline.

    A :class:`~toyrec_helpers.models.FeatureRecommender` (initialised with seed ``seed``,
    output bias = mean training rating) is trained by
    :func:`toyrec_helpers.training.train_supervised` on *all* ratings of ``train_users``.
    Its parameters are also the starting point of the "finetune" baseline
    (:class:`AdaptedModelRecommender`). With the defaults, fitting the 2,100 meta-training
    users of the ToyShop (about 70,000 ratings) takes about 5 s on one idle CPU core; the
    validation MSE has levelled off by then.

    Parameters
    ----------
    user_features, item_features : EncodedFeatures
        Encoded tables (:func:`toyrec_helpers.features.encode_dataset`).
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions`.
    train_users : array of int
        Users whose ratings are the training data (``split.train``).
    embedding_dim, hidden
        Model size.
    epochs, lr, batch_size, weight_decay, patience, progress
        Training settings (see :func:`toyrec_helpers.training.train_supervised`).
    seed : int
        Seed of the initialisation and of the shuffling.
    val_users : array of int, optional
        Users whose ratings select the best epoch (``split.val``): new users, as at test
        time.
    name : str
        Label of the recommender.

    Returns
    -------
    FittedBaseline
        ``recommender`` is a :class:`FixedModelRecommender`.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    return _fit(
        lambda mean: FeatureRecommender(user_features, item_features, embedding_dim, hidden,
                                        rating_mean=mean),
        lambda model, params: FixedModelRecommender(model, params, name=name),
        interactions, train_users, val_users, seed,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
         "patience": patience, "progress": progress},
    )


def fit_article(
    interactions: pd.DataFrame,
    train_users: np.ndarray | Sequence[int],
    n_users: int,
    n_items: int,
    *,
    embedding_dim: int = 16,
    epochs: int = 5,
    lr: float = 1e-2,
    batch_size: int = 512,
    seed: int = 0,
    val_users: np.ndarray | Sequence[int] | None = None,
    finetune_steps: int = 5,
    finetune_lr: float = 0.01,
    progress: bool = False,
    name: str = "article",
) -> FittedBaseline:
    """Pretrain the article's id-embedding model and wrap it as an :class:`ArticleRecommender`.

    The "meta-training" of the article is ordinary supervised training of an
    :class:`~toyrec_helpers.models.IdEmbeddingRecommender` on all ratings of
    ``train_users`` (Adam, no weight decay). The embedding rows of users outside
    ``train_users`` receive no gradient and so keep their random initialisation exactly
    (compare ``params`` with ``initial_params``).

    Parameters
    ----------
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions`.
    train_users : array of int
        Users whose ratings are the training data (``split.train``).
    n_users, n_items : int
        Id space sizes (all users, so that new users have a row).
    embedding_dim : int
        Size of each id embedding.
    epochs, lr, batch_size, progress
        Pretraining settings (see :func:`toyrec_helpers.training.train_supervised`).
    seed : int
        Seed of the initialisation and of the shuffling.
    val_users : array of int, optional
        Users whose ratings select the best pretraining epoch.
    finetune_steps, finetune_lr : int, float
        Per-user Adam fine-tuning (defaults 5 steps, learning rate 0.01).
    name : str
        Label of the recommender.

    Returns
    -------
    FittedBaseline
        The pretrained model, wrapped as an :class:`ArticleRecommender` (``recommender``)
        that fine-tunes it per user.

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """
    return _fit(
        lambda mean: IdEmbeddingRecommender(n_users, n_items, embedding_dim, rating_mean=mean),
        lambda model, params: ArticleRecommender(
            model, params, steps=finetune_steps, lr=finetune_lr, name=name),  # type: ignore[arg-type]
        interactions, train_users, val_users, seed,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": 0.0,
         "progress": progress},
    )


def tune_rate(
    make: Callable[[float], Recommender],
    val_batch: EpisodeBatch,
    grid: Sequence[float] = INNER_LR_GRID,
    what: str = "inner learning rate",
) -> tuple[float, list[dict[str, float]]]:
    """Choose the rate of an adapted method on meta-validation episodes: the one rule.

    For each rate in ``grid``, ``make(rate)`` builds the method, which adapts every
    validation user on their support set and predicts their query set; the rate with the
    lowest mean (over users) query MSE wins, ties going to the smaller rate. A rate whose
    predictions are not finite (divergence) gets MSE ``inf``. Every adapted method is
    tuned by this rule on the same grid, so none gets a larger tuning budget.

    Parameters
    ----------
    make : callable
        ``make(rate) -> Recommender``, the method with that rate.
    val_batch : EpisodeBatch
        Meta-validation episodes.
    grid : sequence of float
        Rates to try. Default :data:`INNER_LR_GRID`.
    what : str
        What the rate is, for the error raised when every rate diverges.

    Returns
    -------
    best_lr : float
        The chosen rate.
    table : list of dict
        One row per rate: ``inner_lr``, ``val_mse``, ``val_mae`` (means over users).

    Raises
    ------
    FloatingPointError
        If every rate diverges.

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """
    if len(grid) == 0:
        raise ValueError("argument 'grid' is empty")
    has_query = val_batch.query_mask.sum(-1) > 0
    if not bool(has_query.any()):
        raise ValueError("argument 'val_batch': no task has a query rating")
    table = []
    for lr in grid:
        pred = make(float(lr)).predict(val_batch)
        mask = val_batch.query_mask
        mse = masked_mse(pred, val_batch.query_ratings, mask)[has_query].mean()
        err = (pred - val_batch.query_ratings).abs() * mask
        mae = (err.sum(-1) / mask.sum(-1).clamp_min(1))[has_query].mean()
        finite = bool(torch.isfinite(pred).all())
        table.append({"inner_lr": float(lr), "val_mse": float(mse) if finite else math.inf,
                      "val_mae": float(mae) if finite else math.inf})
    best = min(table, key=lambda row: (row["val_mse"], row["inner_lr"]))
    if not math.isfinite(best["val_mse"]):
        raise FloatingPointError(f"every {what} in {tuple(grid)} diverged")
    return best["inner_lr"], table


def tune_inner_lr(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    val_batch: EpisodeBatch,
    config: MetaConfig,
    grid: Sequence[float] = INNER_LR_GRID,
) -> tuple[float, list[dict[str, float]]]:
    """Choose the inner learning rate of SGD adaptation on meta-validation episodes.

    :func:`tune_rate` applied to :class:`~toyrec_helpers.baselines.AdaptedModelRecommender`
    with ``config``'s inner loop and ``inner_lr`` replaced by each rate of ``grid``.
    Fine-tuning and MAML are tuned with the same grid and rule, so neither gets a larger
    tuning budget.

    Parameters
    ----------
    model, params : torch.nn.Module, dict of str to torch.Tensor
        The architecture, and the parameters every adaptation starts from.
    val_batch : EpisodeBatch
        Meta-validation episodes.
    config : MetaConfig
        Inner-loop settings; ``inner_lr`` is what is tuned (``meta_sgd`` must be "off").
    grid : sequence of float
        Rates to try. Default :data:`INNER_LR_GRID`.

    Returns
    -------
    tuple of float and list of dict
        The chosen rate and the table of every rate tried, as from :func:`tune_rate`.

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """
    if config.meta_sgd != "off":
        raise ValueError("tune_inner_lr tunes one shared inner rate; config.meta_sgd must be "
                         f"'off', got {config.meta_sgd!r}")
    return tune_rate(
        lambda lr: AdaptedModelRecommender(model, params,
                                           dataclasses.replace(config, inner_lr=lr)),
        val_batch, grid)


@dataclass
class TuneResult:
    """What :func:`tune_rate_bracketed` returns.

    Attributes
    ----------
    best : float
        The chosen rate.
    table : list of dict
        Every rate tried, in increasing order: ``inner_lr``, ``val_mse``, ``val_mae``.
    edge : {"", "low", "high"}
        ``"low"`` or ``"high"`` when the best rate is still the smallest or largest rate
        tried after extending the grid: the grid does not bracket the optimum.
    extended : int
        Rates tried beyond the grid given.
    unadapted_mse : float
        Validation MSE of the method without adaptation (``NaN`` if not measured).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    best: float
    table: list[dict[str, float]]
    edge: str = ""
    extended: int = 0
    unadapted_mse: float = math.nan

    @property
    def best_mse(self) -> float:
        """Validation MSE at the chosen rate."""
        return next(row["val_mse"] for row in self.table if row["inner_lr"] == self.best)

    @property
    def worse_than_unadapted(self) -> bool:
        """Whether adapting at the best rate is worse on validation than not adapting."""
        return bool(self.best_mse > self.unadapted_mse)


def _rate_row(
    recommender: Recommender, lr: float, val_batch: EpisodeBatch, has_query: torch.Tensor
) -> dict[str, float]:
    """Mean validation query MSE and MAE of one recommender (``inf`` if not finite)."""
    pred = recommender.predict(val_batch)
    mask = val_batch.query_mask
    mse = masked_mse(pred, val_batch.query_ratings, mask)[has_query].mean()
    err = (pred - val_batch.query_ratings).abs() * mask
    mae = (err.sum(-1) / mask.sum(-1).clamp_min(1))[has_query].mean()
    finite = bool(torch.isfinite(pred).all())
    return {"inner_lr": float(lr), "val_mse": float(mse) if finite else math.inf,
            "val_mae": float(mae) if finite else math.inf}


@dataclass(frozen=True)
class Bracket:
    """What :func:`bracket_search` returns.

    Attributes
    ----------
    best : float
        The rate with the lowest score (ties to the smaller rate).
    scores : dict of float to float
        Every rate tried and its score (non-finite scores as ``inf``).
    edge : {"", "low", "high"}
        ``"low"`` or ``"high"`` when ``best`` is still the smallest or largest rate tried
        after extending: the rates tried do not bracket the optimum.
    extended : int
        Rates tried beyond the grid given.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    best: float
    scores: dict[float, float]
    edge: str
    extended: int


def bracket_search(score: Callable[[float], float], grid: Sequence[float],
                   max_extend: int = 2) -> Bracket:
    """The protocol's one rule for choosing a rate: score every rate of ``grid`` (lower is
    better, ties to the smaller rate, a non-finite score counts as ``inf``); while the best
    is the smallest or largest rate tried, extend on that side by the ratio of the two
    outermost rates, up to ``max_extend`` times per side.

    Used by :func:`tune_rate_bracketed` (validation MSE) and by the choice model's tuning
    (:mod:`toyrec_helpers.choice`, validation NDCG@10, negated).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    rates = sorted({float(g) for g in grid})
    if len(rates) < 2 or rates[0] <= 0:
        raise ValueError(f"argument 'grid': expected at least two positive rates, got {grid!r}")

    def safe(lr: float) -> float:
        value = float(score(lr))
        return value if math.isfinite(value) else math.inf

    scores = {lr: safe(lr) for lr in rates}
    extended = {"low": 0, "high": 0}
    while True:
        tried = sorted(scores)
        best = min(tried, key=lambda lr: (scores[lr], lr))
        side = "low" if best == tried[0] else "high" if best == tried[-1] else ""
        if not side or extended[side] >= max_extend:
            return Bracket(best, scores, side, sum(extended.values()))
        lr = (tried[0] * tried[0] / tried[1] if side == "low"
              else tried[-1] * tried[-1] / tried[-2])
        scores[lr] = safe(lr)
        extended[side] += 1


def tune_rate_bracketed(
    make: Callable[[float], Recommender],
    val_batch: EpisodeBatch,
    grid: Sequence[float] = BRACKETED_LR_GRID,
    what: str = "inner learning rate",
    unadapted: Recommender | None = None,
    max_extend: int = 2,
) -> TuneResult:
    """:func:`tune_rate` with a bracket check: the protocol's rule for every adapted method.

    The rates of ``grid`` are scored as by :func:`tune_rate` (lowest mean validation
    query MSE wins, ties to the smaller rate, diverging rates score ``inf``). When the
    best rate is the smallest or the largest tried, the grid is extended on that side by
    the ratio of its two outermost rates, up to ``max_extend`` times per side; if the best
    rate is still at an edge, :attr:`TuneResult.edge` says which. With ``unadapted``
    (the same model without adaptation), :attr:`TuneResult.worse_than_unadapted` says
    whether adapting at the best rate is worse on validation than not adapting.

    Parameters
    ----------
    make, val_batch, what
        As for :func:`tune_rate`.
    grid : sequence of float
        Rates to try (at least two, sorted or not). Default :data:`BRACKETED_LR_GRID`.
    unadapted : Recommender, optional
        The method without adaptation.
    max_extend : int
        Most extra rates per side.

    Returns
    -------
    TuneResult

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    has_query = val_batch.query_mask.sum(-1) > 0
    if not bool(has_query.any()):
        raise ValueError("argument 'val_batch': no task has a query rating")
    rows: dict[float, dict[str, float]] = {}

    def score(lr: float) -> float:
        rows[lr] = _rate_row(make(lr), lr, val_batch, has_query)
        return rows[lr]["val_mse"]

    search = bracket_search(score, grid, max_extend)
    best = search.best
    if not math.isfinite(rows[best]["val_mse"]):
        raise FloatingPointError(f"every {what} in {tuple(sorted(rows))} diverged")
    base = math.nan if unadapted is None else _rate_row(unadapted, 0.0, val_batch,
                                                         has_query)["val_mse"]
    return TuneResult(best=best, table=[rows[lr] for lr in sorted(rows)], edge=search.edge,
                      extended=search.extended, unadapted_mse=base)
