"""What the Prefect UI tells without opening a report (#23), read back through the Prefect client: each
run's outcome tag (and filtering runs by it), a failed run's report artifact, Data Docs link and
quantgate.model.failed event, `quantgate report`/`list` on a failed version, and the registry sweep's final
state and summary artifact. The real flows on the in-memory store, tiny models."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.quantize_and_promote import quantize_and_promote
from flows.registry_sweep import registry_sweep
from quantgate import announce, lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef, current_key
from quantgate.search import SearchBudget
from tests.conftest import RECORDED_S, TINY_GATES

pytestmark = pytest.mark.usefixtures("prefect_api")

# One recipe, no fallback, a short benchmark: what is under test is how a run ends, not the search.
RUN = {
    "recipes": ["dynamic-int8-per-channel"],
    "thresholds": TINY_GATES,
    "bench": BenchSettings(warmup_runs=1, repeat_runs=5),
    "budget": SearchBudget(max_trials=0),
}
# The sweep over versions registered a moment ago, with no registration event: nothing else runs them.
SWEEP = {**RUN, "registration_grace_s": 0}


def _bad_heldout(sts_path: Path, tmp_path: Path) -> Path:
    """A held-out set that registers but fails the run's GX validation: every 7th score is 9.5 (0-5)."""
    rows = [line.split("\t") for line in sts_path.read_text(encoding="utf-8").splitlines()[:60]]
    for i in range(0, len(rows), 7):
        rows[i][4] = "9.5"
    path = tmp_path / "bad-scores.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _register(store, version: str, model_dir: Path, heldout: Path, model: str = "tiny") -> ModelRef:
    ref = ModelRef(name=model, version=version)
    lifecycle.register(store, ref, model_dir, heldout, "sentence-embedding")
    return ref


def _flow_run(state):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def _events(name: str, version: str, timeout: float = RECORDED_S):
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(labels={"quantgate.version": [version]}),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # the server writes events asynchronously: poll, bounded
            events = client.read_events(filter=flt, limit=50).events
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.3)


def _artifacts(flow_run_id, keys: list[str]) -> dict:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    return {a.key: a for a in found}


def test_every_run_ends_tagged_with_its_outcome_and_runs_are_found_by_tag(
    memory_env, tmp_path, tiny_model_dir, small_sts, sts_path
):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags

    store = memory_env()
    _register(store, "tag-p", tiny_model_dir, small_sts)
    _register(store, "tag-r", tiny_model_dir, small_sts)
    _register(store, "tag-f", tiny_model_dir, _bad_heldout(sts_path, tmp_path))
    promoted = quantize_and_promote(model="tiny", version="tag-p", **RUN, return_state=True)
    strict = RUN["thresholds"].model_copy(update={"mean_tol": 1e-12})
    rejected = quantize_and_promote(
        model="tiny", version="tag-r", **{**RUN, "thresholds": strict}, return_state=True
    )
    failed = quantize_and_promote(model="tiny", version="tag-f", **RUN, return_state=True)
    assert (promoted.name, rejected.name) == ("Promoted", "NotPromoted")
    assert failed.is_failed()

    expected = {"promoted": promoted, "rejected:gates-failed": rejected, "failed": failed}
    outcome_tags = {"promoted", "failed", "already-decided"}
    for tag, state in expected.items():
        tags = _flow_run(state).tags
        assert tag in tags, tags
        # exactly one outcome tag per run
        assert [t for t in tags if t in outcome_tags or t.startswith("rejected:")] == [tag]
    ids = [s.state_details.flow_run_id for s in expected.values()]
    with get_client(sync_client=True) as client:
        for tag, state in expected.items():
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=ids), tags=FlowRunFilterTags(all_=[tag])
                )
            )
            assert [r.id for r in found] == [state.state_details.flow_run_id], tag


def test_a_run_that_fails_before_its_body_is_tagged_failed_too(memory_env):
    """An unknown recipe fails the run before anything is pulled (and a bad parameter type before the
    flow function is called): the state hook still tags it."""
    memory_env()
    bad_recipe = quantize_and_promote(
        model="tiny", version="early", recipes=["no-such-recipe"], return_state=True
    )
    bad_type = quantize_and_promote(
        model="tiny", version="early", allow_pickle="sometimes", return_state=True
    )
    for state in (bad_recipe, bad_type):
        assert state.is_failed()
        assert "failed" in _flow_run(state).tags


