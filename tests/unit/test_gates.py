import math

import pytest
from pydantic import ValidationError

from quantgate.gates import Gate, GateThresholds, evaluate_gates

GOOD = {
    "task_metric_drop": 0.002,
    "mean_cosine": 0.993,
    "min_cosine": 0.97,
    "neighbour_agreement": 0.94,
    "max_abs_diff": 0.04,
    "mean_abs_diff": 0.005,
    "p95_speedup_vs_onnx_fp32": 2.0,
}


def test_all_metrics_inside_limits_pass():
    report = evaluate_gates(GOOD, GateThresholds().to_gates())
    assert report.passed
    assert len(report.results) == 7
    assert all(r.margin is not None and r.margin >= 0 for r in report.results)


def test_embedding_drift_fails_even_when_task_metric_holds():
    # The measured MiniLM per-tensor case: Spearman drop 0.34 points, mean cosine 0.963.
    metrics = {**GOOD, "task_metric_drop": 0.0034, "mean_cosine": 0.963}
    report = evaluate_gates(metrics, GateThresholds().to_gates())
    assert not report.passed
    assert [r.gate.metric for r in report.failed] == ["mean_cosine"]
    assert report.failed[0].margin == pytest.approx(0.963 - 0.98)


def test_task_metric_drop_fails_even_when_embeddings_are_close():
    report = evaluate_gates({**GOOD, "task_metric_drop": 0.02}, GateThresholds().to_gates())
    assert [r.gate.metric for r in report.failed] == ["task_metric_drop"]


def test_limit_is_inclusive():
    gate = Gate(name="g", metric="m", op="<=", limit=0.01)
    assert evaluate_gates({"m": 0.01}, [gate]).passed
    assert not evaluate_gates({"m": 0.0100001}, [gate]).passed


@pytest.mark.parametrize("value", [None, math.nan, math.inf])
def test_missing_or_non_finite_metric_fails_its_gate(value):
    metrics = dict(GOOD)
    if value is None:
        del metrics["mean_cosine"]
    else:
        metrics["mean_cosine"] = value
    report = evaluate_gates(metrics, GateThresholds().to_gates())
    assert not report.passed
    assert report.failed[0].gate.metric == "mean_cosine"


def test_no_gates_never_passes():
    assert not evaluate_gates(GOOD, []).passed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_task_metric_drop", -0.1),
        ("min_mean_cosine", math.nan),
        ("abs_tol", 0),
        ("min_p95_speedup", -1),
        ("mean_tol", math.inf),
        ("min_neighbour_agreement", 1.5),
    ],
)
def test_nonsense_thresholds_are_refused(field, value):
    with pytest.raises(ValidationError):
        GateThresholds(**{field: value})


def test_unknown_threshold_name_is_refused():
    with pytest.raises(ValidationError):
        GateThresholds(min_cosine_typo=0.5)


def test_every_threshold_is_a_gate_except_the_export_check():
    limits = {g.limit for g in GateThresholds().to_gates()}
    fields = GateThresholds().model_dump()
    fields.pop("export_atol")
    assert set(fields.values()) <= limits
