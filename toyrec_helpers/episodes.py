"""Users as tasks: user-disjoint splits, support/query episodes, and padded batches.

Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class UserSplit:
    """Disjoint groups of user indices: meta-train, meta-validation, meta-test.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_users(
    n_users: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> UserSplit:
    """Split users ``0..n_users-1`` at random into three disjoint, sorted groups.

    Parameters
    ----------
    n_users : int
        Number of users.
    fractions : tuple of three floats
        Shares of meta-train, meta-validation and meta-test users; must sum to 1.
    seed : int
        Seed of the permutation.

    Returns
    -------
    UserSplit

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """
    if n_users < 3:
        raise ValueError(f"n_users must be at least 3 to make three groups, got {n_users}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be three non-negative shares summing to 1, got {fractions}"
        )
    perm = np.random.default_rng(seed).permutation(n_users)
    n_train = int(round(fractions[0] * n_users))
    n_val = int(round(fractions[1] * n_users))
    return UserSplit(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val :]),
    )


@dataclass(frozen=True)
class Episode:
    """One user as one task: a support set to adapt on and a query set to score.

    Attributes
    ----------
    user : int
        User index.
    support_items, support_ratings : numpy.ndarray
        The first ``K`` ratings (int64 item indices, float32 ratings), in time order.
    query_items, query_ratings : numpy.ndarray
        The ratings that follow.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """

    user: int
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray


@dataclass(frozen=True)
class EpisodeSet:
    """Episodes of a group of users, and the users skipped for having too few ratings.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """

    episodes: list[Episode]
    skipped_users: np.ndarray
    k_support: int
    n_query: int | None

    @property
    def n_skipped(self) -> int:
        """How many users were skipped (fewer than ``k_support + n_query`` ratings)."""
        return int(len(self.skipped_users))

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def users(self) -> np.ndarray:
        """User index of each episode."""
        return np.array([e.user for e in self.episodes], dtype=np.int64)


def make_episodes(
    interactions: pd.DataFrame,
    users: np.ndarray,
    k_support: int,
    n_query: int | None = None,
    min_query: int = 1,
    seed: int = 0,
) -> EpisodeSet:
    """Cut each user's ratings into a support set (first ``K``) and a query set.

    Parameters
    ----------
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions` (columns ``user``, ``item``,
        ``rating`` and optionally ``timestamp``, sorted by user then time).
    users : numpy.ndarray
        User indices to make episodes for (for example ``split.test``).
    k_support : int
        Support size ``K`` (the first ``K`` ratings in time order).
    n_query : int, optional
        Query size ``Q`` (the next ``Q`` ratings). ``None`` takes all remaining ratings.
    min_query : int
        With ``n_query=None``, the fewest query ratings a user must have.
    seed : int
        Used only when there is no ``timestamp`` column: each user's ratings are then put
        in a random (seeded) order before cutting.

    Returns
    -------
    EpisodeSet
        Episodes in the order of ``users``; users with fewer than ``K + Q`` ratings are
        skipped and listed in ``skipped_users``, never silently dropped.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """
    if k_support < 0:
        raise ValueError(f"k_support must be >= 0, got {k_support}")
    if n_query is not None and n_query < 1:
        raise ValueError(f"n_query must be >= 1 or None, got {n_query}")
    need = k_support + (n_query if n_query is not None else min_query)
    items, ratings, starts, ends, users = _user_histories(interactions, users, seed)
    episodes, skipped = [], []
    for user, lo, hi in zip(users, starts, ends, strict=True):
        if hi - lo < need:
            skipped.append(int(user))
            continue
        mid = lo + k_support
        stop = hi if n_query is None else mid + n_query
        episodes.append(
            Episode(
                user=int(user),
                support_items=items[lo:mid].copy(),
                support_ratings=ratings[lo:mid].copy(),
                query_items=items[mid:stop].copy(),
                query_ratings=ratings[mid:stop].copy(),
            )
        )
    return EpisodeSet(
        episodes=episodes,
        skipped_users=np.array(skipped, dtype=np.int64),
        k_support=k_support,
        n_query=n_query,
    )


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes padded to common lengths, with masks (dimension 0 = task).

    Attributes
    ----------
    users : torch.Tensor
        int64 ``[T]``.
    support_items, support_ratings, support_mask : torch.Tensor
        ``[T, S]``: int64 item indices (padding holds item 0), float32 ratings (padding
        0.0), float32 mask (1.0 = real rating, 0.0 = padding).
    query_items, query_ratings, query_mask : torch.Tensor
        ``[T, Q]``, likewise.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """

    users: torch.Tensor
    support_items: torch.Tensor
    support_ratings: torch.Tensor
    support_mask: torch.Tensor
    query_items: torch.Tensor
    query_ratings: torch.Tensor
    query_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str) -> EpisodeBatch:
        """The same batch with every tensor on ``device``."""
        return EpisodeBatch(**{k: v.to(device) for k, v in vars(self).items()})

    def select(self, index: torch.Tensor | np.ndarray | slice) -> EpisodeBatch:
        """The sub-batch of the tasks at ``index`` (same padding)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return EpisodeBatch(**{k: v[index] for k, v in vars(self).items()})


