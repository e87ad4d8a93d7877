"""The build and prediction caches through the real flow: a second version with the same weights and
held-out set takes its candidates' builds and every model's outputs from the caches, and is decided exactly
as the first (same gates, same metrics, same promoted files); with the caches off, everything is computed
again. Both engines, since their builds and artifacts differ."""

from __future__ import annotations

import json

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from tests.conftest import TINY_GATES

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param("dynamic-int8-per-channel", id="onnxruntime"),
        pytest.param("ov-nncf-int8-transformer", id="openvino"),
    ],
)
def test_a_second_version_with_the_same_weights_reuses_builds_and_outputs_and_is_decided_the_same(
    memory_env, monkeypatch, tmp_path, tiny_model_dir, small_sts, recipe
):
    if recipe.startswith("ov-"):
        pytest.importorskip("openvino")
    monkeypatch.setenv("QUANTGATE_CACHE_DIR", str(tmp_path / "cache"))  # empty: the first run misses
    store = memory_env()
    run = {
        "recipes": [recipe],
        "thresholds": TINY_GATES,
        "bench": BenchSettings(warmup_runs=1, repeat_runs=5),
        "budget": SearchBudget(max_trials=0),
    }
    reports = {}
    for version in ("v1", "v2", "v3"):
        if version == "v3":
            monkeypatch.setenv("QUANTGATE_BUILD_CACHE", "false")
            monkeypatch.setenv("QUANTGATE_PREDICTION_CACHE", "false")
        ref = ModelRef(name="same", version=version)
        lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
        state = quantize_and_promote(model=ref.name, version=version, **run, return_state=True)
        assert state.name == "Promoted", state.message
        reports[version] = json.loads(lifecycle.read_promoted_file(store, ref, "report.json"))
    cached = {v: reports[v]["search"]["candidates"][0]["build_cached"] for v in reports}
    assert cached == {"v1": False, "v2": True, "v3": False}
    assert len(list((tmp_path / "cache" / "predictions").iterdir())) >= 2  # the FP32 and the candidate
    for version in ("v2", "v3"):
        # Same evidence: the candidate's evaluation (metric, intervals, parity, slices, examples) is v1's to
        # the last digit, and so is every gate that judges it; only timings and the champion (v1) differ.
        first, again = (reports[v]["search"]["candidates"][0] for v in ("v1", version))
        assert _accuracy(again["evaluation"]) == _accuracy(first["evaluation"])
        assert _judged(again) == _judged(first)
    manifests = {v: lifecycle.load_manifest(store, ModelRef(name="same", version=v)) for v in ("v1", "v2")}
    # The promoted artifact (model, settings, external data) and its parity report: the same bytes.
    promoted = {v: _artifact(m.files) for v, m in manifests.items()}
    assert len(promoted["v1"]) >= 3, promoted
    assert promoted["v2"] == promoted["v1"]


def _artifact(files: list) -> dict[str, str]:
    """The promoted model files and parity report by name (under the run's own folder), with sha256."""
    named = {f.path.split("/", 1)[1]: f.sha256 for f in files}
    return {name: sha for name, sha in named.items() if name.startswith(("model.", "parity"))}


CHAMPION_OR_TIME = {"seconds", "champion_version", "task_metric_champion", "champion_drop_interval"}


def _accuracy(evaluation: dict) -> dict:
    return {k: v for k, v in evaluation.items() if k not in CHAMPION_OR_TIME}


def _judged(candidate: dict) -> list[tuple]:
    """(gate, passed, value) of each gate that judges the candidate's outputs, not its speed or a champion."""
    return [
        (r["gate"]["name"], r["passed"], r.get("value"))
        for r in candidate["gates"]["results"]
        if r["gate"]["metric"] in candidate["evaluation"]
        or r["gate"]["metric"] in candidate["evaluation"].get("extra", {})
    ]
