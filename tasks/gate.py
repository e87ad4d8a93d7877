"""The gate stage: assemble the run report from the judged candidates; publish it to the UI."""

from __future__ import annotations

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
    gate_rows,
    to_markdown,
)
from quantgate.search import SearchResult
from quantgate.tasktypes import get_task_type
from quantgate.thresholds import GateThresholds, limits_for


@task(name="gate", cache_policy=NO_CACHE)
def decide(
    ref: ModelRef,
    run_id: str,
    task_name: str,
    exported: ExportResult,
    split: HeldoutSplit,
    heldout: ValidationOutcome,
    thresholds: GateThresholds,
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
        thresholds=thresholds.resolved(limits_for(get_task_type(task_name))),
        search=search,
    )
    logger = get_run_logger()
    for row in candidate_rows(search, task_name):
        logger.info("%-40s %-8s %s", row["candidate"], row["result"], row["failed_gates"])
    logger.info("decision: %s (%s)", report.outcome, search.chosen or f"none passed; closest {search.lead}")
    return report


def _artifact_key(ref: ModelRef, kind: str) -> str:
    # Artifact keys allow lower-case letters, digits and dashes only.
    safe = "".join(c if c.isalnum() else "-" for c in f"{ref.name}-{ref.version}".lower())
    return f"{safe}-{kind}"


@task(name="publish-report", cache_policy=NO_CACHE)
def publish(ref: ModelRef, report: RunReport, links: dict[str, str]) -> dict[str, Any]:
    md = create_markdown_artifact(
        key=_artifact_key(ref, "report"),
        markdown=to_markdown(report, links),
        description=f"quantgate decision for {ref}",
    )
    gates = create_table_artifact(
        key=_artifact_key(ref, "gates"),
        table=gate_rows(report.gates),
        description="each gate of the promoted (or closest) candidate: value, limit, margin",
    )
    bench = create_table_artifact(
        key=_artifact_key(ref, "benchmark"),
        table=bench_rows(report.benchmark),
        description="interleaved CPU benchmark",
    )
    out = {"markdown": str(md), "gates": str(gates), "benchmark": str(bench)}
    examples = example_rows(report)
    if examples:
        out["examples"] = str(
            create_table_artifact(
                key=_artifact_key(ref, "examples"),
                table=examples,
                description="the held-out examples the candidate moved most: flipped predictions first",
            )
        )
    if report.search:
        out["candidates"] = str(
            create_table_artifact(
                key=_artifact_key(ref, "candidates"),
                table=candidate_rows(report.search, report.task),
                description="every candidate recipe: size, latency, metrics, pass/fail and why",
            )
        )
    for name, url in links.items():
        out[name] = str(create_link_artifact(key=_artifact_key(ref, name), link=url, link_text=name))
    return out
