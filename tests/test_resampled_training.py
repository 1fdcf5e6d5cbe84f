"""Resampled episodes, meta-training on a sampler, the last-layer group, bracketed tuning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import make_episodes, make_features

from toyrec_helpers.baselines import TuneResult, tune_rate_bracketed
from toyrec_helpers.episodes import EpisodeSampler, collate
from toyrec_helpers.meta import MetaConfig, meta_train
from toyrec_helpers.models import FeatureRecommender, IdEmbeddingRecommender, parameter_names


def _history_table(lengths: list[int]) -> pd.DataFrame:
    """User u rates items 100*u + 0..n-1 with ratings equal to their position (time)."""
    rows = [(u, 100 * u + t, float(t), t) for u, n in enumerate(lengths) for t in range(n)]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_sampler_draws_contiguous_support_before_query_from_the_whole_history():
    inter = _history_table([30, 12, 1, 25])
    sampler = EpisodeSampler(inter, np.array([0, 1, 2, 3]), (1, 10), n_query=5, seed=3)
    assert list(sampler.users) == [0, 1, 3] and list(sampler.skipped_users) == [2]
    cuts, ks = [], []
    for epoch in range(1, 41):
        for e in sampler(epoch):
            k, q = len(e.support_items), len(e.query_items)
            assert 1 <= k <= 10 and 1 <= q <= 5
            times = np.concatenate([e.support_ratings, e.query_ratings])
            assert np.array_equal(times, np.arange(times[0], times[0] + k + q))  # contiguous
            assert np.array_equal(e.support_items, 100 * e.user + e.support_ratings)
            cuts.append(int(e.query_ratings[0]))
            ks.append(k)
    assert set(ks) == set(range(1, 11))           # every K of the range is drawn
    assert max(cuts) > 20 and min(cuts) <= 5      # cut points span the whole history
    first, again, other = sampler(1), sampler(1), sampler(2)
    assert all(np.array_equal(a.support_items, b.support_items)
               and np.array_equal(a.query_items, b.query_items)
               for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a.query_items, b.query_items)
               for a, b in zip(first, other, strict=True))
    fixed = sampler.fixed(per_user=4)
    assert [e.user for e in fixed] == [0] * 4 + [1] * 4 + [3] * 4
    assert all(np.array_equal(a.query_items, b.query_items)
               for a, b in zip(fixed, sampler.fixed(per_user=4), strict=True))
    with pytest.raises(ValueError, match="k_range"):
        EpisodeSampler(inter, np.array([0]), (0, 3))
    with pytest.raises(ValueError, match="no user"):
        EpisodeSampler(inter, np.array([2]), (5, 10))


FEATURES = make_features(n_users=80, n_items=30, seed=0)
POOL = make_episodes(*FEATURES, seed=0)
VAL = POOL[64:]
CONFIG = MetaConfig(inner_steps=2, inner_lr=0.05, outer_lr=0.03, meta_batch=16, epochs=3)


def test_meta_train_takes_a_sampler_called_once_per_epoch():
    torch.manual_seed(0)
    model = FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8,))
    calls: list[int] = []

    def sampler(epoch: int):
        calls.append(epoch)
        start = (16 * epoch) % 48
        return POOL[start:start + 16]

    a = meta_train(model, sampler, VAL, CONFIG, seed=1, progress=False)
    assert calls == [1, 2, 3] and a.epochs_run == 3
    b = meta_train(model, sampler, VAL, CONFIG, seed=1, progress=False)
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)
    fixed = meta_train(model, POOL[16:32], VAL, CONFIG, seed=1, progress=False)
    assert any(not torch.equal(a.params[n], fixed.params[n]) for n in a.params)
    with pytest.raises(ValueError, match="no episode"):
        meta_train(model, lambda epoch: [], VAL, CONFIG, progress=False)


def test_last_group_is_the_final_linear_layer():
    model = FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8, 6))
    assert parameter_names(model, "last") == ["mlp.4.weight", "mlp.4.bias"]
    head = parameter_names(model, "head")
    assert set(parameter_names(model, "last")) < set(head)
    ids = IdEmbeddingRecommender(5, 7, 3)
    assert parameter_names(ids, "last") == parameter_names(ids, "head")
    config = MetaConfig(inner_steps=1, adapt="last")
    assert config.adapt == "last"


class _Shifted:
    """A fake recommender whose validation error depends on its rate like a valley."""

    name = "shifted"
    predicts_ratings = True

    def __init__(self, error: float) -> None:
        self.error = error

    def predict(self, batch, items=None):
        return batch.query_ratings + self.error


def _valley(optimum: float, floor: float = 0.0):
    return lambda lr: _Shifted(floor + abs(math.log10(lr) - math.log10(optimum)))


def test_bracketed_tuning_extends_the_grid_and_flags_edges():
    val = collate(POOL[:20])
    grid = (1e-3, 1e-2, 1e-1)
    inside = tune_rate_bracketed(_valley(1e-2), val, grid, unadapted=_Shifted(0.5))
    assert isinstance(inside, TuneResult)
    assert inside.best == pytest.approx(1e-2) and inside.edge == "" and inside.extended == 0
    assert not inside.worse_than_unadapted and inside.unadapted_mse == pytest.approx(0.25)
    near = tune_rate_bracketed(_valley(1e-4), val, grid, max_extend=2)
    assert near.best == pytest.approx(1e-4) and near.edge == "" and near.extended == 2
    assert [row["inner_lr"] for row in near.table] == pytest.approx([1e-5, 1e-4, *grid])
    beyond = tune_rate_bracketed(_valley(1e-7), val, grid, max_extend=2)
    assert beyond.edge == "low" and beyond.best == pytest.approx(1e-5)
    high = tune_rate_bracketed(_valley(10.0), val, grid, max_extend=1)
    assert high.edge == "high" and high.best == pytest.approx(1.0)
    worse = tune_rate_bracketed(_valley(1e-2, floor=0.3), val, grid, unadapted=_Shifted(0.2))
    assert worse.worse_than_unadapted
    with pytest.raises(ValueError, match="at least two"):
        tune_rate_bracketed(_valley(1e-2), val, (0.1,))
