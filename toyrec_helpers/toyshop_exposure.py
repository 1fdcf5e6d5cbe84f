"""A missing-at-random test set for the ToyShop: ratings of toys shown to shoppers at random.

The ToyShop's ratings are *missing not at random*: a shopper rates what they chose to buy
(:func:`toyrec_helpers.toyshop.generate_toyshop`). Data sets such as Coat and Yahoo! R3
add, for each user, ratings of items drawn uniformly at random, which measure a model on
the whole catalogue instead of on the items a shopper picked. :func:`random_exposure`
draws such ratings from the same generative model (the same latent scores, the same
rating noise law) with its own random stream, ``numpy.random.default_rng([seed, 1])``, so
the existing files do not change and the new file is reproduced byte for byte.

The file ``random_exposure.csv`` (columns ``user_id``, ``item_id``, ``rating``) lives next
to ``ratings.csv`` in the data directory. :func:`load_random_exposure` reads it as indices
of a loaded data set; :func:`random_exposure_metrics` computes ``mae_random`` and
``rmse_random`` from a method's catalogue scores (used by
:func:`toyrec_helpers.evaluate.score_recommender` when the file is there).

Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from toyrec_helpers.checks import check_int
from toyrec_helpers.fileio import atomic_write
from toyrec_helpers.toyshop import SIGMA_NOISE, TOYSHOP_SHA256, ToyShop

__all__ = [
    "RANDOM_EXPOSURE_FILE", "RANDOM_EXPOSURE_PER_USER", "RANDOM_EXPOSURE_SHA256",
    "RANDOM_METRICS", "RandomExposure", "load_random_exposure", "random_exposure",
    "random_exposure_metrics", "write_random_exposure"
]

RANDOM_EXPOSURE_FILE = "random_exposure.csv"
"""The file name, next to ``ratings.csv``."""

RANDOM_EXPOSURE_PER_USER = 20
"""Toys drawn uniformly at random (without replacement) per shopper."""

RANDOM_METRICS: tuple[str, ...] = ("mae_random", "rmse_random")
"""Metrics on the random-exposure ratings (rating models only)."""

RANDOM_EXPOSURE_SHA256 = TOYSHOP_SHA256[RANDOM_EXPOSURE_FILE]
"""SHA-256 of ``random_exposure.csv`` for the default ToyShop (``ToyShopConfig()``)."""


def random_exposure(shop: ToyShop, per_user: int = RANDOM_EXPOSURE_PER_USER) -> pd.DataFrame:
    """Ratings of toys drawn uniformly at random for every shopper of a generated shop.

    For each shopper ``u`` (in user order), ``per_user`` distinct toys are drawn uniformly
    from the catalogue, whatever the shopper bought, and rated
    ``clip(round(s_ui + eps), 1, 5)`` with ``eps ~ N(0, SIGMA_NOISE^2)``: the generator's
    rating law. The random stream is ``numpy.random.default_rng([seed, 1])``, separate
    from the generator's own, so the shop's files are unchanged.

    Parameters
    ----------
    shop : ToyShop
        From :func:`~toyrec_helpers.toyshop.generate_toyshop`.
    per_user : int
        Toys per shopper (at most the catalogue size).

    Returns
    -------
    pandas.DataFrame
        Columns ``user_id``, ``item_id``, ``rating`` (int), sorted by user, then item.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    n_u, n_i = shop.scores.shape
    per_user = check_int(per_user, "argument 'per_user'", 1)
    if per_user > n_i:
        raise ValueError(f"argument 'per_user': at most the catalogue size {n_i}, "
                         f"got {per_user}")
    rng = np.random.default_rng([shop.config.seed, 1])
    keys = rng.random((n_u, n_i))
    items = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :per_user], axis=1)
    noise = rng.normal(0.0, SIGMA_NOISE, (n_u, per_user))
    users = np.repeat(np.arange(n_u), per_user)
    score = shop.scores[users, items.ravel()] + noise.ravel()
    rating = np.clip(np.round(score), 1, 5).astype(int)
    return pd.DataFrame({
        "user_id": shop.users["user_id"].to_numpy()[users],
        "item_id": shop.items["item_id"].to_numpy()[items.ravel()],
        "rating": rating,
    })


