"""Tests of toyrec_helpers.baselines (the methods MAML is compared with)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import vmap

from tests.synthetic import make_episodes, make_features
from toyrec_helpers.baselines import (
    INNER_LR_GRID,
    AdaptedModelRecommender,
    ArticleRecommender,
    FixedModelRecommender,
    OracleRecommender,
    PopularityRecommender,
    Recommender,
    adam_adapt,
    fit_article,
    fit_global,
    ratings_of,
    tune_inner_lr,
    tune_rate,
)
from toyrec_helpers.episodes import collate
from toyrec_helpers.meta import MetaConfig
from toyrec_helpers.models import IdEmbeddingRecommender

N_USERS, N_ITEMS = 24, 30
TRAIN, TEST = np.arange(16), np.arange(16, 24)


def _interactions(episodes: list) -> pd.DataFrame:
    rows = [(e.user, int(i), float(r)) for e in episodes
            for i, r in zip(np.concatenate([e.support_items, e.query_items]),
                            np.concatenate([e.support_ratings, e.query_ratings]), strict=True)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


@pytest.fixture(scope="module")
def world() -> dict:
    users, items = make_features(N_USERS, N_ITEMS)
    episodes = make_episodes(users, items)
    interactions = _interactions(episodes)
    fitted = fit_global(users, items, interactions, TRAIN, embedding_dim=4, hidden=(16,),
                        epochs=5, lr=1e-2, batch_size=32)
    article = fit_article(interactions, TRAIN, N_USERS, N_ITEMS, embedding_dim=4, epochs=5,
                          batch_size=32, finetune_lr=0.05)
    expected = np.random.default_rng(0).uniform(1, 5, (N_USERS, N_ITEMS)).astype(np.float32)
    config = MetaConfig(inner_steps=3, inner_lr=0.1)
    recommenders = {
        "popularity": PopularityRecommender(interactions, TRAIN, N_ITEMS),
        "count": PopularityRecommender(interactions, TRAIN, N_ITEMS, by="count"),
        "global": fitted.recommender,
        "finetune": AdaptedModelRecommender(fitted.model, fitted.params, config),
        "article": article.recommender,
        "oracle": OracleRecommender(expected),
    }
    return {"episodes": episodes, "interactions": interactions, "fitted": fitted,
            "article": article, "expected": expected, "recommenders": recommenders,
            "test_batch": collate([episodes[u] for u in TEST])}


METHODS = ["popularity", "count", "global", "finetune", "article", "oracle"]
ADAPTIVE = {"finetune", "article"}


@pytest.mark.parametrize("method", METHODS)
def test_predict_shapes_for_each_items_mode(world: dict, method: str) -> None:
    rec = world["recommenders"][method]
    batch = world["test_batch"]
    assert isinstance(rec, Recommender) and isinstance(rec.name, str)
    assert rec.predicts_ratings is (method != "count")
    t, q = batch.query_items.shape
    on_query = rec.predict(batch)
    everything = rec.predict(batch, "all")
    some = torch.tensor([3, 0, 29, 7])
    per_task = torch.randint(0, N_ITEMS, (t, 5), generator=torch.Generator().manual_seed(1))
    assert on_query.shape == (t, q)
    assert everything.shape == (t, N_ITEMS)
    assert rec.predict(batch, some).shape == (t, 4)
    assert rec.predict(batch, per_task).shape == (t, 5)
    assert not on_query.requires_grad and torch.isfinite(everything).all()
    # The modes agree: each is a selection of the full-catalogue scores.
    torch.testing.assert_close(on_query, everything.gather(1, batch.query_items))
    torch.testing.assert_close(rec.predict(batch, some), everything[:, some])
    torch.testing.assert_close(rec.predict(batch, per_task), everything.gather(1, per_task))
    for bad, message in ((torch.tensor([0, N_ITEMS]), "0..29"),
                         (torch.tensor([0.0, 1.0]), "int64"),
                         (torch.zeros((t + 1, 2), dtype=torch.int64), "rows"),
                         ("query", "expected None, 'all'")):
        with pytest.raises(ValueError, match=message):
            rec.predict(batch, bad)


@pytest.mark.parametrize("method", METHODS)
def test_no_method_peeks_at_the_query(world: dict, method: str) -> None:
    rec = world["recommenders"][method]
    batch = world["test_batch"]
    gen = torch.Generator().manual_seed(2)
    peeked = dataclasses.replace(
        batch,
        query_ratings=torch.randint(1, 6, batch.query_ratings.shape, generator=gen).float(),
        query_mask=torch.ones_like(batch.query_mask),
    )
    for items in (None, "all"):
        torch.testing.assert_close(rec.predict(batch, items), rec.predict(peeked, items),
                                   rtol=0, atol=0)
    # Non-vacuous: the adaptive methods do read the support ratings, the others do not.
    flipped = dataclasses.replace(batch, support_ratings=6.0 - batch.support_ratings)
    changed = not torch.equal(rec.predict(batch), rec.predict(flipped))
    assert changed is (method in ADAPTIVE)


def test_popularity_matches_hand_computation() -> None:
    frame = pd.DataFrame({"user": [0, 0, 1, 1, 2, 3],
                          "item": [0, 1, 0, 2, 0, 3],
                          "rating": [5.0, 1.0, 4.0, 2.0, 3.0, 5.0]})
    train = np.array([0, 1, 2])  # user 3 (the only rating of item 3) is not a training user
    pop = PopularityRecommender(frame, train, n_items=5, shrinkage=2.0)
    mu = (5 + 1 + 4 + 2 + 3) / 5
    expected = [(12 + 2 * mu) / 5, (1 + 2 * mu) / 3, (2 + 2 * mu) / 3, mu, mu]
    assert pop.global_mean == pytest.approx(mu)
    np.testing.assert_allclose(pop.scores.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(pop.counts.numpy(), [3, 1, 1, 0, 0])
    batch = collate(make_episodes(*make_features(4, 5), k_range=(1, 1), q_range=(3, 3)))
    np.testing.assert_allclose(pop.predict(batch, "all").numpy(),
                               np.tile(expected, (4, 1)), rtol=1e-6)
    count = PopularityRecommender(frame, train, n_items=5, by="count")
    assert not count.predicts_ratings and count.name == "popularity (count)"
    np.testing.assert_array_equal(count.predict(batch, "all")[0].numpy(), [3, 1, 1, 0, 0])


def test_popularity_shrinkage_moves_rare_items_towards_the_mean() -> None:
    frame = pd.DataFrame({"user": np.arange(11), "item": [0] * 10 + [1],
                          "rating": [5.0] * 10 + [5.0]})
    frame.loc[frame.index[:5], "rating"] = 1.0  # item 0: five 1s and five 5s
    plain = PopularityRecommender(frame, None, 3, shrinkage=0.0).scores
    np.testing.assert_allclose(plain[:2].numpy(), [3.0, 5.0])
    mu = float(frame["rating"].mean())
    assert plain[2] == pytest.approx(mu)  # no rating, no shrinkage: still the global mean
    pulls = []
    for m in (1.0, 10.0, 1e6):
        scores = PopularityRecommender(frame, None, 3, shrinkage=m).scores
        pulls.append(abs(float(scores[1]) - 5.0))
        # The rarely rated item (1 rating) moves towards mu more than the item with 10.
        assert abs(float(scores[1]) - 5.0) / abs(mu - 5.0) > \
            abs(float(scores[0]) - 3.0) / abs(mu - 3.0)
        assert float(scores[2]) == pytest.approx(mu)
    assert pulls == sorted(pulls)
    np.testing.assert_allclose(
        PopularityRecommender(frame, None, 3, shrinkage=1e6).scores.numpy(), mu, atol=1e-4)
    with pytest.raises(ValueError, match="shrinkage"):
        PopularityRecommender(frame, None, 3, shrinkage=-1.0)
    with pytest.raises(ValueError, match="'by'"):
        PopularityRecommender(frame, None, 3, by="median")


def test_article_vectorised_adam_equals_a_per_user_torch_adam_loop() -> None:
    episodes = make_episodes(*make_features(N_USERS, N_ITEMS), users=np.arange(6))
    batch = collate(episodes)  # support sizes 3..5, so padding is exercised
    torch.manual_seed(3)
    model = IdEmbeddingRecommender(N_USERS, N_ITEMS, embedding_dim=4, rating_mean=3.0)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps, lr = 5, 0.05
    rec = ArticleRecommender(model, params, steps=steps, lr=lr)
    vectorised = rec.predict(batch, "all")
    tuned = vmap(lambda *a: adam_adapt(model, params, *a, steps=steps, lr=lr))(
        batch.users, batch.support_items, batch.support_ratings, batch.support_mask)
    for t, episode in enumerate(episodes):
        user_model = copy.deepcopy(model)
        optimizer = torch.optim.Adam(user_model.parameters(), lr=lr)
        user = torch.tensor(episode.user)
        items = torch.from_numpy(episode.support_items)
        ratings = torch.from_numpy(episode.support_ratings)
        for _ in range(steps):
            optimizer.zero_grad()
            ((user_model(user, items) - ratings) ** 2).mean().backward()
            optimizer.step()
        for n, p in user_model.named_parameters():
            torch.testing.assert_close(tuned[n][t], p.detach(), rtol=1e-5, atol=1e-6)
        loop = user_model(user, torch.arange(N_ITEMS)).detach()
        torch.testing.assert_close(vectorised[t], loop, rtol=1e-5, atol=1e-5)
    untuned = FixedModelRecommender(model, params).predict(batch, "all")
    assert (vectorised - untuned).abs().max() > 0.05  # the fine-tuning did something


def test_zero_steps_equal_the_fixed_model(world: dict) -> None:
    fitted, batch = world["fitted"], world["test_batch"]
    fixed = FixedModelRecommender(fitted.model, fitted.params)
    adapted = AdaptedModelRecommender(fitted.model, fitted.params,
                                      MetaConfig(inner_steps=0, inner_lr=0.1))
    article = world["article"]
    article_fixed = FixedModelRecommender(article.model, article.params)
    article_zero = ArticleRecommender(article.model, article.params, steps=0)
    for items in (None, "all"):
        torch.testing.assert_close(adapted.predict(batch, items), fixed.predict(batch, items))
        torch.testing.assert_close(article_zero.predict(batch, items),
                                   article_fixed.predict(batch, items))


def test_new_users_id_embedding_is_untouched_by_article_pretraining(world: dict) -> None:
    article = world["article"]
    before = article.initial_params["user_embedding.weight"]
    after = article.params["user_embedding.weight"]
    torch.testing.assert_close(after[TEST], before[TEST], rtol=0, atol=0)
    assert (after[TRAIN] - before[TRAIN]).abs().amax(1).min() > 1e-3
    assert torch.equal(article.model.user_embedding.weight.detach(), after)


def test_fit_global_is_seeded_and_uses_the_training_mean(world: dict) -> None:
    users, items = make_features(N_USERS, N_ITEMS)
    interactions = world["interactions"]
    state = torch.random.get_rng_state()
    runs = [fit_global(users, items, interactions, TRAIN, embedding_dim=4, hidden=(16,),
                       epochs=2, batch_size=32, seed=s) for s in (1, 1, 2)]
    assert torch.equal(torch.random.get_rng_state(), state)  # no global side effect
    for n in runs[0].params:
        assert torch.equal(runs[0].params[n], runs[1].params[n])
    assert any(not torch.equal(runs[0].params[n], runs[2].params[n]) for n in runs[0].params)
    train_mean = float(ratings_of(interactions, TRAIN)[2].mean())
    assert runs[0].model.rating_mean == pytest.approx(train_mean)
    assert float(runs[0].initial_params["mlp.2.bias"]) == pytest.approx(train_mean)


def test_tune_inner_lr_picks_the_lowest_validation_mse(world: dict) -> None:
    fitted, batch = world["fitted"], world["test_batch"]
    config = MetaConfig(inner_steps=3, inner_lr=0.05)
    best, table = tune_inner_lr(fitted.model, fitted.params, batch, config,
                                grid=(0.01, 0.1, 1e4))
    assert [row["inner_lr"] for row in table] == [0.01, 0.1, 1e4]
    assert best == min(table, key=lambda row: row["val_mse"])["inner_lr"]
    assert best != 1e4 and table[2]["val_mse"] > table[0]["val_mse"]
    rec = AdaptedModelRecommender(fitted.model, fitted.params,
                                  dataclasses.replace(config, inner_lr=best))
    err = (rec.predict(batch) - batch.query_ratings) ** 2 * batch.query_mask
    direct = float((err.sum(1) / batch.query_mask.sum(1)).mean())
    chosen = next(row for row in table if row["inner_lr"] == best)
    assert chosen["val_mse"] == pytest.approx(direct, rel=1e-6)
    assert all(math.isfinite(row["val_mae"]) or row["inner_lr"] == 1e4 for row in table)
    assert INNER_LR_GRID == (0.01, 0.03, 0.1, 0.3)


def test_one_tuning_rule_serves_sgd_and_adam_adaptation(world: dict) -> None:
    from toyrec_helpers import baselines, recommenders

    assert baselines.AdaptedModelRecommender is recommenders.AdaptedModelRecommender
    fitted, article, batch = world["fitted"], world["article"], world["test_batch"]
    config = MetaConfig(inner_steps=3, inner_lr=0.05)
    grid = (0.01, 0.1, 1e4)
    sgd = tune_rate(lambda lr: AdaptedModelRecommender(
        fitted.model, fitted.params, dataclasses.replace(config, inner_lr=lr)), batch, grid)
    assert sgd == tune_inner_lr(fitted.model, fitted.params, batch, config, grid=grid)
    best, table = tune_rate(lambda lr: ArticleRecommender(article.model, article.params,
                                                          steps=3, lr=lr), batch, grid)
    assert [row["inner_lr"] for row in table] == list(grid)
    assert best == min(table, key=lambda row: row["val_mse"])["inner_lr"]
    direct = ArticleRecommender(article.model, article.params, steps=3, lr=best)
    err = (direct.predict(batch) - batch.query_ratings) ** 2 * batch.query_mask
    chosen = next(row for row in table if row["inner_lr"] == best)
    assert chosen["val_mse"] == pytest.approx(float((err.sum(1) / batch.query_mask.sum(1))
                                                    .mean()), rel=1e-6)
    with pytest.raises(FloatingPointError, match="every Adam rate in"):
        tune_rate(lambda lr: ArticleRecommender(article.model, article.params, lr=lr),
                  batch, (1e30,), "Adam rate")


def test_oracle_returns_the_answer_key(world: dict) -> None:
    batch, expected = world["test_batch"], world["expected"]
    pred = world["recommenders"]["oracle"].predict(batch, "all")
    np.testing.assert_array_equal(pred.numpy(), expected[batch.users.numpy()])
    with pytest.raises(ValueError, match="n_users, n_items"):
        OracleRecommender(expected[0])


def test_real_toyshop_new_users_keep_random_rows_and_oracle_beats_popularity() -> None:
    from toyrec_helpers.data import load_dataset
    from toyrec_helpers.episodes import make_episodes as real_episodes
    from toyrec_helpers.episodes import split_users
    from toyrec_helpers.metrics import mae
    from toyrec_helpers.toyshop import answer_key

    dataset = load_dataset()
    split = split_users(dataset.n_users, seed=0)
    article = fit_article(dataset.interactions, split.train, dataset.n_users,
                          dataset.n_items, epochs=1, batch_size=2048)
    before = article.initial_params["user_embedding.weight"]
    after = article.params["user_embedding.weight"]
    assert torch.equal(after[split.test], before[split.test])
    assert not torch.equal(after[split.train], before[split.train])
    batch = collate(real_episodes(dataset.interactions, split.test[:200], 5, 10).episodes)
    scores = {}
    for rec in (PopularityRecommender(dataset.interactions, split.train, dataset.n_items),
                OracleRecommender(answer_key(dataset))):
        scores[rec.name] = float(mae(rec.predict(batch), batch.query_ratings,
                                     batch.query_mask).mean())
    assert scores["oracle"] < scores["popularity"] - 0.1


def test_bracket_search_extends_at_an_edge_and_flags_what_it_cannot_bracket():
    import math

    from toyrec_helpers.baselines import bracket_search

    def around(best):
        return lambda lr: (math.log10(lr) - math.log10(best)) ** 2

    inside = bracket_search(around(0.1), (0.01, 0.1, 1.0))
    assert (inside.best, inside.edge, inside.extended) == (0.1, "", 0)
    below = bracket_search(around(0.003), (0.01, 0.1, 1.0), max_extend=2)
    assert math.isclose(below.best, 0.001) and below.edge == "" and below.extended == 2
    far = bracket_search(around(1e-6), (0.01, 0.1, 1.0), max_extend=2)
    assert math.isclose(far.best, 1e-4) and far.edge == "low" and len(far.scores) == 5
    diverging = bracket_search(lambda lr: math.nan if lr > 0.05 else lr, (0.01, 0.1))
    assert diverging.scores[0.1] == math.inf and diverging.edge == "low"
    with pytest.raises(ValueError, match="grid"):
        bracket_search(around(0.1), (0.1,))
