"""The methods MAML is compared with, behind one predictor interface.

Every method is a :class:`Recommender`: it has a ``name``, says whether its scores are
ratings (``predicts_ratings``), and ``predict(batch, items)`` scores items for each user
(task) of an :class:`~toyrec_helpers.episodes.EpisodeBatch`. A method may use the user's
index (and through it the user's features) and the *support* part of the batch; it never
reads ``query_ratings`` or ``query_mask`` (the query *items* are only the default items to
score). The same interface wraps the meta-learned models (see
:class:`AdaptedModelRecommender`), so one evaluation routine serves every method.

The methods:

* :class:`PopularityRecommender`: the item's shrunk mean rating (or its rating count, for
  ranking only); the same for every user.
* :class:`FixedModelRecommender`: a trained model used as it is ("global": the feature
  model trained on the meta-training users' ratings, no adaptation).
* :class:`AdaptedModelRecommender`: a model adapted to each user by a few SGD steps on the
  support set (:func:`toyrec_helpers.meta.predict_adapted`): "finetune" from the global
  model's parameters, and MAML / FOMAML / Meta-SGD from meta-learned ones.
* :class:`ArticleRecommender`: the recipe of a widely circulated article: id embeddings,
  ordinary supervised pretraining, then a few Adam steps per new user.
* :class:`OracleRecommender`: the ToyShop answer key (the best any method could do).

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.meta import MetaConfig, predict_adapted
from toyrec_helpers.models import FeatureRecommender, IdEmbeddingRecommender, masked_mse
from toyrec_helpers.training import SupervisedResult, train_supervised

__all__ = [
    "INNER_LR_GRID",
    "AdaptedModelRecommender",
    "ArticleRecommender",
    "FittedBaseline",
    "FixedModelRecommender",
    "OracleRecommender",
    "PopularityRecommender",
    "Recommender",
    "adam_adapt",
    "fit_article",
    "fit_global",
    "ratings_of",
    "resolve_items",
    "tune_inner_lr",
]

Params = dict[str, torch.Tensor]
Items = torch.Tensor | str | None

INNER_LR_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
"""Inner learning rates tried by :func:`tune_inner_lr` (the same grid for every adapted
method, fine-tuning and MAML alike, so that each gets the same tuning budget)."""


# --------------------------------------------------------------------------- interface


@runtime_checkable
class Recommender(Protocol):
    """What every method provides; the evaluation code relies on nothing else.

    Attributes
    ----------
    name : str
        Label used in tables and plots.
    predicts_ratings : bool
        Whether ``predict`` returns ratings on the rating scale. ``False`` for scores that
        only rank (popularity by count): evaluation must skip MAE and RMSE for them.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    name: str
    predicts_ratings: bool

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Scores of items for each task of ``batch``.

        Parameters
        ----------
        batch : EpisodeBatch
            Tasks to score. Only ``users``, the support fields and (for ``items=None``)
            ``query_items`` may be read; never ``query_ratings`` or ``query_mask``.
        items : None, "all" or torch.Tensor
            ``None``: each task's query items, result ``[T, Q]`` (padding positions get a
            score too; mask them). ``"all"``: every catalogue item, ``[T, n_items]``. An
            int64 tensor ``[M]`` (same items for every task) or ``[T, M]`` (per task):
            result ``[T, M]``. The semantics of
            :func:`toyrec_helpers.meta.predict_adapted`.

        Returns
        -------
        torch.Tensor
            float ``[T, M]``, no gradient.
        """
        ...


def resolve_items(batch: EpisodeBatch, items: Items, n_items: int) -> torch.Tensor:
    """The items to score for each task, as an int64 ``[T, M]`` tensor.

    Parameters
    ----------
    batch : EpisodeBatch
        The tasks.
    items : None, "all" or torch.Tensor
        As for :meth:`Recommender.predict`.
    n_items : int
        Catalogue size (indices must lie in ``0..n_items-1``).

    Returns
    -------
    torch.Tensor
        int64 ``[T, M]`` (a 1-D ``items`` is expanded, not copied).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"argument 'batch': expected EpisodeBatch (see episodes.collate), "
                        f"got {type(batch).__name__}")
    n_tasks = len(batch)
    if items is None:
        return batch.query_items
    if isinstance(items, str):
        if items != "all":
            raise ValueError(f"argument 'items': expected None, 'all' or a tensor, got {items!r}")
        return torch.arange(n_items, device=batch.users.device).expand(n_tasks, n_items)
    targets = torch.as_tensor(items, device=batch.users.device)
    if targets.dtype != torch.int64 or targets.dim() not in (1, 2):
        raise ValueError(f"argument 'items': expected int64 [M] or [T, M], got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    if targets.dim() == 2 and targets.shape[0] != n_tasks:
        raise ValueError(f"argument 'items': {targets.shape[0]} rows for {n_tasks} tasks")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_items):
        raise ValueError(f"argument 'items': indices must lie in 0..{n_items - 1}, got "
                         f"{int(targets.min())}..{int(targets.max())}")
    if targets.dim() == 1:
        targets = targets.expand(n_tasks, -1)
    return targets


