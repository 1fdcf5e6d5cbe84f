"""Tests for toyrec_helpers.schema and toyrec_helpers.data: parsing, typing, validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from datadirs import (
    DATA_FILES,
    TINY_COUNTS,
    TINY_RATINGS,
    TOYSHOP_DIR,
    append_row,
    drop_column,
    edit_schema,
    set_cell,
    tiny_schema,
    where,
    write_csv,
    write_tiny,
)

from toyrec_helpers.data import format_summary, load_dataset
from toyrec_helpers.schema import DataValidationError, parse_schema, read_schema


def load_quietly(directory):
    """Load a directory, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(directory)


def load_error(directory) -> str:
    """The message of the DataValidationError that loading ``directory`` raises."""
    with pytest.raises(DataValidationError) as info:
        load_dataset(directory)
    return str(info.value)


def assert_names(message: str, parts: list[str]) -> None:
    missing = [p for p in parts if p not in message]
    assert not missing, f"error message lacks {missing}: {message!r}"


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny")


# --- a valid directory --------------------------------------------------------------------


def test_tiny_loads_typed_without_warnings(tiny):
    ds = load_quietly(tiny)
    assert ds.path == tiny
    assert ds.schema.name == "TinyShop"
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (5, 6, len(TINY_RATINGS))
    assert ds.has_timestamp
    assert list(ds.users["user_id"]) == ["u1", "u2", "u3", "u4", "u5"]  # file order
    assert ds.items["price"].dtype == np.float64
    assert ds.items["price"].tolist() == [10.5, 20.0, 7.25, 35.0, 15.0, 12.0]
    assert pd.api.types.is_datetime64_any_dtype(ds.users["signup_date"])
    assert pd.api.types.is_datetime64_any_dtype(ds.items["release_date"])
    assert ds.items["release_date"].iloc[2] == pd.Timestamp("2022-03-01")
    assert ds.items["tags"].iloc[4] == ""  # an empty multi-valued cell stays a string
    assert pd.api.types.is_datetime64_any_dtype(ds.ratings["timestamp"])
    assert ds.ratings["rating"].dtype == np.float64


def test_interactions_are_indices_sorted_by_user_then_time(tiny):
    ds = load_quietly(tiny)
    inter = ds.interactions
    assert list(inter.columns) == ["user", "item", "rating", "timestamp"]
    assert inter["user"].dtype == np.int64 and inter["item"].dtype == np.int64
    assert inter["rating"].dtype == np.float32
    assert np.all(np.diff(inter["user"].to_numpy()) >= 0)
    for _, group in inter.groupby("user"):
        assert group["timestamp"].is_monotonic_increasing
    # u1 rated i1..i6 in that time order although the file lists them newest first
    u1 = inter[inter["user"] == 0]
    assert u1["item"].tolist() == [0, 1, 2, 3, 4, 5]
    assert u1["rating"].tolist() == [4.0, 1.0, 5.0, 4.0, 3.0, 2.0]
    # every (user, item, rating) of the file is there exactly once, mapped to row indices
    uid = {u: k for k, u in enumerate(ds.users["user_id"])}
    iid = {i: k for k, i in enumerate(ds.items["item_id"])}
    expected = sorted((uid[u], iid[i], float(r)) for u, i, r, _ in TINY_RATINGS)
    got = sorted(zip(inter["user"], inter["item"], inter["rating"].astype(float), strict=True))
    assert got == expected


def test_ratings_per_user_and_summary(tiny):
    ds = load_quietly(tiny)
    assert ds.ratings_per_user().tolist() == list(TINY_COUNTS.values())
    s = ds.summary()
    assert s["users"] == 5 and s["items"] == 6 and s["ratings"] == 20
    assert s["ratings_per_user_min"] == 2 and s["ratings_per_user_max"] == 6
    assert s["ratings_per_user_median"] == 4.0
    assert s["users_without_ratings"] == 0
    assert s["mean_rating"] == pytest.approx(np.mean([r for _, _, r, _ in TINY_RATINGS]))
    assert s["density"] == pytest.approx(20 / 30)
    assert s["first_timestamp"] == "2024-01-01 09:00:00"
    assert s["last_timestamp"] == "2024-04-02 12:00:00"
    text = format_summary(s)
    assert len(text.splitlines()) == len(s)
    assert "ratings_per_user_max" in text and "TinyShop" in text


def test_a_user_without_ratings_is_kept_and_counted(tiny):
    append_row(tiny / "users.csv", ["u6", "3-5", "East", "2023-06-01"])
    ds = load_quietly(tiny)
    assert ds.n_users == 6
    assert ds.ratings_per_user()[5] == 0
    assert ds.summary()["users_without_ratings"] == 1


def test_non_integer_ratings_load_on_a_continuous_scale(tiny):
    edit_schema(tiny, lambda s: s["rating_scale"].update(integer=False))
    set_cell(tiny / "ratings.csv", 3, "rating", "3.5")
    ds = load_quietly(tiny)
    assert 3.5 in ds.interactions["rating"].tolist()


