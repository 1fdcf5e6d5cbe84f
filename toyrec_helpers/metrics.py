"""Per-user evaluation metrics and bootstrap confidence intervals.

Every metric returns one value per user (task), shape ``[T]``, so that confidence intervals
can be bootstrapped over users. The book reports the *mean over users* of each metric (not a
pooled average over all ratings), together with a percentile-bootstrap interval from
:func:`bootstrap_ci` or, across training seeds, :func:`bootstrap_ci_pooled`.

A user for whom a metric is undefined (no real query rating, or no relevant item for the
catalogue metrics) gets ``NaN``; the bootstrap helpers drop ``NaN`` users and
:func:`n_valid` counts the users that remain, so report it next to every interval.

All metrics are computed in float64 on the device of their inputs, without gradients. Ties in
predicted scores are broken deterministically: among equal scores, the lower column index
ranks first (stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "BootstrapCI", "bootstrap_ci", "bootstrap_ci_pooled", "catalogue_masks", "catalogue_ndcg_at_k",
    "hit_rate_at_k", "mae", "n_valid", "ndcg_at_k", "rmse", "top_k_indices"
]

ArrayLike = torch.Tensor | np.ndarray


# --------------------------------------------------------------------------- input checks


def _as_2d(x: ArrayLike, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x`` as a detached 2-D tensor, or raise naming the argument."""
    t = torch.as_tensor(x).detach()
    if t.dim() != 2:
        raise ValueError(
            f"argument {name!r}: expected a 2-D array [T, n], got shape {tuple(t.shape)}"
        )
    return t if dtype is None else t.to(dtype)


def _as_mask(x: ArrayLike, name: str) -> torch.Tensor:
    """Return a bool mask from a bool or 0/1 numeric array, or raise naming the argument."""
    t = _as_2d(x, name)
    if t.dtype != torch.bool:
        if t.is_floating_point() and torch.isnan(t).any():
            raise ValueError(f"argument {name!r}: mask contains NaN; expected 0/1 or bool")
        if ((t != 0) & (t != 1)).any():
            raise ValueError(f"argument {name!r}: mask must hold only 0/1 (or be bool)")
        t = t != 0
    return t


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"arguments must share one shape [T, n], got {shapes}")


def _check_finite(values: torch.Tensor, where: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(values)
    if finite.all():
        return
    bad = where & ~finite
    if bad.any():
        rows = torch.nonzero(bad.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"argument {name!r}: non-finite values at real (unmasked) entries, e.g. in rows {rows}"
        )


def _discounts(n: int, device: torch.device) -> torch.Tensor:
    """``1 / log2(j + 2)`` for ranks ``j = 0 .. n-1``."""
    ranks = torch.arange(n, dtype=torch.float64, device=device)
    return 1.0 / torch.log2(ranks + 2.0)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"argument 'k': expected a positive int, got {k!r}")


# --------------------------------------------------------------------------- rating error


