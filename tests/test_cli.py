"""Tests for the command line: ``python -m toyrec_helpers validate-data|generate-data``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from datadirs import (
    REPO_ROOT,
    TOYSHOP_DIR,
    append_row,
    drop_column,
    edit_schema,
    set_cell,
    where,
    write_tiny,
)

from toyrec_helpers import cli
from toyrec_helpers.data import load_dataset
from toyrec_helpers.toyshop import file_sha256

SMALL = ["--users", "200", "--items", "60", "--ratings", "4000"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def summary_value(out: str, key: str) -> str:
    for line in out.splitlines():
        if line.split() and line.split()[0] == key:
            return line.split(None, 1)[1].strip()
    raise AssertionError(f"{key!r} not in the summary:\n{out}")


# --- validate-data ---------------------------------------------------------------------------


def test_validate_data_on_the_committed_toyshop(capsys):
    code, out, err = run(capsys, "validate-data", str(TOYSHOP_DIR))
    assert code == 0
    assert err == ""
    assert f"valid: {TOYSHOP_DIR}" in out
    assert summary_value(out, "name") == "ToyShop"
    assert summary_value(out, "users") == "3000"
    assert summary_value(out, "items") == "600"
    assert summary_value(out, "ratings") == "99137"
    assert summary_value(out, "ratings_per_user_min") == "15"
    assert summary_value(out, "has_timestamp") == "True"
    assert "note:" not in out


def test_validate_data_notes_missing_timestamps(tmp_path, capsys):
    directory = write_tiny(tmp_path / "nots", with_timestamp=False)
    code, out, err = run(capsys, "validate-data", str(directory))
    assert code == 0 and err == ""
    assert "note:" in out and "no timestamp column" in out
    assert summary_value(out, "has_timestamp") == "False"
    assert summary_value(out, "ratings") == "20"


def break_rating(directory):
    set_cell(directory / "ratings.csv", 6, "rating", "7")
    return [*where("ratings.csv", 6, "rating"), "'7'"]


def break_user(directory):
    set_cell(directory / "ratings.csv", 2, "user_id", "ghost")
    return [*where("ratings.csv", 2, "user_id"), "'ghost'"]


def break_json(directory):
    (directory / "schema.json").write_text("{not json", encoding="utf-8")
    return ["schema.json", "not valid JSON"]


def break_kind(directory):
    edit_schema(directory, lambda s: s["items"]["columns"]["price"].update(kind="money"))
    return ["schema.json", "'price'", "'money'"]


def break_file(directory):
    (directory / "items.csv").unlink()
    return ["items.csv", "not found"]


def break_column(directory):
    drop_column(directory / "users.csv", "signup_date")
    return ["users.csv", "'signup_date'"]


def break_pair(directory):
    row = append_row(directory / "ratings.csv", ["u1", "i3", "2", "2024-05-01T00:00:00"])
    return ["ratings.csv", "'u1'", "'i3'", f"and {row + 1}"]


@pytest.mark.parametrize(
    "breaker",
    [break_rating, break_user, break_json, break_kind, break_file, break_column, break_pair],
    ids=lambda f: f.__name__,
)
def test_validate_data_reports_malformed_data_without_a_traceback(tmp_path, capsys, breaker):
    directory = write_tiny(tmp_path / "bad")
    parts = breaker(directory)
    code, out, err = run(capsys, "validate-data", str(directory))
    assert code != 0
    assert err.startswith("invalid: ")
    for part in parts:
        assert part in err, (part, err)
    assert "Traceback" not in err and "valid:" not in out


def test_validate_data_on_a_missing_directory(tmp_path, capsys):
    code, _, err = run(capsys, "validate-data", str(tmp_path / "absent"))
    assert code != 0
    assert "absent" in err and "not a directory" in err


def test_validate_data_as_a_module_subprocess(tmp_path):
    directory = write_tiny(tmp_path / "bad")
    parts = break_user(directory)
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run(
        [sys.executable, "-m", "toyrec_helpers", "validate-data", str(directory)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("invalid: ")
    for part in parts:
        assert part in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# --- generate-data ---------------------------------------------------------------------------


def test_generate_data_small(tmp_path, capsys):
    out_dir = tmp_path / "small"
    code, out, err = run(capsys, "generate-data", "--out", str(out_dir), *SMALL)
    assert code == 0 and err == ""
    assert f"wrote {out_dir}" in out
    ds = load_dataset(out_dir)
    assert (ds.n_users, ds.n_items) == (200, 60)
    assert 0.9 * 4000 <= len(ds.interactions) <= 1.05 * 4000
    assert ds.ratings_per_user().min() >= 15
    generator = json.loads((out_dir / "schema.json").read_text(encoding="utf-8"))["generator"]
    assert generator == {
        "name": "toyshop",
        "version": 1,
        "seed": 0,
        "users": 200,
        "items": 60,
        "ratings": 4000,
    }


def test_generate_data_writes_the_random_exposure_ratings(tmp_path, capsys):
    from toyrec_helpers.toyshop import ToyShopConfig, generate_toyshop
    from toyrec_helpers.toyshop_exposure import RANDOM_EXPOSURE_FILE, random_exposure

    out_dir = tmp_path / "small"
    assert run(capsys, "generate-data", "--out", str(out_dir), *SMALL)[0] == 0
    written = (out_dir / RANDOM_EXPOSURE_FILE).read_text(encoding="utf-8")
    frame = random_exposure(generate_toyshop(ToyShopConfig(seed=0, users=200, items=60,
                                                           ratings=4000)))
    assert written == frame.to_csv(index=False, lineterminator="\n")
    assert written.startswith("user_id,item_id,rating\n")


def test_generate_data_is_deterministic_for_a_seed(tmp_path, capsys):
    dirs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        dirs[name] = tmp_path / name
        code, _, _ = run(capsys, "generate-data", "--out", str(dirs[name]), "--seed", seed, *SMALL)
        assert code == 0
    a, b, c = (file_sha256(dirs[n]) for n in "abc")
    assert a == b
    for name in ("users.csv", "items.csv", "ratings.csv", "schema.json"):
        assert a[name] != c[name], name
    for name in ("users.csv", "items.csv", "ratings.csv", "schema.json", "README.md"):
        assert (dirs["a"] / name).read_bytes() == (dirs["b"] / name).read_bytes()


def test_generate_data_refuses_an_existing_directory(tmp_path, capsys):
    out_dir = tmp_path / "shop"
    assert run(capsys, "generate-data", "--out", str(out_dir), *SMALL)[0] == 0
    before = file_sha256(out_dir)
    code, out, err = run(capsys, "generate-data", "--out", str(out_dir), "--seed", "1", *SMALL)
    assert code != 0
    assert str(out_dir) in err and "already exists" in err and "--overwrite" in err
    assert "Traceback" not in err and out == ""
    assert file_sha256(out_dir) == before
    # with --overwrite a generated directory is replaced
    code, _, _ = run(
        capsys, "generate-data", "--out", str(out_dir), "--seed", "1", "--overwrite", *SMALL
    )
    assert code == 0
    assert file_sha256(out_dir) != before


def test_generate_data_overwrite_never_replaces_a_users_directory(tmp_path, capsys):
    mine = write_tiny(tmp_path / "mine")
    sums = file_sha256(mine)
    code, _, err = run(capsys, "generate-data", "--out", str(mine), "--overwrite", *SMALL)
    assert code != 0
    assert str(mine) in err and "not a generated ToyShop directory" in err
    assert file_sha256(mine) == sums
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (["--users", "2", "--items", "60", "--ratings", "4000"], "users must be at least 3"),
        (["--users", "200", "--items", "10", "--ratings", "4000"], "items must be at least 40"),
        (["--users", "200", "--items", "60", "--ratings", "100"], "at least 15 per user"),
        (["--users", "200", "--items", "60", "--ratings", "6001"], "at most half"),
        (["--users", "-5", "--items", "60", "--ratings", "4000"], "users must be at least 3"),
    ],
)
def test_generate_data_rejects_invalid_sizes(tmp_path, capsys, sizes, message):
    out_dir = tmp_path / "shop"
    code, out, err = run(capsys, "generate-data", "--out", str(out_dir), *sizes)
    assert code != 0
    assert err.startswith("generate-data: ") and message in err
    assert out == ""
    assert not out_dir.exists()


def test_generate_data_rejects_a_negative_seed_with_a_message(tmp_path, capsys):
    """BUG: ``--seed -1`` passes ToyShopConfig (which does not check the seed) and then
    numpy's default_rng raises ``ValueError: expected non-negative integer`` outside the
    CLI's try block, so the user gets a traceback instead of a one-line message."""
    out_dir = tmp_path / "shop"
    try:
        code, _, err = run(capsys, "generate-data", "--out", str(out_dir), "--seed", "-1", *SMALL)
    except ValueError as exc:
        raise AssertionError(f"BUG: --seed -1 escaped as a traceback: {exc!r}") from exc
    assert code != 0
    assert err.startswith("generate-data: ") and "seed" in err
    assert not out_dir.exists()


def test_non_integer_sizes_are_rejected_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["generate-data", "--out", str(tmp_path / "x"), "--users", "many"])
    assert info.value.code == 2
    assert "--users" in capsys.readouterr().err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "command" in capsys.readouterr().err