def test_a_failed_run_publishes_its_report_and_data_docs_and_is_announced(
    memory_env, tmp_path, tiny_model_dir, sts_path
):
    from typer.testing import CliRunner

    from quantgate.cli import app, console

    store = memory_env()
    ref = _register(store, "gx-fail", tiny_model_dir, _bad_heldout(sts_path, tmp_path))
    state = quantize_and_promote(model="tiny", version="gx-fail", **RUN, return_state=True)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)

    # The stored run report names its Data Docs, and they are stored.
    failure = lifecycle.last_failure(store, ref)
    assert (failure["run_id"], failure["error"]) == (run_id, "HeldoutValidationError")
    assert failure["failed_checks"]
    docs_key = failure["data_docs"].removeprefix(f"s3://{store.bucket}/")
    assert docs_key.startswith(f"runs/tiny/gx-fail/{run_id}/data_docs/")
    assert store.exists(docs_key)

    # The report under the model's decision key, and link cards to the Data Docs and the run report.
    keys = ["tiny-decision", "tiny-gx-fail-data-docs", "tiny-gx-fail-run-report"]
    found = _artifacts(state.state_details.flow_run_id, keys)
    assert set(found) == set(keys)
    report = found["tiny-decision"]
    assert report.type == "markdown"
    assert "tiny@gx-fail: FAILED" in report.data
    assert "HeldoutValidationError" in report.data
    assert docs_key in report.data  # linked from the report too
    for key, stored in (("tiny-gx-fail-data-docs", docs_key), ("tiny-gx-fail-run-report", "report.json")):
        url = str(found[key].data).split("](")[-1].rstrip(")")
        assert url.startswith(f"s3://{store.bucket}/runs/tiny/gx-fail/{run_id}/")
        assert url.endswith(stored)
        assert store.exists(url.removeprefix(f"s3://{store.bucket}/"))

    # quantgate.model.failed, about the model (like promoted/rejected) and related to the flow run.
    (event,) = _events(announce.FAILED, "gx-fail")
    assert event.resource.id == "quantgate.model.tiny"
    assert (event.payload["error"], event.payload["run_id"]) == ("HeldoutValidationError", run_id)
    assert event.payload["data_docs"] == failure["data_docs"]
    assert f"prefect.flow-run.{run_id}" in {r.id for r in event.related}

    # The CLI says how it failed, not "no decision yet".
    runner = CliRunner()
    wide = console.width
    console.width = 250  # one table row per version, as a terminal this wide shows it
    try:
        shown = runner.invoke(app, ["report", "tiny", "gx-fail"])
        listed = runner.invoke(app, ["list", "tiny"])
    finally:
        console.width = wide
    assert shown.exit_code == 0, shown.output
    assert "tiny@gx-fail: failed: HeldoutValidationError: held-out set" in shown.output
    assert failure["data_docs"] in shown.output
    assert "no decision yet" not in shown.output
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "gx-fail" in line)
    assert "failed: HeldoutValidationError" in row


def test_a_tag_that_cannot_be_written_changes_neither_the_decision_nor_storage(
    memory_env, monkeypatch, tiny_model_dir, small_sts
):
    from prefect.client.orchestration import SyncPrefectClient

    store = memory_env()
    ref = _register(store, "tag-down", tiny_model_dir, small_sts)
    real = SyncPrefectClient.update_flow_run

    def no_tags(self, flow_run_id, *args, **kwargs):
        if kwargs.get("tags") is not None:
            raise RuntimeError("the Prefect API refused the tag")
        return real(self, flow_run_id, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "update_flow_run", no_tags)
    state = quantize_and_promote(model="tiny", version="tag-down", **RUN, return_state=True)
    assert state.name == "Promoted", state.message
    assert lifecycle.current(store, "tiny").version == "tag-down"
    assert store.exists(current_key("tiny"))
    assert lifecycle.decision_of(store, ref) == "promoted"
    assert "promoted" not in _flow_run(state).tags
    assert _events(announce.PROMOTED, "tag-down")  # announced as usual


