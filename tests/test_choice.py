"""Tests for the choice model (toyrec_helpers.choice), the rankers around it
(toyrec_helpers.choice_rankers), their registry entries, and the random-exposure metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from toyrec_helpers.baselines import OracleRecommender, PopularityRecommender
from toyrec_helpers.choice import (
    CHOICE_LR_GRID,
    ChoiceModel,
    ChoiceRecommender,
    ChoiceValidation,
    _first_batch,
    adapt_taste,
    choice_nll,
    choice_validation,
    dense_features,
    meta_train_choice,
    purchase_sequences,
    train_choice,
    tune_choice_lr,
    tune_meta_choice,
)
from toyrec_helpers.choice_rankers import (
    CombinedRecommender,
    ItemKNNRecommender,
    inclusion_probability,
    like_probability,
)
from toyrec_helpers.episodes import Episode, collate
from toyrec_helpers.evaluate import (
    EvalConfig,
    OuterSettings,
    SupervisedSettings,
    fit_methods,
    get_method,
    prepare,
    score_recommender,
)
from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop
from toyrec_helpers.toyshop_exposure import (
    load_random_exposure,
    random_exposure,
    write_random_exposure,
)

SMALL = ToyShopConfig(seed=2, users=240, items=60, ratings=6000)
CONFIG = EvalConfig(ks=(1, 3, 5), seeds=(0,), n_boot=50, outer=OuterSettings(epochs=2),
                    supervised=SupervisedSettings(epochs=2))


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory):
    shop = generate_toyshop(SMALL)
    out = write_toyshop(shop, tmp_path_factory.mktemp("choice") / "shop")
    write_random_exposure(shop, out)
    return out


@pytest.fixture(scope="module")
def data(shop_dir):
    torch.set_num_threads(1)
    return prepare(shop_dir, CONFIG)


def _model(n_items=7, n_users=4, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    item_x = torch.randn(n_items, 2, generator=gen)
    user_x = torch.randn(n_users, 2, generator=gen)
    model = ChoiceModel(item_x, user_x, torch.rand(n_items, generator=gen), dim=dim, seed=seed)
    params = model.params()
    params["item_emb"] = torch.randn(n_items, dim, generator=gen)
    params["taste_scale"] = torch.eye(dim) + 0.2 * torch.randn(dim, dim, generator=gen)
    return model, params


def test_dense_features_one_hot_and_pooled(data):
    x = dense_features(data.item_features)
    assert x.shape[0] == data.dataset.n_items and torch.isfinite(x).all()
    n_cat = len(data.item_features.categorical_sizes)
    width = sum(s - 1 for s in data.item_features.categorical_sizes)
    assert torch.allclose(x[:, :width].sum(1), torch.full((x.shape[0],), float(n_cat)))


def test_one_inner_step_moves_taste_towards_the_chosen_toys():
    model, params = _model()
    users = torch.tensor([0, 2])
    items = torch.tensor([[1, 4], [3, 0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lr = 0.5
    taste = adapt_taste(model, params, users, items, mask, steps=1, lr=lr)
    # by hand: d(mean NLL)/du = S^T (E_p[v] - mean of the chosen v)
    v = model.item_vectors(params)
    p = torch.softmax(model.logits(params, users, params["taste"].expand(2, -1)), dim=1)
    chosen = (v[items] * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    grad = (p @ v - chosen) @ params["taste_scale"]
    assert torch.allclose(taste, params["taste"] - lr * grad, atol=1e-5)
    before = choice_nll(model.logits(params, users, params["taste"].expand(2, -1)), items, mask)
    after = choice_nll(model.logits(params, users, taste), items, mask)
    assert (after < before).all()


def test_second_order_differs_from_first_order_only_in_the_gradient():
    model, params = _model()
    work = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    users, items, mask = torch.tensor([1]), torch.tensor([[2, 5]]), torch.ones(1, 2)
    grads = {}
    for order in (True, False):
        taste = adapt_taste(model, work, users, items, mask, 2, 0.3, create_graph=order)
        loss = choice_nll(model.logits(work, users, taste), torch.tensor([[6]]),
                          torch.ones(1, 1)).sum()
        grads[order] = torch.autograd.grad(loss, work["item_w"])[0]
        if order:
            value = taste.detach()
        else:
            assert torch.allclose(taste.detach(), value)  # same adapted point
    assert not torch.allclose(grads[True], grads[False])


def test_choice_recommender_shapes_and_no_adaptation_ignores_support():
    model, params = _model()
    eps = [Episode(0, np.array([1, 2]), np.ones(2, np.float32), np.array([3]),
                   np.ones(1, np.float32)),
           Episode(3, np.array([4]), np.ones(1, np.float32), np.array([5, 6]),
                   np.ones(2, np.float32))]
    batch = collate(eps)
    rec = ChoiceRecommender(model, params, 3, 0.5)
    assert rec.predict(batch, "all").shape == (2, 7) and rec.predict(batch).shape == (2, 2)
    assert rec.predict(batch, torch.tensor([0, 6])).shape == (2, 2)
    assert torch.allclose(rec.predict(batch, "all").exp().sum(1), torch.ones(2), atol=1e-5)
    still = ChoiceRecommender(model, params, 0, 0.0)
    other = collate([Episode(0, np.array([6]), np.ones(1, np.float32), np.array([3]),
                             np.ones(1, np.float32)), eps[1]])
    assert torch.equal(still.predict(batch, "all"), still.predict(other, "all"))
    assert not torch.equal(rec.predict(batch, "all"), rec.predict(other, "all"))


def test_itemknn_ranks_the_co_bought_toy_first():
    inter = pd.DataFrame({"user": [0, 0, 1, 1, 2, 2, 3], "item": [0, 1, 0, 1, 2, 3, 3],
                          "rating": 4.0})
    knn = ItemKNNRecommender(inter, np.array([0, 1, 2, 3]), n_items=5)
    assert torch.allclose(knn.similarity, knn.similarity.T)
    assert float(knn.similarity[0, 1]) == pytest.approx(1.0)
    batch = collate([Episode(9, np.array([0]), np.ones(1, np.float32), np.array([1]),
                             np.ones(1, np.float32))])
    scores = knn.predict(batch, "all")[0]
    assert int(scores.argmax()) == 1 and float(scores[4]) < float(scores[3])  # 4: never bought


def test_inclusion_probability_matches_gumbel_top_n_sampling():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.2, (1, 30))
    n = np.array([6])
    p = inclusion_probability(logits, n)
    assert p.sum() == pytest.approx(6.0, abs=1e-6)
    assert np.all(np.diff(p[0][np.argsort(logits[0])]) >= -1e-12)  # monotone in the logit
    draws = 20000
    keys = logits + rng.gumbel(size=(draws, 30))
    top = np.argsort(-keys, axis=1)[:, :6]
    freq = np.bincount(top.ravel(), minlength=30) / draws
    assert np.abs(freq - p[0]).max() < 0.05  # the threshold form is an approximation


def test_combined_ranker_multiplies_choice_and_like_probabilities():
    model, params = _model()
    choice = ChoiceRecommender(model, params, 0, 0.0)
    expected = torch.tensor(np.linspace(1, 5, 7, dtype=np.float32)).expand(4, -1).numpy()
    rating = OracleRecommender(expected)
    batch = collate([Episode(u, np.array([0]), np.ones(1, np.float32), np.array([1]),
                             np.ones(1, np.float32)) for u in range(2)])
    alone = CombinedRecommender(choice, rating, sigma=0.8, weight=0.0)
    assert torch.equal(alone.predict(batch, "all"), choice.predict(batch, "all"))
    both = CombinedRecommender(choice, rating, sigma=0.8).predict(batch, "all")
    like = like_probability(torch.as_tensor(expected[:2]), 0.8)
    assert torch.allclose(both.exp(), choice.predict(batch, "all").exp() * like, atol=1e-6)
    assert like_probability(torch.tensor(3.5), 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="predicts ratings"):
        CombinedRecommender(choice, choice, sigma=1.0)


def test_training_tuning_and_meta_training_run_and_keep_the_best(data):
    d = data
    ix, ux = dense_features(d.item_features), dense_features(d.user_features)
    model, params = train_choice(ix, ux, d.dataset.interactions, d.split.train, d.val_batch,
                                 epochs=2, seed=0)
    assert set(params) == {n for n, _ in model.named_parameters()}
    lr, table = tune_choice_lr(model, params, d.val_batch, 2, grid=(0.1, 1.0))
    assert lr in [row["inner_lr"] for row in table] and len(table) >= 2
    for order in ("first", "second"):
        result = meta_train_choice(model, params, d.dataset.interactions, d.split.train,
                                   d.val_batch, inner_lr=lr, inner_steps=2, epochs=2,
                                   order=order, seed=0)
        assert result.history[result.best_epoch] == min(result.history)
    with pytest.raises(ValueError, match="order"):
        meta_train_choice(model, params, d.dataset.interactions, d.split.train, d.val_batch,
                          inner_lr=lr, order="third")
    seqs = purchase_sequences(d.dataset.interactions, d.split.train[:3])
    counts = d.dataset.interactions.groupby("user").size()
    assert [len(s) for s in seqs] == [int(counts[u]) for u in d.split.train[:3]]


class _Table:
    """A ranker that scores every task with the same fixed catalogue scores."""

    def __init__(self, scores):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def predict(self, batch, items=None):
        return self.scores.expand(len(batch), -1).clone()


def test_choice_validation_is_shaped_like_the_test_and_scores_ndcg(data):
    d, c = data, data.config
    val = choice_validation(d)
    cut = max(c.ks)
    assert sorted(val.batches) == sorted(c.ks)
    seqs = dict(zip(d.split.val, purchase_sequences(d.dataset.interactions, d.split.val),
                    strict=True))
    users = val.batches[cut].users.tolist()
    assert set(users) <= set(int(u) for u in d.split.val)  # meta-validation shoppers only
    ratings = d.dataset.interactions.set_index(["user", "item"])["rating"]
    for row, user in enumerate(users[:5]):
        seq = seqs[user]
        for k, batch in val.batches.items():
            assert batch.support_items[row, :k].tolist() == seq[:k].tolist()
        # the first max(ks) purchases are out of the ranking, the rest may be relevant
        assert sorted(torch.nonzero(val.exclude[1][row]).flatten().tolist()) == sorted(
            seq[:cut].tolist())
        liked = {int(i) for i in seq[cut:] if ratings[(user, int(i))] >= 4}
        assert set(torch.nonzero(val.relevant[row]).flatten().tolist()) == liked
    # a ranker that puts each shopper's relevant toys first scores 1; its reverse less
    perfect = ChoiceValidation({5: val.batches[5]}, val.relevant, {5: val.exclude[5]})
    class Key:
        def predict(self, batch, items=None):
            return val.relevant.float()
    assert perfect.ndcg(Key()) == pytest.approx(1.0)
    assert perfect.ndcg(_Table(torch.zeros(d.dataset.n_items))) < 1.0


def test_first_episodes_are_shaped_like_the_test():
    seqs = [np.arange(20), np.arange(30, 42), np.arange(50, 55)]
    rng = np.random.default_rng(0)
    batch, exclude = _first_batch(seqs, np.array([0, 1, 2]), (2, 4), 3, 10, 60, rng)
    assert batch.users.tolist() == [0, 1]  # the third has no purchase after the first 10
    for row, seq in enumerate(seqs[:2]):
        k = int(batch.support_mask[row].sum())
        assert 2 <= k <= 4 and batch.support_items[row, :k].tolist() == seq[:k].tolist()
        query = batch.query_items[row][batch.query_mask[row] > 0].tolist()
        assert 1 <= len(query) <= 3 and set(query) <= set(seq[10:].tolist())
        assert sorted(torch.nonzero(exclude[row]).flatten().tolist()) == seq[:10].tolist()
    with pytest.raises(ValueError, match="cut"):
        _first_batch(seqs[2:], np.array([2]), (2, 4), 3, 10, 60, rng)


def test_rates_and_meta_training_are_chosen_by_validation_ndcg(data):
    d = data
    val = choice_validation(d)
    assert min(CHOICE_LR_GRID) <= 1e-3 and max(CHOICE_LR_GRID) >= 10  # "hardly adapt" too
    ix, ux = dense_features(d.item_features), dense_features(d.user_features)
    model, params = train_choice(ix, ux, d.dataset.interactions, d.split.train, val,
                                 epochs=2, seed=0)
    lr, table = tune_choice_lr(model, params, val, 2, grid=(0.01, 0.1, 1.0))
    scores = {row["inner_lr"]: row["val_ndcg10"] for row in table}
    assert scores[lr] == max(scores.values())
    assert scores[lr] == pytest.approx(val.score(model, params, 2, lr))
    best, result, table = tune_meta_choice(
        model, params, d.dataset.interactions, d.split.train, val, inner_steps=2,
        grid=(0.1, 1.0), max_extend=1, epochs=2, order="first", episodes="first",
        k_range=(1, 5), cut=5, seed=0)
    scores = {row["inner_lr"]: row["val_ndcg10"] for row in table}
    assert len(scores) >= 2 and scores[best] == max(scores.values())
    assert -result.history[result.best_epoch] == pytest.approx(scores[best])
    assert result.history[result.best_epoch] == min(result.history)
    with pytest.raises(ValueError, match="episodes"):
        meta_train_choice(model, params, d.dataset.interactions, d.split.train, val,
                          inner_lr=lr, episodes="middle")


def test_registered_methods_rank_and_the_choice_ceiling_is_on_top(data):
    names = ["popularity_count", "itemknn", "choice_global", "choice_maml", "choice_combined",
             "oracle_choice"]
    for name in names[1:]:
        assert get_method(name).predicts_ratings is False
    recs, fits = fit_methods(data, 0, names)
    ndcg = {n: np.nanmean(score_recommender(recs[n], data, 5)["ndcg@10"]) for n in names}
    # the generator's own probabilities rank best; what shoppers choose beats "most bought"
    assert ndcg["oracle_choice"] > max(v for n, v in ndcg.items() if n != "oracle_choice")
    assert ndcg["choice_global"] > ndcg["popularity_count"]
    assert fits.set_index("method").loc["choice_maml", "best_epoch"] >= 0


def test_random_exposure_metrics_are_reported_for_rating_models_only(data, shop_dir):
    pop = PopularityRecommender(data.train_interactions, data.split.train,
                                data.dataset.n_items)
    out = score_recommender(pop, data, 3)
    assert {"mae_random", "rmse_random"} <= set(out)
    exposure = load_random_exposure(data.dataset)
    frame = random_exposure(generate_toyshop(SMALL))
    assert len(exposure.users) == len(frame)
    # by hand: the popularity score of each random toy against its rating
    users = data.users
    pred = pop.scores.numpy()
    err = []
    for u in users[:5]:
        rows = exposure.users == u
        err.append(np.abs(pred[exposure.items[rows]] - exposure.ratings[rows]).mean())
    assert np.allclose(out["mae_random"][:5], err, atol=1e-5)
    count = PopularityRecommender(data.train_interactions, data.split.train,
                                  data.dataset.n_items, by="count")
    assert "mae_random" not in score_recommender(count, data, 3)


def test_new_shopper_demo_ranks_by_choose_and_like_and_tells_what_each_choice_changed(data):
    from toyrec_helpers.choice import new_shopper_log_probs
    from toyrec_helpers.widgets import combined_for_new_shopper

    d = data
    ux = dense_features(d.user_features)
    model, params = train_choice(dense_features(d.item_features), ux, d.dataset.interactions,
                                 d.split.train, d.val_batch, epochs=1, seed=0)
    user = int(d.split.test[0])
    # an existing shopper's features give the same log-probabilities as the model itself
    chosen = [int(i) for i in d.test_episodes[0].support_items[:3]]
    by_row = new_shopper_log_probs(model, params, ux[user], chosen, 3, 1.0)
    batch = collate([Episode(user, np.array(chosen), np.ones(3, np.float32), np.array([0]),
                             np.ones(1, np.float32))])
    direct = ChoiceRecommender(model, params, 3, 1.0).predict(batch, "all")[0].numpy()
    assert np.allclose(by_row, direct, atol=1e-5)
    predicted = np.full(d.dataset.n_items, 3.0)
    predicted[5] = 5.0  # a toy the rating model expects to be loved
    steps = combined_for_new_shopper(d.dataset, model, params, ux[user], chosen, predicted,
                                     sigma=0.5, steps=3, lr=1.0, k=5)
    assert len(steps.tops) == len(chosen) + 1 and len(steps.lines) == len(chosen)
    assert all(not set(t) & set(chosen) for t in steps.tops)  # chosen toys never come back
    assert all(line.startswith("after choosing ") for line in steps.lines)
    if 5 not in chosen:
        assert 5 in steps.tops[-1]  # P(like) lifts it
    with pytest.raises(ValueError, match="choose at least one"):
        combined_for_new_shopper(d.dataset, model, params, ux[user], [], predicted, 0.5, 3, 1.0)


def test_build_demo_with_a_choice_model_reports_each_choice(data):
    pytest.importorskip("ipywidgets")
    from toyrec_helpers.baselines import fit_global
    from toyrec_helpers.features import encode_dataset
    from toyrec_helpers.meta import MetaConfig
    from toyrec_helpers.widgets import build_demo

    d = data
    uf, itf, uenc, _ = encode_dataset(d.dataset, fit_users=d.split.train)
    fitted = fit_global(uf, itf, d.dataset.interactions, d.split.train, epochs=1, seed=0)
    model, params = train_choice(dense_features(itf), dense_features(uf),
                                 d.dataset.interactions, d.split.train, d.val_batch, epochs=1)
    choice = {"model": model, "params": params, "steps": 2, "lr": 1.0, "sigma": 1.0}
    demo = build_demo(d.dataset, fitted.model, fitted.params, MetaConfig(), uf, itf, uenc,
                      n_items=3, choice=choice)
    button = [w for w in demo.children if type(w).__name__ == "Button"][0]
    message = [w for w in demo.children if type(w).__name__ == "HTML"][-1]
    button.click()
    assert message.value.count("after choosing ") == 3


def test_lr_edge_names_the_side_of_the_rates_tried():
    from toyrec_helpers.evaluate.methods_choice import lr_edge

    table = [{"inner_lr": r} for r in (0.3, 0.01, 0.1)]
    assert lr_edge(0.01, table) == "low" and lr_edge(0.3, table) == "high"
    assert lr_edge(0.1, table) == ""
