"""The optional approval step: a run whose candidate passed every gate asks a person before the pointer
moves (off by default). Pure rules here; pausing the run and reading the answer is the Prefect layer's job
(tasks/approval.py, Prefect's pause_flow_run with typed input).

- approve: the run promotes as it would have without asking; the report and manifest name the approver.
- reject: the run ends NotPromoted with reason `by-reviewer`; its rejection record under rejected/ (the
  same record a gate rejection writes) and its run report are all it stores.
- no answer within the timeout: the run fails with ApprovalTimeoutError and decides nothing, so the
  version stays undecided and a later run (or the registry sweep) asks again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantgate.errors import QuantgateError
from quantgate.registry import Approval, ModelRef

if TYPE_CHECKING:
    from quantgate.report.model import RunReport

REJECTED_BY_REVIEWER = "by-reviewer"  # the rejection reason, and the outcome tag `rejected:by-reviewer`


class ApprovalTimeoutError(QuantgateError):
    """Nobody approved or rejected a run that asked within its approval timeout: nothing was decided."""


def apply_approval(report: RunReport, approval: Approval) -> RunReport:
    """The report after the reviewer's answer: approve keeps the promotion and records who; reject turns it
    into a rejection with reason by-reviewer (the gates, which all passed, stay as they were measured)."""
    if not report.passed:
        raise ValueError(f"{report.model}@{report.version} was not promoted by its gates: nothing to approve")
    if approval.decision == "approve":
        return report.model_copy(update={"approval": approval})
    return report.model_copy(
        update={"approval": approval, "outcome": "rejected", "reason": REJECTED_BY_REVIEWER}
    )


def approval_line(approval: Approval) -> str:
    """One line for the report, the state message and the CLI: `approved by ann at …: "comment"`."""
    verb = "approved" if approval.decision == "approve" else "rejected"
    said = f': "{approval.comment}"' if approval.comment else ""
    return f"{verb} by {approval.by} at {approval.at}{said}"


def timeout_message(ref: ModelRef, timeout_s: int) -> str:
    return (
        f"nobody approved or rejected {ref} within {timeout_s} s: nothing was promoted or rejected; run "
        "it again (or let the registry sweep) to ask again, or raise QUANTGATE_APPROVAL_TIMEOUT_S"
    )


def approval_tags(approval: Approval | None) -> list[str]:
    """`approved-by:<who>` or `rejected-by:<who>`, beside the run's outcome tag."""
    if approval is None:
        return []
    return [f"{'approved' if approval.decision == 'approve' else 'rejected'}-by:{approval.by}"]
