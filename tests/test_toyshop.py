"""Tests for toyrec_helpers.toyshop: regeneration, the cache, the shop's properties, the
answer key."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from datadirs import (
    DATASHEET,
    TOYSHOP_DIR,
    copy_dir,
    read_csv_rows,
    set_cell,
    write_csv,
    write_tiny,
)

from toyrec_helpers import cli
from toyrec_helpers.data import load_dataset
from toyrec_helpers.toyshop import (
    AGE_BANDS,
    BRANDS,
    CATEGORIES,
    GENERATOR_VERSION,
    THEMES,
    TOYSHOP_SHA256,
    ToyShopConfig,
    answer_key,
    config_from_schema,
    expected_rating,
    file_sha256,
    generate_toyshop,
    toyshop_dir,
    write_toyshop,
)
from toyrec_helpers.toyshop_exposure import (
    RANDOM_EXPOSURE_FILE,
    RANDOM_EXPOSURE_PER_USER,
    RANDOM_EXPOSURE_SHA256,
    load_random_exposure,
    random_exposure,
)

SMALL = ToyShopConfig(seed=3, users=60, items=40, ratings=1000)


@pytest.fixture(scope="module")
def key(toyshop):
    return answer_key(toyshop)


# --- byte-identical regeneration and the cache ----------------------------------------------


def test_committed_files_match_the_recorded_sums():
    assert file_sha256(TOYSHOP_DIR) == {**TOYSHOP_SHA256,
                                        RANDOM_EXPOSURE_FILE: RANDOM_EXPOSURE_SHA256}


def test_cli_regenerates_the_committed_data_byte_for_byte(tmp_path):
    out = tmp_path / "toyshop"
    assert cli.main(["generate-data", "--out", str(out)]) == 0
    committed = sorted(p.name for p in TOYSHOP_DIR.iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    assert set(committed) == {"README.md", "items.csv", "ratings.csv", "schema.json", "users.csv",
                              RANDOM_EXPOSURE_FILE}
    for name in committed:
        assert (out / name).read_bytes() == (TOYSHOP_DIR / name).read_bytes(), name
    assert (out / "README.md").read_bytes() == DATASHEET.read_bytes()
    assert (TOYSHOP_DIR / "README.md").read_bytes() == DATASHEET.read_bytes()
    assert file_sha256(out) == {**TOYSHOP_SHA256, RANDOM_EXPOSURE_FILE: RANDOM_EXPOSURE_SHA256}


def test_toyshop_dir_without_cache_dir_is_the_checkout_copy():
    assert toyshop_dir() == TOYSHOP_DIR


def test_toyshop_dir_regenerates_reuses_and_repairs_the_cache(tmp_path):
    target = toyshop_dir(tmp_path / "cache")
    assert target == tmp_path / "cache" / f"toyshop-v{GENERATOR_VERSION}"
    assert file_sha256(target) == TOYSHOP_SHA256
    assert (target / "README.md").read_bytes() == DATASHEET.read_bytes()
    # a valid cache is reused: a file a regeneration would delete survives, nothing is
    # rewritten
    (target / "marker.txt").write_text("still here", encoding="utf-8")
    mtimes = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    assert toyshop_dir(tmp_path / "cache") == target
    assert (target / "marker.txt").read_text(encoding="utf-8") == "still here"
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == mtimes
    # an edited cache (its schema.json still has the generator block) is regenerated
    set_cell(target / "ratings.csv", 0, "rating", "1")
    assert file_sha256(target)["ratings.csv"] != TOYSHOP_SHA256["ratings.csv"]
    assert toyshop_dir(tmp_path / "cache") == target
    assert file_sha256(target) == TOYSHOP_SHA256
    assert not (target / "marker.txt").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [target.name]


def test_toyshop_dir_refuses_to_overwrite_a_directory_it_did_not_write(tmp_path):
    target = tmp_path / f"toyshop-v{GENERATOR_VERSION}"
    target.mkdir()
    (target / "notes.csv").write_text("my,own\nfile,here\n", encoding="utf-8")
    (target / "schema.json").write_text('{"name": "mine"}\n', encoding="utf-8")
    with pytest.raises(FileExistsError) as info:
        toyshop_dir(tmp_path)
    assert str(target) in str(info.value)
    assert "not a generated ToyShop directory" in str(info.value)
    assert sorted(p.name for p in target.iterdir()) == ["notes.csv", "schema.json"]
    assert (target / "notes.csv").read_text(encoding="utf-8") == "my,own\nfile,here\n"
    assert (target / "schema.json").read_text(encoding="utf-8") == '{"name": "mine"}\n'
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left over


def test_write_toyshop_refuses_an_existing_directory_without_overwrite(tmp_path):
    out = tmp_path / "shop"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite") as info:
        write_toyshop(generate_toyshop(SMALL), out)
    assert str(out) in str(info.value)
    assert list(out.iterdir()) == []


def test_write_toyshop_overwrite_replaces_only_generated_directories(tmp_path):
    shop = generate_toyshop(SMALL)
    out = write_toyshop(shop, tmp_path / "shop")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "items.csv",
        "ratings.csv",
        "schema.json",
        "users.csv",
    ]
    before = file_sha256(out)
    other = generate_toyshop(ToyShopConfig(seed=4, users=60, items=40, ratings=1000))
    assert write_toyshop(other, out, overwrite=True) == out
    assert file_sha256(out) != before
    assert json.loads((out / "schema.json").read_text(encoding="utf-8"))["generator"]["seed"] == 4
    # a data directory written by hand (no generator block) is never replaced
    mine = write_tiny(tmp_path / "mine")
    mine_sums = file_sha256(mine)
    with pytest.raises(FileExistsError, match="not a generated ToyShop directory") as info:
        write_toyshop(shop, mine, overwrite=True)
    assert str(mine) in str(info.value)
    assert file_sha256(mine) == mine_sums


def test_generation_is_deterministic_and_seeded():
    a, b = generate_toyshop(SMALL), generate_toyshop(SMALL)
    c = generate_toyshop(ToyShopConfig(seed=4, users=60, items=40, ratings=1000))
    for name in ("users", "items", "ratings"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not a.ratings.equals(c.ratings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"users": 2}, "users must be at least 3"),
        ({"items": 39}, "items must be at least 40"),
        ({"users": 100, "ratings": 1499}, "at least 15 per user"),
        ({"users": 100, "items": 40, "ratings": 2001}, "at most half"),
    ],
)
def test_config_rejects_invalid_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyShopConfig(**kwargs)


def test_smallest_allowed_ratings_generate_without_numeric_warnings():
    """BUG (minor): ratings == 15 * users passes ToyShopConfig's check, but the generator
    then takes log(0) (``extra_mean = ratings / users - MIN_RATINGS == 0``) and emits
    ``RuntimeWarning: divide by zero encountered in log``."""
    config = ToyShopConfig(users=40, items=40, ratings=600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shop = generate_toyshop(config)
    assert (shop.ratings.groupby("user_id").size() == 15).all()
    messages = [str(w.message) for w in caught]
    assert messages == [], f"BUG: generating the smallest allowed shop warned: {messages}"


# --- properties of the committed ToyShop ----------------------------------------------------


def test_sizes(toyshop):
    assert toyshop.n_users == 3000
    assert toyshop.n_items == pytest.approx(600, rel=0.05)
    assert len(toyshop.interactions) == pytest.approx(100_000, rel=0.05)


def test_ratings_are_integers_from_1_to_5(toyshop):
    r = toyshop.interactions["rating"].to_numpy()
    assert set(np.unique(r).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert toyshop.schema.rating_integer
    _, rows = read_csv_rows(TOYSHOP_DIR / "ratings.csv")
    assert {row[2] for row in rows} == {"1", "2", "3", "4", "5"}


def test_ratings_per_user_are_at_least_15_and_heavy_tailed(toyshop):
    per_user = toyshop.ratings_per_user()
    assert per_user.min() >= 15
    assert per_user.max() > 5 * np.median(per_user)


def test_item_popularity_has_a_long_tail(toyshop):
    pop = np.sort(np.bincount(toyshop.interactions["item"], minlength=toyshop.n_items))[::-1]
    top = int(round(0.2 * len(pop)))
    assert pop[:top].sum() / pop.sum() > 0.45


def test_feature_vocabularies(toyshop):
    items, users = toyshop.items, toyshop.users
    assert set(items["category"]) == set(CATEGORIES) and len(CATEGORIES) == 12
    assert set(items["brand"]) == set(BRANDS) and len(BRANDS) == 25
    assert set(items["age_band"]) == set(AGE_BANDS) and len(AGE_BANDS) == 5
    assert set(users["child_age_band"]) == set(AGE_BANDS)
    themes = {t for cell in items["themes"] for t in cell.split("|")}
    assert themes == set(THEMES) and len(THEMES) == 15
    assert items["item_id"].is_unique and items["title"].is_unique


def test_timestamps_span_about_two_years(toyshop):
    ts = toyshop.interactions["timestamp"]
    span_days = (ts.max() - ts.min()) / pd.Timedelta(days=1)
    assert 700 <= span_days <= 731
    assert ts.min() >= pd.Timestamp("2023-01-01")
    assert ts.max() <= pd.Timestamp("2024-12-31 23:59:59")


def test_every_rating_follows_signup_and_release(toyshop):
    inter = toyshop.interactions
    signup = toyshop.users["signup_date"].to_numpy()[inter["user"].to_numpy()]
    release = toyshop.items["release_date"].to_numpy()[inter["item"].to_numpy()]
    stamp = inter["timestamp"].to_numpy()
    assert (stamp >= signup).all()
    assert (stamp >= release).all()


# --- the answer key --------------------------------------------------------------------------


def test_answer_key_shape_and_range(toyshop, key):
    assert key.shape == (toyshop.n_users, toyshop.n_items)
    assert key.dtype == np.float32
    assert np.isfinite(key).all()
    assert key.min() >= 1.0 and key.max() <= 5.0
    assert key.std() > 0.5  # not a constant


def test_expected_rating_is_monotone_and_bounded():
    s = np.linspace(-5, 10, 301)
    e = expected_rating(s)
    assert np.all(np.diff(e) >= 0)
    assert e[0] == pytest.approx(1.0, abs=1e-4) and e[-1] == pytest.approx(5.0, abs=1e-4)
    assert expected_rating(np.array([3.0]))[0] == pytest.approx(3.0, abs=1e-6)  # symmetric


def test_selection_bias_observed_mean_exceeds_answer_key_mean(toyshop, key):
    observed = toyshop.interactions["rating"].to_numpy().mean()
    assert observed > key.mean() + 0.3
    # and the key is, on average, close to what was observed for the rated pairs
    rated = key[toyshop.interactions["user"], toyshop.interactions["item"]]
    assert abs(rated.mean() - observed) < 0.05


def test_answer_key_follows_the_dataset_row_order(tmp_path, key):
    copy = copy_dir(TOYSHOP_DIR, tmp_path / "shuffled")
    header, rows = read_csv_rows(copy / "users.csv")
    write_csv(copy / "users.csv", header, rows[::-1])
    shuffled = load_dataset(copy)
    np.testing.assert_array_equal(answer_key(shuffled), key[::-1])


def test_answer_key_raises_on_edited_ratings(tmp_path):
    copy = copy_dir(TOYSHOP_DIR, tmp_path / "edited")
    _, rows = read_csv_rows(copy / "ratings.csv")
    set_cell(copy / "ratings.csv", 10, "rating", str(int(rows[10][2]) % 5 + 1))
    edited = load_dataset(copy)
    with pytest.raises(ValueError, match="ratings differ") as info:
        answer_key(edited)
    assert str(copy) in str(info.value)


def test_answer_key_raises_when_a_rating_is_moved_to_another_item(tmp_path, toyshop):
    """BUG: answer_key only compares the column of rating values with the regenerated one,
    so an edit that changes which toy (or which shopper) a rating is about, keeping the
    value, goes unnoticed and the key is returned for edited files."""
    copy = copy_dir(TOYSHOP_DIR, tmp_path / "moved")
    header, rows = read_csv_rows(copy / "ratings.csv")
    user = rows[0][0]
    rated = {r[1] for r in rows if r[0] == user}
    unrated = next(i for i in toyshop.items["item_id"] if i not in rated)
    set_cell(copy / "ratings.csv", 0, "item_id", unrated)
    edited = load_dataset(copy)  # still a valid data directory
    try:
        answer_key(edited)
    except ValueError:
        return
    raise AssertionError(
        f"BUG: answer_key accepted ratings.csv with row 1's item changed to {unrated}"
    )


def test_answer_key_raises_on_a_dataset_not_made_by_the_generator(tmp_path):
    tiny = load_dataset(write_tiny(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="not generated by the ToyShop generator") as info:
        answer_key(tiny)
    assert str(tiny.path) in str(info.value)


def test_config_from_schema(toyshop):
    assert config_from_schema(toyshop.schema.raw) == ToyShopConfig()
    assert config_from_schema({"name": "x"}) is None
    assert config_from_schema({"generator": {"name": "other"}}) is None
    raw = json.loads(json.dumps(toyshop.schema.raw))
    raw["generator"]["version"] = GENERATOR_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        config_from_schema(raw)


# --- the random-exposure (missing-at-random) ratings --------------------------------------------


def test_random_exposure_is_uniform_and_follows_the_rating_law():
    shop = generate_toyshop(SMALL)
    frame = random_exposure(shop, per_user=10)
    assert len(frame) == SMALL.users * 10
    assert (frame.groupby("user_id")["item_id"].nunique() == 10).all()  # no repeats
    assert frame["rating"].between(1, 5).all()
    u = frame["user_id"].str[1:].astype(int).to_numpy() - 1
    i = frame["item_id"].str[1:].astype(int).to_numpy() - 1
    # every toy is equally likely: counts per toy are binomial(users, 10 / items)
    counts = np.bincount(i, minlength=SMALL.items)
    expected = SMALL.users * 10 / SMALL.items
    assert abs(counts.mean() - expected) < 1e-9 and counts.std() < 3 * np.sqrt(expected)
    # unbiased for the answer key on random toys (no selection): mean error near zero
    err = frame["rating"].to_numpy() - expected_rating(shop.scores)[u, i]
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(len(err))
    again = random_exposure(generate_toyshop(SMALL), per_user=10)
    assert again.equals(frame)  # its own seeded stream: deterministic
    assert generate_toyshop(SMALL).ratings.equals(shop.ratings)  # the shop is unchanged


def test_committed_random_exposure_loads_for_every_shopper():
    dataset = load_dataset(TOYSHOP_DIR)
    exposure = load_random_exposure(dataset)
    assert exposure is not None
    assert np.array_equal(np.bincount(exposure.users, minlength=dataset.n_users),
                          np.full(dataset.n_users, RANDOM_EXPOSURE_PER_USER))
    items, ratings, mask = exposure.table(np.array([0, 5]))
    assert items.shape == (2, RANDOM_EXPOSURE_PER_USER) and bool((mask == 1).all())


def test_random_exposure_with_an_unknown_toy_names_the_row(tmp_path):
    out = write_toyshop(generate_toyshop(SMALL), tmp_path / "shop")
    (out / RANDOM_EXPOSURE_FILE).write_text("user_id,item_id,rating\nU00001,T9999,3\n",
                                            encoding="utf-8")
    with pytest.raises(ValueError, match="row 2: unknown item_id"):
        load_random_exposure(load_dataset(out))