def _checked_query(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pred``, ``target`` (float64) and ``mask`` (bool) of one shape, finite where real."""
    p = _as_2d(pred, "pred", torch.float64)
    y = _as_2d(target, "target", torch.float64)
    m = _as_mask(mask, "mask")
    _same_shape(pred=p, target=y, mask=m)
    _check_finite(p, m, "pred")
    _check_finite(y, m, "target")
    return p, y, m


def _masked_errors(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    p, y, m = _checked_query(pred, target, mask)
    # torch.where, not multiplication: garbage (even NaN) in padded entries must not leak.
    err = torch.where(m, p - y, torch.zeros((), dtype=torch.float64, device=p.device))
    n = m.sum(dim=1).to(torch.float64)
    return err, n


def mae(pred: ArrayLike, target: ArrayLike, mask: ArrayLike) -> torch.Tensor:
    """Per-user mean absolute error over the real query ratings.

    ``MAE_t = sum_q m_tq |pred_tq - target_tq| / sum_q m_tq``

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    pred, target : Tensor or ndarray, float, shape [T, Q]
        Predicted and true ratings of each user's query items.
    mask : Tensor or ndarray, bool or 0/1 float, shape [T, Q]
        1 = real query rating, 0 = padding. Padded entries are ignored whatever they hold.

    Returns
    -------
    Tensor, float64, shape [T]
        One value per user; ``NaN`` for a user with no real query rating. The book reports
        the mean over users (each user weighs the same), not a pooled mean over ratings.
    """
    err, n = _masked_errors(pred, target, mask)
    return err.abs().sum(dim=1) / n  # 0 / 0 -> NaN for empty users


def rmse(pred: ArrayLike, target: ArrayLike, mask: ArrayLike) -> torch.Tensor:
    """Per-user root-mean-squared error over the real query ratings.

    ``RMSE_t = sqrt( sum_q m_tq (pred_tq - target_tq)^2 / sum_q m_tq )``

    Parameters and result as for :func:`mae`: one value per user (``NaN`` for a user with
    no real query rating); the book reports the mean over users of the per-user RMSE.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    err, n = _masked_errors(pred, target, mask)
    return torch.sqrt(err.square().sum(dim=1) / n)


# --------------------------------------------------------------------------- query NDCG


def ndcg_at_k(pred: ArrayLike, target: ArrayLike, mask: ArrayLike, k: int = 3) -> torch.Tensor:
    """Per-user NDCG@k of the query items ranked by predicted rating (MeLU protocol).

    ``DCG@k = sum_{j<k} rel_(j) / log2(j + 2)`` with linear gain ``rel`` = true rating and
    ``(j)`` the item at rank ``j`` when the user's real query items are sorted by ``pred``,
    descending; ``NDCG@k = DCG@k / IDCG@k``, where IDCG@k sorts the same items by true rating.

    Parameters
    ----------
    pred, target, mask
        As for :func:`mae`; padded entries never rank.
    k : int, default 3
        Cut-off. A user with fewer than ``k`` real items is scored on all of them.

    Returns
    -------
    Tensor, float64, shape [T]
        One value per user in [0, 1]; ``NaN`` for a user with no real query item or with
        IDCG = 0 (all true ratings zero).

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Notes
    -----
    Ties in ``pred`` are broken deterministically: the item with the lower column index
    ranks first (stable sort). ``sklearn.metrics.ndcg_score`` instead averages the gains of
    tied items by default (and with ``ignore_ties=True`` orders ties unspecified), so the two
    agree exactly only for untied predictions.
    """
    _check_k(k)
    p, y, m = _checked_query(pred, target, mask)
    k_eff = min(k, p.shape[1])
    neg_inf = torch.tensor(-torch.inf, dtype=torch.float64, device=p.device)
    zero = torch.zeros((), dtype=torch.float64, device=p.device)
    gain = torch.where(m, y, zero)
    # Padded entries get -inf so they sort after every real item (real preds are finite).
    order = torch.sort(torch.where(m, p, neg_inf), dim=1, descending=True, stable=True).indices
    disc = _discounts(k_eff, p.device)
    dcg = (gain.gather(1, order[:, :k_eff]) * disc).sum(dim=1)
    ideal = torch.sort(torch.where(m, y, neg_inf), dim=1, descending=True).values[:, :k_eff]
    idcg = (torch.where(torch.isfinite(ideal), ideal, zero) * disc).sum(dim=1)
    nan = torch.tensor(torch.nan, dtype=torch.float64, device=p.device)
    return torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, 1.0), nan)


# --------------------------------------------------------------------------- catalogue ranking


