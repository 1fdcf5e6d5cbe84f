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

Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.meta import MetaConfig, _inner_rates
from toyrec_helpers.models import (
    FeatureRecommender,
    IdEmbeddingRecommender,
    masked_mse,
    parameter_names,
)

__all__ = [
    "sparse_meta_loss",
    "sparse_predict_adapted",
]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Lookup:
    """One embedding lookup of the model's input layer.

    ``param`` is the ``[V, d]`` weight; ``table`` is ``"user"`` or ``"item"``; the row
    indices of entity rows ``rows`` are ``rows`` itself (``column is None and buffer is
    None``, an id embedding), ``<table>_categorical[rows][..., column]`` (a categorical
    column), or ``<buffer>[rows]`` (a multi-valued column, mean-pooled). ``zero_pad``:
    index 0 gives the zero vector (and is left out of the mean).
    """

    param: str
    table: str
    column: int | None
    buffer: str | None
    zero_pad: bool


@dataclass(frozen=True)
class _Plan:
    """How a model builds its input vector and which sub-module is its decision head."""

    parts: tuple[_Lookup | str, ...]  # a _Lookup, or "user_numeric"/"item_numeric"
    head: str  # sub-module name ("mlp" or "linear")


def _plan(model: nn.Module) -> _Plan:
    """The input layout of a supported model, in the order its ``forward`` concatenates."""
    if isinstance(model, FeatureRecommender):
        columns = getattr(model, "_columns", None)
        if not isinstance(columns, dict) or set(columns) != {"user", "item"}:
            raise TypeError("sparse adaptation needs FeatureRecommender._columns (the "
                            "per-table embedding layout); this model has none")
        parts: list[_Lookup | str] = []
        for table in ("user", "item"):
            cat_keys, multi_keys, multi_buffers = columns[table]
            for j, key in enumerate(cat_keys):
                parts.append(_Lookup(f"embeddings.{key}.weight", table, j, None, True))
            for key, buffer in zip(multi_keys, multi_buffers, strict=True):
                parts.append(_Lookup(f"embeddings.{key}.weight", table, None, buffer, True))
            parts.append(f"{table}_numeric")
        return _Plan(tuple(parts), "mlp")
    if isinstance(model, IdEmbeddingRecommender):
        return _Plan(
            (
                _Lookup("user_embedding.weight", "user", None, None, False),
                _Lookup("item_embedding.weight", "item", None, None, False),
            ),
            "linear",
        )
    raise TypeError(
        f"argument 'model': sparse adaptation supports FeatureRecommender and "
        f"IdEmbeddingRecommender, got {type(model).__name__}"
    )


def _check(model: nn.Module, params: Mapping[str, torch.Tensor], config: MetaConfig) -> _Plan:
    """Validate the arguments shared by the public functions; return the model's plan."""
    if not isinstance(config, MetaConfig):
        raise TypeError(f"argument 'config': expected MetaConfig, got {type(config).__name__}")
    plan = _plan(model)
    expected = set(parameter_names(model, "all"))
    missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or extra:
        raise KeyError(f"argument 'params' must hold exactly the parameters of "
                       f"{type(model).__name__}; missing {missing}, unexpected {extra}")
    lookup_params = [p.param for p in plan.parts if isinstance(p, _Lookup)]
    if len(set(lookup_params)) != len(lookup_params):
        raise ValueError("sparse adaptation needs one lookup per embedding table")
    return plan


def _rates(
    names: list[str],
    params: Mapping[str, torch.Tensor],
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor | float]:
    """Inner learning rate of each adapted parameter, checked exactly as :func:`meta.adapt`
    checks them (the same function does it)."""
    return dict(_inner_rates(names, params, config, inner_lrs))


def _indices(model: nn.Module, lookup: _Lookup, rows: torch.Tensor) -> torch.Tensor:
    """Embedding-row indices that ``lookup`` reads for entity rows ``rows``."""
    if lookup.buffer is not None:
        return getattr(model, lookup.buffer)[rows]  # [..., L]
    if lookup.column is not None:
        return getattr(model, f"{lookup.table}_categorical")[rows][..., lookup.column]
    return rows


def _pool(vectors: torch.Tensor, index: torch.Tensor, lookup: _Lookup) -> torch.Tensor:
    """Zero the vectors of index 0 and mean-pool multi-valued columns (as the model does)."""
    if lookup.zero_pad:
        vectors = vectors * (index > 0).unsqueeze(-1).to(vectors.dtype)
    if lookup.buffer is not None:
        count = (index > 0).to(vectors.dtype).sum(-1, keepdim=True).clamp_min(1.0)
        vectors = vectors.sum(-2) / count
    return vectors


