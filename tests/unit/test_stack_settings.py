"""The local stack's worker and concurrency settings (infra/prefect_stack.py), refused by name."""

from __future__ import annotations

import pytest

from infra.prefect_stack import (
    QUANTIZE_DEPLOYMENT,
    deployed_flow_concurrency,
    flow_concurrency,
    worker_count,
    worker_limit,
)
from tests.conftest import REPO


def test_defaults_are_one_worker_without_a_limit_and_prefect_yamls_concurrency():
    assert worker_count({}) == 1
    assert worker_limit({}) is None
    assert flow_concurrency({}) == deployed_flow_concurrency() == 2


def test_the_settings_override_the_defaults():
    assert worker_count({"QUANTGATE_WORKERS": "3"}) == 3
    assert worker_limit({"QUANTGATE_WORKER_LIMIT": "1"}) == 1
    assert flow_concurrency({"QUANTGATE_FLOW_CONCURRENCY": " 4 "}) == 4


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", "99"])
def test_a_bad_worker_count_is_refused_by_name(raw: str):
    with pytest.raises(ValueError, match=rf"QUANTGATE_WORKERS='{raw}' is not a whole number from 1 to 16"):
        worker_count({"QUANTGATE_WORKERS": raw})


def test_prefect_yaml_enqueues_runs_beyond_the_quantize_deployments_limit():
    import yaml

    config = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    by_name = {d["name"]: d for d in config["deployments"]}
    quantize = by_name[QUANTIZE_DEPLOYMENT.split("/")[1]]
    assert quantize["concurrency_limit"] == {"limit": 2, "collision_strategy": "ENQUEUE"}
    assert "concurrency_limit" not in by_name["registry-sweep"]  # the sweep's sub-flows run in its process
