"""The browser tier: one real stack (SeaweedFS, a Prefect server with the process pool, prefect.yaml's
deployments and a worker), three runs of the tiny model made through the deployment (one promoted, one
rejected, one decided by a raced search of three kinds of recipe), and one headless Chromium (Debian's,
installed by infra/browser.sh) that looks at them in the Prefect UI. Everything is started once per
session and stopped when it ends, also on failure."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.chromium import chromium_options, chromium_paths
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from tests.conftest import HANG_S, REPO, TINY_GATES, TINY_RECIPES
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY, drop_bucket, prefect_stack, seaweed

__all__ = ["seaweed"]  # the session's SeaweedFS, shared with the integration tier's fixture

SCREENSHOTS = REPO / "docs" / "screenshots"
# docs/screenshots/ is tracked: a run rewrites it only when this is set to 1, so an ordinary run leaves the
# working tree clean and saves its views under pytest's tmp dir instead.
UPDATE_SCREENSHOTS = "QUANTGATE_UPDATE_SCREENSHOTS"
WINDOW = (1400, 1000)
DEPLOYMENT = "quantize-and-promote/quantize-on-registration"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
BENCH = BenchSettings(warmup_runs=1, repeat_runs=5).model_dump()
# The tiny random BERT passes TINY_GATES; no INT8 model matches FP32 to 1e-12 on average, so this rejects.
REJECTING = TINY_GATES.model_copy(update={"mean_tol": 1e-12})
# Three kinds of recipe (dynamic and static ONNX Runtime INT8, OpenVINO BF16), raced: half the 236
# evaluation rows are a probe of 118 (racing needs 100). Scored on every row two at a time, fastest first:
# the two INT8 candidates (0.35-0.42 ms here) pass, and OpenVINO BF16 (8.9 ms on the tiny model, 20x
# slower) cannot win, so it is never scored in full, and the report's table by kind says so.
RACED_RECIPES = ["dynamic-int8-per-channel", "static-qdq-minmax", "ov-bf16"]
RACED_BUDGET = {"max_trials": 0, "race_share": 0.5, "workers": 2}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)


@dataclass(frozen=True)
class Stack:
    ui: str  # the Prefect UI's root, http://127.0.0.1:<port>
    api_url: str
    deployment_id: str
    promoted: Any  # prefect FlowRun, read back after it finished
    rejected: Any
    raced: Any


def _outcome_tagged(run: Any) -> bool:
    return any(tag == "promoted" or tag.startswith(("rejected:", "failed")) for tag in run.tags)


def _wait_finished(client: Any, run_ids: list[Any], timeout: float) -> dict[Any, Any]:
    """Until every run is finished and tagged with its outcome: the tag is written by the flow's state
    hook after the final state, and a page loaded in between would show the run without it."""
    deadline = time.monotonic() + timeout
    while True:
        runs = {run_id: client.read_flow_run(run_id) for run_id in run_ids}
        if all(r.state and r.state.type.value in TERMINAL and _outcome_tagged(r) for r in runs.values()):
            return runs
        if time.monotonic() > deadline:
            states = {r.name: (r.state.name if r.state else None, r.tags) for r in runs.values()}
            raise AssertionError(f"flow runs not finished within {timeout:.0f}s: {states}")
        time.sleep(1)


@pytest.fixture(scope="session")
def stack(
    seaweed: Any, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, small_sts: Path
) -> Iterator[Stack]:
    """The stack, with tiny@v1 promoted, tiny@v2 rejected and raced@v1 decided by a raced search, all run
    by the deployment's worker so they belong to the deployment and show in the server's UI."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore

    bucket = "qg-" + secrets.token_hex(6)
    work = tmp_path_factory.mktemp("browser-stack")
    with pytest.MonkeyPatch.context() as env:
        # The worker and the runs it starts inherit this process's environment (infra/prefect_stack.py).
        env.setenv("QUANTGATE_S3_ENDPOINT_URL", seaweed.endpoint_url)
        env.setenv("QUANTGATE_BUCKET", bucket)
        env.delenv("QUANTGATE_STORE_URL", raising=False)
        env.setenv("QUANTGATE_WORK_DIR", str(work / "work"))
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        store = ObjectStore(Settings())
        store.ensure_bucket()
        try:
            with (
                prefect_stack(work) as running,
                temporary_settings({PREFECT_API_URL: running.api_url}),
                get_client(sync_client=True) as client,
            ):
                for ref in ("tiny@v1", "tiny@v2", "raced@v1"):
                    name, version = ref.split("@")
                    lifecycle.register(
                        store, ModelRef(name=name, version=version), tiny_model_dir, small_sts,
                        "sentence-embedding",
                    )  # fmt: skip
                # At once: the worker runs them side by side (none depends on another's decision).
                tiny = {"recipes": TINY_RECIPES, "bench": BENCH}
                asked = {
                    "tiny@v1": {**tiny, "thresholds": TINY_GATES.model_dump()},
                    "tiny@v2": {**tiny, "thresholds": REJECTING.model_dump()},
                    "raced@v1": {
                        "recipes": RACED_RECIPES,
                        "bench": BENCH,
                        "thresholds": TINY_GATES.model_dump(),
                        "budget": RACED_BUDGET,
                    },
                }
                started = {}
                for ref, params in asked.items():
                    model, version = ref.split("@")
                    started[ref] = run_deployment(
                        DEPLOYMENT, parameters={"model": model, "version": version, **params}, timeout=0
                    )
                runs = _wait_finished(client, [r.id for r in started.values()], timeout=HANG_S)
                promoted, rejected = runs[started["tiny@v1"].id], runs[started["tiny@v2"].id]
                raced = runs[started["raced@v1"].id]
                assert promoted.state.name == "Promoted", promoted.state.message
                assert rejected.state.name == "NotPromoted", rejected.state.message
                assert raced.state.name == "Promoted", raced.state.message
                yield Stack(
                    ui=running.api_url.removesuffix("/api"),
                    api_url=running.api_url,
                    deployment_id=str(client.read_deployment_by_name(DEPLOYMENT).id),
                    promoted=promoted,
                    rejected=rejected,
                    raced=raced,
                )
        finally:
            drop_bucket(seaweed, bucket)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium through the system chromedriver, given by path: selenium-manager is never asked
    (it would download a driver and a browser, which this machine cannot reach). Requests to any host but
    127.0.0.1 fail fast, and every request is recorded in the performance log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    paths = chromium_paths()
    if paths is None:
        pytest.fail("chromium and chromedriver must be on PATH: run `bash infra/browser.sh`", pytrace=False)
    chromium, chromedriver = paths
    options = chromium_options(chromium, *WINDOW)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})

    def no_selenium_manager(*_: Any, **__: Any) -> None:
        raise AssertionError("selenium-manager was called: the Service must name the system chromedriver")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        patch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/screenshots/ (for docs/deployments.md) when QUANTGATE_UPDATE_SCREENSHOTS=1, else a folder in
    pytest's tmp dir."""
    if os.environ.get(UPDATE_SCREENSHOTS) == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def screenshot(browser: Any, screenshot_dir: Path) -> Callable[[str], Path]:
    """Save the current view to <screenshot_dir>/<name>.png (overwritten)."""

    def save(name: str) -> Path:
        path = screenshot_dir / f"{name}.png"
        assert browser.save_screenshot(str(path)), path
        return path

    return save
