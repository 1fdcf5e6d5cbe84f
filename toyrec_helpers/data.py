"""Load a data directory into typed pandas frames, checking every value on the way.

Nothing is silently dropped: a value that does not fit the schema stops the load with a
:class:`~toyrec_helpers.schema.DataValidationError` naming the file, the row (1-based data
row, and the line in the file, the header being line 1), the column and what was expected.
Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toyrec_helpers.schema import (
    PURCHASE_VALUE,
    DataValidationError,
    Schema,
    TableSpec,
    read_schema,
)


@dataclass(frozen=True)
class Dataset:
    """A validated data directory.

    Attributes
    ----------
    path : Path
        Where it was read from.
    schema : Schema
        The parsed ``schema.json``.
    users, items : pandas.DataFrame
        One row per user / item, in file order; row ``i`` is entity index ``i`` everywhere
        in the package. Feature columns are typed (``numeric`` as float, ``date`` as
        datetime64, the others as strings).
    ratings : pandas.DataFrame
        The ratings (or purchases) file with typed columns, in file order.
    interactions : pandas.DataFrame
        The ratings as integer indices: columns ``user``, ``item`` (row indices into
        ``users`` / ``items``), ``rating`` (float32) and, when the data has timestamps,
        ``timestamp``; sorted by user, then time (ties keep file order). In a purchase log
        each (user, item) pair appears once, at its first purchase, with ``rating`` 1 (the
        implicit rating :data:`~toyrec_helpers.schema.PURCHASE_VALUE`) and a column
        ``count``, the number of times the pair was bought.
    has_timestamp : bool
        Whether the ratings carry timestamps.
    kind : {"ratings", "purchases"}
        What the schema declares (:attr:`~toyrec_helpers.schema.Schema.kind`).
    repeat_purchases : int
        Purchase-log rows that repeat an earlier purchase of the same pair (kept in
        ``ratings``, counted in ``interactions["count"]``, not separate interactions).
    constant_rating : float or None
        The one value of a rated file whose ratings are all equal (then
        :attr:`has_ratings` is false), else ``None``.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """

    path: Path
    schema: Schema
    users: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame
    interactions: pd.DataFrame
    has_timestamp: bool
    kind: str = "ratings"
    repeat_purchases: int = 0
    constant_rating: float | None = None

    @property
    def has_ratings(self) -> bool:
        """Whether the ratings carry information: rated data whose ratings are not all
        equal. ``False`` for a purchase log and for a constant rating column; evaluation
        then treats the data as a purchase log (ranking methods and metrics only).

        Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
        """
        return self.kind == "ratings" and self.constant_rating is None

    def kind_description(self) -> str:
        """One line saying which kind of data this is, as ``validate-data`` prints it.

        Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
        """
        if self.kind == "purchases":
            return (f"purchase log (no ratings; {len(self.ratings)} purchases, "
                    f"{self.repeat_purchases} of them repeats of an earlier purchase of the "
                    "same toy: models see each pair once, at its first purchase)")
        if self.constant_rating is not None:
            return (f"ratings, all equal to {self.constant_rating:g}: evaluated as a "
                    "purchase log (ranking methods only, no MAE)")
        s = self.schema
        return f"ratings (from {s.rating_min:g} to {s.rating_max:g})"

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.users)

    @property
    def n_items(self) -> int:
        """Number of items."""
        return len(self.items)

    def ratings_per_user(self) -> np.ndarray:
        """Number of ratings of each user, indexed by user row (zeros included)."""
        return np.bincount(self.interactions["user"].to_numpy(), minlength=self.n_users)

    def summary(self) -> dict[str, object]:
        """Counts that describe the data set (users, items, ratings, per-user counts).

        Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
        """
        per_user = self.ratings_per_user()
        rated = self.interactions["rating"].to_numpy()
        what = "purchases" if self.kind == "purchases" else "ratings"
        out: dict[str, object] = {
            "name": self.schema.name,
            "kind": self.kind,
            "users": self.n_users,
            "items": self.n_items,
        }
        if self.kind == "purchases":
            out["purchases"] = len(self.ratings)
            out["repeat_purchases"] = self.repeat_purchases
            out["distinct_pairs"] = len(self.interactions)
        else:
            out["ratings"] = len(self.interactions)
        one = "pairs" if self.kind == "purchases" else "ratings"
        out.update({
            f"{one}_per_user_min": int(per_user.min()) if len(per_user) else 0,
            f"{one}_per_user_median": float(np.median(per_user)) if len(per_user) else 0.0,
            f"{one}_per_user_max": int(per_user.max()) if len(per_user) else 0,
            f"users_without_{what}": int((per_user == 0).sum()),
        })
        if self.kind == "ratings":
            out["mean_rating"] = float(rated.mean()) if len(rated) else float("nan")
        out["density"] = len(self.interactions) / max(1, self.n_users * self.n_items)
        out["has_timestamp"] = self.has_timestamp
        if self.has_timestamp:
            ts = self.interactions["timestamp"]
            out["first_timestamp"] = str(ts.min())
            out["last_timestamp"] = str(ts.max())
        return out


def _where(file: str, row: int, column: str | None = None) -> str:
    col = f", column {column!r}" if column is not None else ""
    return f"{file}, row {row + 1} (line {row + 2}){col}"


def _read_csv(directory: Path, file: str, required: list[str]) -> pd.DataFrame:
    path = directory / file
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found (the schema names it)")
    try:
        # blank lines are kept (as empty rows) so that row and line numbers stay right and
        # nothing is skipped silently
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8", skip_blank_lines=False
        )
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except pd.errors.ParserError as exc:
        raise DataValidationError(f"{path}: not a well-formed CSV file: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: empty file; expected a CSV header") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the header has {', '.join(repr(c) for c in frame.columns)}"
        )
    return frame


def _parse_numbers(values: pd.Series, file: str, column: str, expected: str) -> np.ndarray:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy() | ~np.isfinite(parsed.to_numpy(float)))
    if len(bad):
        row = int(bad[0])
        raise DataValidationError(
            f"{_where(file, row, column)}: expected {expected}, got {values.iloc[row]!r}"
        )
    return parsed.to_numpy(dtype=np.float64)


_TZ_SUFFIX = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


def _parse_dates(values: pd.Series, file: str, column: str) -> pd.Series:
    zones = values.str.strip().str.extract(_TZ_SUFFIX, expand=False).fillna("")
    differs = np.flatnonzero((zones != zones.iloc[0]).to_numpy()) if len(values) else []
    if len(differs):
        row = int(differs[0])
        raise DataValidationError(
            f"{_where(file, row, column)}: time zone {zones.iloc[row] or 'none'!r} differs "
            f"from row 1's ({zones.iloc[0] or 'none'!r}); expected every value in one time "
            f"zone, got {values.iloc[row]!r}"
        )
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=False)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        raise DataValidationError(
            f"{_where(file, row, column)}: expected an ISO 8601 date or date-time "
            f"(e.g. 2024-05-31 or 2024-05-31T14:03:00), got {values.iloc[row]!r}"
        )
    return parsed


def _check_ids(frame: pd.DataFrame, file: str, column: str) -> None:
    empty = np.flatnonzero((frame[column].str.strip() == "").to_numpy())
    if len(empty):
        raise DataValidationError(f"{_where(file, int(empty[0]), column)}: empty id")
    dup = frame[column].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        first = frame[column].iloc[rows[0]]
        same = rows[(frame[column].iloc[rows] == first).to_numpy()]
        raise DataValidationError(
            f"{file}: id {first!r} in column {column!r} appears more than once "
            f"(rows {int(same[0]) + 1} and {int(same[1]) + 1}); ids must be unique"
        )


def _typed_table(directory: Path, spec: TableSpec) -> pd.DataFrame:
    required = [spec.id] + ([spec.title] if spec.title else []) + [c.name for c in spec.columns]
    frame = _read_csv(directory, spec.file, required)
    _check_ids(frame, spec.file, spec.id)
    for col in spec.columns:
        if col.kind == "numeric":
            frame[col.name] = _parse_numbers(frame[col.name], spec.file, col.name, "a number")
        elif col.kind == "date":
            frame[col.name] = _parse_dates(frame[col.name], spec.file, col.name)
    return frame


def load_dataset(directory: str | Path | None = None) -> Dataset:
    """Read and validate a data directory.

    Parameters
    ----------
    directory : str or Path, optional
        A directory with ``schema.json`` and the three CSV files it names. Defaults to the
        embedded ToyShop (:func:`toyrec_helpers.toyshop.toyshop_dir`: ``data/toyshop`` in
        a checkout, a verified regeneration elsewhere).

    Returns
    -------
    Dataset

    Raises
    ------
    DataValidationError
        Missing file or column, unparseable value, rating outside the scale, ratings naming
        unknown users or items, duplicate (user, item) pairs in rated data, or an invalid
        schema. The message names the file, row and column.

    Warns
    -----
    UserWarning
        When the ratings have no timestamp column: support and query sets are then drawn
        at random per user (seeded) instead of in time order. When every rating has the
        same value: the ratings say nothing, and ``evaluate`` treats the data as a
        purchase log.

    Notes
    -----
    A purchase log (``"kind": "purchases"`` in the schema) has no rating column. A shopper
    may buy the same toy more than once: the models see the pair once, at its first
    purchase in time order (file order without timestamps), with the implicit rating 1;
    ``interactions["count"]`` holds the number of purchases and
    :attr:`Dataset.repeat_purchases` the number of repeat rows.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    if directory is None:
        from toyrec_helpers.toyshop import toyshop_dir

        directory = toyshop_dir()
    directory = Path(directory)
    if not directory.is_dir():
        raise DataValidationError(f"{directory}: not a directory")
    schema = read_schema(directory)
    users = _typed_table(directory, schema.users)
    items = _typed_table(directory, schema.items)

    rs = schema.ratings
    purchases = schema.is_purchase_log
    ratings = _read_csv(directory, rs.file,
                        [rs.user, rs.item] + ([] if rs.rating is None else [rs.rating]))
    has_timestamp = rs.timestamp is not None and rs.timestamp in ratings.columns
    if not has_timestamp:
        warnings.warn(
            f"{directory / rs.file} has no timestamp column: support and query sets will "
            "be drawn at random per user (seeded), not in time order",
            UserWarning,
            stacklevel=2,
        )

    constant = None
    if rs.rating is None:
        values = np.full(len(ratings), PURCHASE_VALUE)
    else:
        values = _rating_values(ratings, schema)
        ratings[rs.rating] = values
        if len(values) > 1 and values.min() == values.max():
            constant = float(values[0])
            warnings.warn(
                f"{directory / rs.file}: every value of column {rs.rating!r} is "
                f"{constant:g}, so the ratings carry no information; evaluate will treat "
                "the data as a purchase log (ranking methods only, no MAE or other rating "
                "metric; every query purchase is relevant)",
                UserWarning,
                stacklevel=2,
            )

    user_pos = pd.Index(users[schema.users.id]).get_indexer(ratings[rs.user])
    item_pos = pd.Index(items[schema.items.id]).get_indexer(ratings[rs.item])
    for pos, col, other in ((user_pos, rs.user, schema.users), (item_pos, rs.item, schema.items)):
        unknown = np.flatnonzero(pos < 0)
        if len(unknown):
            row = int(unknown[0])
            raise DataValidationError(
                f"{_where(rs.file, row, col)}: {ratings[col].iloc[row]!r} is not an id in "
                f"{other.file} ({len(unknown)} row(s) name unknown ids)"
            )
    pairs = pd.Series(user_pos.astype(np.int64) * len(items) + item_pos)
    dup = [] if purchases else np.flatnonzero(pairs.duplicated(keep=False).to_numpy())
    if len(dup):
        first = pairs.iloc[dup[0]]
        rows = dup[(pairs.iloc[dup] == first).to_numpy()]
        raise DataValidationError(
            f"{rs.file}: the pair ({rs.user}={ratings[rs.user].iloc[rows[0]]!r}, "
            f"{rs.item}={ratings[rs.item].iloc[rows[0]]!r}) is rated more than once "
            f"(rows {int(rows[0]) + 1} and {int(rows[1]) + 1}); each user rates an item once"
        )

    inter = pd.DataFrame(
        {
            "user": user_pos.astype(np.int64),
            "item": item_pos.astype(np.int64),
            "rating": values.astype(np.float32),
        }
    )
    sort_by = ["user"]
    if has_timestamp:
        ratings[rs.timestamp] = _parse_dates(ratings[rs.timestamp], rs.file, rs.timestamp)
        inter["timestamp"] = ratings[rs.timestamp].to_numpy()
        sort_by.append("timestamp")
    inter = inter.sort_values(sort_by, kind="stable").reset_index(drop=True)
    repeats = 0
    if purchases:
        inter, repeats = _first_purchases(inter, len(items))
    return Dataset(path=directory, schema=schema, users=users, items=items, ratings=ratings,
                   interactions=inter, has_timestamp=has_timestamp, kind=schema.kind,
                   repeat_purchases=repeats, constant_rating=constant)


