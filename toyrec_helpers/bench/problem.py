"""Synthetic benchmark problems: model, meta-batch and one new shopper of realistic sizes.

Random features and episodes with exactly the shapes of a real data set (MeLU on
MovieLens-1M, the book's ToyShop, or a tiny one for tests), so that the benchmark and the
data-parallel demo need no data set and no training first.

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toyrec_helpers.checks import check_choice, check_int
from toyrec_helpers.episodes import Episode, EpisodeBatch, collate
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.hybrid import HybridRecommender
from toyrec_helpers.models import FeatureRecommender

__all__ = ["ADAPTS", "IMPLS", "LATENCY_K", "ORDERS", "SIZES", "BenchSizes", "make_hybrid",
           "make_problem"]

IMPLS = ("loop", "vmap", "compiled")
"""Implementations of the meta-loss: per-task loop, ``vmap``, ``torch.compile`` of vmap."""
ORDERS = ("second", "first")
"""Orders of the meta-gradient."""
ADAPTS = ("all_dense", "all_sparse", "head")
"""What the inner loop adapts, and how (dense or sparse embedding tables)."""


@dataclass(frozen=True)
class BenchSizes:
    """Sizes of a synthetic benchmark problem.

    Attributes
    ----------
    name : str
        Label.
    n_users, n_items : int
        Table sizes.
    user_categorical, item_categorical : tuple of int
        Vocabulary sizes (index 0 included) of the categorical columns.
    user_multi, item_multi : tuple of (int, int)
        ``(vocabulary size, width)`` of each multi-valued column.
    user_numeric, item_numeric : int
        Numbers of numeric columns.
    embedding_dim : int
        Embedding size.
    hidden : tuple of int
        Hidden widths of the MLP.
    support, query : int
        Ratings per task in the support and query sets.
    inner_steps : int
        Inner-loop steps.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """

    name: str
    n_users: int
    n_items: int
    user_categorical: tuple[int, ...]
    user_multi: tuple[tuple[int, int], ...]
    user_numeric: int
    item_categorical: tuple[int, ...]
    item_multi: tuple[tuple[int, int], ...]
    item_numeric: int
    embedding_dim: int
    hidden: tuple[int, ...]
    support: int
    query: int
    inner_steps: int


SIZES: dict[str, BenchSizes] = {
    # MeLU on MovieLens-1M: user gender, age, occupation, zip code; item rating class,
    # director (categorical), genres and actors (multi-valued, up to 3), and the year:
    # 8 embedding tables of width 32 + 1 numeric = 257 inputs, MLP 256-128-64-1.
    "melu": BenchSizes(
        name="melu", n_users=6040, n_items=3706,
        user_categorical=(3, 8, 22, 3403), user_multi=(), user_numeric=0,
        item_categorical=(7, 2187), item_multi=((26, 3), (8031, 3)), item_numeric=1,
        embedding_dim=32, hidden=(256, 128, 64), support=10, query=10, inner_steps=5,
    ),
    # The ToyShop model of the book.
    "toyshop": BenchSizes(
        name="toyshop", n_users=3000, n_items=600,
        user_categorical=(5, 6), user_multi=(), user_numeric=1,
        item_categorical=(12, 25, 5), item_multi=((15, 3),), item_numeric=2,
        embedding_dim=8, hidden=(64, 32), support=5, query=10, inner_steps=5,
    ),
    # Tiny: for tests (quick mode).
    "tiny": BenchSizes(
        name="tiny", n_users=40, n_items=50,
        user_categorical=(3, 4), user_multi=(), user_numeric=1,
        item_categorical=(5, 6), item_multi=((6, 2),), item_numeric=1,
        embedding_dim=4, hidden=(8,), support=4, query=4, inner_steps=2,
    ),
}
"""The ``--sizes`` choices of ``python -m toyrec_helpers bench``."""

LATENCY_K = 5
"""Support ratings of the one-new-shopper latency measurement."""


def _features(
    n: int,
    categorical: tuple[int, ...],
    multi: tuple[tuple[int, int], ...],
    numeric: int,
    prefix: str,
    gen: torch.Generator,
) -> EncodedFeatures:
    """Random encoded features: categorical in ``1..size-1`` (a few unseen zeros)."""
    cat = [torch.randint(1, s, (n,), generator=gen) for s in categorical]
    cat = [c * (torch.rand(n, generator=gen) > 0.02) for c in cat]
    multi_tables = []
    for size, width in multi:
        table = torch.randint(1, size, (n, width), generator=gen)
        table[:, 1:] *= torch.rand(n, width - 1, generator=gen) > 0.4  # 1..width values
        multi_tables.append(table)
    return EncodedFeatures(
        categorical=torch.stack(cat, 1) if cat else torch.zeros((n, 0), dtype=torch.int64),
        categorical_names=tuple(f"{prefix}_cat{j}" for j in range(len(categorical))),
        categorical_sizes=tuple(categorical),
        multi=tuple(multi_tables),
        multi_names=tuple(f"{prefix}_multi{j}" for j in range(len(multi))),
        multi_sizes=tuple(size for size, _ in multi),
        numeric=torch.randn(n, numeric, generator=gen),
        numeric_names=tuple(f"{prefix}_num{j}" for j in range(numeric)),
    )


def make_problem(
    sizes: BenchSizes | str, meta_batch: int, seed: int = 0
) -> tuple[FeatureRecommender, EpisodeBatch, EpisodeBatch]:
    """A synthetic model, meta-batch and one-new-shopper task of the given sizes.

    Parameters
    ----------
    sizes : BenchSizes or str
        Sizes, or a key of :data:`SIZES`.
    meta_batch : int
        Tasks in the meta-batch.
    seed : int
        Seed of the features, the episodes and the model's initialisation.

    Returns
    -------
    model : FeatureRecommender
        float32, on the CPU.
    batch : EpisodeBatch
        ``meta_batch`` tasks with ``sizes.support`` support and ``sizes.query`` query
        ratings (random distinct items, ratings 1..5).
    shopper : EpisodeBatch
        One more task with ``min(5, sizes.support)`` support ratings.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if isinstance(sizes, str):
        sizes = SIZES[check_choice(sizes, "argument 'sizes'", tuple(sorted(SIZES)))]
    check_int(meta_batch, "argument 'meta_batch'", 1)
    gen = torch.Generator().manual_seed(seed)
    users = _features(sizes.n_users, sizes.user_categorical, sizes.user_multi,
                      sizes.user_numeric, "user", gen)
    items = _features(sizes.n_items, sizes.item_categorical, sizes.item_multi,
                      sizes.item_numeric, "item", gen)
    torch.manual_seed(seed)
    model = FeatureRecommender(users, items, embedding_dim=sizes.embedding_dim,
                               hidden=sizes.hidden)
    rng = np.random.default_rng(seed)

    def episode(k: int, q: int) -> Episode:
        chosen = rng.choice(sizes.n_items, size=k + q, replace=False).astype(np.int64)
        ratings = rng.integers(1, 6, size=k + q).astype(np.float32)
        return Episode(user=int(rng.integers(sizes.n_users)), support_items=chosen[:k],
                       support_ratings=ratings[:k], query_items=chosen[k:],
                       query_ratings=ratings[k:])

    batch = collate([episode(sizes.support, sizes.query) for _ in range(meta_batch)])
    shopper = collate([episode(min(LATENCY_K, sizes.support), sizes.query)])
    return model, batch, shopper


