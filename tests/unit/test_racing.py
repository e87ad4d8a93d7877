"""Racing (issue #25): the probe is a stratified, reproducible share of the evaluation rows; a gate drops
a candidate only when the probe puts its whole interval outside the limit; a candidate slower than a
passing one beyond the tie band is never scored in full; and the search decides what the exhaustive one
decides (the same chosen candidate, the same verdict for every candidate it judged), including when
nothing passes and racing gives way."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd

from quantgate.racing import MIN_PROBE_ROWS, cannot_win, certain_failures, probe_rows, strata
from quantgate.search import NOTHING_TO_QUANTIZE, CandidateResult, SearchBudget, choose
from quantgate.search_driver import SearchSteps, run_search
from quantgate.tasktypes import Reference, get_task_type
from quantgate.thresholds import GateThresholds
from tests.unit.test_search_rules import _bench, _candidate

STS = get_task_type("sentence-embedding")
GATES = GateThresholds()
ROWS = 1436  # STS-B dev's evaluation split


def _rows(n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "score": rng.uniform(0, 5, n).round(2),
            "sentence1": [f"first {i}" for i in range(n)],
            "sentence2": [f"second {i}" for i in range(n)],
            "genre": rng.choice(["news", "forum", "captions"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def test_the_probe_takes_the_same_share_of_every_stratum_and_is_reproducible():
    rows = _rows()
    schema = STS.heldout_schema(Path())
    keys = strata(schema.columns, schema.slice_columns, rows)
    assert keys == ["genre", "score"]
    at = probe_rows(rows, 0.125, keys, dict(schema.columns))
    assert at is not None
    assert list(at) == sorted(set(at.tolist()))
    assert abs(len(at) - ROWS / 8) <= 1
    probe = rows.iloc[at]
    for genre, share in rows["genre"].value_counts(normalize=True).items():
        assert abs((probe["genre"] == genre).mean() - share) < 0.02
    quintiles = pd.qcut(rows["score"].rank(method="first"), 5, labels=False)
    assert quintiles.iloc[at].value_counts().min() >= len(at) // 5 - 4
    assert list(probe_rows(rows, 0.125, keys, dict(schema.columns))) == list(at)  # seeded: the same rows
    assert list(probe_rows(rows, 0.125, keys, dict(schema.columns), seed=1)) != list(at)


def test_every_row_is_drawn_with_the_probes_share_however_small_its_stratum():
    """27 one-row labels among 900 rows: a probe that took at least one row of every stratum held all 27
    (a quarter of it), so a share of rows beyond a limit measured on it did not estimate the split's."""
    labels = [f"rare{i}" for i in range(27)] + ["a"] * 500 + ["b"] * 373
    rows = pd.DataFrame({"label": labels})
    draws = [probe_rows(rows, 0.125, ["label"], {"label": "label"}, seed=seed) for seed in range(400)]
    assert all(len(at) in (112, 113) for at in draws)
    rare = np.array([(at < 27).sum() for at in draws])
    assert 2.8 < rare.mean() < 4.0  # 27 / 8 = 3.375
    every = np.bincount(np.concatenate(draws), minlength=len(rows)) / len(draws)
    assert abs(every.mean() - 0.125) < 0.002
    assert every.min() > 0.04  # no row is never drawn ...
    assert every.max() < 0.22  # ... and none for certain (binomial(400, 1/8): 50 +- 6.6 draws each)
    for at in draws[:20]:  # each common label gets its share, to within a row
        picked = rows["label"].iloc[at]
        assert abs((picked == "a").sum() - 500 / 8) <= 1
        assert abs((picked == "b").sum() - 373 / 8) <= 1


def test_a_split_too_small_for_a_probe_of_100_rows_is_not_raced():
    rows = _rows(n=MIN_PROBE_ROWS * 8 - 8)
    assert probe_rows(rows, 0.125, [], {}) is None
    assert probe_rows(_rows(n=MIN_PROBE_ROWS * 8), 0.125, [], {}) is not None


def test_list_labels_are_not_strata():
    rows = pd.DataFrame({"tokens": [["a"]] * 900, "tags": [["O"]] * 900})
    assert strata({"tokens": "text", "tags": "label"}, [], rows) == []