def _rating_values(ratings: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The rating column parsed and checked against the scale."""
    rs = schema.ratings
    assert rs.rating is not None
    expected = f"a rating from {schema.rating_min:g} to {schema.rating_max:g}"
    if schema.rating_integer:
        expected = f"an integer rating from {schema.rating_min:g} to {schema.rating_max:g}"
    values = _parse_numbers(ratings[rs.rating], rs.file, rs.rating, expected)
    bad = (values < schema.rating_min) | (values > schema.rating_max)
    if schema.rating_integer:
        bad |= values != np.round(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{_where(rs.file, row, rs.rating)}: expected {expected}, "
            f"got {ratings[rs.rating].iloc[row]!r}"
        )
    return values


def _first_purchases(inter: pd.DataFrame, n_items: int) -> tuple[pd.DataFrame, int]:
    """Each (user, item) pair of a sorted purchase log once, at its first purchase, with
    the number of purchases in ``count``; and the number of repeat rows dropped."""
    pairs = inter["user"].to_numpy() * n_items + inter["item"].to_numpy()
    _, first, inverse, counts = np.unique(pairs, return_index=True, return_inverse=True,
                                          return_counts=True)
    keep = np.zeros(len(inter), dtype=bool)
    keep[first] = True  # np.unique's index is the first occurrence in the sorted order
    out = inter[keep].reset_index(drop=True)
    out["count"] = counts[inverse[keep]].astype(np.int64)
    return out, int(len(inter) - keep.sum())


def format_summary(summary: dict[str, object]) -> str:
    """Render :meth:`Dataset.summary` as aligned ``key: value`` lines.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