def ratings_of(
    interactions: pd.DataFrame, users: np.ndarray | Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ratings of a group of users, as ``(users, items, ratings)`` arrays.

    Parameters
    ----------
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions` (columns ``user``, ``item``,
        ``rating``).
    users : array of int, optional
        User indices to keep (for example ``split.train``); ``None`` keeps every rating.

    Returns
    -------
    users, items : numpy.ndarray
        int64 indices.
    ratings : numpy.ndarray
        float32 ratings.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    missing = [c for c in ("user", "item", "rating") if c not in interactions.columns]
    if missing:
        raise ValueError(f"argument 'interactions': missing column(s) {missing}; expected "
                         "Dataset.interactions (columns 'user', 'item', 'rating')")
    frame = interactions
    if users is not None:
        frame = frame[frame["user"].isin(np.asarray(users))]
    if len(frame) == 0:
        raise ValueError("no ratings for the given users: check argument 'users'")
    return (frame["user"].to_numpy(dtype=np.int64), frame["item"].to_numpy(dtype=np.int64),
            frame["rating"].to_numpy(dtype=np.float32))


def _check_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> Params:
    """Detached parameters naming exactly the model's parameters, or a clear error."""
    expected = {n for n, _ in model.named_parameters()}
    missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or extra:
        raise KeyError(f"argument 'params' must hold exactly the parameters of "
                       f"{type(model).__name__}; missing {missing}, unexpected {extra}")
    return {n: p.detach() for n, p in params.items()}


# --------------------------------------------------------------------------- popularity


class PopularityRecommender:
    """Non-personalised baseline: every user gets the same item scores.

    ``by="mean"``: the item's mean training rating shrunk towards the global mean,
    ``(sum_u r_ui + m * mu) / (n_i + m)`` with ``n_i`` the item's number of training ratings,
    ``mu`` the global mean training rating and ``m = shrinkage`` (an item with few ratings
    stays near ``mu``; an item without any gets ``mu``).

    ``by="count"``: the item's number of training ratings. This is a ranking score, not a
    rating: ``predicts_ratings`` is ``False`` and its MAE/RMSE are meaningless, so
    evaluation must skip those metrics for it.

    Parameters
    ----------
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions`.
    train_users : array of int, optional
        Users whose ratings are used (the meta-training users); ``None`` = all.
    n_items : int
        Catalogue size.
    by : {"mean", "count"}
        Which score.
    shrinkage : float
        ``m`` above (>= 0; 0 = plain item mean). Default 10.
    name : str, optional
        Defaults to ``"popularity"`` (``by="mean"``) or ``"popularity (count)"``.

    Attributes
    ----------
    scores : torch.Tensor
        float32 ``[n_items]``, the score of each item.
    counts : torch.Tensor
        int64 ``[n_items]``, training ratings per item.
    global_mean : float
        ``mu``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        train_users: np.ndarray | Sequence[int] | None,
        n_items: int,
        *,
        by: str = "mean",
        shrinkage: float = 10.0,
        name: str | None = None,
    ) -> None:
        if by not in ("mean", "count"):
            raise ValueError(f"argument 'by': expected 'mean' or 'count', got {by!r}")
        if not (isinstance(shrinkage, (int, float)) and math.isfinite(shrinkage)
                and shrinkage >= 0):
            raise ValueError(f"argument 'shrinkage': expected a finite number >= 0, "
                             f"got {shrinkage!r}")
        _, items, ratings = ratings_of(interactions, train_users)
        if int(items.max()) >= n_items or int(items.min()) < 0:
            raise ValueError(f"argument 'n_items': interactions name item {int(items.max())}, "
                             f"outside 0..{n_items - 1}")
        r = ratings.astype(np.float64)
        counts = np.bincount(items, minlength=n_items)
        sums = np.bincount(items, weights=r, minlength=n_items)
        self.global_mean = float(r.mean())
        self.shrinkage = float(shrinkage)
        self.by = by
        self.n_items = int(n_items)
        self.counts = torch.from_numpy(counts.astype(np.int64))
        if by == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (sums + shrinkage * self.global_mean) / (counts + shrinkage)
            mean[counts + shrinkage == 0] = self.global_mean  # m = 0 and no rating
            self.scores = torch.from_numpy(mean.astype(np.float32))
        else:
            self.scores = torch.from_numpy(counts.astype(np.float32))
        self.predicts_ratings = by == "mean"
        self.name = name if name is not None else (
            "popularity" if by == "mean" else "popularity (count)")

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Item scores, the same for every task (see :meth:`Recommender.predict`)."""
        targets = resolve_items(batch, items, self.n_items)
        return self.scores.to(targets.device)[targets]


# --------------------------------------------------------------------------- models


class FixedModelRecommender:
    """A trained model used as it is, without adapting to the user's support set.

    With :class:`~toyrec_helpers.models.FeatureRecommender` trained on the meta-training
    users' ratings this is the "global" baseline: a new user is known only through their
    features.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (and the feature buffers); must have ``n_items``.
    params : dict of str to torch.Tensor
        Its parameters.
    name : str
        Label. Default ``"global"``.
    chunk_size : int
        Tasks scored at once (bounds memory with ``items="all"``).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    predicts_ratings = True

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, torch.Tensor],
        name: str = "global",
        chunk_size: int = 256,
    ) -> None:
        self.model = model
        self.params = _check_params(model, params)
        self.name = name
        self.chunk_size = int(chunk_size)

    @torch.no_grad()
    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Predicted ratings (see :meth:`Recommender.predict`)."""
        targets = resolve_items(batch, items, self.model.n_items)
        parts = []
        for lo in range(0, len(batch), self.chunk_size):
            hi = lo + self.chunk_size
            users = batch.users[lo:hi].unsqueeze(-1)
            parts.append(functional_call(self.model, self.params, (users, targets[lo:hi])))
        return torch.cat(parts, 0)


class AdaptedModelRecommender:
    """A model adapted to each user by SGD on the support set, then used to predict.

    A thin wrapper around :func:`toyrec_helpers.meta.predict_adapted`:
    ``config.inner_steps`` gradient steps of size ``config.inner_lr`` (or the learned rates
    ``inner_lrs``) on the parameters ``parameter_names(model, config.adapt)``. The same
    class serves

    * "finetune": the global model's parameters with the *same* inner loop as MAML (same
      steps, learning rate tuned on the same grid), a fair budget;
    * MAML, FOMAML and Meta-SGD: meta-learned parameters (and rates).

    Parameters
    ----------
    model : torch.nn.Module
        The architecture.
    params : dict of str to torch.Tensor
        Starting parameters of the adaptation.
    config : MetaConfig
        Inner-loop settings (``inner_steps``, ``inner_lr``, ``adapt``, ``meta_sgd``).
    inner_lrs : dict of str to torch.Tensor, optional
        Learned inner rates (Meta-SGD).
    name : str
        Label. Default ``"finetune"``.
    chunk_size : int or None
        Tasks adapted at once.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    predicts_ratings = True

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, torch.Tensor],
        config: MetaConfig,
        inner_lrs: Mapping[str, torch.Tensor] | None = None,
        name: str = "finetune",
        chunk_size: int | None = 64,
    ) -> None:
        if not isinstance(config, MetaConfig):
            raise TypeError(f"argument 'config': expected MetaConfig, got "
                            f"{type(config).__name__}")
        self.model = model
        self.params = _check_params(model, params)
        self.config = config
        self.inner_lrs = None if inner_lrs is None else {
            n: r.detach() for n, r in inner_lrs.items()}
        self.name = name
        self.chunk_size = chunk_size

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Predicted ratings after adaptation (see :meth:`Recommender.predict`)."""
        resolve_items(batch, items, self.model.n_items)  # same checks as the other methods
        return predict_adapted(self.model, self.params, batch, self.config, self.inner_lrs,
                               items=items, chunk_size=self.chunk_size)


def adam_adapt(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    users: torch.Tensor,
    support_items: torch.Tensor,
    support_ratings: torch.Tensor,
    support_mask: torch.Tensor,
    steps: int = 5,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Params:
    """Fine-tune all parameters on one task's support set with Adam, functionally.

    The update of ``torch.optim.Adam`` (no weight decay, no AMSGrad), written out so that
    it can be ``torch.func.vmap``-ed over users: with gradient ``g`` of the masked support
    MSE at step ``t = 1..steps``,
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2`` and
    ``p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``,
    starting from ``m = v = 0``. A parameter entry whose gradient stays zero (the
    embedding row of another user, say) does not move.

    Parameters
    ----------
    model : torch.nn.Module
        The model, called as ``model(users, items)``.
    params : dict of str to torch.Tensor
        Starting parameters (all of them adapt).
    users : torch.Tensor
        int64 scalar: the task's user.
    support_items, support_ratings, support_mask : torch.Tensor
        ``[S]`` support items, ratings and mask (1.0 = real, 0.0 = padding).
    steps : int
        Adam steps.
    lr : float
        Adam learning rate.
    betas : tuple of two floats
        Adam's ``(b1, b2)``.
    eps : float
        Adam's epsilon.

    Returns
    -------
    dict of str to torch.Tensor
        The fine-tuned parameters.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    b1, b2 = betas

    def support_loss(p: Params) -> torch.Tensor:
        pred = functional_call(model, p, (users, support_items))
        return masked_mse(pred, support_ratings, support_mask)

    grad = torch.func.grad(support_loss)
    p = dict(params)
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    for t in range(1, steps + 1):
        g = grad(p)
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in p}
        v = {n: b2 * v[n] + (1 - b2) * g[n] * g[n] for n in p}
        step_size = lr / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        p = {n: p[n] - step_size * m[n] / (v[n].sqrt() / root_bc2 + eps) for n in p}
    return p


