"""Tests of toyrec_helpers.ceiling (the bayes K-shot ceiling and the MAE-floor oracle)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from toyrec_helpers import ceiling_mc as mc
from toyrec_helpers import metrics
from toyrec_helpers.baselines import PopularityRecommender
from toyrec_helpers.ceiling import BayesCeiling, dataset_latents, median_answer_key, median_rating
from toyrec_helpers.data import load_dataset
from toyrec_helpers.evaluate import EvalConfig, prepare
from toyrec_helpers.toyshop import (
    BRAND_LOVE,
    FAVOURITE_BOOST,
    ToyShopConfig,
    answer_key,
    expected_rating,
    generate_toyshop,
    write_toyshop,
)

CONFIG = ToyShopConfig(seed=1, users=300, items=80, ratings=9000)
SAMPLES = 3000


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceiling") / "shop"
    return write_toyshop(generate_toyshop(CONFIG), out)


@pytest.fixture(scope="module")
def dataset(shop_dir):
    return load_dataset(shop_dir)


@pytest.fixture(scope="module")
def data(dataset):
    return prepare(dataset, EvalConfig(ks=(1, 5, 10), seeds=(0,)))


@pytest.fixture(scope="module")
def ceiling(dataset):
    torch.set_num_threads(1)
    return BayesCeiling(dataset, n_samples=SAMPLES, seed=0)


def query_mae(pred, batch):
    return float(metrics.mae(pred, batch.query_ratings, batch.query_mask).mean())


def test_replay_reproduces_the_generator_and_the_median_is_the_mae_floor(dataset):
    aligned = dataset_latents(dataset)
    np.testing.assert_array_equal(aligned.latents.scores, generate_toyshop(CONFIG).scores)
    key, floor = answer_key(dataset), median_answer_key(dataset)
    assert floor.shape == key.shape and set(np.unique(floor)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    inter = dataset.interactions
    u, i = inter["user"].to_numpy(), inter["item"].to_numpy()
    y = inter["rating"].to_numpy()
    # the median beats the mean on MAE over the observed ratings (the noise is the only error)
    assert np.abs(floor[u, i] - y).mean() < np.abs(key[u, i] - y).mean() - 0.01
    assert median_rating(np.array([0.2, 2.49, 2.51, 7.0])).tolist() == [1.0, 2.0, 3.0, 5.0]


def test_true_latents_reproduce_the_oracle(dataset):
    """A degenerate posterior (one draw: the shopper's true latents) gives the oracle."""
    lat = dataset_latents(dataset).latents
    items = {f: getattr(lat, f) for f in ("item_category", "item_brand", "item_age", "price_z",
                                          "theme_weights", "item_effect", "log_popularity")}
    users = np.arange(12)
    fav = np.tile([0, 1], (len(users), 1))  # any pair: the boost is taken out, then put back
    theme = lat.theme_taste[users].copy()
    theme[:, :2] -= FAVOURITE_BOOST
    loved = [np.flatnonzero(lat.brand_love[u] == BRAND_LOVE) for u in users]
    brands = np.array([[-1, b[0]] if len(b) == 1 else sorted(b) for b in loved])
    cont = np.concatenate([lat.bias[users, None], lat.category_taste[users], theme,
                           lat.price_sensitivity[users, None]], 1)[:, None, :]
    parts = mc.Particles(torch.as_tensor(cont), torch.as_tensor(fav)[:, None],
                         torch.as_tensor(brands)[:, None], torch.full((len(users), 1), 30))
    pred = mc.predictive(items, lat.user_age[users], parts,
                         torch.zeros((len(users), 1), dtype=torch.float64),
                         torch.ones(len(users), 5), query_after=10)
    s = lat.scores[users]
    np.testing.assert_allclose(pred["mean"].numpy(), expected_rating(s), atol=2e-5)
    np.testing.assert_array_equal(pred["median"].numpy(), median_rating(s))


def test_mae_improves_with_k_beyond_monte_carlo_error(ceiling, data):
    maes = {k: query_mae(ceiling.predict(data.test_batch(k)), data.test_batch(k))
            for k in (1, 10)}
    errs = [ceiling.mc_error(data.test_batch(k)).mae_diff for k in (1, 10)]
    assert maes[10] < maes[1] - max(0.03, 3 * max(errs))


def test_beats_the_prior_and_the_item_mean_on_the_protocol_query(ceiling, data, dataset):
    batch = data.test_batch(5)
    prior_batch = dataclasses.replace(batch, support_mask=torch.zeros_like(batch.support_mask))
    bayes = query_mae(ceiling.predict(batch), batch)
    prior = query_mae(ceiling.predict(prior_batch), batch)
    pop = PopularityRecommender(data.train_interactions, None, dataset.n_items)
    assert bayes < prior - 0.02
    assert bayes < query_mae(pop.predict(batch), batch) - 0.05
    # and the whole catalogue is scored, consistently with the query predictions
    full = ceiling.predict(batch, "all")
    assert full.shape == (len(batch), dataset.n_items)
    assert torch.equal(full.gather(1, batch.query_items), ceiling.predict(batch))
    assert ceiling.predict_mean(batch).shape == batch.query_items.shape


def test_reruns_agree_within_the_reported_monte_carlo_error(ceiling, data, dataset):
    batch = data.test_batch(5)
    err = ceiling.mc_error(batch)
    assert err.seeds == (0, 1) and err.ess.shape == (len(batch),) and err.ess.min() >= 1.0
    assert 0.0 < err.mean_abs_diff_mean < 0.1
    third = BayesCeiling(dataset, n_samples=SAMPLES, seed=2, latents=ceiling.aligned)
    diff = (third.predict_mean(batch) - ceiling.predict_mean(batch)).abs().mean()
    assert float(diff) < 1.5 * err.mean_abs_diff_mean
    mae = [query_mae(c.predict(batch), batch) for c in (ceiling, third)]
    assert err.mae_diff is not None and err.mae_diff < 0.02
    assert abs(mae[0] - mae[1]) < max(0.005, 4 * err.mae_diff)


def test_bad_input_is_refused(dataset, data, shop_dir, tmp_path, ceiling):
    with pytest.raises(TypeError, match="dataset"):
        BayesCeiling(str(shop_dir))
    other = tmp_path / "nokey"
    shutil.copytree(shop_dir, other)
    schema = json.loads((other / "schema.json").read_text(encoding="utf-8"))
    del schema["generator"]
    (other / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    with pytest.raises(ValueError, match="not made by the ToyShop generator"):
        BayesCeiling(load_dataset(other))
    with pytest.raises(ValueError, match="n_samples"):
        BayesCeiling(dataset, n_samples=0, latents=ceiling.aligned)
    batch = data.test_batch(5)
    with pytest.raises(ValueError, match="batch.users"):
        ceiling.predict(dataclasses.replace(batch, users=batch.users + dataset.n_users))
    with pytest.raises(ValueError, match="batch.support_items"):
        ceiling.predict(dataclasses.replace(batch, support_items=batch.support_items + 1000))
    with pytest.raises(ValueError, match="support_ratings"):
        ceiling.predict(dataclasses.replace(batch, support_ratings=batch.support_ratings + 0.5))
    with pytest.raises(ValueError, match="items"):
        ceiling.predict(batch, torch.tensor([dataset.n_items]))
    small = generate_toyshop(ToyShopConfig(seed=2, users=60, items=40, ratings=1000))
    small_data = load_dataset(write_toyshop(small, tmp_path / "small"))
    with pytest.raises(ValueError, match="latents"):
        BayesCeiling(small_data, latents=ceiling.aligned)
