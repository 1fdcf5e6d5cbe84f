"""The book's stored results, read from the installed package, with their provenance checked.

The files are written by ``python -m toyrec_helpers evaluate --json book/results/...`` and
``python -m toyrec_helpers bench``, never by hand, into ``book/results/``. That folder is
the only copy: ``toyrec_helpers/results`` is a link to it, and the package data of the
wheel (``pyproject.toml``) copies the files from there, so a reader on Colab who installed
the package reads the same tables and GPU figures as the web book, without re-running the
protocol::

    from toyrec_helpers.stored_results import load
    stored = load("evaluate_toyshop")      # the dict of book/results/evaluate_toyshop.json

Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["check_provenance", "load", "names", "path"]

_IMPLS = ("loop", "vmap", "compiled")
_ORDERS = ("second", "first")
_ADAPTS = ("all_dense", "all_sparse", "head")


def _folder() -> Path:
    folder = Path(str(resources.files("toyrec_helpers") / "results"))
    if not folder.is_dir():
        raise FileNotFoundError(f"the package's stored results are missing: {folder} "
                                "(reinstall toyrec_helpers)")
    return folder


def names() -> list[str]:
    """The names of the stored results files (without ``.json``), sorted.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    return sorted(p.stem for p in _folder().glob("*.json"))


def path(name: str) -> Path:
    """Where the installed package keeps the stored results file ``name``.

    Parameters
    ----------
    name : str
        The file's name with or without ``.json``, e.g. ``"evaluate_toyshop"``.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        If there is no such file; the message lists the files there are.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    stem = name.removesuffix(".json")
    file = _folder() / f"{stem}.json"
    if not file.is_file():
        raise FileNotFoundError(f"argument 'name': no stored results {name!r}; "
                                f"stored: {', '.join(names())}")
    return file


def check_provenance(name: str, stored: dict[str, Any]) -> None:
    """Raise if a stored results file lacks its provenance or no longer fits the code.

    An ``evaluate_*`` file must hold ``data``, ``protocol`` and ``summary`` (and may hold
    more, e.g. per-shopper values), its protocol
    must be the current default :class:`~toyrec_helpers.evaluate.EvalConfig` with the
    current method registry, every (method, K, metric) row must be there and every mean
    inside its interval. A ``bench_gpu_*`` file must name an NVIDIA device, torch and a
    date, and every row a known implementation and a throughput (or its error). A
    ``bench_purchases_*`` file (``bench-purchases``) must be a successful run whose
    ``within_limits`` follows from its time, memory and limits, and whose evaluation used
    the current default protocol (apart from its seeds) and registered methods.

    Parameters
    ----------
    name : str
        The file's name (its stem decides which checks apply).
    stored : dict
        The file's content.

    Raises
    ------
    ValueError
        Naming the file and the first field that fails; regenerate the file with the
        command that wrote it.

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    stem = name.removesuffix(".json")
    if stem.startswith("evaluate_"):
        _check_evaluation(stem, stored)
    elif stem.startswith("bench_gpu_"):
        _check_gpu_bench(stem, stored)
    elif stem.startswith("bench_purchases_"):
        _check_purchase_bench(stem, stored)


def load(name: str, *, check: bool = True) -> dict[str, Any]:
    """The stored results file ``name`` of the installed package, as a dict.

    Parameters
    ----------
    name : str
        E.g. ``"evaluate_toyshop"`` or ``"bench_gpu_melu_mb32"``; :func:`names` lists them.
    check : bool
        Run :func:`check_provenance` first (default); pass ``False`` to read a file that
        an older or newer protocol wrote.

    Returns
    -------
    dict

    Introduced in chapter 6 (book/06_cold_start_evaluation.ipynb).
    """
    file = path(name)
    stored = json.loads(file.read_text(encoding="utf-8"))
    if check:
        check_provenance(file.stem, stored)
    return stored


def _fail(stem: str, why: str) -> None:
    raise ValueError(f"stored results {stem}.json: {why}; regenerate the file with the "
                     "command that wrote it (python -m toyrec_helpers evaluate/bench)")