def test_a_gate_fails_for_certain_only_when_its_whole_interval_is_outside_the_limit():
    def failures(interval: tuple[float, float], share: float) -> list[str]:
        c = _candidate(
            "c",
            0.99,
            share_below_cosine_floor=share,
            intervals={"neighbour_agreement": (0.94, 0.96), "share_below_cosine_floor": interval},
        ).judged(STS, GATES)
        return [r.gate.name for r in certain_failures(c.gates, c.metrics)]

    assert failures((0.05, 0.2), 0.1) == ["cosine tail"]  # lower bound above the 1 % limit
    assert failures((0.0, 0.2), 0.1) == []  # straddles it: more rows could bring it inside
    assert failures((0.0, 0.004), 0.0) == []  # passes
    # A point value with no interval (mean cosine 0.90 < 0.98) fails the gate but never races.
    low = _candidate("low", 0.90).judged(STS, GATES)
    assert "mean cosine" in {r.gate.name for r in low.gates.failed}
    assert certain_failures(low.gates, low.metrics) == []
    # A corpus-level metric's bootstrap interval does not race, even entirely outside its limit: on a
    # 118-row WNUT-17 probe it put an F1 drop at [0.014, 0.127] where the full split measured 0.0033.
    c = _candidate("drop", 0.995)
    c = c.model_copy(
        update={
            "evaluation": c.evaluation.model_copy(
                update={"task_metric_drop_interval": (0.014, 0.127), "task_metric_candidate": 0.80}
            )
        }
    ).judged(STS, GATES)
    assert "task metric drop" in {r.gate.name for r in c.gates.failed}
    assert c.metrics["task_metric_drop_lo"] > 0.01
    assert certain_failures(c.gates, c.metrics) == []
    # Speed gates fail "not measured" before the benchmark: timing decides those, not rows.
    assert all(r.gate.kind != "speed" for r in certain_failures(low.gates, low.metrics))


def test_skipping_the_candidates_that_cannot_win_never_changes_the_choice():
    """Random rounds: judge pending candidates fastest first, skipping what `cannot_win` names; the
    choice over the judged ones is always `choose` over all of them."""
    rng = random.Random(7)  # noqa: S311 - a reproducible simulation, not a secret
    for _ in range(500):
        n = rng.randint(1, 9)
        specs = {
            f"c{i}": (rng.choice([0.90, 0.995]), rng.choice([5.0, 5.05, 5.08, 5.2, 6.0, 4.0, 4.06]))
            for i in range(n)
        }
        bench = _bench({name: ms for name, (_, ms) in specs.items()})
        every = [
            _candidate(name, cos, task_metric_drop=rng.random()).judged(STS, GATES, bench, "candidates")
            for name, (cos, _) in specs.items()
        ]
        pending = sorted(every, key=lambda c: c.latency.speed)
        judged: list[CandidateResult] = []
        while pending:
            losing = {c.name for c in cannot_win(pending, judged)}
            pending = [c for c in pending if c.name not in losing]
            if pending:
                judged.append(pending.pop(0))
        expected, got = choose(every), choose(judged)
        assert (expected and expected.name) == (got and got.name), specs


# --- the driver, on recorded candidates: what a probe and the full split gave each ---------------------


def _scored(name: str, *, share: float, interval: tuple[float, float], candidate: float) -> CandidateResult:
    c = _candidate(
        name,
        0.992,
        share_below_cosine_floor=share,
        intervals={"neighbour_agreement": (0.94, 0.96), "share_below_cosine_floor": interval},
    )
    return c.model_copy(
        update={"evaluation": c.evaluation.model_copy(update={"task_metric_candidate": candidate})}
    )
PASS, FAIL_TAIL = ((0.0, (0.0, 0.004)), (0.05, (0.04, 0.07)))
# name: (p50 ms, probe (share, interval), full (share, interval), task metric) - as runs measured them.
RECORDED = {
    "borderline": (4.0, (0.01, (0.0, 0.03)), FAIL_TAIL, 0.868),  # fastest: the probe cannot tell
    "fast": (5.0, PASS, PASS, 0.866),
    "tied": (5.05, PASS, PASS, 0.869),  # within 2 % of fast, a smaller drop: the tie goes to it
    "slower": (6.0, PASS, PASS, 0.869),  # passes, but cannot win
    "bad": (4.5, ((0.3, (0.2, 0.4))), ((0.3, (0.27, 0.33))), 0.86),  # raced out on the probe
    "sluggish": (20.0, PASS, PASS, 0.869),  # slower than ORT FP32 (15 ms): speed-failed
}


