"""The whole stack of infra/prefect_stack.py (server, pool, deployments, automation, workers) on PostgreSQL
with QUANTGATE_PREFECT_DB=postgres: a deployment run is picked up by a worker, and its row is in
PostgreSQL. Two workers poll, the case where SQLite logs `database is locked` (Prefect #23051)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from infra.postgres import SUPERUSER
from infra.prefect_server import stop_process
from infra.prefect_stack import POOL, REPO, PrefectStack
from tests.conftest import HANG_S

pytestmark = pytest.mark.scale

SERVER_PORT = 4574  # below the ephemeral range the other tiers' servers take (see test_postgres_stack.py)
PG_PORT = 4575


def _rows(password: str, query: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    async def run() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=PG_PORT, user=SUPERUSER, password=password, database="prefect"
        )
        try:
            return [tuple(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_a_worker_runs_a_deployment_of_the_postgres_stack(s3_env, tmp_path: Path, monkeypatch):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("QUANTGATE_PREFECT_DB", "postgres")
    monkeypatch.setenv("QUANTGATE_POSTGRES_PORT", str(PG_PORT))
    state = tmp_path / "prefect"
    state.mkdir()
    stack = PrefectStack(state, SERVER_PORT, sweep_schedule=False)
    stack.start()
    second_worker = None
    try:
        prefect = str(Path(sys.executable).parent / "prefect")
        with (state / "worker-2.log").open("ab") as log:
            second_worker = subprocess.Popen(
                [prefect, "worker", "start", "--pool", POOL, "--type", "process"],
                env=stack.env(),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                schedules = client.read_deployment_by_name("registry-sweep/registry-sweep").schedules
            # deployed with its hourly schedule, turned off here (sweep_schedule=False); still runnable
            assert schedules
            assert not any(s.active for s in schedules)
            sweep = run_deployment("registry-sweep/registry-sweep", timeout=HANG_S)
        assert sweep.state is not None
        assert sweep.state.is_completed(), sweep.state.message

        password = (state / "postgres" / "password").read_text().strip()
        rows = _rows(
            password,
            "SELECT r.state_type::text, d.name, p.name FROM flow_run r "
            "JOIN deployment d ON d.id = r.deployment_id JOIN work_queue q ON q.id = r.work_queue_id "
            "JOIN work_pool p ON p.id = q.work_pool_id WHERE r.id = $1",
            sweep.id,
        )
        assert rows == [("COMPLETED", "registry-sweep", POOL)]
        assert not list(state.rglob("*.db"))  # no SQLite database anywhere in the stack's state
        logs = "".join(p.read_text(errors="replace") for p in state.glob("*.log"))
        assert "database is locked" not in logs
        assert password not in logs
    finally:
        if second_worker is not None:
            stop_process(second_worker.pid)
        stack.stop()
