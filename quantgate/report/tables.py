"""The report as table rows (dicts of plain values): the CLI prints them with rich, the Prefect UI as table
artifacts, the markdown as pipe tables."""

from __future__ import annotations

from typing import Any

from quantgate.bench import ONNX_FP32, BenchReport
from quantgate.gates import GateReport
from quantgate.report.model import RunReport
from quantgate.search import CandidateResult, SearchResult
from quantgate.tasktypes import Column, task_types


def _columns(task: str) -> tuple[Column, ...]:
    """The task type's own metric columns (none for a report of a task type this install lacks)."""
    task_type = task_types().get(task)
    return task_type.columns if task_type else ()


def gate_rows(report: GateReport) -> list[dict[str, Any]]:
    return [
        {
            "gate": r.gate.name,
            "value": None if r.value is None else round(r.value, 4),
            "interval": None if r.interval is None else f"[{r.interval[0]:.4f}, {r.interval[1]:.4f}]",
            "limit": f"{r.gate.op} {r.gate.limit:g}"
            + ("" if r.gate.per_row is None else f" of rows beyond {r.gate.per_row:g}")
            + ("" if r.gate.judge == "value" else f" ({r.gate.judge} bound)"),
            "margin": None if r.margin is None else round(r.margin, 4),
            "result": "pass" if r.passed else "FAIL",
        }
        for r in report.results
    ]


def example_rows(report: RunReport) -> list[dict[str, Any]]:
    """The lead candidate's examples that moved most (flipped labels first), worst first."""
    lead = report.search.get(report.recipe.name) if report.search and report.recipe else None
    if lead is None or lead.evaluation is None:
        return []
    return [
        {
            "row": e.row,
            "input": e.text,
            "gold": e.gold,
            "fp32": e.fp32,
            "candidate": e.candidate,
            "change": e.change,
        }
        for e in lead.evaluation.examples
    ]


def slice_rows(report: RunReport) -> list[dict[str, Any]]:
    """The lead candidate's task metric per slice: FP32, candidate, drop and its 95 % interval."""
    lead = report.search.get(report.recipe.name) if report.search and report.recipe else None
    if lead is None or lead.evaluation is None:
        return []
    return [
        {
            "slice": s.name,
            "rows": s.rows,
            "fp32": round(s.task_metric_fp32, 4),
            "candidate": round(s.task_metric_candidate, 4),
            "drop": round(s.drop, 4),
            "interval": None
            if s.drop_interval is None
            else f"[{s.drop_interval[0]:.4f}, {s.drop_interval[1]:.4f}]",
            "gated": "yes" if s.gated else "no (too few rows)",
        }
        for s in lead.evaluation.slices
    ]


def bench_rows(bench: BenchReport) -> list[dict[str, Any]]:
    return [
        {
            "engine": r.engine,
            "p50_ms": round(r.p50_ms, 2),
            "p95_ms": round(r.p95_ms, 2),
            "p99_ms": round(r.p99_ms, 2),
            "throughput_per_s": round(r.throughput_per_s, 1),
            "size_mb": round(r.size_mb, 1),
            "load_s": round(r.load_s, 2),
        }
        for r in bench.results
    ]


def length_rows(bench: BenchReport) -> list[dict[str, Any]]:
    """p50 per engine per input-length bucket (one row per engine), the table beside length.png."""
    edges = sorted({(s.low, s.high) for r in bench.results for s in r.by_length})
    if len(edges) < 2:
        return []
    rows = []
    for r in bench.results:
        stats = {(s.low, s.high): s for s in r.by_length}
        row: dict[str, Any] = {"engine": r.engine}
        for low, high in edges:
            label = f"{low + 1}-{high} tok" if high < 1 << 20 else f">{low} tok"
            row[label] = round(stats[(low, high)].p50_ms, 2) if (low, high) in stats else None
        rows.append(row)
    return rows


