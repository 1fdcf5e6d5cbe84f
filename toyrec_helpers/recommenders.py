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

Training and tuning them (:func:`~toyrec_helpers.baselines.fit_global`,
:func:`~toyrec_helpers.baselines.fit_article`, :func:`~toyrec_helpers.baselines.tune_rate`)
is the job of :mod:`toyrec_helpers.baselines`, which also exports every name of this module.

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.checks import check_int, check_number, check_params
from toyrec_helpers.episodes import EpisodeBatch, Items, resolve_items
from toyrec_helpers.meta import MetaConfig, predict_adapted
from toyrec_helpers.models import IdEmbeddingRecommender, masked_mse

__all__ = [
    "AdaptedModelRecommender", "ArticleRecommender", "FixedModelRecommender", "OracleRecommender",
    "PopularityRecommender", "Recommender", "adam_adapt", "ratings_of", "resolve_items"
]

Params = dict[str, torch.Tensor]

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


def _checked(model: nn.Module, params: Mapping[str, torch.Tensor]) -> Params:
    """Detached parameters naming exactly the model's parameters, or a clear error."""
    check_params(model, params)
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

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
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
        shrinkage = check_number(shrinkage, "argument 'shrinkage'", positive=False)
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


class _ModelBased:
    """What the recommenders built on a model share: the model, its checked parameters
    (detached), a label and how many tasks to process at once."""

    predicts_ratings = True

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor], name: str,
                 chunk_size: int | None) -> None:
        self.model = model
        self.params = _checked(model, params)
        self.name = name
        self.chunk_size = chunk_size


class FixedModelRecommender(_ModelBased):
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

    def __init__(
        self,
        model: nn.Module,
        params: Mapping[str, torch.Tensor],
        name: str = "global",
        chunk_size: int = 256,
    ) -> None:
        super().__init__(model, params, name, int(chunk_size))

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


class AdaptedModelRecommender(_ModelBased):
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

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """

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
        super().__init__(model, params, name, chunk_size)
        self.config = config
        self.inner_lrs = None if inner_lrs is None else {
            n: r.detach() for n, r in inner_lrs.items()}

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Predicted ratings after adaptation (see :meth:`Recommender.predict`)."""
        resolve_items(batch, items, self.model.n_items)  # same checks as the other methods
        return predict_adapted(self.model, self.params, batch, self.config, self.inner_lrs,
                               items=items, chunk_size=self.chunk_size)


def adam_adapt(
    model: nn.Module, params: Mapping[str, torch.Tensor], users: torch.Tensor,
    support_items: torch.Tensor, support_ratings: torch.Tensor, support_mask: torch.Tensor,
    steps: int = 5, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
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

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
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


class ArticleRecommender(_ModelBased):
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

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """

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
        steps = check_int(steps, "argument 'steps'", 0)
        lr = check_number(lr, "argument 'lr'")
        super().__init__(model, params, name, chunk_size)
        self.steps, self.lr, self.betas, self.eps = steps, float(lr), tuple(betas), float(eps)

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

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
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
