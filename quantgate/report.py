"""The run report: one JSON document per run (what was measured, each gate, the decision), plus the
markdown and tables people read in the CLI and the Prefect UI."""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from quantgate.backends import AnyRecipe
from quantgate.bench import BASELINES, CHAMPION_ENGINE, ONNX_FP32, BenchReport, cpu_info
from quantgate.evaluate import ParityReport
from quantgate.export import ExportResult
from quantgate.gates import GateReport
from quantgate.plots import ParetoPoint, latency_plot, length_plot, pareto_plot
from quantgate.registry import (
    Manifest,
    ModelRef,
    Outcome,
    Registration,
    artifact_prefix,
    registration_key,
    rejected_prefix,
    utcnow,
)
from quantgate.search import NOTHING_TO_QUANTIZE, CandidateResult, SearchResult
from quantgate.stats import rows_needed
from quantgate.tasktypes import Column, PlotAxis, task_types

_PACKAGES = (
    "quantgate",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "prefect",
    "great-expectations",
    "boto3",
    "numpy",
)


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "cpu": cpu_info()}


class ExportSummary(BaseModel):
    """The FP32 export as the report records it (the local side-file paths left out)."""

    onnx_path: Path
    input_names: list[str]
    output_names: list[str]
    opset: int
    pooling: str = ""
    normalize: bool = False
    max_abs_diff_vs_torch: dict[str, float]
    parity_samples: int
    size_bytes: int

    @classmethod
    def of(cls, result: ExportResult) -> ExportSummary:
        return cls.model_validate(result.model_dump(exclude={"tokenizer_files"}))


class HeldoutSummary(BaseModel):
    rows: int
    statistics: dict[str, Any] = Field(default_factory=dict, description="GX's validation statistics")
    calibration_rows: int = 0
    evaluation_rows: int | None = None
    evaluation_rows_available: int | None = None
    data_docs: str | None = None


class ChampionSummary(BaseModel):
    """'better / same / worse than vN' with the numbers behind it."""

    version: str
    verdict: str
    task_metric: float
    candidate_task_metric: float
    drop: float
    interval: tuple[float, float] | None = None
    p50_ms: float | None = None
    candidate_p50_ms: float | None = None


