"""Gates declared as data (quantgate/gates.py `GateSpec`), the shared reference / champion / evaluate of
`ResampledTaskType`, and the CLI's defaults read from the models they set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantgate.backends import Servable
from quantgate.evaluate import parity_report
from quantgate.gates import (
    CHAMPION,
    EXPECTATION,
    HELDOUT_SIZE,
    OBJECTIVE_SPEED,
    SPEED,
    GateReport,
    GateResult,
    GateSpec,
    build_gates,
    evaluate_gates,
)
from quantgate.heldout import HeldoutSchema
from quantgate.quantize import get_recipe
from quantgate.search import QUANTIZABLE_GATE, CandidateResult, SearchBudget
from quantgate.stats import bootstrap_indices, percentile_interval
from quantgate.tasktypes import Comparison, ResampledTaskType, TaskMetric, task_types
from quantgate.thresholds import GateThresholds, gates_for
from tests.conftest import scored_candidate


def test_a_declaration_is_built_with_the_limits_value_and_keeps_its_direction_bound_and_kind():
    spec = GateSpec(name="mean cosine", metric="mean_cosine", op=">=", limit="min_mean_cosine", judge="lower")
    (gate,) = build_gates([spec], GateThresholds(min_mean_cosine=0.97))
    assert (gate.name, gate.metric, gate.op, gate.limit, gate.judge, gate.kind) == (
        "mean cosine", "mean_cosine", ">=", 0.97, "lower", "accuracy",
    )  # fmt: skip


def test_the_registered_expectation_gates_exist_only_when_the_registration_set_both_values():
    assert build_gates(EXPECTATION, GateThresholds()) == []
    assert build_gates(EXPECTATION, GateThresholds(expect_metric=0.8)) == []
    low, high = build_gates(EXPECTATION, GateThresholds(expect_metric=0.8, expect_tolerance=0.05))
    assert (low.op, low.limit, high.op, high.limit) == (">=", pytest.approx(0.75), "<=", pytest.approx(0.85))


def test_the_champion_slowdown_is_judged_as_a_ratio():
    _, slowdown = build_gates(CHAMPION, GateThresholds(max_champion_slowdown=0.2))
    assert (slowdown.metric, slowdown.limit) == ("p50_ratio_vs_champion", pytest.approx(1.2))


@pytest.mark.parametrize("name", sorted(task_types()))
def test_every_task_type_reads_in_the_same_order_held_out_size_first_speed_last(name):
    task = task_types()[name]
    assert task.gate_specs[0] == HELDOUT_SIZE
    assert task.gate_specs[-2:] == (SPEED, OBJECTIVE_SPEED)
    gates = gates_for(task, GateThresholds())
    assert len({g.name for g in gates}) == len(gates)  # no gate twice


def _lead(*failed: tuple[GateSpec | None, float | None], rows: int = 100) -> CandidateResult:
    results = []
    for spec, value in failed:
        gate = QUANTIZABLE_GATE if spec is None else build_gates([spec], GateThresholds())[0]
        results.append(GateResult(gate=gate, value=value, passed=False, margin=None))
    evaluation = {
        "task_metric": "m",
        "task_metric_fp32": 0.5,
        "task_metric_candidate": 0.5,
        "parity": parity_report(np.zeros((2, 2)), np.zeros((2, 2)), 0.1, 0.1),
        "seconds": 0.0,
        "rows": rows,
    }
    return scored_candidate(
        get_recipe("dynamic-int8"), evaluation=evaluation, gates=GateReport(results=results)
    )


def test_the_rejection_reason_follows_what_each_gate_declares_not_its_metric_name():
    from quantgate.report import rejection_reason

    renamed = HELDOUT_SIZE.model_copy(update={"metric": "some_other_width"})
    reason, needed = rejection_reason(_lead((renamed, 0.2)))
    assert reason == "heldout-too-small"
    assert needed == 1600  # 0.2 wide on 100 rows; half the limit (0.05) takes 16 times the rows
    assert rejection_reason(_lead((None, 0.0))) == ("nothing-to-quantize", None)
    baseline = GateSpec(name="b", metric="x", op=">=", limit="min_baseline_metric", kind="evidence")
    assert rejection_reason(_lead((baseline, 0.0))) == ("baseline-not-meaningful", None)
    assert rejection_reason(_lead((SPEED, 0.5))) == ("gates-failed", None)


class _Echo(ResampledTaskType):
    """A family whose model output is the held-out column `x` plus the servable's path length: enough to
    check the shared reference / champion / evaluate without a model."""

    name = "echo"
    schema = HeldoutSchema(columns={"x": "score", "y": "score"})
    metric = TaskMetric(name="mae", higher_is_better=False)

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> np.ndarray:
        return heldout["x"].to_numpy(dtype=np.float64) + len(model.path.name) / 100

    def score(self, predicted, assets, heldout, idx):
        errors = np.abs(heldout["y"].to_numpy(dtype=np.float64) - predicted)
        return float(errors.mean()), errors[idx].mean(axis=1)

    def compare(self, reference, predicted, assets, heldout, thresholds):
        return Comparison(parity=parity_report({"y": reference.outputs}, {"y": predicted}, 1.0, 1.0))


def test_the_shared_evaluation_pairs_the_fp32_champion_and_candidate_resamples_in_the_metrics_direction():
    rng = np.random.default_rng(0)
    heldout = pd.DataFrame({"x": rng.normal(size=60), "y": rng.normal(size=60)})
    task = _Echo()
    reference = task.reference(Servable(Path("a.onnx")), Path(), heldout, 1)
    reference = task.score_champion(reference, "v1", Servable(Path("abc.onnx")), Path(), heldout, 1)
    ev = task.evaluate(reference, Servable(Path("abcd.onnx")), Path(), heldout, GateThresholds(), 1)
    errors = {n: np.abs(heldout["y"] - heldout["x"] - n / 100).to_numpy() for n in (6, 8, 9)}
    idx = bootstrap_indices(60)
    assert ev.task_metric_fp32 == pytest.approx(errors[6].mean())
    assert ev.task_metric_champion == pytest.approx(errors[8].mean())
    assert ev.task_metric_candidate == pytest.approx(errors[9].mean())
    # lower is better: the drop is candidate minus FP32 on the same resamples
    expected = percentile_interval(errors[9][idx].mean(axis=1) - errors[6][idx].mean(axis=1))
    assert ev.task_metric_drop_interval == pytest.approx(expected)
    assert ev.higher_is_better is False
    assert ev.rows == 60
    assert evaluate_gates(ev.metrics(), []).results == []


def test_the_cli_shows_the_defaults_the_models_declare():
    import inspect

    from quantgate.bench import BenchSettings
    from quantgate.cli import run

    params = inspect.signature(run).parameters
    budget, bench = SearchBudget(), BenchSettings()
    for flag in ("max_candidates", "max_trials", "max_seconds", "calibration_rows", "max_eval_rows"):
        assert params[flag].default == getattr(budget, flag)
    assert (params["threads"].default, params["repeats"].default) == (bench.threads, bench.repeat_runs)


def test_a_task_type_written_to_the_older_protocol_is_refused_when_registered():
    from quantgate.errors import ConfigError
    from quantgate.tasktypes import register_task_type

    class Old:
        name = "old-protocol"

        def gates(self, thresholds):
            return []

    with pytest.raises(ConfigError, match=r"'old-protocol' declares no `gate_specs` \(it has the older"):
        register_task_type(Old())
