"""The result files in book/results/ are what the commands wrote, for the current protocol.

They are produced by ``python -m toyrec_helpers evaluate`` and ``bench`` and never edited by
hand; these tests fail when the protocol in the code moves away from the stored results
(then the file must be regenerated with the command) or when a file lacks its provenance.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from toyrec_helpers.evaluate import METHODS, METRICS, EvalConfig, method_names
from toyrec_helpers.evaluate.paired import paired_baselines, read_per_shopper

RESULTS = Path(__file__).resolve().parent.parent / "book" / "results"


def test_stored_evaluation_matches_the_current_default_protocol():
    stored = json.loads((RESULTS / "evaluate_toyshop.json").read_text(encoding="utf-8"))
    assert set(stored) == {"data", "protocol", "summary", "paired", "per_shopper"}
    protocol = stored["protocol"]
    for key, value in EvalConfig().to_dict().items():
        assert protocol[key] == value, f"protocol field {key!r} differs: regenerate the file"
    assert EvalConfig.from_dict(protocol) == EvalConfig()
    registry = list(method_names())  # the built-in methods ran, in the registry's order
    assert set(METHODS) <= set(protocol["methods"])
    assert protocol["methods"] == [m for m in registry if m in protocol["methods"]]
    rows = {(r["method"], r["k"], r["metric"]) for r in stored["summary"]}
    for method in METHODS:
        for k in protocol["ks"]:
            for metric in METRICS:
                if method == "popularity_count" and metric in ("mae", "rmse"):
                    assert (method, k, metric) not in rows
                else:
                    assert (method, k, metric) in rows
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in stored["summary"])


def test_stored_evaluation_has_its_per_shopper_values_and_paired_differences():
    path = RESULTS / "evaluate_toyshop.json"
    stored = json.loads(path.read_text(encoding="utf-8"))
    values, users, seeds = read_per_shopper(path)  # checks the SHA-256 the JSON records
    protocol = stored["protocol"]
    assert list(seeds) == protocol["seeds"] and len(users) == protocol["users"]["evaluated"]
    summary = {(r["method"], r["k"], r["metric"]): r for r in stored["summary"]}
    assert set(values) == set(summary)
    for key, v in values.items():  # the summary's means are the stored values' means
        mean = np.nanmean(v.mean(axis=0))
        assert abs(mean - summary[key]["mean"]) < 1e-6, key
    paired = {(r["method"], r["baseline"], r["k"], r["metric"]): r for r in stored["paired"]}
    for (method, k, metric), v in values.items():
        for baseline in paired_baselines(metric):
            if baseline == method or (baseline, k, metric) not in values:
                continue
            row = paired[(method, baseline, k, metric)]
            diff = v.mean(axis=0) - values[(baseline, k, metric)].mean(axis=0)
            assert abs(np.nanmean(diff) - row["mean"]) < 1e-6
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert not any(edge for edges in protocol["tuned"]["lr_edge"].values() for edge in edges)


@pytest.mark.parametrize("name", ["bench_gpu_melu_mb256.json", "bench_gpu_melu_mb32.json"])
def test_gpu_bench_files_carry_their_provenance(name):
    stored = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    assert "NVIDIA" in stored["device"] and stored["device_type"] == "cuda"
    assert stored["torch"] and stored["date"].startswith("20")
    for row in stored["results"]:
        assert row["impl"] in ("loop", "vmap", "compiled")
        assert row["order"] in ("second", "first")
        assert row["adapt"] in ("all_dense", "all_sparse", "head")
        assert (row["tasks_per_s"] or 0) > 0 or row["error"], row


# The stored results ship with the package (toyrec_helpers.stored_results), from one copy.


def test_the_package_reads_the_one_copy_in_book_results():
    from toyrec_helpers import stored_results

    link = Path(stored_results.__file__).parent / "results"
    assert link.is_symlink() and link.resolve() == RESULTS.resolve()
    assert stored_results.names() == sorted(p.stem for p in RESULTS.glob("*.json"))
    for name in stored_results.names():
        assert stored_results.path(name).read_bytes() == (RESULTS / f"{name}.json").read_bytes()
        assert stored_results.load(name, check=False) == json.loads(
            (RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    with pytest.raises(FileNotFoundError, match="evaluate_toyshop"):
        stored_results.path("evaluate_nowhere")


def test_the_wheel_takes_the_stored_results_as_package_data():
    import tomllib

    pyproject = tomllib.loads((RESULTS.parent.parent / "pyproject.toml").read_text())
    assert "results/*.json" in pyproject["tool"]["setuptools"]["package-data"]["toyrec_helpers"]


@pytest.mark.parametrize("name", ["bench_gpu_melu_mb256", "bench_gpu_melu_mb32"])
def test_loading_a_gpu_bench_file_checks_its_provenance(name):
    from toyrec_helpers.stored_results import check_provenance, load

    stored = load(name)  # passes the checks
    for change, why in [({"device": "cpu", "device_type": "cpu"}, "not an NVIDIA GPU"),
                        ({"date": ""}, "date is missing"),
                        ({"results": [{**stored["results"][0], "impl": "magic"}]}, "unknown"),
                        ({"results": [{**stored["results"][0], "tasks_per_s": 0, "error": None}]},
                         "neither a throughput")]:
        with pytest.raises(ValueError, match=why):
            check_provenance(name, {**stored, **change})


def test_the_purchase_log_benches_are_the_runs_the_book_reports():
    """The 20,000-shopper purchase-log runs (bench-purchases): every ranking method within
    ten minutes and 2 GB on two cores, with the current protocol; the check catches a file
    whose verdict does not follow from its numbers."""
    from toyrec_helpers.stored_results import check_provenance, load

    full, base = load("bench_purchases_20k"), load("bench_purchases_20k_baselines")
    for run in (full, base):
        assert run["data"] == {"name": run["data"]["name"], "users": 20_000, "items": 12_000,
                               "purchases": 170_000, "distinct_pairs": 170_000}
        assert run["cpus"] == 2 and run["threads"] == 2 and run["within_limits"]
        assert run["evaluate"]["protocol"]["seeds"] == [0]
    assert {"popularity_count", "itemknn", "choice_global", "choice_finetune", "choice_fomaml",
            "choice_maml"} <= set(full["evaluate"]["protocol"]["methods"])
    with pytest.raises(ValueError, match="within_limits"):
        check_provenance("bench_purchases_x", {**full, "wall_s": 601.0})
    with pytest.raises(ValueError, match="protocol field 'ks'"):
        check_provenance("bench_purchases_x", {**full, "evaluate": {
            "protocol": {**full["evaluate"]["protocol"], "ks": [1]}}})


def test_the_evaluation_provenance_check_matches_this_files_check():
    """check_provenance accepts what the test above accepts and names what it rejects."""
    from toyrec_helpers.stored_results import check_provenance

    stored = json.loads((RESULTS / "evaluate_toyshop.json").read_text(encoding="utf-8"))
    current = {**stored, "protocol": {**stored["protocol"], **EvalConfig().to_dict(),
                                      "methods": list(METHODS)}}
    rows = [r for r in current["summary"] if r["method"] in METHODS]
    current["summary"] = rows
    if {(r["method"], r["k"], r["metric"]) for r in rows} >= {
            (m, k, x) for m in METHODS for k in current["protocol"]["ks"] for x in METRICS
            if not (m == "popularity_count" and x in ("mae", "rmse"))}:
        check_provenance("evaluate_toyshop", current)
    with pytest.raises(ValueError, match="protocol field 'ks'"):
        check_provenance("evaluate_x", {**current, "protocol": {**current["protocol"], "ks": [1]}})
    with pytest.raises(ValueError, match="expected the keys"):
        check_provenance("evaluate_x", {"summary": []})
    bad = [{**rows[0], "mean": rows[0]["ci_high"] + 1}, *rows[1:]]
    with pytest.raises(ValueError, match="outside its interval|missing"):
        check_provenance("evaluate_x", {**current, "summary": bad})
    with pytest.raises(ValueError, match="missing"):
        check_provenance("evaluate_x", {**current, "summary": rows[1:]})


def test_an_installed_copy_of_the_package_reads_its_stored_results(tmp_path):
    """As on Colab: a copy of the package (the link followed, as the wheel does) away from
    the repository reads the stored results from inside itself."""
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    shutil.copytree(RESULTS.parent.parent / "toyrec_helpers", site / "toyrec_helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "toyrec_helpers" / "results").is_symlink()
    code = ("from toyrec_helpers import stored_results as s; "
            "print(s.path('bench_gpu_melu_mb32')); print(s.load('bench_gpu_melu_mb32')['device'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(site)})
    where, device = out.stdout.splitlines()
    assert Path(where).is_relative_to(site) and "NVIDIA" in device