class RunReport(BaseModel):
    model: str
    version: str
    run_id: str
    task: str
    outcome: Outcome
    created_at: str = Field(default_factory=utcnow)
    recipe: AnyRecipe
    quantized_ops: dict[str, int]
    export: ExportSummary
    heldout: HeldoutSummary
    metrics: dict[str, float]
    thresholds: dict[str, float | None]
    gates: GateReport
    parity: ParityReport
    benchmark: BenchReport
    environment: dict[str, Any]
    search: SearchResult | None = Field(None, description="every candidate, fallback, budget")
    promoted_to: str | None = None
    reason: str | None = Field(
        None,
        description="why not promoted: heldout-too-small, baseline-not-meaningful, nothing-to-quantize or "
        "gates-failed (with rows_needed for the first)",
    )
    rows_needed: int | None = None
    champion: ChampionSummary | None = Field(
        None, description="the serving version judged beside this one; None for a first version"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_reports(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("search") == {}:
            data = {**data, "search": None}  # written before the search was typed
        return data

    @property
    def passed(self) -> bool:
        return self.outcome == "promoted" and self.gates.passed

    @property
    def recipe_artifact(self) -> str:
        return self.recipe.artifact_name


def _columns(task: str) -> tuple[Column, ...]:
    """The task type's own metric columns (none for a report of a task type this install lacks)."""
    task_type = task_types().get(task)
    return task_type.columns if task_type else ()


def _plot_axes(task: str) -> tuple[PlotAxis, ...]:
    task_type = task_types().get(task)
    return task_type.plot_axes if task_type else ()


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
    lead = report.search.get(report.recipe.name) if report.search else None
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
    lead = report.search.get(report.recipe.name) if report.search else None
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


def shape_comparison_line(search: SearchResult) -> str:
    cmp = search.fixed_shape
    if cmp is None or cmp.winner is None:
        return ""
    if cmp.winner == search.chosen:
        return f"At the fixed shape {cmp.shape} the same candidate would win (`{cmp.winner}`)."
    return (
        f"At the fixed shape {cmp.shape} the winner would differ: `{cmp.winner}` ({cmp.winner_ms:.2f} ms) "
        f"against `{search.chosen}` ({cmp.chosen_ms or float('nan'):.2f} ms there). The decision is taken on "
        "the serving profile."
    )


def candidate_rows(search: SearchResult, task: str) -> list[dict[str, Any]]:
    """One row per candidate: size, latency, the core metrics and the task type's own, and which gate
    failed by how much."""
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
                "candidate": c.name,
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
                "result": verdict,
                "failed_gates": (c.gates.failure_summary() if c.gates else "") or (c.note or ""),
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
            "task metric drop": _r(c.metrics.get("task_metric_drop"), 4),
            "passed": "yes" if c.passed else "no",
        }
        for kind, (p50, c) in sorted(best.items(), key=lambda kv: kv[1][0])
    ]


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _plain(value: Any) -> Any:
    """A held-out text as inert table cell text: no HTML, no column break, no line break."""
    if not isinstance(value, str):
        return value
    return html.escape(" ".join(value.split())).replace("|", "\\|").replace("`", "&#96;")


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("" if r[h] is None else str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _fallback_md(search: SearchResult) -> str:
    fb = search.fallback
    if fb is None:
        return ""
    kept = (
        _md_table(fb.kept_fp32)
        if fb.kept_fp32
        else "no trial passed" + (f" ({fb.stopped})" if fb.stopped else "")
    )
    tried = (
        ", ".join(f"`{t.recipe}` ({'pass' if t.accuracy_passed else 'fail'})" for t in fb.trials) or "none"
    )
    return (
        f"## Sensitive-node fallback\n\nNothing passed; `{fb.base}` failed on accuracy only ({fb.reason}). "
        f"Nodes ranked by per-layer SQNR on the calibration split; trials: {tried}.\n\n"
        f"Nodes kept in FP32 and what each cost (share of the measured p50 increase):\n\n{kept}"
    )


def to_markdown(report: RunReport, links: dict[str, str] | None = None) -> str:
    verdict = "PROMOTED" if report.outcome == "promoted" else "REJECTED (not promoted)"
    failed = ", ".join(r.gate.name for r in report.gates.failed) or "none"
    search = report.search
    lead = "Recipe chosen" if report.outcome == "promoted" else "Closest candidate"
    parts = [
        f"# {report.model}@{report.version}: {verdict}",
        f"{lead}: `{report.recipe.name}` · task `{report.task}` · run `{report.run_id}` · "
        f"failed gates: {failed}",
        f"Task metric: FP32 "
        f"{report.metrics['task_metric_fp32']:.4f} → candidate {report.metrics['task_metric_candidate']:.4f}",
        f"## Gates ({report.recipe.name})\n\n" + _md_table(gate_rows(report.gates)),
    ]
    parts.insert(2, champion_line(report))
    if report.reason:
        needed = f" (about {report.rows_needed} held-out rows would be needed)" if report.rows_needed else ""
        parts.insert(2, f"Reason: **{report.reason}**{needed}")
    slices = slice_rows(report)
    if slices:
        parts.append(
            "## Slices (the max-slice-drop gate counts slices of at least 50 rows)\n\n" + _md_table(slices)
        )
    examples = example_rows(report)
    if examples:
        parts.append(
            f"## What moved most ({report.recipe.name}: flipped predictions first, then the largest changes)"
            "\n\n" + _md_table([{k: _plain(v) for k, v in row.items()} for row in examples])
        )
    if search is not None:
        b, h = search.budget, report.heldout
        calib, evaluation = h.calibration_rows, h.evaluation_rows or h.rows
        parts.append(
            f"## Candidates ({len(search.candidates)} in {search.seconds:.0f} s; budget {b.max_candidates} "
            f"candidates, {b.max_trials} trials, {b.max_seconds:g} s; {calib} calibration rows kept apart "
            f"from {evaluation} evaluation rows)\n\n" + _md_table(compact_candidate_rows(search, report.task))
        )
        kinds = kind_rows(search)
        if len(kinds) > 1:
            title = "## By kind of recipe (the fastest of each, one benchmark round)"
            parts.append(f"{title}\n\n{_md_table(kinds)}")
        if search.warnings:
            parts.append("Warnings: " + "; ".join(search.warnings))
        if search.fallback is not None:
            parts.append(_fallback_md(search))
    parts.append(
        f"## Benchmark ({report.benchmark.describe()}; CPU flags "
        f"{', '.join(report.benchmark.cpu.get('flags', []))})\n\n" + _md_table(bench_rows(report.benchmark))
    )
    if search is not None:
        timed = search.benchmarks.get("candidates")
        by_length = length_rows(timed) if timed else []
        if by_length:
            parts.append(
                "## Latency by input length (p50 ms per request, every candidate, one round)\n\n"
                + _md_table(by_length)
            )
        line = shape_comparison_line(search)
        if line:
            parts.append(line)
    if links:
        parts.append("## Links\n\n" + "\n".join(f"- [{k}]({v})" for k, v in links.items()))
    parts.append(
        f"Promoted to: `{report.promoted_to}` (read `manifest.json` there; plots under the run's prefix)"
        if report.promoted_to
        else f"Nothing was promoted. Report and plots under `rejected/{report.model}/{report.version}/`."
    )
    return "\n\n".join(parts)


def build_run_report(
    *,
    ref_name: str,
    ref_version: str,
    run_id: str,
    task: str,
    export: ExportSummary,
    heldout: HeldoutSummary,
    thresholds: dict[str, float | None],
    search: SearchResult,
) -> RunReport:
    """The decision is read off the search: promoted exactly when a candidate passed every gate. The
    report leads with that candidate, or with the closest one when none passed."""
    lead = search.get(search.lead)
    bench = search.timed(lead) if lead else None
    if lead is None or lead.gates is None or bench is None:
        raise ValueError("the search judged no candidate: nothing to report on")
    if lead.evaluation is not None:
        parity = lead.evaluation.parity
    elif "quantizable_ops" in lead.metrics:  # nothing to quantize: nothing was compared
        parity = ParityReport(
            output="",
            n_samples=0,
            max_abs_diff=0.0,
            mean_abs_diff=0.0,
            abs_tol=0.0,
            mean_tol=0.0,
            passed=False,
        )
    else:
        raise ValueError(f"candidate {lead.name} was judged without an evaluation")
    promoted = search.chosen is not None and lead.passed
    reason, needed = (None, None) if promoted else rejection_reason(lead)
    return RunReport(
        reason=reason,
        rows_needed=needed,
        champion=champion_summary(lead, search),
        model=ref_name,
        version=ref_version,
        run_id=run_id,
        task=task,
        outcome="promoted" if promoted else "rejected",
        recipe=lead.recipe,
        quantized_ops=lead.op_counts,
        export=export,
        heldout=heldout,
        metrics=lead.metrics,
        thresholds=thresholds,
        gates=lead.gates,
        parity=parity,
        benchmark=bench,
        environment=environment(),
        search=search,
    )


def champion_summary(lead: CandidateResult, search: SearchResult) -> ChampionSummary | None:
    """'better / same / worse than vN' with the numbers: the candidate against the serving version on
    the same rows (paired interval of champion minus candidate) and in the same benchmark round."""
    ev = lead.evaluation
    if ev is None or ev.champion_version is None or ev.task_metric_champion is None:
        return None
    interval = ev.champion_drop_interval
    if interval is not None and not all(map(math.isfinite, interval)):
        interval = None
    lo, hi = interval or (0.0, 0.0)
    verdict = "worse than" if lo > 0 else "better than" if hi < 0 else "same as"
    bench = search.timed(lead)
    champ = (
        next((r for r in bench.results if r.engine == CHAMPION_ENGINE + ev.champion_version), None)
        if bench
        else None
    )
    return ChampionSummary(
        version=ev.champion_version,
        verdict=f"{verdict} {ev.champion_version}",
        task_metric=round(ev.task_metric_champion, 4),
        candidate_task_metric=round(ev.task_metric_candidate, 4),
        drop=round(ev.degradation(ev.task_metric_champion, ev.task_metric_candidate), 4),
        interval=None if interval is None else (round(lo, 4), round(hi, 4)),
        p50_ms=champ.p50_ms if champ else None,
        candidate_p50_ms=lead.latency.p50_ms if lead.latency else None,
    )


def champion_line(report: RunReport) -> str:
    c = report.champion
    if c is None:
        return "Champion: none (no promoted version serves yet, or it could not be scored: see the warnings)"
    speed = f"; p50 {c.candidate_p50_ms:.2f} vs {c.p50_ms:.2f} ms" if c.p50_ms and c.candidate_p50_ms else ""
    interval = f" [{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]" if c.interval else ""
    return (
        f"Champion: {c.verdict} (task metric {c.candidate_task_metric:.4f} vs {c.task_metric:.4f}, "
        f"champion minus candidate {c.drop:+.4f}{interval}{speed})"
    )


def rejection_reason(lead: CandidateResult) -> tuple[str, int | None]:
    """Why the closest candidate was not promoted, most fundamental first: the held-out set cannot tell
    (with the rows that would), there is nothing to quantize, the FP32 model measures nothing, or a quality
    or speed gate failed. Each gate declares what its failure means (`rejects_as`, quantgate/gates.py)."""
    from quantgate.gates import HELDOUT_TOO_SMALL

    failed = lead.gates.failed if lead.gates else []
    too_small = [r for r in failed if r.gate.rejects_as == HELDOUT_TOO_SMALL]
    if too_small:
        rows = lead.evaluation.rows if lead.evaluation else 0
        measured = next((r for r in too_small if r.value is not None), None)
        if measured is None:
            return HELDOUT_TOO_SMALL, None
        return HELDOUT_TOO_SMALL, rows_needed(rows, measured.value, measured.gate.limit / 2)
    if any(r.gate.rejects_as == NOTHING_TO_QUANTIZE for r in failed):
        return NOTHING_TO_QUANTIZE, None
    # Any other evidence gate (the FP32 baseline of any task type: Spearman's floor, a classifier's lift
    # over the majority class, the registered expectation) says the FP32 model measures nothing here.
    if any(r.gate.kind == "evidence" for r in failed):
        return "baseline-not-meaningful", None
    return "gates-failed", None


def manifest_for(report: RunReport, registration: Registration) -> Manifest:
    """The manifest of a promotion; `files` is filled in by lifecycle.promote once they are stored."""
    return Manifest(
        model=report.model,
        version=report.version,
        run_id=report.run_id,
        task=report.task,
        recipe=report.recipe.model_dump(mode="json"),
        files=[],
        source={
            "registration": registration_key(registration.ref),
            "source_checksum": registration.source_checksum,
            "files": [f.model_dump() for f in registration.files],
            "heldout": registration.heldout.model_dump(),
            "registered_at": registration.registered_at,
        },
        thresholds=report.thresholds,
        metrics=report.metrics,
        gates=gate_rows(report.gates),
        benchmark=report.benchmark.model_dump(mode="json"),
        environment=report.environment,
    )


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def decision_links(report: RunReport, bucket: str) -> dict[str, str]:
    """Where a person finds what this decision stored: the held-out Data Docs, the plots and, when
    promoted, the model (under the run's own prefix); rejections keep theirs under rejected/."""
    ref = ModelRef(name=report.model, version=report.version)
    promoted = report.outcome == "promoted"
    where = f"s3://{bucket}/" + (artifact_prefix(ref, report.run_id) if promoted else rejected_prefix(ref))
    links = {"data-docs": report.heldout.data_docs}
    if promoted:
        links["promoted-model"] = where + report.recipe_artifact
    links |= {"latency-plot": where + "latency.png", "pareto-plot": where + "pareto.png"}
    timed = report.search.benchmarks.get("candidates") if report.search else None
    if timed is not None and length_rows(timed):
        links["length-plot"] = where + "length.png"
    return {k: v for k, v in links.items() if v}


def decision_plots(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """latency.png (the lead candidate's benchmark round) and pareto.png (every timed candidate)."""
    title = f"{report.model}@{report.version}"
    plots = {"latency.png": latency_plot(report.benchmark, title, out_dir / "latency.png")}
    if report.search:
        search = report.search
        timed = search.benchmarks.get("candidates")
        by_length = length_plot(timed, title, out_dir / "length.png") if timed else None
        if by_length is not None:
            plots["length.png"] = by_length
        axes = [
            PlotAxis(
                metric="task_metric_drop",
                label="task metric drop (FP32 - candidate)",
                limit="max_task_metric_drop",
            ),
            *_plot_axes(report.task),
        ]
        points = [
            ParetoPoint(
                name=c.name,
                p50_ms=c.latency.p50_ms,
                task_metric_drop=c.metrics["task_metric_drop"],
                values={a.metric: c.metrics[a.metric] for a in axes if a.metric in c.metrics},
                passed=c.passed,
                chosen=c.name == search.chosen,
            )
            for c in search.candidates
            if c.latency is not None and "task_metric_drop" in c.metrics
        ]
        first = search.benchmarks["candidates"]
        baselines = {r.engine: r.p50_ms for r in first.results if r.engine in BASELINES}
        panels = [(a.metric, a.label, report.thresholds.get(a.limit) if a.limit else None) for a in axes]
        plots["pareto.png"] = pareto_plot(points, baselines, panels, title, out_dir / "pareto.png")
    return plots


def promotion_files(
    report: RunReport, model_path: Path, tokenizer_files: list[Path], out_dir: Path
) -> dict[str, Path]:
    """What goes under promoted/<m>/<v>/<run>/ besides report.json and manifest.json: every file of the
    artifact as its runtime lists them (model, external data, session settings), the side files under
    tokenizer/, the parity report and the plots."""
    from quantgate.artifact import Artifact
    from quantgate.backends import Servable, get_quantizer

    servable = Servable(model_path, get_quantizer(report.recipe.backend).runtime)
    files = Artifact.collect(servable, tokenizer_files).local_files()
    files["parity_report.json"] = write_json(out_dir / "parity_report.json", report.parity.model_dump())
    files |= decision_plots(report, out_dir)
    return files
