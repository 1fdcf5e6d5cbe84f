"""MAMO: memory-augmented meta-optimisation (Dong et al., KDD 2020), in ``torch.func``.

MAML gives every new shopper the same starting point ``theta``. MAMO adds two memories,
both read with the same attention over ``S`` slots, computed from the shopper's *profile*
``p_u`` (the user-feature part of the model's input vector, see :func:`profile`):

* ``a_u = softmax_s(cos(p_u, M_U[s]))`` (profile keys ``M_U``, ``[S, d_p]``);
* **feature-specific (profile) memory** ``M_P`` ``[S, P]`` (``P`` = number of adapted
  parameter entries): the personalised bias ``b_u = a_u^T M_P`` moves the starting
  point, ``theta_u = theta - tau * b_u``;
* **task-specific (preference) memory** ``M_UI`` ``[S, d_p, d_q]``: the fast weights
  ``M_u = sum_s a_us M_UI[s]`` add a bilinear preference term ``p_u^T M_u q_i`` to the
  rating (``q_i`` = the item-feature part of the input vector).

The inner loop is MAML's (:func:`toyrec_helpers.adaptation.inner_loop`: the same SGD steps,
rate and masked MSE), started from ``theta_u`` with the preference term switched on. The
memories are not trained by the meta-gradient; after each meta-step they are *written*
with the paper's moving-average rules (:func:`write_memory`):
``M_P <- alpha (a_u (x) grad_u) + (1 - alpha) M_P`` (``grad_u`` = support gradient at
``theta_u``), ``M_U <- beta (a_u (x) p_u) + (1 - beta) M_U`` and
``M_UI <- gamma (a_u (x) M_u') + (1 - gamma) M_UI`` (``M_u'`` = ``M_u`` after one local
gradient step on the support loss), averaged over the meta-batch. With ``M_P = 0`` and
``M_UI = 0``, MAMO is MAML exactly.

Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from toyrec_helpers.adaptation import (
    MetaConfig,
    batch_fields,
    inner_loop,
    inner_rates,
    target_items,
)
from toyrec_helpers.checks import check_int, check_number, check_params
from toyrec_helpers.episodes import Episode, EpisodeBatch, Items, collate, resolve_items
from toyrec_helpers.meta import make_meta_optimizer, meta_step
from toyrec_helpers.models import (
    Numeric,
    lookup_index,
    masked_mse,
    parameter_names,
    pool_lookup,
)
from toyrec_helpers.training import BestEpoch

__all__ = [
    "Episodes", "MamoConfig", "MamoMemory", "MamoRecommender", "MamoTrainResult",
    "episodic_meta_train", "init_memory", "item_vectors", "mamo_adapt", "mamo_loss",
    "mamo_loss_reference", "mamo_predict", "meta_train_mamo", "profile", "read_memory",
    "write_memory"
]

Params = dict[str, torch.Tensor]
Episodes = list[Episode] | Callable[[int], Iterable[Episode]]
"""Meta-training tasks: a fixed list, or a sampler ``sampler(epoch) -> episodes``."""
_PREF = "<preference fast weights>"  # not a parameter name (it has spaces)


@dataclass(frozen=True)
class MamoConfig:
    """The memory settings of MAMO (the inner and outer loop come from a MetaConfig).

    Parameters
    ----------
    slots : int
        Number of memory slots ``S``.
    tau : float
        Scale of the personalised bias: ``theta_u = theta - tau * b_u``.
    alpha, beta, gamma : float
        Write rates (in ``[0, 1]``) of the profile memory ``M_P``, the profile keys
        ``M_U`` and the preference memory ``M_UI``.
    key_scale : float
        Standard deviation of the random initial keys ``M_U`` (``M_P`` and ``M_UI``
        start at zero, so MAMO starts as MAML).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    slots: int = 8
    tau: float = 0.1
    alpha: float = 0.1
    beta: float = 0.1
    gamma: float = 0.1
    key_scale: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.slots, "MamoConfig.slots", 1)
        check_number(self.tau, "MamoConfig.tau", positive=False)
        check_number(self.key_scale, "MamoConfig.key_scale")
        for name in ("alpha", "beta", "gamma"):
            value = check_number(getattr(self, name), f"MamoConfig.{name}", positive=False)
            if value > 1:
                raise ValueError(f"MamoConfig.{name}: expected a rate in [0, 1], got {value}")


