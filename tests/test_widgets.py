"""The new-shopper demo's logic, tested without a browser."""

import numpy as np
import pandas as pd
import pytest
import torch

from toyrec_helpers.baselines import fit_global
from toyrec_helpers.data import load_dataset
from toyrec_helpers.episodes import Episode, collate
from toyrec_helpers.features import encode_dataset
from toyrec_helpers.meta import MetaConfig, predict_adapted
from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop, write_toyshop
from toyrec_helpers.widgets import (
    append_rows,
    build_demo,
    demo_items,
    encode_new_user,
    explain_change,
    model_with_new_user,
    recommend_for_new_shopper,
    top_k,
    top_table,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("shop") / "small"
    write_toyshop(generate_toyshop(ToyShopConfig(seed=3, users=200, items=60, ratings=5000)), path)
    shop = load_dataset(path)
    uf, itf, uenc, _ = encode_dataset(shop)
    fitted = fit_global(uf, itf, shop.interactions, np.arange(150), epochs=2, seed=0)
    return shop, uf, itf, uenc, fitted


def test_top_k_skips_excluded_and_breaks_ties_by_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 5.0])
    assert top_k(scores, np.array([4]), k=3).tolist() == [1, 2, 3]
    assert top_k(scores, np.array([0, 1, 2, 3]), k=3).tolist() == [4]


def test_explain_change_names_the_biggest_rise_and_fall():
    items = pd.DataFrame({"category": ["A", "A", "B", "B", "C", "C"]})
    line = explain_change(items, "category", np.array([2, 3, 4]), np.array([0, 1, 4]))
    assert line == "A rose from 0 to 2 of the top 3; B fell from 2 to 0."
    assert explain_change(items, "category", np.array([0, 2]), np.array([1, 3])).startswith(
        "The same mix"
    )


def test_append_rows_pads_multi_columns(setup):
    _, uf, itf, _, _ = setup
    both = append_rows(itf, itf)
    assert both.n == 2 * itf.n
    assert torch.equal(both.categorical[itf.n :], itf.categorical)


def test_new_user_model_matches_an_existing_user_with_the_same_features(setup):
    shop, uf, itf, uenc, fitted = setup
    row = uenc.transform(shop.users.iloc[[5]])
    model, index = model_with_new_user(fitted.model, uf, itf, row)
    assert index == uf.n
    items = torch.arange(itf.n)
    with torch.no_grad():
        new = model(torch.tensor(index), items)
        old = fitted.model(torch.tensor(5), items)
    assert torch.allclose(new, old)


def test_recommend_for_new_shopper_equals_predict_adapted_and_excludes_rated(setup):
    shop, uf, itf, uenc, fitted = setup
    config = MetaConfig(inner_steps=5, inner_lr=0.05)
    new_user = encode_new_user(uenc, {"child_age_band": "3-5", "region": "Coast"})
    ratings = {int(i): 5.0 for i in demo_items(shop, 4)}
    result = recommend_for_new_shopper(
        fitted.model, fitted.params, config, uf, itf, new_user, ratings, k=10
    )
    assert not set(result.top_after) & set(ratings) and not set(result.top_before) & set(ratings)
    assert len(result.top_after) == 10
    # the same computation done by hand with the package's inner loop
    model, user = model_with_new_user(fitted.model, uf, itf, new_user)
    items = np.array(sorted(ratings))
    batch = collate([Episode(user, items, np.full(4, 5.0, np.float32), items[:1], items[:1] * 0.0)])
    expected = predict_adapted(model, fitted.params, batch, config, items="all")[0].numpy()
    assert np.allclose(result.after, expected)
    # rating everything 5 raises the rated toys' groups' scores on average
    assert (result.after - result.before)[items].mean() > 0


def test_low_ratings_move_scores_down(setup):
    shop, uf, itf, uenc, fitted = setup
    config = MetaConfig(inner_steps=5, inner_lr=0.05)
    new_user = encode_new_user(uenc, {"child_age_band": "6-8"})
    ratings = {int(i): 1.0 for i in demo_items(shop, 4)}
    result = recommend_for_new_shopper(
        fitted.model, fitted.params, config, uf, itf, new_user, ratings
    )
    assert result.after.mean() < result.before.mean()


def test_bad_input_gets_clear_errors(setup):
    shop, uf, itf, uenc, fitted = setup
    config = MetaConfig()
    new_user = encode_new_user(uenc, {})
    with pytest.raises(ValueError, match="rate at least one"):
        recommend_for_new_shopper(fitted.model, fitted.params, config, uf, itf, new_user, {})
    with pytest.raises(ValueError, match="outside"):
        recommend_for_new_shopper(
            fitted.model, fitted.params, config, uf, itf, new_user, {10_000: 3.0}
        )
    with pytest.raises(ValueError, match="not user feature columns"):
        encode_new_user(uenc, {"shoe_size": "42"})


def test_demo_items_are_distinct_groups_and_deterministic(setup):
    shop, *_ = setup
    chosen = demo_items(shop, 5)
    assert len(chosen) == 5 and len(set(shop.items["category"].iloc[chosen])) == 5
    assert np.array_equal(chosen, demo_items(shop, 5))
    table = top_table(shop, chosen[:3], np.arange(shop.n_items, dtype=float))
    assert list(table.index) == [1, 2, 3] and "title" in table.columns


def test_build_demo_wires_the_button(setup):
    shop, uf, itf, uenc, fitted = setup
    demo = build_demo(shop, fitted.model, fitted.params, MetaConfig(), uf, itf, uenc, n_items=3)
    buttons = [w for w in demo.children if type(w).__name__ == "Button"]
    message = [w for w in demo.children if type(w).__name__ == "HTML"][-1]
    before = message.value
    buttons[0].click()
    assert message.value != before and message.value.endswith(".")
