"""quantize-and-promote: pull → validate → export → search recipes (the FP32 reference and its evidence
gates, then build, score, benchmark, fallback) → gate → promote | reject. When the FP32 reference fails an
evidence gate (held-out size, the FP32 baseline, the registered expectation) the search stops there: the
run is rejected as every candidate would be, with no candidate built.

The flow wires stages together and decides nothing itself: the search's pure rules pick the fastest
candidate that passes every gate, and the gate stage's report says promote or not.
Optionally (require_approval, off by default) a run whose candidate passed every gate pauses before the
promotion until a person approves (promote, the approver recorded) or rejects it (NotPromoted, reason
by-reviewer); with no answer in time it fails and decides nothing (tasks/approval.py).

Final states: Completed "Promoted", Completed "NotPromoted" (a deliberate rejection, distinct from a crash
in the UI and emitted as prefect.flow-run.NotPromoted), Completed "AlreadyDecided", or Failed (bad input,
storage outage after retries, no approval in time) with the error in the run's own report under runs/,
published under the model's decision key and announced as quantgate.model.failed. Every run ends tagged
with its outcome (`promoted`, `rejected:<reason>`, `failed`, `already-decided`) by a state hook.
"""

from __future__ import annotations

import os
import uuid

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from flows.search import dask_runner, search_recipes
from quantgate.backends import AnyRecipe
from quantgate.bench import BenchSettings
from quantgate.content_cache import prepare_caches
from quantgate.heldout import split_heldout
from quantgate.quantize import resolve_recipes
from quantgate.registry import ModelRef, promoted_prefix, registry_summary
from quantgate.report import RunReport, failure_report, manifest_for, promotion_files
from quantgate.search import SearchBudget
from quantgate.search_driver import candidate_path
from quantgate.settings import Settings
from quantgate.tasktypes import check_profile, get_task_type, serving_settings
from quantgate.thresholds import GateThresholds
from quantgate.workspace import workspace
from tasks import announce, approval, candidate, gate, storage, validate


def _report_failure(
    settings: Settings, ref: ModelRef, run_id: str, exc: Exception, data_docs: str | None
) -> None:
    """Every run ends with a report, whatever raised: the sweep counts failures from these, the UI shows
    it under the model's decision key (with the Data Docs when they were stored), automations get
    quantgate.model.failed. The error that failed the run is re-raised by the flow, unchanged."""
    failed = failure_report(ref, run_id, exc, data_docs)
    saved = storage.save_run_report(settings, ref, run_id, opaque(failed))
    links = storage.failure_links(settings, opaque(failed), saved)
    gate.publish_failure(ref, failed, links, settings.link_expiry_s)
    announce.failure(opaque(failed))


def _report_decision(settings: Settings, ref: ModelRef, report: RunReport, lost_race: str | None) -> None:
    """A decided run keeps its report under runs/, publishes it and its tables and links, and announces
    the decision (unless a concurrent run decided first: then it links nothing and announces nothing)."""
    storage.save_run_report(settings, ref, report.run_id, opaque(report.model_dump(mode="json")))
    links = {} if lost_race else storage.decision_links(settings, opaque(report))
    gate.publish_report(ref, report, links, settings.link_expiry_s)  # the run's first artifact
    gate.publish(ref, opaque(report), links, settings.link_expiry_s)
    if not lost_race:
        announce.decision(opaque(report.model_dump(mode="json")))


