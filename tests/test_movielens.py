"""The MovieLens-100K importer: every source form, features, errors, overwrite rules,
fetching with a checksum, and (when the data is in the cache) the real data set."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toyrec_helpers import cli, movielens
from toyrec_helpers.data import load_dataset
from toyrec_helpers.movielens import (
    GENRES,
    cached_movielens,
    fetch_movielens,
    import_movielens,
    read_movielens,
)
from toyrec_helpers.schema import DataValidationError

# three users, four films, six ratings in GroupLens's layout
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|writer|T8H1N\n"
FLAGS = ["0"] * len(GENRES)


def _item(iid: int, title: str, date: str, genres: tuple[str, ...]) -> str:
    flags = ["1" if g in genres else "0" for g in GENRES]
    return "|".join([str(iid), title, date, "", "http://x", *flags])


U_ITEM = "\n".join([
    _item(1, "Toy Story (1995)", "01-Jan-1995", ("Animation", "Children's", "Comedy")),
    _item(2, "GoldenEye (1995)", "01-Jan-1995", ("Action", "Thriller")),
    _item(3, "unknown", "", ("unknown",)),
    _item(4, "Kolya (1996)", "24-Jan-1997", ("Comedy",)),
]) + "\n"
U_DATA = ("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n"
          "2\t4\t2\t888551000\n3\t3\t1\t884182806\n3\t1\t4\t884182900\n")
SHAPE = (3, 4, 6)


def _grouplens(folder: Path, data: str = U_DATA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.user").write_text(U_USER, encoding="latin-1")
    (folder / "u.item").write_text(U_ITEM, encoding="latin-1")
    (folder / "u.data").write_text(data, encoding="latin-1")
    return folder


def _recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
    users = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" \
        + U_USER.replace("|", "\t")
    items = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
             "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction "
             "Thriller\n3\tunkonwn\tunkonwn\tunknown\n4\tKolya\t1996\tComedy\n")
    for name, text in (("inter", inter), ("user", users), ("item", items)):
        (folder / f"ml-100k.{name}").write_text(text, encoding="utf-8")
    return folder


def test_grouplens_folder_imports_with_features(tmp_path):
    ds = import_movielens(_grouplens(tmp_path / "src"), tmp_path / "out", expected=SHAPE)
    assert ds.schema.name == "MovieLens-100K" and ds.has_timestamp
    users = ds.users.set_index("user_id")
    assert users.loc["1", "age_band"] == "18-24" and users.loc["2", "age_band"] == "50-55"
    assert users.loc["3", "age_band"] == "under 18"
    assert users.loc["1", "zip_prefix"] == "8" and users.loc["3", "zip_prefix"] == "other"
    items = ds.items.set_index("item_id")
    assert items.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["4", "release_year"] == 1997  # from the release date
    assert items.loc["3", "release_year"] == 1995  # missing: the median of the others
    kinds = {c.name: c.kind for c in ds.schema.items.columns}
    assert kinds == {"genres": "multi", "release_year": "numeric"}
    stamps = pd.read_csv(tmp_path / "out" / "ratings.csv")["timestamp"]
    assert stamps.iloc[0] == pd.Timestamp(874965758, unit="s").isoformat()  # UTC
    assert len(ds.interactions) == 6 and set(ds.interactions["rating"]) == {1, 2, 3, 4, 5}


def test_every_form_gives_the_same_tables(tmp_path):
    folder = read_movielens(_grouplens(tmp_path / "gl"), expected=SHAPE)
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("u.user", "u.item", "u.data"):
            z.write(tmp_path / "gl" / name, f"ml-100k/{name}")
    zipped = read_movielens(archive, expected=SHAPE)
    recbole = read_movielens(_recbole(tmp_path / "rb"), expected=SHAPE)
    assert folder.source == zipped.source == "grouplens" and recbole.source == "recbole"
    for other in (zipped, recbole):
        pd.testing.assert_frame_equal(folder.users, other.users)
        pd.testing.assert_frame_equal(folder.ratings, other.ratings)
        pd.testing.assert_frame_equal(folder.items[["item_id", "genres"]],
                                      other.items[["item_id", "genres"]])
    assert list(recbole.items["release_year"]) == [1995, 1995, 1995, 1996]


@pytest.mark.parametrize(("data", "expected"), [
    ("1\t1\t5\n", "u.data, line 1: expected 4 fields"),
    ("1\t1\t5\t874965758\n2\t1\tfive\t888550871\n", "u.data, line 2: rating should be an "
                                                     "integer"),
    ("1\t1\t7\t874965758\n", "u.data, line 1: rating should be in 1..5"),
])
def test_bad_lines_name_file_and_line(tmp_path, data, expected):
    with pytest.raises(DataValidationError, match=expected):
        read_movielens(_grouplens(tmp_path / "src", data), expected=None)


def test_structure_checks(tmp_path):
    src = _grouplens(tmp_path / "src")
    with pytest.raises(DataValidationError, match="users ids should be exactly 1..943"):
        read_movielens(src)  # the real data set's shape by default
    with pytest.raises(DataValidationError, match="rates item 1 twice"):
        read_movielens(_grouplens(tmp_path / "dup", U_DATA + "1\t1\t2\t874965800\n"),
                       expected=None)
    with pytest.raises(DataValidationError, match="item_id 9"):
        read_movielens(_grouplens(tmp_path / "unk", U_DATA + "1\t9\t2\t874965800\n"),
                       expected=None)
    with pytest.raises(DataValidationError, match="neither u.data"):
        read_movielens(tmp_path)


def test_never_overwrites_what_it_did_not_write(tmp_path):
    src = _grouplens(tmp_path / "src")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by import-movielens"):
        import_movielens(src, foreign, overwrite=True, expected=SHAPE)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    import_movielens(src, out, expected=SHAPE)
    with pytest.raises(FileExistsError, match="already holds an import"):
        import_movielens(src, out, expected=SHAPE)
    assert len(import_movielens(src, out, overwrite=True, expected=SHAPE).interactions) == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_movielens(src, empty, expected=SHAPE).n_users == 3


def test_fetch_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    def fake_pip(cmd, **kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / movielens.RECBOLE_WHEEL).write_bytes(b"not the wheel")
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_movielens("pypi", cache=tmp_path)
    assert not (tmp_path / movielens.RECBOLE_WHEEL).exists()
    (tmp_path / movielens.RECBOLE_WHEEL).write_bytes(b"tampered")
    assert cached_movielens(tmp_path) is None
    with pytest.raises(ValueError, match="'pypi' or 'grouplens'"):
        fetch_movielens("kaggle", cache=tmp_path)


def test_fetch_grouplens_checks_md5_and_content_and_writes_atomically(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ml-100k/u.data", "1\t1\t5\n")
    payload = buffer.getvalue()
    monkeypatch.setattr(movielens.urllib.request, "urlopen",
                        lambda url, timeout: io.BytesIO(payload))
    with pytest.raises(ValueError, match="MD5 .* expected 0e33842e"):
        fetch_movielens("grouplens", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # with the published MD5 (pretended here) the content is still checked by structure
    monkeypatch.setattr(movielens, "GROUPLENS_ZIP_MD5", hashlib.md5(payload).hexdigest())
    with pytest.raises(DataValidationError):
        fetch_movielens("grouplens", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_known_original_by_checksum(tmp_path, monkeypatch):
    plain = tmp_path / "ml-100k.zip"
    plain.write_bytes(b"not the original")
    assert movielens.known_original(plain) is None
    assert movielens.known_original(tmp_path) is None  # a folder
    fake_md5 = hashlib.md5(b"not the original").hexdigest()
    monkeypatch.setattr(movielens, "GROUPLENS_ZIP_MD5", fake_md5)
    assert movielens.known_original(plain) == "grouplens ml-100k.zip"
    monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", movielens.sha256_of(plain))
    assert movielens.known_original(plain) == "recbole-1.2.1 wheel"


def test_cli_import(tmp_path, capsys):
    src = _grouplens(tmp_path / "src")
    assert cli.main(["import-movielens", str(src), str(tmp_path / "out")]) == 1
    assert "943" in capsys.readouterr().err  # the small sample is not MovieLens-100K
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    assert cli.main(["import-movielens", str(src), str(foreign)]) == 2
    with pytest.raises(SystemExit):
        cli.main(["import-movielens", str(src)])


REAL = cached_movielens()


@pytest.mark.skipif(REAL is None, reason="MovieLens-100K is not in the cache "
                    "(python -m toyrec_helpers import-movielens --fetch pypi OUT)")
def test_real_movielens_100k(tmp_path):
    ds = import_movielens(REAL, tmp_path / "ml")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100_000)
    assert ds.ratings_per_user().min() == 20
    assert abs(float(ds.interactions["rating"].mean()) - 3.53) < 0.01
    genres = {g for cell in ds.items["genres"] for g in cell.split("|")}
    assert genres <= set(GENRES) and len(genres) >= 18
    schema = json.loads((tmp_path / "ml" / "schema.json").read_text())
    assert schema["source"]["sha256"] == movielens.RECBOLE_WHEEL_SHA256
    assert schema["source"]["known_original"] == "recbole-1.2.1 wheel"
    assert np.isfinite(ds.items["release_year"]).all()
    assert load_dataset(tmp_path / "ml").n_users == 943


STORED = Path(__file__).resolve().parents[1] / "book" / "results" / "evaluate_movielens100k.json"


def test_stored_movielens_results_follow_the_current_protocol():
    from toyrec_helpers.evaluate import EvalConfig, method_names
    from toyrec_helpers.evaluate.paired import read_per_shopper

    stored = json.loads(STORED.read_text(encoding="utf-8"))
    values, users, seeds = read_per_shopper(STORED)  # checks the SHA-256 the JSON records
    protocol = stored["protocol"]
    assert stored["data"] == "data/ml-100k" and list(seeds) == [0, 1, 2]
    default = EvalConfig().to_dict()
    for key, value in default.items():  # made with the CLI's defaults (all K, 3 seeds)
        assert protocol[key] == value, f"protocol field {key!r} differs: regenerate the file"
    assert protocol["methods"] == [m for m in method_names() if m in protocol["methods"]]
    ran = {method for method, _, _ in values}
    assert {"popularity", "global", "maml", "maml_hybrid", "shrunk_offset"} <= ran
    summary = {(r["method"], r["k"], r["metric"]): r["mean"] for r in stored["summary"]}
    for key, v in values.items():
        assert abs(np.nanmean(v.mean(axis=0)) - summary[key]) < 1e-6, key
    assert len(users) == protocol["users"]["evaluated"]
