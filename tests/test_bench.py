"""Tests for the format of toyrec_helpers.bench results: the stored GPU files have exactly the
keys that the current code writes, and the converter of older files keeps every measurement."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from toyrec_helpers.bench import FORMAT, VERSION, run_bench
from toyrec_helpers.bench.convert import convert_file, convert_payload

RESULTS = Path(__file__).resolve().parent.parent / "book" / "results"
STORED = ["bench_gpu_melu_mb256.json", "bench_gpu_melu_mb32.json"]


def stored(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def quick() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # every configuration; an identity "compiler" stands in for torch.compile
        return run_bench(quick=True, meta_batch=2, compiler=lambda fn: fn, latency_repeats=1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", STORED)
def test_stored_files_have_the_keys_of_a_current_run(quick, name):
    file = stored(name)
    assert file["format"] == quick["format"] == FORMAT
    assert file["version"] == quick["version"] == VERSION
    assert quick["converted_from"] is None
    assert list(file) == list(quick)  # top level, in order
    assert {tuple(row) for row in file["results"]} == {tuple(quick["results"][0])}
    impls = {row["impl"] for row in file["results"]}
    current = [k for k in quick["summary"] if k.split("_")[0] in impls]
    assert list(file["summary"]) == current
    assert set(file["checks"]) == set(quick["checks"])


@pytest.mark.parametrize("name", STORED)
def test_conversion_keeps_every_measurement(name, tmp_path):
    file = stored(name)
    # The version-1 file the stored one was converted from.
    old = {k: v for k, v in file.items() if k not in ("format", "version", "converted_from")}
    old["summary"] = file["converted_from"]["summary"]
    converted = convert_payload(copy.deepcopy(old))
    assert converted == file
    assert all(converted[k] == v for k, v in old.items() if k != "summary")
    assert convert_payload(file) is file  # already current
    path = tmp_path / name
    path.write_text(json.dumps(old, indent=2) + "\n", encoding="utf-8")
    assert convert_file(path) is True and json.loads(path.read_text()) == file
    assert convert_file(path) is False


def test_conversion_refuses_what_the_rows_do_not_give():
    old = {k: v for k, v in stored(STORED[1]).items()
           if k not in ("format", "version", "converted_from")}
    old["summary"] = dict(stored(STORED[1])["converted_from"]["summary"])
    key = next(iter(old["summary"]))
    old["summary"][key] *= 1.01
    with pytest.raises(ValueError, match="refusing"):
        convert_payload(old)
    with pytest.raises(ValueError, match="version 7"):
        convert_payload({"format": FORMAT, "version": 7})
