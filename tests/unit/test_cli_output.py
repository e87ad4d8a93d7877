"""Terminal output that reads when piped and at 80 columns (#23): `run --help` shows every flag whole with
its default, `report` never splits a candidate name, `register` says each thing on one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantgate import cli, lifecycle
from quantgate.bench import BenchReport, BenchSettings, EngineResult
from quantgate.gates import GateReport, GateResult
from quantgate.registry import ModelRef
from quantgate.report import ExportSummary, HeldoutSummary, build_run_report
from quantgate.search import SearchBudget, SearchResult
from quantgate.store import MemoryStore
from quantgate.thresholds import flag_limits
from tests.conftest import scored_candidate

NARROW = {"COLUMNS": "80"}
WIDE = {"COLUMNS": "200"}
REF = ModelRef(name="minilm", version="v9")
# The longest names the default search and its fallback give: what a narrow table used to cut.
NAMES = (
    "fused-dynamic-int8-per-channel-reduce-range",
    "dynamic-int8-per-channel-reduce-range-no-sln",
    "dynamic-int8-per-channel-reduce-range-no-sln+fp32x12",
)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_run_help_at_80_columns_piped_shows_every_flag_whole_with_its_default():
    result = CliRunner().invoke(cli.app, ["run", "--help"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    options = _options(result.output)
    for limit in flag_limits():
        flag = "--" + limit.name.replace("_", "-")
        assert flag in options, f"{flag} is not shown whole"
        assert options[flag].startswith(f"{flag} <float> {_flat(limit.help)[:20]}")
        assert options[flag].endswith(f"[default: {limit.default}]"), options[flag]
    # every other option keeps its help and default too
    assert (
        options["--recipe-file"] == "--recipe-file <path> JSON list of recipes (objects or catalogue names)"
    )
    assert options["--max-candidates"] == "--max-candidates <int> search budget: recipes tried [default: 11]"


def _options(help_text: str) -> dict[str, str]:
    """Each option of a plain help page, its flag (which starts a line) to its whole entry, flattened."""
    entries: list[str] = []
    for line in help_text.splitlines():
        if line.startswith("  --"):
            entries.append(line)
        elif entries and line.startswith("      "):
            entries[-1] += " " + line
    return {entry.split()[0]: _flat(entry) for entry in entries}


def test_a_gate_flag_left_at_its_default_judges_with_the_declared_limit(monkeypatch):
    import typer

    seen = {}

    def captured(limits):
        seen.update(limits)
        raise typer.Exit(0)  # nothing runs: only what the flags gave is looked at

    monkeypatch.setattr(cli, "_thresholds", captured)
    assert CliRunner().invoke(cli.app, ["run", "m", "v", "--min-mean-cosine", "0.99"]).exit_code == 0
    assert seen["min_mean_cosine"] == 0.99
    assert {k: v for k, v in seen.items() if k != "min_mean_cosine"} == {
        limit.name: limit.default for limit in flag_limits() if limit.name != "min_mean_cosine"
    }


def _run_report() -> dict:
    """A rejected run whose candidates carry the longest names, every one timed and judged."""
    failed = GateReport(
        results=[GateResult(gate=gate, value=0.9633, passed=False, margin=-0.0167) for gate in cli_gates()]
    )
    candidates, timed = [], []
    for i, name in enumerate(NAMES):
        latency = EngineResult(
            engine=name, p50_ms=1.0 + i, p95_ms=1.1 + i, p99_ms=1.2 + i, mean_ms=1.0, throughput_per_s=900.0,
            size_mb=22.9, load_s=0.1,
        )  # fmt: skip
        timed.append(latency)
        metrics = {"task_metric_fp32": 0.87, "task_metric_candidate": 0.868, "task_metric_drop": 0.002}
        metrics["mean_cosine"] = 0.9633
        candidate = scored_candidate(
            name, size_bytes=22_900_000, bench_round="candidates", latency=latency, gates=failed,
            metrics=metrics,
        )  # fmt: skip
        candidates.append(candidate)
    fp32 = timed[0].model_copy(update={"engine": "onnx-fp32", "p50_ms": 2.0})
    search = SearchResult(
        candidates=candidates,
        benchmarks={"candidates": BenchReport(settings=BenchSettings(), results=[fp32, *timed], cpu={})},
        chosen=None, lead=NAMES[0], budget=SearchBudget(), seconds=12.0,
    )  # fmt: skip
    report = build_run_report(
        ref_name=REF.name, ref_version=REF.version, run_id="run-0009", task="sentence-embedding",
        export=ExportSummary(
            onnx_path=Path("model.onnx"), input_names=["input_ids"], output_names=["sentence_embedding"],
            opset=17, max_abs_diff_vs_torch={}, parity_samples=1, size_bytes=1,
        ),
        heldout=HeldoutSummary(rows=100), thresholds={}, search=search,
    )  # fmt: skip
    return report.model_dump(mode="json")


def cli_gates():
    from quantgate.tasktypes import get_task_type
    from quantgate.thresholds import GateThresholds, gates_for

    return [g for g in gates_for(get_task_type("sentence-embedding"), GateThresholds()) if "cosine" in g.name]


@pytest.fixture
def rejected(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    store = MemoryStore()
    report = _run_report()
    lifecycle.reject(store, REF, report, report["parity"], {})
    monkeypatch.setattr(cli, "_store", lambda: store)
    return store


@pytest.mark.parametrize("env", [NARROW, WIDE], ids=["80-columns", "200-columns"])
def test_report_shows_every_candidate_name_whole(rejected, env):
    result = CliRunner().invoke(cli.app, ["report", REF.name, REF.version], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in NAMES:
        # in the benchmark and in the candidates, each time whole on one line
        assert sum(name in line for line in lines) >= 2, f"{name} split:\n{result.output}"
    assert "failed gates (margin)" in result.output
    assert "mean cosine -0.0167" in _flat(result.output)


def test_report_at_80_columns_lists_each_candidate_as_a_block_that_fits(rejected):
    result = CliRunner().invoke(cli.app, ["report", REF.name, REF.version], env=NARROW)
    block = result.output.split("candidates (12 s)\n", 1)[1].splitlines()
    assert block[0] == NAMES[0]
    assert block[1].startswith("  result FAIL · p50_ms 1.0 · size_mb 22.9")
    assert all(len(line) <= 80 for line in block)


def test_report_of_a_run_stopped_by_its_evidence_says_no_candidate_was_built(monkeypatch, tmp_path):
    from tests.unit.test_early_evidence import _report, _stopped_search

    store = MemoryStore()
    report = _report(_stopped_search(tmp_path)).model_dump(mode="json")
    lifecycle.reject(store, ModelRef(name="tiny", version="ten"), report, None, {})
    monkeypatch.setattr(cli, "_store", lambda: store)
    result = CliRunner().invoke(cli.app, ["report", "tiny", "ten"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "tiny@ten: NOT PROMOTED  no candidate built  run run-early" in result.output
    assert "reason: heldout-too-small (about 720 held-out rows would be needed)" in result.output
    assert "No candidate was built: the FP32 reference failed the evidence gates" in result.output
    assert "candidates (" not in result.output


def test_register_says_each_thing_on_one_line_when_piped(monkeypatch, tiny_model_dir, small_sts):
    store = MemoryStore()
    monkeypatch.setattr(cli, "_store", lambda: store)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    args = ["register", "tiny", "v1", "--model-dir", str(tiny_model_dir), "--heldout", str(small_sts)]
    result = CliRunner().invoke(cli.app, args, env=NARROW)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    said = "no PREFECT_API_URL set: no event sent; the registry-sweep deployment will find this version"
    assert said in lines
    (registered,) = [line for line in lines if line.startswith("registered tiny@v1 (")]
    assert "task sentence-embedding); source checksum " in registered


@pytest.mark.parametrize(
    ("tty", "columns", "rich"), [(True, 200, True), (True, 80, False), (False, 200, False)]
)
def test_rich_panels_only_on_a_terminal_wide_enough_for_every_flag(monkeypatch, tty, columns, rich):
    import os
    import shutil
    import sys

    import typer.main

    run = typer.main.get_command(cli.app).commands["run"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((columns, 24)))
    assert cli._rich_help_fits(run.params) is rich
