"""A Prefect server, the `quantgate-pool` process work pool, the deployments of prefect.yaml and its
workers (one by default, QUANTGATE_WORKERS=K for more), all on 127.0.0.1. Used by infra/deploy.sh and by
the deployment integration tests.

The workers inherit this process's environment: QUANTGATE_* and AWS_* must be set before `start`.
The quantize deployment's `concurrency_limit` (ENQUEUE) is prefect.yaml's; QUANTGATE_FLOW_CONCURRENCY=N
sets another after `prefect deploy`: at most N of its runs hold a slot (Pending or Running) at once, the
others wait in AwaitingConcurrencySlot."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.postgres import database_choice
from infra.prefect_server import service_main, start_servers, stop_process
from infra.zombies import CRASHED_AFTER_S, HEARTBEAT_S

REPO = Path(__file__).resolve().parents[1]
POOL = "quantgate-pool"
SWEEP_DEPLOYMENT = "registry-sweep/registry-sweep"
QUANTIZE_DEPLOYMENT = "quantize-and-promote/quantize-on-registration"
WORKERS_SETTING = "QUANTGATE_WORKERS"
WORKER_LIMIT_SETTING = "QUANTGATE_WORKER_LIMIT"
FLOW_CONCURRENCY_SETTING = "QUANTGATE_FLOW_CONCURRENCY"


def deployed_flow_concurrency(prefect_yaml: Path = REPO / "prefect.yaml") -> int:
    """The quantize deployment's `concurrency_limit.limit` as prefect.yaml declares it."""
    import yaml

    config = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    (quantize,) = [d for d in config["deployments"] if d["name"] == QUANTIZE_DEPLOYMENT.split("/")[1]]
    return int(quantize["concurrency_limit"]["limit"])


def _positive(environ: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 0 < value <= most:
        raise ValueError(f"{name}={raw!r} is not a whole number from 1 to {most}; unset it for {default}")
    return value


def worker_count(environ: Mapping[str, str] = os.environ) -> int:
    """How many process workers poll the pool: QUANTGATE_WORKERS, default 1."""
    return _positive(environ, WORKERS_SETTING, 1, 16)


def worker_limit(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many runs one worker runs at once (`prefect worker start --limit`): QUANTGATE_WORKER_LIMIT,
    unset for no limit of its own (the deployment's concurrency_limit still holds)."""
    if not environ.get(WORKER_LIMIT_SETTING, "").strip():
        return None
    return _positive(environ, WORKER_LIMIT_SETTING, 1, 64)


def flow_concurrency(environ: Mapping[str, str] = os.environ) -> int:
    """The quantize deployment's concurrency_limit: QUANTGATE_FLOW_CONCURRENCY, default prefect.yaml's."""
    return _positive(environ, FLOW_CONCURRENCY_SETTING, deployed_flow_concurrency(), 64)


def worker_name(index: int) -> str:
    """Worker i's name (1-based): the name its runs' logs carry ("Worker '<name>' submitting flow run")."""
    return f"quantgate-worker-{index}"


def _prefect(*args: str, env: dict[str, str]) -> None:
    prefect = str(Path(sys.executable).parent / "prefect")
    done = subprocess.run([prefect, *args], env=env, cwd=REPO, check=False, capture_output=True, timeout=300)
    if done.returncode != 0:  # its own output says why (a bad prefect.yaml value, an unreachable server)
        output = (done.stdout + done.stderr).decode(errors="replace").strip()[-3000:]
        raise RuntimeError(f"prefect {' '.join(args)} failed (exit {done.returncode}):\n{output}")


def _prefect_python(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)


@dataclass
class PrefectStack:
    state_dir: Path
    port: int
    heartbeat_s: int = HEARTBEAT_S
    crashed_after_s: int = CRASHED_AFTER_S
    workers: int = field(default_factory=worker_count)
    # Without a limit of its own, whichever worker polls first submits every due run: in a two-worker
    # run one worker took all six (tests/integration/test_workers.py). With one, the others take the rest.
    worker_limit: int | None = field(default_factory=worker_limit)
    flow_concurrency: int = field(default_factory=flow_concurrency)
    # False: the registry sweep's hourly schedule is turned off after `prefect deploy` (a test's runs are
    # its own: at the top of the hour a scheduled sweep once ran every registered version of a test with
    # the deployment's default parameters, before the test's own runs). The deployment stays runnable.
    sweep_schedule: bool = True
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Told each step as it starts (deploy.sh prints them: the whole start takes ~40 s).
    say: Callable[[str], None] = lambda _: None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.flow_concurrency < 1 or (self.worker_limit or 1) < 1:
            raise ValueError(
                f"workers ({self.workers}), flow_concurrency ({self.flow_concurrency}) and worker_limit "
                f"({self.worker_limit}) must be >= 1"
            )

    @property
    def worker_logs(self) -> dict[str, Path]:
        """Each worker's log by name; its runs' own output goes there too ("View at …/flow-run/<id>")."""
        return {
            worker_name(i): self.state_dir / ("worker.log" if i == 1 else f"worker-{i}.log")
            for i in range(1, self.workers + 1)
        }

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
            if self.flow_concurrency != deployed_flow_concurrency():
                step(f"setting {QUANTIZE_DEPLOYMENT}'s concurrency_limit to {self.flow_concurrency}")
                self._set_flow_concurrency()
            if not self.sweep_schedule:
                step(f"turning off {SWEEP_DEPLOYMENT}'s schedule")
                self._sweep_schedule_off()
            step(f"creating the automation that marks a silent run Crashed after {self.crashed_after_s} s")
            _prefect_python("-m", "infra.zombies", "--crashed-after", str(self.crashed_after_s), env=env)
            for name, log_path in self.worker_logs.items():
                step(f"starting worker {name} on {POOL} (log: {log_path})")
                self.processes.append(self._start_worker(name, log_path, env))
            step("done")
        except BaseException:
            step("failed: stopping what was started")
            self.stop()
            raise
        return self

    def _set_flow_concurrency(self) -> None:
        # The update keeps the deployment's concurrency_options (collision_strategy ENQUEUE).
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import DeploymentUpdate
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(QUANTIZE_DEPLOYMENT)
            client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=self.flow_concurrency))

    def _sweep_schedule_off(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(SWEEP_DEPLOYMENT)
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)

    def _start_worker(self, name: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        prefect = str(Path(sys.executable).parent / "prefect")
        limit = ["--limit", str(self.worker_limit)] if self.worker_limit else []
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [prefect, "worker", "start", "--pool", POOL, "--type", "process", "--name", name, *limit],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        for proc in reversed(self.processes):  # workers first, then the server, then PostgreSQL
            stop_process(proc.pid)
        self.processes.clear()


def main(argv: list[str] | None = None) -> None:
    def start_stack(state_dir: Path, port: int) -> list[int]:
        stack = PrefectStack(state_dir, port, say=lambda line: print(line, flush=True)).start()
        print(
            f"Prefect UI http://127.0.0.1:{port}; pool {POOL}; deployments deployed; {stack.workers} "
            f"worker(s) up; quantize-on-registration runs at most {stack.flow_concurrency} at once."
        )
        print(f"export PREFECT_API_URL={stack.api_url}")
        return [p.pid for p in stack.processes]

    service_main(
        argv, __doc__.splitlines()[0], "prefect-stack.pids", start_stack, "Prefect worker and server stopped"
    )


if __name__ == "__main__":
    main()
