"""Tests for toyrec_helpers.features: vocabularies, unseen values, padding, standardising."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from datadirs import write_tiny

from toyrec_helpers.data import load_dataset
from toyrec_helpers.features import UNSEEN, EncodedFeatures, encode_dataset, fit_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(write_tiny(tmp_path_factory.mktemp("features") / "tiny"))


@pytest.fixture(scope="module")
def toyshop_encoded(toyshop):
    return encode_dataset(toyshop)


def standardised(values: torch.Tensor) -> None:
    x = values.double()
    assert torch.isfinite(x).all()
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_unseen_index_is_zero():
    assert UNSEEN == 0


def test_shapes_dtypes_and_names_follow_the_schema(toyshop, toyshop_encoded):
    users, items, _, _ = toyshop_encoded
    assert isinstance(users, EncodedFeatures) and isinstance(items, EncodedFeatures)
    assert users.n == toyshop.n_users and items.n == toyshop.n_items
    assert users.categorical_names == ("child_age_band", "region")
    assert users.numeric_names == ("signup_date",)
    assert users.multi == () and users.multi_names == ()
    assert items.categorical_names == ("category", "brand", "age_band")
    assert items.multi_names == ("themes",)
    assert items.numeric_names == ("price", "release_date")
    assert items.categorical.dtype == torch.int64
    assert items.categorical.shape == (600, 3)
    assert items.multi[0].dtype == torch.int64 and items.multi[0].shape == (600, 3)
    assert items.numeric.dtype == torch.float32 and items.numeric.shape == (600, 2)
    # 12 categories, 25 brands, 5 age bands, 15 themes: + 1 reserved index each
    assert items.categorical_sizes == (13, 26, 6)
    assert items.multi_sizes == (16,)
    assert users.categorical_sizes == (6, 7)


def test_vocabularies_reserve_zero_and_are_contiguous(toyshop_encoded):
    _, items, user_encoder, item_encoder = toyshop_encoded
    for encoder in (user_encoder, item_encoder):
        for vocab in encoder.vocabularies.values():
            assert sorted(vocab.values()) == list(range(1, len(vocab) + 1))
            assert list(vocab) == sorted(vocab)  # sorted values -> order-independent
    # every toy has a known value in every categorical column and at least one theme
    assert (items.categorical >= 1).all()
    for j, size in enumerate(items.categorical_sizes):
        assert int(items.categorical[:, j].max()) == size - 1
    assert (items.multi[0][:, 0] >= 1).all()


def test_encoding_matches_the_vocabulary(toyshop, toyshop_encoded):
    _, items, _, item_encoder = toyshop_encoded
    brand = item_encoder.vocabularies["brand"]
    expected = [brand[b] for b in toyshop.items["brand"]]
    assert items.categorical[:, 1].tolist() == expected
    themes = item_encoder.vocabularies["themes"]
    for i in (0, 1, 137, 599):
        names = toyshop.items["themes"].iloc[i].split("|")
        row = items.multi[0][i].tolist()
        assert row[: len(names)] == [themes[t] for t in names]
        assert row[len(names) :] == [0] * (3 - len(names))


def test_vocabulary_does_not_depend_on_row_order(tiny):
    spec = tiny.schema.items
    forward = fit_encoder(tiny.items, spec)
    backward = fit_encoder(tiny.items.iloc[::-1], spec)
    assert forward.vocabularies == backward.vocabularies
    assert forward.means == pytest.approx(backward.means)


def test_unseen_values_map_to_zero(tiny):
    users_spec, items_spec = tiny.schema.users, tiny.schema.items
    user_encoder = fit_encoder(tiny.users, users_spec)
    new_users = pd.DataFrame(
        {
            "user_id": ["n1", "n2"],
            "age_band": ["13+", "3-5"],  # 13+ never seen
            "region": ["North", "Atlantis"],  # Atlantis never seen
            "signup_date": pd.to_datetime(["2023-01-10", "2025-01-01"]),
        }
    )
    enc = user_encoder.transform(new_users)
    vocab_age = user_encoder.vocabularies["age_band"]
    vocab_region = user_encoder.vocabularies["region"]
    assert enc.categorical.tolist() == [
        [UNSEEN, vocab_region["North"]],
        [vocab_age["3-5"], UNSEEN],
    ]
    assert enc.categorical_sizes == (len(vocab_age) + 1, len(vocab_region) + 1)

    item_encoder = fit_encoder(tiny.items, items_spec)
    new_items = pd.DataFrame(
        {
            "item_id": ["n1"],
            "title": ["Gold Thing"],
            "category": ["gadgets"],
            "price": [10.0],
            "tags": ["gold|smart|shiny|red"],
            "release_date": pd.to_datetime(["2022-01-01"]),
        }
    )
    tags = item_encoder.vocabularies["tags"]
    enc = item_encoder.transform(new_items)
    assert enc.categorical.tolist() == [[UNSEEN]]
    assert enc.multi[0].tolist() == [[UNSEEN, tags["smart"], UNSEEN, tags["red"]]]


def test_empty_categorical_value_is_unseen(tiny):
    frame = tiny.users.copy()
    frame.loc[1, "region"] = ""
    encoder = fit_encoder(frame, tiny.schema.users)
    assert "" not in encoder.vocabularies["region"]
    enc = encoder.transform(frame)
    assert int(enc.categorical[1, 1]) == UNSEEN
    assert (enc.categorical[[0, 2, 3, 4], 1] >= 1).all()


def test_multi_valued_padding(tiny):
    _, items, _, item_encoder = encode_dataset(tiny)
    tags = item_encoder.vocabularies["tags"]
    assert item_encoder.vocabularies["tags"] == {
        t: k + 1 for k, t in enumerate(["blue", "fast", "green", "red", "small", "smart", "soft"])
    }
    assert items.multi_sizes == (8,)
    width = 3  # the longest cell, "green|smart|small"
    assert items.multi[0].tolist() == [
        [tags["red"], tags["fast"], 0],
        [tags["blue"], 0, 0],
        [tags["green"], tags["smart"], tags["small"]],
        [tags["smart"], 0, 0],
        [0] * width,  # the empty cell: all padding
        [tags["soft"], 0, 0],
    ]


def test_multi_column_of_only_empty_cells_has_width_one(tiny):
    frame = tiny.items.assign(tags="")
    enc = fit_encoder(frame, tiny.schema.items).transform(frame)
    assert enc.multi[0].shape == (6, 1)
    assert (enc.multi[0] == 0).all()
    assert enc.multi_sizes == (1,)


def test_numeric_and_date_columns_are_standardised(toyshop_encoded):
    users, items, _, _ = toyshop_encoded
    for column in range(items.numeric.shape[1]):
        standardised(items.numeric[:, column])
    standardised(users.numeric[:, 0])


def test_dates_become_days(tiny):
    _, items, _, item_encoder = encode_dataset(tiny)
    days = (tiny.items["release_date"] - pd.Timestamp("1970-01-01")).dt.days.to_numpy(float)
    assert item_encoder.means["release_date"] == pytest.approx(days.mean())
    assert item_encoder.stds["release_date"] == pytest.approx(days.std())
    expected = (days - days.mean()) / days.std()
    np.testing.assert_allclose(items.numeric[:, 1].numpy(), expected, rtol=1e-5, atol=1e-6)
    prices = tiny.items["price"].to_numpy()
    np.testing.assert_allclose(
        items.numeric[:, 0].numpy(), (prices - prices.mean()) / prices.std(), rtol=1e-5
    )


def test_constant_numeric_column_does_not_divide_by_zero(tiny):
    frame = tiny.items.assign(price=9.99)
    enc = fit_encoder(frame, tiny.schema.items).transform(frame)
    assert torch.equal(enc.numeric[:, 0], torch.zeros(6))
    single = fit_encoder(tiny.items.iloc[:1], tiny.schema.items).transform(tiny.items)
    assert torch.isfinite(single.numeric).all()


def test_fit_users_restricts_the_user_vocabularies(toyshop):
    region = toyshop.users["region"].to_numpy()
    fit = np.flatnonzero(region != "Coast")
    held_out = np.flatnonzero(region == "Coast")
    assert len(held_out) > 0
    users, items, user_encoder, item_encoder = encode_dataset(toyshop, fit_users=fit)
    assert "Coast" not in user_encoder.vocabularies["region"]
    assert users.categorical_sizes[1] == 6  # five regions + reserved 0
    assert users.n == toyshop.n_users  # every user is still encoded
    assert (users.categorical[held_out, 1] == UNSEEN).all()
    assert (users.categorical[fit, 1] >= 1).all()
    # standardisation constants come from the fitted rows only
    standardised(users.numeric[fit, 0])
    signup = (toyshop.users["signup_date"] - pd.Timestamp("1970-01-01")).dt.days.to_numpy(float)
    assert user_encoder.means["signup_date"] == pytest.approx(signup[fit].mean())
    # items are always fitted on the whole catalogue
    _, items_all, _, item_encoder_all = encode_dataset(toyshop)
    assert item_encoder.vocabularies == item_encoder_all.vocabularies
    assert torch.equal(items.categorical, items_all.categorical)


def test_fit_users_subset_changes_only_what_it_should(tiny):
    users, _, encoder, _ = encode_dataset(tiny, fit_users=np.array([0, 1]))
    assert encoder.vocabularies["age_band"] == {"3-5": 1, "6-8": 2}
    assert encoder.vocabularies["region"] == {"North": 1, "South": 2}
    # u3 (3-5, East), u4 (9-12, North), u5 (6-8, West)
    assert users.categorical.tolist() == [[1, 1], [2, 2], [1, 0], [0, 1], [2, 0]]
