"""Paired comparisons over shoppers, the seed-to-seed spread, and the per-shopper sidecar.

Every method is scored on the same meta-test shoppers, so the difference between two
methods is best judged shopper by shopper: :func:`paired_differences` gives, for every K
and metric, the mean over shoppers of ``method - baseline`` (each shopper's value is their
mean over training seeds) with a percentile-bootstrap interval over shoppers. The
baselines are ``finetune``, ``global``, and ``popularity`` for rating metrics or
``popularity_count`` for ranking metrics (:func:`paired_baselines`).
:func:`write_per_shopper` and :func:`read_per_shopper` store and read every per-shopper
value in a compact ``.npz`` file that the results JSON names with its SHA-256.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toyrec_helpers import metrics
from toyrec_helpers.evaluate.scoring import RATING_METRICS
from toyrec_helpers.fileio import atomic_write

__all__ = [
    "PAIRED_COLUMNS", "paired_baselines", "paired_differences", "per_shopper_path",
    "read_per_shopper", "seed_spread", "write_per_shopper"
]

PAIRED_COLUMNS: tuple[str, ...] = ("method", "baseline", "k", "metric", "mean", "ci_low",
                                   "ci_high", "n_users")
"""The fields of a row of :func:`paired_differences` (and of the JSON's ``paired`` list)."""

_MARKER = "__toyrec_evaluate_per_shopper__"
Values = Mapping[tuple[str, int, str], np.ndarray]


def paired_baselines(metric: str) -> tuple[str, ...]:
    """The baselines every method is compared with on ``metric``: ``finetune``,
    ``global``, and ``popularity`` (rating metrics) or ``popularity_count`` (others).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    shop = "popularity" if metric in RATING_METRICS else "popularity_count"
    return ("finetune", "global", shop)


def paired_differences(
    values: Values, methods: Sequence[str], ks: Sequence[int], metrics_: Sequence[str],
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> pd.DataFrame:
    """Mean per-shopper difference ``method - baseline`` with a bootstrap interval.

    For every K, metric, method and baseline (:func:`paired_baselines`, when evaluated):
    each shopper's value is their mean over training seeds, shoppers undefined for either
    method (``NaN``) are dropped, and :func:`toyrec_helpers.metrics.bootstrap_ci` of the
    differences gives the mean and the ``level`` interval. Negative means the method has
    the lower value (better for MAE and RMSE, worse for the ranking metrics).

    Parameters
    ----------
    values : dict
        ``(method, k, metric) -> [n_seeds, n_users]`` (:attr:`EvalResult.values`).
    methods, ks, metrics_
        What to compare.
    n_boot, level, seed
        Bootstrap settings.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PAIRED_COLUMNS`.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    rows = []
    for k in ks:
        for metric in metrics_:
            for baseline in paired_baselines(metric):
                base = values.get((baseline, int(k), metric))
                if base is None:
                    continue
                b = base.mean(axis=0)
                for method in methods:
                    other = values.get((method, int(k), metric))
                    if method == baseline or other is None:
                        continue
                    diff = other.mean(axis=0) - b
                    n = metrics.n_valid(diff)
                    if n == 0:
                        continue
                    ci = metrics.bootstrap_ci(diff, n_boot, level, seed)
                    rows.append({"method": method, "baseline": baseline, "k": int(k),
                                 "metric": metric, "mean": ci.mean, "ci_low": ci.low,
                                 "ci_high": ci.high, "n_users": int(n)})
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def seed_spread(values: Values) -> dict[tuple[str, int, str], float]:
    """The standard deviation over training seeds of the mean over shoppers, per
    ``(method, k, metric)`` (``NaN`` with one seed; 0 for seed-free methods).

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    out = {}
    for key, v in values.items():
        per_seed = np.nanmean(v, axis=1) if np.isfinite(v).any() else np.full(len(v), np.nan)
        out[key] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
    return out


def per_shopper_path(json_path: str | os.PathLike[str]) -> Path:
    """The sidecar file of a results JSON: ``name.json`` -> ``name.per_shopper.npz``.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    path = Path(json_path)
    return path.with_name(f"{path.stem}.per_shopper.npz")


def is_per_shopper_file(path: Path) -> bool:
    """Whether ``path`` is a sidecar written by :func:`write_per_shopper`."""
    try:
        with zipfile.ZipFile(path) as z:
            return f"{_MARKER}.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def write_per_shopper(
    path: str | os.PathLike[str], values: Values, users: np.ndarray, seeds: Sequence[int],
) -> dict[str, Any]:
    """Write every per-shopper value to a compressed ``.npz`` file, atomically.

    One float32 array ``[n_seeds, n_users]`` per ``(method, k, metric)``, named
    ``"method|k|metric"``, plus ``users`` and ``seeds``. An existing file is replaced only
    if it is such a sidecar.

    Returns
    -------
    dict
        ``{"file": file name, "sha256": hex digest, "format": ...}`` for the JSON.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    path = Path(path)
    if path.exists() and not is_per_shopper_file(path):
        raise FileExistsError(f"{path}: exists and is not a per-shopper file written by "
                              "toyrec_helpers.evaluate; refusing to replace it")
    arrays = {f"{m}|{k}|{x}": np.asarray(v, dtype=np.float32)
              for (m, k, x), v in sorted(values.items())}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{_MARKER: np.zeros(0)},
                        users=np.asarray(users, dtype=np.int64),
                        seeds=np.asarray(seeds, dtype=np.int64), **arrays)
    data = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(data))
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "format": "npz: 'method|k|metric' -> float32 [n_seeds, n_users]; users; seeds"}


def read_per_shopper(
    json_path: str | os.PathLike[str],
) -> tuple[dict[tuple[str, int, str], np.ndarray], np.ndarray, np.ndarray]:
    """The per-shopper values of a results JSON, from its sidecar, checking the SHA-256
    that the JSON records.

    Returns
    -------
    values : dict
        ``(method, k, metric) -> float64 [n_seeds, n_users]``.
    users, seeds : numpy.ndarray

    Raises
    ------
    ValueError
        If the JSON names no sidecar, or the sidecar's checksum differs.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    import json

    json_path = Path(json_path)
    record = json.loads(json_path.read_text(encoding="utf-8"))
    entry = record.get("per_shopper")
    if not isinstance(entry, dict) or "file" not in entry:
        raise ValueError(f"{json_path}: names no per-shopper file")
    path = json_path.with_name(entry["file"])
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise ValueError(f"{path}: SHA-256 {digest} differs from {entry.get('sha256')} "
                         f"recorded in {json_path}")
    with np.load(io.BytesIO(data)) as z:
        values = {}
        for name in z.files:
            if name.count("|") == 2:
                m, k, x = name.split("|")
                values[(m, int(k), x)] = z[name].astype(np.float64)
        return values, z["users"], z["seeds"]
