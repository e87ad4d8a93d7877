"""registry-sweep: the safety net. Runs quantize-and-promote for every registered version that has no
decision yet: versions whose registration event was missed, or that another tool uploaded. A decided
version is never run again; a version whose runs keep failing is left alone after `max_failures`; a
version whose own run has not ended yet (queued, running, paused for approval) is left to it.

First it reports the runs that crashed without a report (killed; marked Crashed by the zombie
automation): each gets the report, `failed` tag, decision-key artifact and quantgate.model.failed event a
failed run gives itself, and counts against `max_failures`.

It ends Failed when any of its runs failed (Completed otherwise), with a one-line summary as the state's
message, and publishes the `registry-sweep-summary` artifact: every version it saw, its outcome and the
retries the sweep has left for it."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.quantize_and_promote import quantize_and_promote
from quantgate.backends import AnyRecipe
from quantgate.bench import BenchSettings
from quantgate.lifecycle import sweep_rows, sweep_summary
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from quantgate.settings import Settings
from quantgate.thresholds import GateThresholds
from tasks import announce, gate, storage


def _report_crashes(settings: Settings) -> list[str]:
    """A run killed mid-way (marked Crashed by the zombie automation) wrote no report, no tag, no event:
    the sweep writes its report and publishes, announces and tags it like any failed run."""
    found = []
    for report, key in storage.record_crashes(settings, "registry-sweep"):
        ref = ModelRef(name=report["model"], version=report["version"])
        links = storage.failure_links(settings, report, key)
        gate.publish_failure(ref, report, links, settings.link_expiry_s)
        announce.failure(report)
        announce.tag_failed(report["run_id"])
        found.append(f"{ref} ({report['run_id']})")
    return found


@flow(name="registry-sweep", validate_parameters=True)
def registry_sweep(
    max_runs: int = 10,
    max_failures: int = 3,
    recipes: list[str | AnyRecipe] | None = None,
    thresholds: GateThresholds = GateThresholds(),  # noqa: B008 - pydantic defaults are immutable here
    bench: BenchSettings = BenchSettings(),  # noqa: B008
    budget: SearchBudget = SearchBudget(),  # noqa: B008
    require_approval: bool | None = None,
    approval_timeout_s: int | None = None,
    in_flight_max_age_h: float = 24.0,
    registration_grace_s: float = 600.0,
) -> State:
    """`require_approval`/`approval_timeout_s` reach every run (None: the worker's QUANTGATE_ settings),
    so the sweep never promotes what a registration-triggered run would have asked about; a run waiting
    for approval holds the sweep until it is answered or times out. A version that another run not yet
    ended is deciding (queued behind the pool's concurrency limit, running, paused for approval) is left
    to that run, unless that run was created more than `in_flight_max_age_h` hours ago: checked for every
    undecided version first, then again just before each run (a registration's run can be created while
    the sweep runs others). A version registered less than `registration_grace_s` seconds ago waits for
    the next sweep: its registration's own run may not exist yet."""
    settings = Settings()
    crashed = _report_crashes(settings)  # first: a crash counts against max_failures like any failure
    plan = storage.find_undecided(settings, max_failures)
    plan = plan.hold_back(storage.runs_in_flight(plan.pending, in_flight_max_age_h))
    ran, held, started = {}, {}, 0
    for ref in plan.pending:
        if started == max_runs:
            break
        why = storage.hold_back(settings, ref, in_flight_max_age_h, registration_grace_s)
        if why is not None:
            held[str(ref)] = why
            continue
        started += 1
        state = quantize_and_promote(
            model=ref.name,
            version=ref.version,
            recipes=recipes,
            thresholds=thresholds,
            bench=bench,
            budget=budget,
            require_approval=require_approval,
            approval_timeout_s=approval_timeout_s,
            return_state=True,
        )
        ran[str(ref)] = (state.name, announce.describe_outcome(state))

    rows = sweep_rows(plan.hold_back(held), ran, max_failures)
    summary = sweep_summary(rows) + (f"; crashed run(s) reported: {', '.join(crashed)}" if crashed else "")
    announce.publish_sweep(rows, summary)
    if any(r["outcome"].startswith("failed") for r in rows):
        return Failed(message=summary, data=rows)
    return Completed(message=summary, data=rows)
