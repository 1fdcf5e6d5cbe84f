"""Purchase logs: the schema's kind, repeat purchases, the constant-rating warning, the
ToyShop exported as a purchase log, the synthetic log, and ``evaluate`` on data without
ratings (ranking methods and catalogue metrics only; ``--relevant-from`` on rated data)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datadirs import (
    TINY_ITEMS,
    TINY_USERS,
    TOYSHOP_DIR,
    copy_dir,
    read_csv_rows,
    tiny_schema,
    write_csv,
    write_schema,
    write_tiny,
)

from toyrec_helpers import cli, metrics
from toyrec_helpers.data import load_dataset
from toyrec_helpers.evaluate import (
    EvalConfig,
    get_method,
    method_names,
    prepare,
    resolve_methods,
    score_recommender,
)
from toyrec_helpers.purchases import (
    export_purchase_log,
    purchase_log_schema,
    synthetic_purchase_log,
)
from toyrec_helpers.schema import DataValidationError, parse_schema
from toyrec_helpers.toyshop import ToyShopConfig, file_sha256, generate_toyshop, write_toyshop

# (user, item, timestamp) with repeats: u1 buys i2 three times (first on 01-02, the row
# written first is a later repeat), u2 buys i1 twice; file order is not time order.
PURCHASES = (
    ("u1", "i2", "2024-01-09T10:00:00"),
    ("u1", "i1", "2024-01-01T10:00:00"),
    ("u1", "i2", "2024-01-02T10:00:00"),
    ("u2", "i1", "2024-01-03T09:00:00"),
    ("u1", "i3", "2024-01-03T10:00:00"),
    ("u2", "i1", "2024-01-01T09:00:00"),
    ("u1", "i2", "2024-01-05T10:00:00"),
    ("u3", "i4", "2024-02-01T08:00:00"),
    ("u2", "i5", "2024-01-02T09:00:00"),
)


def write_purchase_log(directory: Path, with_timestamp: bool = True) -> Path:
    """The TinyShop's users and items with :data:`PURCHASES` as a purchase log."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_csv(directory / "users.csv", *TINY_USERS)
    write_csv(directory / "items.csv", *TINY_ITEMS)
    schema = purchase_log_schema(tiny_schema(), note="test fixture")
    if with_timestamp:
        write_csv(directory / "purchases.csv", ["user_id", "item_id", "timestamp"],
                  [list(p) for p in PURCHASES])
    else:
        del schema["ratings"]["timestamp"]
        write_csv(directory / "purchases.csv", ["user_id", "item_id"],
                  [[u, i] for u, i, _ in PURCHASES])
    return write_schema(directory, schema)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory) -> Path:
    """A small generated (rated) ToyShop: 150 shoppers, 60 toys."""
    shop = generate_toyshop(ToyShopConfig(seed=3, users=150, items=60, ratings=4500))
    return write_toyshop(shop, tmp_path_factory.mktemp("shop") / "rated")


@pytest.fixture(scope="module")
def small_log(small_shop, tmp_path_factory) -> Path:
    """The small ToyShop exported as a purchase log."""
    return export_purchase_log(small_shop, tmp_path_factory.mktemp("log") / "purchases")


# --- the schema declares the kind -------------------------------------------------------


def test_schema_declares_a_purchase_log():
    schema = parse_schema(purchase_log_schema(tiny_schema()))
    assert schema.kind == "purchases" and schema.is_purchase_log
    assert schema.ratings.rating is None
    assert parse_schema(tiny_schema()).kind == "ratings"


@pytest.mark.parametrize("edit, words", [
    (lambda s: s["ratings"].update(rating="rating"), ["purchase log", "ratings.rating"]),
    (lambda s: s.update(rating_scale={"min": 1, "max": 5}), ["purchase log", "rating_scale"]),
    (lambda s: s.update(kind="clicks"), ["kind", "'clicks'"]),
])
def test_purchase_log_schema_errors(edit, words):
    raw = purchase_log_schema(tiny_schema())
    edit(raw)
    with pytest.raises(DataValidationError) as info:
        parse_schema(raw)
    for word in words:
        assert word in str(info.value)