class ArticleRecommender:
    """The recipe of a widely circulated article, as a baseline.

    An :class:`~toyrec_helpers.models.IdEmbeddingRecommender` (user-id and item-id
    embeddings concatenated into one linear layer) is pretrained by *ordinary supervised
    training* on all meta-training users' ratings (what the article calls
    "meta-training"; see :func:`fit_article`). For each new user, a copy of all the
    pretrained parameters is then fine-tuned with **Adam** for ``steps`` steps (default 5,
    learning rate 0.01, the article's settings) on the user's support ratings, and the
    fine-tuned copy predicts. The new user's id embedding was never trained: it still
    holds its random initialisation, so five small Adam steps start from noise. All users
    are fine-tuned at once (:func:`adam_adapt` under ``torch.func.vmap``).

    Parameters
    ----------
    model : IdEmbeddingRecommender
        The architecture.
    params : dict of str to torch.Tensor
        Pretrained parameters.
    steps : int
        Adam steps per user (0 = no fine-tuning).
    lr : float
        Adam learning rate.
    betas, eps
        Adam's other settings (``torch.optim.Adam`` defaults).
    name : str
        Label. Default ``"article"``.
    chunk_size : int or None
        Users fine-tuned at once (each holds a full copy of the parameters and of
        Adam's two moment estimates).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    predicts_ratings = True

    def __init__(
        self,
        model: IdEmbeddingRecommender,
        params: Mapping[str, torch.Tensor],
        *,
        steps: int = 5,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        name: str = "article",
        chunk_size: int | None = 64,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"argument 'steps': expected an integer >= 0, got {steps!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"argument 'lr': expected a finite number > 0, got {lr!r}")
        self.model = model
        self.params = _check_params(model, params)
        self.steps, self.lr, self.betas, self.eps = steps, float(lr), tuple(betas), float(eps)
        self.name = name
        self.chunk_size = chunk_size

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Predicted ratings after per-user Adam fine-tuning (see
        :meth:`Recommender.predict`)."""
        targets = resolve_items(batch, items, self.model.n_items)
        # One item list for every task ("all" or a 1-D tensor): do not batch it.
        shared = isinstance(items, str) or (items is not None and torch.as_tensor(items).dim() == 1)
        task_targets = targets[0] if shared else targets

        def one_task(user, s_items, s_ratings, s_mask, task_items):
            tuned = adam_adapt(self.model, self.params, user, s_items, s_ratings, s_mask,
                               self.steps, self.lr, self.betas, self.eps)
            return functional_call(self.model, tuned, (user, task_items))

        run = vmap(one_task, in_dims=(0, 0, 0, 0, None if shared else 0),
                   chunk_size=self.chunk_size)
        return run(batch.users, batch.support_items, batch.support_ratings,
                   batch.support_mask, task_targets).detach()


