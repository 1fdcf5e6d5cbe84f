"""Rating models that MAML adapts per user, and the names of their parameter groups.

Two models share one calling convention, ``model(users, items) -> ratings``:

* :class:`FeatureRecommender` (MeLU-style): embeddings of the user's and the item's
  features, concatenated and passed through a small MLP. A user never seen in training is
  still described by their features, which is what makes cold start possible.
* :class:`IdEmbeddingRecommender` (the "article" model): one embedding per user id and per
  item id, concatenated into a single linear layer.

Each model describes its inputs publicly: ``model.input_plan()`` is an :class:`InputPlan`
(its embedding lookups, :class:`Lookup`; its numeric columns, :class:`Numeric`; its head).
Its ``forward`` is built from that description with :func:`input_parts` and
:func:`apply_head`, the same functions that sparse adaptation (:mod:`toyrec_helpers.accel`)
uses.

Both are written so that ``torch.func.functional_call(model, params, (users, items))`` works
inside ``torch.func.vmap`` over tasks: no in-place operations, no ``EmbeddingBag``, no
data-dependent shapes. The encoded feature tables are buffers that are *not* saved in the
``state_dict`` (``persistent=False``): a checkpoint holds parameters only, and the features
come from the data.

Introduced in chapter 3 (book/03_base_recommender.ipynb).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from toyrec_helpers.features import EncodedFeatures

__all__ = [
    "FeatureRecommender", "IdEmbeddingRecommender", "InputPlan", "Lookup", "Numeric", "apply_head",
    "embed_lookup", "head_parameter_names", "input_parts", "lookup_index", "masked_mse",
    "parameter_names", "pool_lookup"
]

PARAMETER_GROUPS = ("all", "head", "last")
"""The values :func:`parameter_names` accepts for ``which``."""


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (mask 1) entries of the last dimension.

    ``((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp_min(1)``: padding entries
    (mask 0) do not count, and a task with no real entry gets 0 rather than ``NaN``.

    Parameters
    ----------
    pred, target : torch.Tensor
        Predicted and true ratings, shape ``[..., n]``.
    mask : torch.Tensor
        Same shape, 1.0 for a real rating and 0.0 for padding.

    Returns
    -------
    torch.Tensor
        Shape ``[...]``: one value per task (a scalar for the 1-D arrays of one task).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    mask = mask.to(pred.dtype)
    return ((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def parameter_names(model: nn.Module, which: str) -> list[str]:
    """Names of the parameters in one group, in ``model.named_parameters()`` order.

    Parameters
    ----------
    model : torch.nn.Module
        A model whose class defines ``decision_prefixes`` (the name prefixes of its
        decision layers), such as :class:`FeatureRecommender` or
        :class:`IdEmbeddingRecommender`.
    which : {"all", "head", "last"}
        ``"all"``: every parameter. ``"head"``: the decision layers only (``mlp.*`` of
        :class:`FeatureRecommender`, ``linear.*`` of :class:`IdEmbeddingRecommender`); the
        representation (``embeddings.*`` or the id embeddings) is left out. ``"last"``:
        the final layer of the decision layers only (the last module, in parameter
        order, whose parameters start with a decision prefix: ``mlp.4.*`` of the default
        :class:`FeatureRecommender`), as ANIL adapts (Raghu et al., 2020).

    Returns
    -------
    list of str

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if which not in PARAMETER_GROUPS:
        raise ValueError(f"argument 'which': expected one of {PARAMETER_GROUPS}, got {which!r}")
    names = [name for name, _ in model.named_parameters()]
    if which == "all":
        return names
    prefixes = getattr(model, "decision_prefixes", None)
    if not prefixes:
        raise ValueError(
            f"argument 'model': {type(model).__name__} has no 'decision_prefixes' class "
            "attribute, so its decision layers ('head') are unknown"
        )
    head = [name for name in names if name.startswith(tuple(prefixes))]
    if not head:
        raise ValueError(
            f"{type(model).__name__} has no parameter starting with {tuple(prefixes)}"
        )
    if which == "last":
        last_module = head[-1].rsplit(".", 1)[0]
        return [name for name in head if name.rsplit(".", 1)[0] == last_module]
    return head


