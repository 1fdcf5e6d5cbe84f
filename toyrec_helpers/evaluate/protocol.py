"""The protocol run: split and cut the data into episodes, fit every method per seed,
score it at every K.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from toyrec_helpers.data import Dataset, load_dataset
from toyrec_helpers.episodes import (
    Episode,
    EpisodeBatch,
    EpisodeSampler,
    UserSplit,
    collate,
    make_episodes,
    split_users,
)
from toyrec_helpers.evaluate.methods import (
    SeedContext,
    fit_method,
    get_method,
    method_names,
    needs_answer_key,
    resolve_methods,
)
from toyrec_helpers.evaluate.report import EvalResult
from toyrec_helpers.evaluate.scoring import score_recommender
from toyrec_helpers.evaluate.settings import EvalConfig
from toyrec_helpers.features import EncodedFeatures, encode_dataset
from toyrec_helpers.recommenders import Recommender
from toyrec_helpers.toyshop import answer_key, config_from_schema

__all__ = ["EvalData", "evaluate", "prepare"]


@dataclass(frozen=True)
class EvalData:
    """Everything the protocol derives from a data set before any training.

    Attributes
    ----------
    dataset : Dataset
        The data.
    config : EvalConfig
        The settings used.
    split : UserSplit
        Meta-train, meta-validation and meta-test shoppers.
    user_features, item_features : EncodedFeatures
        Encoded with vocabularies fitted on the meta-train shoppers.
    train_interactions : pandas.DataFrame
        The ratings of meta-train shoppers only: all that supervised training and
        popularity see.
    train_episodes : list of Episode
        ``K = train_k``, ``Q = train_q`` episodes of meta-train shoppers (their first
        ratings): meta-training's tasks when ``outer.resample`` is off (otherwise see
        :meth:`train_sampler`).
    val_episodes : list of Episode
        Meta-validation tasks (inner-rate tuning, early stopping): with
        ``outer.resample``, ``outer.val_per_shopper`` episodes per meta-validation
        shopper drawn once from their whole history, ``K`` in
        :attr:`EvalConfig.train_k_range`, ``Q = train_q``; otherwise their first
        ``train_k`` and next ``train_q`` ratings.
    test_episodes : list of Episode
        One per evaluated meta-test shopper: support = the first ``max(ks)`` ratings,
        query = all the rest (the query of every K).
    skipped_users : numpy.ndarray
        Meta-test shoppers with too few ratings.
    answer_key : numpy.ndarray or None
        ``[n_users, n_items]`` expected ratings, when the data has an answer key and it was
        asked for.
    answer_key_note : str
        Why there is no answer key (empty when there is one).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    dataset: Dataset
    config: EvalConfig
    split: UserSplit
    user_features: EncodedFeatures
    item_features: EncodedFeatures
    train_interactions: pd.DataFrame
    train_episodes: list[Episode]
    val_episodes: list[Episode]
    test_episodes: list[Episode]
    skipped_users: np.ndarray
    answer_key: np.ndarray | None
    answer_key_note: str
    _batches: dict[int, EpisodeBatch] = field(default_factory=dict, repr=False)

    @property
    def users(self) -> np.ndarray:
        """The evaluated meta-test shoppers (one per test episode), int64."""
        return np.array([e.user for e in self.test_episodes], dtype=np.int64)

    def train_sampler(self, seed: int) -> EpisodeSampler:
        """Meta-training's episodes with ``outer.resample``: a new episode per meta-train
        shopper every epoch, ``K`` drawn from :attr:`EvalConfig.train_k_range`, ``Q =
        train_q``, the draws seeded by the training ``seed``."""
        c = self.config
        return EpisodeSampler(self.dataset.interactions, self.split.train, c.train_k_range,
                              c.train_q, seed=int(seed))

    @property
    def val_batch(self) -> EpisodeBatch:
        """The meta-validation episodes, collated."""
        if -1 not in self._batches:
            self._batches[-1] = collate(self.val_episodes)
        return self._batches[-1]

    def test_batch(self, k: int) -> EpisodeBatch:
        """The meta-test batch at shot ``k``: support = first ``k`` ratings, query = the
        ratings after the first ``max(ks)`` (the same for every ``k``)."""
        if k not in self.config.ks:
            raise ValueError(f"argument 'k': expected one of {self.config.ks}, got {k!r}")
        if k not in self._batches:
            self._batches[k] = collate([
                Episode(e.user, e.support_items[:k], e.support_ratings[:k], e.query_items,
                        e.query_ratings) for e in self.test_episodes])
        return self._batches[k]


def _answer_key(dataset: Dataset) -> tuple[np.ndarray | None, str]:
    try:
        generated = config_from_schema(dataset.schema.raw) is not None
        if not generated:
            return None, f"{dataset.path} was not made by the ToyShop generator"
        return answer_key(dataset), ""
    except ValueError as exc:  # other generator version, or edited files
        return None, str(exc)


