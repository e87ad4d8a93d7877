"""Every storage write of a promotion x every fault mode (before / after / outage) x both engines, through
the real Prefect flow on the in-memory store (tests/fault_matrix.py says what is checked at each). One test
per engine, mode and shard of the write positions (every SHARDS-th write from the shard's own): together
the shards walk every write, and the pytest workers share the ~150 runs evenly (one test per engine and mode
left a single OpenVINO walk running alone at the end). The writes are numbered by one fault-free run per
engine, shared by its shards across the pytest workers. The same walk runs at a few representative
positions on the real SeaweedFS in tests/integration."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault_matrix import ENGINES, MODES, walk_fault_matrix
from tests.faults import FaultPlan

SHARDS = 3


def _install(store, plan: FaultPlan) -> FaultPlan:
    store.fault = plan.memory_hook()
    return plan


@pytest.fixture(scope="session")
def numbered_paths(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder this session's pytest workers share (xdist gives each worker its own base temp, under one
    session folder), where each engine's numbered write path is kept."""
    base = tmp_path_factory.getbasetemp()
    return (base if worker_id == "master" else base.parent) / "fault-matrix-paths"


@pytest.mark.usefixtures("prefect_api", "no_retry_delay")
@pytest.mark.parametrize("shard", range(SHARDS), ids=[f"writes-{i}-mod-{SHARDS}" for i in range(SHARDS)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("recipe", ENGINES)
def test_a_503_at_every_storage_write_of_a_promotion(
    recipe, mode, shard, memory_env, tmp_path, tiny_model_dir, small_sts, signing, numbered_paths
):
    walk_fault_matrix(
        recipe,
        memory_env,
        _install,
        lambda path: list(range(shard, len(path), SHARDS)),
        (mode,),
        tmp_path,
        tiny_model_dir,
        small_sts,
        signing,
        shared_path=numbered_paths / f"{recipe}.json",
    )


def test_the_shards_together_walk_every_write():
    """The shards' positions partition any path length: no write is skipped, none walked twice."""
    for length in range(10, 40):
        walked = [at for shard in range(SHARDS) for at in range(shard, length, SHARDS)]
        assert sorted(walked) == list(range(length))
