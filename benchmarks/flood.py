"""A registration flood (issue #24 item 3): with the work pool paused, N registrations announced at once
must create N distinct runs of quantize-on-registration (0 lost, none doubled); the same events sent again
must promote nothing more; resumed, the pool drains every run, every version is decided exactly once and
no run is Crashed. Prefect issues #11199 (a burst of N events fired one action) and #13020 (a burst of
triggered runs ended Crashed) are what the counts check on quantgate's own path.

The real stack on 127.0.0.1, every port in --port-base .. +11 (4740-4751 by default): SeaweedFS
(`weed mini`), PostgreSQL and the Prefect server on it (with SQLite, several clients log `database is
locked`, Prefect #23051), the deployments of prefect.yaml and --workers process workers (infra/
prefect_stack.py). Registrations take `quantgate register`'s path (lifecycle.register, then the
registered event emitted): cheap synthetic versions of tests/plugins/' toy regression model (~10 kB),
judged with the copy backend (the FP32 graph copied as the candidate). Versions are spread over --models
models, so champions and per-model promotion slots are part of it.

    .venv/bin/python -m benchmarks.flood --versions 500 --resend 100     # the figures in docs/scale.md
    .venv/bin/python -m benchmarks.flood --versions 20 --resend 5        # ~2-3 min, while developing

Prints a table and writes benchmarks/results/flood.json (--out). Every server is stopped on exit, also
on failure or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "flood.json"
BUCKET = "quantgate-flood"
DEPLOYMENT = "quantize-and-promote/quantize-on-registration"
DECIDING = {"Promoted", "NotPromoted"}
# A flow run's process (`python -m prefect.engine`, started by a process worker) imports the deployment's
# entrypoint and nothing else: QUANTGATE_PLUGINS makes it load the toy task type and the copy backend of
# tests/plugins/ (quantgate/plugins.py), as a team's own plugins are loaded on its workers.
PLUGINS = "tests.plugins.toy_regression,tests.plugins.copy_backend"


def _params() -> dict[str, Any]:
    """The deployment's parameters for the flood: the copy backend's one recipe, benchmarks kept short.
    The gate limits are tests/integration/test_seams.py's for the toy model (MAE in the target's units),
    with the speed gates off (a copy is no faster) and the champion's p50 limit out of reach (the toy
    model's sub-millisecond p50 is noise on a loaded machine, as for the tiny BERT in tests/conftest.py)."""
    from quantgate.bench import BenchSettings
    from quantgate.thresholds import GateThresholds

    thresholds = GateThresholds(
        min_p95_speedup=0.0, min_objective_speedup=0.0, max_champion_slowdown=1000.0,
        max_task_metric_drop=3.0, max_slice_drop=3.0, max_baseline_half_width=20.0, abs_tol=50.0,
        mean_tol=5.0,
    )  # fmt: skip
    return {
        "recipes": ["copy-fp32"],
        "thresholds": thresholds.model_dump(),
        "bench": BenchSettings(warmup_runs=1, repeat_runs=5).model_dump(),
    }


@dataclass(frozen=True)
class Ports:
    """Every port the benchmark opens, from one base: Prefect, PostgreSQL, then weed's five HTTP ports and
    their five gRPC ports (weed would otherwise put each gRPC port at HTTP + 10000)."""

    base: int

    @property
    def prefect(self) -> int:
        return self.base

    @property
    def postgres(self) -> int:
        return self.base + 1

    def weed(self) -> tuple[dict[str, int], dict[str, int]]:
        services = ("master", "volume", "filer", "s3", "admin")
        http = {s: self.base + 2 + i for i, s in enumerate(services)}
        return http, {s: port + len(services) for s, port in http.items()}


@dataclass
class RssPeaks:
    """Peak resident memory of process trees (a process and all its descendants), sampled every
    `every` seconds on a thread of its own until stopped."""

    roots: dict[str, int]  # name -> pid
    every: float = 0.5
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def tree_rss(pid: int) -> int:
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            for name, pid in self.roots.items():
                self.peaks[name] = max(self.peaks.get(name, 0), self.tree_rss(pid))

    @contextmanager
    def running(self) -> Iterator[RssPeaks]:
        thread = threading.Thread(target=self._sample, name="rss-peaks", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)

    def mb(self) -> dict[str, float]:
        return {name: round(peak / 1e6, 1) for name, peak in self.peaks.items()}


def _wait_count(
    client: Any, deployment_id: Any, at_least: int, timeout: float, types: Sequence[str] = ()
) -> int:
    """Polls the deployment's run count (in these state types) until it reaches `at_least`; the last count."""
    from benchmarks.runs import count_runs

    deadline = time.monotonic() + timeout
    while True:
        found = count_runs(client, deployment_id, list(types) or None)
        if found >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _settle(client: Any, deployment_id: Any, seconds: float) -> int:
    """The run count after `seconds` more (what a late trigger, a redelivered event, would add)."""
    from benchmarks.runs import count_runs

    time.sleep(seconds)
    return count_runs(client, deployment_id)


