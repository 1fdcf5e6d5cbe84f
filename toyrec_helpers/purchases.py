"""Purchase logs: a rated data directory written as a purchase log, and a synthetic purchase
log of any size made from the ToyShop generator.

A purchase log is the data a shop without star ratings has: who bought what, and when (see
:mod:`toyrec_helpers.schema`, "Two kinds of data"). :func:`export_purchase_log` drops the
ratings of a rated data directory (for example the ToyShop) and keeps every rated pair as a
purchase; :func:`synthetic_purchase_log` builds a large log for scale measurements.

Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toyrec_helpers.fileio import atomic_write_dir
from toyrec_helpers.schema import SCHEMA_FILE, DataValidationError, read_schema

__all__ = ["export_purchase_log", "purchase_log_schema", "synthetic_purchase_log"]

_MARK = "derived"
"""Top-level schema key recording how a purchase log was made; a directory whose schema has
it may be replaced with ``overwrite=True`` (nothing else is)."""


def purchase_log_schema(rated: dict[str, Any], file: str = "purchases.csv",
                        note: str = "") -> dict[str, Any]:
    """The ``schema.json`` of a purchase log made from a rated data set's schema.

    Parameters
    ----------
    rated : dict
        A rated data set's schema (decoded JSON).
    file : str
        Name of the purchases file.
    note : str
        Recorded under ``"derived"`` (how the log was made).

    Returns
    -------
    dict
        The same users and items blocks; ``"kind": "purchases"``; no ``rating_scale``,
        no rating column, no ``generator`` block (a purchase log has no answer key).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    out: dict[str, Any] = {"format_version": rated.get("format_version", 1),
                           "name": f"{rated.get('name', 'unnamed')} purchases",
                           "kind": "purchases"}
    for key, value in rated.items():
        if key not in ("format_version", "name", "kind", "rating_scale", "ratings",
                       "generator", _MARK):
            out[key] = value
    block = {k: v for k, v in rated["ratings"].items() if k != "rating"}
    block["file"] = file
    out["ratings"] = block
    out[_MARK] = note or "a rated data set with its ratings dropped"
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite)")
    try:
        schema = json.loads((out / SCHEMA_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        schema = None
    if not (isinstance(schema, dict) and schema.get("kind") == "purchases" and _MARK in schema):
        raise FileExistsError(f"{out}: exists and is not a purchase log written by "
                              "toyrec_helpers; refusing to replace it")


def _write_directory(out: Path, files: dict[str, pd.DataFrame | Path], schema: dict[str, Any],
                     overwrite: bool) -> Path:
    """Fill a temporary directory, then rename it to ``out`` (atomic for readers)."""
    _check_target(out, overwrite)

    def fill(tmp: Path) -> None:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            else:
                content.to_csv(tmp / name, index=False, lineterminator="\n", encoding="utf-8")
        (tmp / SCHEMA_FILE).write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(out, fill)


def export_purchase_log(source: str | os.PathLike[str], out: str | os.PathLike[str],
                        overwrite: bool = False) -> Path:
    """Write a rated data directory as a purchase log: every rated pair becomes a purchase
    (at its timestamp, when there is one), and the ratings are dropped.

    The users and items files are copied byte for byte; the purchases file keeps the
    user, item and timestamp columns of the ratings file, in file order.

    Parameters
    ----------
    source : path
        A rated data directory (e.g. ``data/toyshop``).
    out : path
        The directory to create. It must not exist unless ``overwrite`` is true, and even
        then it must be a purchase log this function wrote.
    overwrite : bool

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    DataValidationError
        If ``source`` is not a valid rated data directory (or is already a purchase log).
    FileExistsError
        If ``out`` exists and may not be replaced.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    from toyrec_helpers.data import load_dataset

    source, out = Path(source), Path(out)
    schema = read_schema(source)
    if schema.is_purchase_log:
        raise DataValidationError(f"{source}: is already a purchase log")
    load_dataset(source)  # validate everything before writing anything
    rs = schema.ratings
    keep = [rs.user, rs.item] + ([rs.timestamp] if rs.timestamp else [])
    frame = pd.read_csv(source / rs.file, dtype=str, keep_default_na=False, encoding="utf-8")
    frame = frame[[c for c in keep if c in frame.columns]]
    note = (f"the ratings of {schema.name} ({len(frame)} rated pairs) kept as purchases, "
            "ratings dropped")
    new_schema = purchase_log_schema(schema.raw, note=note)
    files: dict[str, pd.DataFrame | Path] = {
        schema.users.file: source / schema.users.file,
        schema.items.file: source / schema.items.file,
        new_schema["ratings"]["file"]: frame,
    }
    return _write_directory(out, files, new_schema, overwrite)


def synthetic_purchase_log(
    out: str | os.PathLike[str], users: int = 20_000, items: int = 12_000,
    purchases: int = 170_000, shards: int = 10, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write a synthetic purchase log of a given size, made from the ToyShop generator.

    Building one shop of ``users x items`` would need several dense ``[users, items]``
    matrices (about 2 GB each at 20,000 x 12,000), so the log joins ``shards`` independent
    ToyShops (seeds ``seed .. seed + shards - 1``), each with ``users / shards`` shoppers
    and ``items / shards`` toys: a marketplace of shops whose shoppers buy only in their
    own shop, and whose catalogue ranking covers every toy. Each shop is generated with
    three times the wanted purchases per shopper (at least the generator's minimum of 15),
    so that shoppers differ in how much they buy (the generator's long tail); each shopper
    then keeps their first purchases in time order, about the same share for everyone, so
    that the total is exactly ``purchases`` (every shopper keeps at least one). Ids are
    prefixed with the shop (``S03-U00017``, ``S03-T0042``).

    Parameters
    ----------
    out : path
        Directory to create (replaced only if it is a purchase log written here and
        ``overwrite`` is true).
    users, items, purchases : int
        Total sizes; ``users`` and ``items`` are divided evenly among the shards.
    shards : int
        Number of shops.
    seed : int
        Seed of the first shop, and of the choice of which shoppers keep one more purchase.
    overwrite : bool
        As for :func:`export_purchase_log`, which also describes the result (``out``).

    Raises
    ------
    ValueError
        If the sizes do not divide evenly or a shop would violate the generator's limits.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    from toyrec_helpers.toyshop import MIN_RATINGS, ToyShopConfig, generate_toyshop

    for name, value in (("users", users), ("items", items), ("shards", shards)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"argument {name!r}: expected a positive int, got {value!r}")
    if users % shards or items % shards:
        raise ValueError(f"users ({users}) and items ({items}) must be multiples of shards "
                         f"({shards})")
    if isinstance(purchases, bool) or not isinstance(purchases, int) or purchases < users:
        raise ValueError(f"argument 'purchases': expected at least one per shopper "
                         f"({users}), got {purchases!r}")
    n_u, n_i = users // shards, items // shards
    per_shopper = max(MIN_RATINGS, int(np.ceil(3 * purchases / users)))
    parts_u, parts_i, parts_p = [], [], []
    for s in range(shards):
        cfg = ToyShopConfig(seed=seed + s, users=n_u, items=n_i, ratings=per_shopper * n_u)
        shop = generate_toyshop(cfg)
        prefix = f"S{s + 1:02d}-"
        u, i, r = shop.users.copy(), shop.items.copy(), shop.ratings
        u["user_id"] = prefix + u["user_id"]
        i["item_id"] = prefix + i["item_id"]
        i["title"] = prefix + i["title"]
        parts_u.append(u)
        parts_i.append(i)
        parts_p.append(pd.DataFrame({"user_id": prefix + r["user_id"],
                                     "item_id": prefix + r["item_id"],
                                     "timestamp": r["timestamp"]}))
    users_f = pd.concat(parts_u, ignore_index=True)
    items_f = pd.concat(parts_i, ignore_index=True)
    log = pd.concat(parts_p, ignore_index=True)
    # each shopper's purchases in time order; keep the first m_u, with sum(m_u) = purchases
    rank = log.sort_values(["user_id", "timestamp"], kind="stable").groupby(
        "user_id", sort=False).cumcount()
    n_bought = log.groupby("user_id")["item_id"].size()
    share = n_bought.to_numpy() * (purchases / len(log))
    keep_n = np.maximum(1, np.floor(share)).astype(np.int64)
    short = purchases - int(keep_n.sum())
    rng = np.random.default_rng(seed)
    if short > 0:
        room = np.flatnonzero(keep_n < n_bought.to_numpy())
        keep_n[rng.choice(room, size=short, replace=False)] += 1
    elif short < 0:
        room = np.flatnonzero(keep_n > 1)
        keep_n[rng.choice(room, size=-short, replace=False)] -= 1
    limit = pd.Series(keep_n, index=n_bought.index)
    log = log[rank.reindex(log.index).to_numpy() < limit.reindex(log["user_id"]).to_numpy()]
    log = log.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    schema = purchase_log_schema(
        shop.schema(), note=f"synthetic: {shards} ToyShops (seeds {seed}..{seed + shards - 1}) of "
        f"{n_u} shoppers and {n_i} toys, first purchases kept to {purchases} in all")
    schema["name"] = f"Synthetic ToyShop purchases ({users} x {items})"
    return _write_directory(Path(out), {"users.csv": users_f, "items.csv": items_f,
                                        "purchases.csv": log}, schema, overwrite)