def test_the_sweep_ends_failed_when_a_run_failed_and_publishes_its_summary(
    memory_env, tmp_path, tiny_model_dir, small_sts, sts_path
):
    from prefect.states import State

    store = memory_env()
    _register(store, "sw-ok", tiny_model_dir, small_sts, model="swept")
    _register(store, "sw-bad", tiny_model_dir, _bad_heldout(sts_path, tmp_path), model="swept")

    state = registry_sweep(**SWEEP, max_failures=3, return_state=True)
    assert state.is_failed()
    assert "failed: swept@sw-bad" in state.message
    rows = {r["version"]: r for r in _summary(state)}
    assert (rows["sw-ok"]["state"], rows["sw-ok"]["outcome"], rows["sw-ok"]["retries left"]) == (
        "Promoted",
        "promoted",
        "-",
    )
    assert rows["sw-bad"]["state"] == "Failed"
    assert rows["sw-bad"]["outcome"].startswith("failed: HeldoutValidationError")
    assert rows["sw-bad"]["retries left"] == "2"  # 3 allowed, 1 used

    # The failing version over its limit: skipped, and the sweep (which ran nothing that failed) completes.
    again: State = registry_sweep(**SWEEP, max_failures=1, return_state=True)
    assert again.is_completed(), again.message
    rows = {r["version"]: r for r in _summary(again)}
    assert set(rows) == {"sw-bad"}
    assert (rows["sw-bad"]["state"], rows["sw-bad"]["retries left"]) == ("Skipped", "0")
    assert rows["sw-bad"]["outcome"].startswith("skipped: 1 failed run(s)")


def _summary(state) -> list[dict[str, str]]:
    """The rows of the sweep's registry-sweep-summary artifact, as the UI shows them (a markdown table)."""
    found = _artifacts(state.state_details.flow_run_id, ["registry-sweep-summary"])
    text = found["registry-sweep-summary"].data
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    head = [h.strip().replace("_", " ") for h in lines[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip().replace("\\", "") for c in line.strip("|").split(" | ")), strict=True))
        for line in lines[1:]
    ]


def test_a_rollback_is_announced(memory_env, tmp_path):
    from typer.testing import CliRunner

    from quantgate.cli import app
    from quantgate.registry import Manifest

    store = memory_env()
    for version in ("rb1", "rb2"):
        path = tmp_path / version / "model.int8.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(version.encode() * 100)
        manifest = Manifest(
            model="rolled", version=version, run_id=f"r-{version}", task="sentence-embedding", recipe={},
            files=[], source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
        )  # fmt: skip
        lifecycle.promote(store, manifest, {"model.int8.onnx": path}, {}, actor="ci")
    result = CliRunner().invoke(app, ["rollback", "rolled", "--yes"])
    assert result.exit_code == 0, result.output
    (event,) = _events(announce.ROLLED_BACK, "rb1")
    assert event.resource.id == "quantgate.model.rolled"
    assert (event.payload["version"], event.payload["previous_version"]) == ("rb1", "rb2")
    assert not _events(announce.ROLLED_BACK, "rb2", timeout=0)  # the version rolled back to is the resource


def test_a_crashed_run_found_by_the_sweep_is_reported_tagged_and_announced_as_failed(
    memory_env, tiny_model_dir, small_sts
):
    """A run killed mid-way wrote nothing: the zombie automation marks it Crashed (its message says so).
    The sweep writes its report, publishes it, tags the run `failed` and announces it, once; the crash
    counts against max_failures like any failure."""
    from prefect import get_client
    from prefect.states import Crashed
    from typer.testing import CliRunner

    from quantgate.cli import app, console

    store = memory_env()
    ref = _register(store, "crashed", tiny_model_dir, small_sts, model="tiny")
    message = "No heartbeat for 120 s: the flow run's process is gone (killed?)."
    with get_client(sync_client=True) as client:  # what a SIGKILLed run leaves on the server
        crashed = client.create_flow_run(quantize_and_promote, name=str(ref), state=Crashed(message=message))
    run_id = str(crashed.id)

    sweep = registry_sweep(**SWEEP, max_runs=0, return_state=True)  # report it, run nothing
    assert sweep.is_completed(), sweep.message
    assert f"crashed run(s) reported: tiny@crashed ({run_id})" in sweep.message
    failure = lifecycle.last_failure(store, ref)
    assert (failure["run_id"], failure["error"], failure["message"]) == (run_id, "Crashed", message)
    assert store.exists(f"runs/tiny/crashed/{run_id}/report.json")
    with get_client(sync_client=True) as client:
        assert "failed" in client.read_flow_run(crashed.id).tags
    found = _artifacts(sweep.state_details.flow_run_id, ["tiny-decision", "tiny-crashed-run-report"])
    assert "tiny@crashed: FAILED" in found["tiny-decision"].data
    assert "registry-sweep found the run Crashed" in found["tiny-decision"].data
    (event,) = _events(announce.FAILED, "crashed")
    assert (event.payload["run_id"], event.payload["error"]) == (run_id, "Crashed")
    assert f"prefect.flow-run.{run_id}" in {r.id for r in event.related}

    runner = CliRunner()
    wide = console.width
    console.width = 250
    try:
        shown = runner.invoke(app, ["report", "tiny", "crashed"])
        listed = runner.invoke(app, ["list", "tiny"])
    finally:
        console.width = wide
    assert "tiny@crashed: failed: Crashed: No heartbeat" in shown.output, shown.output
    row = next(line for line in listed.output.splitlines() if "crashed" in line)
    assert "failed: Crashed" in row

    # Recorded once; and a version that crashed max_failures times is left alone like any failing one.
    again = registry_sweep(**SWEEP, max_failures=1, return_state=True)
    assert "crashed run(s) reported" not in again.message
    assert lifecycle.run_history(store, ref).failed == 1
    rows = {r["version"]: r for r in _summary(again)}
    assert rows["crashed"]["outcome"].startswith("skipped: 1 failed run(s)")


