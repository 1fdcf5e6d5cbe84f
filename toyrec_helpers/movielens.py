"""MovieLens-100K: fetch it on request, and import it into the book's data format.

MovieLens-100K (Harper and Konstan, 2015) holds 100,000 ratings (1 to 5 stars) of 1,682
films by 943 users, with each user's age, gender, occupation and zip code and each film's
title, release date and genres. GroupLens's terms forbid redistribution, so the package
never ships it and never downloads it unless asked (:func:`fetch_movielens`).

Three sources carry the same ratings, and :func:`import_movielens` reads each:

* GroupLens's ``ml-100k.zip``, or its unzipped folder (``u.data``, ``u.item``, ``u.user``);
* RecBole's atomic files (``ml-100k.inter``, ``.item``, ``.user``), as a folder or straight
  from the wheel ``recbole-1.2.1-py3-none-any.whl`` (under
  ``recbole/dataset_example/ml-100k/``), which the Python package index serves: where only
  the index is reachable, ``pip download --no-deps recbole==1.2.1`` gets it. RecBole is
  never installed; its wheel is only read as a zip archive.

The import writes users (``age_band``, ``gender``, ``occupation``, ``zip_prefix``: all
categorical), items (``title`` as text, ``genres`` as ``multi``, ``release_year`` as
numeric) and ratings (timestamps as ISO 8601 date-times, UTC), then checks the result with
:func:`toyrec_helpers.data.load_dataset`. A source is accepted only if it has exactly the
shape of MovieLens-100K (943 users, 1,682 items, 100,000 ratings, ids 1..n). The known
originals are also checked by checksum: the wheel by its SHA-256
(:data:`RECBOLE_WHEEL_SHA256`), GroupLens's zip by the MD5 that GroupLens publishes beside it
(:data:`GROUPLENS_ZIP_MD5`; GroupLens publishes no SHA-256). The import records which
original it read, and the source file's SHA-256, in ``schema.json``.

Introduced in chapter 7 (book/07_real_ratings.ipynb).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from toyrec_helpers.data import Dataset, load_dataset
from toyrec_helpers.fileio import atomic_write, atomic_write_dir
from toyrec_helpers.schema import DataValidationError

__all__ = [
    "AGE_BANDS", "GENRES", "GROUPLENS_URL", "GROUPLENS_ZIP_MD5", "RECBOLE_WHEEL",
    "RECBOLE_WHEEL_SHA256",
    "MovieLensTables", "cache_dir", "cached_movielens", "fetch_movielens", "import_movielens",
    "known_original", "read_movielens", "sha256_of"
]

N_USERS, N_ITEMS, N_RATINGS = 943, 1682, 100_000
"""The shape every accepted source must have."""

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
"""Where GroupLens serves the original zip."""

GROUPLENS_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"
"""MD5 of GroupLens's ``ml-100k.zip``, as GroupLens publishes it (``ml-100k.zip.md5``)."""

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
"""SHA-256 of the wheel the package index serves for ``recbole==1.2.1``."""
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
"""The 19 genre flags of ``u.item``, in file order (``u.genre``)."""

AGE_BANDS = ((0, 18, "under 18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"),
             (45, 50, "45-49"), (50, 56, "50-55"), (56, 200, "56+"))
"""Age bands ``[lo, hi)`` and their labels (the bands MovieLens-1M uses)."""

MARKER = "toyrec_helpers.movielens"
"""The ``source.importer`` value of a ``schema.json`` this module wrote."""


def cache_dir() -> Path:
    """The download cache: ``$TOYREC_CACHE``, else ``~/.cache/toyrec``.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    env = os.environ.get("TOYREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "toyrec"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    return _digest(path, "sha256")


def _digest(path: str | os.PathLike[str], name: str) -> str:
    digest = hashlib.new(name)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def known_original(path: str | os.PathLike[str]) -> str | None:
    """Which known original a file is, by checksum: ``"recbole-1.2.1 wheel"`` (SHA-256
    :data:`RECBOLE_WHEEL_SHA256`), ``"grouplens ml-100k.zip"`` (MD5
    :data:`GROUPLENS_ZIP_MD5`), or ``None`` (a folder, or any other file).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    if not Path(path).is_file():
        return None
    if sha256_of(path) == RECBOLE_WHEEL_SHA256:
        return "recbole-1.2.1 wheel"
    if _digest(path, "md5") == GROUPLENS_ZIP_MD5:
        return "grouplens ml-100k.zip"
    return None