class OracleRecommender:
    """The answer key: each user's expected rating of each item.

    Only available for generated data (:func:`toyrec_helpers.toyshop.answer_key`); it
    shows how close to perfect a method gets (its error is the rating noise alone).

    Parameters
    ----------
    expected : numpy.ndarray
        ``[n_users, n_items]`` expected ratings.
    name : str
        Label. Default ``"oracle"``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    predicts_ratings = True

    def __init__(self, expected: np.ndarray, name: str = "oracle") -> None:
        table = torch.as_tensor(np.asarray(expected, dtype=np.float32))
        if table.dim() != 2:
            raise ValueError(f"argument 'expected': expected [n_users, n_items], got shape "
                             f"{tuple(table.shape)}")
        if not torch.isfinite(table).all():
            raise ValueError("argument 'expected': contains non-finite values")
        self.expected = table
        self.n_users, self.n_items = table.shape
        self.name = name

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Expected ratings (see :meth:`Recommender.predict`)."""
        targets = resolve_items(batch, items, self.n_items)
        if len(batch) and int(batch.users.max()) >= self.n_users:
            raise ValueError(f"batch.users: user {int(batch.users.max())} outside the answer "
                             f"key's 0..{self.n_users - 1}")
        table = self.expected.to(targets.device)
        return table[batch.users.unsqueeze(-1), targets]


