"""The data format's schema: which file holds what, and what kind each feature column is.

A data directory holds ``items.csv``, ``users.csv``, ``ratings.csv`` and ``schema.json``.
The schema names every column the package reads, so the package never hard-codes the
ToyShop's column names and any shop's data in this format works. Example::

    {
      "format_version": 1,
      "name": "ToyShop",
      "rating_scale": {"min": 1, "max": 5, "integer": true},
      "users": {"file": "users.csv", "id": "user_id",
                "columns": {"child_age_band": {"kind": "categorical"}}},
      "items": {"file": "items.csv", "id": "item_id", "title": "title",
                "columns": {"themes": {"kind": "multi", "separator": "|"},
                            "price": {"kind": "numeric"}}},
      "ratings": {"file": "ratings.csv", "user": "user_id", "item": "item_id",
                  "rating": "rating", "timestamp": "timestamp"}
    }

Feature kinds: ``categorical`` (one value per row), ``multi`` (several values joined by
``separator``), ``numeric`` (a number), ``date`` (an ISO 8601 date), and ``text`` (shown to
people, never fed to a model).

Two kinds of data
-----------------
The top-level key ``"kind"`` says what the interactions file holds:

* ``"ratings"`` (the default when the key is absent): each row is a rating; the ratings
  block names a ``rating`` column and the top level a ``rating_scale``. A (user, item) pair
  may appear once.
* ``"purchases"``: a *purchase log*, each row one purchase, with no rating. The ratings
  block names only ``file``, ``user``, ``item`` and (optionally) ``timestamp``; a
  ``rating`` column or a ``rating_scale`` is an error. The same pair may appear several
  times (repeat purchases): the models see each pair once, at its first purchase, and the
  loader counts the repeats (:attr:`toyrec_helpers.data.Dataset.repeat_purchases`). Inside
  the package a purchase is the implicit rating 1 on the scale 0 (not bought) to 1::

    {"format_version": 1, "name": "ToyShop purchases", "kind": "purchases",
     "users": {...}, "items": {...},
     "ratings": {"file": "purchases.csv", "user": "user_id", "item": "item_id",
                 "timestamp": "timestamp"}}

A rated file whose ratings are all equal is accepted with a warning and evaluated as a
purchase log (see :func:`toyrec_helpers.data.load_dataset`). Introduced in chapter 1
(book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FEATURE_KINDS = ("categorical", "multi", "numeric", "date", "text")
DATA_KINDS = ("ratings", "purchases")
SCHEMA_FILE = "schema.json"
PURCHASE_VALUE = 1.0
"""The implicit rating of a purchase in a purchase log (the scale runs from 0 to 1)."""


class DataValidationError(ValueError):
    """A data directory does not follow the format; the message says where and what.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column: its name, kind and (for ``multi``) separator.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    name: str
    kind: str
    separator: str = "|"


@dataclass(frozen=True)
class TableSpec:
    """One entity table (users or items): file, id column, optional title, features.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    file: str
    id: str
    columns: tuple[ColumnSpec, ...]
    title: str | None = None

    def of_kind(self, *kinds: str) -> tuple[ColumnSpec, ...]:
        """The feature columns whose kind is one of ``kinds``, in schema order."""
        return tuple(c for c in self.columns if c.kind in kinds)


@dataclass(frozen=True)
class RatingsSpec:
    """The interactions table: file and the names of its user, item, rating, timestamp
    columns; ``rating`` is ``None`` in a purchase log (introduced in chapter 1,
    book/01_cold_start_problem.ipynb)."""

    file: str
    user: str
    item: str
    rating: str | None
    timestamp: str | None


@dataclass(frozen=True)
class Schema:
    """A parsed ``schema.json``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    name: str
    rating_min: float
    rating_max: float
    rating_integer: bool
    users: TableSpec
    items: TableSpec
    ratings: RatingsSpec
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    kind: str = "ratings"

    @property
    def is_purchase_log(self) -> bool:
        """Whether the schema declares a purchase log (``"kind": "purchases"``)."""
        return self.kind == "purchases"


