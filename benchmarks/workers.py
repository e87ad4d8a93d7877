"""Several workers, bounded concurrency (issue #24): runs per worker and queue wait p50/p95 of the
quantize-on-registration deployment when 3 models x 2 versions are registered at once, with two process
workers on one pool and the deployment's concurrency_limit (ENQUEUE) on a PostgreSQL-backed server.

The scenario is the scale test tests/integration/test_workers.py (the real stack: SeaweedFS, PostgreSQL,
Prefect server, two workers, the tiny BERT model); this script runs it once, takes the figures it measured
from the Prefect API, prints a table and writes benchmarks/results/workers.json:

    .venv/bin/python -m benchmarks.workers

The functions below read those figures; the test imports them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "workers.json"
FIGURES_SETTING = "QUANTGATE_WORKERS_FIGURES"  # the test writes its figures there when set
# A process worker's log holds its runs' own output, with the run's page: "View at …/flow-run/<id>".
RAN = re.compile(r"/runs/flow-run/(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@dataclass(frozen=True)
class RunTimes:
    name: str
    worker: str
    state: str
    queued_at: datetime  # expected_start_time: when the trigger scheduled it
    started_at: datetime
    ended_at: datetime
    waited_for_slot: bool  # went through AwaitingConcurrencySlot at least once

    @property
    def queue_wait_s(self) -> float:
        return (self.started_at - self.queued_at).total_seconds()


@dataclass(frozen=True)
class Figures:
    workers: int
    worker_limit: int | None
    flow_concurrency: int
    runs: int
    runs_per_worker: dict[str, int]
    queue_wait_p50_s: float
    queue_wait_p95_s: float
    queue_wait_max_s: float
    peak_running: int
    runs_that_waited_for_a_slot: int
    wall_s: float  # first run queued to last run ended


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def peak_overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant; one that ends when another starts does not overlap it."""
    edges = sorted((t, step) for start, end in intervals for t, step in ((start, 1), (end, -1)))
    peak = now = 0
    for _, step in edges:  # at equal times -1 sorts before +1
        now += step
        peak = max(peak, now)
    return peak


def runs_by_worker(worker_logs: dict[str, Path]) -> dict[str, str]:
    """flow run id -> the worker whose process ran it. Prefect 3.8.8 records no worker on a flow run
    (infrastructure_pid is the run's own pid), and every worker that sees a due run logs "Worker '…'
    submitting flow run '<id>'" to the API, also the ones the server then turns away; only the winner's
    log file gets the run's output."""
    found: dict[str, str] = {}
    for worker, path in worker_logs.items():
        for match in RAN.finditer(path.read_text(errors="replace")):
            previous = found.setdefault(match["id"], worker)
            if previous != worker:
                raise AssertionError(f"flow run {match['id']} ran in both {previous} and {worker}")
    return found


def run_times(client: Any, run: Any, ran_in: dict[str, str]) -> RunTimes:
    states = client.read_flow_run_states(run.id)
    return RunTimes(
        name=run.name,
        worker=ran_in.get(str(run.id), "?"),
        state=run.state.name,
        queued_at=run.expected_start_time,
        started_at=run.start_time,
        ended_at=run.end_time,
        waited_for_slot=any(s.name == "AwaitingConcurrencySlot" for s in states),
    )


def figures(
    times: Sequence[RunTimes], workers: int, worker_limit: int | None, flow_concurrency: int
) -> Figures:
    waits = [t.queue_wait_s for t in times]
    return Figures(
        workers=workers,
        worker_limit=worker_limit,
        flow_concurrency=flow_concurrency,
        runs=len(times),
        runs_per_worker=dict(sorted(Counter(t.worker for t in times).items())),
        queue_wait_p50_s=round(percentile(waits, 50), 2),
        queue_wait_p95_s=round(percentile(waits, 95), 2),
        queue_wait_max_s=round(max(waits), 2),
        peak_running=peak_overlap((t.started_at, t.ended_at) for t in times),
        runs_that_waited_for_a_slot=sum(t.waited_for_slot for t in times),
        wall_s=round((max(t.ended_at for t in times) - min(t.queued_at for t in times)).total_seconds(), 1),
    )


def table(found: Figures) -> str:
    rows = [
        (
            "workers (runs each) / concurrency_limit",
            f"{found.workers} ({found.worker_limit or 'any'}) / {found.flow_concurrency} (ENQUEUE)",
        ),
        ("flow runs", str(found.runs)),
        ("runs per worker", ", ".join(f"{w}: {n}" for w, n in found.runs_per_worker.items())),
        (
            "queue wait p50 / p95 / max",
            f"{found.queue_wait_p50_s} / {found.queue_wait_p95_s} / {found.queue_wait_max_s} s",
        ),
        ("peak runs running at once", str(found.peak_running)),
        ("runs that waited for a slot", str(found.runs_that_waited_for_a_slot)),
        ("first queued to last ended", f"{found.wall_s} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="quantgate-workers-") as scratch:
        out = Path(scratch) / "figures.json"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/integration/test_workers.py", "-m", "scale", "-q",
             "-p", "no:cacheprovider"],
            cwd=REPO,
            env={**os.environ, FIGURES_SETTING: str(out)},
            check=False,
        )  # fmt: skip
        if done.returncode != 0 or not out.exists():
            sys.exit(f"the scale test failed (exit {done.returncode}): no figures written")
        found = Figures(**json.loads(out.read_text()))
    print(table(found))
    from benchmarks.runs import write_result

    write_result(
        RESULT,
        ".venv/bin/python -m benchmarks.workers",
        "3 models x 2 versions registered at once; tiny BERT; SeaweedFS; Prefect 3.8.8 server on PostgreSQL; "
        "quantize-on-registration through its event trigger",
        asdict(found),
    )
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