def candidate_rows(search: SearchResult, task: str) -> list[dict[str, Any]]:
    """One row per candidate: the verdict and which gate failed by how much, then size, latency, the core
    metrics and the task type's own."""
    rows = []
    for c in search.candidates:
        m, lat = c.metrics, c.latency
        verdict = {"evaluated": "pass" if c.passed else "FAIL", "failed": "error", "skipped": "skipped"}[
            c.status
        ]
        if c.name == search.chosen:
            verdict = "PROMOTED"
        rows.append(
            {
                # The decision first: a wide table in the UI scrolls, and these are what a person looks for.
                "candidate": c.name,
                "result": verdict,
                "failed_gates": (c.gates.failure_summary() if c.gates else "") or (c.note or ""),
                "method": c.recipe.kind,
                "size_mb": None if c.size_bytes is None else round(c.size_bytes / 1e6, 1),
                "p50_ms": None if lat is None else round(lat.p50_ms, 2),
                "p95_ms": None if lat is None else round(lat.p95_ms, 2),
                "throughput_per_s": None if lat is None else round(lat.throughput_per_s, 1),
                "speedup_vs_onnx_fp32_p95": _r(m.get("p95_speedup_vs_onnx_fp32"), 2),
                "task_metric": _r(m.get("task_metric_candidate"), 4),
                "task_metric_drop": _r(m.get("task_metric_drop"), 4),
                **{col.metric: _r(m.get(col.metric), col.digits) for col in _columns(task)},
                "max_abs_diff": _r(m.get("max_abs_diff"), 4),
                # What the search spent on it, and how much of the evaluation it needed (racing).
                "build_s": c.quantize_s,
                "build_cached": c.build_cached,
                "score_s": None if c.evaluation is None else round(c.evaluation.seconds, 2),
                "scored_on": c.race.summary() if c.race else ("full split" if c.evaluation else ""),
            }
        )
    return rows


_COMPACT = ("candidate", "result", "p50_ms", "size_mb", "task_metric_drop")


def compact_candidate_rows(search: SearchResult, task: str) -> list[dict[str, Any]]:
    """The candidate table narrow enough for a page or a terminal (the core columns and the task type's
    first own metric); the table artifact has every column."""
    keys = [*_COMPACT, *(col.metric for col in _columns(task)[:1])]
    return [
        {**{k: row[k] for k in keys}, "failed gates (margin)": brief}
        for row, brief in zip(
            candidate_rows(search, task),
            [c.gates.failure_brief() if c.gates else (c.note or "") for c in search.candidates],
            strict=True,
        )
    ]


def kind_rows(search: SearchResult) -> list[dict[str, Any]]:
    """The fastest candidate of each kind of recipe (dynamic, static, fp16, ...) against ONNX FP32 in
    the same benchmark round: why one kind wins on this model (static QDQ on a CNN, where dynamic INT8
    runs ConvInteger), or that it does not."""
    bench = search.benchmarks.get("candidates")
    fp32 = next((r.p50_ms for r in bench.results if r.engine == ONNX_FP32), None) if bench else None
    best: dict[str, tuple[float, CandidateResult]] = {}
    for c in search.candidates:
        if c.latency is not None and c.bench_round == "candidates":
            kind = c.recipe.kind
            if kind not in best or c.latency.p50_ms < best[kind][0]:
                best[kind] = (c.latency.p50_ms, c)
    return [
        {
            "kind": kind,
            "fastest": c.name,
            "p50_ms": round(p50, 3),
            "vs ONNX FP32": f"{fp32 / p50:.2f}x" if fp32 else None,
            # a raced candidate not scored on every row has only its probe's drop: not shown as the drop
            "task metric drop": _r(c.metrics.get("task_metric_drop"), 4) if _in_full(c) else None,
            "passed": _passed(c),
        }
        for kind, (p50, c) in sorted(best.items(), key=lambda kv: kv[1][0])
    ]


def _in_full(c: CandidateResult) -> bool:
    return c.race is None or c.race.outcome == "full"


def _passed(c: CandidateResult) -> str:
    """yes / no; a raced candidate skipped as slower than one that passed was never judged in full."""
    if c.race is not None and c.race.outcome == "cannot-win":
        return "not judged: cannot win"
    return "yes" if c.passed else "no"


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)
