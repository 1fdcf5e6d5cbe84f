"""The baseline predictor ``r_hat = mu + b_u + b_i``, fitted by alternating ridge updates.

It is the plain model of chapter 1: it knows a shopper only through the shopper's own
ratings (``b_u``), so it shows the cold-start gap in its purest form. Introduced in
chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BiasModel:
    """Fitted global mean, user biases and item biases.

    A user or item without training ratings has bias 0, so a brand-new shopper is predicted
    ``mu + b_i``: the item's (shrunk) mean.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    mu: float
    user_bias: np.ndarray
    item_bias: np.ndarray

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings ``mu + b_u + b_i`` (float64, same shape as the inputs)."""
        return self.mu + self.user_bias[users] + self.item_bias[items]


def fit_bias_model(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    reg_user: float = 5.0,
    reg_item: float = 5.0,
    iterations: int = 10,
) -> BiasModel:
    """Fit ``mu``, ``b_u``, ``b_i`` minimising squared error plus ridge penalties.

    Each iteration solves exactly for the item biases given the user biases, then for the
    user biases given the item biases:
    ``b_i = sum_u (r_ui - mu - b_u) / (reg_item + n_i)`` and symmetrically for ``b_u``.

    Parameters
    ----------
    users, items : numpy.ndarray
        int64 indices of the training ratings.
    ratings : numpy.ndarray
        The ratings.
    n_users, n_items : int
        Sizes of the index spaces (users or items without ratings get bias 0).
    reg_user, reg_item : float
        Ridge strengths: a user with ``n`` ratings has their bias shrunk by
        ``n / (n + reg_user)``.
    iterations : int
        Alternating updates.

    Returns
    -------
    BiasModel

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    r = np.asarray(ratings, dtype=np.float64)
    if not len(users) == len(items) == len(r) or len(r) == 0:
        raise ValueError("users, items and ratings must be non-empty and of equal length")
    mu = float(r.mean())
    n_u = np.bincount(users, minlength=n_users)
    n_i = np.bincount(items, minlength=n_items)
    b_u = np.zeros(n_users)
    b_i = np.zeros(n_items)
    for _ in range(iterations):
        b_i = np.bincount(items, r - mu - b_u[users], minlength=n_items) / (reg_item + n_i)
        b_u = np.bincount(users, r - mu - b_i[items], minlength=n_users) / (reg_user + n_u)
    return BiasModel(mu=mu, user_bias=b_u, item_bias=b_i)
