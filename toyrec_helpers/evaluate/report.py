"""The results of an evaluation: per-shopper values, their summary, the JSON, the tables.

:class:`EvalResult` holds what :func:`~toyrec_helpers.evaluate.evaluate` measured and
summarises it (mean over seeds of the mean over shoppers, with a bootstrap interval);
:meth:`EvalResult.to_json` writes the results file and :func:`format_table` the text
tables.

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toyrec_helpers import metrics
from toyrec_helpers.evaluate.paired import (
    is_per_shopper_file,
    paired_differences,
    per_shopper_path,
    seed_spread,
    write_per_shopper,
)
from toyrec_helpers.evaluate.scoring import CATALOGUE_METRICS, METRICS
from toyrec_helpers.evaluate.settings import EvalConfig
from toyrec_helpers.fileio import json_ready, write_json_atomic
from toyrec_helpers.recommenders import Recommender
from toyrec_helpers.toyshop_exposure import RANDOM_METRICS

__all__ = ["PROTOCOL_NAME", "PROTOCOL_VERSION", "EvalResult", "check_json_path", "format_table"]

PROTOCOL_NAME = "toyrec cold-start evaluation"
PROTOCOL_VERSION = 1


def _summarise(
    values: Mapping[tuple[str, int, str], np.ndarray], methods: Sequence[str],
    config: EvalConfig, seed_free: Iterable[str],
) -> pd.DataFrame:
    rows = []
    spread = seed_spread(values)
    for method in methods:
        for k in config.ks:
            for metric in (*METRICS, *RANDOM_METRICS):
                v = values.get((method, k, metric))
                if v is None:
                    continue
                per_user = v.mean(axis=0)  # NaN pattern does not depend on the seed
                n = metrics.n_valid(per_user)
                if n == 0:
                    ci = metrics.BootstrapCI(math.nan, math.nan, math.nan)
                elif config.ci_method == "paired":
                    ci = metrics.bootstrap_ci(per_user, config.n_boot, config.ci_level,
                                              config.bootstrap_seed)
                else:
                    arrays = [v[0]] if method in seed_free else list(v)
                    ci = metrics.bootstrap_ci_pooled(arrays, config.n_boot, config.ci_level,
                                                     config.bootstrap_seed)
                rows.append({"method": method, "k": int(k), "metric": metric,
                             "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                             "n_users": n, "seed_sd": spread[(method, k, metric)]})
    return pd.DataFrame(rows, columns=["method", "k", "metric", "mean", "ci_low", "ci_high",
                                       "n_users", "seed_sd"])


def _is_evaluate_json(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(content, dict) and {"data", "protocol", "summary"} <= set(content)
            and isinstance(content["protocol"], dict)
            and content["protocol"].get("name") == PROTOCOL_NAME)


def check_json_path(path: str | os.PathLike[str]) -> Path:
    """Check that :meth:`EvalResult.to_json` may write ``path``, before any work is done.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        If ``path`` exists and is not a JSON file written by :meth:`EvalResult.to_json`
        (nothing the user owns is overwritten), or is a directory.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path}: is a directory; expected a file name for the JSON")
    if path.exists() and not _is_evaluate_json(path):
        raise FileExistsError(f"{path}: exists and is not an evaluation JSON written by "
                              "toyrec_helpers.evaluate; refusing to replace it")
    sidecar = per_shopper_path(path)
    if sidecar.exists() and not is_per_shopper_file(sidecar):
        raise FileExistsError(f"{sidecar}: exists and is not a per-shopper file written by "
                              "toyrec_helpers.evaluate; refusing to replace it")
    return path


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    data : str
        The data directory.
    config : EvalConfig
        The settings.
    methods : tuple of str
        Methods evaluated, in table order.
    users : numpy.ndarray
        The evaluated meta-test shoppers; column ``j`` of :meth:`per_user` is ``users[j]``.
    skipped_users : numpy.ndarray
        Meta-test shoppers skipped for having too few ratings.
    values : dict
        ``(method, k, metric) -> float64 [n_seeds, n_users]`` per-shopper values (rows in
        the order of ``config.seeds``).
    fits : pandas.DataFrame
        One row per (seed, method): tuned ``inner_lr``, ``best_epoch``, ``stopped_early``,
        ``seconds`` of training.
    recommenders : dict of str to Recommender
        The trained methods of the last seed (for ablations and demos).
    split_sizes : dict of str to int
        ``train``, ``val``, ``test``, ``evaluated``, ``skipped`` shopper counts.
    seed_free : tuple of str
        Methods that do not depend on the training seed (fitted once, their values
        repeated for each seed; the pooled interval counts their shoppers once).
    data_kind : {"ratings", "purchases"}
        ``"purchases"`` when the data has no usable ratings (a purchase log, or a rating
        column whose values are all equal): ranking methods and catalogue metrics only,
        every query purchase relevant.
    skipped_methods : dict of str to str
        Registered methods left out because the data cannot serve them, with the reason.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """

    data: str
    config: EvalConfig
    methods: tuple[str, ...]
    users: np.ndarray
    skipped_users: np.ndarray
    values: dict[tuple[str, int, str], np.ndarray]
    fits: pd.DataFrame
    recommenders: dict[str, Recommender]
    split_sizes: dict[str, int]
    seed_free: tuple[str, ...] = ()
    data_kind: str = "ratings"
    skipped_methods: dict[str, str] = field(default_factory=dict)
    _summary: pd.DataFrame = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._summary = _summarise(self.values, self.methods, self.config, self.seed_free)

    def per_user(self, method: str, k: int, metric: str) -> np.ndarray:
        """Per-shopper values, float64 ``[n_seeds, n_users]`` (a copy; NaN = undefined)."""
        key = (method, int(k), metric)
        if key not in self.values:
            raise KeyError(f"no values for method={method!r}, k={k!r}, metric={metric!r}; "
                           f"methods {self.methods}, ks {self.config.ks}, metrics {METRICS} "
                           "(mae/rmse only for methods that predict ratings)")
        return self.values[key].copy()

    def summary(self) -> pd.DataFrame:
        """One row per (method, k, metric): ``mean``, ``ci_low``, ``ci_high``, ``n_users``,
        and ``seed_sd``, the standard deviation over seeds of the mean over shoppers."""
        return self._summary.copy()

    def paired(self) -> pd.DataFrame:
        """Paired differences to the baselines
        (:func:`~toyrec_helpers.evaluate.paired.paired_differences`): one row per
        (method, baseline, k, metric)."""
        c = self.config
        metric_names = list(dict.fromkeys(m for (_, _, m) in self.values))
        return paired_differences(self.values, self.methods, c.ks, metric_names, c.n_boot,
                                  c.ci_level, c.bootstrap_seed)

    def protocol(self) -> dict[str, Any]:
        """The ``protocol`` block of the JSON: settings, methods, shopper counts, and the
        tuned inner rates and best meta-training epochs per seed."""
        tuned: dict[str, dict[str, list[Any]]] = {
            "inner_lr": {}, "lr_edge": {}, "val_mse": {}, "unadapted_val_mse": {},
            "worse_than_unadapted": {}, "best_epoch": {}, "epochs_run": {}}
        for method in self.methods:
            rows = self.fits[self.fits["method"] == method]
            if rows["inner_lr"].notna().any():
                tuned["inner_lr"][method] = json_ready(list(rows["inner_lr"]))
                for name in ("lr_edge", "val_mse", "unadapted_val_mse",
                             "worse_than_unadapted"):
                    if name in rows:
                        tuned[name][method] = json_ready(
                            [x.item() if hasattr(x, "item") else x for x in rows[name]])
            if (rows["best_epoch"] >= 0).any():
                tuned["best_epoch"][method] = [int(x) for x in rows["best_epoch"]]
                if "epochs_run" in rows:
                    tuned["epochs_run"][method] = [int(x) for x in rows["epochs_run"]]
        out = {"name": PROTOCOL_NAME, "version": PROTOCOL_VERSION, **self.config.to_dict(),
               "methods": list(self.methods), "metrics": list(METRICS),
               "users": dict(self.split_sizes), "tuned": tuned}
        return {**out, **self._kind_block()}

    def _kind_block(self) -> dict[str, Any]:
        """What the kind of data changes in the protocol: relevance, metrics, exclusions."""
        c = self.config
        excluded = (f"each shopper's first max(ks) = {max(c.ks)} interactions, so every "
                    "support toy at every K" if c.catalogue_exclude == "first_max_k"
                    else "each shopper's K support toys")
        out: dict[str, Any] = {"data_kind": self.data_kind,
                               "excluded_from_ranking": excluded}
        if self.data_kind == "purchases":
            out["metrics"] = list(CATALOGUE_METRICS)
            out["relevance"] = ("every query purchase (the data has no ratings; "
                                "relevance_threshold does not apply)")
        else:
            out["relevance"] = f"query ratings >= {c.relevance_threshold:g}"
        out["skipped_methods"] = dict(self.skipped_methods)
        return out

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"data", "protocol", "summary", "paired", "per_shopper"}`` to ``path``
        atomically, and every per-shopper value to its sidecar
        (:func:`~toyrec_helpers.evaluate.paired.per_shopper_path`), which ``per_shopper``
        names with its SHA-256.

        An existing file is replaced only if it is a previous evaluation JSON (see
        :func:`check_json_path`), or its sidecar. Undefined values are written as ``null``.
        """
        path = check_json_path(path)
        summary = self._summary.to_dict(orient="records")
        sidecar = write_per_shopper(per_shopper_path(path), self.values, self.users,
                                    self.config.seeds)
        return write_json_atomic(path, {"data": self.data, "protocol": self.protocol(),
                                        "summary": summary,
                                        "paired": self.paired().to_dict(orient="records"),
                                        "per_shopper": sidecar})


