"""Tests of toyrec_helpers.evaluate (the cold-start protocol) and its command line."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from datadirs import set_cell

from toyrec_helpers import cli
from toyrec_helpers import evaluate as evaluation
from toyrec_helpers.baselines import PopularityRecommender
from toyrec_helpers.data import load_dataset
from toyrec_helpers.evaluate import (
    METHODS,
    METRICS,
    ArticleSettings,
    EvalConfig,
    InnerSettings,
    MethodFit,
    MethodSpec,
    OuterSettings,
    SupervisedSettings,
    check_json_path,
    evaluate,
    fit_methods,
    format_table,
    get_method,
    method_names,
    prepare,
    register_method,
    resolve_methods,
    score_recommender,
    unregister_method,
)
from toyrec_helpers.evaluate.paired import read_per_shopper
from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop

TINY = EvalConfig(ks=(1, 3, 5), seeds=(0, 1), outer=OuterSettings(epochs=1),
                  supervised=SupervisedSettings(epochs=2), article=ArticleSettings(epochs=2),
                  n_boot=200)
SUMMARY_KEYS = {"method", "k", "metric", "mean", "ci_low", "ci_high", "n_users", "seed_sd"}


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "shop"
    shop = generate_toyshop(ToyShopConfig(seed=1, users=300, items=80, ratings=9000))
    return write_toyshop(shop, out)


@pytest.fixture(scope="module")
def dataset(shop_dir):
    return load_dataset(shop_dir)


@pytest.fixture(scope="module")
def data(dataset):
    return prepare(dataset, TINY)


@pytest.fixture(scope="module")
def result(dataset):
    torch.set_num_threads(1)
    return evaluate(dataset, TINY, methods=METHODS, progress=False)  # the built-in methods


@pytest.fixture()
def no_key_dir(shop_dir, tmp_path):
    """A copy of the small shop whose schema has no generator block (no answer key)."""
    out = tmp_path / "nokey"
    shutil.copytree(shop_dir, out)
    schema = json.loads((out / "schema.json").read_text(encoding="utf-8"))
    del schema["generator"]
    (out / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    return out


# --- protocol properties -----------------------------------------------------------------


def test_no_shopper_is_in_two_groups_and_training_sees_meta_train_only(data, result):
    train, val, test = (set(g.tolist()) for g in (data.split.train, data.split.val,
                                                   data.split.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == data.dataset.n_users
    assert set(data.train_interactions["user"]) <= train
    assert len(data.train_interactions) == data.dataset.interactions["user"].isin(train).sum()
    assert {e.user for e in data.train_episodes} <= train
    assert {e.user for e in data.val_episodes} <= val
    assert set(result.users.tolist()) <= test
    assert result.split_sizes["test"] == len(test) == 60


def test_support_strictly_precedes_query_in_time(data):
    inter = data.dataset.interactions
    when = dict(zip(zip(inter["user"], inter["item"], strict=True), inter["timestamp"],
                    strict=True))
    max_k = max(TINY.ks)
    for e in data.test_episodes:
        support = [when[(e.user, int(i))] for i in e.support_items]
        query = [when[(e.user, int(i))] for i in e.query_items]
        assert len(support) == max_k and len(query) >= 1
        assert max(support) < min(query)
        # together they are the shopper's whole history, in time order
        history = inter[inter["user"] == e.user]
        assert np.array_equal(np.concatenate([e.support_items, e.query_items]),
                              history["item"].to_numpy())


def test_query_is_the_same_for_every_k(data):
    full = data.test_batch(max(TINY.ks))
    for k in TINY.ks:
        batch = data.test_batch(k)
        assert torch.equal(batch.users, full.users)
        assert torch.equal(batch.query_items, full.query_items)
        assert torch.equal(batch.query_ratings, full.query_ratings)
        assert torch.equal(batch.query_mask, full.query_mask)
        assert torch.equal(batch.support_items, full.support_items[:, :k])
        assert bool((batch.support_mask.sum(1) == k).all())


def test_non_adapted_methods_score_the_same_at_every_k(result):
    # same query and same candidates at every K: only adapted methods may change
    for method in ("popularity", "global", "oracle"):
        for metric in METRICS:
            assert np.array_equal(result.per_user(method, 1, metric),
                                  result.per_user(method, 5, metric), equal_nan=True)
    assert not np.array_equal(result.per_user("finetune", 1, "mae"),
                              result.per_user("finetune", 5, "mae"))


def test_shoppers_with_too_few_ratings_are_skipped_and_counted(dataset, tmp_path):
    config = EvalConfig(ks=(1, 25), seeds=(0,), n_boot=50)
    data = prepare(dataset, config, with_answer_key=False)
    counts = dataset.ratings_per_user()[data.split.test]
    expected = data.split.test[counts < 26]
    assert 0 < len(expected) < len(data.split.test)
    assert np.array_equal(np.sort(data.skipped_users), np.sort(expected))
    res = evaluate(dataset, config, methods=["popularity"], progress=False)
    assert res.split_sizes["skipped"] == len(expected)
    assert res.split_sizes["evaluated"] == len(data.split.test) - len(expected)
    mae_rows = res.summary().query("metric == 'mae'")
    assert (mae_rows["n_users"] == res.split_sizes["evaluated"]).all()
    saved = json.loads(res.to_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["protocol"]["users"]["skipped"] == len(expected)


def _perturbed(dataset, users, rows_of):
    """The data set with ratings ``r -> 6 - r`` at the rows ``rows_of(user_rows)``."""
    inter = dataset.interactions.copy()
    rating = inter["rating"].to_numpy().copy()
    for u in users:
        rows = np.flatnonzero(inter["user"].to_numpy() == u)
        rating[rows_of(rows)] = 6.0 - rating[rows_of(rows)]
    inter["rating"] = rating.astype(np.float32)
    return dataclasses.replace(dataset, interactions=inter)


def test_methods_see_only_the_support_ratings_of_test_shoppers(dataset, data, result):
    # Flip every query rating of every meta-test shopper: the recommenders trained on the
    # changed data (last seed, as kept by evaluate) must predict exactly the same.
    max_k = max(TINY.ks)
    changed = _perturbed(dataset, data.split.test, lambda rows: rows[max_k:])
    data2 = prepare(changed, TINY)
    assert not torch.equal(data2.test_batch(1).query_ratings, data.test_batch(1).query_ratings)
    recs2, _ = fit_methods(data2, TINY.seeds[-1], METHODS)
    assert set(recs2) == set(result.recommenders) == set(METHODS)
    for k in TINY.ks:
        batch = data.test_batch(k)
        for method, rec in result.recommenders.items():
            assert torch.equal(rec.predict(batch, "all"), recs2[method].predict(batch, "all")), \
                (method, k)
    # ... while the same pipeline does react to training ratings (the check can fail)
    changed_train = _perturbed(dataset, data.split.train[:50], lambda rows: rows)
    recs3, _ = fit_methods(prepare(changed_train, TINY, with_answer_key=False),
                           TINY.seeds[-1], ["global"])
    batch = data.test_batch(1)
    assert not torch.equal(result.recommenders["global"].predict(batch, "all"),
                           recs3["global"].predict(batch, "all"))


def test_recommenders_get_no_query_ratings(data):
    seen = []

    class Spy:
        name, predicts_ratings = "spy", True

        def predict(self, batch, items=None):
            seen.append(batch)
            return torch.full((len(batch), data.dataset.n_items), 3.0)

    out = score_recommender(Spy(), data, 3)
    assert set(out) == set(METRICS)
    assert seen and all(float(b.query_ratings.abs().sum()) == 0.0 and
                        float(b.query_mask.sum()) == 0.0 for b in seen)
    assert all(bool((b.support_mask.sum(1) == 3).all()) for b in seen)


def test_rating_metrics_are_skipped_for_ranking_only_scores(data):
    count = PopularityRecommender(data.train_interactions, data.split.train,
                                  data.dataset.n_items, by="count")
    out = score_recommender(count, data, 1)
    assert set(out) == {"ndcg@3", "hr@10", "ndcg@10"}
    assert all(v.shape == (len(data.test_episodes),) for v in out.values())


# --- results -----------------------------------------------------------------------------


def test_summary_shape_ci_and_per_user_values(result):
    summary = result.summary()
    assert list(summary.columns) == ["method", "k", "metric", "mean", "ci_low", "ci_high",
                                     "n_users", "seed_sd"]
    ranking_only = {"popularity_count"}  # no rating metrics for a ranking-only score
    rating_metrics = 2
    expected = len(METHODS) * len(TINY.ks) * len(METRICS) - len(ranking_only) * len(
        TINY.ks
    ) * rating_metrics
    assert len(summary) == expected
    assert (summary["ci_low"] <= summary["mean"]).all()
    assert (summary["mean"] <= summary["ci_high"]).all()
    assert (summary["ci_low"] < summary["ci_high"]).any()
    n_users = len(result.users)
    for row in summary.itertuples():
        values = result.per_user(row.method, row.k, row.metric)
        assert values.shape == (len(TINY.seeds), n_users)
        assert row.mean == pytest.approx(np.nanmean(values.mean(axis=0)), abs=1e-12)
        assert row.n_users == int((~np.isnan(values[0])).sum())
    # seed-free methods repeat; trained ones depend on the seed
    pop = result.per_user("popularity", 5, "mae")
    assert np.array_equal(pop[0], pop[1])
    glob = result.per_user("global", 5, "mae")
    assert not np.array_equal(glob[0], glob[1])
    with pytest.raises(KeyError, match="no values"):
        result.per_user("maml", 7, "mae")


def test_oracle_is_the_best_and_tuned_rates_come_from_the_grid(result):
    s = result.summary().set_index(["method", "k", "metric"])["mean"]
    assert all(s[("oracle", 5, "mae")] < s[(m, 5, "mae")] for m in METHODS
               if m not in ("oracle", "popularity_count"))
    tuned = result.protocol()["tuned"]["inner_lr"]
    assert set(tuned) == {"article", "finetune", "fomaml", "maml", "metasgd", "maml_local",
                          "anil"}
    fits = result.fits.set_index(["method", "seed"])
    low, high = min(TINY.inner.lr_grid), max(TINY.inner.lr_grid)
    for method, lrs in tuned.items():
        for seed, lr in zip(TINY.seeds, lrs, strict=True):
            edge = fits.loc[(method, seed), "lr_edge"]
            assert edge in ("", "low", "high")
            if low < lr < high:  # inside the grid: bracketed, from the grid
                assert edge == "" and lr in TINY.inner.lr_grid
            else:  # at or beyond an edge: the grid was extended first
                assert lr not in (low, high) or edge == ""
    # the flags are consistent with the validation errors they summarise
    rated = result.fits[result.fits["inner_lr"].notna()]
    assert ((rated["val_mse"] > rated["unadapted_val_mse"])
            == rated["worse_than_unadapted"]).all()
    meta = result.fits[result.fits["best_epoch"] >= 0]
    assert (meta["epochs_run"] >= meta["best_epoch"]).all() and (meta["epochs_run"] >= 1).all()


def test_paired_differences_are_per_shopper_means_over_seeds(result):
    paired = result.paired()
    assert set(paired["baseline"]) == {"finetune", "global", "popularity", "popularity_count"}
    assert set(paired.query("baseline == 'popularity'")["metric"]) <= {"mae", "rmse"}
    assert "mae" not in set(paired.query("baseline == 'popularity_count'")["metric"])
    assert not (paired["method"] == paired["baseline"]).any()
    row = paired.query("method == 'maml' and baseline == 'finetune' and k == 3 "
                       "and metric == 'mae'").iloc[0]
    diff = (result.per_user("maml", 3, "mae").mean(0)
            - result.per_user("finetune", 3, "mae").mean(0))
    assert row["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n_users"] == len(diff)
    # a method against itself through another name would give zero; the global model does
    # not depend on K, so its difference to the global model at every K is exactly zero
    zero = paired.query("method == 'popularity' and baseline == 'global' and metric == 'mae'")
    assert (zero["mean"].diff().dropna().abs() < 1e-12).all()
    spread = result.summary().set_index(["method", "k", "metric"])["seed_sd"]
    assert spread[("popularity", 5, "mae")] == 0.0
    per_seed = result.per_user("global", 5, "mae").mean(axis=1)
    assert spread[("global", 5, "mae")] == pytest.approx(np.std(per_seed, ddof=1))


def test_json_schema_is_exact_and_only_evaluate_json_is_replaced(result, tmp_path):
    path = result.to_json(tmp_path / "sub" / "eval.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert set(saved) == {"data", "protocol", "summary", "paired", "per_shopper"}
    assert saved["data"] == result.data
    protocol = saved["protocol"]
    assert protocol["ks"] == [1, 3, 5] and protocol["seeds"] == [0, 1]
    assert protocol["methods"] == list(METHODS) and protocol["epochs"] == 1
    assert list(protocol)[2:2 + len(TINY.to_dict())] == list(TINY.to_dict())
    assert protocol["global_epochs"] == 2 and protocol["article_epochs"] == 2
    assert EvalConfig.from_dict(protocol) == TINY
    assert len(saved["summary"]) == len(result.summary())
    for row in saved["summary"]:
        assert set(row) == SUMMARY_KEYS
        assert isinstance(row["method"], str) and isinstance(row["metric"], str)
        assert isinstance(row["k"], int) and isinstance(row["n_users"], int)
        assert all(isinstance(row[c], float) for c in ("mean", "ci_low", "ci_high"))
    assert saved["summary"][0] == {"method": "popularity", "k": 1, "metric": "mae",
                                   **{c: pytest.approx(result.summary().iloc[0][c])
                                      for c in ("mean", "ci_low", "ci_high", "seed_sd")},
                                   "n_users": int(result.summary().iloc[0]["n_users"])}
    # per-shopper values: the sidecar named in the JSON, with its checksum
    values, users, seeds = read_per_shopper(path)
    assert np.array_equal(users, result.users) and list(seeds) == list(TINY.seeds)
    assert set(values) == set(result.values)
    for key, v in result.values.items():
        np.testing.assert_allclose(values[key], v, rtol=1e-6, equal_nan=True)
    assert saved["per_shopper"]["file"] == "eval.per_shopper.npz"
    # a previous evaluation JSON is replaced ...
    path.write_text(path.read_text(encoding="utf-8").replace('"k": 1', '"k": 99'),
                    encoding="utf-8")
    result.to_json(path)
    assert '"k": 99' not in path.read_text(encoding="utf-8")
    # ... nothing else is
    for name, content in (("notes.json", '{"data": 1}'), ("notes.txt", "my notes")):
        mine = tmp_path / name
        mine.write_text(content, encoding="utf-8")
        with pytest.raises(FileExistsError, match="refusing to replace"):
            result.to_json(mine)
        assert mine.read_text(encoding="utf-8") == content
    with pytest.raises(FileExistsError, match="directory"):
        check_json_path(tmp_path)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "eval.json", "eval.per_shopper.npz"]  # no temp
    # a sidecar that is not ours is never replaced
    theirs = tmp_path / "other.json"
    (tmp_path / "other.per_shopper.npz").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="per-shopper"):
        result.to_json(theirs)
    assert not theirs.exists()
    # a changed sidecar fails its checksum
    sidecar = tmp_path / "sub" / "eval.per_shopper.npz"
    sidecar.write_bytes(sidecar.read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        read_per_shopper(path)


def test_format_table(result):
    text = format_table(result.summary())
    assert text.count("K = ") == len(TINY.ks)
    for name in (*METHODS, *METRICS):
        assert name in text
    one = format_table(result.summary(), metric="ndcg@10", k=5)
    assert "K=5" in one and "K=1" not in one and "mae" not in one
    row = result.summary().query("method == 'maml' and k == 5 and metric == 'ndcg@10'").iloc[0]
    assert f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in one
    with pytest.raises(ValueError, match="no summary rows"):
        format_table(result.summary(), k=7)


def test_oracle_only_with_an_answer_key(result, no_key_dir):
    assert "oracle" in result.methods
    res = evaluate(no_key_dir, EvalConfig(ks=(5,), seeds=(0,), n_boot=50),
                   methods=["popularity"], progress=False)
    assert "oracle" not in res.methods
    data = prepare(no_key_dir, EvalConfig(ks=(5,), seeds=(0,)))
    assert data.answer_key is None
    with pytest.raises(ValueError, match="'oracle' needs an answer key"):
        evaluate(no_key_dir, EvalConfig(ks=(5,), seeds=(0,)), methods=["oracle"],
                 progress=False)
    with pytest.raises(ValueError, match="valid names: popularity, popularity_count, global"):
        evaluate(no_key_dir, EvalConfig(ks=(5,), seeds=(0,)), methods=["mamal"])


def test_default_methods_leave_oracle_out_without_an_answer_key(no_key_dir):
    data = prepare(no_key_dir, EvalConfig(ks=(5,), seeds=(0,)))
    chosen = resolve_methods(None, data)  # every default method but those needing the key
    assert chosen == tuple(m for m in method_names()
                           if get_method(m).default and "answer_key" not in get_method(m).needs)
    assert "maml_hybrid" in method_names() and "maml_hybrid" not in chosen  # opt-in only
    assert set(METHODS) - {"oracle"} <= set(chosen) and "oracle" not in chosen


def test_config_is_checked_and_serialisable():
    assert EvalConfig(ks=[10, 1]).ks == (1, 10)
    for bad in ({"ks": (0, 1)}, {"ks": (5, 5)}, {"seeds": ()}, {"catalogue_exclude": "x"},
                {"ci_method": "x"}, {"fractions": (0.5, 0.5, 0.5)}, {"min_query": 0}):
        with pytest.raises(ValueError, match="EvalConfig"):
            EvalConfig(**bad)
    for make, label in ((lambda: OuterSettings(epochs=0), "OuterSettings.epochs"),
                        (lambda: OuterSettings(outer_lr=-1.0), "OuterSettings.outer_lr"),
                        (lambda: SupervisedSettings(hidden=(64, 0)), "SupervisedSettings.hidden"),
                        (lambda: ArticleSettings(steps=-1), "ArticleSettings.steps"),
                        (lambda: InnerSettings(lr_grid=()), "InnerSettings.lr_grid"),
                        (lambda: InnerSettings(lr_grid=(0.1, float("nan"))),
                         "InnerSettings.lr_grid")):
        with pytest.raises(ValueError, match=label):
            make()
    with pytest.raises(TypeError, match="EvalConfig.inner: expected InnerSettings"):
        EvalConfig(inner=OuterSettings())
    flat = json.loads(json.dumps(EvalConfig().to_dict()))
    assert flat["hidden"] == [64, 32] and flat["inner_steps"] == 5
    assert flat["global_epochs"] == 6 and flat["epochs"] == 10 and flat["article_lr"] == 0.01
    assert EvalConfig.from_dict(flat) == EvalConfig()
    changed = EvalConfig.from_dict({**flat, "global_lr": 0.5, "patience": 7, "ks": [5]})
    assert changed.supervised.lr == 0.5 and changed.outer.patience == 7 and changed.ks == (5,)


# --- command line --------------------------------------------------------------------------


def test_cli_method_names_come_from_the_registry():
    assert tuple(cli.EVALUATE_METHODS) == method_names()
    assert method_names()[:len(METHODS)] == METHODS  # the built-in methods come first


def test_cli_prints_table_and_writes_json(shop_dir, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    code = cli.main(["evaluate", "--data", str(shop_dir), "--k", "1", "5", "--seeds", "1",
                     "--methods", "finetune", "popularity", "global", "--json", str(out_json),
                     "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "K = 1" in out and "K = 5" in out and f"wrote {out_json}" in out
    assert "60 evaluated, 0 skipped" in out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.split() == ["method", *METRICS]
    for method in ("popularity", "global", "finetune"):
        assert sum(line.startswith(method) for line in out.splitlines()) == 2
    saved = json.loads(out_json.read_text(encoding="utf-8"))
    assert saved["protocol"]["methods"] == ["popularity", "global", "finetune"]
    assert saved["protocol"]["ks"] == [1, 5] and saved["protocol"]["seeds"] == [0]
    assert {row["k"] for row in saved["summary"]} == {1, 5}


def test_cli_invalid_data_directory_prints_the_error(shop_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(shop_dir, broken)
    set_cell(broken / "ratings.csv", 3, "rating", "7")
    code = cli.main(["evaluate", "--data", str(broken), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("invalid: ") and "ratings.csv, row 4" in err and "'7'" in err
    assert "Traceback" not in out + err
    code = cli.main(["evaluate", "--data", str(tmp_path / "missing"), "--no-progress"])
    assert code == 1 and "not a directory" in capsys.readouterr().err


def test_cli_unknown_method_and_oracle_without_key(no_key_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--data", str(no_key_dir), "--methods", "maml", "mamal"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mamal'" in err and all(m in err for m in METHODS)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--data", str(no_key_dir), "--methods", "oracle", "--k", "5",
                  "--seeds", "1", "--no-progress"])
    assert exit_info.value.code == 2
    assert "'oracle' needs an answer key" in capsys.readouterr().err
    mine = tmp_path / "mine.json"
    mine.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data", str(no_key_dir), "--json", str(mine)])
    assert "refusing to replace" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "{}"


def test_popularity_count_ranks_by_count_and_has_no_rating_metrics(dataset):
    config = EvalConfig(ks=(5,), seeds=(0,), n_boot=50)
    res = evaluate(dataset, config, methods=["popularity_count"], progress=False)
    metrics = set(res.summary().query("method == 'popularity_count'")["metric"])
    assert "mae" not in metrics and "rmse" not in metrics and "ndcg@10" in metrics
    rec = res.recommenders["popularity_count"]
    assert not rec.predicts_ratings


# --- the method registry ----------------------------------------------------------------


class ConstantMean:
    """Predicts the mean meta-train rating for every shopper and item."""

    name, predicts_ratings = "constant_mean", True

    def __init__(self, mean: float, n_items: int) -> None:
        self.mean, self.n_items = float(mean), n_items

    def predict(self, batch, items=None):
        return torch.full((len(batch), self.n_items), self.mean)


@pytest.fixture()
def restore_registry():
    before = {name: get_method(name) for name in method_names()}
    yield
    for name in set(method_names()) - set(before):
        unregister_method(name)
    assert {name: get_method(name) for name in method_names()} == before


def test_a_method_registered_in_a_test_runs_through_evaluate(dataset, tmp_path,
                                                             restore_registry):
    calls = []

    @evaluation.method("constant_mean", seed_free=True, description="the mean training rating")
    def fit_constant_mean(ctx):
        calls.append(ctx.seed)
        ratings = ctx.data.train_interactions["rating"]
        return ConstantMean(ratings.mean(), ctx.data.dataset.n_items)

    assert method_names()[-1] == "constant_mean" and method_names()[:len(METHODS)] == METHODS
    assert cli.build_parser().parse_args(["evaluate", "--methods", "constant_mean"]).methods \
        == ["constant_mean"]
    config = EvalConfig(ks=(1, 5), seeds=(0, 1), n_boot=50)
    res = evaluate(dataset, config, methods=["constant_mean", "popularity"], progress=False)
    assert res.methods == ("popularity", "constant_mean")  # registry (table) order
    assert calls == [0]  # seed-free: fitted once, its values repeated for seed 1
    rows = res.summary().query("method == 'constant_mean'")
    assert len(rows) == len(config.ks) * len(METRICS)
    mean = dataset.interactions["rating"][dataset.interactions["user"].isin(
        prepare(dataset, config, with_answer_key=False).split.train)].mean()
    query = res.per_user("constant_mean", 5, "mae")
    assert np.array_equal(query[0], query[1])
    batch = prepare(dataset, config, with_answer_key=False).test_batch(5)
    abs_err = (batch.query_ratings - float(np.float32(mean))).abs() * batch.query_mask
    expected = (abs_err.sum(1) / batch.query_mask.sum(1)).numpy()
    assert np.allclose(query[0], expected, atol=1e-5)
    saved = json.loads(res.to_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["protocol"]["methods"] == ["popularity", "constant_mean"]
    assert {(r["k"], r["metric"]) for r in saved["summary"] if r["method"] == "constant_mean"} \
        == {(k, m) for k in config.ks for m in METRICS}
    assert "constant_mean" in format_table(res.summary())


def test_registry_entries_and_their_checks(dataset, no_key_dir, restore_registry):
    assert [get_method(m).seed_free for m in METHODS].count(True) == 3
    assert not get_method("popularity_count").predicts_ratings
    assert get_method("oracle").needs == ("answer_key",)
    assert all(get_method(m).description for m in METHODS)
    with pytest.raises(ValueError, match="already registered"):
        register_method(MethodSpec("maml", lambda ctx: None))
    with pytest.raises(ValueError, match="unknown need"):
        MethodSpec("x", lambda ctx: None, needs=("crystal_ball",))
    with pytest.raises(TypeError, match="MethodSpec.fit"):
        MethodSpec("x", "not a function")
    # a method that needs the answer key is left out by default and refused on request
    register_method(MethodSpec("key_copy", get_method("oracle").fit, seed_free=True,
                               needs=("answer_key",)))
    data = prepare(no_key_dir, EvalConfig(ks=(5,), seeds=(0,)))
    assert "key_copy" not in resolve_methods(None, data)
    with pytest.raises(ValueError, match="'key_copy' needs an answer key"):
        resolve_methods(["key_copy"], data)
    # the entry's predicts_ratings must match the recommender it fits
    register_method(MethodSpec("liar", lambda ctx: MethodFit(ConstantMean(3.0, 1)),
                               predicts_ratings=False))
    with pytest.raises(ValueError, match="registered with predicts_ratings=False"):
        evaluate(dataset, EvalConfig(ks=(5,), seeds=(0,), n_boot=10), methods=["liar"],
                 progress=False)


def test_a_method_does_not_depend_on_the_methods_fitted_before_it(data):
    # `evaluate` fits the methods of a seed one after another; each must start from its own
    # seed, not from whatever random state the methods before it left behind
    batch = data.test_batch(3)
    for name in ["global", "encoder", "mamo", "global_hybrid", "choice_global"]:
        torch.manual_seed(123)
        first, _ = fit_methods(data, 0, [name])
        torch.manual_seed(456)
        torch.rand(1000)
        second, _ = fit_methods(data, 0, [name])
        assert torch.equal(first[name].predict(batch, "all"),
                           second[name].predict(batch, "all")), name