def _topk_relevance(
    scores: ArrayLike, relevant: ArrayLike, exclude: ArrayLike, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary relevance of each user's top-k non-excluded items, and each user's #relevant."""
    _check_k(k)
    s = _as_2d(scores, "scores")
    if not s.is_floating_point():  # floats keep their type: widening changes no order
        s = s.to(torch.float64)
    r = _as_mask(relevant, "relevant")
    e = _as_mask(exclude, "exclude")
    _same_shape(scores=s, relevant=r, exclude=e)
    overlap = (r & e).any(dim=1)
    if overlap.any():
        rows = torch.nonzero(overlap).flatten()[:5].tolist()
        raise ValueError(
            "arguments 'relevant' and 'exclude' overlap (an item is both a "
            f"relevant query item and an excluded support item), e.g. rows {rows}"
        )
    _check_finite(s, ~e, "scores")
    k_eff = min(k, s.shape[1])
    # Excluded items get -inf: they sort last and, being never relevant, never score a hit.
    order = top_k_indices(s.masked_fill(e, -torch.inf), k_eff)
    top_rel = r.gather(1, order).to(torch.float64)
    return top_rel, r.sum(dim=1, dtype=torch.int32).long()


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[T, k]`` of each row's ``k`` highest scores, best first, ties broken by
    the lower index: the first ``k`` columns of a stable descending sort, without sorting
    the whole row (a catalogue of 12,000 toys costs a ``topk`` and a sort of ``k``).

    ``scores`` must hold no NaN; ``-inf`` is allowed (it ranks last). The catalogue
    metrics (:func:`hit_rate_at_k`, :func:`catalogue_ndcg_at_k`) rank with it.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    n = scores.shape[1]
    if not 0 <= k <= n:
        raise ValueError(f"argument 'k': expected 0 <= k <= {n} (the row length), got {k}")
    if k == 0:
        return torch.zeros(scores.shape[0], 0, dtype=torch.int64, device=scores.device)
    values, index = torch.topk(scores, min(k + 1, n), dim=1)
    # A row whose (k+1)-th best equals its k-th best has ties across the cut: which tied
    # items make the top k is decided by index. Elsewhere the top-k set is topk's.
    chosen = index[:, :k].sort(dim=1).values  # the set, by index
    if k < n:
        crowded = torch.nonzero(values[:, k] == values[:, k - 1])[:, 0]
        if crowded.numel():
            sub, kth = scores[crowded], values[crowded, k - 1:k]
            above, tied = sub > kth, sub == kth
            room = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
            keep = above | (tied & (torch.cumsum(tied, dim=1, dtype=torch.int32) <= room))
            chosen[crowded] = torch.nonzero(keep)[:, 1].reshape(len(crowded), k)
    # a stable sort by score of the index-ordered set keeps equal scores in index order
    by_score = torch.sort(scores.gather(1, chosen), dim=1, descending=True, stable=True)
    return chosen.gather(1, by_score.indices)


def hit_rate_at_k(
    scores: ArrayLike, relevant: ArrayLike, exclude: ArrayLike, k: int = 10
) -> torch.Tensor:
    """Per-user hit rate at k over the full catalogue.

    ``HR@k_t = 1 if any relevant item is among the user's k top-scored non-excluded items,
    else 0``. (This is *not* recall@k = #relevant in top-k / #relevant; with several relevant
    items per user HR is the more forgiving, "did we show at least one good toy" metric.)

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    scores : Tensor or ndarray, float, shape [T, n_items]
        Predicted rating of every catalogue item for every user.
    relevant : Tensor or ndarray, bool, shape [T, n_items]
        True for the user's relevant items (query items rated >= 4, see
        :func:`catalogue_masks`). Must not overlap ``exclude``.
    exclude : Tensor or ndarray, bool, shape [T, n_items]
        True for items never ranked (the user's support items).
    k : int, default 10
        Cut-off (clipped to ``n_items``).

    Returns
    -------
    Tensor, float64, shape [T]
        1.0 or 0.0 per user; ``NaN`` for a user with no relevant item. Callers drop ``NaN``
        users (the bootstrap helpers do, and :func:`n_valid` counts those kept).

    Notes
    -----
    Ties in ``scores`` are broken deterministically: the lower item index ranks first.
    """
    top_rel, n_rel = _topk_relevance(scores, relevant, exclude, k)
    hit = (top_rel.sum(dim=1) > 0).to(torch.float64)
    return torch.where(n_rel > 0, hit, torch.nan)


def catalogue_ndcg_at_k(
    scores: ArrayLike, relevant: ArrayLike, exclude: ArrayLike, k: int = 10
) -> torch.Tensor:
    """Per-user NDCG@k with binary relevance over the full catalogue.

    ``DCG@k = sum_{j<k} rel_(j) / log2(j + 2)`` with ``rel`` in {0, 1} and ``(j)`` the item at
    rank ``j`` among non-excluded items sorted by score, descending;
    ``IDCG@k = sum_{j < min(k, n_relevant)} 1 / log2(j + 2)``; ``NDCG@k = DCG@k / IDCG@k``.

    Parameters as for :func:`hit_rate_at_k`.

    Returns
    -------
    Tensor, float64, shape [T]
        One value per user in [0, 1]; ``NaN`` for a user with no relevant item. Callers
        drop ``NaN`` users (the bootstrap helpers do, and :func:`n_valid` counts those kept).
        Ties in ``scores`` are broken deterministically: the lower item index ranks first.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).
    """
    top_rel, n_rel = _topk_relevance(scores, relevant, exclude, k)
    disc = _discounts(top_rel.shape[1], top_rel.device)
    dcg = (top_rel * disc).sum(dim=1)
    # IDCG via the cumulative discount: cum[i] = sum_{j<=i} disc_j, take i = min(k, n_rel) - 1.
    cum = torch.cumsum(disc, dim=0)
    idx = (n_rel.clamp(max=top_rel.shape[1]) - 1).clamp(min=0)
    idcg = cum[idx]
    return torch.where(n_rel > 0, dcg / idcg, torch.nan)


def catalogue_masks(
    support_items: ArrayLike,
    support_mask: ArrayLike,
    query_items: ArrayLike,
    query_ratings: ArrayLike,
    query_mask: ArrayLike,
    n_items: int,
    threshold: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the relevance and exclusion masks for full-catalogue ranking from an episode batch.

    ``relevant[t, i] = exists q: query_mask[t, q] and query_items[t, q] == i and
    query_ratings[t, q] >= threshold``; ``exclude[t, i] = exists s: support_mask[t, s] and
    support_items[t, s] == i``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    support_items : Tensor or ndarray, int64, shape [T, S]
        ``EpisodeBatch.support_items`` (padding may hold any valid index, e.g. 0).
    support_mask : Tensor or ndarray, bool or 0/1 float, shape [T, S]
        1 = real support rating.
    query_items : Tensor or ndarray, int64, shape [T, Q]
    query_ratings : Tensor or ndarray, float, shape [T, Q]
    query_mask : Tensor or ndarray, bool or 0/1 float, shape [T, Q]
        1 = real query rating.
    n_items : int
        Catalogue size; real item indices must lie in ``0 .. n_items - 1``.
    threshold : float, default 4.0
        A query item is relevant when its true rating is ``>= threshold``.

    Returns
    -------
    relevant, exclude : Tensor, bool, shape [T, n_items]
        Padded entries never set a flag, even though their item index (0) is a real item.
    """
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 1:
        raise ValueError(f"argument 'n_items': expected a positive int, got {n_items!r}")
    si = _as_2d(support_items, "support_items", torch.int64)
    sm = _as_mask(support_mask, "support_mask")
    qi = _as_2d(query_items, "query_items", torch.int64)
    qr = _as_2d(query_ratings, "query_ratings", torch.float64)
    qm = _as_mask(query_mask, "query_mask")
    _same_shape(support_items=si, support_mask=sm)
    _same_shape(query_items=qi, query_ratings=qr, query_mask=qm)
    if si.shape[0] != qi.shape[0]:
        raise ValueError(
            f"support and query arguments disagree on T: {si.shape[0]} vs {qi.shape[0]}"
        )
    for name, items, m in (("support_items", si, sm), ("query_items", qi, qm)):
        bad = m & ((items < 0) | (items >= n_items))
        if bad.any():
            row, col = torch.nonzero(bad)[0].tolist()
            raise ValueError(
                f"argument {name!r}: item index {int(items[row, col])} at "
                f"[{row}, {col}] is outside 0..{n_items - 1}"
            )
    t = si.shape[0]

    def scatter(items: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        # Padded entries may share an index with a real item: scatter_add of 0/1 counts
        # (deterministic, unlike scatter_ with duplicate indices), then > 0.
        out = torch.zeros(t, n_items, dtype=torch.int64, device=items.device)
        safe = torch.where(flags, items, torch.zeros_like(items))
        return out.scatter_add_(1, safe, flags.to(torch.int64)) > 0

    relevant = scatter(qi, qm & (qr >= threshold))
    exclude = scatter(si, sm)
    return relevant, exclude


# --------------------------------------------------------------------------- bootstrap


class BootstrapCI(NamedTuple):
    """Point estimate and percentile-bootstrap interval (unpacks as ``mean, low, high``)."""

    mean: float
    low: float
    high: float


def _clean(values: ArrayLike | Sequence[float], name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(
            f"argument {name!r}: expected one value per user (1-D), got shape {v.shape}"
        )
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise ValueError(f"argument {name!r}: no non-NaN values to bootstrap")
    if not np.isfinite(v).all():
        raise ValueError(f"argument {name!r}: contains +-inf")
    return v


def _check_boot(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"argument 'n_boot': expected a positive int, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"argument 'level': expected 0 < level < 1, got {level!r}")


def _resampled_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``v``, in memory-bounded chunks."""
    n = v.size
    chunk = max(1, 2_000_000 // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        out[start:stop] = v[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _interval(mean: float, boot: np.ndarray, level: float) -> BootstrapCI:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return BootstrapCI(float(mean), float(low), float(high))


def n_valid(values: ArrayLike | Sequence[float]) -> int:
    """Number of users with a defined (non-NaN) metric value.

    ``n_valid = #{t : values_t is not NaN}`` -- the number of users :func:`bootstrap_ci`
    actually uses; report it next to every interval.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    values : Tensor, ndarray or sequence of float, shape [T]

    Returns
    -------
    int
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return int((~np.isnan(np.asarray(values, dtype=np.float64))).sum())


def bootstrap_ci(
    values: ArrayLike | Sequence[float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Mean over users and its percentile-bootstrap confidence interval.

    ``mean = (1/n) sum_t v_t``; for ``b = 1..n_boot`` draw ``n`` users with replacement and
    take their mean ``m_b``; ``(low, high)`` = the ``(1-level)/2`` and ``(1+level)/2``
    quantiles of ``{m_b}``.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    values : Tensor, ndarray or sequence of float, shape [T]
        One metric value per user. ``NaN`` users are dropped first; :func:`n_valid` gives
        the number ``n`` kept.
    n_boot : int, default 1000
        Number of bootstrap resamples.
    level : float, default 0.95
        Coverage of the interval.
    seed : int, default 0
        Seed of the ``numpy.random.Generator``; the same seed gives the same interval.

    Returns
    -------
    BootstrapCI
        ``(mean, low, high)`` as floats.
    """
    _check_boot(n_boot, level)
    v = _clean(values, "values")
    rng = np.random.default_rng(seed)
    return _interval(v.mean(), _resampled_means(v, n_boot, rng), level)


def bootstrap_ci_pooled(
    values_per_seed: Sequence[ArrayLike | Sequence[float]],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Mean over training seeds of the mean over users, with a pooled bootstrap interval.

    ``mean = (1/S) sum_s mean_t v_{s,t}``. For each draw ``b``: independently within each
    seed ``s`` resample that seed's users with replacement and take their mean ``m_{s,b}``;
    then ``m_b = (1/S) sum_s m_{s,b}``. ``(low, high)`` = quantiles of ``{m_b}`` as in
    :func:`bootstrap_ci`. Seeds may have different numbers of (non-NaN) users.

    Introduced in chapter 3 (book/03_base_recommender.ipynb).

    Parameters
    ----------
    values_per_seed : sequence of Tensor / ndarray / sequence of float, each shape [T_s]
        Per-user values, one array per training seed. ``NaN`` users are dropped per seed.
    n_boot : int, default 1000
    level : float, default 0.95
    seed : int, default 0
        Seed of the ``numpy.random.Generator`` (seeds are resampled in list order).

    Returns
    -------
    BootstrapCI
        ``(mean, low, high)`` as floats.

    Notes
    -----
    This interval reflects user-sampling noise only (seeds are fixed, not resampled); the
    spread between training seeds is better shown separately with so few seeds.
    """
    _check_boot(n_boot, level)
    if len(values_per_seed) == 0:
        raise ValueError("argument 'values_per_seed': expected at least one array")
    cleaned = [_clean(v, f"values_per_seed[{i}]") for i, v in enumerate(values_per_seed)]
    rng = np.random.default_rng(seed)
    boot = np.mean([_resampled_means(v, n_boot, rng) for v in cleaned], axis=0)
    mean = float(np.mean([v.mean() for v in cleaned]))
    return _interval(mean, boot, level)
