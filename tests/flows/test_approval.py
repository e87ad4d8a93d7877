"""The optional approval step (#23): a run whose candidate passed every gate pauses (Prefect's
pause_flow_run with typed input) until someone resumes it from another thread, as a reviewer would from
the UI, the CLI or code. Approve promotes and names the approver; reject records a rejection with reason
by-reviewer and stores nothing else; no answer in time fails the run and decides nothing. The real flow
on the in-memory store, tiny model, an in-process run against the session's Prefect API (no deployment)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.registry import ModelRef, current_key, rejected_prefix, run_prefix
from tests.conftest import HANG_S
from tests.flows.test_run_outcomes import RUN, _artifacts, _flow_run, _register

pytestmark = pytest.mark.usefixtures("prefect_api")

# The tiny run reaches its pause in well under a minute alone (144 s once beside the other tiers at nice 19);
# bounded, never a sleep. Also the runs' approval timeout: the reviewer answers within a second of the pause.
PAUSE_WAIT_S = int(HANG_S)


def _when_paused(
    store: Any, ref: ModelRef, answer: Callable[[Any], None]
) -> tuple[threading.Thread, dict[str, Any]]:
    """A reviewer in another thread: polls until the run of `ref` waits for approval, notes what storage
    holds then, and calls `answer(flow_run_id)`. The thread runs in a copy of this context, so it talks to
    the same Prefect API."""
    from tasks.approval import paused_runs

    seen: dict[str, Any] = {}

    def reviewer() -> None:
        try:
            deadline = time.monotonic() + PAUSE_WAIT_S
            while not (waiting := paused_runs(ref)) and time.monotonic() < deadline:
                time.sleep(0.5)
            seen["paused"] = waiting
            if waiting:
                seen["store_while_paused"] = sorted(store.snapshot())
                answer(waiting[0])
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertion below
            seen["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(reviewer,), daemon=True)
    thread.start()
    return thread, seen


def _run(version: str, **approval: Any):
    return quantize_and_promote(model="tiny", version=version, **RUN, **approval, return_state=True)


def test_an_approved_run_promotes_and_names_its_approver(memory_env, tiny_model_dir, small_sts):
    from typer.testing import CliRunner

    from quantgate.cli import app

    store = memory_env()
    ref = _register(store, "ap", tiny_model_dir, small_sts)
    outputs: list[str] = []

    def approve(_run_id: Any) -> None:
        result = CliRunner().invoke(app, ["approve", "tiny", "ap", "--by", "ann", "--comment", "latency ok"])
        outputs.append(result.output)

    thread, seen = _when_paused(store, ref, approve)
    state = _run("ap", require_approval=True, approval_timeout_s=PAUSE_WAIT_S)
    thread.join(timeout=HANG_S)
    assert "error" not in seen, seen
    assert seen["paused"] == [state.state_details.flow_run_id]
    # While it waited, nothing was promoted: the pointer moves only after the answer.
    assert not [k for k in seen["store_while_paused"] if k.startswith("promoted/")]
    assert "tiny@ap: run" in outputs[0], outputs
    assert "approved" in outputs[0], outputs

    assert state.name == "Promoted", state.message
    report = state.result()
    assert (report["approval"]["decision"], report["approval"]["by"]) == ("approve", "ann")
    assert report["approval"]["comment"] == "latency ok"
    manifest = lifecycle.load_manifest(store, ref)
    assert manifest.approval is not None
    assert manifest.approval.by == "ann"
    assert lifecycle.current(store, "tiny").version == "ap"
    tags = _flow_run(state).tags
    assert {"promoted", "approved-by:ann"} <= set(tags), tags
    shown = CliRunner().invoke(app, ["report", "tiny", "ap"])
    assert "review: approved by ann at" in " ".join(shown.output.split()), shown.output
    found = _artifacts(state.state_details.flow_run_id, ["tiny-ap-approval-request", "tiny-decision"])
    assert "waits for a person" in found["tiny-ap-approval-request"].data
    assert "approved by ann" in found["tiny-decision"].data


def test_a_rejected_run_stores_nothing_but_its_rejection_and_run_report(
    memory_env, tiny_model_dir, small_sts
):
    from prefect.flow_runs import resume_flow_run

    store = memory_env()
    ref = _register(store, "rj", tiny_model_dir, small_sts)
    before = store.snapshot()

    def reject(run_id: Any) -> None:
        # The server checks an answer against the run's form: a decision it does not offer is refused.
        with pytest.raises(RuntimeError, match="Cannot resume"):
            resume_flow_run(run_id, run_input={"decision": "maybe", "by": "bob"})
        resume_flow_run(run_id, run_input={"decision": "reject", "by": "bob", "comment": "wait for v2"})

    thread, seen = _when_paused(store, ref, reject)
    state = _run("rj", require_approval=True, approval_timeout_s=PAUSE_WAIT_S)
    thread.join(timeout=HANG_S)
    assert "error" not in seen, seen

    assert state.name == "NotPromoted", state.message
    assert "by-reviewer" in state.message
    assert lifecycle.decision_of(store, ref) == "rejected"
    record = lifecycle.load_rejection(store, ref)
    assert (record["reason"], record["approval"]["by"]) == ("by-reviewer", "bob")
    assert all(r["passed"] for r in record["gates"]["results"])  # every gate passed: the reviewer decided
    tags = _flow_run(state).tags
    assert {"rejected:by-reviewer", "rejected-by:bob"} <= set(tags), tags

    # Storage as it was, apart from the run's own report: its rejection record (with its side files) and
    # its run report. Nothing promoted, no pointer, nothing registered changed.
    after = store.snapshot()
    assert {k: v for k, v in after.items() if k in before} == before
    own = (rejected_prefix(ref), run_prefix(ref, str(state.state_details.flow_run_id)))
    assert [k for k in after if k not in before and not k.startswith(own)] == []
    assert not store.exists(current_key("tiny"))


def test_a_run_nobody_answers_fails_in_time_and_decides_nothing(memory_env, tiny_model_dir, small_sts):
    store = memory_env()
    ref = _register(store, "to", tiny_model_dir, small_sts)
    before = store.snapshot()

    state = _run("to", require_approval=True, approval_timeout_s=3)
    assert state.is_failed()
    # In time: the run failed 3 s after it paused, not at the default hour. Judged on the run's own state
    # history, not on the whole run's wall time (export, search and benchmark took 144 s of it once, beside
    # the other tiers at nice 19).
    from prefect import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(state.state_details.flow_run_id)
    history = sorted(states, key=lambda s: s.timestamp)
    paused = [s.timestamp for s in history if s.is_paused()]
    assert paused, [s.name for s in history]
    waited = (history[-1].timestamp - paused[-1]).total_seconds()
    assert history[-1].is_failed(), [s.name for s in history]
    assert 3 <= waited < 60, (waited, [s.name for s in history])
    failure = lifecycle.last_failure(store, ref)
    assert failure is not None
    assert failure["error"] == "ApprovalTimeoutError"
    assert "nobody approved or rejected tiny@to within 3 s" in failure["message"]
    assert lifecycle.decision_of(store, ref) is None  # undecided: a later run asks again
    assert "failed" in _flow_run(state).tags
    after = store.snapshot()
    own = run_prefix(ref, str(state.state_details.flow_run_id))
    assert [k for k in after if k not in before and not k.startswith(own)] == []

    # Too late to answer: the CLI finds no run waiting and says why.
    from typer.testing import CliRunner

    from quantgate.cli import app

    late = CliRunner().invoke(app, ["approve", "tiny", "to", "--by", "ann"])
    assert late.exit_code == 2, late.output
    assert "no run of tiny@to is waiting for approval" in " ".join(late.output.split())