def test_rated_schema_without_rating_column_points_to_the_purchase_kind():
    raw = tiny_schema()
    del raw["ratings"]["rating"]
    with pytest.raises(DataValidationError, match='"kind": "purchases"'):
        parse_schema(raw)


# --- repeat purchases -------------------------------------------------------------------


def test_repeat_purchases_keep_the_first_and_are_counted(tmp_path):
    ds = load_dataset(write_purchase_log(tmp_path / "log"))
    assert ds.kind == "purchases" and not ds.has_ratings
    assert ds.repeat_purchases == 3 and len(ds.ratings) == len(PURCHASES)
    inter = ds.interactions
    assert len(inter) == len(PURCHASES) - 3
    assert not inter.duplicated(["user", "item"]).any()
    assert (inter["rating"] == 1.0).all()
    items = ds.items["item_id"].to_numpy()
    u1 = inter[inter["user"] == 0]
    # time order, each pair at its first purchase: i1 (01-01), i2 (01-02), i3 (01-03)
    assert list(items[u1["item"]]) == ["i1", "i2", "i3"]
    assert str(u1["timestamp"].iloc[1]) == "2024-01-02 10:00:00"
    counts = dict(zip(items[u1["item"]], u1["count"], strict=True))
    assert counts == {"i1": 1, "i2": 3, "i3": 1}
    s = ds.summary()
    assert (s["kind"], s["purchases"], s["repeat_purchases"], s["distinct_pairs"]) == (
        "purchases", 9, 3, 6)
    assert "mean_rating" not in s and "ratings" not in s
    assert "3 of them repeats" in ds.kind_description()


def test_repeats_without_timestamps_keep_the_first_row_in_file_order(tmp_path):
    with pytest.warns(UserWarning, match="no timestamp"):
        ds = load_dataset(write_purchase_log(tmp_path / "log", with_timestamp=False))
    assert ds.repeat_purchases == 3
    items = ds.items["item_id"].to_numpy()
    u1 = ds.interactions[ds.interactions["user"] == 0]
    assert list(items[u1["item"]]) == ["i2", "i1", "i3"]


def test_repeats_are_still_duplicates_in_rated_data(tmp_path):
    directory = write_tiny(tmp_path / "rated")
    header, rows = read_csv_rows(directory / "ratings.csv")
    write_csv(directory / "ratings.csv", header, rows + [[rows[0][0], rows[0][1], "3",
                                                          "2024-06-01T00:00:00"]])
    with pytest.raises(DataValidationError, match="rated more than once"):
        load_dataset(directory)


# --- a rating column with one value -----------------------------------------------------


def test_constant_ratings_warn_and_are_treated_as_a_purchase_log(tmp_path):
    directory = write_tiny(tmp_path / "five")
    header, rows = read_csv_rows(directory / "ratings.csv")
    write_csv(directory / "ratings.csv", header, [r[:2] + ["5"] + r[3:] for r in rows])
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(directory)
    text = " ".join(str(w.message) for w in caught)
    for part in ("ratings.csv", "'rating'", "is 5", "purchase log", "evaluate"):
        assert part in text, part
    assert ds.kind == "ratings" and ds.constant_rating == 5.0 and not ds.has_ratings
    assert "evaluated as a purchase log" in ds.kind_description()


def test_varied_ratings_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(write_tiny(tmp_path / "tiny"))
    assert ds.has_ratings and ds.constant_rating is None


def test_validate_data_says_which_kind_it_found(tmp_path, capsys):
    code, out, _ = run(capsys, "validate-data", str(write_purchase_log(tmp_path / "log")))
    assert code == 0 and "kind: purchase log" in out and "3 of them repeats" in out
    code, out, _ = run(capsys, "validate-data", str(TOYSHOP_DIR))
    assert code == 0 and "kind: ratings (from 1 to 5)" in out


# --- the ToyShop as a purchase log ------------------------------------------------------