def _stored_events(client: Any, name: str) -> list[Any]:
    """Every stored event of that name (paged); Prefect stores an event id once (ON CONFLICT DO NOTHING)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    since = datetime(2000, 1, 1, tzinfo=UTC)
    page = client.read_events(
        filter=EventFilter(event=EventNameFilter(name=[name]), occurred=EventOccurredFilter(since=since)),
        limit=50,
    )
    events = list(page.events)
    while page.next_page:
        page = client.read_events_page(page.next_page)
        events += page.events
    return events


def _automation_actions(client: Any, automation_name: str) -> int:
    """How many times the registration trigger's action ran (prefect.automation.action.executed)."""
    return sum(
        1
        for e in _stored_events(client, "prefect.automation.action.executed")
        if e.resource.get("prefect.resource.name") == automation_name
    )


def _version_of(run: Any) -> str:
    """model@version of a triggered run, from its parameters: its name is only set when it starts."""
    return f"{run.parameters.get('model')}@{run.parameters.get('version')}"


def _run_seconds(runs: Sequence[Any]) -> dict[str, float]:
    """Start to end of the runs that ran, by final state name: median and largest."""
    from benchmarks.workers import percentile

    by_state: dict[str, list[float]] = {}
    for run in runs:
        if run.start_time and run.end_time:
            by_state.setdefault(run.state.name, []).append((run.end_time - run.start_time).total_seconds())
    return {
        f"{state} p50 / max": f"{percentile(times, 50):.1f} / {max(times):.1f}"
        for state, times in sorted(by_state.items())
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _storage_check(store: Any, refs: Sequence[Any]) -> dict[str, Any]:
    """Every version decided exactly once in storage: one of manifest (promoted) or rejection, never both,
    never neither; each promotion audited once."""
    from quantgate import lifecycle
    from quantgate.registry import manifest_key, rejection_key

    decided: Counter[str] = Counter()
    problems: list[str] = []
    for ref in refs:
        promoted, rejected = store.exists(manifest_key(ref)), store.exists(rejection_key(ref))
        if promoted == rejected:
            problems.append(f"{ref}: {'both promoted and rejected' if promoted else 'undecided'}")
        decided["promoted" if promoted else "rejected" if rejected else "undecided"] += 1
        if promoted != rejected and lifecycle.decision_of(store, ref) != (
            "promoted" if promoted else "rejected"
        ):
            problems.append(f"{ref}: decision_of disagrees with the stored records")
    audits: Counter[tuple[str, str]] = Counter()
    for model in sorted({ref.name for ref in refs}):
        audits.update((model, e.version) for e in lifecycle.audit_log(store, model) if e.action == "promote")
    twice = sorted(f"{m}@{v}" for (m, v), n in audits.items() if n > 1)
    if len(audits) != decided["promoted"]:
        problems.append(f"{len(audits)} promotions audited, {decided['promoted']} manifests")
    return {"decided": dict(decided), "promotions_audited_twice": twice, "problems": problems[:20]}


def _phase(say: Any, began: float, what: str) -> None:
    say(f"[{time.monotonic() - began:6.1f} s] {what}")


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:  # noqa: PLR0915 - one scenario, in order
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from benchmarks.runs import TERMINAL, announce_all, count_runs, deployment_runs, register_all, resend
    from infra.prefect_stack import POOL, PrefectStack
    from infra.seaweed import SeaweedServer
    from quantgate.registry import ModelRef
    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore
    from tests.plugins.toy_regression import TOY_REGRESSION, train

    began = time.monotonic()
    say = lambda line: print(line, flush=True)  # noqa: E731
    ports = Ports(args.port_base)
    model_dir, heldout = scratch / "toy" / "model", scratch / "toy" / "heldout.csv"
    train(model_dir, heldout)

    key, secret = "qgflood" + secrets.token_hex(4), secrets.token_urlsafe(24)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "QUANTGATE_BUCKET": BUCKET,
            "QUANTGATE_WORK_DIR": str(scratch / "work"),
            "QUANTGATE_CACHE_DIR": str(scratch / "cache"),
            "QUANTGATE_PREFECT_DB": "postgres",
            "QUANTGATE_POSTGRES_PORT": str(ports.postgres),
            "PREFECT_HOME": str(scratch / "prefect-client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "GX_ANALYTICS_ENABLED": "False",
            "QUANTGATE_PLUGINS": PLUGINS,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
    )
    os.environ.pop("QUANTGATE_STORE_URL", None)

    http, grpc = ports.weed()
    seaweed = SeaweedServer(scratch / "seaweedfs", key, secret, ports=http, grpc_ports=grpc)
    stack: PrefectStack | None = None
    figures: dict[str, Any] = {}
    try:
        _phase(say, began, f"starting SeaweedFS on 127.0.0.1:{http['s3']}")
        seaweed.start(attempts=1)  # fixed ports: a clash is an error, not a reason to move out of range
        os.environ["QUANTGATE_S3_ENDPOINT_URL"] = seaweed.endpoint_url
        store = ObjectStore(Settings())
        store.ensure_bucket()
        state = scratch / "prefect"
        state.mkdir()
        stack = PrefectStack(
            state, ports.prefect, workers=args.workers, flow_concurrency=args.concurrency,
            # Each worker takes its share of the slots: without a limit one worker took every run
            # (infra/prefect_stack.py).
            worker_limit=-(-args.concurrency // args.workers), say=say,
        ).start()  # fmt: skip
        # start_servers: PostgreSQL, then the server; the workers after them.
        pg_pid, server_pid = stack.processes[0].pid, stack.processes[1].pid
        rss = RssPeaks({"prefect_server": server_pid, "postgres": pg_pid})
        refs = [ModelRef(name=f"flood{i % args.models}", version=f"v{i:04d}") for i in range(args.versions)]
        with (
            rss.running(),
            temporary_settings({PREFECT_API_URL: stack.api_url}),
            get_client(sync_client=True) as client,
        ):
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            client.update_deployment(deployment.id, DeploymentUpdate(parameters=_params()))
            client.update_work_pool(POOL, WorkPoolUpdate(is_paused=True))
            _phase(say, began, f"work pool {POOL} paused; registering {args.versions} versions")

            start = time.monotonic()
            registrations = register_all(store, refs, model_dir, heldout, TOY_REGRESSION.name, threads=8)
            figures["register_s"] = round(time.monotonic() - start, 1)

            _phase(say, began, f"announcing {len(registrations)} registrations")
            sent_at = datetime.now(UTC)
            start = time.monotonic()
            events = announce_all(registrations, BUCKET)
            send_s = time.monotonic() - start
            figures["events_sent"] = len(events)
            figures["send_s"] = round(send_s, 2)
            figures["events_per_s"] = round(len(events) / send_s, 1)

            created = _wait_count(client, deployment.id, args.versions, timeout=args.create_timeout)
            figures["runs_seen_after_s"] = round(time.monotonic() - start, 1)
            _phase(say, began, f"{created} runs created; waiting {args.settle} s for any late one")
            after_settle = _settle(client, deployment.id, args.settle)
            runs = deployment_runs(client, deployment.id)
            names = Counter(_version_of(r) for r in runs)
            expected = {str(ref) for ref in refs}
            figures["runs_created"] = len(runs)
            figures["runs_distinct_versions"] = len(set(names) & expected)
            figures["runs_lost"] = len(expected - set(names))
            figures["versions_with_two_runs"] = sum(1 for n in names.values() if n > 1)
            figures["last_run_created_s"] = round(max((r.created - sent_at).total_seconds() for r in runs), 1)
            figures["states_while_paused"] = dict(Counter(r.state.name for r in runs))
            figures["count_after_settle"] = after_settle

            picked = events[:: max(1, len(events) // args.resend)][: args.resend] if args.resend else []
            _phase(say, began, f"re-sending {len(picked)} of the events (same ids)")
            start = time.monotonic()
            resend(picked)
            figures["resent"] = len(picked)
            figures["resend_s"] = round(time.monotonic() - start, 2)
            after_resend = _settle(client, deployment.id, args.settle)
            figures["extra_runs_after_resend"] = after_resend - len(runs)
            stored = _stored_events(client, "quantgate.model.registered")
            figures["registered_events_stored"] = len(stored)
            figures["registered_event_ids_stored"] = len({e.id for e in stored})
            figures["trigger_actions_executed"] = _automation_actions(client, "quantgate-run-on-registration")

            if args.resend_new_ids:
                again = registrations[: args.resend_new_ids]
                _phase(say, began, f"announcing {len(again)} versions again with new event ids")
                announce_all(again, BUCKET)
                total = _wait_count(client, deployment.id, after_resend + len(again), args.create_timeout)
                figures["new_id_events"] = len(again)
                figures["extra_runs_after_new_ids"] = (
                    _settle(client, deployment.id, args.settle) - after_resend
                )
                if total < after_resend + len(again):
                    say(f"only {total - after_resend} runs for {len(again)} new-id events")

            total = count_runs(client, deployment.id)
            _phase(say, began, f"resuming {POOL}: draining {total} runs (at most {args.drain_timeout} s)")
            client.update_work_pool(POOL, WorkPoolUpdate(is_paused=False))
            start = time.monotonic()
            done = _wait_count(client, deployment.id, total, args.drain_timeout, types=sorted(TERMINAL))
            figures["drained"] = done >= total
            figures["drain_s"] = round(time.monotonic() - start, 1)
            figures["runs_finished"] = done
            runs = deployment_runs(client, deployment.id)
            figures["runs_per_state"] = dict(sorted(Counter(r.state.name for r in runs).items()))
            figures["crashed"] = sum(1 for r in runs if r.state.type.value == "CRASHED")
            deciding = Counter(_version_of(r) for r in runs if r.state.name in DECIDING)
            figures["run_s"] = _run_seconds(runs)
            figures["versions_decided_by_two_runs"] = sorted(n for n, k in deciding.items() if k > 1)
            figures["versions_without_deciding_run"] = len(expected - set(deciding))
            _phase(say, began, "checking storage: every version decided exactly once")
            figures["storage"] = _storage_check(store, refs)
            logs = "".join(p.read_text(errors="replace") for p in state.rglob("*.log"))
            figures["database_is_locked_in_logs"] = logs.count("database is locked")
            figures["postgres_data_mb"] = round(_dir_bytes(state / "postgres" / "data") / 1e6, 1)
        figures["rss_peak_mb"] = rss.mb()
    finally:
        _phase(say, began, "stopping every server")
        if stack is not None:
            stack.stop()
        seaweed.stop()
    return figures


def table(found: dict[str, Any]) -> str:
    f, storage = found, found.get("storage", {})
    created = f"{f['runs_created']} / {f['runs_distinct_versions']} / {f['runs_lost']}"
    stored = f"{f['registered_events_stored']} / {f['trigger_actions_executed']}"
    rows = [
        ("versions registered", f"{f['events_sent']} in {f['register_s']} s"),
        ("events sent", f"{f['events_sent']} in {f['send_s']} s ({f['events_per_s']} events/s)"),
        ("runs created / distinct versions / lost", created),
        ("versions with two runs", str(f["versions_with_two_runs"])),
        ("last run created after first event", f"{f['last_run_created_s']} s"),
        ("re-sent with their ids: extra runs", f"{f['resent']}: {f['extra_runs_after_resend']}"),
        ("registered events stored / trigger actions", stored),
    ]
    if "new_id_events" in f:
        rows.append(
            ("re-announced, new ids: extra runs", f"{f['new_id_events']}: {f['extra_runs_after_new_ids']}")
        )
    rows += [
        ("drained / drain time", f"{f['drained']} / {f['drain_s']} s ({f['runs_finished']} runs ended)"),
        ("runs per state", ", ".join(f"{k}: {v}" for k, v in f["runs_per_state"].items())),
        ("crashed", str(f["crashed"])),
        *((f"run seconds, {k}", v) for k, v in f["run_s"].items()),
        ("decided in storage", ", ".join(f"{k}: {v}" for k, v in storage.get("decided", {}).items())),
        ("versions decided by two runs", str(len(f["versions_decided_by_two_runs"]))),
        ("promotions audited twice", str(len(storage.get("promotions_audited_twice", [])))),
        ("server / PostgreSQL RSS peak", " / ".join(f"{v} MB" for v in f["rss_peak_mb"].values())),
        ("PostgreSQL data", f"{f['postgres_data_mb']} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=500, help="registrations announced at once")
    parser.add_argument("--resend", type=int, default=100, help="events sent again with their own ids")
    parser.add_argument(
        "--resend-new-ids", type=int, default=0,
        help="versions announced again with new event ids (an announcer that rebuilds its event)",
    )  # fmt: skip
    parser.add_argument("--models", type=int, default=10, help="models the versions are spread over")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="the deployment's concurrency_limit")
    parser.add_argument("--port-base", type=int, default=4740, help="first of the 12 ports used")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait for late runs")
    parser.add_argument("--create-timeout", type=float, default=600.0)
    parser.add_argument("--drain-timeout", type=float, default=1500.0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not 0 <= args.resend <= args.versions or args.versions < 1 or args.models < 1:
        parser.error("need --versions >= 1, --models >= 1 and 0 <= --resend <= --versions")

    from quantgate.process import configure_process

    configure_process()
    # The copy backend and the toy task type register themselves on import.
    import tests.plugins.copy_backend
    import tests.plugins.toy_regression  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="quantgate-flood-") as scratch:
        found = run(args, Path(scratch))
    print(table(found))
    command = " ".join(["benchmarks.flood", *(argv if argv is not None else sys.argv[1:])])
    from benchmarks.runs import write_result

    write_result(
        args.out,
        f".venv/bin/python -m {command}",
        f"{args.versions} toy-regression versions over {args.models} models registered with the work pool "
        "paused, announced at once; copy backend; SeaweedFS; Prefect 3.8.8 server on PostgreSQL; "
        f"{args.workers} process workers; concurrency_limit {args.concurrency}",
        found,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
