"""The run report: one JSON document per run (what was measured, each gate, the decision), plus the
markdown and tables people read in the CLI and the Prefect UI."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from quantgate.bench import BenchReport, cpu_info
from quantgate.evaluate import ParityReport
from quantgate.gates import GateReport
from quantgate.plots import latency_plot
from quantgate.registry import Manifest, Registration, registration_key, utcnow

Outcome = Literal["promoted", "rejected"]

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


class RunReport(BaseModel):
    model: str
    version: str
    run_id: str
    task: str
    outcome: Outcome
    created_at: str = Field(default_factory=utcnow)
    recipe: dict[str, Any]
    quantized_ops: dict[str, int]
    export: dict[str, Any]
    heldout: dict[str, Any]
    metrics: dict[str, float]
    thresholds: dict[str, Any]
    gates: GateReport
    parity: ParityReport
    benchmark: BenchReport
    environment: dict[str, Any]
    promoted_to: str | None = None

    @property
    def passed(self) -> bool:
        return self.gates.passed


def gate_rows(report: GateReport) -> list[dict[str, Any]]:
    return [
        {
            "gate": r.gate.name,
            "value": None if r.value is None else round(r.value, 4),
            "limit": f"{r.gate.op} {r.gate.limit:g}",
            "margin": None if r.margin is None else round(r.margin, 4),
            "result": "pass" if r.passed else "FAIL",
        }
        for r in report.results
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


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("" if r[h] is None else str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(report: RunReport) -> str:
    verdict = "PROMOTED" if report.outcome == "promoted" else "REJECTED (not promoted)"
    s = report.benchmark.settings
    failed = ", ".join(r.gate.name for r in report.gates.failed) or "none"
    return "\n\n".join(
        [
            f"# {report.model}@{report.version}: {verdict}",
            f"Recipe `{report.recipe.get('name')}` · task `{report.task}` · run `{report.run_id}` · "
            f"failed gates: {failed}",
            f"Task metric: FP32 "
            f"{report.metrics['task_metric_fp32']:.4f} → INT8 {report.metrics['task_metric_candidate']:.4f}",
            "## Gates\n\n" + _md_table(gate_rows(report.gates)),
            f"## Benchmark (batch {s.batch}, seq {s.seq_len}, {s.threads} thread(s), "
            f"{s.repeat_runs} interleaved runs; CPU flags "
            f"{', '.join(report.benchmark.cpu.get('flags', []))})\n\n"
            + _md_table(bench_rows(report.benchmark)),
            f"Promoted to: `{report.promoted_to}` (read `manifest.json` there; the latency plot "
            "`latency.png` is under the run's prefix)"
            if report.promoted_to
            else "Nothing was promoted. Report and latency plot under "
            f"`rejected/{report.model}/{report.version}/`.",
        ]
    )


def build_run_report(
    *,
    ref_name: str,
    ref_version: str,
    run_id: str,
    task: str,
    recipe: dict[str, Any],
    quantized_ops: dict[str, int],
    export: dict[str, Any],
    heldout: dict[str, Any],
    metrics: dict[str, float],
    thresholds: dict[str, Any],
    gates: GateReport,
    parity: ParityReport,
    benchmark: BenchReport,
) -> RunReport:
    """The decision is read off the gate report and nothing else."""
    return RunReport(
        model=ref_name,
        version=ref_version,
        run_id=run_id,
        task=task,
        outcome="promoted" if gates.passed else "rejected",
        recipe=recipe,
        quantized_ops=quantized_ops,
        export=export,
        heldout=heldout,
        metrics=metrics,
        thresholds=thresholds,
        gates=gates,
        parity=parity,
        benchmark=benchmark,
        environment=environment(),
    )


def manifest_for(report: RunReport, registration: Registration) -> Manifest:
    """The manifest of a promotion; `files` is filled in by lifecycle.promote once they are stored."""
    return Manifest(
        model=report.model,
        version=report.version,
        run_id=report.run_id,
        task=report.task,
        recipe=report.recipe,
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


def promotion_files(
    report: RunReport, model_path: Path, tokenizer_files: list[Path], out_dir: Path
) -> dict[str, Path]:
    """What goes under promoted/<m>/<v>/ besides report.json and manifest.json."""
    files = {"model.int8.onnx": model_path}
    files |= {f"tokenizer/{p.name}": p for p in tokenizer_files}
    files["parity_report.json"] = write_json(out_dir / "parity_report.json", report.parity.model_dump())
    files["latency.png"] = latency_plot(
        report.benchmark, f"{report.model}@{report.version}", out_dir / "latency.png"
    )
    return files
