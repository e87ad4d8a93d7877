"""The gate stage: assemble the run report from the judged candidates; publish it to the UI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.export import ExportResult
from quantgate.heldout import HeldoutSplit, ValidationOutcome
from quantgate.registry import ModelRef
from quantgate.report import (
    ExportSummary,
    HeldoutSummary,
    RunReport,
    bench_rows,
    build_run_report,
    candidate_rows,
    example_rows,
    failure_markdown,
    failure_reason,
    gate_rows,
    plain_rows,
    text_rows,
    to_markdown,
)
from quantgate.search import SearchResult


@task(name="gate", cache_policy=NO_CACHE)
def decide(
    ref: ModelRef,
    run_id: str,
    task_name: str,
    exported: ExportResult,
    split: HeldoutSplit,
    heldout: ValidationOutcome,
    search: SearchResult,
    data_docs: str | None = None,
) -> RunReport:
    report = build_run_report(
        ref_name=ref.name,
        ref_version=ref.version,
        run_id=run_id,
        task=task_name,
        export=ExportSummary.of(exported),
        heldout=HeldoutSummary(
            rows=heldout.rows, statistics=heldout.statistics, **split.summary(), data_docs=data_docs
        ),
        thresholds=search.limits,
        search=search,
    )
    logger = get_run_logger()
    for row in candidate_rows(search, task_name):
        logger.info("%-40s %-8s %s", row["candidate"], row["result"], row["failed_gates"])
    if search.stopped_early:
        how = "no candidate built: the FP32 reference failed " + report.gates.failure_brief()
    else:
        how = search.chosen or f"none passed; closest {search.lead}"
    logger.info("decision: %s (%s)", report.outcome, how)
    return report


def _artifact_key(ref: ModelRef, kind: str) -> str:
    # Artifact keys allow lower-case letters, digits and dashes only.
    safe = "".join(c if c.isalnum() else "-" for c in f"{ref.name}-{ref.version}".lower())
    return f"{safe}-{kind}"


def decision_key(model: str) -> str:
    """One key per model for the markdown report: the Artifacts page shows its versions as a history."""
    return "".join(c if c.isalnum() else "-" for c in model.lower()) + "-decision"


# What each link opens: (link text, description). Prefect shows both on the link card.
LINKS = {
    "report-json": ("decision report (JSON)", "every candidate, gate and measurement behind this decision"),
    "promoted-model": ("promoted model", "the promoted model file (beside it: its session settings)"),
    "run-report": ("failed run's report (JSON)", "what failed the run: the error, its message, the checks"),
    "data-docs": ("held-out Data Docs", "Great Expectations validation of the held-out set"),
    "latency-plot": ("latency plot", "p50/p95/p99 per engine in the lead candidate's benchmark round"),
    "pareto-plot": ("Pareto plot", "latency against each accuracy metric, one marker per candidate"),
    "length-plot": ("latency by input length", "p50 per engine per input-length bucket"),
}


def _until(expires_s: int | None) -> str:
    if not expires_s:
        return ""
    until = datetime.now(UTC) + timedelta(seconds=expires_s)
    return f" Presigned: opens without credentials until {until:%Y-%m-%d %H:%M} UTC."


def publish_report(
    ref: ModelRef, report: RunReport, links: dict[str, str], links_expire_s: int | None = None
) -> str:
    """The markdown report, created by the flow itself (not inside a task) so the run's Artifacts tab
    lists it first, under "Flow run", above the task's tables and links (which Prefect 3.8.8 lists in
    the order of their random ids)."""
    verdict = "promoted" if report.outcome == "promoted" else f"rejected ({report.reason})"
    return str(
        create_markdown_artifact(
            key=decision_key(ref.name),
            markdown=to_markdown(report, links, links_expire_s),
            description=f"{ref}: {verdict}. The decision of run {report.run_id}: verdict, gates, "
            "candidates, benchmark, plots and links.",
        )
    )


def publish_failure(
    ref: ModelRef, report: dict[str, Any], links: dict[str, str], links_expire_s: int | None = None
) -> str | None:
    """A failed run's report under the model's decision key (the Artifacts page's history shows the
    failure between decisions), with link cards to its run report and Data Docs when they were stored.
    Created by the flow like publish_report; best effort: it must never hide the error that failed the
    run."""
    try:
        artifact = create_markdown_artifact(
            key=decision_key(ref.name),
            markdown=failure_markdown(report, links, links_expire_s),
            description=f"{ref}: failed ({failure_reason(report, 200)}). Run {report['run_id']}: no decision",
        )
        for name, url in links.items():
            text, what = LINKS.get(name, (name, name))
            create_link_artifact(
                key=_artifact_key(ref, name),
                link=url,
                link_text=text,
                description=f"{ref}: {what}." + (_until(links_expire_s) if url.startswith("http") else ""),
            )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        get_run_logger().warning("the failed run's report was not published: %s: %s", type(exc).__name__, exc)
        return None
    return str(artifact)


@task(name="publish-report", cache_policy=NO_CACHE)
def publish(
    ref: ModelRef, report: RunReport, links: dict[str, str], links_expire_s: int | None = None
) -> dict[str, Any]:
    """The tables and link cards beside the report (publish_report)."""
    lead = report.recipe.name if report.recipe else None
    whose = (
        f"`{lead}` (the promoted or closest candidate)"
        if lead
        else "the FP32 reference (judged before any candidate: none was built)"
    )
    gates = create_table_artifact(
        key=_artifact_key(ref, "gates"),
        table=text_rows(gate_rows(report.gates)),
        description=f"{ref}: each gate of {whose}: value, limit, margin",
    )
    out = {"gates": str(gates)}
    if report.benchmark is not None:
        out["benchmark"] = str(
            create_table_artifact(
                key=_artifact_key(ref, "benchmark"),
                table=text_rows(bench_rows(report.benchmark)),
                description=f"{ref}: interleaved CPU benchmark ({report.benchmark.describe()})",
            )
        )
    examples = example_rows(report)
    if examples:
        out["examples"] = str(
            create_table_artifact(
                key=_artifact_key(ref, "examples"),
                table=text_rows(plain_rows(examples)),
                description=f"{ref}: the held-out examples `{lead}` moved most, flipped predictions first: "
                "input, gold label, FP32 output, candidate output",
            )
        )
    if report.search and report.search.candidates:
        out["candidates"] = str(
            create_table_artifact(
                key=_artifact_key(ref, "candidates"),
                table=text_rows(candidate_rows(report.search, report.task)),
                description=f"{ref}: every candidate recipe, decision first (result, failed gates), then "
                "size, latency and metrics",
            )
        )
    for name, url in links.items():
        text, what = LINKS.get(name, (name, name))
        out[name] = str(
            create_link_artifact(
                key=_artifact_key(ref, name),
                link=url,
                link_text=text,
                description=f"{ref}: {what}." + (_until(links_expire_s) if url.startswith("http") else ""),
            )
        )
    return out
