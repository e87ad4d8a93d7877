"""`quantgate rollback` shows the change (current → target, target verified) and asks first: --dry-run only
shows, "no" changes nothing, --yes skips the question; the swap is against the pointer that was shown. On
the in-memory store (memory://, the CLI opens it through QUANTGATE_STORE_URL)."""

from __future__ import annotations

import secrets

import pytest
from typer.testing import CliRunner

from quantgate import lifecycle
from quantgate.cli import app
from quantgate.registry import Manifest, ModelRef, current_key
from quantgate.settings import Settings
from quantgate.storage import open_store
from quantgate.store import drop_memory_store

runner = CliRunner()


@pytest.fixture
def store(monkeypatch, tmp_path):
    """m@v1 then m@v2 promoted: current.json names v2, and a rollback's default target is v1."""
    for name in (
        "QUANTGATE_BUCKET",
        "QUANTGATE_S3_ENDPOINT_URL",
        "QUANTGATE_TRUSTED_KEYS",
        "PREFECT_API_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    name = "qg-rollback-" + secrets.token_hex(4)
    monkeypatch.setenv("QUANTGATE_STORE_URL", f"memory://{name}")
    store = open_store(Settings())
    for version in ("v1", "v2"):
        _promote(store, version, tmp_path)
    yield store
    drop_memory_store(name)


def _promote(store, version: str, tmp_path) -> None:
    path = tmp_path / version / "model.int8.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(version.encode() * 100)
    manifest = Manifest(
        model="m", version=version, run_id=f"r-{version}", task="sentence-embedding", recipe={}, files=[],
        source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
    )  # fmt: skip
    lifecycle.promote(store, manifest, {"model.int8.onnx": path}, {}, actor="ci")


def _state(store) -> tuple[bytes, int]:
    """The pointer's bytes and the number of audit events: equal means nothing changed."""
    return store.get_bytes(current_key("m")), len(lifecycle.audit_log(store, "m"))


def test_dry_run_shows_current_and_target_and_changes_nothing(store):
    before = _state(store)
    result = runner.invoke(app, ["rollback", "m", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "current version v2 → v1" in result.output
    assert "dry run: nothing changed" in result.output
    assert "[y/N]" not in result.output  # nothing asked
    assert _state(store) == before


def test_answering_no_changes_nothing(store):
    before = _state(store)
    result = runner.invoke(app, ["rollback", "m"], input="n\n")
    assert result.exit_code == 1, result.output
    assert "current version v2 → v1" in result.output
    assert "Roll m back to v1? [y/N]" in result.output
    assert "nothing changed" in result.output
    assert _state(store) == before
    assert lifecycle.current(store, "m").version == "v2"


def test_no_answer_at_all_is_a_no(store):
    """A script without --yes and without a terminal (stdin at its end) does not roll back."""
    before = _state(store)
    result = runner.invoke(app, ["rollback", "m"], input="")
    assert result.exit_code != 0
    assert _state(store) == before


def test_answering_yes_rolls_back_and_is_audited(store):
    result = runner.invoke(app, ["rollback", "m"], input="y\n")
    assert result.exit_code == 0, result.output
    assert lifecycle.current(store, "m").version == "v1"
    last = lifecycle.audit_log(store, "m")[-1]
    assert (last.action, last.version, last.previous_version) == ("rollback", "v1", "v2")


def test_yes_flag_skips_the_question(store):
    result = runner.invoke(app, ["rollback", "m", "--to", "v1", "--yes"])
    assert result.exit_code == 0, result.output
    assert "[y/N]" not in result.output
    assert lifecycle.current(store, "m").version == "v1"


def test_a_damaged_target_is_refused_before_anyone_is_asked(store):
    v1 = ModelRef(name="m", version="v1")
    entry = lifecycle.load_manifest(store, v1).files[0]
    store.delete(f"promoted/m/v1/{entry.path}")
    before = _state(store)
    result = runner.invoke(app, ["rollback", "m", "--dry-run"])
    assert result.exit_code == 2
    assert "refusing to roll back" in result.output
    assert "→" not in result.output
    assert _state(store) == before


def test_a_pointer_that_moved_while_confirming_is_not_overwritten(store, monkeypatch, tmp_path):
    """The operator confirmed "v2 → v1"; a promotion of v3 landed meanwhile: nothing is rolled back."""
    import typer

    def promote_then_confirm(*args, **kwargs):
        _promote(store, "v3", tmp_path)
        return True

    monkeypatch.setattr(typer, "confirm", promote_then_confirm)
    result = runner.invoke(app, ["rollback", "m"])
    assert result.exit_code == 2, result.output
    assert "changed while rolling back" in result.output
    assert lifecycle.current(store, "m").version == "v3"
    assert [e.action for e in lifecycle.audit_log(store, "m")] == ["promote", "promote", "promote"]
