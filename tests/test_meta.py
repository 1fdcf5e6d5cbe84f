"""Tests for toyrec_helpers.meta: the inner loop, the meta-loss (vmap and reference),
the exactness of the second-order meta-gradient, prediction and meta-training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from synthetic import make_episodes, make_features, small_problem
from torch.func import functional_call

from toyrec_helpers.checkpoints import load_checkpoint
from toyrec_helpers.episodes import collate
from toyrec_helpers.meta import (
    MetaConfig,
    adapt,
    init_inner_lrs,
    inner_loop,
    meta_loss,
    meta_loss_reference,
    meta_train,
    predict_adapted,
)
from toyrec_helpers.models import (
    FeatureRecommender,
    IdEmbeddingRecommender,
    masked_mse,
    parameter_names,
)

FEATURES, EPISODES = small_problem()


def small_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> FeatureRecommender:
    torch.manual_seed(seed)
    return FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8,)).to(dtype)


def leaves(model, config, inner_lrs_scale: float = 1.0):
    """Fresh leaf tensors for the initial parameters (and learned rates, if any)."""
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    rates = init_inner_lrs(model, config, params)
    if rates is not None:  # make the learned rates differ per element/tensor
        gen = torch.Generator().manual_seed(3)
        rates = {n: (r * (0.5 + torch.rand(r.shape, generator=gen, dtype=r.dtype))
                     * inner_lrs_scale).requires_grad_() for n, r in rates.items()}
    return params, rates


def gradients(loss_fn, model, params, batch, config, rates):
    loss = loss_fn(model, params, batch, config, rates)
    inputs = list(params.values()) + ([] if rates is None else list(rates.values()))
    return loss, torch.autograd.grad(loss, inputs)


BATCH = collate(EPISODES[:6])  # support 3..5 and query 4..8: padded


# ------------------------------------------------------------------ vmap == reference


@pytest.mark.parametrize("meta_sgd", ["off", "tensor", "element"])
@pytest.mark.parametrize("adapt_group", ["all", "head"])
@pytest.mark.parametrize("order", ["second", "first"])
def test_vmap_meta_loss_matches_reference(order, adapt_group, meta_sgd):
    assert BATCH.support_mask.min() == 0 and BATCH.query_mask.min() == 0  # padding present
    model = small_model()
    config = MetaConfig(inner_steps=3, inner_lr=0.05, adapt=adapt_group, order=order,
                        meta_sgd=meta_sgd)
    params, rates = leaves(model, config)
    loss, grads = gradients(meta_loss, model, params, BATCH, config, rates)
    ref_loss, ref_grads = gradients(meta_loss_reference, model, params, BATCH, config, rates)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert g.abs().max() > 0
        torch.testing.assert_close(g, ref, rtol=1e-7, atol=1e-12)


def test_vmap_matches_reference_in_float32_and_for_the_id_model():
    torch.manual_seed(0)
    model = IdEmbeddingRecommender(24, 30, embedding_dim=4)
    config = MetaConfig(inner_steps=2, inner_lr=0.05)
    params, _ = leaves(model, config)
    _, grads = gradients(meta_loss, model, params, BATCH, config, None)
    _, ref = gradients(meta_loss_reference, model, params, BATCH, config, None)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ the second-order term


def directional_fd(model, params, rates, batch, config, direction, eps=1e-6):
    """Central finite difference of the meta-loss along `direction` (float64)."""

    def at(sign):
        shifted = {n: p.detach() + sign * eps * direction[n] for n, p in params.items()}
        shifted_rates = None if rates is None else {
            n: r.detach() + sign * eps * direction["lr:" + n] for n, r in rates.items()}
        return meta_loss(model, shifted, batch, config, shifted_rates).item()

    return (at(1) - at(-1)) / (2 * eps)


@pytest.mark.parametrize(("adapt_group", "meta_sgd"),
                         [("all", "off"), ("head", "off"), ("all", "tensor")])
def test_second_order_gradient_is_exact_and_differs_from_first_order(adapt_group, meta_sgd):
    model = small_model(torch.float64)
    second = MetaConfig(inner_steps=3, inner_lr=0.1, adapt=adapt_group, meta_sgd=meta_sgd)
    first = dataclasses.replace(second, order="first")
    params, rates = leaves(model, second)
    _, g2 = gradients(meta_loss, model, params, BATCH, second, rates)
    _, g1 = gradients(meta_loss, model, params, BATCH, first, rates)
    flat2, flat1 = torch.cat([g.flatten() for g in g2]), torch.cat([g.flatten() for g in g1])
    assert (flat2 - flat1).norm() > 1e-2 * flat2.norm()  # the second-order term is there

    names = list(params) + ([] if rates is None else ["lr:" + n for n in rates])
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        shapes = [p.shape for p in params.values()] + (
            [] if rates is None else [r.shape for r in rates.values()])
        direction = {n: torch.randn(s, generator=gen, dtype=torch.float64)
                     for n, s in zip(names, shapes, strict=True)}
        d = torch.cat([direction[n].flatten() for n in names])
        fd = directional_fd(model, params, rates, BATCH, second, direction)
        assert fd == pytest.approx(float(flat2 @ d), rel=1e-6)
        assert abs(float(flat1 @ d) - fd) > 1e-4 * abs(fd)  # first order is only close


@pytest.mark.parametrize("adapt_group", ["all", "head"])
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_parameters(adapt_group):
    model = small_model(torch.float64)
    config = MetaConfig(inner_steps=3, inner_lr=0.1, adapt=adapt_group, order="first")
    params, _ = leaves(model, config)
    _, grads = gradients(meta_loss, model, params, BATCH, config, None)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for t in range(len(BATCH)):
        phi = adapt(model, {n: p.detach() for n, p in params.items()}, BATCH.users[t],
                    BATCH.support_items[t], BATCH.support_ratings[t], BATCH.support_mask[t],
                    config)
        phi = {n: p.clone().requires_grad_() for n, p in phi.items()}
        pred = functional_call(model, phi, (BATCH.users[t], BATCH.query_items[t]))
        loss = masked_mse(pred, BATCH.query_ratings[t], BATCH.query_mask[t])
        for n, g in zip(phi, torch.autograd.grad(loss, list(phi.values())), strict=True):
            expected[n] += g / len(BATCH)
    for n, g in zip(params, grads, strict=True):
        torch.testing.assert_close(g, expected[n], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ the inner loop


def task(t, batch=BATCH):
    return (batch.users[t], batch.support_items[t], batch.support_ratings[t],
            batch.support_mask[t])


def support_loss(model, params, t):
    user, items, ratings, mask = task(t)
    return masked_mse(functional_call(model, params, (user, items)), ratings, mask).item()


def test_adapt_lowers_the_support_loss_and_respects_the_group():
    model = small_model()
    params = dict(model.named_parameters())
    for adapt_group in ("all", "head"):
        config = MetaConfig(inner_steps=5, inner_lr=0.05, adapt=adapt_group)
        for t in range(len(BATCH)):
            phi = adapt(model, params, *task(t), config)
            assert list(phi) == list(params)
            assert support_loss(model, phi, t) < 0.9 * support_loss(model, params, t)
            adapted = set(parameter_names(model, adapt_group))
            for n in params:
                assert (phi[n] is params[n]) == (n not in adapted)
                if n in adapted and n.startswith("mlp."):
                    assert not torch.equal(phi[n], params[n])


def test_adapt_with_zero_steps_is_the_identity_and_padding_is_ignored():
    model = small_model()
    params = dict(model.named_parameters())
    phi = adapt(model, params, *task(0), MetaConfig(inner_steps=0))
    assert all(phi[n] is params[n] for n in params)
    config = MetaConfig(inner_steps=2)
    t = int(torch.nonzero(BATCH.support_mask.min(1).values == 0)[0])  # a padded task
    user, items, ratings, mask = task(t)
    other_items = torch.where(mask > 0, items, torch.full_like(items, 17))
    other_ratings = torch.where(mask > 0, ratings, torch.full_like(ratings, -40.0))
    a = adapt(model, params, user, items, ratings, mask, config)
    b = adapt(model, params, user, other_items, other_ratings, mask, config)
    for n in params:
        torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-12)


def test_meta_sgd_with_rates_equal_to_inner_lr_is_plain_maml():
    model = small_model()
    params = dict(model.named_parameters())
    off = MetaConfig(inner_steps=2, inner_lr=0.07)
    for mode in ("tensor", "element"):
        config = dataclasses.replace(off, meta_sgd=mode)
        rates = init_inner_lrs(model, config)
        assert set(rates) == set(parameter_names(model, "all"))
        for n, r in rates.items():
            assert r.shape == (() if mode == "tensor" else params[n].shape)
            assert torch.all(r == 0.07)
        torch.testing.assert_close(meta_loss(model, params, BATCH, config, rates),
                                   meta_loss(model, params, BATCH, off))
    assert init_inner_lrs(model, off) is None


def test_inner_lrs_errors():
    model = small_model()
    params = dict(model.named_parameters())
    with pytest.raises(ValueError, match="inner_lrs.*required"):
        meta_loss(model, params, BATCH, MetaConfig(meta_sgd="tensor"))
    rates = init_inner_lrs(model, MetaConfig(meta_sgd="tensor"))
    with pytest.raises(ValueError, match="meta_sgd is 'off'"):
        meta_loss(model, params, BATCH, MetaConfig(), rates)
    head = MetaConfig(meta_sgd="tensor", adapt="head")
    with pytest.raises(KeyError, match="one entry per adapted parameter"):
        meta_loss(model, params, BATCH, head, rates)
    with pytest.raises(KeyError, match="missing.*mlp.0.bias"):
        meta_loss(model, {n: p for n, p in params.items() if n != "mlp.0.bias"}, BATCH,
                  MetaConfig())


@pytest.mark.parametrize("order", ["second", "first"])
def test_inner_loop_engines_agree_and_keep_the_graph(order):
    """inner_loop is the core of adapt (and of accel): its two gradient engines give the
    same adapted values and the same meta-gradient."""
    model = small_model()
    params, _ = leaves(model, MetaConfig())
    user, items, ratings, mask = task(1)
    names = parameter_names(model, "head")
    fast = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in fast}
    rates = dict.fromkeys(names, 0.1)

    def loss(fast, frozen):
        return masked_mse(functional_call(model, {**frozen, **fast}, (user, items)),
                          ratings, mask)

    results = []
    for engine in ("func", "autograd"):
        phi = inner_loop(loss, fast, frozen, rates, 3, order, engine)
        assert list(phi) == names
        outer = torch.autograd.grad(loss(phi, frozen), list(params.values()))
        results.append((phi, outer))
    (phi_f, g_f), (phi_a, g_a) = results
    for n in names:
        torch.testing.assert_close(phi_f[n], phi_a[n], rtol=1e-12, atol=1e-12)
    for a, b in zip(g_f, g_a, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    config = MetaConfig(inner_steps=3, inner_lr=0.1, adapt="head", order=order)
    adapted = adapt(model, params, user, items, ratings, mask, config)
    for n in names:
        torch.testing.assert_close(adapted[n], phi_f[n], rtol=0, atol=0)
    unchanged = inner_loop(loss, fast, frozen, rates, 0)
    assert all(unchanged[n] is fast[n] for n in names) and list(unchanged) == names
    with pytest.raises(ValueError, match="'order'"):
        inner_loop(loss, fast, frozen, rates, 1, "third")
    with pytest.raises(ValueError, match="'engine'"):
        inner_loop(loss, fast, frozen, rates, 1, engine="jax")


# ------------------------------------------------------------------ predictions


def test_predict_adapted():
    model = small_model()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    config = MetaConfig(inner_steps=3)
    query = predict_adapted(model, params, BATCH, config)
    assert query.shape == BATCH.query_items.shape and not query.requires_grad
    for t in range(len(BATCH)):
        phi = adapt(model, params, *task(t), config)
        expected = functional_call(model, phi, (BATCH.users[t], BATCH.query_items[t]))
        torch.testing.assert_close(query[t], expected.detach(), rtol=1e-10, atol=1e-10)
    everything = predict_adapted(model, params, BATCH, config, items="all", chunk_size=4)
    assert everything.shape == (len(BATCH), model.n_items)
    torch.testing.assert_close(everything.gather(1, BATCH.query_items), query)
    torch.testing.assert_close(
        predict_adapted(model, params, BATCH, config, items="all", chunk_size=None), everything)
    with torch.no_grad():  # the inner loop's torch.func.grad still works under no_grad
        torch.testing.assert_close(predict_adapted(model, params, BATCH, config), query)
    some = torch.tensor([3, 0, 29])
    torch.testing.assert_close(predict_adapted(model, params, BATCH, config, items=some),
                               everything[:, some])
    with pytest.raises(ValueError, match="'items'"):
        predict_adapted(model, params, BATCH, config, items="query")
    with pytest.raises(ValueError, match="'items'.*0..29"):  # episodes.resolve_items checks
        predict_adapted(model, params, BATCH, config, items=torch.tensor([3, 30]))


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("field", "value"), [
    ("inner_steps", -1), ("inner_steps", 2.5), ("inner_lr", 0.0), ("inner_lr", math.nan),
    ("adapt", "body"), ("order", "third"), ("meta_sgd", "layer"), ("outer_lr", -1e-3),
    ("meta_batch", 0), ("epochs", 0), ("weight_decay", -1.0), ("max_grad_norm", 0.0),
])
def test_meta_config_validation(field, value):
    with pytest.raises(ValueError, match=f"MetaConfig.{field}"):
        MetaConfig(**{field: value})


def test_meta_config_round_trip():
    config = MetaConfig(meta_sgd=True, adapt="head")
    assert config.meta_sgd == "element" and MetaConfig(meta_sgd=False).meta_sgd == "off"
    assert MetaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="no field.*'lr'"):
        MetaConfig.from_dict({"lr": 0.1})


# ------------------------------------------------------------------ meta-training


TRAIN_FEATURES = make_features(n_users=120, n_items=30, seed=0)
TRAIN_EPISODES = make_episodes(*TRAIN_FEATURES, seed=0)
TRAIN, VAL = TRAIN_EPISODES[:96], TRAIN_EPISODES[96:]
TRAIN_CONFIG = MetaConfig(inner_steps=2, inner_lr=0.05, outer_lr=0.03, meta_batch=16, epochs=4)


def train_model() -> FeatureRecommender:
    torch.manual_seed(0)
    return FeatureRecommender(*TRAIN_FEATURES, embedding_dim=4, hidden=(8,))


def test_meta_train_is_deterministic_and_improves_validation():
    model = train_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = meta_train(model, TRAIN, VAL, TRAIN_CONFIG, seed=1, progress=False)
    b = meta_train(model, TRAIN, VAL, TRAIN_CONFIG, seed=1, progress=False)
    c = meta_train(model, TRAIN, VAL, TRAIN_CONFIG, seed=2, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])  # the model itself is left alone
        assert torch.equal(a.params[n], b.params[n])
    assert [r["train_loss"] for r in a.history[1:]] == [r["train_loss"] for r in b.history[1:]]
    assert any(not torch.equal(a.params[n], c.params[n]) for n in a.params)
    assert [r["epoch"] for r in a.history] == list(range(5))
    assert math.isnan(a.history[0]["train_loss"])
    assert a.best_val_mse == min(r["val_mse"] for r in a.history)
    assert a.best_val_mse < 0.8 * a.history[0]["val_mse"]
    assert a.history[a.best_epoch]["val_mse"] == a.best_val_mse
    model.load_state_dict(a.params)  # the result loads into the model (no buffers needed)
    val = collate(VAL)
    pred = predict_adapted(model, a.params, val, TRAIN_CONFIG)
    mse = masked_mse(pred, val.query_ratings, val.query_mask).mean().item()
    assert mse == pytest.approx(a.best_val_mse, rel=1e-5)


def test_meta_train_patience_restores_the_best_epoch(tmp_path):
    model = train_model()
    config = dataclasses.replace(TRAIN_CONFIG, outer_lr=0.1, epochs=12)  # overshoots
    result = meta_train(model, TRAIN, VAL, config, progress=False, patience=2,
                        checkpoint_path=tmp_path / "best.pt")
    assert result.stopped_early and len(result.history) < 13
    vals = [r["val_mse"] for r in result.history]
    assert result.best_epoch == vals.index(min(vals)) == len(vals) - 3
    saved = load_checkpoint(tmp_path / "best.pt", model=model, expected_config=config)
    assert saved.extra["epoch"] == result.best_epoch
    for n, p in result.params.items():
        assert torch.equal(saved.params[n], p)
    with pytest.raises(FileExistsError, match="best.pt"):
        meta_train(model, TRAIN, VAL, config, progress=False,
                   checkpoint_path=tmp_path / "best.pt")


def test_meta_train_meta_sgd_learns_rates_and_reports_divergence():
    model = train_model()
    config = dataclasses.replace(TRAIN_CONFIG, meta_sgd="tensor", epochs=2)
    result = meta_train(model, TRAIN, [], config, progress=False)
    assert result.best_epoch == 2 and math.isnan(result.best_val_mse)
    assert any(float(r) != 0.05 for r in result.inner_lrs.values())
    with pytest.raises(FloatingPointError, match="epoch 1, meta-step 0.*inner_lr"):
        meta_train(model, TRAIN, VAL, dataclasses.replace(TRAIN_CONFIG, inner_lr=1e4),
                   progress=False)
