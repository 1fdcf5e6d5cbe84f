"""The result files in book/results/ are what the commands wrote, for the current protocol.

They are produced by ``python -m toyrec_helpers evaluate`` and ``bench`` and never edited by
hand; these tests fail when the protocol in the code moves away from the stored results
(then the file must be regenerated with the command) or when a file lacks its provenance.
"""

import json
from pathlib import Path

import pytest

from toyrec_helpers.evaluate import METHODS, METRICS, EvalConfig

RESULTS = Path(__file__).resolve().parent.parent / "book" / "results"


def test_stored_evaluation_matches_the_current_default_protocol():
    stored = json.loads((RESULTS / "evaluate_toyshop.json").read_text(encoding="utf-8"))
    assert set(stored) == {"data", "protocol", "summary"}
    protocol = stored["protocol"]
    for key, value in EvalConfig().to_dict().items():
        assert protocol[key] == value, f"protocol field {key!r} differs: regenerate the file"
    assert EvalConfig.from_dict(protocol) == EvalConfig()
    assert protocol["methods"] == list(METHODS)
    rows = {(r["method"], r["k"], r["metric"]) for r in stored["summary"]}
    for method in METHODS:
        for k in protocol["ks"]:
            for metric in METRICS:
                if method == "popularity_count" and metric in ("mae", "rmse"):
                    assert (method, k, metric) not in rows
                else:
                    assert (method, k, metric) in rows
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in stored["summary"])


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
