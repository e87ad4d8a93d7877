"""A Prefect server, the `quantgate-pool` process work pool, the deployments of prefect.yaml and one
worker, all on 127.0.0.1. Used by infra/deploy.sh and by the deployment integration test.

The worker inherits this process's environment: QUANTGATE_* and AWS_* must be set before `start`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.postgres import database_choice
from infra.prefect_server import service_main, start_servers, stop_process
from infra.zombies import CRASHED_AFTER_S, HEARTBEAT_S

REPO = Path(__file__).resolve().parents[1]
POOL = "quantgate-pool"


def _prefect(*args: str, env: dict[str, str]) -> None:
    prefect = str(Path(sys.executable).parent / "prefect")
    subprocess.run([prefect, *args], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)


def _prefect_python(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)


@dataclass
class PrefectStack:
    state_dir: Path
    port: int
    heartbeat_s: int = HEARTBEAT_S
    crashed_after_s: int = CRASHED_AFTER_S
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Told each step as it starts (deploy.sh prints them: the whole start takes ~40 s).
    say: Callable[[str], None] = lambda _: None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "QUANTGATE_REPO": str(REPO),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            # Flow runs the worker starts inherit it: heartbeats the zombie automation watches.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat_s),
        }

    def start(self) -> PrefectStack:
        began = time.monotonic()

        def step(what: str) -> None:
            self.say(f"[{time.monotonic() - began:4.0f} s] {what}")

        if database_choice() == "postgres":
            step("starting PostgreSQL (infra/postgres.py) and migrating Prefect's database on it")
        step(f"starting the Prefect server on 127.0.0.1:{self.port} (about 16 s on a new database)")
        self.processes.extend(start_servers(self.state_dir, self.port))
        try:
            env = self.env()
            step(f"server healthy; creating the process work pool {POOL}")
            _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
            step("deploying every deployment in prefect.yaml (prefect deploy --all)")
            _prefect("--no-prompt", "deploy", "--all", env=env)
            step(f"creating the automation that marks a silent run Crashed after {self.crashed_after_s} s")
            _prefect_python("-m", "infra.zombies", "--crashed-after", str(self.crashed_after_s), env=env)
            log_path = self.state_dir / "worker.log"
            step(f"starting a worker on {POOL} (log: {log_path})")
            log = log_path.open("ab")
            prefect = str(Path(sys.executable).parent / "prefect")
            self.processes.append(
                subprocess.Popen(
                    [prefect, "worker", "start", "--pool", POOL, "--type", "process"],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
            step("done")
        except BaseException:
            step("failed: stopping what was started")
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):  # worker first, then the server, then PostgreSQL
            stop_process(proc.pid)
        self.processes.clear()


def main(argv: list[str] | None = None) -> None:
    def start_stack(state_dir: Path, port: int) -> list[int]:
        stack = PrefectStack(state_dir, port, say=lambda line: print(line, flush=True)).start()
        print(f"Prefect UI http://127.0.0.1:{port}; pool {POOL}; deployments deployed; worker up.")
        print(f"export PREFECT_API_URL={stack.api_url}")
        return [p.pid for p in stack.processes]

    service_main(
        argv, __doc__.splitlines()[0], "prefect-stack.pids", start_stack, "Prefect worker and server stopped"
    )


if __name__ == "__main__":
    main()
