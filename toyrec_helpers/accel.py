"""Sparse per-task adaptation of embedding tables: the same MAML update, far less memory.

When the inner loop adapts *all* parameters (``MetaConfig(adapt="all")``), the dense
implementation (:func:`toyrec_helpers.meta.meta_loss`) gives every task of a ``vmap`` its
own copy of every embedding table, although one task only ever looks up a handful of
rows: the rows of its user's features and of its support and query items' features. With
plain SGD in the inner loop a row that the support set does not touch has a zero gradient,
so it never changes. This module therefore adapts, per task, only a small *compact table*:

1. for every embedding table, gather the rows the task's support set (and its user) looks
   up, in lookup order, into a ``[R, d]`` table (``R`` = number of lookups, a fixed size,
   so tasks can be ``vmap``-ed without padding masks of their own);
2. map every lookup to the *first* compact slot holding the same row, so a row used twice
   is one adapted variable whose gradient is the sum of both uses (duplicate slots are
   never read, get a zero gradient and stay as they were);
3. run the inner loop on the compact tables (and on the dense decision layers);
4. for the query, read a row from the adapted compact table if the support set touched
   it, and from the shared, un-adapted table otherwise. Nothing is scattered back.

Every step is an ordinary differentiable tensor operation (gather, ``torch.where``), so the
result is the same function of ``theta`` as the dense update: same adapted predictions and
same meta-gradient, second and first order, learned inner rates (Meta-SGD) included.

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import vmap

from toyrec_helpers.adaptation import (
    MetaConfig,
    batch_fields,
    inner_loop,
    inner_rates,
    target_items,
)
from toyrec_helpers.checks import check_params
from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.models import (
    InputPlan,
    Lookup,
    Numeric,
    apply_head,
    head_parameter_names,
    lookup_index,
    masked_mse,
    parameter_names,
    pool_lookup,
)

__all__ = [
    "sparse_meta_loss", "sparse_predict_adapted"
]

Params = dict[str, torch.Tensor]
Rates = Mapping[str, torch.Tensor | float]


def _check(model: nn.Module, params: Mapping[str, torch.Tensor], config: MetaConfig
           ) -> InputPlan:
    """Validate the arguments shared by the public functions; return the model's plan."""
    if not isinstance(config, MetaConfig):
        raise TypeError(f"argument 'config': expected MetaConfig, got {type(config).__name__}")
    if not callable(getattr(model, "input_plan", None)):
        raise TypeError(
            f"argument 'model': sparse adaptation supports models that describe their inputs "
            f"with input_plan() (FeatureRecommender, IdEmbeddingRecommender), got "
            f"{type(model).__name__}"
        )
    plan = model.input_plan()
    check_params(model, params)
    tables = [lk.param for lk in plan.lookups]
    if len(set(tables)) != len(tables):
        raise ValueError("sparse adaptation needs one lookup per embedding table")
    return plan


