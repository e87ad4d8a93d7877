"""Promotion guarantees under concurrency, crashes and outages, on the real SeaweedFS."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.quantize_and_promote import quantize_and_promote
from infra.seaweed import SeaweedServer
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.errors import ConfigError, ConflictError, NotFoundError, StorageUnreachableError
from quantgate.registry import Manifest, ModelRef, manifest_key
from quantgate.settings import Settings
from quantgate.storage import ObjectStore, sha256_bytes
from tests.conftest import HANG_S, REPO, TINY_GATES, TINY_RECIPES
from tests.conftest import artifact_files as _files
from tests.conftest import bare_manifest as _manifest
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY, snapshot

FAST_BENCH = BenchSettings(warmup_runs=1, repeat_runs=5)


def assert_one_complete_promotion(store: ObjectStore, ref: ModelRef) -> Manifest:
    """Every object under promoted/<m>/<v>/ is the manifest or a file it lists, with matching bytes."""
    manifest = Manifest.model_validate_json(store.get_bytes(manifest_key(ref)))
    listed = {f"promoted/{ref.name}/{ref.version}/{f.path}": f for f in manifest.files}
    stored = {o.key for o in store.list(f"promoted/{ref.name}/{ref.version}/")}
    assert stored == set(listed) | {manifest_key(ref)}
    for key, entry in listed.items():
        assert sha256_bytes(store.get_bytes(key)) == entry.sha256
    pointer = lifecycle.current(store, ref.name)
    assert pointer is not None
    assert pointer.version == ref.version
    promotions = [
        e for e in lifecycle.audit_log(store, ref.name) if e.action == "promote" and e.version == ref.version
    ]
    assert len(promotions) == 1
    return manifest


@pytest.mark.usefixtures("prefect_api")
def test_a_promotion_queues_on_its_models_prefect_concurrency_slot(store, tmp_path):
    """While another run holds the model's slot the promotion waits, and goes ahead once it is released.
    A slot that is never released (its holder was killed) delays a promotion by the timeout, never blocks
    it: the create-only manifest is the real guard."""
    from prefect import get_client
    from prefect.concurrency.sync import concurrency

    from tasks import storage as storage_tasks

    name = storage_tasks.promotion_limit("queued")
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1

    held, released = threading.Event(), threading.Event()

    def other_run() -> None:
        with concurrency(name, occupy=1, strict=True, lease_duration=60):
            held.set()
            time.sleep(2)
        released.set()

    holder = threading.Thread(target=other_run)
    holder.start()
    assert held.wait(30)
    start = time.monotonic()
    patient = Settings(promotion_lock_timeout_s=60)
    assert (
        storage_tasks.promote(patient, _manifest("queued", "v1", "run-a"), _files(tmp_path, "a"), {}) is None
    )
    holder.join()
    assert released.is_set()
    assert time.monotonic() - start >= 1.5  # it queued behind the other run
    assert_one_complete_promotion(store, ModelRef(name="queued", version="v1"))
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0  # and released its slot

    with concurrency(name, occupy=1, strict=True, lease_duration=60):  # a holder that never lets go
        start = time.monotonic()
        impatient = Settings(promotion_lock_timeout_s=3)
        lost = storage_tasks.promote(impatient, _manifest("queued", "v2", "run-b"), _files(tmp_path, "b"), {})
        assert time.monotonic() - start >= 3
    assert lost is None
    assert_one_complete_promotion(store, ModelRef(name="queued", version="v2"))


def test_concurrent_promotions_of_one_version_promote_exactly_once(store, tmp_path):
    ref = ModelRef(name="m", version="v1")
    results: dict[str, object] = {}
    barrier = threading.Barrier(4)

    def attempt(run_id: str) -> None:
        barrier.wait()
        try:
            results[run_id] = lifecycle.promote(
                store, _manifest("m", "v1", run_id), _files(tmp_path, run_id), {"run": run_id}, actor="test"
            )
        except ConflictError as exc:
            results[run_id] = exc

    threads = [threading.Thread(target=attempt, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results.values() if isinstance(r, Manifest)]
    losers = [r for r in results.values() if isinstance(r, ConflictError)]
    assert len(winners) == 1
    assert len(losers) == 3
    assert all("concurrent" in str(e) or "already promoted" in str(e) for e in losers)
    manifest = assert_one_complete_promotion(store, ref)
    assert manifest.run_id == winners[0].run_id


def test_rollback_moves_only_the_pointer_and_is_audited(store, tmp_path):
    for version in ("v1", "v2", "v3"):
        lifecycle.promote(
            store, _manifest("m", version, f"r-{version}"), _files(tmp_path, version), {}, actor="ci"
        )
    assert lifecycle.current(store, "m").version == "v3"
    files_before = {k: v for k, v in snapshot(store, "promoted/m/").items() if not k.endswith("current.json")}

    event = lifecycle.rollback(store, "m", None, actor="oncall@host")
    assert (event.version, event.previous_version, event.actor) == ("v2", "v3", "oncall@host")
    assert lifecycle.current(store, "m").version == "v2"
    assert lifecycle.rollback(store, "m", "v3", actor="oncall@host").version == "v3"
    assert lifecycle.rollback(store, "m", "v1", actor="oncall@host").version == "v1"
    with pytest.raises(NotFoundError, match="first promoted version"):
        lifecycle.rollback(store, "m", None, actor="x")
    with pytest.raises(NotFoundError, match="never promoted"):
        lifecycle.rollback(store, "m", "v9", actor="x")

    log = lifecycle.audit_log(store, "m")
    assert [(e.action, e.version) for e in log] == [
        ("promote", "v1"),
        ("promote", "v2"),
        ("promote", "v3"),
        ("rollback", "v2"),
        ("rollback", "v3"),
        ("rollback", "v1"),
    ]
    assert all(
        e.manifest_sha256
        == sha256_bytes(store.get_bytes(manifest_key(ModelRef(name="m", version=e.version))))
        for e in log
    )
    after = {k: v for k, v in snapshot(store, "promoted/m/").items() if not k.endswith("current.json")}
    assert after == files_before


def test_rollback_cli(s3_env, store, tmp_path):
    from typer.testing import CliRunner

    from quantgate.cli import app

    for version in ("v1", "v2"):
        lifecycle.promote(
            store, _manifest("m", version, f"r-{version}"), _files(tmp_path, version), {}, actor="ci"
        )
    result = CliRunner().invoke(app, ["rollback", "m", "--yes"])
    assert result.exit_code == 0, result.output
    assert "v2 → v1" in result.output
    assert CliRunner().invoke(app, ["rollback", "nobody"]).exit_code == 2


def _run_killed(mode: str, ref: ModelRef) -> subprocess.CompletedProcess[bytes]:
    import os

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("kill_during_promotion.py")),
            ref.name,
            ref.version,
            mode,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=HANG_S,
        check=False,
    )


@pytest.mark.usefixtures("prefect_api")
def test_sigkill_during_uploads_then_rerun_ends_in_one_complete_promotion(store, tiny_model_dir, small_sts):
    ref = ModelRef(name="tiny", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    killed = _run_killed("after-uploads", ref)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert list(store.list("promoted/tiny/v1/")), "the kill should have left partial uploads behind"
    assert not store.exists(manifest_key(ref))  # ... that no reader would trust: no manifest, no pointer
    assert lifecycle.current(store, "tiny") is None

    state = quantize_and_promote(
        model="tiny", version="v1", recipes=TINY_RECIPES, thresholds=TINY_GATES, bench=FAST_BENCH,
        return_state=True,
    )  # fmt: skip
    assert state.name == "Promoted", state.message
    assert_one_complete_promotion(store, ref)  # the killed run's partial objects are gone


@pytest.mark.usefixtures("prefect_api")
def test_sigkill_after_the_manifest_is_finished_by_the_rerun(store, tiny_model_dir, small_sts):
    ref = ModelRef(name="tiny", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    killed = _run_killed("after-manifest", ref)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert store.exists(manifest_key(ref))
    assert lifecycle.current(store, "tiny") is None  # killed before the pointer moved

    state = quantize_and_promote(
        model="tiny", version="v1", recipes=TINY_RECIPES, thresholds=TINY_GATES, bench=FAST_BENCH,
        return_state=True,
    )  # fmt: skip
    assert state.name == "AlreadyDecided"
    assert_one_complete_promotion(store, ref)


@dataclass
class OutageRun:
    """A tiny-model run on its own SeaweedFS, with the server stopped right after the pull."""

    server: SeaweedServer
    store: ObjectStore
    ref: ModelRef
    runner: threading.Thread
    result: dict[str, object]

    def state(self, timeout: float = HANG_S) -> object:
        self.runner.join(timeout=timeout)
        return self.result["state"]


@pytest.fixture
def outage_run(tmp_path, monkeypatch, tiny_model_dir, small_sts, prefect_api) -> Iterator[OutageRun]:
    server = SeaweedServer(tmp_path / "s3", ACCESS_KEY, SECRET_KEY).start()
    try:
        work = tmp_path / "work"
        for key, value in {
            "QUANTGATE_S3_ENDPOINT_URL": server.endpoint_url,
            "QUANTGATE_BUCKET": "outage",
            "QUANTGATE_WORK_DIR": str(work),
            "QUANTGATE_MAX_ATTEMPTS": "1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }.items():
            monkeypatch.setenv(key, value)
        store = ObjectStore(Settings())
        store.ensure_bucket()
        ref = ModelRef(name="tiny", version="outage")
        lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
        result: dict[str, object] = {}
        # A long benchmark keeps the run busy computing while the server goes down.
        runner = threading.Thread(
            target=lambda: result.update(
                state=quantize_and_promote(
                    model=ref.name,
                    version=ref.version,
                    recipes=TINY_RECIPES,
                    thresholds=TINY_GATES,
                    bench=BenchSettings(warmup_runs=1, repeat_runs=1500),
                    return_state=True,
                )
            )
        )
        runner.start()
        deadline = time.monotonic() + 120
        while not list(work.glob("*/source/heldout/*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()  # pulled: from here every storage call fails until a restart
        yield OutageRun(server, store, ref, runner, result)
        runner.join(timeout=HANG_S)
    finally:
        server.stop()


def test_storage_outage_during_a_run_is_retried_and_the_run_completes(outage_run: OutageRun):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )

    # The first storage task after the pull (storing the held-out Data Docs) meets the outage and retries.
    retry_filter = TaskRunFilter(
        name=TaskRunFilterName(like_="save-"),
        state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["AwaitingRetry", "Retrying"])),
    )
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while not client.read_task_runs(task_run_filter=retry_filter) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.read_task_runs(task_run_filter=retry_filter), "no storage task had to retry"
    outage_run.server.start()
    state = outage_run.state()
    assert state.name == "Promoted", state.message
    assert_one_complete_promotion(outage_run.store, outage_run.ref)


def test_storage_outage_beyond_the_retry_budget_fails_cleanly_with_nothing_promoted(outage_run: OutageRun):
    state = outage_run.state()  # the server stays down: 1 try + 3 retries (2 + 5 + 15 s) all fail
    assert state.is_failed()
    with pytest.raises(StorageUnreachableError, match="cannot reach"):
        state.result()
    outage_run.server.start()
    assert not outage_run.store.exists(manifest_key(outage_run.ref))
    assert not list(outage_run.store.list("promoted/"))
    assert lifecycle.current(outage_run.store, "tiny") is None


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("QUANTGATE_WORK_DIR", r"cannot write the work folder.*QUANTGATE_WORK_DIR"),
        # checked before the pull too: it fired only after pull and validation (#20)
        ("QUANTGATE_CACHE_DIR", r"cannot write the folder.*QUANTGATE_CACHE_DIR"),
    ],
)
def test_unwritable_work_folder_is_a_clear_error_and_changes_nothing(
    store, monkeypatch, tiny_model_dir, small_sts, setting, words
):
    ref = ModelRef(name="tiny", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    monkeypatch.setenv(setting, "/dev/null/quantgate")  # a folder can never exist under a device file
    before = snapshot(store)
    state = quantize_and_promote(model="tiny", version="v1", return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=words):
        state.result()
    added = set(snapshot(store)) - set(before)
    # Its report only: no Data Docs, so it stopped before pulling and validating the held-out set.
    assert [k.rsplit("/", 1)[-1] for k in added] == ["report.json"], added
    assert not list(store.list("promoted/"))
