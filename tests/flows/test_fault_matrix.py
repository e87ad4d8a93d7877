"""Every storage write of a promotion x every fault mode (before / after / outage) x both engines, through
the real Prefect flow on the in-memory store (tests/fault_matrix.py says what is checked at each). One test
per engine and mode, each walking every write. The same walk runs at a few representative positions on the
real SeaweedFS in tests/integration."""

from __future__ import annotations

import pytest

from tests.fault_matrix import ENGINES, MODES, walk_fault_matrix
from tests.faults import FaultPlan


def _install(store, plan: FaultPlan) -> FaultPlan:
    store.fault = plan.memory_hook()
    return plan


@pytest.mark.usefixtures("prefect_api", "no_retry_delay")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("recipe", ENGINES)
def test_a_503_at_every_storage_write_of_a_promotion(
    recipe, mode, memory_env, tmp_path, tiny_model_dir, small_sts, signing
):
    walk_fault_matrix(
        recipe,
        memory_env,
        _install,
        lambda path: list(range(len(path))),
        (mode,),
        tmp_path,
        tiny_model_dir,
        small_sts,
        signing,
    )