def make_hybrid(
    sizes: BenchSizes | str, seed: int = 0
) -> tuple[HybridRecommender, torch.Tensor, torch.Tensor]:
    """A synthetic hybrid model (:class:`~toyrec_helpers.hybrid.HybridRecommender`) of the
    given sizes, with random rating counts per item, and one new shopper's support set.

    Returns
    -------
    model : HybridRecommender
        float32, on the CPU (``identity_dim = embedding_dim``).
    support_items, support_ratings : torch.Tensor
        ``LATENCY_K`` distinct items and their ratings (1..5).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    if isinstance(sizes, str):
        sizes = SIZES[check_choice(sizes, "argument 'sizes'", tuple(sorted(SIZES)))]
    gen = torch.Generator().manual_seed(seed)
    users = _features(sizes.n_users, sizes.user_categorical, sizes.user_multi,
                      sizes.user_numeric, "user", gen)
    items = _features(sizes.n_items, sizes.item_categorical, sizes.item_multi,
                      sizes.item_numeric, "item", gen)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = HybridRecommender(users, items, rng.poisson(20.0, sizes.n_items),
                              embedding_dim=sizes.embedding_dim, hidden=sizes.hidden,
                              identity_dim=sizes.embedding_dim)
    k = min(LATENCY_K, sizes.n_items)
    support = torch.from_numpy(rng.choice(sizes.n_items, size=k, replace=False).astype(np.int64))
    ratings = torch.from_numpy(rng.integers(1, 6, k).astype(np.float32))
    return model, support, ratings
