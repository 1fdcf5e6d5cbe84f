"""A choice model: the probability that a shopper picks toy i next, adapted per shopper.

Ratings say how much a shopper liked what they chose; *which* toys they chose says what
they will choose next. The choice model scores the whole catalogue with a softmax,

    P(i | u) = softmax_i( b_i + v_i . (A x_u + c + t_u) ),   v_i = W z_i + e_i,

where ``b_i`` is a per-toy bias initialised at the log of the toy's purchase count (the
popularity prior), ``z_i`` the toy's encoded features, ``e_i`` its identity embedding,
``x_u`` the shopper's encoded features, and ``t_u`` a *taste vector*: the one part that is
adapted per shopper, from the fact that the K support toys were chosen (whatever their
ratings), by a few gradient steps on their negative log-likelihood. Its starting point
``c`` is shared.

* :func:`train_choice` fits every parameter on the meta-train shoppers' purchases
  (softmax cross-entropy over the catalogue, early stopping on meta-validation): the
  unadapted model ``choice_global``.
* :func:`adapt_taste` is the inner loop; :class:`ChoiceRecommender` adapts each new
  shopper's taste and returns ``log P(choose i)`` for the catalogue (``choice_finetune``
  from the global parameters, ``choice_maml`` from meta-learned ones).
* :func:`meta_train_choice` is MAML (second or first order) on episodes resampled every
  epoch, either shaped like the protocol's test (``episodes="first"``: support = a
  shopper's first K purchases, K drawn from a range, query = purchases after the first
  ``cut``, the ones the test asks for) or windows (``episodes="window"``: K consecutive
  purchases from a random place, the rest as query).
* :class:`ChoiceValidation` (:func:`choice_validation`) holds meta-validation episodes
  shaped like the protocol's test: each meta-validation shopper's first K purchases as
  support for every K of the protocol, the purchases after the first ``max(ks)`` as
  query, scored by full-catalogue NDCG@10 as the test is.
* :func:`tune_choice_lr` picks the inner rate on meta-validation from a bracketed grid
  (widened when the best rate sits at an edge; the grid reaches rates small enough that
  "hardly adapt" is a candidate): by NDCG@10 with a :class:`ChoiceValidation` (what the
  protocol's choice methods do), by query negative log-likelihood with a plain
  ``EpisodeBatch``. :func:`tune_meta_choice` applies the same rule to a meta-learned
  model: it meta-trains at every rate of the grid and keeps the best on meta-validation.
  Every selection (the global model's epoch, the inner rate, the meta-training epoch)
  uses the same meta-validation score.

Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from toyrec_helpers.baselines import bracket_search
from toyrec_helpers.checks import check_int, check_number
from toyrec_helpers.episodes import (
    Episode,
    EpisodeBatch,
    Items,
    collate,
    make_episodes,
    resolve_items,
)
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.metrics import catalogue_masks, catalogue_ndcg_at_k

if TYPE_CHECKING:
    from toyrec_helpers.evaluate.protocol import EvalData

__all__ = [
    "CHOICE_LR_GRID", "ChoiceModel", "ChoiceRecommender", "ChoiceValidation", "MetaChoiceResult",
    "adapt_taste", "choice_nll", "choice_validation", "dense_features", "meta_train_choice",
    "new_shopper_log_probs", "purchase_sequences", "train_choice", "tune_choice_lr",
    "tune_meta_choice"
]

CHOICE_LR_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inner rates tried for the taste vector (widened at an edge by :func:`tune_choice_lr`)."""

Params = dict[str, torch.Tensor]


