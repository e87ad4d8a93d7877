"""The approval step (off by default): after every gate passed and before anything is promoted, the run
pauses with Prefect's own pause/resume and waits for typed input, approve or reject, by whom, a comment.

Prefect 3.8.8's `pause_flow_run` (reschedule=False, the default) keeps the flow's process alive and polls
the API until the run is resumed, so it works for any run that talks to a Prefect API a person can reach:
a worker's deployment run, `quantgate run` against a server, a sub-flow of the registry sweep. It does not
need a deployment (only `reschedule=True`, which frees the process, does). The process, its work folder
and its candidates stay in place meanwhile; heartbeats go on, so the zombie automation leaves it alone.
The UI shows the input's form on the paused run ("Resume"); `quantgate approve|reject` resumes it from a
terminal; `prefect.flow_runs.resume_flow_run(id, run_input={...})` from code."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from pydantic import Field

from quantgate.approval import ApprovalTimeoutError, apply_approval, approval_line, timeout_message
from quantgate.errors import ConfigError, ConflictError, NotFoundError
from quantgate.registry import Approval, ModelRef
from quantgate.report import RunReport, to_markdown
from quantgate.settings import Settings
from tasks import announce

# How often the paused run asks the API whether it was resumed (Prefect's default is 10 s): an answer is
# acted on within this many seconds; one small GET each time.
POLL_S = 2


class ApprovalInput(RunInput):
    """The form the Prefect UI shows on the paused run, and what `resume_flow_run(run_input=...)` takes."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: promote this candidate (current.json moves); reject: record a rejection "
        "(reason by-reviewer), nothing promoted"
    )
    by: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^\S(.*\S)?$",
        description="who decides (recorded in the report, manifest and tags)",
    )
    comment: str | None = Field(default=None, max_length=2000, description="why, for the record")


def wait_s(settings: Settings, require: bool | None, timeout_s: int | None) -> int | None:
    """How long a run waits for approval, None when it does not ask: the flow's parameters, else the
    settings (QUANTGATE_REQUIRE_APPROVAL, off by default; QUANTGATE_APPROVAL_TIMEOUT_S)."""
    if timeout_s is not None and timeout_s < 1:
        raise ConfigError(f"approval_timeout_s ({timeout_s}) must be at least 1 second")
    if not (settings.require_approval if require is None else require):
        return None
    return settings.approval_timeout_s if timeout_s is None else timeout_s


def request_key(ref: ModelRef) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in f"{ref.name}-{ref.version}".lower())
    return f"{safe}-approval-request"


def _request(report: RunReport, timeout_s: int) -> str:
    ref = f"{report.model}@{report.version}"
    recipe = report.recipe.name if report.recipe else "-"
    return (
        f"**{ref} passed every gate with `{recipe}`** and waits for a person before it is promoted "
        f"(at most {timeout_s} s; then the run fails and decides nothing). **approve** promotes it; "
        "**reject** records a rejection (reason `by-reviewer`) and promotes nothing. The whole report is "
        f"this run's `{request_key(ModelRef(name=report.model, version=report.version))}` artifact."
    )


def ask(ref: ModelRef, report: RunReport, timeout_s: int) -> RunReport:
    """Publish the candidate's report, pause the run until a reviewer answers, and return the report with
    their answer applied (quantgate.approval.apply_approval). Called by the flow itself, not from a task:
    a pause is the flow run's. Raises ApprovalTimeoutError when nobody answers in time."""
    logger = get_run_logger()
    create_markdown_artifact(
        key=request_key(ref),
        markdown=_request(report, timeout_s) + "\n\n" + to_markdown(report),
        description=f"{ref}: passed every gate; waiting for approval (approve or reject) before promotion",
    )
    logger.info("%s passed every gate: waiting up to %d s for approval (approve or reject)", ref, timeout_s)
    form = ApprovalInput.with_initial_data(description=_request(report, timeout_s))
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=POLL_S)
    except FlowPauseTimeout:
        # Prefect's server fails a run whose pause expired, whatever the flow proposes next (its message
        # reads "The flow was failed and never resumed."): the run report says what happened.
        raise ApprovalTimeoutError(timeout_message(ref, timeout_s)) from None
    approval = Approval(decision=answer.decision, by=answer.by, comment=answer.comment or None)
    logger.info("%s: %s", ref, approval_line(approval))
    announce.tag_approval(approval)
    return apply_approval(report, approval)


def paused_runs(ref: ModelRef) -> list[UUID]:
    """The quantize-and-promote runs of this version waiting for approval (normally one), oldest first."""
    from tasks.runs import flow_runs

    runs = flow_runs("PAUSED", name=str(ref))
    return [r.id for r in runs]


def resume(ref: ModelRef, decision: Literal["approve", "reject"], by: str, comment: str | None) -> UUID:
    """Answer the run of `ref` that waits for approval (`quantgate approve|reject`); its id. The server
    checks the answer against the form the run saved (ApprovalInput) before the run goes on."""
    from prefect.exceptions import PrefectException, PrefectHTTPStatusError
    from prefect.flow_runs import resume_flow_run

    waiting = paused_runs(ref)
    if not waiting:
        raise NotFoundError(
            f"no run of {ref} is waiting for approval on this Prefect server (PREFECT_API_URL): "
            "it was answered, timed out, or never asked (QUANTGATE_REQUIRE_APPROVAL is off by default)"
        )
    if len(waiting) > 1:
        raise ConflictError(
            f"{len(waiting)} runs of {ref} wait for approval ({', '.join(map(str, waiting))}): answer each "
            "in the Prefect UI (the run's Resume button), or cancel all but one"
        )
    answer = ApprovalInput(decision=decision, by=by, comment=comment).model_dump(mode="json")
    try:
        resume_flow_run(waiting[0], run_input={k: v for k, v in answer.items() if v is not None})
    except (PrefectException, PrefectHTTPStatusError, RuntimeError) as exc:  # expired, answered meanwhile
        raise ConflictError(f"run {waiting[0]} of {ref} could not be resumed: {exc}") from None
    return waiting[0]