def write_random_exposure(shop: ToyShop, out: str | Path, overwrite: bool = False) -> Path:
    """Write :func:`random_exposure` to ``out/random_exposure.csv`` (atomically).

    Parameters
    ----------
    shop : ToyShop
    out : str or Path
        The data directory of ``shop`` (written by
        :func:`~toyrec_helpers.toyshop.write_toyshop`).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    frame = random_exposure(shop)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    payload = buffer.getvalue().encode("utf-8")
    return atomic_write(Path(out) / RANDOM_EXPOSURE_FILE, lambda f: f.write(payload),
                        overwrite=overwrite)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one file, hex.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RandomExposure:
    """Random-exposure ratings of a loaded data set, as indices.

    Attributes
    ----------
    users, items : numpy.ndarray
        int64 row indices into the data set's users and items.
    ratings : numpy.ndarray
        float32.
    path : Path
        The file read.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                 path: Path) -> None:
        self.users, self.items, self.ratings, self.path = users, items, ratings, path
        order = np.argsort(users, kind="stable")
        self._sorted_users = users[order]
        self._order = order

    def table(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ``[T, N]`` items (int64), ratings (float32) and mask (float32) for the
        given users (a user without random ratings gets an all-zero mask)."""
        users = np.asarray(users, dtype=np.int64)
        lo = np.searchsorted(self._sorted_users, users, "left")
        hi = np.searchsorted(self._sorted_users, users, "right")
        width = max(1, int((hi - lo).max()) if len(users) else 1)
        items = np.zeros((len(users), width), dtype=np.int64)
        ratings = np.zeros((len(users), width), dtype=np.float32)
        mask = np.zeros((len(users), width), dtype=np.float32)
        for row, (a, b) in enumerate(zip(lo, hi, strict=True)):
            idx = self._order[a:b]
            items[row, : b - a] = self.items[idx]
            ratings[row, : b - a] = self.ratings[idx]
            mask[row, : b - a] = 1.0
        return torch.from_numpy(items), torch.from_numpy(ratings), torch.from_numpy(mask)


_CACHE: dict[tuple[str, float], RandomExposure | None] = {}


def load_random_exposure(dataset: object) -> RandomExposure | None:
    """The random-exposure ratings next to a loaded data set's files, or ``None`` when the
    data directory has no ``random_exposure.csv``.

    Parameters
    ----------
    dataset : toyrec_helpers.data.Dataset

    Raises
    ------
    ValueError
        If the file lacks a column, names an unknown user or toy (with the row), or holds
        a rating outside the data set's scale.

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    path = Path(dataset.path) / RANDOM_EXPOSURE_FILE  # type: ignore[attr-defined]
    if not path.is_file():
        return None
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _CACHE:
        return _CACHE[key]
    schema = dataset.schema  # type: ignore[attr-defined]
    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    missing = [c for c in ("user_id", "item_id", "rating") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected user_id, item_id, "
                         "rating")
    users = pd.Index(dataset.users[schema.users.id].astype(str)).get_indexer(  # type: ignore[attr-defined]
        frame["user_id"])
    items = pd.Index(dataset.items[schema.items.id].astype(str)).get_indexer(  # type: ignore[attr-defined]
        frame["item_id"])
    for name, idx in (("user_id", users), ("item_id", items)):
        if (idx < 0).any():
            row = int(np.flatnonzero(idx < 0)[0])
            raise ValueError(f"{path}, row {row + 2}: unknown {name} "
                             f"{frame[name].iloc[row]!r}")
    ratings = pd.to_numeric(frame["rating"], errors="coerce").to_numpy(dtype=np.float64)
    lo, hi = schema.rating_min, schema.rating_max  # type: ignore[attr-defined]
    bad = ~np.isfinite(ratings) | (ratings < lo) | (ratings > hi)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}, row {row + 2}: rating {frame['rating'].iloc[row]!r} "
                         f"outside {lo}..{hi}")
    out = RandomExposure(users.astype(np.int64), items.astype(np.int64),
                         ratings.astype(np.float32), path)
    _CACHE[key] = out
    return out


def random_exposure_metrics(
    exposure: RandomExposure, users: torch.Tensor, scores: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``mae_random`` and ``rmse_random`` per user from catalogue-wide predicted ratings.

    Parameters
    ----------
    exposure : RandomExposure
    users : torch.Tensor
        int64 ``[T]`` user indices.
    scores : torch.Tensor
        ``[T, n_items]`` predicted ratings (the method's ``predict(batch, "all")``).

    Returns
    -------
    dict of str to torch.Tensor
        float ``[T]`` each (``NaN`` for a user without random ratings).

    Introduced in chapter 8 (book/08_what_shoppers_choose.ipynb).
    """
    items, ratings, mask = exposure.table(users.cpu().numpy())
    pred = scores.detach().cpu().float().gather(1, items)
    n = mask.sum(1)
    err = (pred - ratings) * mask
    with np.errstate(invalid="ignore"):
        mae = err.abs().sum(1) / n
        rmse = torch.sqrt((err**2).sum(1) / n)
    return {"mae_random": mae, "rmse_random": rmse}
