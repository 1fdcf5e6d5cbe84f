"""Tests for toyrec_helpers.encoder: permutation invariance, K = 0, the untrained encoder
is the shared model, gradients reach every part, meta-training and the recommender."""

from __future__ import annotations

import pytest
import torch
from synthetic import small_problem

from toyrec_helpers.encoder import (
    EncoderRecommender,
    SetEncoderModel,
    encoder_loss,
    encoder_predict,
    meta_train_encoder,
)
from toyrec_helpers.episodes import EpisodeBatch, collate
from toyrec_helpers.meta import MetaConfig
from toyrec_helpers.models import FeatureRecommender

FEATURES, EPISODES = small_problem()
CONFIG = MetaConfig(inner_steps=0, meta_batch=4, epochs=2, outer_lr=1e-2)


def small_encoder(dtype=torch.float64, seed=0, randomise=True) -> SetEncoderModel:
    torch.manual_seed(seed)
    base = FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8, 6)).to(dtype)
    model = SetEncoderModel(base, width=5)
    if randomise:  # non-zero modulation heads, so that the support set matters
        with torch.no_grad():
            model.film.weight.normal_(0, 0.3)
            model.film.bias.normal_(0, 0.3)
    return model


def params_of(model):
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def test_support_order_does_not_matter_but_its_content_does():
    model = small_encoder()
    batch = collate(EPISODES[:6])
    params = params_of(model)
    perm = torch.randperm(batch.support_items.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = EpisodeBatch(batch.users, batch.support_items[:, perm],
                            batch.support_ratings[:, perm], batch.support_mask[:, perm],
                            batch.query_items, batch.query_ratings, batch.query_mask)
    a = encoder_predict(model, params, batch, "all")
    b = encoder_predict(model, params, shuffled, "all")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    flipped = EpisodeBatch(batch.users, batch.support_items, 6.0 - batch.support_ratings,
                           batch.support_mask, batch.query_items, batch.query_ratings,
                           batch.query_mask)
    assert not torch.allclose(a, encoder_predict(model, params, flipped, "all"), atol=1e-6)


def test_padding_is_ignored_and_k0_works():
    model = small_encoder()
    params = params_of(model)
    batch = collate(EPISODES[:3])
    t, s = batch.support_items.shape
    pad = lambda x, v: torch.cat([x, torch.full((t, 3), v, dtype=x.dtype)], 1)  # noqa: E731
    padded = EpisodeBatch(batch.users, pad(batch.support_items, 7),
                          pad(batch.support_ratings, 5.0), pad(batch.support_mask, 0.0),
                          batch.query_items, batch.query_ratings, batch.query_mask)
    torch.testing.assert_close(encoder_predict(model, params, batch),
                               encoder_predict(model, params, padded), rtol=1e-12, atol=1e-12)
    empty = EpisodeBatch(batch.users, batch.support_items[:, :0], batch.support_ratings[:, :0],
                         batch.support_mask[:, :0], batch.query_items, batch.query_ratings,
                         batch.query_mask)
    masked = EpisodeBatch(batch.users, batch.support_items, batch.support_ratings,
                          torch.zeros_like(batch.support_mask), batch.query_items,
                          batch.query_ratings, batch.query_mask)
    k0 = encoder_predict(model, params, empty)
    assert k0.shape == batch.query_items.shape and torch.isfinite(k0).all()
    torch.testing.assert_close(k0, encoder_predict(model, params, masked))


def test_an_untrained_encoder_is_the_shared_model():
    model = small_encoder(randomise=False)
    batch = collate(EPISODES[:5])
    params = params_of(model)
    expected = model.base(batch.users[:, None], batch.query_items)
    torch.testing.assert_close(encoder_predict(model, params, batch), expected.detach())


def test_gradients_flow_end_to_end():
    model = small_encoder()
    params = params_of(model)
    loss = encoder_loss(model, params, collate(EPISODES[:6]))
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    named = dict(zip(params, grads, strict=True))
    for prefix in ("phi.", "film.", "base.mlp.", "base.embeddings."):
        assert any(g is not None and float(g.abs().sum()) > 0
                   for n, g in named.items() if n.startswith(prefix)), prefix
    # the encoder's own layers are reached through the pooled support set
    assert float(named["phi.0.weight"].abs().sum()) > 0


def test_meta_training_lowers_the_loss_and_the_recommender_scores_items():
    model = small_encoder(torch.float32, randomise=False)
    train, val = EPISODES[:16], EPISODES[16:]
    result = meta_train_encoder(model, train, val, CONFIG, seed=0, patience=2)
    assert result.history[0]["epoch"] == 0 and len(result.history) >= 2
    rec = EncoderRecommender(model, result.params)
    batch = collate(val)
    scores = rec.predict(batch, "all")
    assert scores.shape == (len(batch), model.n_items) and torch.isfinite(scores).all()
    # without validation shoppers the last epoch is kept: the parameters moved
    last = meta_train_encoder(model, train, [], CONFIG, seed=0)
    assert last.best_epoch == CONFIG.epochs
    start = dict(model.named_parameters())
    assert any(not torch.equal(last.params[n], start[n].detach()) for n in start)
    with pytest.raises(TypeError, match="FeatureRecommender"):
        SetEncoderModel(torch.nn.Linear(2, 1))


def test_subsampled_support_sets_keep_between_one_and_all_ratings():
    from toyrec_helpers.encoder import subsample_support

    batch = collate(EPISODES[:8])
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(20):
        cut = subsample_support(batch, gen)
        kept = cut.support_mask.sum(1)
        assert ((kept >= 1) & (kept <= batch.support_mask.sum(1))).all()
        assert (cut.support_mask <= batch.support_mask).all()  # never keeps padding
        assert torch.equal(cut.query_mask, batch.query_mask)
        sizes.append(kept)
    assert len(torch.unique(torch.cat(sizes))) > 2  # the sizes do vary