def test_the_sweep_leaves_a_version_to_its_run_still_in_flight_until_that_run_is_too_old(
    memory_env, tiny_model_dir, small_sts
):
    """A registration's run waits behind the pool's concurrency limit (ENQUEUE) under a random name: it is
    named model@version only once it starts. The sweep finds it by its parameters and leaves the version
    to it, naming that run; a run that has ended holds nothing back; one older than the sweep's
    `in_flight_max_age_h` does not either (the sweep then decides the version itself). A version
    registered within `registration_grace_s` waits for the next sweep."""
    from prefect import get_client
    from prefect.states import AwaitingConcurrencySlot, Completed

    store = memory_env()
    queued = _register(store, "queued", tiny_model_dir, small_sts, model="inflight")
    ended = _register(store, "ended", tiny_model_dir, small_sts, model="inflight")
    params = {"model": queued.name, "version": queued.version}
    with get_client(sync_client=True) as client:
        waiting = client.create_flow_run(
            quantize_and_promote, name="crimson-fox", parameters=params, state=AwaitingConcurrencySlot()
        )
        client.create_flow_run(quantize_and_promote, name=str(ended), state=Completed())
    try:
        fresh = registry_sweep(**RUN, return_state=True)  # the default grace: both just registered
        rows = {r["version"]: r for r in _summary(fresh)}
        assert rows["ended"]["outcome"].startswith("skipped: registered "), rows["ended"]
        assert "grace" in rows["ended"]["outcome"]
        assert lifecycle.decision_of(store, ended) is None

        sweep = registry_sweep(**SWEEP, return_state=True)
        assert sweep.is_completed(), sweep.message
        rows = {r["version"]: r for r in _summary(sweep)}
        assert rows["ended"]["state"] == "Promoted"
        assert rows["queued"]["state"] == "Skipped"
        assert rows["queued"]["outcome"].startswith(f"skipped: in flight: run {waiting.id} of it is Awaiting")
        assert lifecycle.decision_of(store, queued) is None  # left to its own run
        assert lifecycle.run_history(store, queued).failures == 0

        late = registry_sweep(**SWEEP, in_flight_max_age_h=1 / 3600, return_state=True)  # 3.6 s
        assert late.is_completed(), late.message
        assert {r["version"]: r["state"] for r in _summary(late)} == {"queued": "Promoted"}
        assert lifecycle.decision_of(store, queued) == "promoted"
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(waiting.id)


def test_a_run_created_while_the_sweep_runs_others_holds_its_version_back(
    memory_env, monkeypatch, tiny_model_dir, small_sts
):
    """The sweep checks every undecided version once, then each again just before it runs it: the run of a
    version that its registration's trigger creates in between (here, after the first check saw none) is
    found by the second check, and the sweep leaves the version to it."""
    from prefect import get_client, task
    from prefect.states import Scheduled

    from tasks import storage

    store = memory_env()
    _register(store, "a-first", tiny_model_dir, small_sts, model="between")
    second = _register(store, "b-second", tiny_model_dir, small_sts, model="between")
    made = []

    @task(name="runs-in-flight")
    def none_yet(refs, max_age_h):  # the first check, before the registration's run of `second` exists
        params = {"model": second.name, "version": second.version}
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(
                quantize_and_promote, name="amber-owl", parameters=params, state=Scheduled()
            )
        made.append(run)
        return {}

    monkeypatch.setattr(storage, "runs_in_flight", none_yet)
    try:
        sweep = registry_sweep(**SWEEP, return_state=True)
        rows = {r["version"]: r for r in _summary(sweep)}
        assert rows["a-first"]["state"] == "Promoted"
        held = rows["b-second"]["outcome"]
        assert held.startswith(f"skipped: in flight: run {made[0].id} of it is Scheduled"), held
        assert lifecycle.decision_of(store, second) is None
    finally:
        with get_client(sync_client=True) as client:
            for run in made:
                client.delete_flow_run(run.id)