def _pad(rows: Sequence[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), width), dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
        mask[i, : len(r)] = 1.0
    return out, mask


def collate(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Pad a list of episodes into one :class:`EpisodeBatch`.

    Parameters
    ----------
    episodes : sequence of Episode
        Tasks of possibly different support and query sizes.

    Returns
    -------
    EpisodeBatch
        Support padded to the longest support, query to the longest query.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """
    if len(episodes) == 0:
        raise ValueError("collate needs at least one episode")
    s_items, s_mask = _pad([e.support_items for e in episodes], torch.int64)
    s_ratings, _ = _pad([e.support_ratings for e in episodes], torch.float32)
    q_items, q_mask = _pad([e.query_items for e in episodes], torch.int64)
    q_ratings, _ = _pad([e.query_ratings for e in episodes], torch.float32)
    users = torch.tensor([e.user for e in episodes], dtype=torch.int64)
    return EpisodeBatch(users=users, support_items=s_items, support_ratings=s_ratings,
                        support_mask=s_mask, query_items=q_items, query_ratings=q_ratings,
                        query_mask=q_mask)


def candidate_items(episode: Episode, n_items: int) -> np.ndarray:
    """The full-catalogue candidates of a user: every item not in their support set.

    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """
    keep = np.ones(n_items, dtype=bool)
    keep[episode.support_items] = False
    return np.flatnonzero(keep)


def candidate_mask(batch: EpisodeBatch, n_items: int) -> torch.Tensor:
    """Boolean ``[T, n_items]``: True where an item is a candidate (not in the support set).

    The vectorised form of :func:`candidate_items`.
    Introduced in chapter 2 (book/02_users_as_tasks.ipynb).
    """
    in_support = torch.zeros(
        (len(batch), n_items), dtype=torch.float32, device=batch.support_items.device
    )
    in_support.scatter_add_(1, batch.support_items, batch.support_mask)
    return in_support == 0


Items = torch.Tensor | str | None


def check_batch(batch: object) -> EpisodeBatch:
    """``batch`` if it is an :class:`~toyrec_helpers.episodes.EpisodeBatch`.

    Introduced in chapter 4 (book/04_maml_inner_loop.ipynb).
    """
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"argument 'batch': expected EpisodeBatch (see episodes.collate), "
                        f"got {type(batch).__name__}")
    return batch


def resolve_items(batch: EpisodeBatch, items: Items, n_items: int) -> torch.Tensor:
    """The items to score for each task, as an int64 ``[T, M]`` tensor.

    Parameters
    ----------
    batch : EpisodeBatch
        The tasks.
    items : None, "all" or torch.Tensor
        ``None``: each task's query items. ``"all"``: every catalogue item. An int64
        tensor ``[M]`` (the same items for every task) or ``[T, M]`` (per task).
    n_items : int
        Catalogue size (indices must lie in ``0..n_items-1``).

    Returns
    -------
    torch.Tensor
        int64 ``[T, M]`` (a 1-D ``items`` is expanded, not copied).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    check_batch(batch)
    n_tasks = len(batch)
    if items is None:
        return batch.query_items
    if isinstance(items, str):
        if items != "all":
            raise ValueError(f"argument 'items': expected None, 'all' or a tensor, got {items!r}")
        return torch.arange(n_items, device=batch.users.device).expand(n_tasks, n_items)
    targets = torch.as_tensor(items, device=batch.users.device)
    if targets.dtype != torch.int64 or targets.dim() not in (1, 2):
        raise ValueError(f"argument 'items': expected int64 [M] or [T, M], got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    if targets.dim() == 2 and targets.shape[0] != n_tasks:
        raise ValueError(f"argument 'items': {targets.shape[0]} rows for {n_tasks} tasks")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_items):
        raise ValueError(f"argument 'items': indices must lie in 0..{n_items - 1}, got "
                         f"{int(targets.min())}..{int(targets.max())}")
    if targets.dim() == 1:
        targets = targets.expand(n_tasks, -1)
    return targets


def _user_histories(
    interactions: pd.DataFrame, users: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ratings in time order (seeded random order without timestamps):
    ``(items, ratings, starts, ends, users)`` as in :func:`make_episodes`."""
    user_col = interactions["user"].to_numpy()
    items = interactions["item"].to_numpy(dtype=np.int64)
    ratings = interactions["rating"].to_numpy(dtype=np.float32)
    if "timestamp" not in interactions.columns:
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(user_col)), user_col))
        user_col, items, ratings = user_col[order], items[order], ratings[order]
    elif len(user_col) > 1 and (np.diff(user_col) < 0).any():
        raise ValueError("interactions must be sorted by user (as Dataset.interactions is)")
    users = np.asarray(users, dtype=np.int64)
    starts = np.searchsorted(user_col, users, side="left")
    ends = np.searchsorted(user_col, users, side="right")
    return items, ratings, starts, ends, users


class EpisodeSampler:
    """Episodes drawn afresh from each user's whole history: a random point in time,
    support = the ``K`` ratings before it, query = up to ``Q`` ratings after it.

    Meta-training with fixed episodes (:func:`make_episodes`: the first ``K`` ratings and
    the next ``Q``, the same every epoch) shows the outer loop one slice of each user;
    a sampler shows it a new slice every epoch, and with a range of ``K`` it trains one
    initialisation for every support size. For each user and draw: ``K`` is uniform on
    ``k_range`` (capped so that at least ``min_query`` ratings follow), the cut point
    ``t`` is uniform on ``K .. n - min_query`` (``n`` = the user's number of ratings),
    support = ratings ``t-K .. t-1`` and query = ratings ``t .. t+Q-1``, in time order.

    Calling the sampler with an epoch number gives that epoch's episodes, one per user,
    from a ``numpy`` generator seeded with ``(seed, epoch)``: the same seed and epoch
    always give the same episodes, whatever was drawn before.
    :func:`toyrec_helpers.meta.meta_train` accepts a sampler in place of a fixed list.

    Parameters
    ----------
    interactions : pandas.DataFrame
        :attr:`toyrec_helpers.data.Dataset.interactions`.
    users : numpy.ndarray
        The users to draw from (e.g. ``split.train``).
    k_range : int or (int, int)
        Support size, or the inclusive range it is drawn from (e.g. ``(1, 10)``).
    n_query : int
        Most query ratings per episode ``Q``.
    seed : int
        Seed of the draws (and of the rating order when there are no timestamps).
    min_query : int
        Fewest query ratings an episode has; users with fewer than
        ``min(k_range) + min_query`` ratings are skipped (:attr:`skipped_users`).

    Introduced in chapter 5 (book/05_maml_outer_loop.ipynb).
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        users: np.ndarray | Sequence[int],
        k_range: int | tuple[int, int],
        n_query: int = 10,
        seed: int = 0,
        min_query: int = 1,
    ) -> None:
        lo, hi = (k_range, k_range) if isinstance(k_range, (int, np.integer)) else k_range
        lo, hi = int(lo), int(hi)
        if lo < 1 or hi < lo:
            raise ValueError(f"argument 'k_range': expected K >= 1 or (low, high) with "
                             f"1 <= low <= high, got {k_range!r}")
        if int(n_query) < 1 or int(min_query) < 1 or int(min_query) > int(n_query):
            raise ValueError(f"arguments 'n_query', 'min_query': expected 1 <= min_query <= "
                             f"n_query, got {n_query!r}, {min_query!r}")
        self.k_range = (lo, hi)
        self.n_query = int(n_query)
        self.min_query = int(min_query)
        self.seed = int(seed)
        items, ratings, starts, ends, users = _user_histories(interactions, users, seed)
        enough = (ends - starts) >= lo + self.min_query
        self._items, self._ratings = items, ratings
        self._starts, self._ends, self.users = starts[enough], ends[enough], users[enough]
        self.skipped_users = users[~enough]
        if len(self.users) == 0:
            raise ValueError(f"no user has min(k_range) + min_query = {lo + self.min_query} "
                             "ratings")

    def __len__(self) -> int:
        return int(len(self.users))

    def sample(self, rng: np.random.Generator, per_user: int = 1) -> list[Episode]:
        """``per_user`` episodes of every user (user-major order), drawn with ``rng``."""
        n = np.repeat(self._ends - self._starts, per_user)
        starts = np.repeat(self._starts, per_user)
        users = np.repeat(self.users, per_user)
        lo, hi = self.k_range
        k = rng.integers(lo, hi + 1, size=len(n))
        k = np.minimum(k, n - self.min_query)
        cut = k + (rng.random(len(n)) * (n - self.min_query - k + 1)).astype(np.int64)
        stop = np.minimum(cut + self.n_query, n)
        it, rt = self._items, self._ratings
        return [Episode(int(u), it[s + c - kk:s + c].copy(), rt[s + c - kk:s + c].copy(),
                        it[s + c:s + e].copy(), rt[s + c:s + e].copy())
                for u, s, kk, c, e in zip(users, starts, k, cut, stop, strict=True)]

    def __call__(self, epoch: int) -> list[Episode]:
        """The episodes of ``epoch``: one per user, seeded by ``(seed, epoch)``."""
        return self.sample(np.random.default_rng([self.seed, 0, int(epoch)]))

    def fixed(self, per_user: int = 1, draw: int = 0) -> list[Episode]:
        """A fixed set of ``per_user`` episodes per user (e.g. for validation), seeded by
        ``(seed, draw)``, a stream separate from the epochs' ``(seed, epoch)``)."""
        return self.sample(np.random.default_rng([self.seed, 1, int(draw)]), per_user)
