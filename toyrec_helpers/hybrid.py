"""The hybrid recommender: what an item *is* (its identity) next to what it *looks like*
(its features), and a small per-shopper part that adaptation changes.

A rating is predicted as

.. math::

    \\hat r_{ui} = f_\\theta(x_u, x_i) + p_i + w_i\\,(b_i + e_i^\\top t) + \\beta,
    \\qquad w_i = \\frac{n_i}{n_i + \\lambda},

* :math:`f_\\theta` is the feature model of chapter 3
  (:class:`~toyrec_helpers.models.FeatureRecommender`, shopper and item features through an
  MLP; with no feature column at all it is one learned constant);
* :math:`p_i` is an optional fixed prior (0 by default; with ``fit_hybrid(...,
  residual=True)`` the shrunk item mean of ``popularity`` minus the mean rating, so that
  the learned identity is a residual over the item mean);
* :math:`b_i` (a bias) and :math:`e_i \\in \\mathbb{R}^d` (an embedding) are the item's
  identity, learned from the training shoppers' ratings;
* :math:`n_i` is the number of training ratings of item :math:`i` and :math:`\\lambda` the
  shrinkage (default 5): an item rated rarely rests mostly on its features, and an item
  nobody rated (a new item) on its features alone (:math:`w_i = 0`);
* :math:`\\beta` (a bias) and :math:`t \\in \\mathbb{R}^d` (a taste vector) are the
  *shopper part*: one shared starting point, changed per shopper by adaptation.

Which parameters adapt is a choice. ``adapt="head"`` (:attr:`HybridRecommender.
decision_prefixes` is ``("shopper.",)``) changes only :math:`(\\beta, t)`: a few gradient
steps of a linear model on the K support ratings, which is matrix-factorisation "fold-in";
meta-learning the starting point and the item side makes it fold-in made meta.
``adapt="all"`` changes everything, as MAML does with the feature model. Both are
registered (:mod:`toyrec_helpers.evaluate.methods_hybrid`), so the ablation is a line of
the results table.

Pretraining (:func:`fit_hybrid`) is matrix factorisation plus features: during supervised
training each training shopper has their own bias and taste vector (a table kept outside
the model); afterwards the shared starting point :math:`(\\beta, t)` is the mean shopper.
The item embeddings have thus learned directions along which shoppers differ. Optional
early stopping on meta-validation shoppers (served as new shoppers) picks the epoch, and
``shopper_features=False`` leaves the shopper features out of :math:`f_\\theta` (where a
few coarse attributes nearly identify each training shopper, the MLP memorises them; the
registered methods choose on meta-validation,
:func:`~toyrec_helpers.evaluate.methods_hybrid.hybrid_fit`).

Serving (:class:`HybridServer`): with ``adapt="head"`` nothing on the item side changes
per shopper, so the item half of the MLP's first layer, the shrink weights and the
embeddings are computed once; a new shopper costs one pass of the remaining MLP layers
over the catalogue and a few steps of a ``d + 1``-parameter linear model.

Sparse adaptation (:mod:`toyrec_helpers.accel`) does not apply: it rewrites models
described by one :class:`~toyrec_helpers.models.InputPlan` (input vector -> head), and the
hybrid is a sum of three parts; its cheap path is :class:`HybridServer`.

Introduced in chapter 7 (book/07_real_ratings.ipynb); the model is previewed in chapter 3
(book/03b_honest_baselines.ipynb).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from toyrec_helpers.baselines import FittedBaseline
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.models import FeatureRecommender, Lookup, lookup_index, pool_lookup
from toyrec_helpers.recommenders import FixedModelRecommender, ratings_of
from toyrec_helpers.training import train_supervised

__all__ = ["PRIOR_SHRINKAGE", "HybridRecommender", "HybridServer", "fit_hybrid",
           "item_counts", "without_columns"]


def without_columns(features: EncodedFeatures) -> EncodedFeatures:
    """The same table (same number of rows) with no feature column at all.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    return dataclasses.replace(
        features, categorical=features.categorical[:, :0], categorical_names=(),
        categorical_sizes=(), multi=(), multi_names=(), multi_sizes=(),
        numeric=features.numeric[:, :0], numeric_names=())