@dataclass
class MamoMemory:
    """The three memories of MAMO.

    Attributes
    ----------
    keys : torch.Tensor
        ``M_U``, ``[S, d_p]``: one profile key per slot.
    bias : torch.Tensor
        ``M_P``, ``[S, P]``: one flat bias of the adapted parameters per slot.
    preference : torch.Tensor
        ``M_UI``, ``[S, d_p, d_q]``: one preference matrix per slot.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    keys: torch.Tensor
    bias: torch.Tensor
    preference: torch.Tensor

    def clone(self) -> MamoMemory:
        """A detached copy."""
        return MamoMemory(*(t.detach().clone() for t in (self.keys, self.bias,
                                                         self.preference)))

    def zeroed(self) -> MamoMemory:
        """The same keys with empty bias and preference memories (MAMO = MAML)."""
        return MamoMemory(self.keys.detach().clone(), torch.zeros_like(self.bias),
                          torch.zeros_like(self.preference))

    def numel(self) -> int:
        """Number of stored values."""
        return sum(t.numel() for t in (self.keys, self.bias, self.preference))


def _part_vectors(model: nn.Module, params: Mapping[str, torch.Tensor], rows: torch.Tensor,
                  table: str, dtype: torch.dtype) -> torch.Tensor:
    """The ``table`` part of the model's input vector for entity indices ``rows``,
    read with the embedding weights in ``params`` (so gradients reach them)."""
    parts = []
    for part in model.input_plan().parts:
        if part.table != table:
            continue
        if isinstance(part, Numeric):
            parts.append(getattr(model, part.buffer)[rows].to(dtype))
        else:
            index = lookup_index(model, part, rows)
            vectors = nn.functional.embedding(index, params[part.param])
            parts.append(pool_lookup(vectors, index, part))
    if not parts:
        raise ValueError(f"{type(model).__name__}.input_plan() has no {table} part")
    return torch.cat(parts, -1)


def profile(model: nn.Module, params: Mapping[str, torch.Tensor], users: torch.Tensor
            ) -> torch.Tensor:
    """The shopper's profile ``p_u``: the user part of the model's input vector.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a public ``input_plan()`` (e.g. ``FeatureRecommender``).
    params : dict of str to torch.Tensor
        Its parameters (the embedding weights are read from here).
    users : torch.Tensor
        int64 user indices, any shape.

    Returns
    -------
    torch.Tensor
        ``[..., d_p]``.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    dtype = next(iter(params.values())).dtype
    return _part_vectors(model, params, users, "user", dtype)


def item_vectors(model: nn.Module, params: Mapping[str, torch.Tensor], items: torch.Tensor
                 ) -> torch.Tensor:
    """The item part ``q_i`` of the model's input vector, ``[..., d_q]`` (as
    :func:`profile` for users).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    return _part_vectors(model, params, items, "item", next(iter(params.values())).dtype)


def init_memory(model: nn.Module, config: MetaConfig, mamo: MamoConfig, seed: int = 0
                ) -> MamoMemory:
    """Empty memories for ``model``: random keys, zero bias and preference memories.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    params = dict(model.named_parameters())
    ref = next(iter(params.values()))
    users = torch.zeros((), dtype=torch.int64, device=ref.device)
    d_p = profile(model, params, users).shape[-1]
    d_q = item_vectors(model, params, users).shape[-1]
    size = sum(params[n].numel() for n in parameter_names(model, config.adapt))
    generator = torch.Generator().manual_seed(int(seed))
    keys = torch.randn((mamo.slots, d_p), generator=generator) * mamo.key_scale
    kw = {"dtype": ref.dtype, "device": ref.device}
    return MamoMemory(keys.to(**kw), torch.zeros((mamo.slots, size), **kw),
                      torch.zeros((mamo.slots, d_p, d_q), **kw))


