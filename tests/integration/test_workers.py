"""Several workers, bounded concurrency (issue #24): two process workers on one pool, the quantize
deployment's concurrency_limit with ENQUEUE, the per-model promotion limit kept. 3 models x 2 versions are
registered at once and announced; their runs are observed through the Prefect API (states, logs, events)
and storage. On PostgreSQL: with two workers polling, SQLite logs `database is locked` (Prefect #23051)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from benchmarks.runs import announce_all, register_all, wait_for_runs
from benchmarks.workers import FIGURES_SETTING, figures, peak_overlap, run_times, runs_by_worker, table
from infra.prefect_stack import PrefectStack, worker_name
from quantgate import lifecycle
from quantgate.registry import ModelRef
from tests.conftest import RECORDED_S
from tests.integration.test_deployments import TINY_PARAMS

pytestmark = pytest.mark.scale

SERVER_PORT = 4600  # below the ephemeral range the other tiers' servers take (see test_postgres_stack.py)
PG_PORT = 4601
WORKERS = 2
WORKER_LIMIT = 1  # without one, one worker took every run (see infra/prefect_stack.py)
FLOW_CONCURRENCY = 2
REFS = [ModelRef(name=f"m{m}", version=f"v{v}") for m in (1, 2, 3) for v in (1, 2)]
DEPLOYMENT = "quantize-and-promote/quantize-on-registration"
DECIDING = {"Promoted", "NotPromoted"}


def _promotion_slot_intervals(client, models: set[str], expected: int, timeout: float = RECORDED_S) -> dict:
    """Per model, when a run held its `quantgate-promote-<model>` slot: the acquired/released events the
    promote task emits (they reach the server asynchronously: polled until every one is there)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    names = {f"quantgate-promote-{m}": m for m in models}
    deadline = time.monotonic() + timeout
    while True:
        page = client.read_events(
            filter=EventFilter(event=EventNameFilter(prefix=["prefect.concurrency-limit."])), limit=50
        )
        every = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            every += page.events
        events = [e for e in every if e.resource.get("prefect.resource.name") in names]
        acquired = {e.id: e for e in events if e.event.endswith(".acquired")}
        released = [e for e in events if e.event.endswith(".released")]
        if (len(acquired) >= expected and len(released) >= len(acquired)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(acquired) == len(released) == expected, (len(acquired), len(released), expected)
    intervals: dict[str, list] = {m: [] for m in models}
    for release in released:
        held = acquired[release.follows]
        intervals[names[held.resource["prefect.resource.name"]]].append((held.occurred, release.occurred))
    return intervals


def test_two_workers_share_the_runs_within_the_deployment_limit_and_decide_every_version_once(
    s3_env, store, tiny_model_dir, small_sts, tmp_path: Path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("QUANTGATE_PREFECT_DB", "postgres")
    monkeypatch.setenv("QUANTGATE_POSTGRES_PORT", str(PG_PORT))
    # tests/conftest.py's 5 s (for the fault tests) could let a promotion wait out its model's slot on this
    # loaded machine and go on without it; the workers' runs get the production default back.
    monkeypatch.delenv("QUANTGATE_PROMOTION_LOCK_TIMEOUT_S")
    state = tmp_path / "prefect"
    state.mkdir()
    stack = PrefectStack(
        state,
        SERVER_PORT,
        workers=WORKERS,
        worker_limit=WORKER_LIMIT,
        flow_concurrency=FLOW_CONCURRENCY,
        sweep_schedule=False,  # at 07:00 a scheduled sweep once decided the six versions first
    ).start()
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == FLOW_CONCURRENCY
            assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
            client.update_deployment(deployment.id, DeploymentUpdate(parameters=TINY_PARAMS))

            # Every version uploaded in its own thread, then every registration event emitted at once.
            registrations = register_all(
                store, REFS, tiny_model_dir, small_sts, "sentence-embedding", threads=len(REFS)
            )
            announce_all(registrations, os.environ["QUANTGATE_BUCKET"])
            # 240 s was too short on a CI machine with the other tiers beside this one (m3's two runs were
            # still running): six tiny runs take ~1 min alone.
            runs = wait_for_runs(client, deployment.id, len(REFS), timeout=600)
            ran_in = runs_by_worker(stack.worker_logs)
            times = [run_times(client, run, ran_in) for run in runs]
            found = figures(times, WORKERS, WORKER_LIMIT, FLOW_CONCURRENCY)
            print(f"\n{table(found)}")
            if out := os.environ.get(FIGURES_SETTING):
                Path(out).write_text(json.dumps(found.__dict__))

            # Every version got exactly one run, which decided it; nothing failed.
            assert sorted(t.name for t in times) == sorted(str(ref) for ref in REFS)
            assert {t.state for t in times} <= DECIDING, [(t.name, t.state) for t in times]

            # Both workers took runs.
            assert set(found.runs_per_worker) == {worker_name(i) for i in range(1, WORKERS + 1)}, found

            # The deployment's limit held: never more than N runs between start and end. (With one run
            # per worker, the workers' own limits keep runs from asking for a third slot: how many went
            # through AwaitingConcurrencySlot is reported, not asserted.)
            assert found.peak_running <= FLOW_CONCURRENCY, found

            # No model had two runs promoting at once: its promotion slot was never held twice.
            promoted = [t for t in times if t.state == "Promoted"]
            slots = _promotion_slot_intervals(client, {ref.name for ref in REFS}, expected=len(promoted))
            for model, held in slots.items():
                assert peak_overlap(held) <= 1, (model, held)

        # Storage: every version decided once; each promotion audited once.
        for ref in REFS:
            assert lifecycle.decision_of(store, ref) is not None, ref
        for model in {ref.name for ref in REFS}:
            audited = [e.version for e in lifecycle.audit_log(store, model) if e.action == "promote"]
            assert len(audited) == len(set(audited)), (model, audited)
            assert set(audited) == {t.name.split("@")[1] for t in promoted if t.name.startswith(f"{model}@")}

        logs = "".join(p.read_text(errors="replace") for p in state.glob("*.log"))
        assert "database is locked" not in logs
        assert "promoting without it" not in logs
    finally:
        stack.stop()