def item_counts(interactions: pd.DataFrame, users: np.ndarray | Sequence[int],
                n_items: int) -> np.ndarray:
    """Number of ratings of each item by ``users`` (zeros included), int64 ``[n_items]``.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    items = interactions.loc[interactions["user"].isin(np.asarray(users)), "item"]
    return np.bincount(items.to_numpy(dtype=np.int64), minlength=int(n_items))


class _Shopper(nn.Module):
    """The per-shopper part: a bias and a taste vector (one shared starting point)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.taste = nn.Parameter(torch.zeros(dim))


class HybridRecommender(nn.Module):
    """Feature model + shrunk item identity + an adaptable shopper part (module docstring).

    Parameters
    ----------
    user_features, item_features : EncodedFeatures
        As for :class:`~toyrec_helpers.models.FeatureRecommender` (may have no columns).
    counts : array of int
        ``[n_items]`` training ratings per item (:func:`item_counts`).
    embedding_dim, hidden, rating_mean
        The feature model's settings.
    identity_dim : int
        Size :math:`d` of the item embeddings and of the taste vector.
    shrinkage : float
        :math:`\\lambda` of the shrink weights :math:`w_i = n_i / (n_i + \\lambda)`.
    prior : array of float, optional
        ``[n_items]`` fixed offsets :math:`p_i` added to every prediction (not learned;
        default 0). :func:`fit_hybrid` passes the shrunk item mean minus the mean rating,
        so that the learned identity is a residual over the item mean.

    Attributes
    ----------
    features : FeatureRecommender
        :math:`f_\\theta`; parameters ``features.*``.
    item_bias, item_embedding : torch.nn.Embedding
        :math:`b_i` (starts at 0) and :math:`e_i`; parameters ``item_bias.weight``,
        ``item_embedding.weight``.
    shopper : torch.nn.Module
        :math:`\\beta` (``shopper.bias``) and :math:`t` (``shopper.taste``): the ``"head"``
        group that ``adapt="head"`` changes.
    item_weight : torch.Tensor
        Buffer :math:`w_i` (not in the ``state_dict``: it comes from the data).
    item_prior : torch.Tensor
        Buffer :math:`p_i` (not in the ``state_dict``; zeros without ``prior``).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """

    decision_prefixes: ClassVar[tuple[str, ...]] = ("shopper.",)

    def __init__(
        self,
        user_features: EncodedFeatures,
        item_features: EncodedFeatures,
        counts: np.ndarray | Sequence[int],
        embedding_dim: int = 8,
        hidden: tuple[int, ...] = (64, 32),
        rating_mean: float = 3.0,
        identity_dim: int = 8,
        shrinkage: float = 5.0,
        prior: np.ndarray | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
        if counts.shape != (item_features.n,) or bool((counts < 0).any()):
            raise ValueError(f"argument 'counts': expected {item_features.n} non-negative "
                             f"counts, got shape {tuple(counts.shape)}")
        if int(identity_dim) < 1:
            raise ValueError(f"argument 'identity_dim': expected >= 1, got {identity_dim}")
        if not float(shrinkage) >= 0:
            raise ValueError(f"argument 'shrinkage': expected >= 0, got {shrinkage}")
        self.features = FeatureRecommender(user_features, item_features, embedding_dim,
                                           hidden, rating_mean)
        self.n_users, self.n_items = self.features.n_users, self.features.n_items
        self.identity_dim, self.shrinkage = int(identity_dim), float(shrinkage)
        self.item_bias = nn.Embedding(self.n_items, 1)
        self.item_embedding = nn.Embedding(self.n_items, self.identity_dim)
        with torch.no_grad():
            self.item_bias.weight.zero_()
            self.item_embedding.weight.normal_(0.0, 0.1)
        self.shopper = _Shopper(self.identity_dim)
        weight = counts / (counts + self.shrinkage) if self.shrinkage > 0 else (counts > 0)
        self.register_buffer("item_weight", weight.float(), persistent=False)
        offsets = torch.zeros(self.n_items) if prior is None else torch.as_tensor(
            np.asarray(prior, dtype=np.float32))
        if offsets.shape != (self.n_items,) or not bool(torch.isfinite(offsets).all()):
            raise ValueError(f"argument 'prior': expected {self.n_items} finite offsets, got "
                             f"shape {tuple(offsets.shape)}")
        self.register_buffer("item_prior", offsets.float(), persistent=False)
        self._config = {"class": type(self).__name__, "identity_dim": self.identity_dim,
                        "shrinkage": self.shrinkage, "features": self.features.model_config}

    @property
    def model_config(self) -> dict[str, Any]:
        """JSON-ready description of the architecture."""
        return dict(self._config)

    def identity(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shrunk identity of ``items``: :math:`w_i b_i` ``[...]`` and
        :math:`w_i e_i` ``[..., d]``."""
        w = self.item_weight[items]
        return w * self.item_bias(items).squeeze(-1), w.unsqueeze(-1) * self.item_embedding(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of ``items`` by ``users`` (broadcast, as the feature model)."""
        users, items = torch.broadcast_tensors(users, items)
        bias, vectors = self.identity(items)
        return (self.features(users, items) + self.item_prior[items] + bias
                + vectors @ self.shopper.taste + self.shopper.bias)


class _Pretraining(nn.Module):
    """The hybrid plus one bias and taste offset per shopper: matrix factorisation with
    features, used only by :func:`fit_hybrid`. The offsets of shoppers outside ``rows``
    (validation shoppers) start at zero and stay there (they get no gradient), so the
    model predicts them as a shopper never seen."""

    def __init__(self, model: HybridRecommender, rows: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.user_bias = nn.Embedding(model.n_users, 1)
        self.user_taste = nn.Embedding(model.n_users, model.identity_dim)
        with torch.no_grad():
            self.user_bias.weight.zero_()
            self.user_taste.weight.zero_()
            self.user_taste.weight[rows] = torch.randn(len(rows), model.identity_dim) * 0.1

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        _, vectors = self.model.identity(items)
        own = self.user_bias(users).squeeze(-1) + (vectors * self.user_taste(users)).sum(-1)
        return self.model(users, items) + own


PRIOR_SHRINKAGE: float = 10.0
"""Shrinkage of the item-mean prior of :func:`fit_hybrid` (``residual=True``): that of
``popularity`` (:class:`~toyrec_helpers.recommenders.PopularityRecommender`)."""


def fit_hybrid(
    user_features: EncodedFeatures, item_features: EncodedFeatures, interactions: pd.DataFrame,
    train_users: np.ndarray | Sequence[int], *, embedding_dim: int = 8,
    hidden: tuple[int, ...] = (64, 32), identity_dim: int = 8, shrinkage: float = 5.0,
    epochs: int = 6, lr: float = 3e-3, batch_size: int = 512, weight_decay: float = 0.0,
    seed: int = 0, name: str = "global_hybrid", residual: bool = False,
    val_users: np.ndarray | Sequence[int] | None = None,
    val_interactions: pd.DataFrame | None = None, patience: int | None = None,
    shopper_features: bool = True,
) -> FittedBaseline:
    """Pretrain the hybrid on the training shoppers' ratings (the hybrid "global" model).

    Two starting points of the item side. ``residual=False``: the item biases start at the
    items' mean training ratings minus the overall mean, so that before training
    :math:`w_i b_i` is close to the shrunk item mean of ``popularity``, and training may
    move them anywhere. ``residual=True``: the shrunk item mean of ``popularity`` (minus
    the mean rating; shrinkage :data:`PRIOR_SHRINKAGE`) is a fixed prior :math:`p_i`
    (``prior`` of :class:`HybridRecommender`), the item biases start at 0 and learn only
    what the item mean misses: before training the model *is* the item mean (plus the
    feature model's small initial output), which it can only improve on the training data.

    Training is minibatch Adam on the squared error
    (:func:`~toyrec_helpers.training.train_supervised`, the feature model's settings), with
    a bias and a taste vector per training shopper; the model's shared shopper part is
    then moved to the mean shopper (shared part plus the mean of the per-shopper offsets),
    which is what a shopper never seen gets before adapting.

    With ``val_users`` (meta-validation shoppers, whose ratings are in ``val_interactions``,
    default ``interactions``) the validation MSE of the model *as it serves a new shopper*
    (their offsets stay 0) is measured after every epoch and the best epoch is kept;
    ``patience`` stops training after that many epochs without improvement.

    Parameters
    ----------
    user_features, item_features, interactions, train_users
        As for :func:`~toyrec_helpers.baselines.fit_global`.
    embedding_dim, hidden, identity_dim, shrinkage
        Model size (:class:`HybridRecommender`).
    epochs, lr, batch_size, weight_decay, seed
        Training settings.
    name : str
        Label of the recommender.
    residual : bool
        Learn the item identity as a residual over the fixed shrunk item mean (above).
    val_users, val_interactions, patience
        Optional early stopping on meta-validation shoppers (above).
    shopper_features : bool
        ``False``: the feature model sees no shopper feature (:func:`without_columns`),
        only the items'. Where a few coarse shopper attributes nearly identify each
        training shopper (MovieLens: age band, gender, occupation, zip digit), the MLP
        memorises the training shoppers through them and serves new ones worse; which
        choice is better is a model-selection question for the meta-validation shoppers
        (:func:`~toyrec_helpers.evaluate.methods_hybrid.hybrid_fit` asks it).

    Returns
    -------
    FittedBaseline
        ``recommender`` is a :class:`~toyrec_helpers.recommenders.FixedModelRecommender`.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    start = time.perf_counter()
    if not shopper_features:
        user_features = without_columns(user_features)
    users, items, ratings = ratings_of(interactions, train_users)
    counts = item_counts(interactions, train_users, item_features.n)
    mu = float(ratings.mean())
    sums = np.bincount(items, weights=ratings, minlength=item_features.n)
    prior = None
    if residual:
        prior = (sums + PRIOR_SHRINKAGE * mu) / (counts + PRIOR_SHRINKAGE) - mu
    rows = torch.as_tensor(np.unique(np.asarray(train_users)), dtype=torch.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = HybridRecommender(user_features, item_features, counts, embedding_dim, hidden,
                                  mu, identity_dim, shrinkage, prior=prior)
        wrapper = _Pretraining(model, rows)
    if not residual:
        with torch.no_grad():  # start from the item means: w_i b_i near the shrunk item mean
            means = np.where(counts > 0, sums / np.maximum(counts, 1) - mu, 0.0)
            model.item_bias.weight.copy_(torch.as_tensor(means, dtype=torch.float32)[:, None])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    val = None
    if val_users is not None:
        val = ratings_of(interactions if val_interactions is None else val_interactions,
                         val_users)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # training draws from this seed alone
        result = train_supervised(wrapper, users, items, ratings, epochs=epochs, lr=lr,
                                  batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                                  val=val, patience=patience if val is not None else None)
    wrapper.load_state_dict(result.params)
    with torch.no_grad():
        model.shopper.bias.add_(wrapper.user_bias.weight[rows].mean())
        model.shopper.taste.add_(wrapper.user_taste.weight[rows].mean(0))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return FittedBaseline(recommender=FixedModelRecommender(model, params, name=name),
                          model=model, params=params, initial_params=initial,
                          training=result, seconds=time.perf_counter() - start)


class HybridServer:
    """Serve new shoppers of a hybrid model adapted with ``adapt="head"``, cheaply.

    The item side (the item half of the first MLP layer, :math:`p_i + w_i b_i`,
    :math:`w_i e_i`)
    is computed once at construction, and a shopper's unadapted scores once per shopper
    (:meth:`profile`: one pass of the MLP over the catalogue, which depends on the
    shopper's features but not on their ratings). :meth:`recommend` then adapts the
    shopper part
    :math:`(\\beta, t)` by ``steps`` plain gradient steps on the support ratings' mean
    squared error, exactly as :func:`~toyrec_helpers.adaptation.adapt` does with
    ``adapt="head"`` (closed-form gradients of a linear model), and scores the catalogue.

    Parameters
    ----------
    model : HybridRecommender
    params : dict of str to torch.Tensor
        Its parameters (e.g. meta-learned).
    steps : int
        Inner steps.
    lr : float or dict
        Inner rate, or learned rates ``{"shopper.bias": r, "shopper.taste": r}``
        (Meta-SGD; scalars or the parameters' shapes).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """

    def __init__(self, model: HybridRecommender, params: Mapping[str, torch.Tensor],
                 steps: int, lr: float | Mapping[str, torch.Tensor]) -> None:
        if not isinstance(model, HybridRecommender):
            raise TypeError(f"argument 'model': expected HybridRecommender, got "
                            f"{type(model).__name__}")
        self.model, self.steps = model, int(steps)
        self.params = {n: t.detach() for n, t in params.items()}
        if isinstance(lr, Mapping):
            self.lr_bias = lr["shopper.bias"].detach()
            self.lr_taste = lr["shopper.taste"].detach()
        else:
            self.lr_bias = self.lr_taste = float(lr)
        self.keep = 1024
        self._profiles: dict[int, torch.Tensor] = {}
        self._plan = model.features.input_plan()
        self._head = {n[len("features."):]: t for n, t in self.params.items()
                      if n.startswith("features.mlp.")}
        with torch.no_grad():
            items = self._parts("item", torch.arange(model.n_items))
            w0 = self._head["mlp.0.weight"]
            self._user_width = w0.shape[1] - items.shape[1]
            self._item_pre = items @ w0[:, self._user_width:].T  # [N, h1], once
            self.item_bias = (model.item_prior
                              + model.item_weight * self.params["item_bias.weight"].squeeze(-1))
            self.item_vectors = (model.item_weight.unsqueeze(-1)
                                 * self.params["item_embedding.weight"])

    def _parts(self, table: str, rows: torch.Tensor) -> torch.Tensor:
        """The first layer's input pieces of one table (``[len(rows), width]``), with the
        served parameters."""
        f, out = self.model.features, []
        for part in self._plan.parts:
            if part.table != table:
                continue
            if isinstance(part, Lookup):
                index = lookup_index(f, part, rows)
                weight = self.params[f"features.{part.param}"]
                out.append(pool_lookup(nn.functional.embedding(index, weight), index, part))
            else:
                out.append(getattr(f, part.buffer)[rows].float())
        return torch.cat(out, -1) if out else torch.zeros(len(rows), 0)

    @torch.no_grad()
    def profile(self, user: int) -> torch.Tensor:
        """The shopper's scores before adaptation, ``f(x_u, x_i) + p_i + w_i b_i``
        ``[n_items]``:
        they depend on the shopper's features only, so they are computed once per shopper
        (at sign-up, before any rating) and kept (the last :attr:`keep` shoppers)."""
        user = int(user)
        if user not in self._profiles:
            user_part = self._parts("user", torch.tensor([user]))
            w0, b0 = self._head["mlp.0.weight"], self._head["mlp.0.bias"]
            x = self._item_pre + (user_part @ w0[:, : self._user_width].T + b0)
            if len(self._profiles) >= self.keep:
                self._profiles.pop(next(iter(self._profiles)))
            self._profiles[user] = _rest_of_head(self._head, x) + self.item_bias
        return self._profiles[user]

    @torch.no_grad()
    def recommend(self, user: int, support_items: torch.Tensor | Sequence[int],
                  support_ratings: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Adapt to one shopper (row ``user`` of the user table gives their features) and
        return predicted ratings of the whole catalogue, ``[n_items]``. The first call for
        a shopper computes their :meth:`profile`; later calls (each new rating) only adapt
        the shopper part and score: ``O(n_items * d)``."""
        base = self.profile(user)
        support_items = torch.as_tensor(support_items, dtype=torch.int64)
        y = torch.as_tensor(support_ratings, dtype=base.dtype)
        q, s = self.item_vectors[support_items], base[support_items]
        beta, taste = self.params["shopper.bias"], self.params["shopper.taste"]
        k = max(1, len(y))
        for _ in range(self.steps):
            err = s + q @ taste + beta - y
            beta = beta - self.lr_bias * 2.0 * err.sum() / k
            taste = taste - self.lr_taste * 2.0 * (q.T @ err) / k
        return base + self.item_vectors @ taste + beta


def _rest_of_head(head: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP after its first linear layer (pre-activations ``x``): ReLU, then the
    remaining Linear/ReLU layers; returns ``[N]``."""
    names = sorted({n.split(".")[1] for n in head}, key=int)
    if len(names) == 1:
        return x.squeeze(-1)
    for layer in names[1:]:
        x = torch.relu(x)
        x = nn.functional.linear(x, head[f"mlp.{layer}.weight"], head[f"mlp.{layer}.bias"])
    return x.squeeze(-1)

