"""Ceilings for the ToyShop: the best prediction possible with K ratings, and with all.

The cold-start protocol scores a method on the toys a shopper *bought* after their first
``max(ks)`` purchases. Two ceilings answer the question the methods answer ("what will
this shopper rate toy j, given that j is a toy they bought?"):

* **Full information** (:func:`median_answer_key`): the generator's rating law given the
  shopper's true latent score. Its median ``clip(round(s), 1, 5)`` is the MAE floor; its
  mean ``E[r]`` (:func:`toyrec_helpers.toyshop.answer_key`, the ``oracle`` row) is the
  RMSE floor. The rating noise does not depend on what is bought, so conditioning on the
  purchase changes neither.
* **K shots** (:class:`BayesCeiling`, ``bayes``): the posterior over the shopper's latent
  taste given what a method may know (the item side of the generator, the shopper's
  attributes, the K support ratings, and the fact that those toys were the shopper's first
  K purchases), then the predictive law of ``r_j`` given that ``j`` is bought after the
  first ``query_after`` purchases. It uses nothing about which other toys are in the
  query, so it scores the whole catalogue. Monte Carlo: self-normalised importance sampling
  from the generator's prior (:mod:`toyrec_helpers.ceiling_mc`), the same prior draws for
  every shopper with the same attributes.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from toyrec_helpers import ceiling_mc as mc
from toyrec_helpers import toyshop as ts
from toyrec_helpers.checks import check_int
from toyrec_helpers.data import Dataset
from toyrec_helpers.episodes import EpisodeBatch, check_batch, resolve_items

__all__ = [
    "BayesCeiling", "MonteCarloError", "dataset_latents", "median_answer_key", "median_rating"
]

Items = torch.Tensor | str | None


def median_rating(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """The median of ``clip(round(s + eps), 1, 5)``: ``clip(round(s), 1, 5)``, float32.

    The MAE-optimal prediction when the latent score ``s`` is known (``eps`` is symmetric).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    s = np.asarray(scores, dtype=np.float64)
    return np.clip(np.floor(s + 0.5), 1.0, 5.0).astype(np.float32)


@dataclass(frozen=True)
class AlignedLatents:
    """:class:`~toyrec_helpers.ceiling_mc.ToyShopLatents` of a loaded data set, with the
    permutations that put generator rows in the data set's row order.

    Attributes
    ----------
    config : ToyShopConfig
    latents : ToyShopLatents
        In generator order.
    user_rows, item_rows : numpy.ndarray
        int64: generator index of each data set user / item row.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    config: ts.ToyShopConfig
    latents: mc.ToyShopLatents
    user_rows: np.ndarray
    item_rows: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """Latent scores in the data set's row order, float64 ``[n_users, n_items]``."""
        return self.latents.scores[np.ix_(self.user_rows, self.item_rows)]


def dataset_latents(dataset: Dataset) -> AlignedLatents:
    """The generator's hidden quantities for a loaded ToyShop data set.

    Parameters
    ----------
    dataset : Dataset
        Made by the ToyShop generator, files unedited.

    Returns
    -------
    AlignedLatents

    Raises
    ------
    TypeError
        If ``dataset`` is not a :class:`~toyrec_helpers.data.Dataset`.
    ValueError
        If the data set was not made by the generator, or its files were edited.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"argument 'dataset': expected a loaded Dataset "
                        f"(toyrec_helpers.data.load_dataset), got {type(dataset).__name__}")
    cfg = ts.config_from_schema(dataset.schema.raw)
    if cfg is None:
        raise ValueError(f"argument 'dataset': {dataset.path} was not made by the ToyShop "
                         "generator; the bayes ceiling needs the generator's parameters")
    key = ts.answer_key(dataset)  # raises ValueError when the files were edited
    latents = mc.toyshop_latents(cfg)
    user_ids = [f"U{u + 1:05d}" for u in range(cfg.users)]
    item_ids = [f"T{i + 1:04d}" for i in range(cfg.items)]
    users = pd.Index(user_ids).get_indexer(dataset.users[dataset.schema.users.id])
    items = pd.Index(item_ids).get_indexer(dataset.items[dataset.schema.items.id])
    if (users < 0).any() or (items < 0).any():
        raise ValueError(f"argument 'dataset': {dataset.path} has user or item ids the "
                         f"generator settings {cfg} do not produce")
    aligned = AlignedLatents(cfg, latents, users.astype(np.int64), items.astype(np.int64))
    if not np.allclose(ts.expected_rating(aligned.scores), key, atol=1e-5):
        raise RuntimeError("the replayed latent scores disagree with the answer key")
    return aligned


def median_answer_key(dataset: Dataset) -> np.ndarray:
    """The MAE floor: the median rating of every shopper for every toy given their true
    latent score, float32 ``[n_users, n_items]`` in the data set's row order.

    The counterpart of :func:`toyrec_helpers.toyshop.answer_key` (the mean ``E[r]``, the
    RMSE floor). Wrap it as a method with
    ``OracleRecommender(median_answer_key(dataset), name="oracle_median")``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    return median_rating(dataset_latents(dataset).scores)


