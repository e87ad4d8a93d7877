"""quantize-and-promote: pull → validate → export → quantize → parity → benchmark → gate → promote | reject.

The flow wires stages together and decides nothing itself: the gate stage's report says promote or not.
Final states: Completed "Promoted", Completed "NotPromoted" (a deliberate rejection, distinct from a crash
in the UI and emitted as prefect.flow-run.NotPromoted), Completed "AlreadyDecided", or Failed (bad input,
storage outage after retries) with the error in the run's own report under runs/.
"""

from __future__ import annotations

import uuid

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

from quantgate.bench import BenchSettings
from quantgate.errors import QuantgateError
from quantgate.gates import GateThresholds
from quantgate.quantize import DEFAULT_RECIPE, get_recipe
from quantgate.registry import ModelRef, promoted_prefix, registry_summary
from quantgate.report import manifest_for, promotion_files
from quantgate.settings import Settings
from quantgate.tasktypes import get_task_type
from quantgate.workspace import workspace
from tasks import announce, candidate, gate, storage, validate


@flow(name="quantize-and-promote", flow_run_name="{model}@{version}", validate_parameters=True)
def quantize_and_promote(
    model: str,
    version: str,
    recipe: str = DEFAULT_RECIPE,
    thresholds: GateThresholds = GateThresholds(),  # noqa: B008 - pydantic defaults are immutable here
    bench: BenchSettings = BenchSettings(),  # noqa: B008
    allow_pickle: bool = False,
) -> State:
    ref = ModelRef(name=model, version=version)
    get_recipe(recipe)  # an unknown recipe is a bad parameter: fail before pulling anything
    settings = Settings()
    run_id = str(flow_run.get_id() or uuid.uuid4())

    decided = storage.find_decision(ref, settings)
    if decided == "promoted":
        storage.finish_promotion(ref, settings)  # repairs a promotion killed after its manifest
    if decided is not None:
        return Completed(
            name="AlreadyDecided",
            message=f"{ref} is already {decided}; nothing to do",
            data={"outcome": decided, "model": model, "version": version},
        )

    try:
        with workspace(settings.work_dir, run_id) as work:
            # -- pull and check the data ------------------------------------------------------------------
            pulled = storage.pull_version(ref, settings, work / "source")
            task_type = get_task_type(pulled.registration.task)
            heldout, heldout_check = validate.validate(pulled.heldout_path, task_type)

            # -- build the candidate ----------------------------------------------------------------------
            exported = candidate.export(
                task_type,
                pulled.model_dir,
                heldout,
                settings.cache_dir,
                pulled.registration.source_checksum,
                thresholds.export_atol,
                allow_pickle,
            )
            quantized = candidate.quantize(recipe, exported.onnx_path, work / "quantized")

            # -- measure it against the FP32 baseline on the same data and harness ------------------------
            evaluation = candidate.check_parity(
                task_type,
                exported.onnx_path,
                quantized.path,
                exported.tokenizer_files[0].parent,
                heldout,
                thresholds.abs_tol,
                thresholds.mean_tol,
            )
            bench_report = candidate.benchmark(
                task_type,
                pulled.model_dir,
                exported.onnx_path,
                quantized.path,
                exported.tokenizer_files[0].parent,
                heldout,
                bench,
                allow_pickle,
            )

            # -- decide and act on the decision -----------------------------------------------------------
            report = gate.decide(
                ref,
                run_id,
                task_type.name,
                exported,
                quantized,
                evaluation,
                bench_report,
                thresholds,
                heldout_check,
            )
            if report.passed:
                report = report.model_copy(
                    update={"promoted_to": f"s3://{settings.bucket}/{promoted_prefix(ref)}"}
                )
                lost_race = storage.promote(
                    settings,
                    manifest_for(report, pulled.registration),
                    promotion_files(report, quantized.path, exported.tokenizer_files, work / "out"),
                    report.model_dump(mode="json"),
                )
            else:
                lost_race = storage.record_rejection(
                    settings, ref, report.model_dump(mode="json"), report.parity.model_dump()
                )
            storage.save_run_report(settings, ref, run_id, report.model_dump(mode="json"))
            gate.publish(ref, report)
            if not lost_race:
                announce.decision(report.model_dump(mode="json"))
    except QuantgateError as exc:
        storage.save_run_report(
            settings,
            ref,
            run_id,
            {
                "model": model,
                "version": version,
                "run_id": run_id,
                "outcome": "failed",
                "error": type(exc).__name__,
                "message": str(exc),
            },
        )
        raise

    if lost_race:
        return Completed(name="AlreadyDecided", message=lost_race, data=report.model_dump(mode="json"))
    summary = registry_summary(report.outcome, ref, report.gates.failed)
    return Completed(
        name="Promoted" if report.passed else "NotPromoted",
        message=summary,
        data=report.model_dump(mode="json"),
    )
