"""The deployments of prefect.yaml on a real Prefect server with a process worker, all on 127.0.0.1:
`quantgate register` alone starts the run (event trigger), and the sweep picks up a version that was
uploaded without an event. Everything is observed through the Prefect client and storage."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from infra.zombies import AUTOMATION_NAME
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef, manifest_key
from tests.conftest import HANG_S, REPO, TINY_GATES, TINY_RECIPES
from tests.integration.conftest import prefect_stack, snapshot

# The tiny model cannot win latency from INT8 (see test_flow.py): the deployments get its speed gate off.
TINY_PARAMS = {
    "recipes": TINY_RECIPES,
    "thresholds": TINY_GATES.model_dump(),
    "bench": BenchSettings(warmup_runs=1, repeat_runs=5).model_dump(),
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def stack(s3_env, tmp_path):
    with prefect_stack(tmp_path) as running:
        yield running


def _wait_for_run(client, run_name: str, timeout: float = HANG_S):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
        if runs and runs[0].state and runs[0].state.type.value in TERMINAL:
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no finished flow run {run_name!r} within {timeout}s")


def test_registration_triggers_a_run_and_the_sweep_catches_silent_uploads(
    stack, store, tiny_model_dir, small_sts
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        for name in ("quantize-and-promote/quantize-on-registration", "registry-sweep/registry-sweep"):
            deployment = client.read_deployment_by_name(name)
            client.update_deployment(deployment.id, DeploymentUpdate(parameters=TINY_PARAMS))

        # Every automation on the server is named and described (none is `<deployment>__automation_1`).
        automations = {a.name: a for a in client.read_automations()}
        assert {"quantgate-run-on-registration", AUTOMATION_NAME} <= set(automations), set(automations)
        for automation in automations.values():
            assert "__automation_" not in automation.name
            assert len(automation.description) > 80, automation.name

        # 1. `quantgate register` is all a person does; the event trigger starts the run on the worker.
        env = {**stack.env(), "PYTHONPATH": str(REPO)}
        registered = subprocess.run(
            [
                sys.executable,
                "-m",
                "quantgate.cli",
                "register",
                "tiny",
                "d1",
                "--model-dir",
                str(tiny_model_dir),
                "--heldout",
                str(small_sts),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=HANG_S,
            check=False,
        )
        assert registered.returncode == 0, registered.stderr
        assert "announced quantgate.model.registered" in registered.stdout
        run = _wait_for_run(client, "tiny@d1")
        assert run.state.name == "Promoted", run.state.message
        # The outcome tag joins the deployment's own tag (update_flow_run replaces the list: kept). The
        # state hook writes it just after the final state, which the poll above may see first: poll again.
        deadline = time.monotonic() + 30
        while "promoted" not in (tags := client.read_flow_run(run.id).tags) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert {"quantgate", "promoted"} <= set(tags)
        assert (
            run.deployment_id
            == client.read_deployment_by_name("quantize-and-promote/quantize-on-registration").id
        )
        assert store.exists(manifest_key(ModelRef(name="tiny", version="d1")))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["tiny-decision"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
        assert artifacts
        assert "PROMOTED" in artifacts[0].data
        d1_before = snapshot(store, "promoted/tiny/d1/")

        # 2. Uploaded by another tool: no event, so no run, until the sweep finds it.
        lifecycle.register(
            store, ModelRef(name="tiny", version="d2"), tiny_model_dir, small_sts, "sentence-embedding"
        )
        # (Registered a moment ago: the sweep's grace for a registration's own run is waived here.)
        sweep = run_deployment(
            "registry-sweep/registry-sweep", parameters={"registration_grace_s": 0}, timeout=HANG_S
        )
        assert sweep.state.is_completed(), sweep.state.message
        assert _wait_for_run(client, "tiny@d2").state.name == "Promoted"
        assert snapshot(store, "promoted/tiny/d1/") == d1_before  # decided: never run again
        assert lifecycle.undecided(store, max_failures=3) == []
