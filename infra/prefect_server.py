"""Start and stop a real local Prefect server (UI + API) on 127.0.0.1, so runs show up in the UI.

    python -m infra.prefect_server start [--port 4200]   # then: export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m infra.prefect_server stop

SQLite under <state-dir>/prefect by default. One switch, QUANTGATE_PREFECT_DB=postgres, starts a local
PostgreSQL first (infra/postgres.py, on QUANTGATE_POSTGRES_PORT, default 5432), runs Prefect's migration
explicitly (`prefect server database upgrade -y`) and starts the server on it. A fresh SQLite database takes
about 16 s to answer /api/health (measured, Prefect 3.8.8).

With QUANTGATE_PREFECT_SQLITE_TEMPLATE set to a file (the tests set it), a state folder without a database
starts from a copy of an empty database already migrated to this Prefect's head (`sqlite_template`): the
server's own migration on start then has nothing to do (benchmarks/prefect_db_start.py measures both).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - fixed loopback URL
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer {url}/health within {timeout:.0f}s")


TEMPLATE_ENV = "QUANTGATE_PREFECT_SQLITE_TEMPLATE"


def sqlite_template(path: Path) -> Path:
    """An empty Prefect SQLite database at `path`, migrated to the installed Prefect's head by
    `prefect server database upgrade -y`, built once: racing callers (the test tiers start at once) wait on
    a lock and the loser finds it built. Name the file after the Prefect version: a database migrated by
    another version must not be copied."""
    import fcntl
    import sqlite3
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / (path.name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        building = path.with_name(path.name + ".building")
        building.unlink(missing_ok=True)
        url = "sqlite+aiosqlite:///" + str(building)
        try:
            with tempfile.TemporaryDirectory() as home:
                env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_DATABASE_CONNECTION_URL": url}
                env.pop("PREFECT_API_URL", None)
                migrate(env, url)
            # Prefect's SQLite runs in WAL mode: fold any write-ahead log into the file that gets copied.
            with contextlib.closing(sqlite3.connect(building)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException:
            for leftover in (building, *(building.with_name(building.name + x) for x in ("-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
            raise
        building.replace(path)  # complete or absent: a killed build leaves no half-migrated template
    return path


def seed_sqlite(database: Path) -> None:
    """When QUANTGATE_PREFECT_SQLITE_TEMPLATE names a file and there is no `database` yet, copy the template
    there (built first if it is missing); otherwise leave it to the server's migration on start."""
    import shutil

    template = os.environ.get(TEMPLATE_ENV)
    if template and not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sqlite_template(Path(template)), database)


def start(
    state_dir: Path, port: int, timeout: float = 180.0, database_url: str | None = None
) -> subprocess.Popen[bytes]:
    """The server alone. With `database_url` (it holds a password: never logged) the migration runs first,
    explicitly, and the server is told not to migrate on start."""
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Without this the UI calls the API on the default port 4200 whatever --port says.
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
        migrate(env, database_url)
    else:
        seed_sqlite(home / "prefect.db")
    prefect = str(Path(sys.executable).parent / "prefect")
    log = (state_dir / "prefect-server.log").open("ab")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log.close()
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api", timeout, proc)
    except RuntimeError:
        stop_process(proc.pid)
        raise
    return proc


def migrate(env: dict[str, str], database_url: str, timeout: float = 300.0) -> None:
    """`prefect server database upgrade -y` against PREFECT_SERVER_DATABASE_CONNECTION_URL in `env`. Its
    output is kept only on failure, with the URL's password replaced by ***."""
    from urllib.parse import unquote, urlsplit

    from infra.postgres import redact

    password = unquote(urlsplit(database_url).password or "")
    prefect = str(Path(sys.executable).parent / "prefect")
    done = subprocess.run(
        [prefect, "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise RuntimeError(
            f"prefect server database upgrade failed (exit {done.returncode}):\n{redact(tail, password)}"
        )


def start_servers(state_dir: Path, port: int, timeout: float = 180.0) -> list[subprocess.Popen[bytes]]:
    """The server on the database QUANTGATE_PREFECT_DB chooses: sqlite (default) gives [server]; postgres
    gives [postgres, server] (stop them in reverse order). Nothing is left running when this raises."""
    from infra.postgres import Postgres, database_choice, postgres_port

    if database_choice() == "sqlite":
        return [start(state_dir, port, timeout)]
    pg = Postgres(state_dir, postgres_port()).start()
    try:
        return [pg.running, start(state_dir, port, timeout, database_url=pg.url())]
    except BaseException:
        pg.stop()
        raise


def stop_process(pid: int, timeout: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A leader that is our own child stays in its group as a zombie until it is reaped: without this,
        # every stop waited out the whole timeout (40 s per test stack for the worker and the server).
        with contextlib.suppress(ChildProcessError):  # not our child (a pid file's), or already reaped
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def service_main(
    argv: list[str] | None,
    description: str,
    pid_file: str,
    start_service: Callable[[Path, int], list[int]],
    stopped: str,
) -> None:
    """`start|stop [--state-dir D] [--port P]` for a set of local processes whose pids live in one file
    under the state folder (stopped in reverse start order)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", type=Path, default=Path(".quantgate"))
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    pids = state_dir / pid_file
    if args.action == "start":
        state_dir.mkdir(parents=True, exist_ok=True)
        pids.write_text("\n".join(map(str, start_service(state_dir, args.port))))
    elif pids.exists():
        for pid in reversed(pids.read_text().split()):
            stop_process(int(pid))
        pids.unlink()
        print(stopped)


def main(argv: list[str] | None = None) -> None:
    def start_server(state_dir: Path, port: int) -> list[int]:
        procs = start_servers(state_dir, port)
        print(f"Prefect UI on http://127.0.0.1:{port}; export PREFECT_API_URL=http://127.0.0.1:{port}/api")
        return [proc.pid for proc in procs]

    service_main(argv, __doc__.splitlines()[0], "prefect-server.pid", start_server, "Prefect server stopped")


if __name__ == "__main__":
    main()
