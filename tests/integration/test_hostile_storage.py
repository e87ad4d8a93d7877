"""Issue #10's broken promises, each reproduced on the real SeaweedFS through the lifecycle and the CLI:
storage errors after the commit point, racing registrations, rollback onto damaged files, foreign objects
beside a promotion, racing rejections, unreadable records, a missing bucket."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantgate import lifecycle
from quantgate.cli import app
from quantgate.errors import ConflictError, IntegrityError, StorageError
from quantgate.registry import ModelRef, current_key, manifest_key, promoted_key, rejection_key
from quantgate.storage import ObjectStore, sha256_bytes, sha256_file
from tests.faults import FaultPlan, faulty_store
from tests.integration.conftest import snapshot
from tests.integration.test_guarantees import _files, _manifest, assert_one_complete_promotion


def _promote(store: ObjectStore, tmp_path: Path, version: str, model: str = "m") -> None:
    lifecycle.promote(
        store, _manifest(model, version, f"run-{version}"), _files(tmp_path, version), {}, actor="ci"
    )


def _pointer_writes(op: str, key: str) -> bool:
    return key.endswith("current.json")


# --- 1. a storage error after the manifest ------------------------------------------------------------


def test_a_failed_pointer_write_is_finished_by_the_retry_of_the_same_run(s3_env, store, tmp_path):
    """The run that wrote the manifest recognises it as its own on retry and completes pointer + audit,
    instead of calling it a lost race."""
    _promote(store, tmp_path, "v0")
    flaky = faulty_store(s3_env, FaultPlan(at=0, mode="before", match=_pointer_writes))
    manifest, files = _manifest("m", "v1", "run-v1"), _files(tmp_path, "v1")
    with pytest.raises(StorageError):
        lifecycle.promote(flaky, manifest, files, {}, actor="ci")
    assert store.exists(manifest_key(ModelRef(name="m", version="v1")))
    assert lifecycle.current(store, "m").version == "v0"  # committed, pointer not moved yet

    lifecycle.promote(store, manifest, files, {}, actor="ci")  # the task's retry: same run id
    assert_one_complete_promotion(store, ModelRef(name="m", version="v1"))
    # Another run of the same version is refused and leaves nothing of its own behind.
    with pytest.raises(ConflictError, match="already promoted by run run-v1"):
        lifecycle.promote(store, _manifest("m", "v1", "run-other"), _files(tmp_path, "o"), {}, actor="ci")
    assert not list(store.list("promoted/m/v1/run-other/"))


def test_a_manifest_write_whose_answer_was_lost_is_recognised_as_the_runs_own(s3_env, store, tmp_path):
    """The manifest landed but the run saw a 503: its retry finds a manifest with its own run id and
    finishes the promotion (it used to call that a lost race and stop, pointer unmoved)."""
    flaky = faulty_store(
        s3_env, FaultPlan(at=0, mode="after", match=lambda op, key: key.endswith("/manifest.json"))
    )
    manifest, files = _manifest("m", "v1", "run-v1"), _files(tmp_path, "v1")
    with pytest.raises(StorageError):
        lifecycle.promote(flaky, manifest, files, {}, actor="ci")
    assert lifecycle.current(store, "m") is None
    final = lifecycle.promote(store, manifest, files, {}, actor="ci")  # the task's retry
    assert final.run_id == "run-v1"
    assert_one_complete_promotion(store, ModelRef(name="m", version="v1"))


def test_finishing_an_interrupted_promotion_never_moves_the_pointer_back(s3_env, store, tmp_path):
    """v1 commits its manifest but its pointer write fails for good; v2 is promoted after it. Finishing
    v1 later records it as promoted without taking serving back from v2; a rollback made after v1's
    commit also holds against it."""
    _promote(store, tmp_path, "v0")
    outage = faulty_store(s3_env, FaultPlan(at=0, mode="outage", match=_pointer_writes))
    with pytest.raises(StorageError):
        lifecycle.promote(outage, _manifest("m", "v1", "run-v1"), _files(tmp_path, "v1"), {}, actor="ci")
    v1 = ModelRef(name="m", version="v1")
    assert not lifecycle.promotion_finished(store, v1)
    assert lifecycle.sweep_plan(store, 3).pending == []  # only registered versions are swept (none here)
    _promote(store, tmp_path, "v2")
    assert lifecycle.current(store, "m").version == "v2"

    assert lifecycle.finish_promotion(store, v1, actor="rerun") is True
    assert lifecycle.current(store, "m").version == "v2"
    event = next(e for e in lifecycle.audit_log(store, "m") if e.version == "v1")
    assert (event.action, event.pointer_moved, event.previous_version) == ("promote", False, "v2")
    assert lifecycle.finish_promotion(store, v1, actor="rerun") is False  # idempotent

    # v3 commits, then an operator rolls back to v0 before v3's pointer moves: v3 must not undo that.
    with pytest.raises(StorageError):
        lifecycle.promote(outage, _manifest("m", "v3", "run-v3"), _files(tmp_path, "v3"), {}, actor="ci")
    lifecycle.rollback(store, "m", "v0", actor="oncall")
    lifecycle.finish_promotion(store, ModelRef(name="m", version="v3"), actor="rerun")
    assert lifecycle.current(store, "m").version == "v0"


def test_the_sweep_revisits_a_promotion_whose_pointer_write_failed(
    s3_env, store, tiny_model_dir, small_sts, tmp_path
):
    ref = ModelRef(name="m", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    outage = faulty_store(s3_env, FaultPlan(at=0, mode="outage", match=_pointer_writes))
    with pytest.raises(StorageError):
        lifecycle.promote(outage, _manifest("m", "v1", "run-v1"), _files(tmp_path, "v1"), {}, actor="ci")
    assert lifecycle.decision_of(store, ref) == "promoted"
    assert lifecycle.sweep_plan(store, max_failures=3).pending == [ref]  # decided, but not finished
    lifecycle.finish_promotion(store, ref, actor="sweep")
    assert lifecycle.sweep_plan(store, max_failures=3).pending == []
    assert_one_complete_promotion(store, ref)


def test_racing_finishers_record_one_promotion(s3_env, store, tmp_path):
    """A re-run and the sweep finishing the same interrupted promotion at once: one audit event."""
    outage = faulty_store(s3_env, FaultPlan(at=0, mode="outage", match=_pointer_writes))
    with pytest.raises(StorageError):
        lifecycle.promote(outage, _manifest("m", "v1", "run-v1"), _files(tmp_path, "v1"), {}, actor="ci")
    ref = ModelRef(name="m", version="v1")
    barrier = threading.Barrier(4)

    def finish() -> None:
        barrier.wait()
        lifecycle.finish_promotion(store, ref, actor="racer")

    threads = [threading.Thread(target=finish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_one_complete_promotion(store, ref)


# --- 2. concurrent registrations ----------------------------------------------------------------------


def test_concurrent_registrations_of_one_version_keep_the_winners_files_only(
    store, tiny_model_dir, small_sts, tmp_path
):
    folders = []
    for i in range(4):  # four different models, same name and version
        folder = tmp_path / f"model-{i}"
        folder.mkdir()
        for f in tiny_model_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        config = json.loads((folder / "config.json").read_text())
        config["quantgate_test_variant"] = i
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    ref = ModelRef(name="race", version="v1")
    results: dict[int, object] = {}
    barrier = threading.Barrier(4)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            results[i] = lifecycle.register(store, ref, folders[i], small_sts, "sentence-embedding")
        except ConflictError as exc:
            results[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    registration = lifecycle.load_registration(store, ref)
    winner = folders[winners[0]]
    # Every stored file is the winner's, byte for byte, and nothing else is left under the version.
    pulled = lifecycle.pull(store, ref, tmp_path / "pulled")
    for entry in registration.files:
        assert sha256_file(pulled.model_dir / entry.path) == sha256_file(winner / entry.path)
    expected = {registration.model_key(e.path) for e in registration.files}
    expected |= {registration.heldout_key(), "registered/race/v1/registration.json"}
    assert set(snapshot(store, "registered/race/v1/")) == expected


# --- 3. rollback, list, verify and pull check files ---------------------------------------------------


def test_rollback_refuses_a_version_whose_files_are_gone_and_list_shows_it(s3_env, store, tmp_path):
    for v in ("v1", "v2"):
        _promote(store, tmp_path, v)
    v1 = lifecycle.load_manifest(store, ModelRef(name="m", version="v1"))
    model_file = next(f for f in v1.files if f.path.endswith("model.int8.onnx"))
    store.delete(promoted_key(ModelRef(name="m", version="v1"), model_file.path))
    before = snapshot(store)

    with pytest.raises(IntegrityError, match=r"refusing to roll back to m@v1.*missing"):
        lifecycle.rollback(store, "m", None, actor="oncall")
    result = CliRunner().invoke(app, ["rollback", "m", "--to", "v1"])
    assert result.exit_code == 2
    assert "missing" in result.output
    assert snapshot(store) == before  # pointer and audit log untouched
    assert lifecycle.current(store, "m").version == "v2"

    # `list` needs registrations to show versions: register-less promotions are checked by verify.
    verify = CliRunner().invoke(app, ["verify", "m", "v1"])
    assert verify.exit_code == 2
    assert "missing" in verify.output
    assert CliRunner().invoke(app, ["verify", "m"]).exit_code == 0  # the current v2 is intact


def test_list_marks_a_promotion_with_a_missing_file_broken(
    s3_env, store, tiny_model_dir, small_sts, tmp_path
):
    for v in ("v1", "v2"):
        lifecycle.register(
            store, ModelRef(name="m", version=v), tiny_model_dir, small_sts, "sentence-embedding"
        )
        _promote(store, tmp_path, v)
    v1 = lifecycle.load_manifest(store, ModelRef(name="m", version="v1"))
    store.delete(promoted_key(ModelRef(name="m", version="v1"), v1.files[0].path))
    result = CliRunner().invoke(app, ["list", "m"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[2].strip(): line for line in result.output.splitlines() if "│ m " in line}
    assert "BROKEN" in rows["v1"]
    assert "ok" in rows["v2"]
    assert "BROKEN" not in rows["v2"]


def test_pull_downloads_and_verifies_the_current_promotion_and_refuses_a_tampered_one(
    s3_env, store, tmp_path
):
    for v in ("v1", "v2"):
        _promote(store, tmp_path, v)
    out = tmp_path / "serving"
    result = CliRunner().invoke(app, ["pull", "m", "--to", str(out)])
    assert result.exit_code == 0, result.output
    manifest = lifecycle.load_manifest(store, ModelRef(name="m", version="v2"))
    for entry in manifest.files:
        assert sha256_file(out / lifecycle.local_name(entry)) == entry.sha256
    assert sha256_bytes((out / "manifest.json").read_bytes()) == lifecycle.current(store, "m").manifest_sha256

    # Same size, other bytes: the stored checksum changes with it, the manifest's does not.
    target = next(f for f in manifest.files if f.path.endswith("model.int8.onnx"))
    key = promoted_key(ModelRef(name="m", version="v2"), target.path)
    original = store.get_bytes(key)
    store.put_bytes(key, original[::-1])
    tampered = tmp_path / "tampered"
    result = CliRunner().invoke(app, ["pull", "m", "--to", str(tampered)])
    assert result.exit_code == 2
    assert "sha256" in result.output
    assert not tampered.exists()
    assert not list(tmp_path.glob(".tampered.partial-*"))
    assert CliRunner().invoke(app, ["verify", "m"]).exit_code == 2
    # A half-written promotion (a file never uploaded) is refused the same way.
    store.put_bytes(key, original)
    store.delete(key)
    assert CliRunner().invoke(app, ["pull", "m", "--version", "v2", "--to", str(tampered)]).exit_code == 2
    older = ["pull", "m", "--version", "v1", "--to", str(tmp_path / "pulled-v1")]
    assert CliRunner().invoke(app, older).exit_code == 0


# --- 5. repair leaves foreign objects alone -----------------------------------------------------------


def test_repair_deletes_only_what_a_quantgate_run_left_unlisted(s3_env, store, tmp_path):
    _promote(store, tmp_path, "v1")
    ref = ModelRef(name="m", version="v1")
    store.put_bytes("promoted/m/v1/signature.asc", b"team signature")
    store.put_bytes("promoted/m/v1/run-v1/NOTES.md", b"reviewed by the team")
    store.put_bytes("promoted/m/v1/dead-run/model.int8.onnx", b"partial", run_id="dead-run")
    store.put_bytes("promoted/m/v1/impostor/x.bin", b"tagged for another run", run_id="someone-else")

    lifecycle.finish_promotion(store, ref, actor="rerun")  # what a re-run of a decided version does

    assert store.exists("promoted/m/v1/signature.asc")
    assert store.exists("promoted/m/v1/run-v1/NOTES.md")
    assert store.exists("promoted/m/v1/impostor/x.bin")
    assert not store.exists("promoted/m/v1/dead-run/model.int8.onnx")


# --- 6. concurrent rejections -------------------------------------------------------------------------


def test_concurrent_rejections_keep_one_runs_record_and_side_files_together(store, tmp_path):
    ref = ModelRef(name="m", version="v1")
    results: dict[str, object] = {}
    barrier = threading.Barrier(3)

    def attempt(run_id: str) -> None:
        plot = tmp_path / run_id / "latency.png"
        plot.parent.mkdir()
        plot.write_bytes(b"\x89PNG" + run_id.encode() * 100)
        barrier.wait()
        try:
            results[run_id] = lifecycle.reject(
                store, ref, {"run_id": run_id, "outcome": "rejected"}, {"run": run_id}, {"latency.png": plot}
            )
        except ConflictError as exc:
            results[run_id] = exc

    threads = [threading.Thread(target=attempt, args=(f"run-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = json.loads(store.get_bytes(rejection_key(ref)))
    winner = record["run_id"]
    assert sum(not isinstance(r, Exception) for r in results.values()) == 1
    for entry in record["side_files"]:
        assert entry["path"].startswith(f"{winner}/")
        assert sha256_bytes(store.get_bytes(f"rejected/m/v1/{entry['path']}")) == entry["sha256"]
    assert json.loads(store.get_bytes(f"rejected/m/v1/{winner}/parity_report.json")) == {"run": winner}
    others = {k for k in snapshot(store, "rejected/m/v1/") if not k.startswith(f"rejected/m/v1/{winner}/")}
    assert others == {rejection_key(ref)}  # the losers removed their side files


# --- 8, 9. unreadable objects: clear errors, and never a stopped sweep --------------------------------


def test_an_unreadable_run_report_is_skipped_and_counted_not_fatal_to_the_sweep(
    store, tiny_model_dir, small_sts
):
    for v in ("v1", "v2"):
        lifecycle.register(
            store, ModelRef(name="m", version=v), tiny_model_dir, small_sts, "sentence-embedding"
        )
    store.put_bytes("runs/m/v1/r1/report.json", b"<html>not json</html>")
    store.put_bytes("runs/m/v2/r1/report.json", json.dumps({"outcome": "failed"}).encode())
    plan = lifecycle.sweep_plan(store, max_failures=3)
    assert [r.version for r in plan.pending] == ["v1", "v2"]
    assert "unreadable" in plan.skipped["m@v1"]
    assert lifecycle.failed_runs(store, ModelRef(name="m", version="v1")) == 1
    store.put_bytes("runs/m/v1/r2/report.json", b"\xff\xfe")
    store.put_bytes("runs/m/v1/r3/report.json", b"[]")
    plan = lifecycle.sweep_plan(store, max_failures=3)
    assert [r.version for r in plan.pending] == ["v2"]  # three unreadable reports: given up on


@pytest.mark.parametrize(
    ("key", "command", "needle"),
    [
        ("promoted/m/current.json", ["rollback", "m"], "promoted/m/current.json is not a valid pointer"),
        ("promoted/m/v2/manifest.json", ["report", "m", "v2"], "promoted/m/v2/manifest.json is not a valid"),
        ("promoted/m/v2/manifest.json", ["verify", "m", "v2"], "promoted/m/v2/manifest.json is not a valid"),
        ("rejected/m/v3/report.json", ["report", "m", "v3"], "rejected/m/v3/report.json is not a valid"),
    ],
)
def test_a_garbage_record_is_a_clear_error_naming_its_key(s3_env, store, tmp_path, key, command, needle):
    for v in ("v1", "v2"):
        _promote(store, tmp_path, v)
    store.put_bytes(key, b'{"model": 3, garbage')
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert needle in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    assert "validation error" not in result.output  # no raw pydantic dump


def test_stray_objects_under_audit_do_not_block_the_next_promotion(store, tmp_path):
    _promote(store, tmp_path, "v1")
    store.put_bytes("audit/m/README.txt", b"not an event")
    store.put_bytes("audit/m/00000000000000000001-deadbeef-promote-v2.json", b"{broken")
    fake = _manifest("m", "v2", "stray").model_dump()
    fake_event = {
        "action": "promote",
        "model": "m",
        "version": "v2",
        "previous_version": None,
        "run_id": "x",
        "actor": "intruder",
        "manifest_sha256": "0" * 64,
    }
    store.put_bytes("audit/m/00000000000000000002-deadbeef-promote-v2.json", json.dumps(fake_event).encode())
    assert fake["version"] == "v2"
    _promote(store, tmp_path, "v2")
    assert_one_complete_promotion_tolerating_strays(store, ModelRef(name="m", version="v2"))
    log = lifecycle.read_audit_log(store, "m")
    assert "audit/m/README.txt" in log.skipped


def assert_one_complete_promotion_tolerating_strays(store: ObjectStore, ref: ModelRef) -> None:
    pointer = lifecycle.current(store, ref.name)
    assert pointer is not None
    assert pointer.version == ref.version
    digest = sha256_bytes(store.get_bytes(manifest_key(ref)))
    assert pointer.manifest_sha256 == digest
    assert [e for e in lifecycle.audit_log(store, ref.name) if e.manifest_sha256 == digest]


# --- 10. a missing bucket is said to be missing -------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["report", "m", "v1"], ["rollback", "m"], ["run", "m", "v1"], ["list"], ["verify", "m", "v1"]]
)
def test_a_missing_bucket_is_reported_as_missing(s3_env, monkeypatch, command):
    monkeypatch.setenv("QUANTGATE_BUCKET", "no-such-bucket-here")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert "bucket 'no-such-bucket-here' does not exist" in text
    assert "not registered" not in text
    assert "no decision" not in text


def test_current_pointer_is_never_written_by_a_rejected_or_refused_command(s3_env, store, tmp_path):
    _promote(store, tmp_path, "v1")
    before = store.get_bytes(current_key("m"))
    assert CliRunner().invoke(app, ["rollback", "m"]).exit_code == 2  # nothing earlier than v1
    assert CliRunner().invoke(app, ["rollback", "m", "--to", "v9"]).exit_code == 2
    assert store.get_bytes(current_key("m")) == before
