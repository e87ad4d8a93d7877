"""Evidence gates decide early (#23): when the FP32 reference fails an evidence gate it decides on its own
(held-out size, the FP32 baseline, the registered expectation), the search stops right after it, with the
rejection every candidate would have got, and builds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantgate import lifecycle
from quantgate.backends.onnxruntime import OrtRecipe
from quantgate.registry import ModelRef, rejection_key
from quantgate.report import (
    ExportSummary,
    HeldoutSummary,
    build_run_report,
    decision_keys,
    decision_plots,
    reason_for,
    rejection_reason,
    to_markdown,
)
from quantgate.search import CandidateResult, SearchBudget, judge_evidence
from quantgate.search_driver import SearchSteps, run_search
from quantgate.store import MemoryStore
from quantgate.tasktypes import Reference, get_task_type
from quantgate.thresholds import GateThresholds
from tests.conftest import scored_candidate

STS = get_task_type("sentence-embedding")
REF = ModelRef(name="tiny", version="ten")
EXPECT = GateThresholds(expect_metric=0.9, expect_tolerance=0.02)

# FP32 references, each as a run measured it: (task metric, its 95 % interval), the thresholds.
CASES = {
    "ten rows": ((0.4, (-0.3, 0.9)), GateThresholds()),  # half-width 0.6 > 0.1: heldout-too-small
    "shuffled scores": ((0.03, (-0.02, 0.08)), GateThresholds()),  # lower bound < 0.1: baseline
    "expectation missed": ((0.5, (0.45, 0.55)), EXPECT),  # 0.5 is not 0.9±0.02
    "too small and measures nothing": ((0.0, (-0.5, 0.5)), GateThresholds()),  # both: size first
}


def _reference(value: float, interval: tuple[float, float]) -> Reference:
    return Reference(outputs=np.zeros(1), task_metric=value, seconds=0.1, interval=interval)


def _candidate(ref: Reference, thresholds: GateThresholds) -> CandidateResult:
    """A candidate as the search scores it against this reference (`ResampledTaskType.evaluate` copies the
    reference's metric and interval), perfect on everything else: only the evidence can reject it."""
    return scored_candidate(
        "dynamic-int8",
        parity={"max_abs_diff": 0.0, "mean_abs_diff": 0.0},
        evaluation={
            "task_metric_fp32": ref.task_metric, "task_metric_candidate": ref.task_metric, "seconds": 0.1,
            "rows": 5, "task_metric_fp32_interval": ref.interval, "task_metric_drop_interval": (0.0, 0.0),
            "extra": {"mean_cosine": 1.0, "share_below_cosine_floor": 0.0, "neighbour_agreement": 1.0},
            "extra_intervals": {"share_below_cosine_floor": (0.0, 0.0), "neighbour_agreement": (1.0, 1.0)},
        },
        gates=None,  # judged by the test
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fp32_evidence_rejects_as_every_candidate_would_have_been_rejected(case):
    (value, interval), thresholds = CASES[case]
    ref = _reference(value, interval)
    evidence = judge_evidence(STS, thresholds, ref.metrics(), rows=5)
    judged = _candidate(ref, thresholds).judged(STS, thresholds)
    assert evidence.failed
    # The same gates on the same values, failing the same way ...
    early = {r.gate.name: r for r in evidence.gates.results}
    with_candidate = {r.gate.name: r for r in judged.gates.results if r.gate.name in early}
    assert early == with_candidate
    # ... and nothing else failed the candidate (judged before its benchmark round: speed aside), yet the
    # run's reason is the one today's search gave.
    failed = {r.gate.name for r in judged.gates.failed if r.gate.kind != "speed"}
    assert failed == {r.gate.name for r in evidence.gates.failed}
    assert reason_for(evidence.gates.failed, evidence.rows) == rejection_reason(judged)


def test_a_reference_that_passes_its_evidence_lets_the_search_go_on():
    ref = _reference(0.87, (0.86, 0.88))
    expected = EXPECT.model_copy(update={"expect_metric": 0.87})
    evidence = judge_evidence(STS, expected, ref.metrics(), rows=1400)
    assert not evidence.failed
    assert {r.gate.name for r in evidence.gates.results} == {
        "held-out size", "FP32 baseline", "FP32 as registered (low)", "FP32 as registered (high)",
    }  # fmt: skip
    # The drop's width is evidence too, but on a candidate's own metric: judged with each candidate.
    assert "drop interval width" not in {r.gate.name for r in evidence.gates.results}


def _no(step: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{step} ran after the FP32 reference failed its evidence")

    return refuse


def _stopped_search(tmp_path: Path, thresholds: GateThresholds = GateThresholds()):  # noqa: B008
    (value, interval), _ = CASES["ten rows"]
    steps = SearchSteps(
        reference=lambda *a: _reference(value, interval),
        score_champion=_no("the champion's scoring"),
        calibration=_no("calibration"),
        prepare=_no("backend preparation"),
        score=_no("a candidate"),
        rank=_no("node ranking"),
        benchmark=_no("the benchmark"),
        benchmark_fixed=_no("the fixed-shape benchmark"),
    )
    evaluation = pd.DataFrame({"score": [1.0] * 5})
    recipes = [OrtRecipe(name="dynamic-int8"), OrtRecipe(name="dynamic-int8-per-channel", per_channel=True)]
    return run_search(
        STS, tmp_path, tmp_path / "model.onnx", tmp_path, evaluation.iloc[:0], evaluation, recipes,
        thresholds, SearchBudget(), tmp_path, steps, champion=object(),
    )  # fmt: skip


def _report(search):
    return build_run_report(
        ref_name=REF.name, ref_version=REF.version, run_id="run-early", task=STS.name,
        export=ExportSummary(
            onnx_path=Path("model.onnx"), input_names=["input_ids"], output_names=["sentence_embedding"],
            opset=17, max_abs_diff_vs_torch={}, parity_samples=1, size_bytes=1,
        ),
        heldout=HeldoutSummary(rows=10, calibration_rows=5, evaluation_rows=5), thresholds={}, search=search,
    )  # fmt: skip


def test_a_failed_evidence_gate_stops_the_search_before_the_champion_and_any_candidate(tmp_path):
    search = _stopped_search(tmp_path)  # every later step raises
    assert search.stopped_early
    assert (search.candidates, search.benchmarks, search.chosen, search.lead) == ([], {}, None, None)
    assert not (tmp_path / "candidates").exists()


def test_the_report_of_a_run_stopped_early_gives_its_reason_and_says_no_candidate_was_built(tmp_path):
    report = _report(_stopped_search(tmp_path))
    assert (report.outcome, report.reason) == ("rejected", "heldout-too-small")
    assert report.rows_needed == 5 * 144  # half-width 0.6 on 5 rows; 0.05 needs (0.6 / 0.05)² times them
    assert (report.recipe, report.benchmark, report.parity) == (None, None, None)
    assert [r.gate.name for r in report.gates.failed] == ["held-out size", "FP32 baseline"]
    md = to_markdown(report)
    assert "Reason: **heldout-too-small** (about 720 held-out rows would be needed)" in md
    assert "No candidate was built: the FP32 reference failed the evidence gates held-out size, FP32" in md
    assert "## Candidates (none built: the run stopped after the FP32 reference" in md
    assert "plots under" not in md
    assert "## Benchmark" not in md
    assert "Champion: not compared (no candidate was built)" in md


def test_a_run_stopped_early_stores_its_rejection_record_and_nothing_else(tmp_path):
    report = _report(_stopped_search(tmp_path))
    store = MemoryStore()
    assert decision_plots(report, tmp_path / "plots") == {}
    lifecycle.reject(store, REF, report.model_dump(mode="json"), None, {})
    assert [o.key for o in store.list("")] == [rejection_key(REF)]
    assert set(decision_keys(report)) == {"report-json"}
    stored = lifecycle.load_decision_report(store, REF)
    assert (stored["search"]["candidates"], stored["recipe"]) == ([], None)
