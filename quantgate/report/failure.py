"""A failed run's report: what raised, its held-out checks when those failed, and its Data Docs when they
were stored. A failure is not a decision: it is kept under the run's own prefix (runs/<m>/<v>/<run-id>/),
counted by the registry sweep, and shown by `quantgate report`/`list` as "failed: <reason>"."""

from __future__ import annotations

from typing import Any

from quantgate.registry import ModelRef, run_prefix, utcnow
from quantgate.report.links import stored_key
from quantgate.report.markdown import _links_md, plain

MESSAGE_CHARS = 2000


def failure_report(
    ref: ModelRef, run_id: str, exc: BaseException, data_docs: str | None = None
) -> dict[str, Any]:
    """`data_docs`: the s3:// address of the held-out validation's Data Docs, when the run got that far."""
    report: dict[str, Any] = {
        "model": ref.name,
        "version": ref.version,
        "run_id": run_id,
        "outcome": "failed",
        "error": type(exc).__name__,
        "message": str(exc)[:MESSAGE_CHARS],
        "failed_at": utcnow(),
        "data_docs": data_docs,
    }
    checks = getattr(exc, "failures", None)  # HeldoutValidationError: one line per failed data check
    if checks:
        report["failed_checks"] = [str(c) for c in checks]
    return report


def crash_report(
    ref: ModelRef, run_id: str, state: str, message: str | None, at: str | None, found_by: str
) -> dict[str, Any]:
    """The report of a run that ended without writing one (its process was killed and the zombie
    automation marked it Crashed), written later by whoever found it (`found_by`: the registry sweep).
    Same shape as failure_report's, so the sweep counts it and `report`/`list` say "failed: Crashed: …"."""
    return {
        "model": ref.name,
        "version": ref.version,
        "run_id": run_id,
        "outcome": "failed",
        "error": state,
        "message": (message or f"the run ended {state} without a report")[:MESSAGE_CHARS],
        "failed_at": at or utcnow(),
        "data_docs": None,
        "found_by": found_by,
    }


def failure_reason(report: dict[str, Any], limit: int | None = None) -> str:
    """`<ErrorType>: <message>`, cut at `limit` characters (a table cell) when given."""
    reason = f"{report.get('error') or 'unknown error'}: {report.get('message') or ''}".rstrip(": ")
    if limit is not None and len(reason) > limit:
        return reason[: limit - 1].rstrip() + "…"
    return reason


def failure_keys(report: dict[str, Any], saved_key: str | None = None) -> dict[str, str]:
    """What a person opens beside a failure: the run report (when it was stored) and the Data Docs."""
    keys = {}
    if saved_key:
        keys["run-report"] = saved_key
    docs = stored_key(report.get("data_docs"))
    if docs:
        keys["data-docs"] = docs
    return keys


def failure_markdown(
    report: dict[str, Any], links: dict[str, str] | None = None, links_expire_s: int | None = None
) -> str:
    """The failed run's markdown report. The message and the failed checks can quote held-out values:
    they are made inert like every held-out text (quantgate.report.markdown.plain)."""
    ref = ModelRef(name=report["model"], version=report["version"])
    parts = [
        f"# {ref}: FAILED (no decision)",
        f"Run `{report['run_id']}` · error `{report.get('error')}` · nothing was promoted or rejected; the "
        "registry sweep runs the version again until its failure limit.",
        f"Reason: **{plain(report.get('error') or 'unknown error')}**: {plain(report.get('message') or '')}",
    ]
    checks = report.get("failed_checks") or []
    if checks:
        parts.append("## Failed data checks\n\n" + "\n".join(f"- {plain(c)}" for c in checks))
    if report.get("found_by"):
        parts.append(
            f"The run's process ended without writing a report; {plain(report['found_by'])} found the run "
            f"{plain(report.get('error'))} and wrote this one. Anything the run stored is under its prefix."
        )
    if links:
        parts += _links_md(links, links_expire_s)
    elif report.get("data_docs") is None and not report.get("found_by"):
        parts.append("No Data Docs: the run failed before the held-out validation stored them.")
    parts.append(f"Run report under `{run_prefix(ref, report['run_id'])}`.")
    return "\n\n".join(parts)