@dataclass(frozen=True)
class MonteCarloError:
    """How much the ``bayes`` predictions move between two independent Monte Carlo runs.

    Attributes
    ----------
    mean_abs_diff_mean, mean_abs_diff_median : float
        Mean over (shopper, toy) of ``|prediction(seed) - prediction(other seed)|`` for the
        predictive mean and median (the difference of two runs: about ``sqrt(2)`` times the
        error of one run).
    median_changed : float
        Share of (shopper, toy) whose median differs between the runs.
    mean_se : float
        Mean delta-method standard error of the predictive mean (one run).
    ess : numpy.ndarray
        Effective sample size of each shopper's importance weights (this run).
    seeds : tuple of int
        The two seeds compared.
    mae_diff : float or None
        ``|MAE(seed) - MAE(other seed)|`` of the medians on the batch's query (mean over
        shoppers of each shopper's MAE, as the protocol reports it); ``None`` when other
        items were asked for or the batch has no query ratings. A diagnostic: predictions
        never read the query.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    mean_abs_diff_mean: float
    mean_abs_diff_median: float
    median_changed: float
    mean_se: float
    ess: np.ndarray
    seeds: tuple[int, int]
    mae_diff: float | None = None


class BayesCeiling:
    """The K-shot ceiling ``bayes``: the generator's posterior predictive (a Recommender).

    For each shopper of a batch, the posterior over their latent taste given their
    attributes (age band, region), the K support ratings and the fact that the K support
    toys were their first K purchases, by self-normalised importance sampling from the
    generator's prior (``n_samples`` draws shared by all shoppers with the same attributes).
    For every toy ``j``, each draw is then weighted by its probability that ``j`` is bought
    and is not among the first ``query_after`` purchases; the predictive law of ``r_j``
    over 1..5 gives the median (:meth:`predict`, MAE-optimal) and the mean
    (:meth:`predict_mean`, RMSE-optimal).

    Parameters
    ----------
    dataset : Dataset
        A data set made by the ToyShop generator (files unedited).
    n_samples : int
        Prior draws per combination of shopper attributes.
    seed : int
        Seed of the draws.
    query_after : int
        Purchases before the query starts (the protocol's ``max(ks)``).
    name : str
        Label. Default ``"bayes"``.
    latents : AlignedLatents, optional
        From :func:`dataset_latents` (saves replaying the generator again).
    n_resample : int
        Draws per shopper, resampled (systematically) by weight, over which the predictive
        law of every toy is averaged.

    Attributes
    ----------
    last_ess : numpy.ndarray
        Effective sample size of each shopper of the last batch predicted.

    Notes
    -----
    Approximations (see :mod:`toyrec_helpers.ceiling_mc`): inclusion in the set of toys
    bought uses the threshold form of the generator's Gumbel top-``n`` choice, and purchase
    times are taken as exchangeable given the set bought (in the generator they depend on
    release dates, not on taste). The prior draws and their catalogue-wide selection terms
    are cached per attribute combination (a few hundred MB at the default size for the
    ToyShop); the resampling step depends on the batch, so the same shopper in another
    batch gets predictions that differ by Monte Carlo error (see :meth:`mc_error`).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    predicts_ratings = True

    def __init__(self, dataset: Dataset, n_samples: int = 8000, seed: int = 0,
                 query_after: int = 10, name: str = "bayes",
                 latents: AlignedLatents | None = None, n_resample: int = 192) -> None:
        self.n_samples = check_int(n_samples, "argument 'n_samples'", 1)
        self.seed = check_int(seed, "argument 'seed'", 0)
        self.query_after = check_int(query_after, "argument 'query_after'", 0)
        self.name = name
        self.aligned = dataset_latents(dataset) if latents is None else latents
        if not isinstance(self.aligned, AlignedLatents):
            raise TypeError(f"argument 'latents': expected AlignedLatents, "
                            f"got {type(self.aligned).__name__}")
        self.n_users, self.n_items = len(self.aligned.user_rows), len(self.aligned.item_rows)
        if isinstance(dataset, Dataset) and (dataset.n_users, dataset.n_items) != (
                self.n_users, self.n_items):
            raise ValueError(f"argument 'latents': made for {self.n_users} users x "
                             f"{self.n_items} items, the data set has {dataset.n_users} x "
                             f"{dataset.n_items}")
        lat = self.aligned.latents
        rows = self.aligned.item_rows
        self._items = dict(item_category=lat.item_category[rows], item_brand=lat.item_brand[rows],
                           item_age=lat.item_age[rows], price_z=lat.price_z[rows],
                           theme_weights=lat.theme_weights[rows],
                           item_effect=lat.item_effect[rows],
                           log_popularity=lat.log_popularity[rows])
        self.user_age = lat.user_age[self.aligned.user_rows]
        self.user_region = lat.user_region[self.aligned.user_rows]
        self.n_resample = check_int(n_resample, "argument 'n_resample'", 1)
        self.user_chunk = 32
        self._pools: dict[tuple[int, int, int], tuple[mc.Particles, torch.Tensor]] = {}
        self.last_ess = np.zeros(0)
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None

    # ----------------------------------------------------------------- Recommender API

    def predict(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Posterior predictive medians (see :meth:`Recommender.predict`), float32."""
        return self._gather("median", batch, items)

    def predict_mean(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Posterior predictive means (RMSE-optimal), float32 ``[T, M]``."""
        return self._gather("mean", batch, items)

    def predict_distribution(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Posterior predictive probabilities of ratings 1..5, float64 ``[T, M, 5]``."""
        out = self._posterior(batch)["dist"]
        targets = resolve_items(batch, items, self.n_items).cpu()
        return torch.gather(out, 1, targets[..., None].expand(-1, -1, 5))

    def standard_error(self, batch: EpisodeBatch, items: Items = None) -> torch.Tensor:
        """Delta-method standard error of :meth:`predict_mean` over the resampled draws,
        ``[T, M]`` (it leaves out the error of the importance weights themselves: compare
        with :meth:`mc_error`)."""
        return self._gather("se", batch, items, with_se=True)

    def mc_error(self, batch: EpisodeBatch, items: Items = None,
                 other_seed: int | None = None) -> MonteCarloError:
        """Compare this ceiling with a rerun on another seed (same ``n_samples``).

        Parameters
        ----------
        batch : EpisodeBatch
        items : None, "all" or torch.Tensor
            As in :meth:`predict`.
        other_seed : int, optional
            Seed of the rerun (default ``seed + 1``).

        Returns
        -------
        MonteCarloError
        """
        other_seed = self.seed + 1 if other_seed is None else check_int(
            other_seed, "argument 'other_seed'", 0)
        if other_seed == self.seed:
            raise ValueError(f"argument 'other_seed': must differ from seed {self.seed}")
        rerun = BayesCeiling.__new__(BayesCeiling)
        rerun.__dict__.update(self.__dict__)
        rerun.seed, rerun._cache, rerun._pools = other_seed, None, {}
        targets = resolve_items(batch, items, self.n_items)
        a_mean, b_mean = self.predict_mean(batch, targets), rerun.predict_mean(batch, targets)
        a_med, b_med = self.predict(batch, targets), rerun.predict(batch, targets)
        se = self.standard_error(batch, targets)
        mae_diff = None
        if items is None and bool((batch.query_mask > 0).any()):
            y, m = batch.query_ratings.to(a_med.device), batch.query_mask.to(a_med.device)
            per = [((p - y).abs() * m).sum(1) / m.sum(1).clamp_min(1.0) for p in (a_med, b_med)]
            keep = m.sum(1) > 0
            mae_diff = float((per[0][keep].mean() - per[1][keep].mean()).abs())
        return MonteCarloError(mae_diff=mae_diff,
            mean_abs_diff_mean=float((a_mean - b_mean).abs().mean()),
            mean_abs_diff_median=float((a_med - b_med).abs().mean()),
            median_changed=float((a_med != b_med).float().mean()),
            mean_se=float(se.mean()), ess=self.last_ess.copy(),
            seeds=(self.seed, other_seed))

    # ----------------------------------------------------------------- internals

    def _gather(self, key: str, batch: EpisodeBatch, items: Items,
                with_se: bool = False) -> torch.Tensor:
        out = self._posterior(batch, with_se)[key]
        targets = resolve_items(batch, items, self.n_items)
        return out.gather(1, targets.cpu()).to(torch.float32).to(targets.device)

    def _check(self, batch: EpisodeBatch) -> None:
        check_batch(batch)
        users = batch.users
        if len(batch) and (int(users.min()) < 0 or int(users.max()) >= self.n_users):
            raise ValueError(f"batch.users: expected user indices in 0..{self.n_users - 1}, "
                             f"got {int(users.min())}..{int(users.max())}")
        real = batch.support_mask > 0
        sup = batch.support_items[real]
        if sup.numel() and (int(sup.min()) < 0 or int(sup.max()) >= self.n_items):
            raise ValueError(f"batch.support_items: expected item indices in "
                             f"0..{self.n_items - 1}, got {int(sup.min())}..{int(sup.max())}")
        r = batch.support_ratings[real]
        if r.numel() and not bool(((r >= 1) & (r <= 5) & (r == r.round())).all()):
            raise ValueError("batch.support_ratings: expected whole ratings 1..5 where "
                             "support_mask is 1")

    def _posterior(self, batch: EpisodeBatch, with_se: bool = False) -> dict[str, torch.Tensor]:
        self._check(batch)
        digest = hashlib.sha256()
        for t in (batch.users, batch.support_items, batch.support_ratings,
                  batch.support_mask):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
            digest.update(str(tuple(t.shape)).encode())
        key = f"{digest.hexdigest()}:{self.seed}:{self.n_samples}"
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        users = batch.users.cpu().numpy()
        sup_i, sup_r = batch.support_items.cpu(), batch.support_ratings.cpu()
        sup_m = batch.support_mask.cpu().to(torch.float64)
        age, region = self.user_age[users], self.user_region[users]
        n_tasks, m = len(users), self.n_resample
        picked: list[mc.Particles | None] = [None] * n_tasks
        ess = np.zeros(n_tasks)
        for a, g in sorted(set(zip(age.tolist(), region.tolist(), strict=True))):
            rows = np.flatnonzero((age == a) & (region == g))
            pool, lam = self._pool(a, g)
            cols, local = torch.unique(sup_i[rows], return_inverse=True)
            sub = {name: v[cols.numpy()] for name, v in self._items.items()}
            scores, log_inc, _ = mc.evaluate_draws(sub, np.array([a]), pool, lam)
            logw = mc.support_log_likelihood(scores, log_inc, pool.n_bought, local,
                                             sup_r[rows], sup_m[rows])
            ess[rows] = mc.effective_sample_size(logw).numpy()
            rng = np.random.default_rng([self.seed, 1, a, g, *users[rows[:1]], len(rows)])
            index = _resample(logw, m, rng)
            for j, r in enumerate(rows):
                picked[r] = pool.take(index[[j]])
        out: dict[str, list[torch.Tensor]] = {name: [] for name in ("dist", "mean", "median",
                                                                     "se")}
        for lo in range(0, n_tasks, self.user_chunk):
            rows = np.arange(lo, min(lo + self.user_chunk, n_tasks))
            parts = _join([picked[r] for r in rows])
            pred = mc.predictive(self._items, age[rows], parts,
                                 torch.zeros((len(rows), m), dtype=torch.float64),
                                 sup_m[rows], self.query_after)
            for name in out:
                out[name].append(pred[name])
        result = {name: torch.cat(v) for name, v in out.items()}
        self.last_ess = ess
        self._cache = (key, result)
        return result

    def _pool(self, age: int, region: int) -> tuple[mc.Particles, torch.Tensor]:
        """Prior draws for one attribute combination and their ``lam`` (cached: they do
        not depend on the shopper, the batch or K)."""
        if (self.seed, age, region) not in self._pools:
            rng = np.random.default_rng([self.seed, 0, age, region])
            pool = mc.sample_particles(self.aligned.config, np.array([age]),
                                       np.array([region]), self.n_samples, rng)
            lam = torch.cat([mc.evaluate_draws(self._items, np.array([age]), pool.take(
                torch.arange(lo, min(lo + 2048, self.n_samples))[None]))[2]
                for lo in range(0, self.n_samples, 2048)], dim=1)
            self._pools[self.seed, age, region] = (pool, lam)
        return self._pools[self.seed, age, region]


def _resample(log_weights: torch.Tensor, m: int, rng: np.random.Generator) -> torch.Tensor:
    """Systematic resampling: ``m`` indices per row of ``[U, N]`` log weights."""
    cum = torch.softmax(log_weights, 1).cumsum(1)
    grid = (torch.as_tensor(rng.random((cum.shape[0], 1))) + torch.arange(m)) / m
    return torch.searchsorted(cum, grid * cum[:, -1:]).clamp_max(cum.shape[1] - 1)


def _join(parts: list[mc.Particles]) -> mc.Particles:
    return mc.Particles(*(torch.cat([getattr(q, f) for q in parts])
                          for f in ("cont", "fav", "brands", "n_bought")))