@flow(
    name="quantize-and-promote",
    flow_run_name="{model}@{version}",
    validate_parameters=True,
    task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1),
    on_completion=[announce.tag_outcome],
    on_failure=[announce.tag_outcome],
    on_crashed=[announce.tag_outcome],  # a crash its process survives; a killed one is tagged by the sweep
)
def quantize_and_promote(
    model: str,
    version: str,
    recipes: list[str | AnyRecipe] | None = None,
    thresholds: GateThresholds = GateThresholds(),  # noqa: B008 - pydantic defaults are immutable here
    bench: BenchSettings = BenchSettings(),  # noqa: B008
    budget: SearchBudget = SearchBudget(),  # noqa: B008
    allow_pickle: bool = False,
    require_approval: bool | None = None,
    approval_timeout_s: int | None = None,
) -> State:
    """`recipes`: catalogue names or full recipe objects (None = the default search); `budget` bounds the
    search (candidates, fallback trials, seconds). `require_approval`: pause after every gate passed until
    a person approves or rejects (None: QUANTGATE_REQUIRE_APPROVAL, off by default), waiting at most
    `approval_timeout_s` (None: QUANTGATE_APPROVAL_TIMEOUT_S, 3600)."""
    ref = ModelRef(name=model, version=version)
    # A bad recipe list fails before anything is pulled; none given = the task type's default search.
    candidates = resolve_recipes(recipes) if recipes else None
    settings = Settings()
    ask_within = approval.wait_s(settings, require_approval, approval_timeout_s)  # None: do not ask
    run_id = str(flow_run.get_id() or uuid.uuid4())
    data_docs = None  # where the held-out validation's Data Docs were stored, once they were

    try:
        decided = storage.find_decision(ref, settings)
        finished = None
        if decided == "promoted":
            # A run that failed or was killed after its manifest: finish its pointer, audit and event.
            finished = storage.finish_promotion(ref, settings)
            if finished is not None:
                announce.decision(finished)
        if decided is not None:
            note = "finished its interrupted promotion" if finished else "nothing to do"
            return Completed(
                name="AlreadyDecided",
                message=f"{ref} is already {decided}; {note}",
                data={"outcome": decided, "model": model, "version": version},
            )

        # Both local folders are checked before anything is pulled: an unusable export cache would
        # otherwise fail the run only after the download and the held-out validation.
        prepare_caches(settings)
        with workspace(settings.work_dir, run_id) as work:
            # -- pull and check the data ------------------------------------------------------------------
            pulled = storage.pull_version(ref, settings, work / "source")
            task_type = get_task_type(pulled.registration.task)
            if candidates is None:
                candidates = resolve_recipes(None, task_type.default_recipes)
            expected = pulled.registration.expect_metric
            if expected is not None:  # the registering team's own measurement gates the FP32 model too
                thresholds = thresholds.model_copy(
                    update={"expect_metric": expected.value, "expect_tolerance": expected.tolerance}
                )
            # The serving profile the decision is taken on: the run's, else the one declared at register,
            # else the task type's default (requests drawn from the held-out set).
            bench = serving_settings(
                task_type, bench if bench.profile else bench.model_copy(
                    update={"profile": pulled.registration.profile}
                ),
            )  # fmt: skip
            check_profile(task_type, pulled.model_dir, bench.profile)
            heldout, heldout_check = validate.validate(
                pulled.heldout_path, task_type, pulled.model_dir, work / "data_docs"
            )
            data_docs = storage.save_data_docs(
                settings, ref, run_id, work / "data_docs", heldout_check.data_docs
            )
            validate.require(opaque(heldout_check), pulled.heldout_path.name)

            split = split_heldout(
                heldout,
                budget.calibration_rows,
                budget.max_eval_rows,
                list(task_type.heldout_schema(pulled.model_dir).columns),
            )

            # -- the FP32 baseline ----------------------------------------------------------------------
            exported = candidate.export(
                task_type,
                pulled.model_dir,
                heldout,
                settings.cache_dir,
                pulled.registration.source_checksum,
                thresholds.export_atol,
                allow_pickle,
            )

            # -- the serving version (if any), judged beside the candidates --------------------------------
            champion = storage.pull_champion(ref, task_type.name, settings, work / "champion")

            # -- every candidate recipe, measured against it on the same data and harness -----------------
            search = search_recipes(
                task_type,
                pulled.model_dir,
                exported,
                split,
                candidates,
                thresholds,
                bench,
                budget,
                allow_pickle,
                work,
                champion,
                settings.build_cache_dir,
                settings.prediction_cache_dir,
                dask_runner(settings),  # None: the candidates are scored on this flow's threads
            )

            # -- decide and act on the decision -----------------------------------------------------------
            report = gate.decide(
                ref, run_id, task_type.name, exported, split, opaque(heldout_check), opaque(search), data_docs
            )
            if report.passed and ask_within:
                # A person has the last word before the pointer moves (tasks/approval.py).
                report = approval.ask(ref, report, ask_within)
            if report.passed:
                report = report.model_copy(
                    update={"promoted_to": f"s3://{settings.bucket}/{promoted_prefix(ref)}"}
                )
                lost_race = storage.promote(
                    settings,
                    opaque(manifest_for(report, pulled.registration)),
                    promotion_files(
                        report,
                        candidate_path(search, report.recipe.name, work),
                        exported.tokenizer_files,
                        work / "out",
                    ),
                    opaque(report.model_dump(mode="json")),
                )
            else:
                lost_race = storage.record_rejection(settings, ref, opaque(report.model_dump(mode="json")))
            _report_decision(settings, ref, report, lost_race)
    except Exception as exc:
        _report_failure(settings, ref, run_id, exc, data_docs)
        raise

    if lost_race:
        return Completed(name="AlreadyDecided", message=lost_race, data=report.model_dump(mode="json"))
    summary = registry_summary(report.outcome, ref, report.gates.failed, report.reason, report.rows_needed)
    return Completed(
        name="Promoted" if report.passed else "NotPromoted",
        message=summary,
        data=report.model_dump(mode="json"),
    )
