"""Tests for toyrec_helpers.models (feature and id-embedding recommenders)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from synthetic import make_features
from torch import nn
from torch.func import functional_call, vmap

from toyrec_helpers.models import (
    FeatureRecommender,
    IdEmbeddingRecommender,
    InputPlan,
    Lookup,
    Numeric,
    apply_head,
    embed_lookup,
    head_parameter_names,
    input_parts,
    lookup_index,
    masked_mse,
    parameter_names,
    pool_lookup,
)


@pytest.fixture
def features():
    return make_features(n_users=12, n_items=15, seed=0)


@pytest.fixture
def model(features):
    torch.manual_seed(0)
    return FeatureRecommender(*features, embedding_dim=4, hidden=(8, 6), rating_mean=3.5)


def test_parameter_groups_of_feature_model(model):
    names = parameter_names(model, "all")
    assert names == [n for n, _ in model.named_parameters()]
    head = parameter_names(model, "head")
    assert head and all(n.startswith("mlp.") for n in head)
    assert sorted(set(names) - set(head)) == sorted(n for n in names
                                                    if n.startswith("embeddings."))
    assert "embeddings.user_age_band.weight" in names  # column names are sanitised
    assert "embeddings.item_themes.weight" in names


def test_parameter_groups_of_id_model():
    model = IdEmbeddingRecommender(5, 7, embedding_dim=3)
    assert parameter_names(model, "all") == [
        "user_embedding.weight", "item_embedding.weight", "linear.weight", "linear.bias"]
    assert parameter_names(model, "head") == ["linear.weight", "linear.bias"]
    assert model.linear.in_features == 6


def test_parameter_names_errors(model):
    with pytest.raises(ValueError, match="'which'.*'body'"):
        parameter_names(model, "body")
    with pytest.raises(ValueError, match="decision_prefixes"):
        parameter_names(nn.Linear(2, 1), "head")
    assert parameter_names(nn.Linear(2, 1), "all") == ["weight", "bias"]


def test_feature_tables_are_buffers_not_in_state_dict(model, features):
    assert set(model.state_dict()) == set(parameter_names(model, "all"))
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["item_multi_0"], features[1].multi[0])
    assert torch.equal(buffers["user_categorical"], features[0].categorical)
    assert model.double().item_numeric.dtype == torch.float64  # buffers move with the model


def test_output_bias_starts_at_rating_mean(model):
    assert model.mlp[-1].bias.item() == 3.5
    assert IdEmbeddingRecommender(4, 4, rating_mean=4.25).linear.bias.item() == 4.25
    no_hidden = FeatureRecommender(*make_features(), hidden=())
    assert len(no_hidden.mlp) == 1 and no_hidden.mlp[0].bias.item() == 3.0


@pytest.mark.parametrize("kind", ["feature", "id"])
def test_forward_shapes_and_broadcasting(model, kind):
    if kind == "id":
        torch.manual_seed(0)
        model = IdEmbeddingRecommender(12, 15, embedding_dim=4)
    users = torch.tensor([0, 3, 7])
    items = torch.tensor([[1, 2, 14, 0], [5, 5, 6, 7], [0, 1, 2, 3]])
    out = model(users[:, None], items)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    for t in range(3):
        assert torch.allclose(out[t], model(users[t], items[t]))
        for j in range(4):
            assert torch.allclose(out[t, j], model(users[t:t + 1], items[t, j:j + 1])[0])


def test_index_zero_contributes_nothing(model):
    users, items = torch.arange(12).repeat(2)[:15], torch.arange(15)
    assert (model.user_categorical[users] == 0).any() and (model.item_categorical == 0).any()
    before = model(users, items)
    with torch.no_grad():
        for emb in model.embeddings.values():
            emb.weight[0] = 100.0
    assert torch.allclose(model(users, items), before)


def test_multi_valued_column_is_a_mean_over_known_entries():
    user_f, item_f = make_features(n_users=3, n_items=4)
    themes = torch.tensor([[3, 0, 0], [3, 3, 0], [3, 5, 0], [0, 0, 0]])
    same = item_f.categorical[0].expand(4, -1).clone()
    item_f = dataclasses.replace(item_f, multi=(themes,), categorical=same,
                                 numeric=item_f.numeric[:1].expand(4, -1).clone())
    torch.manual_seed(1)
    model = FeatureRecommender(user_f, item_f, embedding_dim=4, hidden=(8,))
    users = torch.zeros(4, dtype=torch.int64)
    out = model(users, torch.arange(4))
    assert torch.allclose(out[0], out[1])  # [3] and [3, 3] have the same mean
    assert not torch.allclose(out[0], out[2])
    table = model.embeddings["item_themes"].weight
    with torch.no_grad():
        table[3] = (table[3] + table[5]) / 2
    assert torch.allclose(model(users, torch.arange(4))[0], out[2])  # mean of rows 3 and 5
    with torch.no_grad():
        table.normal_()
    assert torch.allclose(model(users, torch.arange(4))[3], out[3])  # no theme: zero vector


def test_functional_call_under_vmap_matches_a_loop(model):
    base = dict(model.named_parameters())
    noise = torch.Generator().manual_seed(0)
    batched = {n: p.detach() + 0.1 * torch.randn((3, *p.shape), generator=noise)
               for n, p in base.items()}
    users = torch.tensor([1, 4, 9])
    items = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 14]])

    def one(params, user, task_items):
        return functional_call(model, params, (user, task_items))

    out = vmap(one)(batched, users, items)
    for t in range(3):
        params_t = {n: p[t] for n, p in batched.items()}
        assert torch.allclose(out[t], one(params_t, users[t], items[t]), atol=1e-6)


def test_masked_mse():
    pred = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[2.0, 4.0, -9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(masked_mse(pred, target, mask), torch.tensor([2.5, 0.0]))
    assert masked_mse(pred[0], target[0], mask[0]).shape == ()


def test_model_config_is_json_ready(model):
    config = json.loads(json.dumps(model.model_config))
    assert config["class"] == "FeatureRecommender"
    assert config["hidden"] == [8, 6] and config["n_items"] == 15
    assert config["item_multi_sizes"] == [8]
    assert json.loads(json.dumps(IdEmbeddingRecommender(2, 3).model_config))["n_items"] == 3


def test_bad_features_are_rejected(features):
    user_f, item_f = features
    bad = dataclasses.replace(item_f, categorical=item_f.categorical.clone())
    bad.categorical[2, 1] = 99
    with pytest.raises(ValueError, match="item_features.*'brand'.*0..6"):
        FeatureRecommender(user_f, bad)
    with pytest.raises(TypeError, match="user_features"):
        FeatureRecommender(user_f.categorical, item_f)
    with pytest.raises(ValueError, match="hidden"):
        FeatureRecommender(user_f, item_f, hidden=(8, 0))
    with pytest.raises(ValueError, match="n_items"):
        IdEmbeddingRecommender(3, 0)


# --------------------------------------------------------------------------- input plans


def test_input_plan_of_the_feature_model(model, features):
    plan = model.input_plan()
    assert isinstance(plan, InputPlan) and plan.head == "mlp"
    # Per table: categorical lookups, multi-valued lookups, numeric columns.
    assert [type(p).__name__ for p in plan.parts] == (
        ["Lookup"] * 2 + ["Numeric"] + ["Lookup"] * 4 + ["Numeric"])
    assert [p.table for p in plan.parts] == ["user"] * 3 + ["item"] * 5
    assert [lk.param for lk in plan.lookups] == [
        n for n in parameter_names(model, "all") if n.startswith("embeddings.")]
    themes = plan.parts[6]
    assert themes == Lookup("embeddings.item_themes", "item", buffer="item_multi_0",
                            zero_pad=True) and themes.pooled
    assert plan.parts[4] == Lookup("embeddings.item_brand", "item", column=1, zero_pad=True)
    assert plan.parts[-1] == Numeric("item_numeric", "item")
    assert torch.equal(lookup_index(model, themes, torch.tensor([2, 0])),
                       features[1].multi[0][[2, 0]])
    assert head_parameter_names(model, plan) == parameter_names(model, "head")


@pytest.mark.parametrize("kind", ["feature", "id"])
def test_forward_is_the_plan_composed(model, kind):
    if kind == "id":
        torch.manual_seed(0)
        model = IdEmbeddingRecommender(12, 15, embedding_dim=4)
        assert model.input_plan() == InputPlan(
            (Lookup("user_embedding", "user"), Lookup("item_embedding", "item")), "linear")
    plan = model.input_plan()
    users, items = torch.broadcast_tensors(torch.arange(12)[:, None], torch.arange(15))
    parts = input_parts(model, plan, users, items, torch.float32)
    assert [p.shape[:2] for p in parts] == [(12, 15)] * len(plan.parts)
    x = torch.cat(parts, -1)
    assert torch.equal(apply_head(model, plan, x), model(users, items))  # bit for bit
    # With explicit head parameters: the same as calling the head module with them.
    head = {n: p.detach() + 0.1 for n, p in model.named_parameters()
            if n in head_parameter_names(model, plan)}
    module = model.get_submodule(plan.head)
    expected = functional_call(module, {n[len(plan.head) + 1:]: p for n, p in head.items()},
                               (x,)).squeeze(-1)
    torch.testing.assert_close(apply_head(model, plan, x, head), expected)
    assert not torch.allclose(expected, model(users, items))


def test_pool_lookup_zero_pads_and_means():
    vectors = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 60.0]]])  # [1, L=3, d=2]
    index = torch.tensor([[4, 2, 0]])
    pooled = Lookup("e", "item", buffer="b", zero_pad=True)
    assert torch.equal(pool_lookup(vectors, index, pooled), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool_lookup(vectors, torch.zeros_like(index), pooled),
                       torch.zeros(1, 2))
    column = Lookup("e", "item", column=0, zero_pad=True)
    assert torch.equal(pool_lookup(vectors[0], index[0], column),
                       torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]))
    plain = Lookup("e", "item")
    rows = vectors[0]
    assert pool_lookup(rows, index[0], plain) is rows  # an id lookup: unchanged
    assert not plain.pooled and plain.param == "e.weight"


def test_embed_lookup_uses_functional_call_parameters(model):
    lookup = model.input_plan().lookups[0]
    rows = torch.arange(12)
    params = {n: torch.zeros_like(p) for n, p in model.named_parameters()}

    class Probe(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, rows):
            return embed_lookup(self.inner, lookup, rows)

    swapped = {f"inner.{n}": p for n, p in params.items()}
    assert torch.equal(functional_call(Probe(model), swapped, (rows,)), torch.zeros(12, 4))
    assert embed_lookup(model, lookup, rows).abs().sum() > 0

