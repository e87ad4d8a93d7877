"""How long the Prefect server takes to answer /api/health on SQLite and on PostgreSQL (QUANTGATE_PREFECT_DB),
on a new state folder and on an existing one: the steps of infra.prefect_server.start_servers, timed one by
one. Everything on 127.0.0.1, stopped at the end, also on failure.

    .venv/bin/python -m benchmarks.prefect_db_start [--out benchmarks/results/prefect_db_start.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from infra.postgres import Postgres
from infra.prefect_server import start, stop_process

REPO = Path(__file__).resolve().parents[1]
SERVER_PORT = 4561
PG_PORT = 4562


def _time_sqlite(state: Path) -> dict[str, float]:
    began = time.monotonic()
    server = start(state, SERVER_PORT)
    took = time.monotonic() - began
    stop_process(server.pid)
    return {"database_s": 0.0, "server_s": took, "total_s": took}


def _time_postgres(state: Path) -> dict[str, float]:
    began = time.monotonic()
    pg = Postgres(state, PG_PORT).start()
    try:
        up = time.monotonic()
        server = start(state, SERVER_PORT, database_url=pg.url())  # migration, then the server
        healthy = time.monotonic()
        stop_process(server.pid)
    finally:
        pg.stop()
    return {"database_s": up - began, "server_s": healthy - up, "total_s": healthy - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prefect_db_start.json")
    args = parser.parse_args()
    rows = []
    for database, timer in (("sqlite", _time_sqlite), ("postgres", _time_postgres)):
        with tempfile.TemporaryDirectory(prefix=f"qg-{database}-") as state:
            for folder in ("new", "existing"):
                rows.append({"database": database, "state_folder": folder, **timer(Path(state))})
    print(f"{'database':<10} {'state':<9} {'db up':>7} {'migrate+server':>15} {'total':>7}")
    for r in rows:
        print(
            f"{r['database']:<10} {r['state_folder']:<9} {r['database_s']:6.1f}s "
            f"{r['server_s']:14.1f}s {r['total_s']:6.1f}s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
