"""Tests for toyrec_helpers.mamo: MAMO reduces to MAML with empty memories, profiles
personalise the start, the vmap meta-gradient equals a plain loop, the write rules, and
meta-training plus the recommender."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from synthetic import small_problem

from toyrec_helpers.episodes import collate
from toyrec_helpers.mamo import (
    MamoConfig,
    MamoRecommender,
    init_memory,
    mamo_adapt,
    mamo_loss,
    mamo_loss_reference,
    mamo_predict,
    meta_train_mamo,
    profile,
    read_memory,
    write_memory,
)
from toyrec_helpers.meta import MetaConfig, meta_loss, predict_adapted
from toyrec_helpers.models import FeatureRecommender, parameter_names

FEATURES, EPISODES = small_problem()
CONFIG = MetaConfig(inner_steps=2, inner_lr=0.1, meta_batch=4, epochs=2)


def small_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> FeatureRecommender:
    torch.manual_seed(seed)
    return FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8,)).to(dtype)


def leaves(model):
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def filled_memory(model, config=CONFIG, mamo=None, seed=1):
    """Memories with random (non-zero) contents."""
    mamo = mamo or MamoConfig(slots=3)
    mem = init_memory(model, config, mamo, seed=0)
    gen = torch.Generator().manual_seed(seed)
    for name in ("keys", "bias", "preference"):
        t = getattr(mem, name)
        setattr(mem, name, torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.3)
    return mem, mamo


def test_empty_memories_reduce_mamo_to_maml():
    model = small_model()
    batch = collate(EPISODES[:6])
    mem, mamo = filled_memory(model)
    empty = mem.zeroed()
    assert empty.keys.abs().sum() > 0  # the keys are kept: only the contents are empty
    params = leaves(model)
    ours = mamo_predict(model, params, empty, batch, CONFIG, mamo, items="all")
    maml = predict_adapted(model, params, batch, CONFIG, items="all")
    torch.testing.assert_close(ours, maml, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mamo_loss(model, params, batch, CONFIG, empty, mamo),
                               meta_loss(model, params, batch, CONFIG), rtol=1e-12, atol=1e-12)
    # ... and non-empty memories change the predictions (the check can fail)
    assert not torch.allclose(mamo_predict(model, params, mem, batch, CONFIG, mamo),
                              predict_adapted(model, params, batch, CONFIG), atol=1e-6)


def test_two_profiles_get_two_starting_points():
    model = small_model()
    params = leaves(model)
    mem, mamo = filled_memory(model)
    users = torch.arange(model.n_users)
    profiles = profile(model, params, users)
    # two shoppers with different profiles
    u, v = 0, next(i for i in range(1, model.n_users)
                   if not torch.allclose(profiles[i], profiles[0]))
    no_steps = dataclasses.replace(CONFIG, inner_steps=0)
    empty_support = (torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64),
                     torch.zeros(1, dtype=torch.float64))
    starts = [mamo_adapt(model, params, mem, torch.tensor(w), *empty_support, no_steps, mamo)
              for w in (u, v)]
    names = parameter_names(model, "all")
    assert any(not torch.allclose(starts[0][0][n], starts[1][0][n]) for n in names)
    assert not torch.allclose(starts[0][1], starts[1][1])  # preference fast weights too
    a_u = read_memory(mem, profiles[u])[0]
    assert torch.isclose(a_u.sum(), torch.tensor(1.0, dtype=a_u.dtype)) and (a_u > 0).all()
    # the start is theta - tau * b_u
    b_u = read_memory(mem, profiles[u])[1]
    flat = torch.cat([(params[n] - starts[0][0][n]).reshape(-1) for n in names])
    torch.testing.assert_close(flat, mamo.tau * b_u.detach())


@pytest.mark.parametrize("order", ["second", "first"])
def test_meta_gradient_matches_the_reference_loop(order):
    model = small_model()
    config = dataclasses.replace(CONFIG, order=order)
    batch = collate(EPISODES[:5])
    mem, mamo = filled_memory(model, config)
    p1, p2 = leaves(model), leaves(model)
    loss1 = mamo_loss(model, p1, batch, config, mem, mamo)
    loss2 = mamo_loss_reference(model, p2, batch, config, mem, mamo)
    torch.testing.assert_close(loss1, loss2, rtol=1e-10, atol=1e-12)
    g1 = torch.autograd.grad(loss1, list(p1.values()))
    g2 = torch.autograd.grad(loss2, list(p2.values()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert sum(float(g.abs().sum()) for g in g1) > 0


def test_write_rules_move_the_memories():
    model = small_model()
    params = leaves(model)
    mamo = MamoConfig(slots=3, alpha=0.5, beta=0.5, gamma=0.5)
    mem = init_memory(model, CONFIG, mamo)
    assert float(mem.bias.abs().sum()) == 0 and float(mem.preference.abs().sum()) == 0
    batch = collate(EPISODES[:6])
    new = write_memory(model, params, mem, batch, CONFIG, mamo)
    assert float(new.bias.abs().sum()) > 0 and float(new.preference.abs().sum()) > 0
    assert not torch.allclose(new.keys, mem.keys)
    # zero write rates leave everything as it was
    still = write_memory(model, params, mem, batch, CONFIG,
                         MamoConfig(slots=3, alpha=0.0, beta=0.0, gamma=0.0))
    for name in ("keys", "bias", "preference"):
        assert torch.equal(getattr(still, name), getattr(mem, name))
    # with one slot the bias memory is the mean support gradient at theta (times alpha)
    one = MamoConfig(slots=1, alpha=1.0)
    new1 = write_memory(model, params, init_memory(model, CONFIG, one), batch, CONFIG, one)
    names = parameter_names(model, "all")
    from torch.func import functional_call

    from toyrec_helpers.models import masked_mse
    grads = []
    for t in range(len(batch)):
        pred = functional_call(model, params, (batch.users[t], batch.support_items[t]))
        loss = masked_mse(pred, batch.support_ratings[t], batch.support_mask[t])
        g = torch.autograd.grad(loss, [params[n] for n in names])
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    torch.testing.assert_close(new1.bias[0], torch.stack(grads).mean(0))


def test_meta_training_and_the_recommender():
    model = small_model(torch.float32)
    result = meta_train_mamo(model, EPISODES[:16], EPISODES[16:], CONFIG,
                             MamoConfig(slots=2), seed=0, patience=2)
    assert 0 <= result.best_epoch <= CONFIG.epochs
    assert result.history[0]["epoch"] == 0 and len(result.history) >= 2
    rec = MamoRecommender(model, result.params, result.memory, CONFIG, MamoConfig(slots=2))
    batch = collate(EPISODES[16:])
    scores = rec.predict(batch, "all")
    assert scores.shape == (len(batch), model.n_items) and torch.isfinite(scores).all()
    assert rec.predict(batch).shape == batch.query_items.shape
    with pytest.raises(ValueError, match="meta_sgd"):
        mamo_loss(model, leaves(model), batch, dataclasses.replace(CONFIG, meta_sgd="tensor"),
                  result.memory, MamoConfig(slots=2))


def test_mamo_and_encoder_are_protocol_methods(tmp_path):
    from toyrec_helpers.data import load_dataset
    from toyrec_helpers.evaluate import (
        EvalConfig,
        OuterSettings,
        SupervisedSettings,
        evaluate,
        get_method,
    )
    from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop

    shop = generate_toyshop(ToyShopConfig(seed=2, users=120, items=60, ratings=3000))
    dataset = load_dataset(write_toyshop(shop, tmp_path / "shop"))
    config = EvalConfig(ks=(1, 3), seeds=(0,), outer=OuterSettings(epochs=2),
                        supervised=SupervisedSettings(epochs=1), n_boot=50)
    result = evaluate(dataset, config, methods=["maml", "mamo", "encoder"], progress=False)
    fits = result.fits.set_index("method")
    assert fits.loc["mamo", "inner_lr"] == fits.loc["maml", "inner_lr"]  # the same tuned rate
    assert fits.loc["mamo", "best_epoch"] >= 0 and fits.loc["encoder", "best_epoch"] >= 0
    for name in ("mamo", "encoder"):
        assert get_method(name).description and not get_method(name).seed_free
        for k in config.ks:
            values = result.per_user(name, k, "mae")
            assert values.shape[1] == result.split_sizes["evaluated"]
            assert np.isfinite(values).all()
    # the encoder reads the support set: its predictions change with K
    assert not np.array_equal(result.per_user("encoder", 1, "mae"),
                              result.per_user("encoder", 3, "mae"))


def test_training_accepts_an_episode_sampler():
    model = small_model(torch.float32)
    calls = []

    def sampler(epoch):
        calls.append(epoch)
        return EPISODES[epoch % 3: epoch % 3 + 12]

    result = meta_train_mamo(model, sampler, EPISODES[16:], CONFIG, MamoConfig(slots=2))
    assert calls == list(range(1, len(result.history)))
    with pytest.raises(ValueError, match="no episode"):
        meta_train_mamo(model, lambda epoch: [], EPISODES[16:], CONFIG, MamoConfig(slots=2))
