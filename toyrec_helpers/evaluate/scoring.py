"""Scoring one method: per-shopper metrics at one shot K, from blinded batches.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from toyrec_helpers import metrics
from toyrec_helpers.episodes import EpisodeBatch
from toyrec_helpers.recommenders import Recommender
from toyrec_helpers.toyshop_exposure import load_random_exposure, random_exposure_metrics

if TYPE_CHECKING:
    from toyrec_helpers.evaluate.protocol import EvalData

__all__ = ["CATALOGUE_METRICS", "METRICS", "RATING_METRICS", "score_recommender"]

METRICS: tuple[str, ...] = ("mae", "rmse", "ndcg@3", "hr@10", "ndcg@10")
"""Metric names, in table order."""

RATING_METRICS: tuple[str, ...] = ("mae", "rmse")
"""Metrics that need ratings (skipped for methods with ``predicts_ratings = False``)."""

CATALOGUE_METRICS: tuple[str, ...] = ("hr@10", "ndcg@10")
"""Full-catalogue ranking metrics: the only ones computed on a purchase log (data without
ratings, :attr:`~toyrec_helpers.data.Dataset.has_ratings` false), where every query
purchase is relevant."""


def _blind(batch: EpisodeBatch) -> EpisodeBatch:
    """The batch a recommender gets: users and support only, query fields zeroed."""
    empty = torch.zeros((len(batch), 1), dtype=torch.int64)
    return dataclasses.replace(batch, query_items=empty,
                               query_ratings=empty.to(torch.float32),
                               query_mask=empty.to(torch.float32))


def _chunk_users(n_items: int) -> int:
    """Shoppers scored at once: about 500,000 (shopper, item) pairs, 16 to 512 shoppers."""
    return int(min(512, max(16, 500_000 // max(1, n_items))))


def score_recommender(recommender: Recommender, data: EvalData, k: int) -> dict[str, np.ndarray]:
    """Per-shopper metrics of one recommender at shot ``k``.

    The recommender scores the whole catalogue for each meta-test shopper from a batch
    that holds only the users and their ``k`` support ratings (the query fields are
    zeroed); query predictions are read off those scores.

    Parameters
    ----------
    recommender : Recommender
        A fitted method.
    data : EvalData
        From :func:`prepare`.
    k : int
        Shot, one of ``data.config.ks``.

    Returns
    -------
    dict of str to numpy.ndarray
        Metric name -> float64 ``[n_evaluated_users]`` (``NaN`` where undefined), in the
        order of :attr:`EvalData.users`; on a purchase log only
        :data:`CATALOGUE_METRICS`; ``mae`` and ``rmse`` only when
        ``recommender.predicts_ratings``, and then also ``mae_random`` and ``rmse_random``
        when the data directory has random-exposure ratings
        (:mod:`toyrec_helpers.toyshop_exposure`).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    c = data.config
    batch = data.test_batch(k)
    n_items = data.dataset.n_items
    prefix = data.test_batch(max(c.ks)) if c.catalogue_exclude == "first_max_k" else batch
    names = [m for m in METRICS
             if recommender.predicts_ratings or m not in RATING_METRICS]
    threshold = c.relevance_threshold
    if not data.dataset.has_ratings:  # a purchase log: every query purchase is relevant
        names, threshold = [m for m in names if m in CATALOGUE_METRICS], -math.inf
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    step = _chunk_users(n_items)
    exposure = load_random_exposure(data.dataset) if recommender.predicts_ratings else None
    for lo in range(0, len(batch), step):
        b = batch.select(slice(lo, lo + step))
        scores = recommender.predict(_blind(b), "all")
        if tuple(scores.shape) != (len(b), n_items):
            raise ValueError(f"{recommender.name}: predict(batch, 'all') returned shape "
                             f"{tuple(scores.shape)}, expected {(len(b), n_items)}")
        pred = scores.gather(1, b.query_items)
        y, m = b.query_ratings, b.query_mask
        if "mae" in parts:
            parts["mae"].append(metrics.mae(pred, y, m))
            parts["rmse"].append(metrics.rmse(pred, y, m))
        if exposure is not None:  # mae_random, rmse_random: the MAR test set (chapter 8)
            for name, v in random_exposure_metrics(exposure, b.users, scores).items():
                parts.setdefault(name, []).append(v)
        if "ndcg@3" in parts:
            parts["ndcg@3"].append(metrics.ndcg_at_k(pred, y, m, k=3))
        p = prefix.select(slice(lo, lo + step))
        relevant, exclude = metrics.catalogue_masks(
            p.support_items, p.support_mask, b.query_items, y, m, n_items,
            threshold=threshold)
        parts["hr@10"].append(metrics.hit_rate_at_k(scores, relevant, exclude, k=10))
        parts["ndcg@10"].append(metrics.catalogue_ndcg_at_k(scores, relevant, exclude, k=10))
        del scores, relevant, exclude
    return {name: torch.cat(v).cpu().numpy() for name, v in parts.items()}