# --------------------------------------------------------------------------- fitting


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
    interactions: pd.DataFrame,
    train_users: np.ndarray | Sequence[int],
    val_users: np.ndarray | Sequence[int] | None,
    seed: int,
    train_kwargs: dict[str, object],
) -> tuple[nn.Module, Params, SupervisedResult, float]:
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
    return model, initial, result, start


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
    model, initial, result, start = _fit(
        lambda mean: FeatureRecommender(user_features, item_features, embedding_dim, hidden,
                                        rating_mean=mean),
        interactions, train_users, val_users, seed,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
         "patience": patience, "progress": progress},
    )
    return FittedBaseline(
        recommender=FixedModelRecommender(model, result.params, name=name),
        model=model, params=result.params, initial_params=initial, training=result,
        seconds=time.perf_counter() - start,
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
        ``recommender`` is an :class:`ArticleRecommender`.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    model, initial, result, start = _fit(
        lambda mean: IdEmbeddingRecommender(n_users, n_items, embedding_dim, rating_mean=mean),
        interactions, train_users, val_users, seed,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": 0.0,
         "progress": progress},
    )
    recommender = ArticleRecommender(model, result.params, steps=finetune_steps,  # type: ignore[arg-type]
                                     lr=finetune_lr, name=name)
    return FittedBaseline(
        recommender=recommender, model=model, params=result.params, initial_params=initial,
        training=result, seconds=time.perf_counter() - start,
    )


