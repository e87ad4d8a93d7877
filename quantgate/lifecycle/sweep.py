"""What the registry sweep runs: versions with no decision and promotions whose tail is unfinished,
skipping versions that failed too often (counted from their run reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate.errors import IntegrityError, NotFoundError, QuantgateError
from quantgate.lifecycle._records import _load_json
from quantgate.lifecycle.decisions import decision_of
from quantgate.lifecycle.promotion import promotion_finished
from quantgate.lifecycle.registration import list_registered
from quantgate.registry import ModelRef, runs_prefix
from quantgate.store import Store


@dataclass
class RunHistory:
    failed: int = 0
    unreadable: list[str] = field(default_factory=list)
    last_failure: dict[str, Any] | None = None  # the latest failed run's report (by its failed_at)

    @property
    def failures(self) -> int:
        """Failed runs; an unreadable run report counts as one (it never said it succeeded)."""
        return self.failed + len(self.unreadable)


def run_history(store: Store, ref: ModelRef) -> RunHistory:
    history = RunHistory()
    for obj in store.list(runs_prefix(ref)):
        if not obj.key.endswith("/report.json") or obj.key.count("/") != 4:
            continue
        try:
            report = _load_json(store, obj.key, "run report", "delete it")
        except (IntegrityError, NotFoundError):
            history.unreadable.append(obj.key)
            continue
        if report.get("outcome") == "failed":
            history.failed += 1
            # Reports written before failed_at was recorded sort first: older than any that has one.
            if history.last_failure is None or str(report.get("failed_at") or "") >= str(
                history.last_failure.get("failed_at") or ""
            ):
                history.last_failure = report
    return history


def last_failure(store: Store, ref: ModelRef) -> dict[str, Any] | None:
    """The report of the version's latest failed run (None when no run failed); meaningful while the
    version has no decision."""
    return run_history(store, ref).last_failure


def failed_runs(store: Store, ref: ModelRef) -> int:
    return run_history(store, ref).failures


@dataclass
class SweepPlan:
    """What the registry sweep should run, and what it skipped and why (one line per version)."""

    pending: list[ModelRef] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def sweep_plan(store: Store, max_failures: int) -> SweepPlan:
    """Registered versions with no decision, and promotions whose tail (pointer, audit) is unfinished,
    oldest-named first; versions that failed `max_failures` times are skipped. One unreadable object
    skips its own version (and says so), never the whole sweep."""
    plan = SweepPlan()
    for ref in list_registered(store):
        try:
            decision = decision_of(store, ref)
            if decision == "promoted":
                if not promotion_finished(store, ref):
                    plan.pending.append(ref)
                continue
            if decision is not None:
                continue
            history = run_history(store, ref)
            if history.unreadable:
                plan.skipped[str(ref)] = f"unreadable run report(s) counted as failed: {history.unreadable}"
            if history.failures >= max_failures:
                plan.skipped[str(ref)] = f"{history.failures} failed run(s) (limit {max_failures})"
                continue
            plan.pending.append(ref)
        except QuantgateError as exc:
            plan.skipped[str(ref)] = f"{type(exc).__name__}: {exc}"
    return plan


def undecided(store: Store, max_failures: int) -> list[ModelRef]:
    return sweep_plan(store, max_failures).pending
