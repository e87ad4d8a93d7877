"""The pure rules of the recipe search: which candidate wins, when the fallback starts, how the held-out
set is split, what the Pareto front is."""

from __future__ import annotations

import pandas as pd
import pytest

from quantgate.backends.onnxruntime import OrtRecipe as Recipe
from quantgate.bench import BenchReport, BenchSettings, EngineResult
from quantgate.families.sentence_embedding import load_sts_tsv
from quantgate.heldout import split_heldout
from quantgate.plots import ParetoPoint, pareto_front
from quantgate.search import CandidateResult, choose, closest, fallback_base, node_costs
from quantgate.sensitivity import NodeSensitivity
from quantgate.tasktypes import get_task_type
from quantgate.thresholds import GateThresholds
from tests.conftest import scored_candidate

GATES = GateThresholds()
STS = get_task_type("sentence-embedding")


def _engine(name: str, p50: float) -> EngineResult:
    return EngineResult(
        engine=name, p50_ms=p50, p95_ms=p50 * 1.05, p99_ms=p50 * 1.1, mean_ms=p50,
        throughput_per_s=1000 / p50, size_mb=10, load_s=0.1,
    )  # fmt: skip


def _bench(latencies: dict[str, float]) -> BenchReport:
    engines = {"pytorch-fp32": 30.0, "onnx-fp32": 15.0, **latencies}
    return BenchReport(settings=BenchSettings(), results=[_engine(n, v) for n, v in engines.items()], cpu={})


def _candidate(
    name: str,
    cosine: float,
    nodes: list[str] | None = None,
    *,
    mean_abs_diff: float = 0.005,
    intervals: dict[str, tuple[float, float]] | None = None,
    **extra: float,
) -> CandidateResult:
    """A candidate scored on 1,000 rows at this mean cosine, close to FP32 on every other measure unless
    `extra` (its other task measures) or `intervals` say otherwise."""
    measures = {
        "mean_cosine": cosine,
        "share_below_cosine_floor": 0.0,
        "min_cosine": 0.95,
        "neighbour_agreement": 0.95,
    }
    close = {"neighbour_agreement": (0.94, 0.96), "share_below_cosine_floor": (0.0, 0.004)}
    return scored_candidate(
        Recipe(name=name, nodes_to_exclude=nodes or []),
        parity={"max_abs_diff": 0.05, "mean_abs_diff": mean_abs_diff},
        evaluation={
            "rows": 1000,
            "task_metric_fp32_interval": (0.855, 0.885),
            "task_metric_drop_interval": (0.0, 0.004),
            "extra": measures | extra,
            "extra_intervals": intervals or close,
        },
        size_bytes=100,
        gates=None,  # judged by each test
    )


def _judged(specs: dict[str, tuple[float, float]]) -> list[CandidateResult]:
    """name -> (mean cosine, p50 ms), all timed in one benchmark."""
    bench = _bench({n: ms for n, (_, ms) in specs.items()})
    return [_candidate(n, cos).judged(STS, GATES, bench, "candidates") for n, (cos, _) in specs.items()]


def test_the_fastest_candidate_that_passes_every_gate_wins():
    results = _judged({"slow-good": (0.995, 8.0), "fast-bad": (0.95, 6.0), "fast-good": (0.99, 7.0)})
    assert choose(results).name == "fast-good"
    assert fallback_base(results) is None  # something passed: no fallback
    assert {c.name: c.passed for c in results} == {"slow-good": True, "fast-bad": False, "fast-good": True}
    assert "mean cosine 0.95" in results[1].gates.failure_summary()


def test_a_latency_tie_goes_to_the_candidate_that_moved_the_task_metric_least():
    results = _judged({"a": (0.99, 7.00), "b": (0.99, 7.10), "c": (0.99, 7.50)})
    drops = {"a": 0.004, "b": 0.001, "c": 0.0}
    results = [
        c.model_copy(update={"metrics": {**c.metrics, "task_metric_drop": drops[c.name]}}) for c in results
    ]
    assert choose(results).name == "b"  # within 2% of a; c is 7% slower and out of the tie