def test_committed_toyshop_schema_parses():
    schema = read_schema(TOYSHOP_DIR)
    assert schema.name == "ToyShop"
    assert (schema.rating_min, schema.rating_max, schema.rating_integer) == (1.0, 5.0, True)
    assert [c.name for c in schema.items.of_kind("categorical")] == [
        "category",
        "brand",
        "age_band",
    ]
    assert [c.name for c in schema.items.of_kind("multi")] == ["themes"]
    assert schema.items.of_kind("multi")[0].separator == "|"
    assert schema.items.title == "title"
    assert schema.ratings.timestamp == "timestamp"


# --- data without timestamps --------------------------------------------------------------


def test_no_timestamp_column_warns_and_loads(tmp_path):
    directory = write_tiny(tmp_path / "nots", with_timestamp=False)
    with pytest.warns(UserWarning, match="no timestamp column") as record:
        ds = load_dataset(directory)
    assert "ratings.csv" in str(record[0].message)
    assert not ds.has_timestamp
    assert "timestamp" not in ds.interactions.columns
    assert len(ds.interactions) == len(TINY_RATINGS)
    assert "first_timestamp" not in ds.summary()


def test_schema_names_a_timestamp_the_file_lacks_warns(tiny):
    drop_column(tiny / "ratings.csv", "timestamp")
    with pytest.warns(UserWarning, match="no timestamp column"):
        ds = load_dataset(tiny)
    assert not ds.has_timestamp


# --- malformed input: one test per class; messages name file, row and column ------------


@pytest.mark.parametrize("name", DATA_FILES)
def test_missing_file(tiny, name):
    (tiny / name).unlink()
    message = load_error(tiny)
    assert_names(message, [name, "not found"])


def test_not_a_directory(tmp_path):
    message = load_error(tmp_path / "nowhere")
    assert_names(message, ["nowhere", "not a directory"])


@pytest.mark.parametrize(
    ("file", "column"),
    [
        ("users.csv", "region"),
        ("users.csv", "user_id"),
        ("items.csv", "price"),
        ("items.csv", "title"),
        ("ratings.csv", "rating"),
        ("ratings.csv", "item_id"),
    ],
)
def test_missing_column(tiny, file, column):
    drop_column(tiny / file, column)
    message = load_error(tiny)
    assert_names(message, [file, repr(column), "missing column"])


# (file, data row, column, bad value, what the message must also name)
BAD_CELLS = [
    ("items.csv", 3, "price", "cheap", ["'cheap'", "a number"]),
    ("items.csv", 5, "price", "", []),
    ("users.csv", 2, "signup_date", "2023-02-30", ["'2023-02-30'", "ISO 8601"]),
    ("ratings.csv", 7, "rating", "five", ["'five'", "integer rating"]),
    ("ratings.csv", 12, "timestamp", "yesterday", ["'yesterday'", "ISO 8601"]),
    *[("ratings.csv", 9, "rating", v, [repr(v), "from 1 to 5"]) for v in ("6", "0", "-1", "5.01")],
    ("ratings.csv", 5, "rating", "3.5", ["'3.5'", "integer"]),
    ("ratings.csv", 6, "user_id", "u99", ["'u99'", "users.csv"]),
    ("ratings.csv", 11, "item_id", "i42", ["'i42'", "items.csv"]),
]


@pytest.mark.parametrize(("file", "row", "column", "value", "parts"), BAD_CELLS,
                         ids=lambda x: x if isinstance(x, str) else None)
def test_bad_cell_is_named_by_file_row_and_column(tiny, file, row, column, value, parts):
    set_cell(tiny / file, row, column, value)
    assert_names(load_error(tiny), [*where(file, row, column), *parts])


def test_timestamps_with_mixed_utc_offsets_give_a_located_error(tiny):
    """BUG: ISO 8601 timestamps with different UTC offsets (or offsets mixed with plain
    local times) make pandas raise a bare ``ValueError: Mixed timezones detected`` that
    names neither file, row nor column; `validate-data` then dies with a traceback.
    load_dataset promises a DataValidationError naming the file, row and column."""
    set_cell(tiny / "ratings.csv", 4, "timestamp", "2024-01-04T10:00:00+02:00")
    try:
        load_dataset(tiny)
    except DataValidationError as exc:
        assert_names(str(exc), where("ratings.csv", 4, "timestamp"))
    except ValueError as exc:
        raise AssertionError(
            f"BUG: a timestamp with a UTC offset raised a bare {type(exc).__name__} "
            f"without file/row/column: {exc}"
        ) from exc
    else:
        raise AssertionError("a timestamp with a UTC offset among naive ones was accepted")



def test_duplicate_user_item_pair(tiny):
    row = append_row(tiny / "ratings.csv", ["u3", "i2", "1", "2024-02-09T08:00:00"])
    message = load_error(tiny)
    # u3 rated i2 in data row 4 (index 3); the duplicate is the appended row
    assert_names(message, ["ratings.csv", "'u3'", "'i2'", f"rows 4 and {row + 1}"])