def _check_evaluation(stem: str, stored: dict[str, Any]) -> None:
    from toyrec_helpers.evaluate.methods import get_method
    from toyrec_helpers.evaluate.scoring import CATALOGUE_METRICS

    if not {"data", "protocol", "summary"} <= set(stored):
        _fail(stem, f"expected the keys data, protocol, summary, got {sorted(stored)}")
    protocol = stored["protocol"]
    _check_protocol(stem, protocol)
    methods = protocol["methods"]
    rows = {(r["method"], r["k"], r["metric"]) for r in stored["summary"]}
    rated = protocol.get("data_kind") != "purchases"
    for method in methods:
        ranking_only = not get_method(method).predicts_ratings
        for k in protocol["ks"]:
            for metric in CATALOGUE_METRICS:  # every method ranks the catalogue
                if (method, k, metric) not in rows:
                    _fail(stem, f"row ({method}, K={k}, {metric}) is missing")
            if ranking_only and (method, k, "mae") in rows:
                _fail(stem, f"row ({method}, K={k}, mae) is unexpected: a ranking only")
            if rated and not ranking_only and (method, k, "mae") not in rows:
                _fail(stem, f"row ({method}, K={k}, mae) is missing")
    for row in stored["summary"]:
        if not row["ci_low"] <= row["mean"] <= row["ci_high"]:
            _fail(stem, f"the mean of {row['method']}, K={row['k']}, {row['metric']} lies "
                        "outside its interval")


def _check_gpu_bench(stem: str, stored: dict[str, Any]) -> None:
    if "NVIDIA" not in str(stored.get("device")) or stored.get("device_type") != "cuda":
        _fail(stem, f"device {stored.get('device')!r} ({stored.get('device_type')!r}) is not "
                    "an NVIDIA GPU")
    if not stored.get("torch") or not str(stored.get("date", "")).startswith("20"):
        _fail(stem, "the torch version or the date is missing")
    for row in stored.get("results", []):
        if (row.get("impl") not in _IMPLS or row.get("order") not in _ORDERS
                or row.get("adapt") not in _ADAPTS):
            _fail(stem, f"unknown implementation in row {row}")
        if not ((row.get("tasks_per_s") or 0) > 0 or row.get("error")):
            _fail(stem, f"row {row} has neither a throughput nor an error")


def _check_purchase_bench(stem: str, stored: dict[str, Any]) -> None:
    from toyrec_helpers.purchase_scale import LIMITS, RESULT_WHAT

    if stored.get("what") != RESULT_WHAT or stored.get("returncode") != 0:
        _fail(stem, f"not a successful run of bench-purchases (what={stored.get('what')!r}, "
                    f"returncode={stored.get('returncode')!r})")
    limits = stored.get("limits") or {}
    if limits != LIMITS:
        _fail(stem, f"limits {limits} differ from the code's {LIMITS}")
    within = stored["wall_s"] <= limits["seconds"] and stored["peak_mb"] <= limits["peak_mb"]
    if stored.get("within_limits") is not within:
        _fail(stem, f"within_limits is {stored.get('within_limits')!r} but wall_s "
                    f"{stored['wall_s']} and peak_mb {stored['peak_mb']} say {within}")
    _check_protocol(stem, stored.get("evaluate", {}).get("protocol", {}), skip=("seeds",))


def _check_protocol(stem: str, protocol: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """The protocol an evaluation recorded is the code's default (but for ``skip``) and
    names only registered methods."""
    from toyrec_helpers.evaluate import EvalConfig
    from toyrec_helpers.evaluate.methods import method_names

    for key, value in EvalConfig().to_dict().items():
        if key not in skip and protocol.get(key) != value:
            _fail(stem, f"protocol field {key!r} is {protocol.get(key)!r}, the code's default "
                        f"is {value!r}")
    methods = protocol.get("methods") or []
    unknown = [m for m in methods if m not in method_names()]
    if not methods or unknown:
        _fail(stem, f"methods {methods}: unknown to the registry: {unknown}")