def test_a_candidate_slower_than_fp32_never_wins_even_when_exact():
    results = _judged({"exact-but-slow": (1.0, 16.0)})
    assert choose(results) is None
    assert fallback_base(results) is None  # it failed on speed, so keeping nodes in FP32 cannot help
    assert closest(results).name == "exact-but-slow"


def test_fallback_starts_from_the_fastest_candidate_that_failed_on_accuracy_only():
    results = _judged({"a": (0.95, 7.0), "b": (0.96, 6.5), "too-slow": (0.90, 20.0)})
    assert choose(results) is None
    assert fallback_base(results).name == "b"
    assert closest(results).name == "b"


def test_fallback_prefers_the_nearly_passing_base_among_equally_fast_ones():
    """Per-tensor fails four accuracy gates, per-channel one, at the same speed: the per-channel base
    needs fewer nodes in FP32, so the fallback starts from it."""
    bench = _bench({"per-tensor": 7.21, "per-channel": 7.34, "slow-but-close": 9.0})
    per_tensor = _candidate(
        "per-tensor", 0.96, mean_abs_diff=0.02, share_below_cosine_floor=0.02, min_cosine=0.8,
        neighbour_agreement=0.85,
        intervals={"neighbour_agreement": (0.83, 0.87), "share_below_cosine_floor": (0.016, 0.025)},
    )  # fmt: skip
    results = [
        c.judged(STS, GATES, bench, "candidates")
        for c in (per_tensor, _candidate("per-channel", 0.975), _candidate("slow-but-close", 0.979))
    ]
    assert [len(c.gates.failed) for c in results] == [4, 1, 1]
    assert fallback_base(results).name == "per-channel"


def test_unmeasured_speed_fails_the_speed_gate():
    c = _candidate("x", 0.999).judged(STS, GATES)
    assert c.accuracy_passed
    assert not c.passed


def test_node_costs_share_the_measured_increase_by_macs():
    ranking = [
        NodeSensitivity(node="big", sqnr_db=20, macs_per_token=3000),
        NodeSensitivity(node="small", sqnr_db=25, macs_per_token=1000),
    ]
    bench = _bench({"base": 6.0, "base+fp32x2": 8.0})
    base = _candidate("base", 0.95).judged(STS, GATES, bench, "fallback")
    trial = _candidate("base+fp32x2", 0.99, ["big", "small"]).judged(STS, GATES, bench, "fallback")
    costs = {c["node"]: c["latency_cost_ms"] for c in node_costs(base, trial, ranking)}
    assert costs == {"big": 1.5, "small": 0.5}


def test_calibration_and_evaluation_rows_never_overlap_and_do_not_depend_on_file_order(sts_path):
    df = load_sts_tsv(sts_path)
    split = split_heldout(df, 64)
    assert len(split.calibration) == 64
    assert len(split.calibration) + len(split.evaluation) == len(df)
    key = ["sentence1", "sentence2", "score"]
    calib = set(map(tuple, split.calibration[key].astype(str).to_numpy()))
    evaluation = set(map(tuple, split.evaluation[key].astype(str).to_numpy()))
    assert not calib & evaluation
    shuffled = split_heldout(df.sample(frac=1, random_state=1).reset_index(drop=True), 64)
    assert set(map(tuple, shuffled.calibration[key].astype(str).to_numpy())) == calib


def test_split_keeps_half_for_evaluation_and_never_splits_identical_rows():
    df = pd.DataFrame(
        {"score": [1.0] * 4 + [2.0, 3.0], "sentence1": ["same"] * 4 + ["b", "c"], "sentence2": ["x"] * 6}
    )
    for n in range(7):
        split = split_heldout(df, n)
        assert len(split.evaluation) >= 3
        sides = ("same" in set(split.calibration["sentence1"]), "same" in set(split.evaluation["sentence1"]))
        assert sides != (True, True)
    with pytest.raises(ValueError, match=">= 0"):
        split_heldout(df, -1)


def test_pareto_front_drops_dominated_points():
    pts = [
        ParetoPoint(name="a", p50_ms=5, task_metric_drop=0.02, values={"mean_cosine": 0.9}, passed=False),
        ParetoPoint(name="b", p50_ms=6, task_metric_drop=0.01, values={"mean_cosine": 0.95}, passed=True),
        ParetoPoint(
            name="c", p50_ms=7, task_metric_drop=0.015, values={"mean_cosine": 0.95}, passed=True
        ),  # worse than b
        ParetoPoint(name="d", p50_ms=9, task_metric_drop=0.0, values={"mean_cosine": 1.0}, passed=True),
    ]
    assert [p.name for p in pareto_front(pts)] == ["a", "b", "d"]


