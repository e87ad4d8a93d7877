"""How long the Prefect server takes to answer /api/health on SQLite and on PostgreSQL (QUANTGATE_PREFECT_DB),
on a new state folder and on an existing one: the steps of infra.prefect_server.start_servers, timed one by
one, with the server's CPU seconds until then. "sqlite-template" is SQLite from a copy of a database already
migrated (QUANTGATE_PREFECT_SQLITE_TEMPLATE, what every test server does; the template is built first, not
timed). Everything on 127.0.0.1, stopped at the end, also on failure.

    .venv/bin/python -m benchmarks.prefect_db_start [--out benchmarks/results/prefect_db_start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from infra.postgres import Postgres
from infra.prefect_server import TEMPLATE_ENV, sqlite_template, start, stop_process

REPO = Path(__file__).resolve().parents[1]
SERVER_PORT = 4561
PG_PORT = 4562


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children so far."""
    import psutil

    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def _time_sqlite(state: Path) -> dict[str, float]:
    began = time.monotonic()
    server = start(state, SERVER_PORT)
    took = time.monotonic() - began
    cpu = _cpu_s(server.pid)
    stop_process(server.pid)
    return {"database_s": 0.0, "server_s": took, "total_s": took, "server_cpu_s": cpu}


def _time_sqlite_template(state: Path) -> dict[str, float]:
    template = sqlite_template(state / "template" / "prefect.db")  # built once, on the first pass
    os.environ[TEMPLATE_ENV] = str(template)
    try:
        return _time_sqlite(state)
    finally:
        del os.environ[TEMPLATE_ENV]


def _time_postgres(state: Path) -> dict[str, float]:
    began = time.monotonic()
    pg = Postgres(state, PG_PORT).start()
    try:
        up = time.monotonic()
        server = start(state, SERVER_PORT, database_url=pg.url())  # migration, then the server
        healthy = time.monotonic()
        cpu = _cpu_s(server.pid)
        stop_process(server.pid)
    finally:
        pg.stop()
    return {
        "database_s": up - began, "server_s": healthy - up, "total_s": healthy - began, "server_cpu_s": cpu,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prefect_db_start.json")
    args = parser.parse_args()
    rows = []
    timers = (
        ("sqlite", _time_sqlite), ("sqlite-template", _time_sqlite_template), ("postgres", _time_postgres),
    )  # fmt: skip
    for database, timer in timers:
        with tempfile.TemporaryDirectory(prefix=f"qg-{database}-") as state:
            for folder in ("new", "existing"):
                rows.append({"database": database, "state_folder": folder, **timer(Path(state))})
    head = f"{'database':<16} {'state':<9} {'db up':>7} {'migrate+server':>15} {'total':>7}"
    print(f"{head} {'server CPU':>11}")
    for r in rows:
        print(
            f"{r['database']:<16} {r['state_folder']:<9} {r['database_s']:6.1f}s "
            f"{r['server_s']:14.1f}s {r['total_s']:6.1f}s {r['server_cpu_s']:10.1f}s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
