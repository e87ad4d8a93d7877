"""What a promotion writes: the manifest (with the engine versions the promotion was judged with) and the
files beside it under promoted/<m>/<v>/<run>/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantgate.backends import engine_packages
from quantgate.registry import Manifest, Registration, registration_key
from quantgate.report.links import decision_plots
from quantgate.report.model import RunReport
from quantgate.report.tables import gate_rows


def manifest_for(report: RunReport, registration: Registration) -> Manifest:
    """The manifest of a promotion; `files` is filled in by lifecycle.promote once they are stored. Its
    `engine` names the versions of the packages that run the artifact, as the run measured it."""
    recorded = report.environment.get("packages", {})
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
        engine={p: v for p in engine_packages(report.recipe.backend) if (v := recorded.get(p))},
        approval=report.approval,
    )


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


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