# --------------------------------------------------------------------------- input plans


@dataclass(frozen=True)
class Lookup:
    """One embedding lookup of a model's input layer.

    ``module`` names the ``nn.Embedding`` (its weight ``[V, d]`` is :attr:`param`);
    ``table`` (``"user"``/``"item"``) says whose indices ``rows`` it reads. The embedding
    rows are ``<table>_categorical[rows][..., column]`` (a categorical column),
    ``<buffer>[rows]`` ``[..., L]`` (a multi-valued column, mean-pooled), or ``rows``
    itself when both are ``None`` (an id embedding). ``zero_pad``: row 0 (unseen,
    missing, padding) gives the zero vector and is left out of the mean.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    module: str
    table: str
    column: int | None = None
    buffer: str | None = None
    zero_pad: bool = False

    @property
    def param(self) -> str:
        """Name of the embedding weight in ``model.named_parameters()``."""
        return f"{self.module}.weight"

    @property
    def pooled(self) -> bool:
        """Whether the lookup mean-pools several rows (a multi-valued column)."""
        return self.buffer is not None


@dataclass(frozen=True)
class Numeric:
    """Numeric columns appended as they are: ``<buffer>[rows]`` of one table.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    buffer: str
    table: str


@dataclass(frozen=True)
class InputPlan:
    """How a model builds its input vector and which sub-module decides.

    ``forward(users, items)`` is ``apply_head(model, cat(input_parts(...)))``: the parts in
    ``parts`` order, concatenated along the last dimension, then the decision layers.

    ``parts``: the pieces of the input vector, in concatenation order. ``head``: the name
    of the decision sub-module (``"mlp"``, ``"linear"``), mapping ``[..., width]`` to
    ``[..., 1]``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    parts: tuple[Lookup | Numeric, ...]
    head: str

    @property
    def lookups(self) -> tuple[Lookup, ...]:
        """The embedding lookups among :attr:`parts`."""
        return tuple(p for p in self.parts if isinstance(p, Lookup))


def lookup_index(model: nn.Module, lookup: Lookup, rows: torch.Tensor) -> torch.Tensor:
    """Embedding-row indices that ``lookup`` reads for entity indices ``rows``.

    Returns ``rows`` itself (id embedding), ``[..., ]`` indices of one categorical column,
    or ``[..., L]`` indices of a multi-valued column.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if lookup.buffer is not None:
        return getattr(model, lookup.buffer)[rows]
    if lookup.column is not None:
        return getattr(model, f"{lookup.table}_categorical")[rows][..., lookup.column]
    return rows


def pool_lookup(vectors: torch.Tensor, index: torch.Tensor, lookup: Lookup) -> torch.Tensor:
    """Zero the vectors of row 0 (``zero_pad``) and mean-pool a multi-valued lookup.

    ``vectors`` ``[..., d]`` (``[..., L, d]`` when pooled) are the embedding rows of
    ``index`` (:func:`lookup_index`). Returns ``[..., d]``: ``vectors * (index > 0)``, then
    for a pooled lookup the sum over the ``L`` entries divided by the number of entries
    with ``index > 0`` (at least 1).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    if lookup.zero_pad:
        vectors = vectors * (index > 0).unsqueeze(-1).to(vectors.dtype)
    if lookup.pooled:
        count = (index > 0).to(vectors.dtype).sum(-1, keepdim=True).clamp_min(1.0)
        vectors = vectors.sum(-2) / count
    return vectors


def embed_lookup(model: nn.Module, lookup: Lookup, rows: torch.Tensor) -> torch.Tensor:
    """The ``[..., d]`` input part of one lookup for entity indices ``rows``.

    Uses the model's own embedding module (so ``functional_call`` parameters apply).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    index = lookup_index(model, lookup, rows)
    return pool_lookup(model.get_submodule(lookup.module)(index), index, lookup)