def _steps(
    recorded: dict, calls: list[tuple[str, int, bool]], rows: int = ROWS, threads_of: dict | None = None
) -> SearchSteps:
    bench = _bench({name: spec[0] for name, spec in recorded.items() if spec is not None})
    ref = Reference(outputs=np.zeros(1), task_metric=0.87, seconds=0.1, interval=(0.855, 0.885))

    def score(batch, job, threads, at_once):
        out = []
        for recipe in batch:
            calls.append((recipe.name, len(job.evaluation), recipe.name in job.built))
            if recorded[recipe.name] is None:  # a recipe this model cannot take
                note = f"{NOTHING_TO_QUANTIZE}: no MatMul"
                out.append(CandidateResult(recipe=recipe, status="failed", note=note))
                continue
            _, probe, full, metric = recorded[recipe.name]
            if threads_of is not None:
                threads_of[(recipe.name, len(job.evaluation))] = threads
            share, interval = full if len(job.evaluation) == rows else probe
            c = _scored(recipe.name, share=share, interval=interval, candidate=metric)
            c = c.model_copy(update={"recipe": recipe, "gates": None, "latency": None, "metrics": {}})
            out.append(c.judged(STS, GATES))
        return out

    return SearchSteps(
        reference=lambda *_: ref,
        score_champion=lambda *_: ref,
        calibration=lambda *_: [],
        prepare=lambda *_: ({}, []),
        score=score,
        rank=lambda *_: [],
        benchmark=lambda servables: bench,
    )


def _search(
    tmp_path: Path, recorded: dict, race: bool, calls: list, rows: int = ROWS, threads_of: dict | None = None
) -> object:
    from quantgate.backends.onnxruntime import OrtRecipe

    recipes = [OrtRecipe(name=name) for name in recorded]
    return run_search(
        STS, tmp_path, tmp_path / "model.onnx", tmp_path, _rows(64), _rows(rows),
        recipes, GATES, SearchBudget(race=race, max_trials=0, workers=2), tmp_path / "work",
        _steps(recorded, calls, rows, threads_of),
    )  # fmt: skip