def cached_movielens(cache: str | os.PathLike[str] | None = None) -> Path | None:
    """The MovieLens-100K source already in the cache, or ``None``.

    Looks for the RecBole wheel (accepted only with its pinned SHA-256) and for
    GroupLens's ``ml-100k.zip``, in that order.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    folder = cache_dir() if cache is None else Path(cache)
    wheel = folder / RECBOLE_WHEEL
    if wheel.is_file() and sha256_of(wheel) == RECBOLE_WHEEL_SHA256:
        return wheel
    grouplens = folder / "ml-100k.zip"
    return grouplens if grouplens.is_file() else None


def fetch_movielens(
    source: str = "pypi",
    cache: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 120.0,
) -> Path:
    """Download MovieLens-100K into the cache, on the reader's explicit request.

    Parameters
    ----------
    source : {"pypi", "grouplens"}
        ``"pypi"``: ``python -m pip download --no-deps recbole==1.2.1`` (the package index
        only), then the wheel's SHA-256 is checked against :data:`RECBOLE_WHEEL_SHA256`.
        ``"grouplens"``: :data:`GROUPLENS_URL`; its MD5 is checked against
        :data:`GROUPLENS_ZIP_MD5` and its content by :func:`read_movielens` (structure and
        counts), and its SHA-256 is written next to it (``ml-100k.zip.sha256``).
    cache : path, optional
        Default :func:`cache_dir`.
    timeout : float
        Seconds allowed for the download.

    Returns
    -------
    Path
        The cached file (written atomically; an existing verified copy is reused).

    Raises
    ------
    ValueError
        Unknown source, or a download whose checksum or content is wrong (nothing is
        kept then).
    RuntimeError
        ``pip download`` failed.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    folder = cache_dir() if cache is None else Path(cache)
    if source == "pypi":
        target = folder / RECBOLE_WHEEL
        if target.is_file() and sha256_of(target) == RECBOLE_WHEEL_SHA256:
            return target
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", RECBOLE_REQUIREMENT, "-d", tmp]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            got = Path(tmp) / RECBOLE_WHEEL
            if run.returncode != 0 or not got.is_file():
                raise RuntimeError(f"{' '.join(cmd)} failed (exit {run.returncode}): "
                                   f"{run.stderr.strip()[-500:]}")
            digest = sha256_of(got)
            if digest != RECBOLE_WHEEL_SHA256:
                raise ValueError(f"{got.name}: SHA-256 {digest}, expected "
                                 f"{RECBOLE_WHEEL_SHA256}; the file was not kept")
            with open(got, "rb") as handle:
                return atomic_write(target, lambda out: shutil.copyfileobj(handle, out))
    if source == "grouplens":
        target = folder / "ml-100k.zip"
        with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as response:  # noqa: S310
            payload = response.read()
        md5 = hashlib.md5(payload).hexdigest()  # noqa: S324 - the checksum GroupLens publishes
        if md5 != GROUPLENS_ZIP_MD5:
            raise ValueError(f"{GROUPLENS_URL}: MD5 {md5}, expected {GROUPLENS_ZIP_MD5} "
                             "(published by GroupLens); the file was not kept")
        read_movielens(io.BytesIO(payload))  # raises unless it is MovieLens-100K
        atomic_write(target, lambda out: out.write(payload))
        digest = hashlib.sha256(payload).hexdigest()
        atomic_write(folder / "ml-100k.zip.sha256",
                     lambda out: out.write(f"{digest}  ml-100k.zip\n".encode()))
        return target
    raise ValueError(f"argument 'source': expected 'pypi' or 'grouplens', got {source!r}")


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class MovieLensTables:
    """MovieLens-100K in the book's columns, before it is written.

    Attributes
    ----------
    users : pandas.DataFrame
        ``user_id, age_band, gender, occupation, zip_prefix``.
    items : pandas.DataFrame
        ``item_id, title, genres`` (``|``-joined), ``release_year``.
    ratings : pandas.DataFrame
        ``user_id, item_id, rating, timestamp`` (ISO 8601, UTC, no suffix).
    source : str
        ``"grouplens"`` or ``"recbole"``.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """

    users: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame
    source: str


Opener = Callable[[str], bytes | None]