def _require(obj: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataValidationError(f"{SCHEMA_FILE}: {where} is missing the key {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataValidationError(
            f"{SCHEMA_FILE}: {where}.{key} should be a {names}, got {value!r}"
        )
    return value


def _table(raw: dict[str, Any], section: str) -> TableSpec:
    obj = _require(raw, section, "the top level", dict)
    columns = []
    for name, spec in _require(obj, "columns", section, dict).items():
        kind = _require(spec, "kind", f"{section}.columns.{name}", str)
        if kind not in FEATURE_KINDS:
            raise DataValidationError(
                f"{SCHEMA_FILE}: column {name!r} of {section} has unknown kind {kind!r}; "
                f"expected one of {', '.join(FEATURE_KINDS)}"
            )
        separator = spec.get("separator", "|")
        if kind == "multi" and (not isinstance(separator, str) or len(separator) != 1):
            raise DataValidationError(
                f"{SCHEMA_FILE}: column {name!r} of {section} needs a one-character "
                f"'separator', got {separator!r}"
            )
        columns.append(ColumnSpec(name=name, kind=kind, separator=separator))
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise DataValidationError(f"{SCHEMA_FILE}: {section}.title should be a column name")
    return TableSpec(
        file=_require(obj, "file", section, str),
        id=_require(obj, "id", section, str),
        columns=tuple(columns),
        title=title,
    )


def parse_schema(raw: dict[str, Any]) -> Schema:
    """Check and parse the content of a ``schema.json``.

    Parameters
    ----------
    raw : dict
        The decoded JSON object.

    Returns
    -------
    Schema
        The parsed schema.

    Raises
    ------
    DataValidationError
        If a key is missing, has the wrong type, a feature kind or the data kind is
        unknown, or a purchase log names a rating column or scale.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    if not isinstance(raw, dict):
        raise DataValidationError(f"{SCHEMA_FILE}: the top level should be a JSON object")
    kind = raw.get("kind", "ratings")
    if kind not in DATA_KINDS:
        raise DataValidationError(f"{SCHEMA_FILE}: kind should be one of "
                                  f"{', '.join(map(repr, DATA_KINDS))}, got {kind!r}")
    ratings = _require(raw, "ratings", "the top level", dict)
    if kind == "purchases":
        for key, where in (("rating_scale", raw), ("rating", ratings)):
            if key in where:
                raise DataValidationError(
                    f"{SCHEMA_FILE}: kind 'purchases' declares a purchase log, which has no "
                    f"ratings; remove {'ratings.' if where is ratings else ''}{key}, or set "
                    "kind to 'ratings'")
        lo, hi, integer, rating = 0.0, PURCHASE_VALUE, True, None
    else:
        scale = _require(raw, "rating_scale", "the top level", dict)
        lo = _require(scale, "min", "rating_scale", (int, float))
        hi = _require(scale, "max", "rating_scale", (int, float))
        if not lo < hi:
            raise DataValidationError(
                f"{SCHEMA_FILE}: rating_scale.min ({lo}) must be < max ({hi})")
        if "rating" not in ratings:
            raise DataValidationError(
                f"{SCHEMA_FILE}: ratings is missing the key 'rating'; a data set without "
                "ratings is a purchase log: declare it with \"kind\": \"purchases\"")
        integer, rating = bool(scale.get("integer", False)), _require(
            ratings, "rating", "ratings", str)
    timestamp = ratings.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise DataValidationError(f"{SCHEMA_FILE}: ratings.timestamp should be a column name")
    return Schema(
        name=str(raw.get("name", "unnamed")),
        rating_min=float(lo),
        rating_max=float(hi),
        rating_integer=integer,
        users=_table(raw, "users"),
        items=_table(raw, "items"),
        ratings=RatingsSpec(
            file=_require(ratings, "file", "ratings", str),
            user=_require(ratings, "user", "ratings", str),
            item=_require(ratings, "item", "ratings", str),
            rating=rating,
            timestamp=timestamp,
        ),
        raw=raw,
        kind=kind,
    )


def read_schema(directory: str | Path) -> Schema:
    """Read and parse ``schema.json`` from a data directory.

    Parameters
    ----------
    directory : str or Path
        The data directory.

    Returns
    -------
    Schema

    Raises
    ------
    DataValidationError
        If the file is missing, is not valid JSON, or does not describe a valid schema.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    path = Path(directory) / SCHEMA_FILE
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found (every data directory needs one)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    return parse_schema(raw)
