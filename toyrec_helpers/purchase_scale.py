"""How long ``evaluate`` takes, and how much memory it needs, on a large purchase log.

:func:`run_purchase_scale` writes a synthetic purchase log
(:func:`~toyrec_helpers.purchases.synthetic_purchase_log`, by default 20,000 shoppers,
12,000 toys and 170,000 purchases: the size of a small online shop's log), then runs
``python -m toyrec_helpers evaluate`` on it in a child process, exactly as a reader would,
and records the wall-clock time and the child's peak resident memory. The command
``python -m toyrec_helpers bench-purchases --json FILE`` stores the result.

Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toyrec_helpers.fileio import write_json_atomic

__all__ = ["LIMITS", "RESULT_WHAT", "check_scale_json", "format_purchase_scale",
           "run_purchase_scale"]

LIMITS = {"seconds": 600.0, "peak_mb": 2048.0}
"""What the run should stay within on two CPU cores: 10 minutes and 2 GB."""


RESULT_WHAT = "python -m toyrec_helpers evaluate on a synthetic purchase log"
"""The ``what`` field of every result of :func:`run_purchase_scale` (how a stored file is
recognised as one)."""


def check_scale_json(path: str | os.PathLike[str]) -> Path:
    """``path`` if :func:`run_purchase_scale` may write it: absent, or a previous result
    of it (nothing else the user owns is replaced).

    Raises
    ------
    FileExistsError
        Otherwise.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path}: is a directory; expected a file name for the JSON")
    if path.exists():
        try:
            ours = json.loads(path.read_text(encoding="utf-8")).get("what") == RESULT_WHAT
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{path}: exists and is not a result of bench-purchases; "
                                  "refusing to replace it")
    return path


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_purchase_scale(
    users: int = 20_000, items: int = 12_000, purchases: int = 170_000, shards: int = 10,
    seed: int = 0, seeds: int = 1, ks: Sequence[int] = (1, 3, 5, 10),
    methods: Sequence[str] | None = None, threads: int = 2,
    json_path: str | os.PathLike[str] | None = None, data: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Time ``evaluate`` on a synthetic purchase log and measure its peak memory.

    Parameters
    ----------
    users, items, purchases, shards, seed
        The log (:func:`~toyrec_helpers.purchases.synthetic_purchase_log`); ignored when
        ``data`` is given.
    seeds : int
        Training seeds of ``evaluate`` (``--seeds``).
    ks : sequence of int
        Support sizes (``--k``).
    methods : sequence of str, optional
        ``--methods`` (default: every method the data can serve).
    threads : int
        ``--threads`` (torch CPU threads; default 2, the two cores of the budget).
    json_path : path, optional
        Also write the result there (atomically).
    data : path, optional
        An existing data directory to evaluate instead of a new synthetic log.

    Returns
    -------
    dict
        ``data`` (sizes), ``command``, ``wall_s``, ``cpu_s`` (the child's user + system
        CPU time: what the run costs on an idle machine, whatever else shares the cores),
        ``peak_mb`` (the child's maximum resident set size), ``returncode``, ``limits``
        and ``within_limits``, the machine (``cpus``, ``load_before``, ``load_after``,
        versions), and ``evaluate`` (the JSON that ``evaluate`` wrote: its protocol and
        summary).

    Raises
    ------
    RuntimeError
        If ``evaluate`` fails (its last output lines are in the message).
    FileExistsError
        If ``json_path`` exists and is not a previous result (:func:`check_scale_json`).

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    import torch

    from toyrec_helpers.data import load_dataset
    from toyrec_helpers.purchases import synthetic_purchase_log

    if json_path is not None:
        check_scale_json(json_path)
    with tempfile.TemporaryDirectory(prefix="purchase_scale.") as tmp:
        start = time.perf_counter()
        if data is None:
            data = synthetic_purchase_log(Path(tmp) / "log", users=users, items=items,
                                          purchases=purchases, shards=shards, seed=seed)
        made_s = time.perf_counter() - start
        summary = load_dataset(data).summary()
        out_json = Path(tmp) / "evaluate.json"
        command = [sys.executable, "-m", "toyrec_helpers", "evaluate", "--data", str(data),
                   "--seeds", str(seeds), "--k", *map(str, ks), "--threads", str(threads),
                   "--no-progress", "--json", str(out_json)]
        if methods:
            command += ["--methods", *methods]
        load_before = _load()
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
        cpu_s = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"evaluate failed (exit {proc.returncode}):\n{tail}")
        evaluated = json.loads(out_json.read_text(encoding="utf-8"))
    result = {
        "what": RESULT_WHAT,
        "data": {k: summary[k] for k in ("name", "users", "items", "purchases",
                                         "distinct_pairs") if k in summary},
        "data_seconds": round(made_s, 1),
        "command": " ".join(["python", *command[1:]]).replace(str(data), "<log>").replace(
            str(out_json), "<json>"),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu_s, 1),
        "peak_mb": round(peak_mb, 1),
        "returncode": proc.returncode,
        "limits": dict(LIMITS),
        "within_limits": wall <= LIMITS["seconds"] and peak_mb <= LIMITS["peak_mb"],
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_before": load_before,
        "load_after": _load(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stdout_head": [line.replace(str(data), "<log>")
                        for line in proc.stdout.splitlines()[:6]],
        "evaluate": {"protocol": evaluated["protocol"], "summary": evaluated["summary"]},
    }
    if json_path is not None:
        write_json_atomic(Path(json_path), result)
    return result


def format_purchase_scale(result: dict[str, Any]) -> str:
    """A few lines that summarise :func:`run_purchase_scale`'s result.

    Introduced in chapter 1 (book/01_cold_start_problem.ipynb).
    """
    d = result["data"]
    lines = [
        f"data: {d.get('users')} shoppers, {d.get('items')} toys, {d.get('purchases')} "
        f"purchases (made in {result['data_seconds']} s)",
        f"evaluate: {result['wall_s']} s wall, {result['cpu_s']} s CPU, peak memory "
        f"{result['peak_mb']} MB "
        f"(limits {result['limits']['seconds']:g} s, {result['limits']['peak_mb']:g} MB: "
        f"{'within' if result['within_limits'] else 'NOT within'}); {result['cpus']} CPUs, "
        f"load {result['load_before']} -> {result['load_after']}",
        f"methods: {', '.join(result['evaluate']['protocol']['methods'])}",
    ]
    return "\n".join(lines)