def dense_features(features: EncodedFeatures) -> torch.Tensor:
    """One float matrix ``[n, F]`` from encoded features: one-hot categorical columns
    (index 0, unseen, dropped), mean-pooled multi-hot columns, standardised numerics.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    n = features.categorical.shape[0] if features.categorical.numel() else (
        features.numeric.shape[0])
    blocks = []
    for j, size in enumerate(features.categorical_sizes):
        hot = torch.zeros(n, size)
        hot[torch.arange(n), features.categorical[:, j]] = 1.0
        blocks.append(hot[:, 1:])
    for values, size in zip(features.multi, features.multi_sizes, strict=True):
        hot = torch.zeros(n, size)
        hot.scatter_add_(1, values, (values > 0).float())
        hot = hot[:, 1:]
        blocks.append(hot / hot.sum(1, keepdim=True).clamp_min(1.0))
    if features.numeric.numel():
        blocks.append(features.numeric.float())
    if not blocks:
        return torch.zeros(n, 1)
    return torch.cat(blocks, dim=1)


class ChoiceModel(nn.Module):
    """The catalogue softmax ``b_i + v_i . (A x_u + c + t)`` (see the module docstring).

    Parameters
    ----------
    item_x, user_x : torch.Tensor
        ``[n_items, F]`` and ``[n_users, G]`` dense features (:func:`dense_features`).
    log_popularity : torch.Tensor
        ``[n_items]``: the initial toy bias (log purchase counts).
    dim : int
        Size of the taste space.
    seed : int
        Initialisation seed.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    def __init__(self, item_x: torch.Tensor, user_x: torch.Tensor,
                 log_popularity: torch.Tensor, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        dim = check_int(dim, "argument 'dim'", 1)
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("item_x", item_x.float())
        self.register_buffer("user_x", user_x.float())
        self.n_items, self.n_users, self.dim = item_x.shape[0], user_x.shape[0], dim
        lp = log_popularity.float()
        self.bias = nn.Parameter(lp - lp.mean())
        self.item_w = nn.Parameter(torch.randn(item_x.shape[1], dim, generator=gen) * 0.1)
        self.item_emb = nn.Parameter(torch.randn(self.n_items, dim, generator=gen) * 0.01)
        self.user_w = nn.Parameter(torch.randn(user_x.shape[1], dim, generator=gen) * 0.1)
        self.taste = nn.Parameter(torch.zeros(dim))
        self.taste_mean = nn.Parameter(torch.zeros(dim))
        self.taste_scale = nn.Parameter(torch.eye(dim))

    def item_vectors(self, params: Params) -> torch.Tensor:
        """``v`` ``[n_items, dim]``."""
        return self.item_x @ params["item_w"] + params["item_emb"]

    def user_vectors(self, params: Params, users: torch.Tensor) -> torch.Tensor:
        """``A x_u`` ``[T, dim]`` (without the taste vector)."""
        return self.user_x[users] @ params["user_w"]

    def logits(self, params: Params, users: torch.Tensor, taste: torch.Tensor) -> torch.Tensor:
        """Catalogue logits ``[T, n_items]`` for per-task taste coordinates ``u``
        ``[T, dim]``: the taste vector is ``t = m + S u`` (``m = taste_mean``,
        ``S = taste_scale``)."""
        q = (self.user_vectors(params, users) + params["taste_mean"]
             + taste @ params["taste_scale"].T)
        return params["bias"] + q @ self.item_vectors(params).T

    def params(self) -> Params:
        """The parameters as a dict of tensors (detached copies)."""
        return {n: p.detach().clone() for n, p in self.named_parameters()}


def choice_nll(logits: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task mean negative log-likelihood of the chosen ``items`` ``[T, L]`` (``mask``
    marks real entries) under the catalogue softmax; ``exclude`` ``[T, n_items]`` (bool)
    removes toys from the catalogue first (e.g. the support toys from the query's).

    Returns ``[T]`` (0 for a task without items).

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    if exclude is not None:
        logits = logits.masked_fill(exclude, -1e9)
    logp = torch.log_softmax(logits, dim=1).gather(1, items)
    return -(logp * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def adapt_taste(model: ChoiceModel, params: Params, users: torch.Tensor, items: torch.Tensor,
                mask: torch.Tensor, steps: int, lr: float, create_graph: bool = False
                ) -> torch.Tensor:
    """The inner loop: ``steps`` gradient steps on each task's taste vector, from
    ``params["taste"]``, on the mean negative log-likelihood of its chosen ``items``.

    With ``create_graph=True`` the result is differentiable in ``params`` through the
    steps (second-order MAML); otherwise it is detached from the steps' gradients
    (first order, and prediction).

    Returns
    -------
    torch.Tensor
        ``[T, dim]`` adapted taste vectors.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    n_tasks = users.shape[0]
    taste = params["taste"].expand(n_tasks, -1)
    if steps == 0:
        return taste
    with torch.enable_grad():
        for _ in range(steps):
            if not taste.requires_grad:
                taste = taste.detach().requires_grad_(True)
            loss = choice_nll(model.logits(params, users, taste), items, mask).sum()
            (grad,) = torch.autograd.grad(loss, taste, create_graph=create_graph)
            taste = taste - lr * grad
            if not create_graph:
                taste = taste.detach() + (params["taste"] - params["taste"].detach())
    return taste


class ChoiceRecommender:
    """``log P(choose i)`` over the catalogue after adapting each shopper's taste on the
    K support toys (``steps = 0``: the unadapted model). A ranking, not ratings.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    predicts_ratings = False

    def __init__(self, model: ChoiceModel, params: Params, steps: int, lr: float,
                 name: str = "choice") -> None:
        self.model, self.params = model, {n: p.detach() for n, p in params.items()}
        self.steps = check_int(steps, "argument 'steps'", 0)
        self.lr = check_number(lr, "argument 'lr'", positive=False)
        self.name = name

    def log_probs(self, batch: EpisodeBatch) -> torch.Tensor:
        """``log P(choose i)`` ``[T, n_items]`` for each task of ``batch``."""
        taste = adapt_taste(self.model, self.params, batch.users, batch.support_items,
                            batch.support_mask, self.steps, self.lr)
        with torch.no_grad():
            return torch.log_softmax(self.model.logits(self.params, batch.users, taste.detach()),
                                     dim=1)

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """``log P(choose item)`` (see :meth:`toyrec_helpers.recommenders.Recommender.predict`)."""
        targets = resolve_items(batch, items, self.model.n_items)
        return self.log_probs(batch).gather(1, targets)


def new_shopper_log_probs(model: ChoiceModel, params: Params, user_x: torch.Tensor,
                          chosen: Sequence[int], steps: int, lr: float) -> np.ndarray:
    """``log P(choose i)`` over the catalogue for a shopper who is not in the model's user
    table, from their dense features ``user_x`` (``[G]``, as :func:`dense_features` makes
    them) and the toys they chose (``steps`` inner steps at rate ``lr``; none chosen: the
    unadapted model). float64 ``[n_items]``.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    demo = copy.deepcopy(model)
    demo.user_x = torch.as_tensor(user_x, dtype=torch.float32).reshape(1, -1)
    chosen = [int(i) for i in chosen]
    items = torch.tensor([chosen or [0]], dtype=torch.int64)
    mask = torch.tensor([[1.0] * len(chosen) or [0.0]])
    users = torch.zeros(1, dtype=torch.int64)
    taste = adapt_taste(demo, params, users, items, mask, steps if chosen else 0, lr)
    with torch.no_grad():
        logits = demo.logits(params, users, taste.detach())
    return torch.log_softmax(logits, dim=1)[0].double().numpy()


def purchase_sequences(interactions: pd.DataFrame, users: np.ndarray) -> list[np.ndarray]:
    """Each user's purchased items in time order (``Dataset.interactions`` is sorted by
    user, then time), int64.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    frame = interactions[interactions["user"].isin(np.asarray(users))]
    groups = frame.groupby("user", sort=False)["item"]
    by_user = {int(u): g.to_numpy(dtype=np.int64, copy=True) for u, g in groups}
    return [by_user.get(int(u), np.zeros(0, dtype=np.int64)) for u in users]


@dataclass
class ChoiceValidation:
    """Meta-validation episodes shaped like the protocol's test, scored as it is.

    Attributes
    ----------
    batches : dict of int to EpisodeBatch
        One batch per shot K: support = each shopper's first K purchases, query = their
        purchases after the first ``cut`` (the same query for every K).
    relevant : torch.Tensor
        ``[T, n_items]`` bool: relevant query toys (on rated data those rated at least the
        relevance threshold; on a purchase log every query purchase).
    exclude : dict of int to torch.Tensor
        Per shot, ``[T, n_items]`` bool: toys left out of the ranking (as the protocol's
        ``catalogue_exclude`` says: the first ``cut`` purchases, or the support).
    top : int
        The cut-off of NDCG.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    batches: dict[int, EpisodeBatch]
    relevant: torch.Tensor
    exclude: dict[int, torch.Tensor]
    top: int = 10

    def ndcg(self, recommender: object) -> float:
        """Mean over the shots of the mean NDCG@``top`` over shoppers of a ranker (any
        object whose ``predict(batch, "all")`` scores the catalogue)."""
        values = []
        for k, batch in self.batches.items():
            scores = recommender.predict(batch, "all")  # type: ignore[attr-defined]
            if scores.shape != self.relevant.shape:
                raise ValueError(f"ChoiceValidation: scores for K={k} have shape "
                                 f"{tuple(scores.shape)}, expected {tuple(self.relevant.shape)}")
            v = catalogue_ndcg_at_k(scores, self.relevant, self.exclude[k], k=self.top)
            v = v[~torch.isnan(v)]
            values.append(float(v.mean()) if v.numel() else math.nan)
        return float(np.nanmean(values)) if values else math.nan

    def score(self, model: ChoiceModel, params: Params, steps: int, lr: float) -> float:
        """:meth:`ndcg` of the choice model from ``params`` adapted by ``steps`` steps at
        rate ``lr`` (``steps = 0``: unadapted)."""
        return self.ndcg(ChoiceRecommender(model, params, steps, lr))


def choice_validation(data: EvalData, top: int = 10) -> ChoiceValidation:
    """:class:`ChoiceValidation` from the protocol's data: the meta-validation shoppers'
    first ``K`` purchases for every ``K`` of ``data.config.ks`` as support, their purchases
    after the first ``max(ks)`` as query (shoppers with fewer than ``max(ks) + min_query``
    are left out), the relevance threshold and catalogue exclusion of the protocol; no
    meta-test shopper is used.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    c = data.config
    cut = max(c.ks)
    episodes = make_episodes(data.dataset.interactions, data.split.val, cut, None,
                             c.min_query, seed=c.split_seed).episodes
    if not episodes:
        raise ValueError(f"no meta-validation shopper has max(ks) + min_query = "
                         f"{cut + c.min_query} purchases")
    full = collate(episodes)
    threshold = c.relevance_threshold if data.dataset.has_ratings else -math.inf
    batches = {k: collate([Episode(e.user, e.support_items[:k], e.support_ratings[:k],
                                   e.query_items, e.query_ratings) for e in episodes])
               for k in sorted(c.ks)}
    n_items = data.dataset.n_items
    relevant, prefix = catalogue_masks(full.support_items, full.support_mask, full.query_items,
                                       full.query_ratings, full.query_mask, n_items,
                                       threshold=threshold)
    exclude = {k: prefix if c.catalogue_exclude == "first_max_k" else catalogue_masks(
        b.support_items, b.support_mask, b.query_items, b.query_ratings, b.query_mask,
        n_items)[1] for k, b in batches.items()}
    return ChoiceValidation(batches, relevant, exclude, top=top)


def _val_loss(model: ChoiceModel, params: Params, batch: EpisodeBatch | ChoiceValidation,
              steps: int, lr: float) -> float:
    """What every selection minimises: ``-NDCG@10`` with a :class:`ChoiceValidation`,
    the query negative log-likelihood with an ``EpisodeBatch``."""
    if isinstance(batch, ChoiceValidation):
        value = -batch.score(model, params, steps, lr)
        return value if math.isfinite(value) else math.inf
    taste = adapt_taste(model, params, batch.users, batch.support_items, batch.support_mask,
                        steps, lr)
    with torch.no_grad():
        exclude = torch.zeros(len(batch), model.n_items, dtype=torch.bool)
        exclude.scatter_(1, batch.support_items, batch.support_mask > 0)
        nll = choice_nll(model.logits(params, batch.users, taste.detach()), batch.query_items,
                         batch.query_mask, exclude)
    value = float(nll.mean())
    return value if math.isfinite(value) else math.inf


def train_choice(
    item_x: torch.Tensor, user_x: torch.Tensor, interactions: pd.DataFrame,
    train_users: np.ndarray, val_batch: EpisodeBatch | ChoiceValidation, *, dim: int = 16,
    epochs: int = 8,
    lr: float = 1e-2, batch_size: int = 512, weight_decay: float = 1e-5,
    taste_penalty: float = 1e-2, own_lr: float = 1e-2, select_steps: int = 5,
    select_grid: Sequence[float] = CHOICE_LR_GRID, seed: int = 0, verbose: bool = False,
) -> tuple[ChoiceModel, Params]:
    """Fit the choice model on every purchase of the meta-train shoppers (the unadapted
    ``choice_global``), keeping the epoch with the best meta-validation score after
    adaptation (``select_steps`` steps, the best rate of ``select_grid``): NDCG@10 with a
    :class:`ChoiceValidation`, the query negative log-likelihood (support toys removed
    from the catalogue) with an ``EpisodeBatch``. During training each
    meta-train shopper has their own taste coordinates (L2 penalty ``taste_penalty``);
    their mean and covariance then shape the inner loop (:func:`_with_taste_prior`).

    Parameters
    ----------
    item_x, user_x : torch.Tensor
        Dense features (:func:`dense_features`).
    interactions : pandas.DataFrame
        ``Dataset.interactions``; only rows of ``train_users`` are used.
    train_users : numpy.ndarray
        Meta-train shoppers.
    val_batch : EpisodeBatch or ChoiceValidation
        Meta-validation episodes (see above).
    dim, epochs, lr, batch_size, weight_decay, seed
        Model size and Adam training.
    taste_penalty, own_lr
        L2 penalty and Adam rate of the meta-train shoppers' own taste coordinates.
    select_steps, select_grid
        How each epoch is scored on meta-validation (inner steps, rates tried).
    verbose
        Print each epoch's score.

    Returns
    -------
    model : ChoiceModel
    params : dict of str to torch.Tensor
        The kept epoch's parameters.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    check_int(epochs, "argument 'epochs'", 1)
    rows = interactions[interactions["user"].isin(np.asarray(train_users))]
    users = torch.from_numpy(rows["user"].to_numpy(dtype=np.int64, copy=True))
    items = torch.from_numpy(rows["item"].to_numpy(dtype=np.int64, copy=True))
    counts = torch.bincount(items, minlength=item_x.shape[0]).float()
    model = ChoiceModel(item_x, user_x, torch.log(counts + 1.0), dim=dim, seed=seed)
    model.taste_scale.requires_grad_(False)  # identity while training; set from the data after
    model.taste_mean.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                           weight_decay=weight_decay)
    train = torch.as_tensor(np.unique(np.asarray(train_users)), dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    # each meta-train shopper's own taste vector t_u (a training device only: a new
    # shopper's is found by adaptation); it makes the toy vectors span the directions in
    # which shoppers' tastes differ, the directions adaptation moves in
    own = nn.Parameter(torch.zeros(user_x.shape[0], model.dim))
    opt.add_param_group({"params": [own], "weight_decay": 0.0, "lr": own_lr})
    def adapted_loss(params: Params) -> float:
        return min(_val_loss(model, params, val_batch, select_steps, r) for r in select_grid)

    best, history = (math.inf, model.params()), []
    for _ in range(epochs):
        perm = torch.randperm(len(users), generator=gen)
        for lo in range(0, len(perm), batch_size):
            idx = perm[lo:lo + batch_size]
            params = dict(model.named_parameters())
            logits = model.logits(params, users[idx], params["taste"] + own[users[idx]])
            loss = torch.nn.functional.cross_entropy(logits, items[idx])
            loss = loss + taste_penalty * (own[users[idx]] ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        candidate = _with_taste_prior(model.params(), own.detach()[train])
        value = adapted_loss(candidate)
        if verbose:
            print(f"epoch {len(history)}: adapted val NLL {value:.4f}, taste sd "
                  f"{float(own.detach()[train].std()):.3f}")
        history.append(value)
        if value < best[0]:
            best = (value, candidate)
    return model, best[1]


def _with_taste_prior(params: Params, own: torch.Tensor) -> Params:
    """Fold the meta-train shoppers' own taste vectors into the model: their mean
    becomes ``taste_mean`` and the Cholesky factor of their covariance ``taste_scale``,
    so that a step on the taste coordinates moves along the directions in which shoppers
    differ (a preconditioned, prior-shaped inner loop)."""
    out = dict(params)
    mean = own.mean(0)
    cov = torch.cov(own.T) + 1e-4 * torch.eye(own.shape[1])
    out["taste_mean"] = params["taste_mean"] + mean
    out["taste_scale"] = torch.linalg.cholesky(cov)
    out["taste"] = torch.zeros_like(params["taste"])
    return out


def _bracketed(loss: Callable[[float], float], grid: Sequence[float], max_extend: int
               ) -> tuple[float, dict[float, float]]:
    """:func:`~toyrec_helpers.baselines.bracket_search` (the protocol's one rule: lowest
    ``loss``, ties to the smaller rate, extended at an edge), failing if every rate
    diverged."""
    search = bracket_search(loss, grid, max_extend)
    if not math.isfinite(search.scores[search.best]):
        raise FloatingPointError("every inner rate of the choice model diverged")
    return search.best, search.scores


def _table(scores: dict[float, float], validation: object) -> list[dict[str, float]]:
    if isinstance(validation, ChoiceValidation):
        return [{"inner_lr": r, "val_ndcg10": -scores[r]} for r in sorted(scores)]
    return [{"inner_lr": r, "val_nll": scores[r]} for r in sorted(scores)]


def tune_choice_lr(model: ChoiceModel, params: Params,
                   val_batch: EpisodeBatch | ChoiceValidation, steps: int,
                   grid: Sequence[float] = CHOICE_LR_GRID, max_extend: int = 2
                   ) -> tuple[float, list[dict[str, float]]]:
    """The inner rate with the best meta-validation score after adapting from ``params``:
    the highest NDCG@10 with a :class:`ChoiceValidation`, the lowest query negative
    log-likelihood with an ``EpisodeBatch`` (ties to the smaller rate); when the best is
    at an edge of the grid the grid is widened on that side by its outer ratio, up to
    ``max_extend`` times.

    Returns
    -------
    best_lr : float
    table : list of dict
        ``inner_lr`` and ``val_ndcg10`` (or ``val_nll``) for every rate tried, sorted by
        rate.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    best, scores = _bracketed(lambda r: _val_loss(model, params, val_batch, steps, r), grid,
                              max_extend)
    return best, _table(scores, val_batch)


@dataclass
class MetaChoiceResult:
    """What :func:`meta_train_choice` returns.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The kept (best meta-validation) parameters.
    best_epoch : int
        0 = the starting parameters were best.
    history : list of float
        Meta-validation loss after each epoch (index 0: start): ``-NDCG@10`` with a
        :class:`ChoiceValidation`, the query negative log-likelihood with an
        ``EpisodeBatch``.
    stopped_early : bool

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    params: Params
    best_epoch: int
    history: list[float]
    stopped_early: bool


def _resampled_batch(sequences: list[np.ndarray], users: np.ndarray, k: int, q: int,
                     rng: np.random.Generator) -> EpisodeBatch:
    """One episode per shopper: K consecutive purchases from a random start (support) and
    up to ``q`` of their other purchases (query)."""
    episodes = []
    for user, seq in zip(users, sequences, strict=True):
        if len(seq) < k + 1:
            continue
        start = int(rng.integers(0, len(seq) - k + 1))
        support = seq[start:start + k]
        rest = np.concatenate([seq[:start], seq[start + k:]])
        query = rng.permutation(rest)[:q]
        episodes.append(Episode(int(user), support, np.ones(k, dtype=np.float32), query,
                                np.ones(len(query), dtype=np.float32)))
    return collate(episodes)


def _first_batch(sequences: list[np.ndarray], users: np.ndarray, k_range: tuple[int, int],
                 q: int, cut: int, n_items: int, rng: np.random.Generator
                 ) -> tuple[EpisodeBatch, torch.Tensor]:
    """One episode per shopper with more than ``cut`` purchases, shaped like the protocol's
    test: support = the first K (K uniform on ``k_range``), query = up to ``q`` of the
    purchases after the first ``cut``. Also returns the ``[T, n_items]`` mask of the first
    ``cut`` purchases (left out of the catalogue, as the test leaves them out)."""
    episodes, prefixes = [], []
    for user, seq in zip(users, sequences, strict=True):
        if len(seq) <= cut:
            continue
        k = int(rng.integers(k_range[0], k_range[1] + 1))
        query = rng.permutation(seq[cut:])[:q]
        episodes.append(Episode(int(user), seq[:k], np.ones(k, dtype=np.float32), query,
                                np.ones(len(query), dtype=np.float32)))
        prefixes.append(seq[:cut])
    if not episodes:
        raise ValueError(f"no meta-train shopper has more than cut = {cut} purchases")
    exclude = torch.zeros(len(episodes), n_items, dtype=torch.bool)
    for row, prefix in enumerate(prefixes):
        exclude[row, torch.from_numpy(prefix)] = True
    return collate(episodes), exclude


def meta_train_choice(
    model: ChoiceModel, params: Params, interactions: pd.DataFrame, train_users: np.ndarray,
    val_batch: EpisodeBatch | ChoiceValidation, *, inner_lr: float, inner_steps: int = 5,
    k: int = 5, q: int = 20, order: str = "second", meta_batch: int = 32,
    outer_lr: float = 1e-3, epochs: int = 10, patience: int = 3, seed: int = 0,
    episodes: str = "window", k_range: tuple[int, int] | None = None, cut: int | None = None,
) -> MetaChoiceResult:
    """MAML for the choice model: learn the parameters (and the taste vector's starting
    point) so that ``inner_steps`` steps on K chosen toys predict the shopper's other
    choices. Episodes are resampled every epoch (see ``episodes``); the outer loss is the
    query negative log-likelihood with the support toys (``"first"``: the first ``cut``
    purchases) removed from the catalogue. Keeps the best meta-validation epoch (after
    adaptation: NDCG@10 with a :class:`ChoiceValidation`, query negative log-likelihood
    with an ``EpisodeBatch``), stopping after ``patience`` epochs without improvement.

    Parameters
    ----------
    order : {"second", "first"}
        Second-order MAML, or first-order (FOMAML: the inner steps' gradients are not
        differentiated).
    episodes : {"window", "first"}
        ``"window"``: a support window of ``k`` consecutive purchases at a random place in
        each meta-train shopper's history, ``q`` of their other purchases as query.
        ``"first"``: shaped like the protocol's test, support = the shopper's first K
        purchases (K uniform on ``k_range``), query = ``q`` of the purchases after the
        first ``cut``.
    k_range, cut
        For ``"first"``: support sizes (default ``(k, k)``) and where the query starts
        (default the largest K).

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    if order not in ("second", "first"):
        raise ValueError(f"argument 'order': expected 'second' or 'first', got {order!r}")
    if episodes not in ("window", "first"):
        raise ValueError(f"argument 'episodes': expected 'window' or 'first', got {episodes!r}")
    k_lo, k_hi = (k, k) if k_range is None else (int(k_range[0]), int(k_range[1]))
    if not 1 <= k_lo <= k_hi:
        raise ValueError(f"argument 'k_range': expected 1 <= low <= high, got {k_range!r}")
    cut = k_hi if cut is None else check_int(cut, "argument 'cut'", k_hi)
    for name, value in (("inner_steps", inner_steps), ("k", k), ("q", q),
                        ("meta_batch", meta_batch), ("epochs", epochs), ("patience", patience)):
        check_int(value, f"argument '{name}'", 1 if name != "inner_steps" else 0)
    sequences = purchase_sequences(interactions, train_users)
    rng = np.random.default_rng([int(seed), 12])
    work = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    opt = torch.optim.Adam(list(work.values()), lr=outer_lr)
    history = [_val_loss(model, params, val_batch, inner_steps, inner_lr)]
    best = (history[0], copy.deepcopy({n: p.detach() for n, p in params.items()}), 0)
    waited, stopped = 0, False
    for epoch in range(1, epochs + 1):
        if episodes == "first":
            batch, prefix = _first_batch(sequences, np.asarray(train_users), (k_lo, k_hi), q,
                                         cut, model.n_items, rng)
        else:
            batch, prefix = _resampled_batch(sequences, np.asarray(train_users), k, q, rng), None
        perm = torch.as_tensor(rng.permutation(len(batch)))
        for lo in range(0, len(perm), meta_batch):
            rows = perm[lo:lo + meta_batch]
            b = batch.select(rows)
            taste = adapt_taste(model, work, b.users, b.support_items, b.support_mask,
                                inner_steps, inner_lr, create_graph=order == "second")
            if prefix is not None:
                exclude = prefix[rows]
            else:
                exclude = torch.zeros(len(b), model.n_items, dtype=torch.bool)
                exclude.scatter_(1, b.support_items, b.support_mask > 0)
            loss = choice_nll(model.logits(work, b.users, taste), b.query_items,
                              b.query_mask, exclude).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        current = {n: p.detach().clone() for n, p in work.items()}
        history.append(_val_loss(model, current, val_batch, inner_steps, inner_lr))
        if history[-1] < best[0]:
            best, waited = (history[-1], current, epoch), 0
        else:
            waited += 1
            if waited >= patience:
                stopped = True
                break
    return MetaChoiceResult(best[1], best[2], history, stopped)


def tune_meta_choice(
    model: ChoiceModel, params: Params, interactions: pd.DataFrame, train_users: np.ndarray,
    val_batch: EpisodeBatch | ChoiceValidation, *, inner_steps: int = 5,
    grid: Sequence[float] = CHOICE_LR_GRID, max_extend: int = 2, **meta: object,
) -> tuple[float, MetaChoiceResult, list[dict[str, float]]]:
    """:func:`tune_choice_lr`'s rule for a meta-learned model: for every inner rate of the
    bracketed ``grid`` (widened at an edge as there) run :func:`meta_train_choice` from
    ``params`` at that rate, and keep the rate whose kept epoch scores best on
    meta-validation (ties to the smaller rate). ``meta`` are further arguments of
    :func:`meta_train_choice` (``order``, ``episodes``, ...).

    Returns
    -------
    best_lr : float
    result : MetaChoiceResult
        Meta-training at ``best_lr``.
    table : list of dict
        As :func:`tune_choice_lr`'s, for the kept epoch of every rate tried.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    results: dict[float, MetaChoiceResult] = {}

    def loss(rate: float) -> float:
        results[rate] = meta_train_choice(model, params, interactions, train_users, val_batch,
                                          inner_lr=rate, inner_steps=inner_steps,
                                          **meta)  # type: ignore[arg-type]
        value = results[rate].history[results[rate].best_epoch]
        return value if math.isfinite(value) else math.inf

    best, scores = _bracketed(loss, grid, max_extend)
    return best, results[best], _table(scores, val_batch)
