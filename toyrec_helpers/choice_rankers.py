"""Rankers around the choice model: "also bought", the choice ceiling, and the combined score.

* :class:`ItemKNNRecommender` ("also bought"): item-to-item cosine similarity of purchase
  co-occurrence over the meta-train shoppers; a new shopper's score for toy j is the sum
  of its similarities to their K support toys. What a shop does without any model.
* :class:`OracleChoiceRecommender` (``oracle_choice``): the ToyShop generator's own
  probability that the shopper buys toy j and rates it 4 or more, given their full taste.
* :class:`CombinedRecommender`: "will choose and will like",
  ``log P(choose j) + log P(r_j >= 4)``, from a choice ranker and a rating model whose
  predicted rating ``r`` is turned into ``P(r >= 4) = Phi((r - 3.5) / sigma)``.

Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from toyrec_helpers.checks import check_number
from toyrec_helpers.episodes import EpisodeBatch, Items, resolve_items

__all__ = [
    "CombinedRecommender", "ItemKNNRecommender", "OracleChoiceRecommender", "inclusion_probability",
    "like_probability"
]


class ItemKNNRecommender:
    """"Also bought": ``score_j = sum_{s in support} cos(s, j) + 1e-6 * count_j``, with
    ``cos`` the cosine similarity of the toys' purchase vectors over the meta-train
    shoppers (a toy's similarity to itself is 0; the tiny count term breaks ties by
    popularity). A ranking only.

    Parameters
    ----------
    interactions : pandas.DataFrame
        ``Dataset.interactions``.
    train_users : numpy.ndarray
        Meta-train shoppers (only their purchases are used).
    n_items : int
    name : str

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    predicts_ratings = False

    def __init__(self, interactions: pd.DataFrame, train_users: np.ndarray, n_items: int,
                 name: str = "itemknn") -> None:
        rows = interactions[interactions["user"].isin(np.asarray(train_users))]
        users = pd.factorize(rows["user"])[0].astype(np.int64)
        items = rows["item"].to_numpy(dtype=np.int64)
        pairs = np.unique(np.stack([users, items]), axis=1)  # bought at least once: 0/1
        # Co-purchase counts, one shopper at a time (no shopper-by-toy matrix), normalised
        # in place: peak memory is about one n_items x n_items matrix.
        counts = torch.from_numpy(np.bincount(pairs[1], minlength=n_items).astype(np.float32))
        sim = torch.zeros(n_items, n_items)
        for bought in np.split(pairs[1], np.flatnonzero(np.diff(pairs[0])) + 1):
            index = torch.from_numpy(bought)
            sim[index[:, None], index[None, :]] += 1.0  # toys of one shopper are distinct
        norm = counts.clamp_min(1.0).sqrt()
        sim.div_(norm[:, None]).div_(norm[None, :])
        sim.fill_diagonal_(0.0)
        self.similarity, self.counts = sim, counts
        self.n_items, self.name = n_items, name

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Scores (see :meth:`toyrec_helpers.recommenders.Recommender.predict`)."""
        targets = resolve_items(batch, items, self.n_items)
        rows = self.similarity[batch.support_items] * batch.support_mask.unsqueeze(-1)
        scores = rows.sum(1) + 1e-6 * self.counts
        return scores.gather(1, targets)


def like_probability(rating: torch.Tensor, sigma: float, threshold: float = 4.0
                     ) -> torch.Tensor:
    """``P(r >= threshold)`` for an integer rating around a predicted ``rating``:
    ``Phi((rating - threshold + 0.5) / sigma)``.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    sigma = check_number(sigma, "argument 'sigma'")
    return torch.special.ndtr((rating - threshold + 0.5) / sigma)


