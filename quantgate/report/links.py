"""What a person opens beside a decision: its plots (latency, length, Pareto) and where the decision
stored them."""

from __future__ import annotations

from pathlib import Path

from quantgate.bench import BASELINES
from quantgate.plots import ParetoPoint, latency_plot, length_plot, pareto_plot
from quantgate.registry import ModelRef, artifact_prefix, rejection_files_prefix, rejection_key
from quantgate.report.model import RunReport
from quantgate.report.tables import length_rows
from quantgate.store import Store
from quantgate.tasktypes import PlotAxis, task_types


def _plot_axes(task: str) -> tuple[PlotAxis, ...]:
    task_type = task_types().get(task)
    return task_type.plot_axes if task_type else ()


def decision_keys(report: RunReport) -> dict[str, str]:
    """The storage keys of what a person opens beside this decision: the report, the held-out Data Docs,
    the plots and, when promoted, the model. A promotion keeps its files under the run's own prefix; a
    rejection its record at rejected/<m>/<v>/report.json and its plots under rejected/<m>/<v>/<run-id>/."""
    ref = ModelRef(name=report.model, version=report.version)
    promoted = report.outcome == "promoted"
    where = artifact_prefix(ref, report.run_id) if promoted else rejection_files_prefix(ref, report.run_id)
    keys = {"report-json": where + "report.json" if promoted else rejection_key(ref)}
    if promoted:
        keys["promoted-model"] = where + report.recipe_artifact
    docs = stored_key(report.heldout.data_docs)
    if docs:
        keys["data-docs"] = docs
    if report.benchmark is not None:  # None: no candidate was built, nothing was timed or plotted
        keys["latency-plot"] = where + "latency.png"
    if report.search and report.search.candidates:
        timed = report.search.benchmarks.get("candidates")
        if timed is not None and length_rows(timed):
            keys["length-plot"] = where + "length.png"
        keys["pareto-plot"] = where + "pareto.png"
    return keys


def stored_key(address: str | None) -> str | None:
    """The key inside an `s3://bucket/key` address (how reports record where things are stored)."""
    if not address:
        return None
    if address.startswith("s3://"):
        return address.removeprefix("s3://").partition("/")[2] or None
    return address


def browser_links(store: Store, keys: dict[str, str], expires_s: int) -> dict[str, str]:
    """Addresses a browser opens: presigned HTTP(S) GETs valid for `expires_s` seconds, or the s3://
    address where the store cannot presign (the in-memory one)."""
    return {name: store.presign(key, expires_s) or f"s3://{store.bucket}/{key}" for name, key in keys.items()}


def decision_links(report: RunReport, store: Store, expires_s: int) -> dict[str, str]:
    """decision_keys as links a browser opens (see browser_links)."""
    return browser_links(store, decision_keys(report), expires_s)


def decision_plots(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """latency.png (the lead candidate's benchmark round) and pareto.png (every timed candidate)."""
    title = f"{report.model}@{report.version}"
    if report.benchmark is None:  # no candidate was built: nothing was timed
        return {}
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
