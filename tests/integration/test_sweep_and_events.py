"""The registry sweep and the events, read back through the Prefect client (not from logs)."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from flows.quantize_and_promote import quantize_and_promote
from flows.registry_sweep import registry_sweep
from quantgate import announce, lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from tests.conftest import RECORDED_S, TINY_GATES, TINY_RECIPES
from tests.integration.conftest import snapshot

pytestmark = pytest.mark.usefixtures("prefect_api")


def _events(name: str, version: str, minimum: int = 1, timeout: float = RECORDED_S):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(labels={"quantgate.version": [version]}),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # events are written by the server asynchronously: poll, bounded
            events = client.read_events(filter=flt, limit=50).events  # the server caps limit at 50
            if len(events) >= minimum or time.monotonic() > deadline:
                return events
            time.sleep(0.3)


def _assert_artifacts(prefix: str, store, flow_run_id) -> None:
    """What the UI shows, read back through the Prefect client: the report, the tables, and links to the
    promoted model, the plots and the GX Data Docs, each an object that really is in storage. The run's
    own artifacts: other runs of the model (a failed one too) publish under the same decision key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    kinds = [
        "gates",
        "benchmark",
        "candidates",
        "data-docs",
        "promoted-model",
        "latency-plot",
        "pareto-plot",
    ]
    decision = prefix.split("-", 1)[0] + "-decision"  # one key per model: a decision history
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[decision, *(f"{prefix}-{k}" for k in kinds)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    by_key = {a.key: a for a in found}
    assert set(by_key) == {decision, *(f"{prefix}-{k}" for k in kinds)}
    assert by_key[decision].type == "markdown"
    assert "Candidates" in by_key[decision].data
    assert by_key[f"{prefix}-candidates"].type == "table"
    for kind in ("data-docs", "promoted-model", "latency-plot", "pareto-plot"):
        artifact = by_key[f"{prefix}-{kind}"]  # Prefect stores a link artifact as markdown "[text](url)"
        assert artifact.description
        url = str(artifact.data).split("](")[-1].rstrip(")")
        # A presigned HTTP link to an object that really is in storage.
        assert url.startswith(store._client.meta.endpoint_url + f"/{store.bucket}/"), url
        key = url.split("?", 1)[0].removeprefix(store._client.meta.endpoint_url + f"/{store.bucket}/")
        assert store.exists(urllib.parse.unquote(key)), url


def test_a_decision_is_announced_with_its_metrics(store, tiny_model_dir, small_sts):
    ref = ModelRef(name="tiny", version="ev1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    state = quantize_and_promote(
        model="tiny",
        version="ev1",
        recipes=TINY_RECIPES,
        thresholds=TINY_GATES,
        bench=BenchSettings(warmup_runs=1, repeat_runs=5),
        return_state=True,
    )
    assert state.name == "Promoted"
    (event,) = _events(announce.PROMOTED, "ev1")
    assert event.resource.id == "quantgate.model.tiny"
    assert event.payload["outcome"] == "promoted"
    assert event.payload["metrics"]["mean_cosine"] >= TINY_GATES.min_mean_cosine
    assert event.payload["failed_gates"] == []
    _assert_artifacts("tiny-ev1", store, state.state_details.flow_run_id)

    strict = ModelRef(name="tiny", version="ev2")
    lifecycle.register(store, strict, tiny_model_dir, small_sts, "sentence-embedding")
    quantize_and_promote(
        model="tiny",
        version="ev2",
        recipes=TINY_RECIPES,
        thresholds=TINY_GATES.model_copy(update={"mean_tol": 1e-12}),
        bench=BenchSettings(warmup_runs=1, repeat_runs=5),
        return_state=True,
    )
    (rejected,) = _events(announce.REJECTED, "ev2")
    assert rejected.payload["failed_gates"] == ["parity mean abs diff"]


def test_register_cli_announces_the_version_when_a_prefect_api_is_set(s3_env, tiny_model_dir, small_sts):
    from typer.testing import CliRunner

    from quantgate.cli import app

    result = CliRunner().invoke(
        app, ["register", "tiny", "ev3", "--model-dir", str(tiny_model_dir), "--heldout", str(small_sts)]
    )
    assert result.exit_code == 0, result.output
    (event,) = _events(announce.REGISTERED, "ev3")
    assert event.payload["model"] == "tiny"
    assert event.payload["version"] == "ev3"  # a string, as the flow's `version` parameter expects
    assert event.payload["location"].endswith("registered/tiny/ev3/")


def test_sweep_runs_only_undecided_versions(store, tiny_model_dir, small_sts):
    for version in ("s1", "s2", "s3"):
        lifecycle.register(
            store, ModelRef(name="tiny", version=version), tiny_model_dir, small_sts, "sentence-embedding"
        )
    decided = quantize_and_promote(
        model="tiny",
        version="s1",
        recipes=TINY_RECIPES,
        thresholds=TINY_GATES,
        bench=BenchSettings(warmup_runs=1, repeat_runs=5),
        return_state=True,
    )
    assert decided.name == "Promoted"
    s1_before = snapshot(store, "promoted/tiny/s1/")

    results = registry_sweep(
        recipes=TINY_RECIPES,
        thresholds=TINY_GATES,
        bench=BenchSettings(warmup_runs=1, repeat_runs=5),
        registration_grace_s=0,  # registered a moment ago, with no event: nothing else will run them
    )

    assert sorted((r["version"], r["state"]) for r in results) == [("s2", "Promoted"), ("s3", "Promoted")]
    assert snapshot(store, "promoted/tiny/s1/") == s1_before
    assert lifecycle.undecided(store, max_failures=3) == []
    # decided versions are never run again
    assert registry_sweep(thresholds=TINY_GATES, registration_grace_s=0) == []
