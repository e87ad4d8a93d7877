"""What the registry sweep runs: versions with no decision and promotions whose tail is unfinished,
skipping versions that failed too often (counted from their run reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate.errors import IntegrityError, NotFoundError, QuantgateError
from quantgate.lifecycle._records import _load_json
from quantgate.lifecycle.audit import promote_event_keys
from quantgate.lifecycle.decisions import _manifest_with_digest, decision_of
from quantgate.lifecycle.promotion import _audited, promotion_finished
from quantgate.lifecycle.registration import list_registered
from quantgate.registry import (
    ModelRef,
    Outcome,
    promoted_model_prefix,
    registration_key,
    rejected_model_prefix,
    run_prefix,
    runs_prefix,
)
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
    # A run's Data Docs site (many files) is rolled up by the server: one listed entry per run.
    keys, _ = store.list_grouped(runs_prefix(ref), "/data_docs/")
    for key in keys:
        if not key.endswith("/report.json") or key.count("/") != 4:
            continue
        try:
            report = _load_json(store, key, "run report", "delete it")
        except (IntegrityError, NotFoundError):
            history.unreadable.append(key)
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


def unreported_crash(store: Store, ref: ModelRef, run_id: str) -> bool:
    """A run of a registered, undecided version that left no run report (killed, then marked Crashed):
    the registry sweep writes its report, so it is counted, shown and announced like any failed run."""
    return (
        store.exists(registration_key(ref))
        and decision_of(store, ref) is None
        and not store.exists(f"{run_prefix(ref, run_id)}report.json")
    )


def failed_runs(store: Store, ref: ModelRef) -> int:
    return run_history(store, ref).failures


@dataclass
class SweepPlan:
    """What the registry sweep should run, and what it skipped and why (one line per version)."""

    pending: list[ModelRef] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # failed runs so far, per undecided version

    def hold_back(self, reasons: dict[str, str]) -> SweepPlan:
        """The plan without the versions the sweep must leave alone now (`reasons`: str(ref) -> why, e.g.
        another run of it is under way): skipped with that reason (after any reason they were already
        listed with), and not counted as failures."""
        held = {str(ref) for ref in self.pending} & set(reasons)
        skipped = dict(self.skipped)
        for key in sorted(held):
            skipped[key] = f"{skipped[key]}; {reasons[key]}" if key in skipped else reasons[key]
        return SweepPlan(
            pending=[ref for ref in self.pending if str(ref) not in held],
            skipped=skipped,
            failures=self.failures,
        )


def sweep_plan(store: Store, max_failures: int) -> SweepPlan:
    """Registered versions with no decision, and promotions whose tail (pointer, audit) is unfinished,
    oldest-named first; versions that failed `max_failures` times are skipped. One unreadable object
    skips its own version (and says so), never the whole sweep.

    Cost (docs/scale.md): per model, delimited listings of registered/, promoted/ and the keys of
    rejected/ and audit/ (pages of 1,000 entries); then per promoted version two GETs (its manifest and
    the promote event its key names), per rejected version none, per undecided version its run reports.
    Nothing grows with the files a version holds, nor with the audit log per promoted version."""
    plan = SweepPlan()
    refs = list_registered(store)
    indexes: dict[str, _ModelIndex | None] = {}
    for ref in refs:
        if ref.name not in indexes:
            try:
                indexes[ref.name] = _model_index(store, ref.name)
            except QuantgateError:
                indexes[ref.name] = None  # each version asks for itself, and says what failed
        try:
            decision, finished = _decision(store, ref, indexes[ref.name])
            if decision == "promoted":
                if not finished:
                    plan.pending.append(ref)
                continue
            if decision is not None:
                continue
            history = run_history(store, ref)
            plan.failures[str(ref)] = history.failures
            if history.unreadable:
                plan.skipped[str(ref)] = f"unreadable run report(s) counted as failed: {history.unreadable}"
            if history.failures >= max_failures:
                plan.skipped[str(ref)] = f"{history.failures} failed run(s) (limit {max_failures})"
                continue
            plan.pending.append(ref)
        except QuantgateError as exc:
            plan.skipped[str(ref)] = f"{type(exc).__name__}: {exc}"
    return plan


@dataclass(frozen=True)
class _ModelIndex:
    """What the sweep learns about one model from listings, reading no object."""

    promoted: set[str]  # versions with anything under promoted/<m>/<v>/ (a manifest or not)
    rejected: set[str]  # versions whose rejected/<m>/<v>/report.json exists
    promote_events: dict[str, list[str]]  # version -> keys of its promote events in audit/<m>/


def _model_index(store: Store, model: str) -> _ModelIndex:
    rejected_prefix = rejected_model_prefix(model)
    # A rejection holds its record and a few side files (parity report, plots), never the model's files.
    rejected = {
        obj.key.removeprefix(rejected_prefix).split("/", 1)[0]
        for obj in store.list(rejected_prefix)
        if obj.key.count("/") == 3 and obj.key.endswith("/report.json")
    }
    return _ModelIndex(
        promoted=set(store.list_prefixes(promoted_model_prefix(model))),
        rejected=rejected,
        promote_events=promote_event_keys(store, model),
    )


def _decision(store: Store, ref: ModelRef, index: _ModelIndex | None) -> tuple[Outcome | None, bool]:
    """(decision, finished): finished tells whether a promotion's tail is done."""
    if index is None:
        decision = decision_of(store, ref)
        return decision, decision == "promoted" and promotion_finished(store, ref)
    if ref.version in index.promoted:
        # The folder alone decides nothing: a promotion interrupted before its manifest leaves files only.
        # The manifest is read (not trusted from the listing) because its digest must match the event's:
        # a version re-promoted after its promoted/ prefix was removed has an older event already.
        try:
            _, digest = _manifest_with_digest(store, ref)
        except NotFoundError:
            digest = None
        if digest is not None:
            return "promoted", _audited(store, ref, digest, index.promote_events.get(ref.version, []))
    if ref.version in index.rejected:
        return "rejected", False
    return None, False