def _head_layers(module: nn.Module, prefix: str) -> list[tuple[str, str]] | None:
    """``[("linear", name) | ("relu", "")]`` for a Linear or a Sequential of Linear/ReLU
    (called directly with ``F.linear``, much cheaper than ``functional_call``); ``None``
    for anything else."""
    if isinstance(module, nn.Linear):
        return [("linear", prefix)]
    if not isinstance(module, nn.Sequential):
        return None
    layers = []
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            layers.append(("linear", f"{prefix}.{name}"))
        elif isinstance(child, nn.ReLU):
            layers.append(("relu", ""))
        else:
            return None
    return layers


class _Sparse:
    """Sparse adaptation of one model: a batched preparation, then per-task functions.

    *Preparation* (plain batched tensor operations over the ``T`` tasks, outside any
    ``vmap``) gathers everything a task reads from the shared tables: the compact tables
    of the rows its support set and user look up, and the rows its query items look up.
    The gradient of a gather done there flows into one ``[V, d]`` gradient per table;
    gathering inside ``vmap`` would instead build one such dense gradient *per task* in
    the backward pass, which is the very memory cost this module removes.

    *Per-task functions* (:meth:`adapt`, :meth:`predict`) see only the task's small
    tensors and are pure, so they work unbatched and under ``torch.func.vmap``. In the
    inner loop the compact tables of all adapted tables are one stacked tensor ``C`` of
    shape ``[n_tables, R, d]`` (``R`` = the most lookups of one table in the support set;
    shorter tables are padded with zero rows that nothing reads, row index ``-1``). Each
    table's input part is one product ``P[k] @ C[k]``, where ``P[k]`` (``[S, R]``, fixed
    per task) holds for each support rating the one-hot of the *first* slot holding the
    row it looks up, times the index-0 mask, divided by the number of values of a
    multi-valued column. A row used twice is thus one adapted variable whose gradient is
    the sum of both uses, as in the dense table.
    """

    def __init__(self, model: nn.Module, plan: _Plan, config: MetaConfig) -> None:
        self.model = model
        self.plan = plan
        self.config = config
        self.names = parameter_names(model, config.adapt)
        lookups = [p for p in plan.parts if isinstance(p, _Lookup)]
        self.sparse = [lk for lk in lookups if lk.param in self.names]
        sparse_params = {lk.param for lk in self.sparse}
        self.head_names = [n for n in parameter_names(model, "all")
                           if n.startswith(plan.head + ".")]
        if not self.head_names:
            raise ValueError(f"{type(model).__name__} has no parameters under {plan.head!r}")
        self.dense = [n for n in self.names if n not in sparse_params]
        stray = [n for n in self.dense if n not in self.head_names]
        if stray:
            raise ValueError(f"sparse adaptation cannot adapt {stray}: neither an embedding "
                             f"lookup nor a parameter of {plan.head!r}")
        self.head_module = getattr(model, plan.head)
        self.head_layers = _head_layers(self.head_module, plan.head)
        # The input vector in model order: runs of adapted tables, and constant parts.
        self.segments: list[tuple[int, int] | _Lookup | str] = []
        k = 0
        for part in plan.parts:
            if isinstance(part, _Lookup) and part.param in sparse_params:
                last = self.segments[-1] if self.segments else None
                if isinstance(last, tuple):
                    self.segments[-1] = (last[0], k + 1)
                else:
                    self.segments.append((k, k + 1))
                k += 1
            else:
                self.segments.append(part)

    # ----------------------------------------------------------------- helpers
    def _dtype(self, params: Mapping[str, torch.Tensor]) -> torch.dtype:
        return params[self.head_names[0]].dtype

    def _head(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The decision layers applied to inputs ``x`` ``[n, width]``; returns ``[n]``."""
        if self.head_layers is None:
            head = {n[len(self.plan.head) + 1:]: params[n] for n in self.head_names}
            return functional_call(self.head_module, head, (x,)).squeeze(-1)
        for kind, name in self.head_layers:
            if kind == "relu":
                x = torch.relu(x)
            else:
                x = torch.nn.functional.linear(x, params[f"{name}.weight"],
                                               params.get(f"{name}.bias"))
        return x.squeeze(-1)

    # ----------------------------------------------------------------- preparation
    def prepare_support(
        self,
        params: Mapping[str, torch.Tensor],
        rates: Mapping[str, torch.Tensor | float],
        users: torch.Tensor,
        s_items: torch.Tensor,
    ) -> Params:
        """Per-task support tensors, batched over tasks (dimension 0).

        ``pool`` ``[T, K, S, R]``, ``compact`` ``[T, K, R, d]`` (the initial compact
        tables), ``rows`` ``[T, K, R]`` (row index of each slot, ``-1`` = padding),
        ``rates`` ``[T, K, R, d]`` (only with learned rates) and ``const:<i>`` ``[T, S, w]``
        (the input parts that the inner loop does not change).
        """
        n_tasks, n = s_items.shape
        dtype = self._dtype(params)
        out: Params = {}
        if self.sparse:
            indices = [_indices(self.model, lk, users if lk.table == "user" else s_items)
                       for lk in self.sparse]
            width = max(index[0].numel() for index in indices)
            slots = torch.arange(width, device=s_items.device)
            pools, tables, rows, lrs = [], [], [], []
            learned = any(isinstance(rates[lk.param], torch.Tensor) for lk in self.sparse)
            for lk, index in zip(self.sparse, indices, strict=True):
                flat = index.reshape(n_tasks, -1)  # [T, R_k]: one entry per lookup
                r = flat.shape[1]
                if r:  # the first slot holding the same row, for every lookup
                    same = flat.unsqueeze(2) == flat.unsqueeze(1)  # [T, R_k, R_k]
                    first = torch.where(same, slots[:r], r).amin(2)
                else:
                    first = flat
                weight = ((index > 0).to(dtype) if lk.zero_pad
                          else torch.ones(index.shape, dtype=dtype, device=index.device))
                if lk.buffer is not None:  # mean over the entries with index > 0
                    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1.0)
                onehot = (first.unsqueeze(-1) == slots).to(dtype)  # [T, R_k, R]
                pool = (onehot * weight.reshape(n_tasks, r, 1)).reshape(*index.shape, width)
                if lk.buffer is not None:
                    pool = pool.sum(-2)
                if pool.dim() == 2:  # a user lookup: the same row for every support rating
                    pool = pool.unsqueeze(1).expand(n_tasks, n, width)
                pad = width - r
                weights = params[lk.param]
                table = weights[flat]  # [T, R_k, d]
                if pad:
                    table = torch.cat([table, table.new_zeros(n_tasks, pad, table.shape[-1])], 1)
                    flat = torch.cat([flat, flat.new_full((n_tasks, pad), -1)], 1)
                pools.append(pool)
                tables.append(table)
                rows.append(flat)
                if learned:
                    rate = rates[lk.param]
                    if isinstance(rate, torch.Tensor) and rate.dim() > 0:  # element-wise
                        rate = rate[rows[-1].clamp_min(0)]
                    else:
                        rate = torch.as_tensor(rate, dtype=dtype, device=table.device)
                        rate = rate.expand(n_tasks, width, table.shape[-1])
                    lrs.append(rate)
            out["pool"] = torch.stack(pools, 1)
            out["compact"] = torch.stack(tables, 1)
            out["rows"] = torch.stack(rows, 1)
            if learned:
                out["rates"] = torch.stack(lrs, 1)
        for i, part in enumerate(self.segments):
            if isinstance(part, tuple):
                continue
            if isinstance(part, str):
                rows_ = users if part.startswith("user") else s_items
                vectors = getattr(self.model, part)[rows_].to(dtype)
            else:
                index = _indices(self.model, part, users if part.table == "user" else s_items)
                vectors = _pool(params[part.param][index], index, part)
            if vectors.dim() == 2:  # per user: the same for every support rating
                vectors = vectors.unsqueeze(1).expand(n_tasks, n, vectors.shape[-1])
            out[f"const:{i}"] = vectors
        return out

    def prepare_query(
        self, params: Mapping[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor,
        shared: bool,
    ) -> tuple[Params, dict[str, int | None]]:
        """What the query forward reads: row indices and un-adapted rows of every lookup,
        numeric columns. Returns the tensors and their ``vmap`` dimensions (``None`` for
        item parts when ``shared``: ``items`` ``[M]`` is then the same for every task)."""
        dtype = self._dtype(params)
        out: Params = {}
        dims: dict[str, int | None] = {}
        for j, part in enumerate(self.plan.parts):
            is_user = (part if isinstance(part, str) else part.table).startswith("user")
            rows = users if is_user else items
            dim = 0 if is_user or not shared else None
            if isinstance(part, str):
                out[f"num:{j}"], dims[f"num:{j}"] = getattr(self.model, part)[rows].to(dtype), dim
            else:
                index = _indices(self.model, part, rows)
                out[f"idx:{j}"], dims[f"idx:{j}"] = index, dim
                out[f"vec:{j}"], dims[f"vec:{j}"] = params[part.param][index], dim
        return out, dims

    # ----------------------------------------------------------------- per task
    def adapt(
        self,
        params: Mapping[str, torch.Tensor],
        rates: Mapping[str, torch.Tensor | float],
        support: Mapping[str, torch.Tensor],
        s_ratings: torch.Tensor,
        s_mask: torch.Tensor,
        engine: str = "func",
        outer_graph: bool = True,
    ) -> tuple[Params, torch.Tensor | None]:
        """Inner loop of one task (``support``: this task's slice of
        :meth:`prepare_support`).

        ``engine="func"`` (``torch.func.grad``) works under ``vmap``; ``"autograd"``
        (``torch.autograd.grad``) only unbatched, with less overhead per step.
        ``outer_graph=False`` skips the graph back to ``params`` (for predictions: the
        adapted values are the same, first or second order).

        Returns the adapted decision-layer parameters and the adapted compact tables
        ``[K, R, d]`` (``None`` when no embedding is adapted).
        """
        n = s_ratings.shape[0]
        fast: Params = {name: params[name] for name in self.dense}
        step_rates: dict[str, torch.Tensor | float] = {name: rates[name] for name in self.dense}
        if self.sparse:
            fast["compact"] = support["compact"]
            if "rates" in support:
                step_rates["compact"] = support["rates"]
            else:
                step_rates["compact"] = rates[self.sparse[0].param]
        frozen: Params = {name: params[name] for name in self.head_names if name not in fast}
        frozen.update({key: value for key, value in support.items()
                       if key.startswith("const:") or key == "pool"})

        def support_loss(fast: Params, frozen: Params) -> torch.Tensor:
            merged = {**frozen, **fast}
            if "compact" in fast:  # [K, S, d] -> [S, K * d]
                n_tables, _, d = fast["compact"].shape
                emb = torch.bmm(frozen["pool"], fast["compact"]).transpose(0, 1)
                emb = emb.reshape(n, n_tables * d)
            parts = []
            for i, seg in enumerate(self.segments):
                if isinstance(seg, tuple):
                    parts.append(emb[:, seg[0] * d:seg[1] * d])
                else:
                    parts.append(frozen[f"const:{i}"])
            pred = self._head(merged, torch.cat(parts, -1) if len(parts) > 1 else parts[0])
            return masked_mse(pred, s_ratings, s_mask)

        second = self.config.order == "second" and outer_graph
        if engine == "func":
            inner_grad = torch.func.grad(support_loss)
        elif engine != "autograd":
            raise ValueError(f"engine: expected 'func' or 'autograd', got {engine!r}")
        for _ in range(self.config.inner_steps):
            if engine == "func":
                if second:
                    grads = inner_grad(fast, frozen)
                else:  # first order: the gradient is a constant for the outer loop
                    grads = inner_grad({k: v.detach() for k, v in fast.items()},
                                       {k: v.detach() for k, v in frozen.items()})
            else:  # plain autograd, unbatched (cheaper per call than torch.func.grad)
                with torch.enable_grad():
                    if second:
                        current = {k: v if v.requires_grad else v.detach().requires_grad_()
                                   for k, v in fast.items()}
                        loss = support_loss(current, frozen)
                    else:
                        current = {k: v.detach().requires_grad_() for k, v in fast.items()}
                        loss = support_loss(current, {k: v.detach() for k, v in frozen.items()})
                    values = torch.autograd.grad(loss, list(current.values()),
                                                 create_graph=second)
                grads = dict(zip(current, values, strict=True))
                if second:
                    fast = current
            if not outer_graph:
                fast = {k: v.detach() for k, v in fast.items()}
            fast = {k: fast[k] - step_rates[k] * grads[k] for k in fast}
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
            if isinstance(part, str):
                vectors = query[f"num:{j}"]
            else:
                index, vectors = query[f"idx:{j}"], query[f"vec:{j}"]
                k = sparse_at.get(part.param)
                if k is not None and compact is not None and rows is not None:
                    d = vectors.shape[-1]
                    flat = index.reshape(-1)
                    width = rows.shape[-1]
                    same = flat.unsqueeze(1) == rows[k].unsqueeze(0)  # [M, R]
                    slots = torch.arange(width, device=flat.device)
                    slot = torch.where(same, slots, width).amin(1).clamp_max(width - 1)
                    hit = same.any(1).unsqueeze(-1)
                    vectors = torch.where(hit, compact[k][slot], vectors.reshape(-1, d))
                    vectors = vectors.reshape(*index.shape, d)
                vectors = _pool(vectors, index, part)
            parts.append(vectors.expand(n_items, -1) if vectors.dim() == 1 else vectors)
        return self._head(head, torch.cat(parts, -1))


def _batch_fields(batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"argument 'batch': expected EpisodeBatch (see episodes.collate), "
                        f"got {type(batch).__name__}")
    return (batch.users, batch.support_items, batch.support_ratings, batch.support_mask,
            batch.query_items, batch.query_ratings, batch.query_mask)


def _take(tree: Mapping[str, torch.Tensor], t: int, dims: Mapping[str, int | None] | None = None
          ) -> Params:
    """Task ``t`` of a dict of batched tensors (entries with dimension ``None`` are shared)."""
    return {k: v if dims is not None and dims[k] is None else v[t] for k, v in tree.items()}


def sparse_meta_loss(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    vectorize: bool = True,
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

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """
    users, s_items, s_ratings, s_mask, q_items, q_ratings, q_mask = _batch_fields(batch)
    plan = _check(model, params, config)
    task = _Sparse(model, plan, config)
    rates = _rates(task.names, params, config, inner_lrs)
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
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batch: EpisodeBatch,
    config: MetaConfig,
    inner_lrs: Mapping[str, torch.Tensor] | None = None,
    items: torch.Tensor | str | None = None,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Predictions of each task's adapted model, with sparse embedding adaptation.

    Same contract and same values as :func:`toyrec_helpers.meta.predict_adapted`; rows
    the support set does not touch are read from the shared tables, so no task ever holds
    a copy of a whole table. A batch of one task (a new shopper) skips ``vmap`` and uses
    plain ``torch.autograd.grad`` in the inner loop, which has less overhead per step.

    Parameters
    ----------
    model, params, batch, config, inner_lrs
        As for :func:`sparse_meta_loss`.
    items : None, "all" or torch.Tensor
        ``None``: the query items, result ``[T, Q]``. ``"all"``: every catalogue item,
        result ``[T, n_items]``. A 1-D int64 tensor ``[M]`` (the same items for every task)
        or a 2-D ``[T, M]`` tensor (per task).
    chunk_size : int or None
        Tasks adapted at once; ``None`` = all.

    Returns
    -------
    torch.Tensor
        Predicted ratings ``[T, M]``, detached.

    Introduced in chapter 7 (book/07_gpu_acceleration.ipynb).
    """
    users, s_items, s_ratings, s_mask = _batch_fields(batch)[:4]
    params = {n: p.detach() for n, p in params.items()}
    inner_lrs = None if inner_lrs is None else {n: r.detach() for n, r in inner_lrs.items()}
    plan = _check(model, params, config)
    task = _Sparse(model, plan, config)
    rates = _rates(task.names, params, config, inner_lrs)
    device = users.device
    if items is None:
        targets = batch.query_items
    elif isinstance(items, str):
        if items != "all":
            raise ValueError(f"argument 'items': expected None, 'all' or a tensor, got {items!r}")
        targets = torch.arange(model.n_items, device=device)
    else:
        targets = torch.as_tensor(items, device=device)
        if targets.dtype != torch.int64 or targets.dim() not in (1, 2):
            raise ValueError(f"argument 'items': expected int64 [M] or [T, M], got "
                             f"{targets.dtype} {tuple(targets.shape)}")
        if targets.dim() == 2 and targets.shape[0] != len(batch):
            raise ValueError(f"argument 'items': {targets.shape[0]} rows for {len(batch)} tasks")
    shared = targets.dim() == 1
    n_targets = targets.shape[-1]
    with torch.no_grad():
        support = task.prepare_support(params, rates, users, s_items)
        query, dims = task.prepare_query(params, users, targets, shared=shared)

    def task_predictions(support, s_ratings, s_mask, query, engine="func"):
        head, compact = task.adapt(params, rates, support, s_ratings, s_mask, engine,
                                   outer_graph=False)
        return task.predict(head, compact, support.get("rows"), query, n_targets)

    if len(batch) == 1:  # one task (a new shopper): the same function, without vmap
        with torch.no_grad():
            pred = task_predictions(_take(support, 0), s_ratings[0], s_mask[0],
                                    _take(query, 0, dims), "autograd")
        return pred.unsqueeze(0)
    predict = vmap(task_predictions, in_dims=(0, 0, 0, dims), chunk_size=chunk_size)
    return predict(support, s_ratings, s_mask, query).detach()
