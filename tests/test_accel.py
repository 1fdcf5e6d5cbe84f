"""Tests for toyrec_helpers.accel (sparse per-task adaptation) and toyrec_helpers.bench.

The sparse meta-loss must be the *same function* of the parameters as the dense one:
same value, same meta-gradient (second and first order, Meta-SGD included) and same
adapted predictions, on batches where tasks share embedding rows and are padded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic import make_features, small_problem
from torch import nn

from toyrec_helpers import cli, models
from toyrec_helpers.accel import sparse_meta_loss, sparse_predict_adapted
from toyrec_helpers.bench import cpu_peak_bytes, format_results, make_problem, run_bench
from toyrec_helpers.episodes import Episode, collate
from toyrec_helpers.meta import MetaConfig, init_inner_lrs, meta_loss, predict_adapted
from toyrec_helpers.models import FeatureRecommender, IdEmbeddingRecommender

FEATURES, EPISODES = small_problem()
BATCH = collate(EPISODES[:6])


def feature_model(seed: int = 0) -> FeatureRecommender:
    torch.manual_seed(seed)
    return FeatureRecommender(*FEATURES, embedding_dim=4, hidden=(8,)).double()


def leaves(model, config):
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    rates = init_inner_lrs(model, config, params)
    if rates is not None:  # rates that differ per element, so a mix-up would show
        gen = torch.Generator().manual_seed(1)
        rates = {n: (r * (0.5 + torch.rand(r.shape, generator=gen, dtype=r.dtype)))
                 .requires_grad_() for n, r in rates.items()}
    return params, rates


def loss_and_grads(fn, model, params, rates, batch, config, **kwargs):
    tensors = list(params.values()) + (list(rates.values()) if rates else [])
    loss = fn(model, params, batch, config, rates, **kwargs)
    return loss.detach(), torch.autograd.grad(loss, tensors)


def assert_sparse_equals_dense(model, params, rates, config, batch=BATCH, **kwargs):
    """Same meta-loss and meta-gradient (params and rates) as the dense meta_loss."""
    dense_loss, dense_grads = loss_and_grads(meta_loss, model, params, rates, batch, config)
    loss, grads = loss_and_grads(sparse_meta_loss, model, params, rates, batch, config,
                                 **kwargs)
    torch.testing.assert_close(loss, dense_loss, rtol=1e-12, atol=1e-12)
    for g, d in zip(grads, dense_grads, strict=True):
        torch.testing.assert_close(g, d, rtol=1e-9, atol=1e-12)
    return dense_grads


def test_batch_shares_rows_and_is_padded():
    """The equality tests below mean something only if tasks reuse embedding rows
    (duplicates must be merged) and support sets are padded."""
    assert (BATCH.support_mask == 0).any()
    cat = FEATURES[1].categorical[BATCH.support_items[0], 0]
    assert len(torch.unique(cat)) < len(cat)


@pytest.mark.parametrize("order", ["second", "first"])
@pytest.mark.parametrize("meta_sgd", ["off", "element"])
def test_sparse_meta_loss_equals_dense(order, meta_sgd):
    model = feature_model()
    config = MetaConfig(inner_steps=3, inner_lr=0.3, adapt="all", order=order,
                        meta_sgd=meta_sgd)
    params, rates = leaves(model, config)
    for kwargs in ({"vectorize": True}, {"vectorize": False}, {"chunk_size": 4}):
        dense_grads = assert_sparse_equals_dense(model, params, rates, config, **kwargs)
    # The embeddings really are adapted: the meta-gradient of a table differs from the
    # one with head-only adaptation.
    head = MetaConfig(inner_steps=3, inner_lr=0.3, adapt="head", order=order)
    head_grads = torch.autograd.grad(meta_loss(model, params, BATCH, head),
                                     list(params.values()))
    assert not torch.allclose(head_grads[0], dense_grads[0])


def test_sparse_head_adaptation_and_tensor_rates_equal_dense():
    model = feature_model(seed=1)
    for config in (MetaConfig(inner_steps=2, inner_lr=0.2, adapt="head"),
                   MetaConfig(inner_steps=2, inner_lr=0.2, adapt="all", meta_sgd="tensor")):
        assert_sparse_equals_dense(model, *leaves(model, config), config)


def test_sparse_equals_dense_for_the_id_model():
    torch.manual_seed(0)
    model = IdEmbeddingRecommender(24, 30, embedding_dim=3).double()
    config = MetaConfig(inner_steps=2, inner_lr=0.1, adapt="all", order="second")
    params, _ = leaves(model, config)
    assert_sparse_equals_dense(model, params, None, config)


class TanhHead(nn.Module):
    """A model described only by its input plan: id lookups, a numeric user column, and a
    head named 'decide' that is not Linear/ReLU (so accel cannot assume 'mlp'/'linear')."""

    decision_prefixes = ("decide.",)

    def __init__(self, n_users: int, n_items: int, dim: int = 3) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.items = nn.Embedding(n_items, dim)
        self.users = nn.Embedding(n_users, dim)
        self.register_buffer("user_numeric", torch.linspace(-1, 1, n_users)[:, None])
        self.decide = nn.Sequential(nn.Linear(2 * dim + 1, 4), nn.Tanh(), nn.Linear(4, 1))
        parts = (models.Lookup("items", "item"), models.Numeric("user_numeric", "user"),
                 models.Lookup("users", "user"))
        self.plan = models.InputPlan(parts, "decide")

    def input_plan(self) -> models.InputPlan:
        return self.plan

    def forward(self, users, items):
        users, items = torch.broadcast_tensors(users, items)
        x = torch.cat(models.input_parts(self, self.plan, users, items, torch.float64), -1)
        return models.apply_head(self, self.plan, x)


@pytest.mark.parametrize("adapt_group", ["all", "head"])
def test_sparse_follows_the_input_plan_of_any_model(adapt_group):
    torch.manual_seed(0)
    model = TanhHead(24, 30).double()
    for order in ("second", "first"):
        config = MetaConfig(inner_steps=2, inner_lr=0.3, adapt=adapt_group, order=order)
        params, _ = leaves(model, config)
        assert_sparse_equals_dense(model, params, None, config)
        assert_sparse_equals_dense(model, params, None, config, vectorize=False)
    torch.testing.assert_close(
        sparse_predict_adapted(model, params, BATCH, config, items="all"),
        predict_adapted(model, params, BATCH, config, items="all"), rtol=1e-12, atol=1e-12)


def test_sparse_predictions_equal_dense():
    model = feature_model(seed=2)
    config = MetaConfig(inner_steps=3, inner_lr=0.3, adapt="all")
    params = dict(model.named_parameters())
    some = torch.tensor([0, 3, 7, 29])
    per_task = torch.randint(0, 30, (len(BATCH), 5), generator=torch.Generator().manual_seed(0))
    for items in (None, "all", some, per_task):
        dense = predict_adapted(model, params, BATCH, config, items=items, chunk_size=4)
        sparse = sparse_predict_adapted(model, params, BATCH, config, items=items, chunk_size=4)
        assert sparse.shape == dense.shape and not sparse.requires_grad
        torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    # One task takes the path without vmap; adaptation must still change predictions.
    one = BATCH.select(slice(2, 3))
    sparse = sparse_predict_adapted(model, params, one, config, items="all")
    torch.testing.assert_close(sparse, predict_adapted(model, params, one, config, items="all"),
                               rtol=1e-12, atol=1e-12)
    unadapted = model(one.users[:, None], torch.arange(30)[None, :]).detach()
    assert (sparse - unadapted).abs().max() > 1e-3


def test_empty_support_and_zero_steps():
    model = feature_model()
    empty = collate([Episode(user=3, support_items=np.zeros(0, np.int64),
                             support_ratings=np.zeros(0, np.float32),
                             query_items=np.array([1, 2], np.int64),
                             query_ratings=np.array([4.0, 2.0], np.float32))])
    params, _ = leaves(model, MetaConfig())
    for config, batch in ((MetaConfig(inner_steps=2, adapt="all"), empty),
                          (MetaConfig(inner_steps=0, adapt="all"), BATCH)):
        torch.testing.assert_close(sparse_meta_loss(model, params, batch, config),
                                   meta_loss(model, params, batch, config))


def test_sparse_uses_far_less_memory_with_large_tables():
    """Dense vmap adaptation copies every table per task; sparse adaptation does not."""
    users, items = make_features(n_users=24, n_items=30, seed=0)
    big = 20_000  # a large vocabulary for the item 'brand' column
    items = type(items)(**{**vars(items), "categorical_sizes": (6, big, 4)})
    torch.manual_seed(0)
    model = FeatureRecommender(users, items, embedding_dim=8, hidden=(8,))
    config = MetaConfig(inner_steps=2, adapt="all", order="second")
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def peak(fn):
        return cpu_peak_bytes(lambda: fn(model, params, BATCH, config).backward())

    table = big * 8 * 4  # bytes of the big table
    dense, sparse = peak(meta_loss), peak(sparse_meta_loss)
    assert dense > len(BATCH) * table  # at least one copy of the table per task
    assert sparse < 4 * table  # its gradient, plus small per-task tensors


def test_errors():
    model = feature_model()
    params = dict(model.named_parameters())
    with pytest.raises(TypeError, match="sparse adaptation supports.*input_plan.*Linear"):
        sparse_meta_loss(torch.nn.Linear(2, 1), {}, BATCH, MetaConfig())
    with pytest.raises(KeyError, match="missing"):
        sparse_meta_loss(model, {}, BATCH, MetaConfig())
    with pytest.raises(ValueError, match="meta_sgd is 'off'"):
        sparse_meta_loss(model, params, BATCH, MetaConfig(), inner_lrs={})
    with pytest.raises(TypeError, match="EpisodeBatch"):
        sparse_meta_loss(model, params, [1, 2], MetaConfig())
    with pytest.raises(ValueError, match="items"):
        sparse_predict_adapted(model, params, BATCH, MetaConfig(), items="some")
    with pytest.raises(ValueError, match="'items'.*0..29"):
        sparse_predict_adapted(model, params, BATCH, MetaConfig(), items=torch.tensor([30]))


# --------------------------------------------------------------------------- bench
def test_make_problem_sizes():
    model, batch, shopper = make_problem("melu", 3)
    assert model.input_width == 257 and model.hidden == (256, 128, 64)
    assert len(model.embeddings) == 8
    assert batch.support_items.shape == (3, 10) and batch.query_items.shape == (3, 10)
    assert shopper.support_items.shape == (1, 5)
    model, _, _ = make_problem("toyshop", 2)
    assert model.n_items == 600 and model.hidden == (64, 32)
    with pytest.raises(ValueError, match="sizes"):
        make_problem("huge", 2)


def test_quick_bench_writes_json(tmp_path):
    path = tmp_path / "out" / "bench.json"
    result = run_bench(quick=True, meta_batch=3, compile=False, json_path=path,
                       impls=("loop", "vmap"), orders=("first",))
    on_disk = json.loads(path.read_text())
    assert on_disk["results"] == result["results"] and on_disk["complete"] is True
    for key in ("device", "torch", "threads", "date", "meta_batch", "sizes"):
        assert key in on_disk
    assert on_disk["sizes"] == "tiny" and on_disk["meta_batch"] == 3
    rows = {(r["impl"], r["adapt"]): r for r in on_disk["results"]}
    assert set(rows) == {(i, a) for i in ("loop", "vmap")
                         for a in ("all_dense", "all_sparse", "head")}
    for row in rows.values():
        assert row["error"] is None and row["order"] == "first"
        assert row["tasks_per_s"] > 0 and len(row["step_s"]) == 2
        assert row["tasks_per_s"] == pytest.approx(3 / np.median(row["step_s"]))
        assert row["peak_mem_mb"] > 0
    latency = on_disk["adapt_latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] and latency["threads"] == 1
    assert on_disk["threads"] == torch.get_num_threads()  # restored after the latency
    assert all(v < 1e-4 for v in on_disk["checks"].values())
    assert "vmap" in format_results(result)
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left


def test_compile_failure_is_recorded_not_raised(tmp_path):
    def broken(fn):
        raise RuntimeError("no C compiler\nsecond line")

    result = run_bench(quick=True, meta_batch=2, compiler=broken, impls=("vmap", "compiled"),
                       orders=("first",), adapts=("head",), latency_repeats=1)
    rows = {r["impl"]: r for r in result["results"]}
    assert rows["compiled"]["error"] == "RuntimeError: no C compiler"
    assert rows["compiled"]["tasks_per_s"] is None
    assert rows["vmap"]["error"] is None and rows["vmap"]["tasks_per_s"] > 0
    # A spent compile budget skips the compiled configurations (recorded), while an
    # identity "compiler" within budget is timed like vmap.
    for budget, expect_error in ((0.0, True), (None, False)):
        result = run_bench(quick=True, meta_batch=2, compiler=lambda fn: fn,
                           compile_budget_s=budget, impls=("compiled",), orders=("first",),
                           adapts=("head",), latency_repeats=1)
        row = result["results"][0]
        assert result["complete"] is True
        if expect_error:
            assert "budget" in row["error"] and row["tasks_per_s"] is None
        else:
            assert row["error"] is None and row["compile_s"] > 0 and row["tasks_per_s"] > 0


def test_bench_cli(tmp_path, capsys):
    path = tmp_path / "b.json"
    status = cli.main(["bench", "--quick", "--no-compile", "--meta-batch", "2",
                       "--impls", "vmap", "--orders", "first", "--adapts", "head",
                       "--latency-repeats", "1", "--json", str(path)])
    assert status == 0
    assert json.loads(path.read_text())["results"][0]["impl"] == "vmap"
    assert "tasks/s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--impls", "gpu"])
