"""The hybrid model: shrinkage toward the features, pretraining, adaptation groups, the fast
server (same numbers as the functional path), data without features, registry entries."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import make_episodes, make_features

from toyrec_helpers.adaptation import MetaConfig, init_inner_lrs
from toyrec_helpers.episodes import collate
from toyrec_helpers.evaluate import EvalConfig, OuterSettings, SupervisedSettings, evaluate
from toyrec_helpers.evaluate.methods_hybrid import HYBRID_METHODS
from toyrec_helpers.features import EncodedFeatures
from toyrec_helpers.hybrid import (
    PRIOR_SHRINKAGE,
    HybridRecommender,
    HybridServer,
    fit_hybrid,
    item_counts,
)
from toyrec_helpers.meta import meta_train
from toyrec_helpers.models import FeatureRecommender, parameter_names
from toyrec_helpers.recommenders import AdaptedModelRecommender, PopularityRecommender
from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop


def _empty(n: int) -> EncodedFeatures:
    return EncodedFeatures(torch.zeros(n, 0, dtype=torch.int64), (), (), (), (), (),
                           torch.zeros(n, 0), ())


def _interactions(n_users: int, n_items: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    quality = rng.normal(0, 1, n_items)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=12, replace=False):
            rows.append((u, int(i), float(np.clip(np.rint(3 + quality[i] + rng.normal(0, .3)),
                                                  1, 5))))
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def test_rarely_rated_items_rest_on_their_features():
    users, items = make_features()
    counts = np.zeros(items.n, dtype=np.int64)
    counts[:10] = 100
    model = HybridRecommender(users, items, counts, shrinkage=5.0)
    with torch.no_grad():
        model.item_bias.weight.fill_(1.0)
        model.shopper.taste.fill_(0.5)
    u, i = torch.tensor([0, 1]), torch.arange(items.n)
    pred = model(u[:, None], i)
    features = model.features(u[:, None], i)
    new = slice(10, None)  # never rated: exactly the feature model (+ shopper bias 0)
    torch.testing.assert_close(pred[:, new], features[:, new])
    assert bool((pred[:, :10] - features[:, :10]).abs().min() > 0.5)
    assert torch.allclose(model.item_weight[:10], torch.tensor(100 / 105))
    assert parameter_names(model, "head") == ["shopper.bias", "shopper.taste"]


def test_no_feature_columns_at_all():
    with warnings.catch_warnings():  # torch notes that a zero-width layer has nothing to init
        warnings.simplefilter("ignore")
        plain = FeatureRecommender(_empty(5), _empty(7), rating_mean=3.5)
        model = HybridRecommender(_empty(5), _empty(7), np.full(7, 10))
    out = plain(torch.arange(5)[:, None], torch.arange(7))
    assert out.shape == (5, 7) and torch.allclose(out, out[0, 0].expand(5, 7))
    assert model(torch.tensor(0), torch.arange(7)).shape == (7,)


def test_pretraining_learns_item_quality_and_sets_the_mean_shopper():
    users, items = make_features(n_users=40, n_items=30)
    inter = _interactions(40, 30)
    train = np.arange(30)
    fit = fit_hybrid(users, items, inter, train, epochs=8, lr=1e-2, seed=0)
    counts = item_counts(inter, train, 30)
    assert counts.sum() == 30 * 12 and torch.allclose(
        fit.model.item_weight, torch.as_tensor(counts / (counts + 5.0), dtype=torch.float32))
    held = inter[inter["user"] >= 30]
    pred = fit.model(torch.tensor(held["user"].to_numpy()),
                     torch.tensor(held["item"].to_numpy())).detach().numpy()
    mae = np.abs(pred - held["rating"].to_numpy()).mean()
    baseline = np.abs(held["rating"].to_numpy() - inter.loc[inter.user < 30, "rating"].mean())
    assert mae < 0.6 * baseline.mean()  # item identity explains most of these ratings
    assert torch.isfinite(fit.params["shopper.taste"]).all()


def test_residual_pretraining_starts_at_the_item_mean_and_keeps_the_best_epoch():
    users, items = make_features(n_users=40, n_items=30)
    inter = _interactions(40, 30)
    train, val = np.arange(30), np.arange(30, 40)
    pop = PopularityRecommender(inter, train, 30, shrinkage=PRIOR_SHRINKAGE)
    fit = fit_hybrid(users, items, inter, train, epochs=6, lr=1e-2, seed=0, residual=True,
                     val_users=val, patience=2)
    torch.testing.assert_close(fit.model.item_prior, pop.scores - pop.global_mean)
    assert float(fit.initial_params["item_bias.weight"].abs().max()) == 0.0
    history = [h["val_mse"] for h in fit.training.history]
    assert fit.training.best_epoch == int(np.nanargmin(history))
    assert np.isfinite(history).all() and min(history) < history[0]  # training helped
    held = inter[inter["user"].isin(val)]
    u, i = (torch.tensor(held[c].to_numpy()) for c in ("user", "item"))
    pred = fit.model(u, i).detach().numpy()
    item_mean = pop.scores[i].numpy()
    err = ((pred - held["rating"].to_numpy()) ** 2).mean()
    assert err < ((item_mean - held["rating"].to_numpy()) ** 2).mean()


def test_pretraining_without_shopper_features_serves_every_new_shopper_alike():
    users, items = make_features(n_users=40, n_items=30)
    inter = _interactions(40, 30)
    fit = fit_hybrid(users, items, inter, np.arange(30), epochs=2, lr=1e-2, seed=0,
                     residual=True, shopper_features=False)
    pred = fit.model(torch.arange(30, 40)[:, None], torch.arange(30)).detach()
    torch.testing.assert_close(pred, pred[:1].expand(10, 30))
    with_features = fit_hybrid(users, items, inter, np.arange(30), epochs=2, lr=1e-2, seed=0,
                               residual=True)
    other = with_features.model(torch.arange(30, 40)[:, None], torch.arange(30)).detach()
    assert float((other - other[:1]).abs().max()) > 1e-4


@pytest.mark.parametrize("hidden", [(16, 8), ()])
@pytest.mark.parametrize("meta_sgd", ["off", "tensor"])
def test_server_matches_the_functional_path(hidden, meta_sgd):
    users, items = make_features(n_users=12, n_items=25)
    torch.manual_seed(0)
    model = HybridRecommender(users, items, np.arange(25), hidden=hidden,
                              prior=np.linspace(-1, 1, 25))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = MetaConfig(inner_steps=3, inner_lr=0.05, adapt="head", meta_sgd=meta_sgd)
    rates = None
    if meta_sgd != "off":
        rates = {n: r * (1.5 if "taste" in n else 0.5)
                 for n, r in init_inner_lrs(model, config).items()}
    batch = collate(make_episodes(users, items, users=np.arange(4)))
    expected = AdaptedModelRecommender(model, params, config, inner_lrs=rates).predict(
        batch, "all")
    server = HybridServer(model, params, steps=3, lr=0.05 if rates is None else rates)
    for t in range(len(batch)):
        m = batch.support_mask[t] > 0
        got = server.recommend(int(batch.users[t]), batch.support_items[t][m],
                               batch.support_ratings[t][m])
        torch.testing.assert_close(got, expected[t], atol=1e-4, rtol=1e-4)


FAST = ("global_hybrid", "foldin_hybrid", "maml_foldin_hybrid")


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_maml_trains_every_adaptation_group(adapt):
    users, items = make_features(n_users=16, n_items=20)
    torch.manual_seed(0)
    model = HybridRecommender(users, items, np.full(20, 3), hidden=(8,))
    episodes = make_episodes(users, items)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = MetaConfig(inner_steps=2, inner_lr=0.05, adapt=adapt, meta_batch=8, epochs=3,
                        outer_lr=1e-2)
    # validation on the training tasks: this checks the mechanics, not generalisation
    result = meta_train(model, episodes, episodes, config, seed=0, progress=False)
    assert result.best_epoch > 0
    changed = {n for n, p in result.params.items() if not torch.equal(p, before[n])}
    assert {"shopper.taste", "item_embedding.weight"} <= changed
    batch = collate(episodes[12:])
    pred = AdaptedModelRecommender(model, result.params, result.config).predict(batch, "all")
    assert pred.shape == (4, 20) and torch.isfinite(pred).all()


def test_hybrid_methods_are_registered():
    from toyrec_helpers.evaluate import method_names

    assert set(HYBRID_METHODS) <= set(method_names()) and set(FAST) <= set(HYBRID_METHODS)


CONFIG = EvalConfig(ks=(1, 5), seeds=(0,), outer=OuterSettings(epochs=1),
                    supervised=SupervisedSettings(epochs=1), n_boot=20)


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory):
    shop = generate_toyshop(ToyShopConfig(seed=1, users=200, items=60, ratings=6000))
    return write_toyshop(shop, tmp_path_factory.mktemp("hybrid") / "shop")


def test_ids_and_ratings_only_run_through_the_protocol(small_shop, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    schema = json.loads((small_shop / "schema.json").read_text(encoding="utf-8"))
    schema["users"]["columns"], schema["items"]["columns"] = {}, {}
    del schema["ratings"]["timestamp"], schema["generator"], schema["items"]["title"]
    (bare / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    for name in ("users", "items", "ratings"):
        frame = pd.read_csv(small_shop / f"{name}.csv", dtype=str)
        keep = {"users": ["user_id"], "items": ["item_id"],
                "ratings": ["user_id", "item_id", "rating"]}[name]
        frame[keep].to_csv(bare / f"{name}.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no timestamps; zero-width layer init
        result = evaluate(bare, CONFIG, methods=["popularity", "global", "finetune",
                                                 "global_hybrid", "foldin_hybrid"],
                          progress=False)
    mae = result.summary().query("metric == 'mae' and k == 5").set_index("method")["mean"]
    assert np.isfinite(mae.to_numpy()).all() and len(mae) == 5
    assert mae["global_hybrid"] < mae["global"]  # item identity is all there is to learn


def test_hybrid_methods_run_through_the_protocol(small_shop):
    data, config = small_shop, CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(data, config, methods=["popularity", *FAST], progress=False)
    summary = result.summary()
    mae = summary[(summary.metric == "mae") & (summary.k == 5)].set_index("method")["mean"]
    assert set(mae.index) == {"popularity", *FAST}
    assert np.isfinite(mae.to_numpy()).all()
    fits = result.fits.set_index("method")
    assert fits.loc["maml_foldin_hybrid", "best_epoch"] >= 0
    assert mae["foldin_hybrid"] != mae["global_hybrid"]  # adaptation changed something


def test_bench_measures_the_cached_serving_path():
    from toyrec_helpers.bench.measure import hybrid_latency

    out = hybrid_latency("tiny", inner_steps=2, repeats=3)
    assert out["repeats"] == 3 and 0 < out["p50"] <= out["p99"]
    assert 0 < out["profile"]["p50"] and out["item_side_ms"] > 0