def prepare(
    dataset: Dataset | str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    with_answer_key: bool = True,
) -> EvalData:
    """Split, encode and cut a data set into the protocol's episodes (no training).

    Parameters
    ----------
    dataset : Dataset, path or None
        A loaded data set, a data directory, or ``None`` for the ToyShop.
    config : EvalConfig, optional
        Settings (default ``EvalConfig()``).
    with_answer_key : bool
        Compute the answer key when the data has one (needed for ``"oracle"``).

    Returns
    -------
    EvalData

    Raises
    ------
    ValueError
        If no meta-test shopper has ``max(ks) + min_query`` ratings, or no meta-train
        shopper has ``train_k + train_q``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    config = EvalConfig() if config is None else config
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    inter = dataset.interactions
    split = split_users(dataset.n_users, config.fractions, seed=config.split_seed)
    user_features, item_features, _, _ = encode_dataset(dataset, fit_users=split.train)
    train_interactions = inter[inter["user"].isin(split.train)].reset_index(drop=True)
    seed = config.split_seed  # orders ratings only when the data has no timestamps
    train = make_episodes(inter, split.train, config.train_k, config.train_q, seed=seed)
    if config.outer.resample:
        val_episodes = EpisodeSampler(inter, split.val, config.train_k_range, config.train_q,
                                      seed=seed).fixed(config.outer.val_per_shopper)
    else:
        val_episodes = make_episodes(inter, split.val, config.train_k, config.train_q,
                                     seed=seed).episodes
    test = make_episodes(inter, split.test, max(config.ks), None, config.min_query, seed=seed)
    if len(train) == 0:
        raise ValueError(f"{dataset.path}: no meta-train shopper has train_k + train_q = "
                         f"{config.train_k + config.train_q} ratings")
    if len(test) == 0:
        raise ValueError(f"{dataset.path}: no meta-test shopper has max(ks) + min_query = "
                         f"{max(config.ks) + config.min_query} ratings; lower the largest K")
    key, note = _answer_key(dataset) if with_answer_key else (None, "not computed")
    return EvalData(
        dataset=dataset, config=config, split=split, user_features=user_features,
        item_features=item_features, train_interactions=train_interactions,
        train_episodes=train.episodes, val_episodes=val_episodes,
        test_episodes=test.episodes, skipped_users=test.skipped_users, answer_key=key,
        answer_key_note=note,
    )


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (so a stored
    result does not record one machine's absolute paths), else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def evaluate(
    dataset: Dataset | str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    methods: Iterable[str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run the cold-start protocol: train every method per seed, score it at every K.

    Parameters
    ----------
    dataset, config
        As for :func:`prepare`; the default settings ``EvalConfig()`` evaluate K = 1, 3, 5,
        10 with seeds 0, 1, 2.
    methods : iterable of str, optional
        Subset of :data:`METHODS`; default all (``"oracle"`` when there is an answer key).
    progress : bool
        Show a ``tqdm`` bar over (seed, method) steps.

    Returns
    -------
    EvalResult

    Raises
    ------
    ValueError
        Unknown method, ``"oracle"`` without an answer key, a method that needs ratings
        asked for by name on a purchase log, or no shopper to evaluate.

    Notes
    -----
    On data without usable ratings (a purchase log, or ratings all equal:
    :attr:`~toyrec_helpers.data.Dataset.has_ratings` false) only ranking methods run (by
    default the others are skipped, and :attr:`EvalResult.skipped_methods` says why),
    only the catalogue metrics ``hr@10`` and ``ndcg@10`` are computed, and every query
    purchase is relevant.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    config = EvalConfig() if config is None else config
    if not isinstance(config, EvalConfig):
        raise TypeError(f"argument 'config': expected EvalConfig, got {type(config).__name__}")
    if methods is not None and not isinstance(methods, str):
        methods = list(methods)
    data = prepare(dataset, config, with_answer_key=needs_answer_key(methods))
    chosen = resolve_methods(methods, data)
    skipped = {} if methods is not None else {  # left out by default: why (e.g. no ratings)
        m: get_method(m).missing(data) for m in method_names() if m not in chosen}
    seed_free = tuple(m for m in chosen if get_method(m).seed_free)
    n_seeds, n_users = len(config.seeds), len(data.test_episodes)
    values: dict[tuple[str, int, str], np.ndarray] = {}
    fits, recommenders = [], {}
    once: dict[str, tuple[Recommender, dict[int, dict[str, np.ndarray]]]] = {}
    bar = tqdm(total=n_seeds * len(chosen), desc="evaluate", disable=not progress)
    for s, seed in enumerate(config.seeds):
        ctx = SeedContext(data, seed)
        for name in chosen:
            bar.set_postfix_str(f"seed {seed}, {name}")
            if name in once:  # seed-free: fitted and scored once
                rec, scored = once[name]
                info = {**_UNFITTED, "seed": seed, "method": name}
            else:
                rec, info = fit_method(name, ctx)
                scored = {k: _score(rec, data, k, f"method {name!r}, seed {seed}, K={k}")
                          for k in config.ks}
                if name in seed_free:
                    once[name] = (rec, scored)
            fits.append(info)
            for k in config.ks:
                for metric, v in scored[k].items():
                    values.setdefault((name, k, metric), np.full((n_seeds, n_users), np.nan))
                    values[(name, k, metric)][s] = v
            if s == n_seeds - 1:
                recommenders[name] = rec
            bar.update(1)
    bar.close()
    split = data.split
    return EvalResult(
        data=_display_path(data.dataset.path), config=config, methods=chosen, users=data.users,
        skipped_users=data.skipped_users.copy(), values=values, fits=pd.DataFrame(fits),
        recommenders=recommenders,
        split_sizes={"train": len(split.train), "val": len(split.val), "test": len(split.test),
                     "evaluated": n_users, "skipped": int(len(data.skipped_users))},
        seed_free=seed_free, data_kind="ratings" if data.dataset.has_ratings else "purchases",
        skipped_methods=skipped,
    )


_UNFITTED = {"seed": -1, "method": "", "inner_lr": math.nan, "best_epoch": -1,
             "stopped_early": False, "epochs_run": -1, "lr_edge": "", "val_mse": math.nan,
             "unadapted_val_mse": math.nan, "worse_than_unadapted": False, "seconds": 0.0}
"""The fit record of a seed-free method after its first seed (nothing was fitted)."""


def _score(rec: Recommender, data: EvalData, k: int, where: str) -> dict[str, np.ndarray]:
    try:
        return score_recommender(rec, data, k)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