def inclusion_probability(logits: np.ndarray, n: np.ndarray, iters: int = 60) -> np.ndarray:
    """Probability that each toy is among the ``n_u`` bought by Gumbel top-``n_u``
    sampling with the given logits, by the threshold form ``1 - exp(-w_i * lam)`` with
    ``w_i = exp(logit_i)`` and ``lam`` solving ``sum_i (1 - exp(-w_i lam)) = n_u``
    (bisection on ``log lam``), float64 ``[users, items]``.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    logits = np.asarray(logits, dtype=np.float64)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    n = np.minimum(np.asarray(n, dtype=np.float64), w.shape[1] - 1e-9)[:, None]
    lo = np.full((len(w), 1), -30.0)
    hi = np.full((len(w), 1), 40.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = (-np.expm1(-w * np.exp(mid))).sum(axis=1, keepdims=True)
        above = total > n
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return -np.expm1(-w * np.exp((lo + hi) / 2))


class OracleChoiceRecommender:
    """``P(bought and rated >= threshold)`` from the generator: the inclusion probability
    of the toy in the shopper's ``n_u`` purchases given their true choice logits
    (:func:`inclusion_probability`) times ``P(rating >= threshold)`` given their true
    latent score. A ranking (its scores are probabilities, not ratings).

    Parameters
    ----------
    choice_logits, scores : numpy.ndarray
        ``[n_users, n_items]``: the generator's choice logits (taste plus log
        popularity) and latent scores, in the data set's row order.
    n_bought : numpy.ndarray
        ``[n_users]`` purchases per shopper.
    sigma_noise : float
        The generator's rating noise.
    threshold : float
    name : str

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    predicts_ratings = False

    def __init__(self, choice_logits: np.ndarray, scores: np.ndarray, n_bought: np.ndarray,
                 sigma_noise: float, threshold: float = 4.0, name: str = "oracle_choice"
                 ) -> None:
        bought = inclusion_probability(choice_logits, n_bought)
        like = torch.special.ndtr(torch.as_tensor(
            (np.asarray(scores) - threshold + 0.5) / sigma_noise)).numpy()
        self.table = torch.as_tensor(bought * like, dtype=torch.float32)
        self.n_items, self.name = self.table.shape[1], name

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Scores (see :meth:`toyrec_helpers.recommenders.Recommender.predict`)."""
        targets = resolve_items(batch, items, self.n_items)
        return self.table[batch.users.unsqueeze(-1), targets]


class CombinedRecommender:
    """``log P(choose j) + w * log P(r_j >= threshold)`` ("will choose and will like";
    ``w = 1`` is the product of the two probabilities). A ranking.

    Parameters
    ----------
    choice : recommender
        Its ``predict`` returns ``log P(choose)`` (e.g.
        :class:`~toyrec_helpers.choice.ChoiceRecommender`).
    rating : recommender
        Predicts ratings.
    sigma : float
        Spread of a rating around the prediction (e.g. the rating model's validation RMSE).
    weight : float
        ``w`` (0 = the choice model alone).
    threshold : float
    name : str

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    predicts_ratings = False

    def __init__(self, choice: object, rating: object, sigma: float, weight: float = 1.0,
                 threshold: float = 4.0, name: str = "choice_combined") -> None:
        if not getattr(rating, "predicts_ratings", False):
            raise ValueError("argument 'rating': expected a recommender that predicts ratings")
        self.choice, self.rating = choice, rating
        self.sigma = check_number(sigma, "argument 'sigma'")
        self.weight = check_number(weight, "argument 'weight'", positive=False)
        self.threshold, self.name = float(threshold), name

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Scores (see :meth:`toyrec_helpers.recommenders.Recommender.predict`)."""
        log_choose = self.choice.predict(batch, items)  # type: ignore[attr-defined]
        if self.weight == 0:
            return log_choose
        rating = self.rating.predict(batch, items)  # type: ignore[attr-defined]
        like = like_probability(rating, self.sigma, self.threshold).clamp_min(1e-12)
        return log_choose + self.weight * torch.log(like)
