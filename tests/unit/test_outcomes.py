"""What a run's outcome reads as outside its report: the run tag, the failure event and report, the
version's last failure, and the registry sweep's summary rows. Pure functions and the in-memory store."""

from __future__ import annotations

from quantgate import announce, lifecycle
from quantgate.errors import HeldoutValidationError
from quantgate.lifecycle import SweepPlan
from quantgate.registry import AuditEvent, ModelRef
from quantgate.report import failure_keys, failure_markdown, failure_reason, failure_report, sweep_markdown
from quantgate.store import MemoryStore

REF = ModelRef(name="m", version="v1")


def test_the_outcome_tag_names_the_rejection_reason():
    assert announce.outcome_tag({"outcome": "promoted", "reason": None}) == "promoted"
    assert announce.outcome_tag({"outcome": "rejected", "reason": "gates-failed"}) == "rejected:gates-failed"
    assert (
        announce.outcome_tag({"outcome": "rejected", "reason": "baseline-not-meaningful"})
        == "rejected:baseline-not-meaningful"
    )
    assert announce.outcome_tag({"outcome": "rejected"}) == "rejected:gates-failed"  # an older report
    assert announce.outcome_tag({"outcome": "failed"}) == "failed"


def test_a_failed_runs_report_event_and_links():
    exc = HeldoutValidationError("held-out set h.tsv failed 1 data check(s): score", ["score out of range"])
    report = failure_report(REF, "run-1", exc, "s3://b/runs/m/v1/run-1/data_docs/v.html")
    assert (report["outcome"], report["error"], report["failed_checks"]) == (
        "failed",
        "HeldoutValidationError",
        ["score out of range"],
    )
    assert failure_reason(report).startswith("HeldoutValidationError: held-out set h.tsv failed 1")
    assert len(failure_reason(report, 30)) == 30
    name, resource, payload = announce.failed(report)
    assert name == "quantgate.model.failed"
    assert resource == announce.resource("m", "v1")  # the same resource as promoted/rejected events
    assert (payload["version"], payload["error"], payload["run_id"]) == (
        "v1",
        "HeldoutValidationError",
        "run-1",
    )
    assert failure_keys(report, "runs/m/v1/run-1/report.json") == {
        "run-report": "runs/m/v1/run-1/report.json",
        "data-docs": "runs/m/v1/run-1/data_docs/v.html",
    }
    assert failure_keys({**report, "data_docs": None}, "") == {}


def test_a_failure_message_quoting_held_out_text_is_inert_in_markdown():
    exc = HeldoutValidationError(
        "bad value ![x](https://evil.example/p.png) <script>", ["[click](javascript:x)"]
    )
    text = failure_markdown(failure_report(REF, "run-1", exc))
    assert "![x](" not in text
    assert "[click](" not in text
    assert "<script>" not in text
    assert "No Data Docs" in text


def test_the_rolled_back_event_names_both_versions():
    event = AuditEvent(
        action="rollback", model="m", version="v1", previous_version="v2", run_id=None, actor="ops",
        manifest_sha256="ab" * 32,
    )  # fmt: skip
    name, resource, payload = announce.rolled_back(event)
    assert name == "quantgate.model.rolled-back"
    assert resource["quantgate.version"] == "v1"
    assert (payload["version"], payload["previous_version"], payload["actor"]) == ("v1", "v2", "ops")


def test_the_last_failure_is_the_latest_failed_run():
    store = MemoryStore("outcomes")
    assert lifecycle.last_failure(store, REF) is None
    lifecycle.write_run_report(store, REF, "old", {"outcome": "failed", "error": "Old", "run_id": "old"})
    for run_id, at in (("b", "2026-11-30T10:00:00.000000+00:00"), ("a", "2026-11-30T11:00:00.000000+00:00")):
        lifecycle.write_run_report(
            store, REF, run_id, {"outcome": "failed", "error": run_id, "run_id": run_id, "failed_at": at}
        )
    assert lifecycle.last_failure(store, REF)["run_id"] == "a"  # by time, not by key order
    assert lifecycle.run_history(store, REF).failures == 3


def test_sweep_rows_say_each_outcome_and_the_retries_left():
    a, b, c = (ModelRef(name="m", version=v) for v in ("a", "b", "c"))
    plan = SweepPlan(
        pending=[a, b, c],
        skipped={
            "m@d": "3 failed run(s) (limit 3)",
            "m@c": "unreadable run report(s) counted as failed: [k]",
        },
        failures={"m@a": 0, "m@b": 1, "m@c": 1, "m@d": 3},
    )
    ran = {"m@a": ("Promoted", "promoted"), "m@b": ("Failed", "failed: HeldoutValidationError: x")}
    rows = lifecycle.sweep_rows(plan, ran, max_failures=3)
    by_version = {r["version"]: (r["state"], r["outcome"].split(":")[0], r["retries_left"]) for r in rows}
    assert by_version == {
        "a": ("Promoted", "promoted", "-"),
        "b": ("Failed", "failed", 1),  # 1 failure before, this one: 3 - 2
        "c": ("NotRun", "not run", 2),  # max_runs reached; its unreadable report is counted, not a 2nd row
        "d": ("Skipped", "skipped", 0),
    }
    summary = lifecycle.sweep_summary(rows)
    assert summary == "2 run(s): 1 promoted, 1 failed (failed: m@b); 1 left for the next sweep, 1 skipped"
    assert "| m | b | Failed | failed: HeldoutValidationError: x | 1 |" in sweep_markdown(rows, summary)


def test_a_version_another_run_is_deciding_is_held_back_with_that_run_named():
    a, b, c = (ModelRef(name="m", version=v) for v in ("a", "b", "c"))
    plan = SweepPlan(
        pending=[a, b, c],
        skipped={
            "m@d": "3 failed run(s) (limit 3)",
            "m@c": "unreadable run report(s) counted as failed: [k]",  # run anyway: it is pending too
        },
        failures={"m@b": 1, "m@c": 1},
    )
    held = plan.hold_back(
        {"m@b": "in flight: run 42", "m@c": "in flight: run 43", "m@d": "in flight: run 7", "x@y": "run 9"}
    )
    assert held.pending == [a]
    assert held.skipped == {
        "m@d": "3 failed run(s) (limit 3)",  # not pending (skipped already): its reason alone stays
        "m@b": "in flight: run 42",
        "m@c": "unreadable run report(s) counted as failed: [k]; in flight: run 43",  # both reasons
    }
    assert plan.pending == [a, b, c]  # the plan it came from is unchanged
    rows = {r["version"]: r for r in lifecycle.sweep_rows(held, {}, max_failures=3)}
    assert (rows["b"]["state"], rows["b"]["retries_left"]) == ("Skipped", 2)  # not counted as a failure
    assert rows["b"]["outcome"] == "skipped: in flight: run 42"
    assert plan.hold_back({}).pending == [a, b, c]
