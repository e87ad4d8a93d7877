"""The approval step's pure rules (#23): when a run asks, what each answer makes of the report, the tags,
the one-line summary; the typed input refuses an answer that names nobody."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quantgate.approval import REJECTED_BY_REVIEWER, apply_approval, approval_tags
from quantgate.errors import ConfigError
from quantgate.registry import Approval, ModelRef, registry_summary
from quantgate.report import to_markdown
from quantgate.settings import Settings
from tests.unit.test_ui_report import _report


def test_a_run_asks_only_when_required_by_its_parameter_or_else_the_setting(monkeypatch):
    from tasks.approval import wait_s

    monkeypatch.delenv("QUANTGATE_REQUIRE_APPROVAL", raising=False)
    monkeypatch.delenv("QUANTGATE_APPROVAL_TIMEOUT_S", raising=False)
    assert wait_s(Settings(), None, None) is None  # off by default
    assert wait_s(Settings(), True, None) == 3600
    assert wait_s(Settings(), True, 30) == 30
    monkeypatch.setenv("QUANTGATE_REQUIRE_APPROVAL", "1")
    monkeypatch.setenv("QUANTGATE_APPROVAL_TIMEOUT_S", "600")
    assert wait_s(Settings(), None, None) == 600
    assert wait_s(Settings(), False, None) is None  # the flow's parameter wins
    with pytest.raises(ConfigError, match=r"approval_timeout_s \(0\)"):
        wait_s(Settings(), True, 0)


def test_an_answer_names_who_gave_it():
    from tasks.approval import ApprovalInput

    for by in ("", " ", " ann"):
        with pytest.raises(ValidationError):
            ApprovalInput(decision="approve", by=by)
        with pytest.raises(ValidationError):
            Approval(decision="approve", by=by)
    with pytest.raises(ValidationError):
        ApprovalInput(decision="maybe", by="ann")
    assert ApprovalInput(decision="reject", by="ann smith").comment is None


def test_only_a_run_its_gates_promoted_can_be_approved_and_a_reviewer_rejection_reads_as_one():
    rejected_by_gates = _report()
    with pytest.raises(ValueError, match="nothing to approve"):
        apply_approval(rejected_by_gates, Approval(decision="approve", by="ann"))

    answer = Approval(decision="reject", by="bob", comment="see [this](http://x) <b>now</b>")
    reviewed = rejected_by_gates.model_copy(update={"reason": REJECTED_BY_REVIEWER, "approval": answer})
    text = to_markdown(reviewed)
    assert "Review: **rejected by bob**" in text
    assert "<b>" not in text  # the comment is inert, like every text a person typed
    assert "](http://x)" not in text
    assert approval_tags(answer) == ["rejected-by:bob"]
    assert approval_tags(Approval(decision="approve", by="ann")) == ["approved-by:ann"]
    assert approval_tags(None) == []
    line = registry_summary("rejected", ModelRef(name="m", version="v1"), [], REJECTED_BY_REVIEWER)
    assert line == "m@v1 not promoted: by-reviewer; report at rejected/m/v1/report.json"


def test_the_cli_says_when_no_reviewer_could_reach_a_run(monkeypatch):
    """Without PREFECT_API_URL a run waits on a throwaway in-process server: `run` refuses to start one
    with approval on, and `approve` has no server to look for the run on."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from quantgate import lifecycle
    from quantgate.cli import app

    monkeypatch.setenv("QUANTGATE_STORE_URL", "memory://approval-cli")
    monkeypatch.setenv("QUANTGATE_REQUIRE_APPROVAL", "1")
    monkeypatch.setattr(lifecycle, "load_registration", lambda store, ref: None)  # "registered"
    runner = CliRunner()
    with temporary_settings({PREFECT_API_URL: None}):
        ran = runner.invoke(app, ["run", "tiny", "v1"])
        approved = runner.invoke(app, ["approve", "tiny", "v1", "--by", "ann"])
    assert ran.exit_code == 2, ran.output
    assert "QUANTGATE_REQUIRE_APPROVAL is on but PREFECT_API_URL is not set" in " ".join(ran.output.split())
    assert approved.exit_code == 2, approved.output
    assert "no PREFECT_API_URL set" in approved.output
