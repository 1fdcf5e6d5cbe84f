"""Bring benchmark JSON files of an older layout to the current one, keeping every measurement.

Version 1 (files written before the ``format`` field existed) named the summary keys
``{impl}_over_loop_{order}_{adapt}`` (speed-up) and ``{impl}_{order}_{adapt}_mem_over_loop``
(peak-memory ratio), and compared the speed of ``all_sparse`` with the *sparse* loop, where
the current summary compares it with the dense loop, as the memory ratio always did
(:func:`toyrec_helpers.bench.run.summary`).

The conversion leaves every measured field as it is (the rows, the latency, the checks, the
settings), checks that each version-1 summary value is what the version-1 rule gives from
the rows, recomputes the summary with the current rule, adds ``format`` and ``version``,
and records in ``converted_from`` what it did, with the old summary verbatim. A file
already in the current format is left alone. Usage::

    python -m toyrec_helpers.bench.convert book/results/bench_gpu_*.json

Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toyrec_helpers.bench.run import FORMAT, VERSION, summary
from toyrec_helpers.fileio import write_json_atomic

__all__ = ["convert_file", "convert_payload", "main"]

def _v1_summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The summary as version 1 computed it: speed over the loop of the same order and
    adaptation, memory over the dense loop (``head``: the head loop)."""
    by = {(r["impl"], r["order"], r["adapt"]): r for r in rows}
    out: dict[str, float | None] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for (impl, order, adapt), row in by.items():
        loop = by.get(("loop", order, adapt))
        dense = by.get(("loop", order, "head" if adapt == "head" else "all_dense"))
        if impl == "loop" or loop is None or dense is None:
            continue
        out[f"{impl}_over_loop_{order}_{adapt}"] = ratio(row["tasks_per_s"],
                                                         loop["tasks_per_s"])
        out[f"{impl}_{order}_{adapt}_mem_over_loop"] = ratio(row["peak_mem_mb"],
                                                             dense["peak_mem_mb"])
    return out


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def convert_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The current-format version of a benchmark result (a dict read from its JSON).

    Parameters
    ----------
    payload : dict
        A version-1 or current-version result of :func:`toyrec_helpers.bench.run_bench`.

    Returns
    -------
    dict
        The payload itself if it is current; otherwise a new dict with ``format``,
        ``version`` and ``converted_from`` first, every other field unchanged and the
        summary under the current key names.

    Raises
    ------
    ValueError
        An unknown format or version, or a stored summary that the rows do not give.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    if "format" in payload:
        if payload["format"] != FORMAT or payload.get("version") != VERSION:
            raise ValueError(f"unknown benchmark format {payload['format']!r} version "
                             f"{payload.get('version')!r}; this code reads {FORMAT!r} "
                             f"version {VERSION} and converts version 1")
        return payload
    if not isinstance(payload.get("results"), list) or not isinstance(payload.get("summary"),
                                                                       dict):
        raise ValueError("not a benchmark result: no 'results' list and 'summary' dict")
    old_summary = payload["summary"]
    expected = _v1_summary(payload["results"])
    if set(old_summary) != set(expected) or not all(
            _same(v, expected[k]) for k, v in old_summary.items()):
        raise ValueError("the stored summary is not the version-1 summary of the stored rows; "
                         "refusing to convert")
    converted = {
        "format": FORMAT,
        "version": VERSION,
        "converted_from": {
            "version": 1,
            "by": "python -m toyrec_helpers.bench.convert",
            "note": "measurements unchanged; summary recomputed from the rows with the "
                    "current rule (keys renamed, ..._speedup_best added, all_sparse speed "
                    "now over the dense loop); the version-1 summary (all_sparse speed over "
                    "the sparse loop) is kept here",
            "summary": old_summary,
        },
    }
    converted.update({k: v for k, v in payload.items() if k != "summary"})
    converted["summary"] = summary(payload["results"])
    return converted


def convert_file(path: str | os.PathLike[str]) -> bool:
    """Convert one benchmark JSON file in place (atomically).

    Returns
    -------
    bool
        ``True`` if the file was converted, ``False`` if it was already current.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    converted = convert_payload(payload)
    if converted is payload:
        return False
    write_json_atomic(path, converted)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toyrec_helpers.bench.convert FILE ...``.

    Introduced in chapter 10 (book/10_gpu_acceleration.ipynb).
    """
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m toyrec_helpers.bench.convert FILE ...", file=sys.stderr)
        return 2
    for path in paths:
        done = convert_file(path)
        print(f"{path}: {'converted to' if done else 'already'} {FORMAT} version {VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
