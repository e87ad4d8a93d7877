"""The seams hold: a task type and a backend that quantgate does not ship (tests/plugins/) run through
the real flow on real SeaweedFS, with their own metrics, gates, report columns and artifacts, and without
an edit to gates.py, report.py, plots.py, cli.py or the flows."""

from __future__ import annotations

import json

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import Manifest, ModelRef, manifest_key
from quantgate.thresholds import GateThresholds
from tests.conftest import TINY_GATES
from tests.plugins.copy_backend import CopyRecipe
from tests.plugins.toy_regression import TOY_REGRESSION, train

FAST_BENCH = BenchSettings(warmup_runs=2, repeat_runs=15)
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-regression")
    train(root / "model", root / "heldout.csv")
    return root / "model", root / "heldout.csv"


# MAE is in the target's units (diabetes progression, std ~77): the drop limits are set in those units.
TOY_GATES = GateThresholds(
    min_p95_speedup=0.0,
    min_objective_speedup=0.0,
    max_task_metric_drop=3.0,
    max_slice_drop=3.0,
    max_baseline_half_width=20.0,
    abs_tol=50.0,
    mean_tol=5.0,
)


def test_a_backend_quantgate_does_not_ship_builds_and_promotes_through_the_real_flow(
    store, tiny_model_dir, small_sts
):
    ref = ModelRef(name="tiny", version="copy")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        recipes=[CopyRecipe(name="copy-fp32", note="an exact copy")],
        thresholds=TINY_GATES,
        bench=FAST_BENCH,
        return_state=True,
    )
    assert state.name == "Promoted", state.message
    manifest = Manifest.model_validate_json(store.get_bytes(manifest_key(ref)))
    assert manifest.recipe["backend"] == "copy-fp32"
    assert manifest.recipe["note"] == "an exact copy"  # the backend's own field round-trips
    files = {f.path.split("/", 1)[1] for f in manifest.files}
    assert "model.copy.onnx" in files
    report = json.loads(store.get_bytes(f"promoted/{ref.name}/{ref.version}/{manifest.run_id}/report.json"))
    assert report["metrics"]["max_abs_diff"] == 0.0  # a copy: nothing moved
    assert report["quantized_ops"] == {}


def test_a_task_type_quantgate_does_not_ship_is_judged_by_its_own_metric_and_gates(store, toy_model):
    model_dir, heldout = toy_model
    ref = ModelRef(name="toy", version="v1")
    lifecycle.register(store, ref, model_dir, heldout, TOY_REGRESSION.name)
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        recipes=["dynamic-int8", "dynamic-int8-per-channel"],
        thresholds=TOY_GATES,
        bench=FAST_BENCH,
        return_state=True,
    )
    assert state.name == "Promoted", state.message
    report = state.result()
    assert report["task"] == "toy-regression"
    gates = {r["gate"]["name"]: r for r in report["gates"]["results"]}
    assert gates["FP32 beats the mean"]["passed"]  # its own evidence gate, from its own limit
    assert gates["FP32 beats the mean"]["gate"]["limit"] == pytest.approx(0.9)
    assert "prediction shift" in gates
    assert "mean cosine" not in gates  # no embedding gate forced on a task without embeddings
    metrics = report["metrics"]
    # Lower is better: the drop is candidate MAE minus FP32 MAE.
    assert metrics["task_metric_drop"] == pytest.approx(
        metrics["task_metric_candidate"] - metrics["task_metric_fp32"]
    )
    assert report["thresholds"]["max_mae_vs_mean"] == pytest.approx(0.9)  # recorded with its value


def test_a_task_types_own_limit_rejects_what_it_should(store, toy_model):
    model_dir, heldout = toy_model
    ref = ModelRef(name="toy", version="strict")
    lifecycle.register(store, ref, model_dir, heldout, TOY_REGRESSION.name)
    strict = TOY_GATES.model_copy(update={"max_prediction_shift": 1e-9})
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        recipes=["dynamic-int8"],
        thresholds=strict,
        bench=FAST_BENCH,
        budget={"max_trials": 0},
        return_state=True,
    )
    assert state.name == "NotPromoted", state.message
    failed = [r["gate"]["name"] for r in state.result()["gates"]["results"] if not r["passed"]]
    assert "prediction shift" in failed
    assert not list(store.list(f"promoted/{ref.name}/{ref.version}/"))
