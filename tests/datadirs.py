"""Small data directories for the data-layer tests, and tools to copy and break them.

Every writer takes a directory (normally a pytest ``tmp_path``) and returns it. The tiny
data set ("TinyShop") follows the format of ``toyrec_helpers.schema`` but is not made by
the ToyShop generator, so it has no answer key. CSV edits go through the :mod:`csv`
module and keep pandas' minimal quoting and ``\\n`` line endings.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TOYSHOP_DIR = REPO_ROOT / "data" / "toyshop"
DATASHEET = REPO_ROOT / "toyrec_helpers" / "toyshop_datasheet.md"
DATA_FILES = ("schema.json", "users.csv", "items.csv", "ratings.csv")

def _columns(**kinds: str) -> dict[str, dict[str, str]]:
    """Schema column entries; a multi-valued column gets the separator "|"."""
    return {name: {"kind": kind, **({"separator": "|"} if kind == "multi" else {})}
            for name, kind in kinds.items()}


TINY_SCHEMA: dict[str, Any] = {
    "format_version": 1,
    "name": "TinyShop",
    "rating_scale": {"min": 1, "max": 5, "integer": True},
    "users": {"file": "users.csv", "id": "user_id",
              "columns": _columns(age_band="categorical", region="categorical",
                                  signup_date="date")},
    "items": {"file": "items.csv", "id": "item_id", "title": "title",
              "columns": _columns(category="categorical", price="numeric", tags="multi",
                                  release_date="date")},
    "ratings": {"file": "ratings.csv", "user": "user_id", "item": "item_id",
                "rating": "rating", "timestamp": "timestamp"},
}

TINY_USERS = (
    ["user_id", "age_band", "region", "signup_date"],
    [
        ["u1", "3-5", "North", "2023-01-10"],
        ["u2", "6-8", "South", "2023-02-01"],
        ["u3", "3-5", "East", "2023-03-15"],
        ["u4", "9-12", "North", "2023-04-20"],
        ["u5", "6-8", "West", "2023-05-05"],
    ],
)
TINY_ITEMS = (
    ["item_id", "title", "category", "price", "tags", "release_date"],
    [
        ["i1", "Red Car", "vehicles", "10.5", "red|fast", "2022-01-01"],
        ["i2", "Blue Doll", "dolls", "20", "blue", "2022-02-01"],
        ["i3", "Green Puzzle", "puzzles", "7.25", "green|smart|small", "2022-03-01"],
        ["i4", "Robot", "stem", "35", "smart", "2022-04-01"],
        ["i5", "Kite", "outdoor", "15", "", "2022-05-01"],
        ["i6", "Teddy", "plush", "12", "soft", "2022-06-01"],
    ],
)
# (user, item, rating, timestamp). File order is NOT time order within a user (u1's rows
# are written newest first), so a loader that forgets to sort by time is caught.
TINY_RATINGS: tuple[tuple[str, str, int, str], ...] = (
    ("u1", "i6", 2, "2024-01-06T10:00:00"),
    ("u2", "i1", 5, "2024-01-01T09:00:00"),
    ("u1", "i5", 3, "2024-01-05T10:00:00"),
    ("u3", "i2", 4, "2024-02-01T08:00:00"),
    ("u1", "i4", 4, "2024-01-04T10:00:00"),
    ("u2", "i3", 1, "2024-01-03T09:00:00"),
    ("u1", "i3", 5, "2024-01-03T10:00:00"),
    ("u4", "i5", 2, "2024-03-01T12:00:00"),
    ("u1", "i2", 1, "2024-01-02T10:00:00"),
    ("u2", "i2", 3, "2024-01-02T09:00:00"),
    ("u1", "i1", 4, "2024-01-01T10:00:00"),
    ("u3", "i1", 2, "2024-02-02T08:00:00"),
    ("u2", "i4", 4, "2024-01-04T09:00:00"),
    ("u3", "i3", 5, "2024-02-03T08:00:00"),
    ("u4", "i6", 3, "2024-03-02T12:00:00"),
    ("u2", "i6", 2, "2024-01-05T09:00:00"),
    ("u3", "i6", 3, "2024-02-04T08:00:00"),
    ("u4", "i1", 4, "2024-03-03T12:00:00"),
    ("u5", "i2", 5, "2024-04-01T12:00:00"),
    ("u5", "i4", 1, "2024-04-02T12:00:00"),
)
TINY_COUNTS = {"u1": 6, "u2": 5, "u3": 4, "u4": 3, "u5": 2}


def tiny_schema() -> dict[str, Any]:
    """A fresh (deep) copy of the TinyShop schema, safe to modify."""
    return copy.deepcopy(TINY_SCHEMA)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Write ``header`` and ``rows`` as a CSV file with ``\\n`` line endings."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and data rows of a CSV file, as strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write_schema(directory: Path, raw: Any) -> Path:
    """Write ``raw`` as ``schema.json`` in ``directory``."""
    (Path(directory) / "schema.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


def write_tiny(directory: Path, with_timestamp: bool = True) -> Path:
    """Write the TinyShop (5 users, 6 items, 20 ratings) into ``directory``.

    With ``with_timestamp=False`` the ratings file has no timestamp column and the schema
    names none.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    schema = tiny_schema()
    write_csv(directory / "users.csv", *copy.deepcopy(TINY_USERS))
    write_csv(directory / "items.csv", *copy.deepcopy(TINY_ITEMS))
    if with_timestamp:
        header = ["user_id", "item_id", "rating", "timestamp"]
        rows = [[u, i, str(r), t] for u, i, r, t in TINY_RATINGS]
    else:
        del schema["ratings"]["timestamp"]
        header = ["user_id", "item_id", "rating"]
        rows = [[u, i, str(r)] for u, i, r, _ in TINY_RATINGS]
    write_csv(directory / "ratings.csv", header, rows)
    write_schema(directory, schema)
    return directory


def copy_dir(src: Path, dst: Path) -> Path:
    """Copy a data directory (e.g. :data:`TOYSHOP_DIR`) to ``dst`` (which must not exist)."""
    shutil.copytree(src, dst)
    return Path(dst)


def set_cell(path: Path, row: int, column: str, value: str) -> str:
    """Set the cell at 0-based data ``row`` and ``column`` of a CSV file; returns the old value."""
    header, rows = read_csv_rows(path)
    j = header.index(column)
    old = rows[row][j]
    rows[row][j] = value
    write_csv(path, header, rows)
    return old


def drop_column(path: Path, column: str) -> Path:
    """Remove ``column`` from a CSV file."""
    header, rows = read_csv_rows(path)
    j = header.index(column)
    write_csv(path, header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows])
    return path


def append_row(path: Path, row: list[str]) -> int:
    """Append a data row to a CSV file; returns its 0-based data row index."""
    header, rows = read_csv_rows(path)
    rows.append(list(row))
    write_csv(path, header, rows)
    return len(rows) - 1


def edit_schema(directory: Path, update: Callable[[dict[str, Any]], None]) -> Path:
    """Load ``schema.json``, let ``update`` modify the dict in place, write it back."""
    path = Path(directory) / "schema.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    update(raw)
    return write_schema(directory, raw)


def where(file: str, row: int, column: str | None = None) -> list[str]:
    """The pieces a good error message about 0-based data ``row`` must contain.

    Rows are reported 1-based, and the line in the file counts the header as line 1.
    """
    parts = [file, f"row {row + 1}", f"line {row + 2}"]
    if column is not None:
        parts.append(repr(column))
    return parts
