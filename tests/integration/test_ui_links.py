"""The links a run publishes open in a browser without credentials (#23): presigned GETs against the real
SeaweedFS, fetched over plain HTTP."""

from __future__ import annotations

import json
import urllib.request

import pytest

from quantgate.datadocs import fetched_urls
from quantgate.registry import ModelRef
from tests.conftest import TINY_GATES


def _get(url: str) -> tuple[int, str, bytes]:
    """GET without any credentials, as a browser on the operator's machine would."""
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - http(s) presigned URLs only
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_a_presigned_link_opens_over_http_with_the_objects_type(store, tmp_path):
    plot = tmp_path / "latency.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    store.put_file("rejected/m/v1/run-1/latency.png", plot)
    url = store.presign("rejected/m/v1/run-1/latency.png", 7 * 24 * 3600)
    assert url.startswith("http")
    assert "X-Amz-Expires=604800" in url
    status, content_type, body = _get(url)
    assert status == 200
    assert content_type == "image/png"  # rendered by the browser, not downloaded
    assert body == plot.read_bytes()


def test_links_are_signed_for_the_address_the_browser_uses(s3_env, store, seaweed):
    from quantgate.storage import ObjectStore

    store.put_bytes("runs/m/v1/run-1/report.json", b"{}")
    browser = seaweed.endpoint_url.replace("127.0.0.1", "localhost")
    linked = ObjectStore(s3_env.model_copy(update={"s3_link_endpoint_url": browser}))
    url = linked.presign("runs/m/v1/run-1/report.json", 60)
    assert url.startswith(browser + "/")
    assert _get(url)[0] == 200


def test_an_unsigned_address_of_the_same_object_is_refused(store, tmp_path):
    store.put_bytes("runs/m/v1/run-1/report.json", b"{}")
    url = store.presign("runs/m/v1/run-1/report.json", 60)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(url.split("?", 1)[0])
    assert refused.value.code == 403


@pytest.mark.usefixtures("prefect_api")
def test_a_rejected_runs_link_artifacts_and_inline_plots_open_and_its_data_docs_fetch_nothing_online(
    store, tiny_model_dir, small_sts
):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.quantize_and_promote import quantize_and_promote
    from quantgate import lifecycle
    from quantgate.bench import BenchSettings

    ref = ModelRef(name="tiny", version="v2")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    impossible = TINY_GATES.model_copy(update={"min_mean_cosine": 1.0, "mean_tol": 1e-12})
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        thresholds=impossible,
        bench=BenchSettings(warmup_runs=2, repeat_runs=15),
        recipes=["dynamic-int8"],
        return_state=True,
    )
    assert state.name == "NotPromoted", state.message

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    # Prefect 3.8.8 stores a link artifact as markdown "[text](url)".
    kinds = ("report-json", "data-docs", "latency-plot", "pareto-plot")
    links = {kind: a for a in artifacts for kind in kinds if a.key == f"tiny-v2-{kind}"}
    assert set(links) == set(kinds)
    for artifact in links.values():
        assert artifact.description
        url = artifact.data.split("](", 1)[1].rstrip(")")
        status, content_type, body = _get(url)
        assert status == 200, artifact.key
        if artifact.key.endswith("-plot"):
            assert body.startswith(b"\x89PNG")
        if artifact.key.endswith("data-docs"):
            assert content_type.startswith("text/html")
            assert fetched_urls(body.decode()) == []
    # The examples show the input, its gold label and both models' outputs.
    (examples,) = [a for a in artifacts if a.key == "tiny-v2-examples"]
    rows = json.loads(examples.data) if isinstance(examples.data, str) else examples.data
    assert all(r["gold"].startswith("pair score") for r in rows)
    assert all(r["fp32"].startswith("pair cosine") for r in rows)
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert float(progress.data) == 100.0
    assert progress.description.startswith("search done: ")
    (report,) = [a for a in artifacts if a.key == "tiny-decision"]
    assert report.task_run_id is None  # a flow-level artifact: listed first, under "Flow run"
    images = [line for line in report.data.splitlines() if line.startswith("![")]
    assert len(images) >= 2
    for line in images:
        status, content_type, _ = _get(line.split("](", 1)[1].rstrip(")"))
        assert (status, content_type) == (200, "image/png")
