"""The gate stage: evaluate the declarative gates and assemble the run report; publish it to the UI."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.bench import BenchReport
from quantgate.export import ExportResult
from quantgate.gates import GateThresholds, evaluate_gates
from quantgate.heldout import ValidationOutcome
from quantgate.quantize import QuantizeResult
from quantgate.registry import ModelRef
from quantgate.report import RunReport, bench_rows, build_run_report, gate_rows, to_markdown
from quantgate.tasktypes import Evaluation, speed_metrics


@task(name="gate", cache_policy=NO_CACHE)
def decide(
    ref: ModelRef,
    run_id: str,
    task_name: str,
    exported: ExportResult,
    quantized: QuantizeResult,
    evaluation: Evaluation,
    bench: BenchReport,
    thresholds: GateThresholds,
    heldout: ValidationOutcome,
) -> RunReport:
    metrics = {**evaluation.metrics(), **speed_metrics(bench)}
    gates = evaluate_gates(metrics, thresholds.to_gates())
    report = build_run_report(
        ref_name=ref.name,
        ref_version=ref.version,
        run_id=run_id,
        task=task_name,
        recipe=quantized.recipe.model_dump(mode="json"),
        quantized_ops=quantized.op_counts,
        export=exported.model_dump(mode="json", exclude={"tokenizer_files"}),
        heldout={"rows": heldout.rows, "statistics": heldout.statistics},
        metrics=metrics,
        thresholds=thresholds.model_dump(),
        gates=gates,
        parity=evaluation.parity,
        benchmark=bench,
    )
    logger = get_run_logger()
    for row in gate_rows(gates):
        logger.info("gate %-26s %-10s %-10s %s", row["gate"], row["value"], row["limit"], row["result"])
    return report


def _artifact_key(ref: ModelRef, kind: str) -> str:
    # Artifact keys allow lower-case letters, digits and dashes only.
    safe = "".join(c if c.isalnum() else "-" for c in f"{ref.name}-{ref.version}".lower())
    return f"{safe}-{kind}"


@task(name="publish-report", cache_policy=NO_CACHE)
def publish(ref: ModelRef, report: RunReport) -> dict[str, Any]:
    md = create_markdown_artifact(
        key=_artifact_key(ref, "report"),
        markdown=to_markdown(report),
        description=f"quantgate decision for {ref}",
    )
    gates = create_table_artifact(
        key=_artifact_key(ref, "gates"),
        table=gate_rows(report.gates),
        description="each gate: value, limit, margin",
    )
    bench = create_table_artifact(
        key=_artifact_key(ref, "benchmark"),
        table=bench_rows(report.benchmark),
        description="interleaved CPU benchmark",
    )
    return {"markdown": str(md), "gates": str(gates), "benchmark": str(bench)}