def read_memory(memory: MamoMemory, p_u: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the memories for one profile ``p_u`` ``[d_p]``.

    Returns
    -------
    a_u : torch.Tensor
        ``[S]`` attention, ``softmax(cos(p_u, M_U))``.
    b_u : torch.Tensor
        ``[P]`` personalised bias, ``a_u^T M_P``.
    m_u : torch.Tensor
        ``[d_p, d_q]`` preference fast weights, ``sum_s a_us M_UI[s]``.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    sim = nn.functional.cosine_similarity(p_u.unsqueeze(0), memory.keys, dim=-1, eps=1e-8)
    a_u = torch.softmax(sim, dim=0)
    return a_u, a_u @ memory.bias, torch.einsum("s,spq->pq", a_u, memory.preference)


def _unflatten(flat: torch.Tensor, params: Mapping[str, torch.Tensor], names: list[str]
               ) -> Params:
    out, offset = {}, 0
    for n in names:
        size = params[n].numel()
        out[n] = flat[offset:offset + size].reshape(params[n].shape)
        offset += size
    return out


def _predict(model: nn.Module, params: Mapping[str, torch.Tensor], m_u: torch.Tensor,
             user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Rating of ``items`` for one user: the base model plus ``p_u^T M_u q_i``."""
    base = functional_call(model, dict(params), (user, items))
    pref = item_vectors(model, params, items) @ (profile(model, params, user) @ m_u)
    return base + pref


def _start(model: nn.Module, params: Mapping[str, torch.Tensor], memory: MamoMemory,
           mamo: MamoConfig, names: list[str], user: torch.Tensor
           ) -> tuple[Params, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Personalised start ``theta_u``, fast weights ``M_u``, attention and profile."""
    p_u = profile(model, params, user)
    a_u, b_u, m_u = read_memory(memory, p_u)
    bias = _unflatten(b_u, params, names)
    fast = {n: params[n] - mamo.tau * bias[n] for n in names}
    return fast, m_u, a_u, p_u


def mamo_adapt(
    model: nn.Module, params: Mapping[str, torch.Tensor], memory: MamoMemory,
    user: torch.Tensor, support_items: torch.Tensor, support_ratings: torch.Tensor,
    support_mask: torch.Tensor, config: MetaConfig, mamo: MamoConfig,
) -> tuple[Params, torch.Tensor]:
    """MAMO's adaptation of one shopper: read the memories, then MAML's inner loop.

    Returns ``(phi_u, M_u)``: the adapted parameters (all of them, same order as
    ``params``) and the preference fast weights, which the inner loop does not change.
    Pure, so it can be ``vmap``-ed over shoppers and differentiated with respect to
    ``params`` (``config.order`` as in :func:`toyrec_helpers.adaptation.adapt`).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    names = parameter_names(model, config.adapt)
    rates = inner_rates(names, params, config, None)
    fast, m_u, _, _ = _start(model, params, memory, mamo, names, user)
    # M_u travels with the frozen tensors, so that first order treats it as a constant too
    frozen = {**{n: p for n, p in params.items() if n not in fast}, _PREF: m_u}

    def support_loss(fast: Params, frozen: Params) -> torch.Tensor:
        weights = {n: p for n, p in frozen.items() if n != _PREF}
        pred = _predict(model, {**weights, **fast}, frozen[_PREF], user, support_items)
        return masked_mse(pred, support_ratings, support_mask)

    fast = inner_loop(support_loss, fast, frozen, rates, config.inner_steps, config.order)
    return {n: fast.get(n, p) for n, p in params.items()}, m_u


def _check(model: nn.Module, params: Mapping[str, torch.Tensor], config: MetaConfig) -> None:
    check_params(model, params)
    if config.meta_sgd != "off":
        raise ValueError("MAMO uses plain SGD in the inner loop: config.meta_sgd must be 'off'")


def mamo_loss(
    model: nn.Module, params: Mapping[str, torch.Tensor], batch: EpisodeBatch,
    config: MetaConfig, memory: MamoMemory, mamo: MamoConfig,
) -> torch.Tensor:
    """MAMO's meta-loss: the mean query MSE after :func:`mamo_adapt`, over the tasks of
    ``batch`` (``vmap``-ed). Differentiable in ``params``; the memories are constants.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    _check(model, params, config)

    def task_loss(user, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask):
        phi, m_u = mamo_adapt(model, params, memory, user, s_items, s_ratings, s_mask,
                              config, mamo)
        return masked_mse(_predict(model, phi, m_u, user, q_items), q_ratings, q_mask)

    return vmap(task_loss)(*batch_fields(batch)).mean()


def mamo_loss_reference(
    model: nn.Module, params: Mapping[str, torch.Tensor], batch: EpisodeBatch,
    config: MetaConfig, memory: MamoMemory, mamo: MamoConfig,
) -> torch.Tensor:
    """The same meta-loss as :func:`mamo_loss`, as a plain loop over tasks with
    ``torch.autograd.grad`` (every step visible; ``params`` must require grad).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    _check(model, params, config)
    names = parameter_names(model, config.adapt)
    second = config.order == "second"
    losses = []
    for t in range(len(batch)):
        user = batch.users[t]
        p_u = profile(model, params, user)
        sim = torch.stack([nn.functional.cosine_similarity(p_u, k, dim=0, eps=1e-8)
                           for k in memory.keys])
        a_u = torch.softmax(sim, dim=0)
        b_u = sum(a_u[s] * memory.bias[s] for s in range(len(a_u)))
        m_u = sum(a_u[s] * memory.preference[s] for s in range(len(a_u)))
        offset, fast = 0, {}
        for n in names:
            size = params[n].numel()
            fast[n] = params[n] - mamo.tau * b_u[offset:offset + size].view_as(params[n])
            offset += size
        for _ in range(config.inner_steps):
            current = {**params, **fast}
            if not second:
                current = {n: p.detach().requires_grad_(n in fast) for n, p in current.items()}
            pred = _predict(model, current, m_u if second else m_u.detach(), user,
                            batch.support_items[t])
            loss = masked_mse(pred, batch.support_ratings[t], batch.support_mask[t])
            grads = torch.autograd.grad(loss, [current[n] for n in names], create_graph=second)
            fast = {n: fast[n] - config.inner_lr * g for n, g in zip(names, grads, strict=True)}
        pred = _predict(model, {**params, **fast}, m_u, user, batch.query_items[t])
        losses.append(masked_mse(pred, batch.query_ratings[t], batch.query_mask[t]))
    return torch.stack(losses).mean()


@torch.no_grad()
def write_memory(
    model: nn.Module, params: Mapping[str, torch.Tensor], memory: MamoMemory,
    batch: EpisodeBatch, config: MetaConfig, mamo: MamoConfig,
) -> MamoMemory:
    """The paper's write rules, averaged over the shoppers of ``batch``; returns new memories.

    For each shopper ``u`` (attention ``a_u``, profile ``p_u``, start ``theta_u``, fast
    weights ``M_u``): ``g_u`` and ``G_u`` = the support-loss gradients with respect to the
    parameters and to ``M_u``, at the personalised start; ``M_u' = M_u - lr * G_u``
    (``lr = config.inner_lr``), one local step of the fast weights. Then
    ``M_P <- alpha mean(a_u (x) g_u) + (1 - alpha) M_P``,
    ``M_U <- beta mean(a_u (x) p_u) + (1 - beta) M_U``,
    ``M_UI <- gamma mean(a_u (x) M_u') + (1 - gamma) M_UI``.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    params = {n: p.detach() for n, p in params.items()}
    names = parameter_names(model, config.adapt)

    def one(user, s_items, s_ratings, s_mask):
        fast, m_u, a_u, p_u = _start(model, params, memory, mamo, names, user)
        frozen = {n: p for n, p in params.items() if n not in fast}

        def loss_at(fast, m):
            pred = _predict(model, {**frozen, **fast}, m, user, s_items)
            return masked_mse(pred, s_ratings, s_mask)

        g, g_m = torch.func.grad(loss_at, argnums=(0, 1))(fast, m_u)
        flat = torch.cat([g[n].reshape(-1) for n in names])
        return a_u, p_u, flat, m_u - config.inner_lr * g_m

    with torch.enable_grad():
        a, p, g, m = vmap(one)(*batch_fields(batch)[:4])
    return MamoMemory(
        keys=mamo.beta * torch.einsum("ts,tp->sp", a, p) / len(a)
        + (1 - mamo.beta) * memory.keys,
        bias=mamo.alpha * torch.einsum("ts,tk->sk", a, g) / len(a)
        + (1 - mamo.alpha) * memory.bias,
        preference=mamo.gamma * torch.einsum("ts,tpq->spq", a, m) / len(a)
        + (1 - mamo.gamma) * memory.preference,
    )


def mamo_predict(
    model: nn.Module, params: Mapping[str, torch.Tensor], memory: MamoMemory,
    batch: EpisodeBatch, config: MetaConfig, mamo: MamoConfig, items: Items = None,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Predicted ratings ``[T, M]`` of each shopper after :func:`mamo_adapt` (items as in
    :func:`toyrec_helpers.adaptation.predict_adapted`); detached.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    _check(model, params, config)
    params = {n: p.detach() for n, p in params.items()}
    memory = memory.clone()
    targets, shared = target_items(model, batch, items)

    def one(user, s_items, s_ratings, s_mask, task_items):
        phi, m_u = mamo_adapt(model, params, memory, user, s_items, s_ratings, s_mask,
                              config, mamo)
        return _predict(model, phi, m_u, user, task_items)

    predict = vmap(one, in_dims=(0, 0, 0, 0, None if shared else 0), chunk_size=chunk_size)
    return predict(*batch_fields(batch)[:4], targets).detach()


class MamoRecommender:
    """MAMO behind the :class:`~toyrec_helpers.recommenders.Recommender` interface.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    predicts_ratings = True

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor],
                 memory: MamoMemory, config: MetaConfig, mamo: MamoConfig,
                 name: str = "mamo", chunk_size: int | None = 64) -> None:
        check_params(model, params)
        self.model, self.name, self.chunk_size = model, name, chunk_size
        self.params = {n: p.detach().clone() for n, p in params.items()}
        self.memory, self.config, self.mamo = memory.clone(), config, mamo

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Ratings after MAMO's adaptation (see ``Recommender.predict``)."""
        resolve_items(batch, items, self.model.n_items)
        return mamo_predict(self.model, self.params, self.memory, batch, self.config,
                            self.mamo, items, self.chunk_size)


@dataclass
class MamoTrainResult:
    """What :func:`meta_train_mamo` returns (best validation epoch kept).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """

    params: Params
    memory: MamoMemory
    history: list[dict[str, float]]
    best_epoch: int
    best_val_mse: float
    stopped_early: bool
    wall_time_s: float


def episodic_meta_train(
    step: Callable[[EpisodeBatch], torch.Tensor],
    validate: Callable[[], float],
    snapshot: Callable[[], Any],
    train_episodes: Episodes,
    config: MetaConfig,
    seed: int = 0,
    patience: int | None = None,
    progress: bool = False,
    desc: str = "meta-train",
) -> tuple[BestEpoch, list[dict[str, float]]]:
    """The episodic training loop of MAMO and the encoder (the same rules as
    :func:`toyrec_helpers.meta.meta_train`): each epoch takes the training episodes (a
    fixed list, or ``train_episodes(epoch)`` from a sampler such as
    :class:`~toyrec_helpers.episodes.EpisodeSampler`), shuffles them with a seeded
    generator, cuts them into meta-batches of ``config.meta_batch`` and calls
    ``step(batch)`` on each; then ``validate()`` (validation MSE, lower is better) decides,
    with :class:`~toyrec_helpers.training.BestEpoch`, which ``snapshot()`` to keep.

    Returns the ``BestEpoch`` (its ``state`` is the kept snapshot) and one history row per
    epoch (``epoch``, ``train_loss``, ``val_mse``, ``seconds``).

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    sampled = callable(train_episodes)
    if not sampled and len(train_episodes) == 0:
        raise ValueError("argument 'train_episodes' is empty: meta-training needs tasks")
    start = time.perf_counter()
    all_tasks = None if sampled else collate(train_episodes)
    generator = torch.Generator().manual_seed(int(seed))
    value = validate()
    history = [{"epoch": 0, "train_loss": math.nan, "val_mse": value, "seconds": 0.0}]
    best = BestEpoch(value, snapshot(), validated=not math.isnan(value), patience=patience)
    for epoch in tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress):
        if sampled:
            episodes = list(train_episodes(epoch))
            if not episodes:
                raise ValueError(f"the episode sampler gave no episode for epoch {epoch}")
            all_tasks = collate(episodes)
        order = torch.randperm(len(all_tasks), generator=generator)
        losses = []
        for lo in range(0, len(order), config.meta_batch):
            losses.append(float(step(all_tasks.select(order[lo:lo + config.meta_batch]))))
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"meta-loss is not finite at epoch {epoch}; lower the "
                                     "inner or outer learning rate")
        value = validate()
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses),
                        "val_mse": value, "seconds": time.perf_counter() - start})
        if best.update(epoch, value, snapshot):
            break
    return best, history


def _val_mse(pred: torch.Tensor, batch: EpisodeBatch) -> float:
    return float(masked_mse(pred, batch.query_ratings, batch.query_mask).mean())


def meta_train_mamo(
    model: nn.Module, train_episodes: Episodes, val_episodes: list[Episode],
    config: MetaConfig, mamo: MamoConfig | None = None, seed: int = 0,
    patience: int | None = None, progress: bool = False,
) -> MamoTrainResult:
    """Meta-train MAMO from the model's parameters (Adam on :func:`mamo_loss`, the
    memories written after every meta-step by :func:`write_memory`), keeping the epoch
    with the lowest validation MSE.

    Introduced in chapter 9 (book/09_beyond_one_starting_point.ipynb).
    """
    mamo = MamoConfig() if mamo is None else mamo
    start = time.perf_counter()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    _check(model, params, config)
    state = {"memory": init_memory(model, config, mamo, seed)}
    optimizer = make_meta_optimizer(params, config)
    val_batch = collate(val_episodes) if len(val_episodes) else None

    def loss_fn(model, params, batch, config, inner_lrs):
        return mamo_loss(model, params, batch, config, state["memory"], mamo)

    def step(batch: EpisodeBatch) -> torch.Tensor:
        loss = meta_step(model, params, optimizer, batch, config, loss_fn=loss_fn)
        state["memory"] = write_memory(model, params, state["memory"], batch, config, mamo)
        return loss

    def validate() -> float:
        if val_batch is None:
            return math.nan
        return _val_mse(mamo_predict(model, params, state["memory"], val_batch, config, mamo),
                        val_batch)

    def snapshot() -> tuple[Params, MamoMemory]:
        return {n: p.detach().clone() for n, p in params.items()}, state["memory"].clone()

    best, history = episodic_meta_train(step, validate, snapshot, train_episodes, config,
                                        seed, patience, progress, "mamo")
    best_params, best_memory = best.state
    return MamoTrainResult(best_params, best_memory, history, best.best_epoch,
                           best.best_value, best.stopped_early, time.perf_counter() - start)
