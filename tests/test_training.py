"""Tests of toyrec_helpers.training (supervised training of a rating model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.synthetic import make_episodes, make_features
from toyrec_helpers.models import FeatureRecommender
from toyrec_helpers.training import evaluate_mse, train_supervised


def _ratings(seed: int = 0) -> tuple[FeatureRecommender, tuple[np.ndarray, ...]]:
    users, items = make_features(n_users=24, n_items=30)
    episodes = make_episodes(users, items, seed=seed)
    u = np.concatenate([np.full(len(e.support_items) + len(e.query_items), e.user)
                        for e in episodes])
    i = np.concatenate([np.concatenate([e.support_items, e.query_items]) for e in episodes])
    r = np.concatenate([np.concatenate([e.support_ratings, e.query_ratings])
                        for e in episodes])
    torch.manual_seed(0)
    model = FeatureRecommender(users, items, embedding_dim=4, hidden=(16,),
                               rating_mean=float(r.mean()))
    return model, (u, i, r)


def test_training_reduces_mse_and_leaves_model_unchanged() -> None:
    model, (u, i, r) = _ratings()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start_mse = evaluate_mse(model, before, u, i, r)
    result = train_supervised(model, u, i, r, epochs=15, lr=1e-2, batch_size=32)
    end_mse = evaluate_mse(model, result.params, u, i, r)
    assert end_mse < 0.7 * start_mse
    assert [h["epoch"] for h in result.history] == list(range(16))
    assert math.isnan(result.history[0]["train_mse"])
    assert result.history[-1]["train_mse"] < result.history[1]["train_mse"]
    assert result.best_epoch == 15 and not result.stopped_early
    for n, p in model.named_parameters():  # training works on copies
        assert torch.equal(p, before[n])
    assert all(not p.requires_grad for p in result.params.values())


def test_training_is_deterministic_for_a_seed() -> None:
    model, (u, i, r) = _ratings()
    runs = [train_supervised(model, u, i, r, epochs=3, lr=1e-2, batch_size=16, seed=s)
            for s in (7, 7, 8)]
    for n in runs[0].params:
        assert torch.equal(runs[0].params[n], runs[1].params[n])
    assert [h["train_mse"] for h in runs[0].history[1:]] == \
        [h["train_mse"] for h in runs[1].history[1:]]
    assert any(not torch.equal(runs[0].params[n], runs[2].params[n]) for n in runs[0].params)


def test_best_epoch_is_restored_and_patience_stops() -> None:
    model, (u, i, r) = _ratings()
    with torch.no_grad():  # validation targets = the initial model's own predictions
        target = model(torch.as_tensor(u), torch.as_tensor(i)).numpy()
    result = train_supervised(model, u, i, r, epochs=10, lr=1e-2, batch_size=32,
                              val=(u, i, target), patience=2)
    assert result.best_epoch == 0 and result.best_val_mse < 1e-10
    assert result.stopped_early and len(result.history) == 3
    for n, p in model.named_parameters():
        assert torch.equal(result.params[n], p.detach())
    assert all(h["val_mse"] > 1e-6 for h in result.history[1:])


def test_validation_mse_is_recorded_each_epoch() -> None:
    model, (u, i, r) = _ratings()
    result = train_supervised(model, u[:200], i[:200], r[:200], epochs=4, lr=1e-2,
                              batch_size=32, val=(u[200:], i[200:], r[200:]))
    vals = [h["val_mse"] for h in result.history]
    assert all(math.isfinite(v) for v in vals)
    assert result.best_val_mse == min(vals) == vals[result.best_epoch]
    assert evaluate_mse(model, result.params, u[200:], i[200:], r[200:]) == \
        pytest.approx(result.best_val_mse, rel=1e-6)


def test_bad_input_is_reported() -> None:
    model, (u, i, r) = _ratings()
    with pytest.raises(ValueError, match="equal lengths"):
        train_supervised(model, u, i, r[:-1], epochs=1, lr=1e-2, batch_size=8)
    with pytest.raises(ValueError, match="patience"):
        train_supervised(model, u, i, r, epochs=1, lr=1e-2, batch_size=8, patience=1)
    with pytest.raises(ValueError, match="batch_size"):
        train_supervised(model, u, i, r, epochs=1, lr=1e-2, batch_size=0)
    with pytest.raises(ValueError, match="integer indices"):
        train_supervised(model, u.astype(float), i, r, epochs=1, lr=1e-2, batch_size=8)
