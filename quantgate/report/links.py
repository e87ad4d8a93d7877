"""What a person opens beside a decision: its plots (latency, length, Pareto) and where the decision
stored them."""

from __future__ import annotations

from pathlib import Path

from quantgate.bench import BASELINES
from quantgate.plots import ParetoPoint, latency_plot, length_plot, pareto_plot
from quantgate.registry import ModelRef, artifact_prefix, rejected_prefix
from quantgate.report.model import RunReport
from quantgate.report.tables import length_rows
from quantgate.tasktypes import PlotAxis, task_types


def _plot_axes(task: str) -> tuple[PlotAxis, ...]:
    task_type = task_types().get(task)
    return task_type.plot_axes if task_type else ()


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