def test_export_the_toyshop_as_a_purchase_log(tmp_path, capsys):
    before = file_sha256(TOYSHOP_DIR)
    out = tmp_path / "toyshop_purchases"
    code, text, err = run(capsys, "export-purchases", str(TOYSHOP_DIR), str(out))
    assert code == 0 and err == "" and "wrote" in text
    assert file_sha256(TOYSHOP_DIR) == before  # the source is untouched
    for name in ("users.csv", "items.csv"):
        assert (out / name).read_bytes() == (TOYSHOP_DIR / name).read_bytes()
    header, rows = read_csv_rows(out / "purchases.csv")
    assert header == ["user_id", "item_id", "timestamp"]
    rated = load_dataset(TOYSHOP_DIR)
    log = load_dataset(out)
    assert log.kind == "purchases" and "generator" not in log.schema.raw
    assert len(rows) == len(rated.ratings) == len(log.interactions)
    assert log.interactions[["user", "item"]].equals(rated.interactions[["user", "item"]])
    # nothing the user owns is replaced; the command's own output may be, on request
    code, _, err = run(capsys, "export-purchases", str(TOYSHOP_DIR), str(out))
    assert code != 0 and "already exists" in err
    code, _, err = run(capsys, "export-purchases", str(TOYSHOP_DIR), str(tmp_path),
                       "--overwrite")
    assert code != 0 and "refusing" in err
    code, _, _ = run(capsys, "export-purchases", str(TOYSHOP_DIR), str(out), "--overwrite")
    assert code == 0
    code, _, err = run(capsys, "export-purchases", str(out), str(tmp_path / "again"))
    assert code != 0 and "already a purchase log" in err


def test_synthetic_purchase_log_has_the_asked_sizes(tmp_path):
    out = synthetic_purchase_log(tmp_path / "syn", users=400, items=240, purchases=3400,
                                 shards=2, seed=1)
    ds = load_dataset(out)
    assert (ds.kind, ds.n_users, ds.n_items, len(ds.ratings)) == ("purchases", 400, 240, 3400)
    per_user = ds.ratings_per_user()
    assert per_user.min() >= 1 and per_user.max() > 2 * np.median(per_user)  # a long tail
    with pytest.raises(ValueError, match="multiples"):
        synthetic_purchase_log(tmp_path / "bad", users=401, items=240, purchases=3400,
                               shards=2)
    with pytest.raises(FileExistsError):
        synthetic_purchase_log(out, users=400, items=240, purchases=3400, shards=2)


# --- evaluate on a purchase log ---------------------------------------------------------


def test_rating_methods_are_refused_by_name_on_a_purchase_log(small_log, capsys):
    code, _, err = run(capsys, "evaluate", "--data", str(small_log), "--methods", "global",
                       "--seeds", "1", "--no-progress")
    assert code != 0 and "'global' needs ratings" in err and "purchase log" in err
    config = EvalConfig(ks=(1, 3), seeds=(0,))
    data = prepare(small_log, config, with_answer_key=False)
    chosen = resolve_methods(None, data)
    assert "popularity_count" in chosen
    assert not any(get_method(m).predicts_ratings for m in chosen)
    skipped = [m for m in method_names() if m not in chosen]
    assert {"popularity", "global", "maml"} <= set(skipped)


def test_evaluate_on_a_purchase_log_prints_no_rating_metric(small_log, tmp_path, capsys):
    path = tmp_path / "eval.json"
    code, out, err = run(capsys, "evaluate", "--data", str(small_log), "--seeds", "1",
                         "--k", "1", "3", "--no-progress", "--json", str(path))
    assert code == 0, err
    assert "purchase log: ranking methods only" in out and "no MAE" in out
    assert "skipped popularity" in out and "need ratings" in out
    header_lines = [line for line in out.splitlines() if line.startswith("method")]
    assert header_lines and all("mae" not in h and "ndcg@3" not in h for h in header_lines)
    stored = json.loads(path.read_text(encoding="utf-8"))
    protocol = stored["protocol"]
    assert protocol["data_kind"] == "purchases"
    assert protocol["metrics"] == ["hr@10", "ndcg@10"]
    assert "every query purchase" in protocol["relevance"]
    assert "support toy" in protocol["excluded_from_ranking"]
    assert "global" in protocol["skipped_methods"]
    assert {r["metric"] for r in stored["summary"]} == {"hr@10", "ndcg@10"}
    # every evaluated shopper has a relevant query item: all of their later purchases
    assert {r["n_users"] for r in stored["summary"]} == {protocol["users"]["evaluated"]}


