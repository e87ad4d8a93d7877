"""Many versions (issue #24 item 8): `quantgate list`, the registry sweep's plan and "find the decision"
with thousands of registered versions on a real SeaweedFS, before and after the change, in wall time and
S3 requests (every HTTP request boto3 sends, counted with its `before-send` event).

The versions are synthetic (tests/many_versions.py): the real key layout for every state the sweep tells
apart (promoted, rejected, undecided, failed past the limit, unfinished promotion, promotion interrupted
before its manifest, unreadable run report), written directly, no model built or run. "Before" is the
code as it was: the sweep and list_registered kept in tests/many_versions.py, and `quantgate list` run
from a git worktree of the base commit (--base). The old sweep and the old `quantgate list` read the
model's whole audit log per promoted version (requests grow with versions x promotions), so they run on
the smaller registry only (--before-versions). `--files` model files per version (and per promoted
run); `--more-files` repeats the small registry with more files per version to show what grows.

    .venv/bin/python benchmarks/many_versions.py            # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _counted(store: Any) -> Counter[str]:
    counts: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    store._client.meta.events.register("before-send.s3", count)
    return counts


def _measure(counts: Counter[str], fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    counts.clear()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 3), "requests": sum(counts.values()), "by_operation": dict(counts)}, result


def _cli_list(store: Any) -> str:
    """`quantgate list` as the console runs it, on the counted store."""
    from typer.testing import CliRunner

    from quantgate import cli

    saved = cli._store
    cli._store = lambda: store
    try:
        result = CliRunner().invoke(cli.app, ["list"], env={"COLUMNS": "200"})
    finally:
        cli._store = saved
    if result.exit_code != 0:
        raise RuntimeError(f"quantgate list failed: {result.output[-2000:]}")
    return result.output


# `quantgate list` at the base commit, in its own process, on the same bucket (its settings from the env).
_BEFORE_LIST = r"""
import json, time
from collections import Counter
from typer.testing import CliRunner
from quantgate import cli
from quantgate.settings import Settings
from quantgate.storage import open_store
store = open_store(Settings())
counts = Counter()
store._client.meta.events.register(
    "before-send.s3", lambda event_name, **_: counts.update([event_name.rsplit(".", 1)[-1]])
)
cli._store = lambda: store
start = time.perf_counter()
result = CliRunner().invoke(cli.app, ["list"], env={"COLUMNS": "200"})
wall = time.perf_counter() - start
assert result.exit_code == 0, result.output[-2000:]
print(json.dumps({"wall_s": round(wall, 3), "requests": sum(counts.values()), "by_operation": dict(counts)}))
"""


def _cli_list_at(base_tree: Path, bucket: str) -> dict[str, Any]:
    env = {**os.environ, "QUANTGATE_BUCKET": bucket, "PYTHONPATH": str(base_tree)}
    done = subprocess.run(
        [sys.executable, "-c", _BEFORE_LIST],
        cwd=base_tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _find_decision(store: Any, refs: list[Any]) -> list[str]:
    """What `quantgate show` does for each ref: the decision report, or the last failure."""
    from quantgate import lifecycle
    from quantgate.errors import NotFoundError

    found = []
    for ref in refs:
        try:
            found.append(str(lifecycle.load_decision_report(store, ref).get("outcome", "promoted")))
        except NotFoundError:
            failure = None if lifecycle.decision_of(store, ref) else lifecycle.last_failure(store, ref)
            found.append("failed" if failure else "none")
    return found


def _registry(versions: int, files: int) -> tuple[Any, Counter[str], dict]:
    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore
    from tests.many_versions import population, write_all

    os.environ["QUANTGATE_BUCKET"] = f"many-{versions}-{files}-{secrets.token_hex(3)}"
    store = ObjectStore(Settings())
    store.ensure_bucket()
    objects, by_state = population(versions, files)
    start = time.perf_counter()
    write_all(store, objects, threads=32)
    print(f"  wrote {len(objects)} objects for {versions} versions in {time.perf_counter() - start:.0f} s")
    return store, _counted(store), by_state


def _sweep_rows(store: Any, counts: Counter[str], by_state: dict, before: bool) -> dict[str, Any]:
    from quantgate import lifecycle
    from tests.many_versions import MAX_FAILURES, expected_plan, old_list_registered, old_sweep_plan

    pending, skipped = expected_plan(by_state)
    out: dict[str, Any] = {}
    out["list_registered_after"], refs = _measure(counts, lambda: lifecycle.list_registered(store))
    assert len(refs) == sum(len(r) for r in by_state.values())
    out["list_registered_before"], old = _measure(counts, lambda: old_list_registered(store))
    assert old == refs
    out["sweep_plan_after"], plan = _measure(counts, lambda: lifecycle.sweep_plan(store, MAX_FAILURES))
    assert plan.pending == pending, "the sweep's plan is wrong"
    assert set(plan.skipped) == skipped, "the sweep's plan is wrong"
    if before:
        out["sweep_plan_before"], old_plan = _measure(counts, lambda: old_sweep_plan(store, MAX_FAILURES))
        assert old_plan.pending == plan.pending
        assert old_plan.skipped == plan.skipped
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=5000)
    parser.add_argument("--before-versions", type=int, default=500)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--more-files", type=int, default=20)
    parser.add_argument("--base", default="origin/main", help="the commit `before` is measured at")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/many_versions.json")
    args = parser.parse_args()

    from infra.seaweed import SeaweedServer, pick_ports
    from tests.many_versions import STATES

    access, secret = "bench" + secrets.token_hex(4), "s3cr3t-" + secrets.token_urlsafe(16)
    results: dict[str, Any] = {
        "command": "python benchmarks/many_versions.py " + " ".join(sys.argv[1:]),
        "base": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.base],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "states_cycle": list(STATES),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="qg-many-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base_tree), args.base],
            check=True,
        )
        seaweed = SeaweedServer(Path(scratch) / "seaweed", access, secret, ports=pick_ports(4700, 4749))
        seaweed.start()
        try:
            os.environ.update(
                QUANTGATE_S3_ENDPOINT_URL=seaweed.endpoint_url, AWS_ACCESS_KEY_ID=access,
                AWS_SECRET_ACCESS_KEY=secret, QUANTGATE_WORK_DIR=str(Path(scratch) / "work"),
            )  # fmt: skip
            os.environ.pop("QUANTGATE_STORE_URL", None)
            for versions, files, before in (
                (args.before_versions, args.files, True),
                (args.before_versions, args.more_files, True),
                (args.versions, args.files, False),
            ):
                label = f"{versions} versions x {files} files"
                print(f"{label}:")
                store, counts, by_state = _registry(versions, files)
                run = _sweep_rows(store, counts, by_state, before)
                run["quantgate_list_after"], _ = _measure(counts, lambda store=store: _cli_list(store))
                if before:
                    run["quantgate_list_before"] = _cli_list_at(base_tree, store.bucket)
                probe = [by_state[s][0] for s in ("promoted", "rejected", "failed", "undecided")]
                run["find_decision_4_versions"], found = _measure(
                    counts, lambda s=store, p=probe: _find_decision(s, p)
                )
                assert found[:3] == ["promoted", "rejected", "failed"], found
                results["runs"][label] = run
        finally:
            seaweed.stop()
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    head = ("registry", "measure", "before req", "before s", "after req", "after s")
    print(f"{head[0]:<28} {head[1]:<28} {head[2]:>10} {head[3]:>9} {head[4]:>10} {head[5]:>8}")
    for label, run in results["runs"].items():
        for what in ("list_registered", "sweep_plan", "quantgate_list"):
            after = run[f"{what}_after"]
            before = run.get(f"{what}_before")
            b_req = str(before["requests"]) if before else "-"
            b_s = f"{before['wall_s']:.2f}" if before else "-"
            a_req, a_s = after["requests"], after["wall_s"]
            print(f"{label:<28} {what:<28} {b_req:>10} {b_s:>9} {a_req:>10} {a_s:>8.2f}")
        same = run["find_decision_4_versions"]
        print(f"{label:<28} {'find_decision (4 versions)':<28} {'(same code)':>10} {'':>9} "
              f"{same['requests']:>10} {same['wall_s']:>8.2f}")  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