def test_evaluation_rows_are_capped_by_a_fixed_sample_and_the_summary_says_how_many(sts_path):
    df = load_sts_tsv(sts_path)
    full = split_heldout(df, 64)
    capped = split_heldout(df, 64, max_eval_rows=200)
    again = split_heldout(df.sample(frac=1, random_state=7).reset_index(drop=True), 64, max_eval_rows=200)
    key = ["sentence1", "sentence2", "score"]

    def rows(frame: pd.DataFrame) -> set[tuple[str, ...]]:
        return set(map(tuple, frame[key].astype(str).to_numpy()))

    assert len(capped.evaluation) == 200
    assert rows(capped.evaluation) <= rows(full.evaluation)  # never a calibration row
    assert rows(capped.evaluation) == rows(again.evaluation)  # the same sample whatever the file order
    assert capped.summary() == {
        "calibration_rows": 64,
        "evaluation_rows": 200,
        "evaluation_rows_available": len(df) - 64,
    }
    assert split_heldout(df, 64, max_eval_rows=10_000).evaluation.equals(full.evaluation)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"batch": 256, "seq_len": 512, "repeat_runs": 100_000}, "less than or equal"),
        ({"batch": 64, "seq_len": 512, "repeat_runs": 10_000}, "tokens per engine"),
        ({"warmup_runs": 100_000}, "less than or equal"),
    ],
)
def test_benchmark_settings_are_bounded(settings, words):
    from pydantic import ValidationError

    from quantgate.bench import BenchSettings

    with pytest.raises(ValidationError, match=words):
        BenchSettings(**settings)
    BenchSettings(batch=8, seq_len=256, repeat_runs=1000)  # a generous but sane benchmark is fine


def test_the_fixed_shape_comparison_names_the_winner_it_would_have_picked():
    """The decision is taken on the serving profile; the report says when b1/s128 would pick another
    passing candidate (issue #21: OpenVINO won by 4 % there and lost 1.9x at real lengths)."""
    from quantgate.search import compare_fixed_shape

    passing = [c for c in _judged({"ort": (0.995, 5.0), "ov": (0.995, 6.0)}) if c.passed]
    assert {c.name for c in passing} == {"ort", "ov"}
    fixed = _bench({"ort": 12.6, "ov": 12.1})
    other = compare_fixed_shape(passing, "ort", fixed, "b1-s128")
    assert (other.winner, other.chosen_ms, other.winner_ms, other.differs) == ("ov", 12.6, 12.1, True)
    same = compare_fixed_shape(passing, "ort", _bench({"ort": 12.0, "ov": 12.1}), "b1-s128")
    assert (same.winner, same.differs) == ("ort", False)


def test_the_judged_files_name_a_file_outside_the_candidates_folder_by_its_relative_path(
    tmp_path, monkeypatch
):
    """A runtime may name a file beside the candidate's folder (a shared vocabulary): the report keys it
    `../shared/...`, with its sha256, rather than failing the run."""
    import hashlib
    from pathlib import Path

    from quantgate.backends import Runtime, Servable
    from quantgate.search_driver import judged_files

    folder, shared = tmp_path / "cand", tmp_path / "shared"
    folder.mkdir()
    shared.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    (shared / "vocab.txt").write_bytes(b"a\nb\n")

    class _Beside(Runtime):
        name = "test-beside"

        def session(self, path: Path, threads: int):  # pragma: no cover - not opened here
            raise NotImplementedError

        def files(self, path: Path) -> list[Path]:
            return [path, path.parent.parent / "shared" / "vocab.txt"]

    try:
        files = judged_files(Servable(folder / "model.bin", "test-beside"))
    finally:
        Runtime.registry.pop("test-beside")
    assert files == {
        "model.bin": hashlib.sha256(b"weights").hexdigest(),
        "../shared/vocab.txt": hashlib.sha256(b"a\nb\n").hexdigest(),
    }