# --------------------------------------------------------------------------- table


def _cell(row: Mapping[str, Any]) -> str:
    if not math.isfinite(row["mean"]):
        return "n/a"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = ["  ".join(h.ljust(w) if j == 0 else h.rjust(w)
                       for j, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))))
    return lines


def format_table(
    summary: pd.DataFrame, metric: str | None = None, k: int | Iterable[int] | None = None
) -> str:
    """A readable text table of :meth:`EvalResult.summary`.

    Cells read ``mean [ci_low, ci_high]``; ``-`` marks a metric not computed for a method
    (MAE/RMSE of a ranking-only score).

    Parameters
    ----------
    summary : pandas.DataFrame
        Columns ``method``, ``k``, ``metric``, ``mean``, ``ci_low``, ``ci_high``,
        ``n_users``.
    metric : str, optional
        Only this metric: one block, rows = methods, columns = K.
    k : int or iterable of int, optional
        Only these K. Without ``metric``: one block per K, rows = methods, columns =
        metrics, and a line with the number of shoppers per metric.

    Returns
    -------
    str

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    need = {"method", "k", "metric", "mean", "ci_low", "ci_high", "n_users"}
    missing = sorted(need - set(summary.columns))
    if missing:
        raise ValueError(f"argument 'summary': missing column(s) {missing}; expected "
                         "EvalResult.summary()")
    frame = summary
    if k is not None:
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
        frame = frame[frame["k"].isin(ks)]
    if metric is not None:
        frame = frame[frame["metric"] == metric]
    if len(frame) == 0:
        raise ValueError(f"no summary rows for metric={metric!r}, k={k!r}")
    methods = list(dict.fromkeys(frame["method"]))
    metric_order = [m for m in METRICS if m in set(frame["metric"])]
    metric_order += [m for m in dict.fromkeys(frame["metric"]) if m not in metric_order]
    cells = {(r["method"], int(r["k"]), r["metric"]): r for r in frame.to_dict("records")}
    ks_present = sorted({int(x) for x in frame["k"]})
    blocks = []
    if metric is not None:
        header = ["method"] + [f"K={kk}" for kk in ks_present]
        rows = [[m] + [_cell(cells[(m, kk, metric)]) if (m, kk, metric) in cells else "-"
                       for kk in ks_present] for m in methods]
        counts = sorted({int(r["n_users"]) for r in cells.values()})
        blocks.append([f"{metric}: mean [bootstrap CI] over shoppers "
                       f"(n = {', '.join(map(str, counts))})", *_grid(header, rows)])
    else:
        for kk in ks_present:
            header = ["method", *metric_order]
            rows = [[m] + [_cell(cells[(m, kk, x)]) if (m, kk, x) in cells else "-"
                           for x in metric_order] for m in methods]
            by_n: dict[int, list[str]] = {}
            for x in metric_order:
                ns = [int(cells[(m, kk, x)]["n_users"]) for m in methods if (m, kk, x) in cells]
                if ns:
                    by_n.setdefault(max(ns), []).append(x)
            n_text = "; ".join(f"{n} for {', '.join(xs)}" for n, xs in by_n.items())
            blocks.append([f"K = {kk}: mean [bootstrap CI] over shoppers (n = {n_text})",
                           *_grid(header, rows)])
    return "\n\n".join("\n".join(b) for b in blocks)