def test_toyshop_with_every_rating_five_prints_no_mae_and_says_why(tmp_path, capsys):
    five = copy_dir(TOYSHOP_DIR, tmp_path / "five")
    header, rows = read_csv_rows(five / "ratings.csv")
    j = header.index("rating")
    write_csv(five / "ratings.csv", header, [r[:j] + ["5"] + r[j + 1:] for r in rows])
    code, out, err = run(capsys, "evaluate", "--data", str(five), "--methods",
                         "popularity_count", "--seeds", "1", "--k", "1", "5", "--no-progress")
    assert code == 0, err
    assert "every value of column 'rating' is 5" in out
    assert "no MAE" in out and "no ratings that differ" in out
    assert "mae" not in out.split("no MAE")[1].lower().replace("no mae", "")
    code, _, err = run(capsys, "evaluate", "--data", str(five), "--methods", "popularity",
                       "--seeds", "1", "--no-progress")
    assert code != 0 and "every rating is 5" in err


# --- --relevant-from --------------------------------------------------------------------


def _n_users(path: Path, metric: str = "hr@10") -> set[int]:
    stored = json.loads(path.read_text(encoding="utf-8"))
    return {r["n_users"] for r in stored["summary"] if r["metric"] == metric}


def test_relevant_from_sets_the_threshold_and_is_recorded(small_shop, tmp_path, capsys):
    counts = {}
    for r in ("1", "5"):
        path = tmp_path / f"r{r}.json"
        code, _, err = run(capsys, "evaluate", "--data", str(small_shop), "--methods",
                           "popularity_count", "--seeds", "1", "--k", "1", "--no-progress",
                           "--relevant-from", r, "--json", str(path))
        assert code == 0, err
        stored = json.loads(path.read_text(encoding="utf-8"))
        assert stored["protocol"]["relevance_threshold"] == float(r)
        assert stored["protocol"]["relevance"] == f"query ratings >= {r}"
        counts[r] = (_n_users(path), stored["protocol"]["users"]["evaluated"])
    (n1,), evaluated = counts["1"]
    (n5,), _ = counts["5"]
    assert n1 == evaluated  # every query rating is >= 1
    assert n5 < n1  # fewer shoppers have a query rating of 5


def test_relevant_from_is_checked(small_shop, small_log, capsys):
    code, _, err = run(capsys, "evaluate", "--data", str(small_shop), "--relevant-from", "6",
                       "--no-progress")
    assert code != 0 and "--relevant-from" in err and "at most 5" in err
    code, _, err = run(capsys, "evaluate", "--data", str(small_log), "--relevant-from", "4",
                       "--no-progress")
    assert code != 0 and "--relevant-from" in err and "every query purchase" in err
    code, _, err = run(capsys, "evaluate", "--relevant-from", "high")
    assert code != 0 and "finite number" in err


# --- support toys are left out of the ranking -------------------------------------------


class _Scores:
    """Fixed item scores for every shopper; with ``boost``, the shopper's support toys
    get the highest scores (a method that recommends what was just bought)."""

    predicts_ratings = False

    def __init__(self, base: torch.Tensor, boost: bool) -> None:
        self.name = "support_first" if boost else "fixed"
        self.base, self.boost = base, boost

    def predict(self, batch, items=None) -> torch.Tensor:
        scores = self.base.expand(len(batch), -1).clone()
        if self.boost:
            mask = batch.support_mask.bool()
            rows = torch.arange(len(batch))[:, None].expand_as(batch.support_items)
            scores[rows[mask], batch.support_items[mask]] = 1e6
        return scores


