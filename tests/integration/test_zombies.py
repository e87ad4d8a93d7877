"""A flow run whose process is SIGKILLed is marked Crashed by the zombie automation infra installs
(Prefect flow-run heartbeats + a proactive trigger), instead of staying Running forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.zombies import AUTOMATION_NAME
from quantgate import lifecycle
from quantgate.registry import ModelRef
from tests.conftest import HANG_S, REPO
from tests.integration.conftest import prefect_stack

HEARTBEAT_S = 30  # Prefect's minimum
CRASHED_AFTER_S = 40  # production uses 120; just above one heartbeat interval keeps the test short


@pytest.fixture
def stack(s3_env, tmp_path):
    with prefect_stack(tmp_path, heartbeat_s=HEARTBEAT_S, crashed_after_s=CRASHED_AFTER_S) as running:
        yield running


def test_a_killed_run_is_marked_crashed_not_left_running(stack, store, tiny_model_dir, small_sts):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ref = ModelRef(name="tiny", version="zombie")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    env = {**stack.env(), "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("kill_during_promotion.py")),
            ref.name,
            ref.version,
            "after-uploads",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=HANG_S,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        assert client.read_automations_by_name(AUTOMATION_NAME)
        by_name = FlowRunFilter(name=FlowRunFilterName(any_=[str(ref)]))
        (run,) = client.read_flow_runs(flow_run_filter=by_name)
        assert run.state.type.value == "RUNNING"  # what the killed process left behind
        deadline = time.monotonic() + HEARTBEAT_S + CRASHED_AFTER_S + 90
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            if run.state.type.value != "RUNNING":
                break
            time.sleep(2)
    assert run.state.type.value == "CRASHED", run.state
    assert "heartbeat" in (run.state.message or "")