@pytest.mark.parametrize(
    ("file", "column", "row", "other", "dup_id"),
    [("users.csv", "user_id", 3, 1, "u2"), ("items.csv", "item_id", 5, 2, "i3")],
)
def test_duplicate_ids(tiny, file, column, row, other, dup_id):
    set_cell(tiny / file, row, column, dup_id)
    message = load_error(tiny)
    assert_names(message, [file, repr(dup_id), repr(column), f"rows {other + 1} and {row + 1}"])


def test_empty_id(tiny):
    set_cell(tiny / "items.csv", 4, "item_id", " ")
    assert_names(load_error(tiny), [*where("items.csv", 4, "item_id"), "empty id"])


def test_unknown_feature_kind_in_schema(tiny):
    edit_schema(tiny, lambda s: s["users"]["columns"]["region"].update(kind="colour"))
    message = load_error(tiny)
    assert_names(message, ["schema.json", "'region'", "'colour'", "categorical"])


def test_multi_column_needs_a_one_character_separator(tiny):
    edit_schema(tiny, lambda s: s["items"]["columns"]["tags"].update(separator="||"))
    assert_names(load_error(tiny), ["schema.json", "'tags'", "separator"])


def test_invalid_json_in_schema(tiny):
    (tiny / "schema.json").write_text('{\n  "name": "TinyShop",\n  oops\n}\n', encoding="utf-8")
    message = load_error(tiny)
    assert_names(message, ["schema.json", "not valid JSON", "line 3"])


@pytest.mark.parametrize(
    "path",
    [
        ("rating_scale",),
        ("rating_scale", "max"),
        ("users",),
        ("users", "id"),
        ("items", "file"),
        ("items", "columns"),
        ("items", "columns", "price", "kind"),
        ("ratings",),
        ("ratings", "user"),
        ("ratings", "rating"),
    ],
    ids=lambda p: ".".join(p),
)
def test_missing_schema_key(tiny, path):
    def drop(raw):
        obj = raw
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    edit_schema(tiny, drop)
    message = load_error(tiny)
    assert_names(message, ["schema.json", "missing the key", repr(path[-1])])


def test_schema_key_of_the_wrong_type(tiny):
    edit_schema(tiny, lambda s: s["rating_scale"].update(max="five"))
    assert_names(load_error(tiny), ["schema.json", "rating_scale.max", "'five'"])


def test_parse_schema_rejects_bad_top_level_and_empty_scale():
    with pytest.raises(DataValidationError, match="JSON object"):
        parse_schema([1, 2, 3])  # type: ignore[arg-type]
    raw = tiny_schema()
    raw["rating_scale"] = {"min": 5, "max": 5}
    with pytest.raises(DataValidationError, match=r"rating_scale\.min \(5\) must be < max"):
        parse_schema(raw)


def test_parse_schema_round_trip():
    raw = tiny_schema()
    schema = parse_schema(json.loads(json.dumps(raw)))
    assert schema.users.of_kind("date")[0].name == "signup_date"
    assert schema.items.of_kind("numeric", "date") == (
        schema.items.columns[1],
        schema.items.columns[3],
    )
    assert schema.raw == raw


def test_ragged_csv_row_is_a_clear_error(tiny):
    with open(tiny / "users.csv", "a", encoding="utf-8") as fh:
        fh.write("u6,3-5,East,2023-06-01,extra,fields\n")
    assert_names(load_error(tiny), ["users.csv", "well-formed CSV"])


def test_empty_file_is_a_clear_error(tiny):
    (tiny / "items.csv").write_text("", encoding="utf-8")
    assert_names(load_error(tiny), ["items.csv", "empty file"])


def test_non_utf8_file_is_a_clear_error(tiny):
    (tiny / "users.csv").write_bytes(
        b"user_id,age_band,region,signup_date\nu1,3-5,N\xf6rth,2023-01-10\n"
    )
    assert_names(load_error(tiny), ["users.csv", "UTF-8"])


def test_a_blank_line_is_reported_at_its_own_line(tiny):
    """A blank line is not skipped silently: it is reported as an empty row at its line, so
    line numbers in every message match the file."""
    lines = (tiny / "ratings.csv").read_text(encoding="utf-8").splitlines()
    lines.insert(3, "")  # a blank line 4
    (tiny / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = load_error(tiny)
    assert "ratings.csv" in message and "(line 4)" in message and "got ''" in message


def test_line_numbers_after_a_blank_line_stay_right(tiny):
    lines = (tiny / "ratings.csv").read_text(encoding="utf-8").splitlines()
    bad_line = 7  # 1-based line in the file (header = line 1)
    user, item, _, stamp = lines[bad_line - 1].split(",")
    lines[bad_line - 1] = ",".join([user, item, "nine", stamp])
    lines.append("")  # a trailing blank line after the bad row does not move it
    (tiny / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = load_error(tiny)
    assert "'nine'" in message and f"(line {bad_line})" in message


def test_write_csv_helper_round_trips(tmp_path):
    # guards the helpers the other tests rely on
    path = write_csv(tmp_path / "x.csv", ["a", "b"], [["1", "x,y"], ["2", ""]])
    assert path.read_text(encoding="utf-8") == 'a,b\n1,"x,y"\n2,\n'