@pytest.mark.parametrize("exclude", ["first_max_k", "support"])
def test_support_toys_never_enter_the_ranked_list(small_log, exclude):
    config = EvalConfig(ks=(1, 5), seeds=(0,), catalogue_exclude=exclude)
    data = prepare(small_log, config, with_answer_key=False)
    base = torch.from_numpy(np.random.default_rng(0).random(data.dataset.n_items))
    for k in config.ks:
        plain = score_recommender(_Scores(base, False), data, k)
        pushed = score_recommender(_Scores(base, True), data, k)
        for metric in ("hr@10", "ndcg@10"):  # the support toys' scores change nothing
            np.testing.assert_array_equal(plain[metric], pushed[metric])
    # the check has teeth: without the exclusion the pushed support toys take the top places
    batch = data.test_batch(5)
    scores = _Scores(base, True).predict(batch)
    relevant, _ = metrics.catalogue_masks(batch.support_items, batch.support_mask,
                                          batch.query_items, batch.query_ratings,
                                          batch.query_mask, data.dataset.n_items,
                                          threshold=-np.inf)
    none = torch.zeros_like(relevant)
    leaked = metrics.catalogue_ndcg_at_k(scores, relevant, none, k=10)
    assert float(leaked.mean()) < float(np.mean(plain["ndcg@10"]))


# --- the scale measurement --------------------------------------------------------------


def test_purchase_scale_runs_evaluate_and_records_time_and_memory(tmp_path):
    from toyrec_helpers.purchase_scale import check_scale_json, run_purchase_scale

    path = tmp_path / "scale.json"
    result = run_purchase_scale(users=400, items=240, purchases=4000, shards=2, ks=(1, 3),
                                methods=["popularity_count"], json_path=path)
    assert result["data"]["purchases"] == 4000 and result["data"]["users"] == 400
    assert result["wall_s"] > 0 and result["peak_mb"] > 0 and result["returncode"] == 0
    assert result["evaluate"]["protocol"]["data_kind"] == "purchases"
    assert result["evaluate"]["protocol"]["methods"] == ["popularity_count"]
    assert json.loads(path.read_text(encoding="utf-8"))["wall_s"] == result["wall_s"]
    assert check_scale_json(path) == path  # a previous result may be replaced
    other = tmp_path / "mine.json"
    other.write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match="refusing"):
        check_scale_json(other)


def _grouplens_sample(folder: Path) -> Path:
    """Three users, four films, six ratings in GroupLens's MovieLens-100K layout."""
    from toyrec_helpers.movielens import GENRES

    folder.mkdir(parents=True, exist_ok=True)
    flags = "|".join(["0"] * (len(GENRES) - 1) + ["1"])
    films = "".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in range(1, 5))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n"
                                   "3|17|M|writer|T8H1N\n", encoding="latin-1")
    (folder / "u.item").write_text(films, encoding="latin-1")
    (folder / "u.data").write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n"
                                   "2\t1\t4\t888550871\n2\t4\t2\t888551000\n"
                                   "3\t3\t1\t884182806\n3\t1\t4\t884182900\n",
                                   encoding="latin-1")
    return folder


def test_import_movielens_implicit_writes_a_purchase_log(tmp_path, capsys, monkeypatch):
    import functools

    from toyrec_helpers import movielens

    src = _grouplens_sample(tmp_path / "src")
    # the sample is not the full data set: skip the importer's size check
    monkeypatch.setattr(movielens, "import_movielens",
                        functools.partial(movielens.import_movielens, expected=None))
    out = tmp_path / "implicit"
    code, text, err = run(capsys, "import-movielens", str(src), str(out), "--implicit")
    assert code == 0, err
    assert "6 purchases (a purchase log)" in text
    ds = load_dataset(out)
    assert ds.kind == "purchases" and len(ds.interactions) == 6
    header, _ = read_csv_rows(out / "purchases.csv")
    assert "rating" not in header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["implicit", "src"]  # no leftovers