def test_the_raced_search_decides_what_the_exhaustive_one_decides_with_less_work(tmp_path):
    raced_calls: list = []
    every_calls: list = []
    threads_of: dict = {}
    raced = _search(tmp_path, RECORDED, True, raced_calls, threads_of=threads_of)
    every = _search(tmp_path, RECORDED, False, every_calls)
    assert every.chosen == raced.chosen == "tied"
    verdicts = {c.name: c for c in every.candidates}
    for c in raced.candidates:
        if c.race.outcome == "cannot-win":
            assert c.status == "skipped"
            assert verdicts[c.name].passed
            continue
        assert c.passed == verdicts[c.name].passed, c.name
    outcome = {c.name: c.race.outcome for c in raced.candidates}
    assert outcome == {
        "borderline": "full", "fast": "full", "tied": "full", "slower": "cannot-win", "bad": "raced-out",
        "sluggish": "speed-failed",
    }  # fmt: skip
    # Every candidate once on the probe, then only three on the full split, each from its probe's build.
    probe = raced.racing.probe_rows
    assert sorted(n for n, rows, _ in raced_calls if rows == probe) == sorted(RECORDED)
    assert sorted((n, built) for n, rows, built in raced_calls if rows == ROWS) == [
        ("borderline", True), ("fast", True), ("tied", True)
    ]  # fmt: skip
    # Two at a time share the cores; the last one, alone, takes them all.
    cores = os.cpu_count() or 1
    assert {n: threads_of[(n, ROWS)] for n in ("borderline", "fast", "tied")} == {
        "borderline": max(1, cores // 2), "fast": max(1, cores // 2), "tied": cores
    }  # fmt: skip
    assert len(every_calls) == len(RECORDED)
    assert raced.racing.strata == ["genre", "score"]
    # What decided the dropped ones is all their report shows, and says why.
    bad = raced.get("bad")
    assert [r.gate.name for r in bad.gates.results] == ["cosine tail"]
    assert not bad.passed
    assert "lies above the limit 0.01" in bad.race.reason
    assert [r.gate.kind for r in raced.get("sluggish").gates.results] == ["speed", "speed"]
    assert "tie band" in raced.get("slower").note


def test_when_nothing_passes_racing_gives_way_to_the_exhaustive_search(tmp_path):
    failing = {name: (ms, probe, FAIL_TAIL, metric) for name, (ms, probe, _, metric) in RECORDED.items()}
    calls: list = []
    raced = _search(tmp_path, failing, True, calls)
    # What racing scored on every row before it gave way is kept, not scored again; the rest is scored
    # in full once, from its probe's build.
    in_full = [name for name, rows, _ in calls if rows == ROWS]
    assert sorted(in_full) == sorted(failing)
    assert all(built for _, rows, built in calls if rows == ROWS)
    every = _search(tmp_path, failing, False, [])
    assert raced.chosen is None
    assert every.chosen is None
    assert raced.lead == every.lead
    assert raced.racing.gave_way
    assert any("racing gave way" in w for w in raced.warnings)
    for a, b in zip(raced.candidates, every.candidates, strict=True):
        assert a.name == b.name
        assert a.gates == b.gates
        assert a.race is None


def test_a_split_too_small_to_probe_is_searched_exhaustively(tmp_path):
    calls: list = []
    result = _search(tmp_path, RECORDED, True, calls, rows=MIN_PROBE_ROWS * 4)
    assert result.racing is None
    assert result.chosen == "tied"
    assert sorted(n for n, _, _ in calls) == sorted(RECORDED)  # each once, on every row
    assert {rows for _, rows, _ in calls} == {MIN_PROBE_ROWS * 4}
    assert all(c.race is None for c in result.candidates)


def test_when_no_recipe_builds_racing_builds_nothing_twice(tmp_path):
    calls: list = []
    result = _search(tmp_path, dict.fromkeys(RECORDED), True, calls)
    assert sorted(n for n, _, _ in calls) == sorted(RECORDED)  # each tried once
    assert [c.status for c in result.candidates] == ["failed"] * len(RECORDED)
    assert result.chosen is None
    assert all(c.gates.failed[0].gate.name == "something to quantize" for c in result.candidates)
    assert not any("racing gave way" in w for w in result.warnings)


def test_a_reference_that_cannot_be_scored_on_the_probe_means_no_race(tmp_path):
    """The FP32 model was scored on the full split already; a task type whose reference fails on a subset
    (a class or slice the probe lacks) is searched exhaustively, not failed."""
    from dataclasses import replace

    from quantgate.backends.onnxruntime import OrtRecipe

    calls: list = []
    steps = _steps(RECORDED, calls)
    full_reference = steps.reference

    def reference(task, servable, assets, rows, cores):
        if len(rows) < ROWS:
            raise ValueError("a slice the probe lacks")
        return full_reference(task, servable, assets, rows, cores)

    result = run_search(
        STS, tmp_path, tmp_path / "model.onnx", tmp_path, _rows(64), _rows(ROWS),
        [OrtRecipe(name=name) for name in RECORDED], GATES, SearchBudget(race=True, max_trials=0, workers=2),
        tmp_path / "work", replace(steps, reference=reference),
    )  # fmt: skip
    assert result.racing is None
    assert result.chosen == "tied"
    assert {rows for _, rows, _ in calls} == {ROWS}


def test_the_report_does_not_call_a_candidate_that_could_not_win_failed(tmp_path):
    from quantgate.report.tables import kind_rows

    raced = _search(tmp_path, RECORDED, True, [])
    only = raced.model_copy(update={"candidates": [raced.get("slower"), raced.get("sluggish")]})
    (row,) = kind_rows(only)
    assert row["fastest"] == "slower"
    assert row["passed"] == "not judged: cannot win"
    assert row["task metric drop"] is None  # its probe's drop is not the split's
    full = raced.model_copy(update={"candidates": [raced.get("tied")]})
    assert kind_rows(full)[0]["passed"] == "yes"
    assert kind_rows(full)[0]["task metric drop"] is not None