def tune_inner_lr(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    val_batch: EpisodeBatch,
    config: MetaConfig,
    grid: Sequence[float] = INNER_LR_GRID,
) -> tuple[float, list[dict[str, float]]]:
    """Choose the inner learning rate of an adapted method on meta-validation episodes.

    For each rate in ``grid``, every validation user is adapted on their support set
    (``config`` with ``inner_lr`` replaced) and scored on their query set; the rate with the
    lowest mean (over users) query MSE wins, ties going to the smaller rate. A rate whose
    predictions are not finite (divergence) gets MSE ``inf``. Fine-tuning and MAML are
    tuned with the same grid and procedure, so neither gets a larger tuning budget.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture.
    params : dict of str to torch.Tensor
        Starting parameters of the adaptation.
    val_batch : EpisodeBatch
        Meta-validation episodes.
    config : MetaConfig
        Inner-loop settings; ``inner_lr`` is what is tuned (``meta_sgd`` must be "off").
    grid : sequence of float
        Rates to try. Default :data:`INNER_LR_GRID`.

    Returns
    -------
    best_lr : float
        The chosen rate.
    table : list of dict
        One row per rate: ``inner_lr``, ``val_mse``, ``val_mae`` (means over users).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if config.meta_sgd != "off":
        raise ValueError("tune_inner_lr tunes one shared inner rate; config.meta_sgd must be "
                         f"'off', got {config.meta_sgd!r}")
    if len(grid) == 0:
        raise ValueError("argument 'grid' is empty")
    has_query = val_batch.query_mask.sum(-1) > 0
    if not bool(has_query.any()):
        raise ValueError("argument 'val_batch': no task has a query rating")
    table = []
    for lr in grid:
        recommender = AdaptedModelRecommender(
            model, params, dataclasses.replace(config, inner_lr=float(lr)))
        pred = recommender.predict(val_batch)
        mask = val_batch.query_mask
        mse = masked_mse(pred, val_batch.query_ratings, mask)[has_query].mean()
        err = (pred - val_batch.query_ratings).abs() * mask
        mae = (err.sum(-1) / mask.sum(-1).clamp_min(1))[has_query].mean()
        finite = bool(torch.isfinite(pred).all())
        table.append({"inner_lr": float(lr), "val_mse": float(mse) if finite else math.inf,
                      "val_mae": float(mae) if finite else math.inf})
    best = min(table, key=lambda row: (row["val_mse"], row["inner_lr"]))
    if not math.isfinite(best["val_mse"]):
        raise FloatingPointError(f"every inner learning rate in {tuple(grid)} diverged")
    return best["inner_lr"], table
