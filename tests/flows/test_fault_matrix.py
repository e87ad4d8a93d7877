"""Every storage write of a promotion x every fault mode (before / after / outage) x both engines, through
the real Prefect flow on the in-memory store (tests/fault_matrix.py says what is checked at each). One test
per engine, mode and shard of the write positions (every SHARDS-th write from the shard's own): together
the shards walk every write, and the pytest workers share the ~150 runs evenly (one test per engine and mode
left a single OpenVINO walk running alone at the end). Each shard numbers the writes with its own fault-free
run first. The same walk runs at a few representative positions on the real SeaweedFS in tests/integration."""

from __future__ import annotations

import pytest

from tests.fault_matrix import ENGINES, MODES, walk_fault_matrix
from tests.faults import FaultPlan

SHARDS = 3


def _install(store, plan: FaultPlan) -> FaultPlan:
    store.fault = plan.memory_hook()
    return plan


@pytest.mark.usefixtures("prefect_api", "no_retry_delay")
@pytest.mark.parametrize("shard", range(SHARDS), ids=[f"writes-{i}-mod-{SHARDS}" for i in range(SHARDS)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("recipe", ENGINES)
def test_a_503_at_every_storage_write_of_a_promotion(
    recipe, mode, shard, memory_env, tmp_path, tiny_model_dir, small_sts, signing
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
    )


def test_the_shards_together_walk_every_write():
    """The shards' positions partition any path length: no write is skipped, none walked twice."""
    for length in range(10, 40):
        walked = [at for shard in range(SHARDS) for at in range(shard, length, SHARDS)]
        assert sorted(walked) == list(range(length))