def _compact(
    weight: torch.Tensor, index: torch.Tensor, lookup: Lookup, width: int, n_support: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compact form of one adapted table for ``T`` tasks.

    ``index``: the rows the support set looks up, ``[T, S]`` or ``[T, S, L]`` (an item
    lookup) or ``[T]`` or ``[T, L]`` (a user lookup). Returns ``pool`` ``[T, S, width]``
    (per support rating: the one-hot of the *first* slot holding its row, times the
    index-0 mask, divided by the number of values of a pooled lookup), ``table``
    ``[T, width, d]`` (the rows, in lookup order, zero-padded) and ``rows`` ``[T, width]``
    (the row of each slot, ``-1`` = padding).
    """
    n_tasks = index.shape[0]
    flat = index.reshape(n_tasks, -1)  # [T, R]: one entry per lookup
    n_rows = flat.shape[1]
    slots = torch.arange(width, device=index.device)
    if n_rows:  # the first slot holding the same row, for every lookup
        first = torch.where(flat.unsqueeze(2) == flat.unsqueeze(1), slots[:n_rows], n_rows)
        first = first.amin(2)
    else:
        first = flat
    if lookup.zero_pad:
        share = (index > 0).to(weight.dtype)
    else:
        share = torch.ones(index.shape, dtype=weight.dtype, device=index.device)
    if lookup.pooled:  # mean over the entries with index > 0
        share = share / share.sum(-1, keepdim=True).clamp_min(1.0)
    onehot = (first.unsqueeze(-1) == slots).to(weight.dtype)  # [T, R, width]
    pool = (onehot * share.reshape(n_tasks, n_rows, 1)).reshape(*index.shape, width)
    if lookup.pooled:
        pool = pool.sum(-2)
    if pool.dim() == 2:  # a user lookup: the same row for every support rating
        pool = pool.unsqueeze(1).expand(n_tasks, n_support, width)
    table = weight[flat]  # [T, R, d]
    pad = width - n_rows
    if pad:
        table = torch.cat([table, table.new_zeros(n_tasks, pad, table.shape[-1])], 1)
        flat = torch.cat([flat, flat.new_full((n_tasks, pad), -1)], 1)
    return pool, table, flat


class _Sparse:
    """Sparse adaptation of one model: a batched preparation, then per-task functions.

    *Preparation* (plain batched tensor operations over the ``T`` tasks, outside any
    ``vmap``) gathers everything a task reads from the shared tables: the compact tables
    of the rows its support set and user look up (:func:`_compact`), and the rows its
    query items look up. The gradient of a gather done there flows into one ``[V, d]``
    gradient per table; gathering inside ``vmap`` would instead build one such dense
    gradient *per task* in the backward pass, which is the very memory cost avoided here.

    *Per-task functions* (:meth:`adapt`, :meth:`predict`) see only the task's small
    tensors and are pure, so they work unbatched and under ``torch.func.vmap``. In the
    inner loop the compact tables of the ``K`` adapted tables are one stacked tensor
    ``compact`` ``[K, R, d]`` (``R`` = the most lookups of one table in the support set)
    and their input parts are one batched product ``pool @ compact``; the inner loop itself
    is :func:`toyrec_helpers.adaptation.inner_loop`, as for the dense model.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor],
                 config: MetaConfig) -> None:
        self.model, self.config = model, config
        self.plan = plan = _check(model, params, config)
        self.names = parameter_names(model, config.adapt)
        self.sparse = [lk for lk in plan.lookups if lk.param in self.names]
        adapted_tables = {lk.param for lk in self.sparse}
        self.head_names = head_parameter_names(model, plan)
        if not self.head_names:
            raise ValueError(f"{type(model).__name__} has no parameters under {plan.head!r}")
        self.dense = [n for n in self.names if n not in adapted_tables]
        stray = [n for n in self.dense if n not in self.head_names]
        if stray:
            raise ValueError(f"sparse adaptation cannot adapt {stray}: neither an embedding "
                             f"lookup nor a parameter of {plan.head!r}")
        self.dtype = params[self.head_names[0]].dtype
        # The input vector in plan order: a run (first, stop) of adapted tables, or the
        # index of a part the inner loop does not change.
        self.segments: list[tuple[int, int] | int] = []
        k = 0
        for j, part in enumerate(plan.parts):
            if isinstance(part, Lookup) and part.param in adapted_tables:
                if self.segments and isinstance(self.segments[-1], tuple):
                    self.segments[-1] = (self.segments[-1][0], k + 1)
                else:
                    self.segments.append((k, k + 1))
                k += 1
            else:
                self.segments.append(j)

    def _part(self, params: Mapping[str, torch.Tensor], part: Lookup | Numeric,
              rows: torch.Tensor) -> torch.Tensor:
        """One un-adapted input part of entity rows ``rows``."""
        if isinstance(part, Numeric):
            return getattr(self.model, part.buffer)[rows].to(self.dtype)
        index = lookup_index(self.model, part, rows)
        return pool_lookup(params[part.param][index], index, part)

    # ----------------------------------------------------------------- preparation
    def prepare_support(self, params: Mapping[str, torch.Tensor], rates: Rates,
                        users: torch.Tensor, s_items: torch.Tensor) -> Params:
        """Per-task support tensors, batched over tasks (dimension 0).

        ``pool`` ``[T, K, S, R]``, ``compact`` ``[T, K, R, d]`` (the initial compact
        tables), ``rows`` ``[T, K, R]``, ``rates`` ``[T, K, R, d]`` (only with learned
        rates) and ``const:<j>`` ``[T, S, w]`` (the parts the inner loop does not change).
        """
        n_tasks, n_support = s_items.shape
        out: Params = {}
        if self.sparse:
            indices = [lookup_index(self.model, lk, users if lk.table == "user" else s_items)
                       for lk in self.sparse]
            width = max(index[0].numel() for index in indices)
            pools, tables, rows = zip(*(
                _compact(params[lk.param], index, lk, width, n_support)
                for lk, index in zip(self.sparse, indices, strict=True)), strict=True)
            out.update(pool=torch.stack(pools, 1), compact=torch.stack(tables, 1),
                       rows=torch.stack(rows, 1))
            if any(isinstance(rates[lk.param], torch.Tensor) for lk in self.sparse):
                out["rates"] = torch.stack([
                    rate[slots.clamp_min(0)] if isinstance(rate, torch.Tensor) and rate.dim()
                    else torch.as_tensor(rate, dtype=self.dtype, device=slots.device)
                    .expand(*table.shape)
                    for rate, slots, table in zip((rates[lk.param] for lk in self.sparse),
                                                  rows, tables, strict=True)], 1)
        for j in (seg for seg in self.segments if isinstance(seg, int)):
            part = self.plan.parts[j]
            vectors = self._part(params, part, users if part.table == "user" else s_items)
            if vectors.dim() == 2:  # per user: the same for every support rating
                vectors = vectors.unsqueeze(1).expand(n_tasks, n_support, vectors.shape[-1])
            out[f"const:{j}"] = vectors
        return out

    def prepare_query(
        self, params: Mapping[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor,
        shared: bool,
    ) -> tuple[Params, dict[str, int | None]]:
        """What the query forward reads: row indices and un-adapted rows of every lookup,
        numeric columns. Returns the tensors and their ``vmap`` dimensions (``None`` for
        item parts when ``shared``: ``items`` ``[M]`` is then the same for every task)."""
        out: Params = {}
        dims: dict[str, int | None] = {}
        for j, part in enumerate(self.plan.parts):
            rows = users if part.table == "user" else items
            dim = None if shared and part.table == "item" else 0
            if isinstance(part, Numeric):
                out[f"num:{j}"] = self._part(params, part, rows)
                dims[f"num:{j}"] = dim
            else:
                out[f"idx:{j}"] = index = lookup_index(self.model, part, rows)
                out[f"vec:{j}"] = params[part.param][index]
                dims[f"idx:{j}"] = dims[f"vec:{j}"] = dim
        return out, dims

    # ----------------------------------------------------------------- per task
    def adapt(
        self,
        params: Mapping[str, torch.Tensor],
        rates: Rates,
        support: Mapping[str, torch.Tensor],
        s_ratings: torch.Tensor,
        s_mask: torch.Tensor,
        engine: str = "func",
        order: str | None = None,
    ) -> tuple[Params, torch.Tensor | None]:
        """Inner loop of one task (``support``: this task's slice of
        :meth:`prepare_support`), by :func:`toyrec_helpers.adaptation.inner_loop` with
        ``engine`` and ``order`` (default ``config.order``).

        Returns the adapted decision-layer parameters and the adapted compact tables
        ``[K, R, d]`` (``None`` when no embedding is adapted).
        """
        fast: Params = {name: params[name] for name in self.dense}
        step_rates = {name: rates[name] for name in self.dense}
        if self.sparse:
            fast["compact"] = support["compact"]
            step_rates["compact"] = support.get("rates", rates[self.sparse[0].param])
        frozen: Params = {name: params[name] for name in self.head_names if name not in fast}
        frozen.update({key: value for key, value in support.items()
                       if key.startswith("const:") or key == "pool"})

        def support_loss(fast: Params, frozen: Params) -> torch.Tensor:
            if "compact" in fast:
                n_tables, _, d = fast["compact"].shape
                emb = torch.bmm(frozen["pool"], fast["compact"])  # [K, S, d]
                emb = emb.transpose(0, 1).reshape(s_ratings.shape[0], n_tables * d)
            parts = [emb[:, seg[0] * d:seg[1] * d] if isinstance(seg, tuple)
                     else frozen[f"const:{seg}"] for seg in self.segments]
            x = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
            pred = apply_head(self.model, self.plan, x, {**frozen, **fast})
            return masked_mse(pred, s_ratings, s_mask)

        fast = inner_loop(support_loss, fast, frozen, step_rates, self.config.inner_steps,
                          order or self.config.order, engine)
        head = {name: fast.get(name, params[name]) for name in self.head_names}
        return head, fast.get("compact")

    def predict(
        self,
        head: Mapping[str, torch.Tensor],
        compact: torch.Tensor | None,
        rows: torch.Tensor | None,
        query: Mapping[str, torch.Tensor],
        n_items: int,
    ) -> torch.Tensor:
        """Ratings of the task's ``n_items`` query items by its adapted model.

        A row found among the support's rows (``rows`` ``[K, R]``) is read from the
        adapted compact table (at its first slot, the one the inner loop adapted), any
        other row from the shared table, which the inner loop leaves unchanged (its
        gradient is zero).
        """
        sparse_at = {lk.param: k for k, lk in enumerate(self.sparse)}
        parts = []
        for j, part in enumerate(self.plan.parts):
            if isinstance(part, Numeric):
                vectors = query[f"num:{j}"]
            else:
                index, vectors = query[f"idx:{j}"], query[f"vec:{j}"]
                k = sparse_at.get(part.param)
                if k is not None and compact is not None and rows is not None:
                    d, width = vectors.shape[-1], rows.shape[-1]
                    same = index.reshape(-1, 1) == rows[k].unsqueeze(0)  # [M, R]
                    slots = torch.arange(width, device=index.device)
                    slot = torch.where(same, slots, width).amin(1).clamp_max(width - 1)
                    vectors = torch.where(same.any(1).unsqueeze(-1), compact[k][slot],
                                          vectors.reshape(-1, d)).reshape(*index.shape, d)
                vectors = pool_lookup(vectors, index, part)
            parts.append(vectors.expand(n_items, -1) if vectors.dim() == 1 else vectors)
        return apply_head(self.model, self.plan, torch.cat(parts, -1), head)


def _take(tree: Mapping[str, torch.Tensor], t: int, dims: Mapping[str, int | None] | None = None
          ) -> Params:
    """Task ``t`` of a dict of batched tensors (entries with dimension ``None`` are shared)."""
    return {k: v if dims is not None and dims[k] is None else v[t] for k, v in tree.items()}
def sparse_meta_loss(
    model: nn.Module, params: Mapping[str, torch.Tensor], batch: EpisodeBatch, config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None, vectorize: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """MAML meta-loss with sparse per-task embedding adaptation.

    The same number, and the same gradients with respect to ``params`` and ``inner_lrs``,
    as :func:`toyrec_helpers.meta.meta_loss`, but each task adapts only the embedding rows
    its user and its support items look up (see the module docstring), so memory grows
    with the support size instead of with the size of the embedding tables. With
    ``config.adapt == "head"`` no embedding is adapted (the embeddings of the support set
    are then computed once per task instead of once per inner step).

    Parameters
    ----------
    model : FeatureRecommender or IdEmbeddingRecommender
        The model (its feature buffers and architecture; its own parameters are not used).
    params : dict of str to torch.Tensor
        Initial parameters ``theta`` (all of the model's parameters).
    batch : EpisodeBatch
        The meta-batch (dimension 0 = task).
    config : MetaConfig
        Inner-loop settings (``inner_steps``, ``inner_lr``, ``adapt``, ``order``,
        ``meta_sgd``).
    inner_lrs : dict of str to torch.Tensor, optional
        Learned inner learning rates (Meta-SGD), as for :func:`meta.meta_loss`.
    vectorize : bool
        ``True``: all tasks at once with ``torch.func.vmap``. ``False``: a Python loop over
        tasks with ``torch.autograd.grad`` (``create_graph`` for second order), like
        :func:`meta.meta_loss_reference`; same result. The benchmark uses it to separate
        the gain of sparsity from the gain of ``vmap``.
    chunk_size : int, optional
        With ``vectorize``: adapt this many tasks at once (``vmap(chunk_size=...)``), which
        lowers the peak memory of the per-task copies of the decision layers; ``None`` =
        all tasks at once.

    Returns
    -------
    torch.Tensor
        Scalar meta-loss (mean over tasks of the masked query MSE after adaptation).

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    users, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask = batch_fields(batch)
    task = _Sparse(model, params, config)
    rates = inner_rates(task.names, params, config, inner_lrs)
    support = task.prepare_support(params, rates, users, s_items)
    query, dims = task.prepare_query(params, users, q_items, shared=False)
    n_query = q_items.shape[1]

    def task_loss(support, s_ratings, s_mask, query, q_ratings, q_mask, engine="func"):
        head, compact = task.adapt(params, rates, support, s_ratings, s_mask, engine)
        pred = task.predict(head, compact, support.get("rows"), query, n_query)
        return masked_mse(pred, q_ratings, q_mask)

    if vectorize:
        losses = vmap(task_loss, chunk_size=chunk_size)(support, s_ratings, s_mask, query,
                                                        q_ratings, q_mask)
        return losses.mean()
    losses = [task_loss(_take(support, t), s_ratings[t], s_mask[t], _take(query, t),
                        q_ratings[t], q_mask[t], "autograd") for t in range(len(batch))]
    return torch.stack(losses).mean()


def sparse_predict_adapted(
    model: nn.Module, params: Mapping[str, torch.Tensor], batch: EpisodeBatch, config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None, items: torch.Tensor | str | None = None,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Predictions of each task's adapted model, with sparse embedding adaptation.

    Same contract and same values as :func:`toyrec_helpers.adaptation.predict_adapted`; rows
    the support set does not touch are read from the shared tables, so no task ever holds
    a copy of a whole table. A batch of one task (a new shopper) skips ``vmap`` and uses
    plain ``torch.autograd.grad`` in the inner loop, which has less overhead per step.

    Parameters
    ----------
    model, params, batch, config, inner_lrs, items, chunk_size
        As for :func:`toyrec_helpers.adaptation.predict_adapted` (``model`` as for
        :func:`sparse_meta_loss`).

    Returns
    -------
    torch.Tensor
        Predicted ratings ``[T, M]``, detached.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    users, s_items, s_ratings, s_mask = batch_fields(batch)[:4]
    params = {n: p.detach() for n, p in params.items()}
    inner_lrs = None if inner_lrs is None else {n: r.detach() for n, r in inner_lrs.items()}
    task = _Sparse(model, params, config)
    rates = inner_rates(task.names, params, config, inner_lrs)
    targets, shared = target_items(model, batch, items)
    n_targets = targets.shape[-1]
    with torch.no_grad():
        support = task.prepare_support(params, rates, users, s_items)
        query, dims = task.prepare_query(params, users, targets, shared=shared)

    def task_predictions(support, s_ratings, s_mask, query, engine="func"):
        # No graph back to params is needed: first order gives the same adapted values.
        head, compact = task.adapt(params, rates, support, s_ratings, s_mask, engine,
                                   order="first")
        return task.predict(head, compact, support.get("rows"), query, n_targets)

    if len(batch) == 1:  # one task (a new shopper): the same function, without vmap
        with torch.no_grad():
            pred = task_predictions(_take(support, 0), s_ratings[0], s_mask[0],
                                    _take(query, 0, dims), "autograd")
        return pred.unsqueeze(0)
    predict = vmap(task_predictions, in_dims=(0, 0, 0, dims), chunk_size=chunk_size)
    return predict(support, s_ratings, s_mask, query).detach()
