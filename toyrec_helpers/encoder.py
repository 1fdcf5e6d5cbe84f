"""An amortised adapter: a set encoder reads the support set and modulates the shared model.

Gradient-based methods (MAML, MAMO) adapt by taking gradient steps on each new shopper's
support ratings. An *amortised* adapter learns a function that maps the support set
directly to the shopper's adjustment, in one forward pass (neural processes; TaNP,
Lin et al., WWW 2021). Here:

1. each support rating ``j`` becomes a vector ``x_j = [q_(i_j), r_j - c, f(u, i_j) - c]``:
   the item-feature part of the shared model's input (``q_i``), the rating, and the shared
   model's own prediction for that item, both centred at the model's mean rating ``c``;
2. ``h_j = phi(x_j)`` (a small MLP), and ``z = [mean_j h_j, p_u, log(1 + K)]``, the masked
   mean over the ``K`` support ratings (zero for ``K = 0``), the shopper's profile ``p_u``
   (optional) and the support size;
3. ``z`` is mapped to a FiLM modulation of every hidden layer of the shared decision MLP
   (``h <- (1 + g_l(z)) * h + b_l(z)`` before the ReLU) and to a rating offset
   ``o(z)``. The modulation heads start at zero, so an untrained encoder *is* the shared
   model.

The mean makes the encoder invariant to the order of the support ratings. Everything
(encoder and shared model) is meta-trained end to end on the query error, starting from
the global model; at test time there is no gradient step at all.

Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.adaptation import MetaConfig, batch_fields, target_items
from toyrec_helpers.checks import check_int, check_params
from toyrec_helpers.episodes import Episode, EpisodeBatch, Items, collate, resolve_items
from toyrec_helpers.mamo import Episodes, episodic_meta_train, item_vectors, profile
from toyrec_helpers.meta import make_meta_optimizer, meta_step
from toyrec_helpers.models import FeatureRecommender, input_parts, masked_mse

__all__ = [
    "EncoderRecommender", "EncoderTrainResult", "SetEncoderModel", "encoder_loss",
    "encoder_predict", "meta_train_encoder", "subsample_support"
]

Params = dict[str, torch.Tensor]


class SetEncoderModel(nn.Module):
    """The shared feature model plus a permutation-invariant support-set encoder.

    Parameters
    ----------
    base : FeatureRecommender
        The shared model (kept as the sub-module ``base``; its parameters are copied).
    width : int
        Width of the encoder's hidden vectors ``h_j`` and of ``z``'s set part.
    use_profile : bool
        Whether ``z`` includes the shopper's profile ``p_u``.

    Notes
    -----
    ``forward(users, items, support_items, support_ratings, support_mask)`` scores ``items``
    for one shopper (``users`` a scalar, the support tensors ``[S]``); it works inside
    ``torch.func.vmap`` over shoppers and with ``functional_call``.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    def __init__(self, base: FeatureRecommender, width: int = 32, use_profile: bool = True
                 ) -> None:
        super().__init__()
        check_int(width, "argument 'width'", 1)
        if not isinstance(base, FeatureRecommender):
            raise TypeError(f"argument 'base': expected FeatureRecommender, got "
                            f"{type(base).__name__}")
        self.base = base
        self.use_profile = bool(use_profile)
        self.n_items, self.n_users = base.n_items, base.n_users
        self.rating_mean = base.rating_mean
        zero = torch.zeros((), dtype=torch.int64)
        d_q = _items(base, zero).shape[-1]
        d_p = _profile(base, zero).shape[-1] if self.use_profile else 0
        self.phi = nn.Sequential(nn.Linear(d_q + 2, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU())
        self.hidden_widths = [m.out_features for m in base.mlp if isinstance(m, nn.Linear)][:-1]
        z_width = width + d_p + 1
        self.film = nn.Linear(z_width, 2 * sum(self.hidden_widths) + 1)
        with torch.no_grad():  # start as the shared model
            self.film.weight.zero_()
            self.film.bias.zero_()
        self.to(next(base.parameters()).dtype)

    def context(self, users: torch.Tensor, support_items: torch.Tensor,
                support_ratings: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """The shopper's summary ``z`` (``[width + d_p + 1]``) from one support set."""
        base = self.base
        dtype = self.film.weight.dtype
        c = self.rating_mean
        shared = base(users, support_items)
        x = torch.cat([_items(base, support_items),
                       (support_ratings.to(dtype) - c).unsqueeze(-1),
                       (shared - c).unsqueeze(-1)], -1)
        h = self.phi(x)
        mask = support_mask.to(dtype).unsqueeze(-1)
        count = mask.sum(-2)
        pooled = (h * mask).sum(-2) / count.clamp_min(1.0)
        parts = [pooled]
        if self.use_profile:
            parts.append(_profile(base, users))
        parts.append(torch.log1p(count))
        return torch.cat(parts, -1)

    def forward(self, users: torch.Tensor, items: torch.Tensor, support_items: torch.Tensor,
                support_ratings: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """Ratings of ``items`` for one shopper, modulated by the support set."""
        z = self.context(users, support_items, support_ratings, support_mask)
        film = self.film(z)
        base = self.base
        plan = base.input_plan()
        u, i = torch.broadcast_tensors(users, items)
        x = torch.cat(input_parts(base, plan, u, i, film.dtype), -1)
        offset, layer = 0, 0
        for module in base.mlp:
            if isinstance(module, nn.ReLU):
                x = torch.relu(x)
                continue
            x = module(x)
            if layer < len(self.hidden_widths):
                w = self.hidden_widths[layer]
                gain, shift = film[offset:offset + w], film[offset + w:offset + 2 * w]
                x = x * (1 + gain) + shift
                offset += 2 * w
            layer += 1
        return x.squeeze(-1) + film[-1]


def _items(base: nn.Module, items: torch.Tensor) -> torch.Tensor:
    """The item part ``q_i`` of the shared model's input vector (read through its modules,
    so that ``functional_call`` parameters apply)."""
    weights = {p.param: base.get_submodule(p.module).weight
               for p in base.input_plan().lookups}
    return item_vectors(base, weights, items)


def _profile(base: nn.Module, users: torch.Tensor) -> torch.Tensor:
    weights = {p.param: base.get_submodule(p.module).weight
               for p in base.input_plan().lookups}
    return profile(base, weights, users)


def encoder_loss(model: SetEncoderModel, params: Mapping[str, torch.Tensor],
                 batch: EpisodeBatch, config: MetaConfig | None = None,
                 inner_lrs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean query MSE of the encoder's predictions over the tasks of ``batch``
    (the ``loss_fn`` signature of :func:`toyrec_helpers.meta.meta_step`).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    check_params(model, params)

    def task(user, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask):
        pred = functional_call(model, dict(params), (user, q_items, s_items, s_ratings, s_mask))
        return masked_mse(pred, q_ratings, q_mask)

    return vmap(task)(*batch_fields(batch)).mean()


def encoder_predict(model: SetEncoderModel, params: Mapping[str, torch.Tensor],
                    batch: EpisodeBatch, items: Items = None, chunk_size: int | None = 64
                    ) -> torch.Tensor:
    """Predicted ratings ``[T, M]`` (items as in
    :func:`toyrec_helpers.adaptation.predict_adapted`); no gradient step, detached.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    check_params(model, params)
    params = {n: p.detach() for n, p in params.items()}
    targets, shared = target_items(model, batch, items)

    def one(user, s_items, s_ratings, s_mask, task_items):
        return functional_call(model, params, (user, task_items, s_items, s_ratings, s_mask))

    predict = vmap(one, in_dims=(0, 0, 0, 0, None if shared else 0), chunk_size=chunk_size)
    with torch.no_grad():
        return predict(*batch_fields(batch)[:4], targets)


class EncoderRecommender:
    """The encoder behind the :class:`~toyrec_helpers.recommenders.Recommender` interface.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    predicts_ratings = True

    def __init__(self, model: SetEncoderModel, params: Mapping[str, torch.Tensor],
                 name: str = "encoder", chunk_size: int | None = 64) -> None:
        check_params(model, params)
        self.model, self.name, self.chunk_size = model, name, chunk_size
        self.params = {n: p.detach().clone() for n, p in params.items()}

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Ratings from one pass of the encoder (see ``Recommender.predict``)."""
        resolve_items(batch, items, self.model.n_items)
        return encoder_predict(self.model, self.params, batch, items, self.chunk_size)


@dataclass
class EncoderTrainResult:
    """What :func:`meta_train_encoder` returns (best validation epoch kept).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    params: Params
    history: list[dict[str, float]]
    best_epoch: int
    best_val_mse: float
    stopped_early: bool
    wall_time_s: float


def subsample_support(batch: EpisodeBatch, generator: torch.Generator) -> EpisodeBatch:
    """The batch with each task's support set cut to a random subset of its ratings:
    ``k`` uniform in ``1..n`` (``n`` = the task's support size; tasks with ``n = 0`` stay
    empty), the ``k`` kept ratings chosen at random; only the support mask changes.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    mask = batch.support_mask
    n = mask.sum(1)
    k = torch.minimum((torch.rand(n.shape, generator=generator) * n).floor() + 1, n)
    scores = torch.rand(mask.shape, generator=generator) + 2.0 * (mask <= 0)
    rank = scores.argsort(1).argsort(1)
    keep = ((rank < k.unsqueeze(1)) & (mask > 0)).to(mask.dtype)
    return dataclasses.replace(batch, support_mask=keep)


def meta_train_encoder(
    model: SetEncoderModel, train_episodes: Episodes, val_episodes: list[Episode],
    config: MetaConfig, seed: int = 0, patience: int | None = None, progress: bool = False,
    random_k: bool = True,
) -> EncoderTrainResult:
    """Meta-train the encoder and the shared model end to end: Adam
    (``config.outer_lr``) on :func:`encoder_loss` over meta-batches of
    ``config.meta_batch`` shoppers for ``config.epochs`` epochs, keeping the epoch with the
    lowest validation MSE (the loop of :func:`toyrec_helpers.mamo.episodic_meta_train`).
    With ``random_k`` each training task keeps a random number of its support ratings
    (:func:`subsample_support`), so that one encoder learns to serve every support size,
    as neural processes are trained with contexts of random size.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    start = time.perf_counter()
    torch.manual_seed(int(seed))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    optimizer = make_meta_optimizer(params, config)
    val_batch = collate(val_episodes) if len(val_episodes) else None

    generator = torch.Generator().manual_seed(int(seed) + 1)

    def step(batch: EpisodeBatch) -> torch.Tensor:
        if random_k:
            batch = subsample_support(batch, generator)
        return meta_step(model, params, optimizer, batch, config, loss_fn=encoder_loss)

    def validate() -> float:
        if val_batch is None:
            return math.nan
        pred = encoder_predict(model, params, val_batch)
        return float(masked_mse(pred, val_batch.query_ratings, val_batch.query_mask).mean())

    def snapshot() -> Params:
        return {n: p.detach().clone() for n, p in params.items()}

    best, history = episodic_meta_train(step, validate, snapshot, train_episodes, config,
                                        seed, patience, progress, "encoder")
    return EncoderTrainResult(best.state, history, best.best_epoch, best.best_value,
                              best.stopped_early, time.perf_counter() - start)