def undecided(store: Store, max_failures: int) -> list[ModelRef]:
    return sweep_plan(store, max_failures).pending


def sweep_rows(plan: SweepPlan, ran: dict[str, tuple[str, str]], max_failures: int) -> list[dict[str, Any]]:
    """One row per version the sweep saw, in the plan's order: each run's final state and outcome (`ran`:
    str(ref) -> (state name, outcome)), then versions left for the next sweep (max_runs reached), then
    those skipped and why. `retries_left`: the sweep runs a version that keeps failing this many more
    times; "-" once it is decided."""

    def left(key: str, failed_now: bool) -> int:
        return max(max_failures - plan.failures.get(key, 0) - int(failed_now), 0)

    rows = []
    for ref in plan.pending:
        key = str(ref)
        if key in ran:
            state, outcome = ran[key]
            failed = outcome.startswith("failed")
            retries: int | str = left(key, True) if failed else "-"
        else:
            state, outcome = "NotRun", "not run: max_runs reached; the next sweep runs it"
            retries = left(key, False)
        rows.append(
            {
                "model": ref.name,
                "version": ref.version,
                "state": state,
                "outcome": outcome,
                "retries_left": retries,
            }
        )
    pending = {str(ref) for ref in plan.pending}
    for key, why in plan.skipped.items():
        if key in pending:  # run anyway (an unreadable run report is only counted): its row is above
            continue
        model, _, version = key.partition("@")
        retries = left(key, False) if key in plan.failures else "-"  # "-": unreadable, not counted
        rows.append(
            {
                "model": model,
                "version": version,
                "state": "Skipped",
                "outcome": f"skipped: {why}",
                "retries_left": retries,
            }
        )
    return rows


def sweep_summary(rows: list[dict[str, Any]]) -> str:
    """One line for the sweep's final state and its summary artifact: how many runs ended how."""
    ran = [r for r in rows if r["state"] not in ("NotRun", "Skipped")]
    kinds: dict[str, int] = {}
    for r in ran:
        kind = r["outcome"].split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    said = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    line = f"{len(ran)} run(s)" + (f": {said}" if said else "")
    failed = [f"{r['model']}@{r['version']}" for r in ran if r["outcome"].startswith("failed")]
    if failed:
        line += f" (failed: {', '.join(failed)})"
    later = sum(r["state"] == "NotRun" for r in rows)
    skipped = sum(r["state"] == "Skipped" for r in rows)
    if later or skipped:
        line += f"; {later} left for the next sweep, {skipped} skipped"
    return line
