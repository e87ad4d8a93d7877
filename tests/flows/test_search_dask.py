"""The recipe search on Dask (issue #24): the tiny model through the real flow with the default recipe
search, once on the flow's threads and once on a LocalCluster of two worker processes. Same decision,
same verdict per candidate; the candidates really ran in the workers, and each was sent as a small task
(a path and a wall-clock deadline, not the held-out rows or the reference outputs)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import psutil
import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from tests.conftest import TINY_GATES

pytestmark = [pytest.mark.scale, pytest.mark.usefixtures("prefect_api")]

# What one candidate's task may weigh, pickled: its recipe, the job file's path and sha256, the deadline
# and a thread count are a few hundred bytes; the job itself (reference outputs, held-out rows, calibration
# batches) is hundreds of KB on the tiny model and MBs on MiniLM, so this bound fails if it is ever sent.
MAX_TASK_BYTES = 16 * 1024
# The winner is the fastest passing candidate in the flow's own interleaved benchmark, which runs in the
# flow's process whichever runner built the candidates. On the tiny model the two fused recipes are 5-10 %
# apart and can swap between any two runs (threads against threads too; more so on a loaded machine): such a
# swap is no other decision.
SPEED_NOISE = 0.15
# Fast enough for the tier (about a minute both ways on 2 cores); the search is the subject, not the
# latency gates (TINY_GATES), and no fallback is needed to compare the two runners.
RUN = {
    "thresholds": TINY_GATES,
    # More repeats than the flows tier's 5, so that a swap of the two fused recipes stays rare.
    "bench": BenchSettings(warmup_runs=2, repeat_runs=20),
    "budget": SearchBudget(max_trials=0),
}


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Whatever the test's outcome, no process it started outlives it: the runner closes its cluster when
    the search ends; a worker left behind anyway is failed on and then killed, by its own pid."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    # multiprocessing's resource tracker is this process's own (started with the first spawned child, it
    # ends with this process): not the cluster's.
    left = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())
    ]
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"processes left running after the search: {[p.cmdline()[:3] for p in alive]}"


def test_the_search_on_dask_workers_decides_as_the_thread_search(
    memory_env, monkeypatch, tmp_path, tiny_model_dir, small_sts, no_orphans
):
    store = memory_env()
    reports = {}
    for runner in ("threads", "dask"):
        # Separate caches: each run really builds and scores its candidates.
        monkeypatch.setenv("QUANTGATE_CACHE_DIR", str(tmp_path / f"cache-{runner}"))
        monkeypatch.setenv("QUANTGATE_SEARCH_RUNNER", runner)
        ref = ModelRef(name=f"on-{runner}", version="v1")  # two models: neither run has a champion
        lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
        state = quantize_and_promote(model=ref.name, version=ref.version, **RUN, return_state=True)
        assert state.name == "Promoted", state.message
        reports[runner] = json.loads(lifecycle.read_promoted_file(store, ref, "report.json"))

    threads, dask = (reports[r]["search"] for r in ("threads", "dask"))
    assert len(threads["candidates"]) >= 6  # the default search, not one recipe
    assert _verdicts(dask) == _verdicts(threads)
    assert _accuracy(dask) == _accuracy(threads)  # the same builds scored on the same rows
    assert _same_winner(threads, dask), _latencies(threads, dask)

    assert all(c["dispatch"] is None for c in threads["candidates"])
    sent = [c["dispatch"] for c in dask["candidates"]]
    workers = {d["worker"] for d in sent}
    hosts, pids = {w.split(":")[0] for w in workers}, {int(w.split(":")[1]) for w in workers}
    assert hosts == {socket.gethostname()}, workers
    assert os.getpid() not in pids, workers
    assert len(pids) == 2, workers  # both workers of the LocalCluster took candidates
    largest = max(d["task_bytes"] for d in sent)
    assert 0 < largest < MAX_TASK_BYTES, largest


def _verdicts(search: dict) -> dict[str, tuple[str, bool, dict[str, bool]]]:
    """Each candidate's status, its overall verdict and each accuracy gate's."""
    return {
        c["recipe"]["name"]: (
            c["status"],
            bool(c["gates"]) and all(r["passed"] for r in c["gates"]["results"]),
            {r["gate"]["name"]: r["passed"] for r in (c["gates"] or {}).get("results", [])
             if r["gate"]["kind"] == "accuracy"},
        )
        for c in search["candidates"]
    }  # fmt: skip


def _accuracy(search: dict) -> dict[str, float | None]:
    return {
        c["recipe"]["name"]: (c["evaluation"] or {}).get("task_metric_candidate")
        for c in search["candidates"]
    }


def _same_winner(threads: dict, dask: dict) -> bool:
    """The same recipe promoted; or two that both runs passed, and that at least one run measured within
    SPEED_NOISE of each other (a tie the shared machine's load decided, not the runner). Two clear and
    different winners fail."""
    a, b = threads["chosen"], dask["chosen"]
    if a == b:
        return True
    tied = []
    for search in (threads, dask):
        speed = {c["recipe"]["name"]: _speed(c) for c in search["candidates"]}
        if speed.get(a) is None or speed.get(b) is None:
            return False
        tied.append(abs(speed[a] / speed[b] - 1) <= SPEED_NOISE)
    return any(tied)


def _speed(c: dict) -> float | None:
    lat = c["latency"] or {}
    return lat.get("objective_ms") or lat.get("p50_ms")


def _latencies(*searches: dict) -> list[dict[str, float | None]]:
    return [
        {c["recipe"]["name"]: (c["latency"] or {}).get("p50_ms") for c in s["candidates"]} for s in searches
    ]