def input_parts(
    model: nn.Module, plan: InputPlan, users: torch.Tensor, items: torch.Tensor,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """The pieces of the input vector for broadcast ``users`` and ``items``, in plan order
    (numeric columns cast to ``dtype``).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    parts = []
    for part in plan.parts:
        rows = users if part.table == "user" else items
        if isinstance(part, Numeric):
            parts.append(getattr(model, part.buffer)[rows].to(dtype))
        else:
            parts.append(embed_lookup(model, part, rows))
    return parts


def head_parameter_names(model: nn.Module, plan: InputPlan) -> list[str]:
    """Names of the head's parameters, in ``model.named_parameters()`` order.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    return [n for n, _ in model.named_parameters() if n.startswith(plan.head + ".")]


def _linear_layers(module: nn.Module, prefix: str) -> list[str | None] | None:
    """Parameter prefixes of a Linear or a Sequential of Linear/ReLU (``None`` = ReLU);
    ``None`` for any other module."""
    if isinstance(module, nn.Linear):
        return [prefix]
    if not isinstance(module, nn.Sequential):
        return None
    layers: list[str | None] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            layers.append(f"{prefix}.{name}")
        elif isinstance(child, nn.ReLU):
            layers.append(None)
        else:
            return None
    return layers


def apply_head(
    model: nn.Module,
    plan: InputPlan,
    x: torch.Tensor,
    params: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The decision layers on inputs ``x`` ``[..., width]``; returns ``[...]`` ratings.

    ``params`` (optional): head parameters by full name (``"mlp.0.weight"``) to use
    instead of the module's own; a Linear or a Sequential of Linear/ReLU is then applied
    with ``torch.nn.functional.linear`` (cheap inside ``vmap``), anything else with
    ``functional_call``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    module = model.get_submodule(plan.head)
    if params is None:
        return module(x).squeeze(-1)
    layers = _linear_layers(module, plan.head)
    if layers is None:
        own = {n[len(plan.head) + 1:]: params[n] for n in head_parameter_names(model, plan)}
        return torch.func.functional_call(module, own, (x,)).squeeze(-1)
    for layer in layers:
        if layer is None:
            x = torch.relu(x)
        else:
            x = nn.functional.linear(x, params[f"{layer}.weight"], params.get(f"{layer}.bias"))
    return x.squeeze(-1)


def _plan_forward(
    model: nn.Module, plan: InputPlan, users: torch.Tensor, items: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``forward`` of a model described by ``plan``."""
    users, items = torch.broadcast_tensors(users, items)
    return apply_head(model, plan, torch.cat(input_parts(model, plan, users, items, dtype), -1))


def _module_key(table: str, column: str, taken: set[str]) -> str:
    """A ``ModuleDict`` key for one feature column: ``"<table>_<column>"``, sanitised."""
    key = f"{table}_{re.sub(r'[^0-9A-Za-z_]', '_', column)}"
    if key in taken:
        raise ValueError(
            f"{table} feature column {column!r} gives the embedding name {key!r}, which "
            "another column already uses; rename one of the columns"
        )
    taken.add(key)
    return key


def _check_features(features: EncodedFeatures, name: str) -> None:
    """Raise a clear error if an EncodedFeatures is not what the model needs."""
    if not isinstance(features, EncodedFeatures):
        raise TypeError(
            f"argument {name!r}: expected EncodedFeatures, got {type(features).__name__}"
        )
    n = features.n
    cat = features.categorical
    if cat.dtype != torch.int64 or cat.dim() != 2:
        raise ValueError(f"{name}.categorical: expected int64 [n, n_cat], got {cat.dtype} "
                         f"{tuple(cat.shape)}")
    if cat.shape[1] != len(features.categorical_sizes):
        raise ValueError(f"{name}: {cat.shape[1]} categorical columns but "
                         f"{len(features.categorical_sizes)} categorical_sizes")
    for j, size in enumerate(features.categorical_sizes):
        column = cat[:, j]
        if n and (int(column.min()) < 0 or int(column.max()) >= size):
            raise ValueError(f"{name}: categorical column {features.categorical_names[j]!r} "
                             f"has indices outside 0..{size - 1}")
    if len(features.multi) != len(features.multi_sizes):
        raise ValueError(f"{name}: {len(features.multi)} multi-valued columns but "
                         f"{len(features.multi_sizes)} multi_sizes")
    for j, (table, size) in enumerate(zip(features.multi, features.multi_sizes, strict=True)):
        if table.dtype != torch.int64 or table.dim() != 2 or table.shape[0] != n:
            raise ValueError(f"{name}.multi[{j}]: expected int64 [{n}, L], got {table.dtype} "
                             f"{tuple(table.shape)}")
        if table.numel() and (int(table.min()) < 0 or int(table.max()) >= size):
            raise ValueError(f"{name}: multi-valued column {features.multi_names[j]!r} has "
                             f"indices outside 0..{size - 1}")
    num = features.numeric
    if num.dim() != 2 or num.shape[0] != n or not num.is_floating_point():
        raise ValueError(f"{name}.numeric: expected float [{n}, n_num], got {num.dtype} "
                         f"{tuple(num.shape)}")


class FeatureRecommender(nn.Module):
    """MeLU-style rating model: feature embeddings -> MLP -> rating.

    Every categorical column of the user and item tables gets an ``nn.Embedding``; a
    multi-valued column (an item's themes, say) gets one too, and its entries are
    mean-pooled. Index 0 (unseen value, missing value or padding) always contributes a zero
    vector and is left out of the mean, so a row with no known value gives a zero vector.
    Numeric columns are appended as they are. The concatenation goes through an MLP with
    ReLU activations and a linear output whose bias starts at ``rating_mean``.

    Parameters
    ----------
    user_features, item_features : EncodedFeatures
        Encoded user and item tables (row ``i`` = user or item index ``i``). They are kept
        as non-persistent buffers: they move with ``.to(device)`` but are not part of the
        ``state_dict``.
    embedding_dim : int
        Size of every embedding vector.
    hidden : tuple of int
        Widths of the hidden layers (may be empty: then a single linear layer).
    rating_mean : float
        Initial output bias, so that an untrained model predicts about the mean rating.

    Attributes
    ----------
    embeddings : torch.nn.ModuleDict
        The representation: one embedding per feature column, named ``user_<column>`` or
        ``item_<column>``; parameter names start with ``embeddings.``.
    mlp : torch.nn.Sequential
        The decision layers; parameter names start with ``mlp.``.
    n_users, n_items : int
        Table sizes.

    Notes
    -----
    ``forward(users, items)`` takes int64 index tensors, ``users`` broadcastable against
    ``items``, and returns float ratings of the broadcast shape. It works with
    ``torch.func.functional_call`` inside ``torch.func.vmap``, and is built from
    :meth:`input_plan`.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """

    decision_prefixes: ClassVar[tuple[str, ...]] = ("mlp.",)

    def __init__(
        self,
        user_features: EncodedFeatures,
        item_features: EncodedFeatures,
        embedding_dim: int = 8,
        hidden: tuple[int, ...] = (64, 32),
        rating_mean: float = 3.0,
    ) -> None:
        super().__init__()
        _check_features(user_features, "user_features")
        _check_features(item_features, "item_features")
        if embedding_dim < 1:
            raise ValueError(f"argument 'embedding_dim': expected >= 1, got {embedding_dim}")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"argument 'hidden': expected positive widths, got {hidden}")
        self.embedding_dim = int(embedding_dim)
        self.hidden = hidden
        self.rating_mean = float(rating_mean)
        self.n_users = user_features.n
        self.n_items = item_features.n
        self.embeddings = nn.ModuleDict()
        parts: list[Lookup | Numeric] = []
        taken: set[str] = set()
        width = 0
        for table, features in (("user", user_features), ("item", item_features)):
            for j, (column, size) in enumerate(
                zip(features.categorical_names, features.categorical_sizes, strict=True)
            ):
                key = _module_key(table, column, taken)
                self.embeddings[key] = nn.Embedding(size, embedding_dim)
                parts.append(Lookup(f"embeddings.{key}", table, column=j, zero_pad=True))
            for j, (column, size) in enumerate(
                zip(features.multi_names, features.multi_sizes, strict=True)
            ):
                key = _module_key(table, column, taken)
                self.embeddings[key] = nn.Embedding(size, embedding_dim)
                buffer = f"{table}_multi_{j}"
                self.register_buffer(buffer, features.multi[j].clone(), persistent=False)
                parts.append(Lookup(f"embeddings.{key}", table, buffer=buffer, zero_pad=True))
            self.register_buffer(
                f"{table}_categorical", features.categorical.clone(), persistent=False
            )
            self.register_buffer(
                f"{table}_numeric", features.numeric.clone().float(), persistent=False
            )
            parts.append(Numeric(f"{table}_numeric", table))
            n_lookups = len(features.categorical_names) + len(features.multi_names)
            width += n_lookups * embedding_dim + features.numeric.shape[1]
        # width 0 (ids and ratings only): the first layer sees an empty input, so the model
        # predicts one learned rating for every pair, and adaptation moves it per user
        self.input_width = width
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        output = nn.Linear(width, 1)
        with torch.no_grad():
            output.bias.fill_(self.rating_mean)
        layers.append(output)
        self.mlp = nn.Sequential(*layers)
        self._plan = InputPlan(tuple(parts), "mlp")
        self._model_config = {
            "class": type(self).__name__,
            "embedding_dim": self.embedding_dim,
            "hidden": list(hidden),
            "rating_mean": self.rating_mean,
            "n_users": self.n_users,
            "n_items": self.n_items,
            **{
                f"{table}_{part}": list(getattr(features, part))
                for table, features in (("user", user_features), ("item", item_features))
                for part in ("categorical_names", "categorical_sizes", "multi_names",
                             "multi_sizes", "numeric_names")
            },
        }

    @property
    def model_config(self) -> dict[str, Any]:
        """JSON-ready description of the architecture (for checkpoints)."""
        return dict(self._model_config)

    def input_plan(self) -> InputPlan:
        """The public description of the inputs: per table its categorical lookups, its
        multi-valued (mean-pooled) lookups and its numeric columns, then the head ``mlp``.
        :meth:`forward` is built from it."""
        return self._plan

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of ``items`` by ``users``.

        Parameters
        ----------
        users, items : torch.Tensor
            int64 indices; ``users`` broadcastable against ``items``.

        Returns
        -------
        torch.Tensor
            Ratings, of the broadcast shape.
        """
        return _plan_forward(self, self._plan, users, items, self.mlp[0].weight.dtype)


class IdEmbeddingRecommender(nn.Module):
    """The "article" model: user-id and item-id embeddings into one linear layer.

    ``rating = linear([user_embedding[u], item_embedding[i]])``. Because the layer is
    linear, this is a learned user bias plus a learned item bias (there is no user-item
    interaction term), and a brand-new user is only an untrained row of
    ``user_embedding``: the model to compare the feature model against.

    Parameters
    ----------
    n_users, n_items : int
        Number of user and item ids.
    embedding_dim : int
        Size of each embedding.
    rating_mean : float
        Initial bias of the linear layer.

    Attributes
    ----------
    user_embedding, item_embedding : torch.nn.Embedding
        The representation.
    linear : torch.nn.Linear
        The decision layer (the ``"head"`` group).

    Introduced in chapter 3 (book/03b_honest_baselines.ipynb).
    """

    decision_prefixes: ClassVar[tuple[str, ...]] = ("linear.",)

    def __init__(
        self, n_users: int, n_items: int, embedding_dim: int = 16, rating_mean: float = 3.0
    ) -> None:
        super().__init__()
        for name, value in (("n_users", n_users), ("n_items", n_items),
                            ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f"argument {name!r}: expected >= 1, got {value}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.embedding_dim = int(embedding_dim)
        self.rating_mean = float(rating_mean)
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        self.linear = nn.Linear(2 * self.embedding_dim, 1)
        with torch.no_grad():
            self.linear.bias.fill_(self.rating_mean)
        self._plan = InputPlan(
            (Lookup("user_embedding", "user"), Lookup("item_embedding", "item")), "linear"
        )

    def input_plan(self) -> InputPlan:
        """The public description of the inputs: the user-id and item-id lookups, then the
        head ``linear``. :meth:`forward` is built from it."""
        return self._plan

    @property
    def model_config(self) -> dict[str, Any]:
        """JSON-ready description of the architecture (for checkpoints)."""
        return {
            "class": type(self).__name__,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "embedding_dim": self.embedding_dim,
            "rating_mean": self.rating_mean,
        }

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of ``items`` by ``users`` (same conventions as
        :meth:`FeatureRecommender.forward`)."""
        return _plan_forward(self, self._plan, users, items, self.linear.weight.dtype)
