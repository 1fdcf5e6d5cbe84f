"""Small synthetic features and episodes for the tests of models, meta and checkpoints.

Not a pytest conftest: import it explicitly (``from synthetic import ...``; pytest puts
the tests folder on ``sys.path`` because it has no ``__init__.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from toyrec_helpers.episodes import Episode
from toyrec_helpers.features import EncodedFeatures


def make_features(
    n_users: int = 24, n_items: int = 30, seed: int = 0
) -> tuple[EncodedFeatures, EncodedFeatures]:
    """User and item features with every column kind, zeros (unseen) included.

    Users: 2 categorical columns, 1 numeric. Items: 3 categorical, 1 multi-valued of width 3
    (some rows all padding), 2 numeric.
    """
    gen = torch.Generator().manual_seed(seed)
    user_sizes = (4, 5)
    item_sizes = (6, 7, 4)
    users = EncodedFeatures(
        categorical=torch.stack([torch.randint(0, s, (n_users,), generator=gen)
                                 for s in user_sizes], 1),
        categorical_names=("age band", "region"),
        categorical_sizes=user_sizes,
        multi=(),
        multi_names=(),
        multi_sizes=(),
        numeric=torch.randn(n_users, 1, generator=gen),
        numeric_names=("tenure",),
    )
    themes = torch.randint(1, 8, (n_items, 3), generator=gen)
    themes[torch.rand(n_items, 3, generator=gen) < 0.3] = 0  # padding / unseen
    themes[0] = 0  # one item with no known theme
    items = EncodedFeatures(
        categorical=torch.stack([torch.randint(0, s, (n_items,), generator=gen)
                                 for s in item_sizes], 1),
        categorical_names=("category", "brand", "price_band"),
        categorical_sizes=item_sizes,
        multi=(themes,),
        multi_names=("themes",),
        multi_sizes=(8,),
        numeric=torch.randn(n_items, 2, generator=gen),
        numeric_names=("price", "release_date"),
    )
    return users, items


def make_episodes(
    user_features: EncodedFeatures,
    item_features: EncodedFeatures,
    users: np.ndarray | None = None,
    k_range: tuple[int, int] = (3, 5),
    q_range: tuple[int, int] = (4, 8),
    seed: int = 0,
) -> list[Episode]:
    """Episodes of varying support and query sizes (so batches need padding).

    Ratings follow ``3 + taste_u * score_i + noise`` where ``score_i`` comes from the item's
    category and numeric features and ``taste_u`` is +1 or -1 per user, not visible in the
    user's features: a user is only understood after seeing their support ratings.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = user_features.n, item_features.n
    users = np.arange(n_users) if users is None else np.asarray(users)
    category_score = np.linspace(-1.0, 1.0, item_features.categorical_sizes[0])
    score = (category_score[item_features.categorical[:, 0].numpy()]
             + 0.5 * item_features.numeric[:, 0].numpy())
    taste = np.where(np.random.default_rng(1234).random(n_users) < 0.5, -1.0, 1.0)
    episodes = []
    for u in users:
        k = int(rng.integers(k_range[0], k_range[1] + 1))
        q = int(rng.integers(q_range[0], q_range[1] + 1))
        chosen = rng.choice(n_items, size=k + q, replace=False).astype(np.int64)
        ratings = (3.0 + taste[u] * score[chosen] + 0.1 * rng.standard_normal(k + q))
        ratings = ratings.astype(np.float32)
        episodes.append(Episode(user=int(u), support_items=chosen[:k],
                                support_ratings=ratings[:k], query_items=chosen[k:],
                                query_ratings=ratings[k:]))
    return episodes


def small_problem() -> tuple[tuple[EncodedFeatures, EncodedFeatures], list[Episode]]:
    """The shared small problem of the model and meta-learning tests: features of 24 users
    and 30 items, and one episode per user (fresh objects on every call)."""
    features = make_features(n_users=24, n_items=30, seed=0)
    return features, make_episodes(*features, seed=0)