def _opener(src: str | os.PathLike[str] | io.BytesIO) -> tuple[Opener, str]:
    """A function ``read(name) -> bytes or None`` over a folder or a zip (wheel), and a
    label for messages."""
    if isinstance(src, io.BytesIO) or zipfile.is_zipfile(src):
        archive = zipfile.ZipFile(src)
        label = "<download>" if isinstance(src, io.BytesIO) else str(src)
        names = archive.namelist()

        def read_zip(name: str) -> bytes | None:
            hits = [n for n in names if n == name or n.endswith("/" + name)]
            return archive.read(sorted(hits, key=len)[0]) if hits else None

        return read_zip, label
    path = Path(src)
    if not path.is_dir():
        raise DataValidationError(f"{path}: neither a folder nor a zip archive (expected "
                                  "ml-100k.zip, its folder, RecBole's files or its wheel)")

    def read_dir(name: str) -> bytes | None:
        file = path / name
        return file.read_bytes() if file.is_file() else None

    return read_dir, str(path)


def _rows(raw: bytes, name: str, sep: str, width: int, encoding: str,
          header: bool) -> list[tuple[int, list[str]]]:
    """Split a file into ``(line number, fields)``; a wrong field count is an error."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{name}: not {encoding} text ({exc.reason})") from exc
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if header and number == 1 or not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != width:
            raise DataValidationError(f"{name}, line {number}: expected {width} fields "
                                      f"separated by {sep!r}, got {len(fields)}: {line[:80]!r}")
        out.append((number, fields))
    return out


def _int(value: str, name: str, line: int, what: str, lo: int, hi: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise DataValidationError(f"{name}, line {line}: {what} should be an integer, "
                                  f"got {value!r}") from None
    if not lo <= number <= hi:
        raise DataValidationError(f"{name}, line {line}: {what} should be in {lo}..{hi}, "
                                  f"got {number}")
    return number


def _age_band(age: int) -> str:
    return next(label for lo, hi, label in AGE_BANDS if lo <= age < hi)


def _zip_prefix(code: str) -> str:
    """First digit of a US zip code (its region); ``"other"`` for a non-numeric code."""
    code = code.strip()
    return code[0] if code[:5].isdigit() else "other"


def _users(rows: list[tuple[int, list[str]]], name: str) -> pd.DataFrame:
    records = []
    for line, (uid, age, gender, occupation, code) in rows:
        _int(uid, name, line, "user id", 1, 10**9)
        if gender.strip() not in ("M", "F"):
            raise DataValidationError(f"{name}, line {line}: gender should be M or F, "
                                      f"got {gender!r}")
        records.append((uid.strip(), _age_band(_int(age, name, line, "age", 1, 120)),
                        gender.strip(), occupation.strip(), _zip_prefix(code)))
    return pd.DataFrame(records, columns=["user_id", "age_band", "gender", "occupation",
                                          "zip_prefix"])


def _ratings(rows: list[tuple[int, list[str]]], name: str) -> pd.DataFrame:
    records = []
    for line, (uid, iid, rating, stamp) in rows:
        seconds = _int(stamp.split(".")[0], name, line, "timestamp", 0, 4_102_444_800)
        when = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        records.append((str(_int(uid, name, line, "user id", 1, 10**9)),
                        str(_int(iid, name, line, "item id", 1, 10**9)),
                        _int(rating.split(".")[0] if rating.strip().endswith(".0") else rating,
                             name, line, "rating", 1, 5), when))
    return pd.DataFrame(records, columns=["user_id", "item_id", "rating", "timestamp"])


def _grouplens_items(rows: list[tuple[int, list[str]]], name: str) -> pd.DataFrame:
    records = []
    for line, fields in rows:
        iid, title, date = fields[0], fields[1], fields[2].strip()
        _int(iid, name, line, "item id", 1, 10**9)
        flags = fields[5:]
        if any(f.strip() not in ("0", "1") for f in flags):
            raise DataValidationError(f"{name}, line {line}: genre flags should be 0 or 1")
        genres = "|".join(g for g, f in zip(GENRES, flags, strict=True) if f.strip() == "1")
        year = date[-4:] if date else ""
        if year and not year.isdigit():
            raise DataValidationError(f"{name}, line {line}: release date should look like "
                                      f"01-Jan-1995, got {date!r}")
        records.append((iid.strip(), title.strip(), genres, year))
    return pd.DataFrame(records, columns=["item_id", "title", "genres", "release_year"])


_TITLE_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def _recbole_items(rows: list[tuple[int, list[str]]], name: str) -> pd.DataFrame:
    records = []
    for line, (iid, title, year, classes) in rows:
        _int(iid, name, line, "item id", 1, 10**9)
        genres = classes.split()
        unknown = [g for g in genres if g not in GENRES]
        if unknown:
            raise DataValidationError(f"{name}, line {line}: unknown genre(s) {unknown}")
        year = "" if year.strip() in ("unknown", "unkonwn") else year  # RecBole's spelling
        found = _TITLE_YEAR.search(title)
        if not year.strip().isdigit() and found:  # RecBole split item 1412 "... (1995) (V)"
            title, year = title[: found.start()], found.group(1)
        if year.strip() and not year.strip().isdigit():
            raise DataValidationError(f"{name}, line {line}: release_year should be a year, "
                                      f"got {year!r}")
        records.append((iid.strip(), title.strip(), "|".join(genres), year.strip()))
    return pd.DataFrame(records, columns=["item_id", "title", "genres", "release_year"])


def _finish_years(items: pd.DataFrame) -> pd.DataFrame:
    """Numeric release years; a missing year gets the median of the known ones."""
    known = pd.to_numeric(items["release_year"], errors="coerce")
    return items.assign(release_year=known.fillna(float(known.median())).astype(int))


def _check_shape(tables: MovieLensTables, label: str,
                 expected: tuple[int, int, int] | None) -> None:
    n_users, n_items, n_ratings = (max(len(tables.users), 1), max(len(tables.items), 1),
                                   len(tables.ratings)) if expected is None else expected
    for what, frame, column, n in (("users", tables.users, "user_id", n_users),
                                   ("items", tables.items, "item_id", n_items)):
        ids = sorted(int(v) for v in frame[column])
        if ids != list(range(1, n + 1)):
            raise DataValidationError(f"{label}: the {what} ids should be exactly 1..{n} "
                                      f"(MovieLens-100K), got {len(ids)} ids")
    if len(tables.ratings) != n_ratings:
        raise DataValidationError(f"{label}: expected {n_ratings} ratings (MovieLens-100K), "
                                  f"got {len(tables.ratings)}")
    known = {"user_id": set(tables.users["user_id"]), "item_id": set(tables.items["item_id"])}
    for column, ids in known.items():
        unknown = ~tables.ratings[column].isin(ids)
        if unknown.any():
            raise DataValidationError(f"{label}: the ratings name {column} "
                                      f"{tables.ratings[column][unknown].iloc[0]}, which the "
                                      f"{column.split('_')[0]} file does not list")
    pairs = tables.ratings[["user_id", "item_id"]].duplicated()
    if pairs.any():
        row = tables.ratings[pairs].iloc[0]
        raise DataValidationError(f"{label}: user {row.user_id} rates item {row.item_id} "
                                  "twice")


def read_movielens(
    src: str | os.PathLike[str] | io.BytesIO,
    expected: tuple[int, int, int] | None = (N_USERS, N_ITEMS, N_RATINGS),
) -> MovieLensTables:
    """Read MovieLens-100K from any of its forms (see the module docstring).

    Parameters
    ----------
    src : path or BytesIO
        ``ml-100k.zip``, its unzipped folder, a folder of RecBole's atomic files, or the
        RecBole wheel.
    expected : (users, items, ratings) or None
        The counts the source must have (MovieLens-100K's by default); ``None`` accepts
        any counts (ids must still be 1..n), e.g. for a small sample in tests.

    Returns
    -------
    MovieLensTables

    Raises
    ------
    DataValidationError
        Neither form found, or a malformed line (the message names the file and line), or
        data that is not exactly MovieLens-100K.

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    read, label = _opener(src)
    if (data := read("u.data")) is not None:
        parts = {n: read(n) for n in ("u.user", "u.item")}
        missing = [n for n, v in parts.items() if v is None]
        if missing:
            raise DataValidationError(f"{label}: has u.data but not {', '.join(missing)}")
        tables = MovieLensTables(
            users=_users(_rows(parts["u.user"], "u.user", "|", 5, "latin-1", False), "u.user"),
            items=_grouplens_items(
                _rows(parts["u.item"], "u.item", "|", 5 + len(GENRES), "latin-1", False),
                "u.item"),
            ratings=_ratings(_rows(data, "u.data", "\t", 4, "latin-1", False), "u.data"),
            source="grouplens")
    elif (data := read("ml-100k.inter")) is not None:
        parts = {n: read(n) for n in ("ml-100k.user", "ml-100k.item")}
        missing = [n for n, v in parts.items() if v is None]
        if missing:
            raise DataValidationError(f"{label}: has ml-100k.inter but not "
                                      f"{', '.join(missing)}")
        tables = MovieLensTables(
            users=_users(_rows(parts["ml-100k.user"], "ml-100k.user", "\t", 5, "utf-8", True),
                         "ml-100k.user"),
            items=_recbole_items(
                _rows(parts["ml-100k.item"], "ml-100k.item", "\t", 4, "utf-8", True),
                "ml-100k.item"),
            ratings=_ratings(_rows(data, "ml-100k.inter", "\t", 4, "utf-8", True),
                             "ml-100k.inter"),
            source="recbole")
    else:
        raise DataValidationError(f"{label}: found neither u.data (GroupLens) nor "
                                  "ml-100k.inter (RecBole)")
    tables = MovieLensTables(tables.users, _finish_years(tables.items), tables.ratings,
                             tables.source)
    _check_shape(tables, label, expected)
    return tables


def _schema(source: str, digest: str | None, original: str | None) -> dict[str, object]:
    return {
        "format_version": 1,
        "name": "MovieLens-100K",
        "rating_scale": {"min": 1, "max": 5, "integer": True},
        "users": {"file": "users.csv", "id": "user_id",
                  "columns": {c: {"kind": "categorical"}
                              for c in ("age_band", "gender", "occupation", "zip_prefix")}},
        "items": {"file": "items.csv", "id": "item_id", "title": "title",
                  "columns": {"genres": {"kind": "multi", "separator": "|"},
                              "release_year": {"kind": "numeric"}}},
        "ratings": {"file": "ratings.csv", "user": "user_id", "item": "item_id",
                    "rating": "rating", "timestamp": "timestamp"},
        "source": {"importer": MARKER, "format": source, "sha256": digest,
                   "known_original": original,
                   "citation": "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens "
                               "Datasets: History and Context. ACM TiiS 5(4): 19.",
                   "terms": "GroupLens: no redistribution without permission"},
    }


def _written_by_us(out: Path) -> bool:
    try:
        raw = json.loads((out / "schema.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("source"), dict) \
        and raw["source"].get("importer") == MARKER


def import_movielens(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overwrite: bool = False,
    expected: tuple[int, int, int] | None = (N_USERS, N_ITEMS, N_RATINGS),
) -> Dataset:
    """Import MovieLens-100K into a data directory and load it back (validated).

    Parameters
    ----------
    src : path
        Any form :func:`read_movielens` reads.
    out : path
        Target directory: it must be missing or empty, or (with ``overwrite``) a directory
        this function wrote. It is filled in a temporary sibling and renamed into place.
    overwrite : bool
        Replace an earlier import.
    expected : (users, items, ratings) or None
        As for :func:`read_movielens`.

    Returns
    -------
    Dataset
        :func:`toyrec_helpers.data.load_dataset` of ``out``.

    Raises
    ------
    FileExistsError
        ``out`` holds something else.
    DataValidationError
        Bad source (see :func:`read_movielens`).

    Introduced in chapter 7 (book/07_real_ratings.ipynb).
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory; refusing to replace it")
        if any(out.iterdir()):
            if not _written_by_us(out):
                raise FileExistsError(f"{out}: not empty and not written by import-movielens; "
                                      "refusing to replace it")
            if not overwrite:
                raise FileExistsError(f"{out}: already holds an import; pass overwrite=True "
                                      "(--overwrite) to replace it")
    tables = read_movielens(src, expected)
    digest = sha256_of(src) if Path(src).is_file() else None
    original = known_original(src)

    def fill(tmp: Path) -> None:
        for name, frame in (("users", tables.users), ("items", tables.items),
                            ("ratings", tables.ratings)):
            frame.to_csv(tmp / f"{name}.csv", index=False, lineterminator="\n",
                         encoding="utf-8")
        (tmp / "schema.json").write_text(json.dumps(_schema(tables.source, digest, original),
                                                    indent=2)
                                         + "\n", encoding="utf-8")
        load_dataset(tmp)  # validate before it replaces anything

    atomic_write_dir(out, fill)
    return load_dataset(out)
