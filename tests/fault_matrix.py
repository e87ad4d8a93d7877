"""A promotion driven through an HTTP 503 at its storage writes in turn, through the real Prefect flow
(issue #10's "done when"), written once and run on both stores: at every write position, both engines, on
the in-memory store (tests/flows/test_fault_matrix.py), and at a few representative positions on the real
SeaweedFS (tests/integration/test_fault_matrix.py).

A first run with no fault numbers the writes of one promotion (the held-out Data Docs, every artifact file,
the signature and promotion.json, report.json, the manifest, current.json, the audit event, the run
report). Then, for each chosen position, a fresh bucket with an older version already serving gets the same
run with a 503 at that write:
- `before`: the request never reached the store;
- `after`: the store applied it and the answer was lost;
- `outage`: that write and every later one fail, beyond the retry budget; then storage heals and the
  version is run again.
For every position: the run ends `Promoted` with pointer, audit event and `quantgate.model.promoted`
event all present, or it ends `Failed` and the re-run completes all three; `current.json` only ever names
the older or the new version, never anything else, and ends on the new one; no object outside the run's
own prefixes and the promotion's commit objects changes. Promotions are signed (QUANTGATE_SIGNING_KEY), so
the signature and promotion.json are write positions like every other promoted file, and every promotion
the matrix completes verifies against the trusted key.

The write path is the same for every model size (one object per artifact file), so the tiny BERT stands
in for MiniLM here; the slow suite promotes the real MiniLM through the same code. It is run for an
artifact of each engine: ONNX Runtime's (model + session settings) and OpenVINO's (IR xml + bin +
precision-hint settings), whose promotions write different files.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from quantgate.signing import Signer, TrustedKeys
from quantgate.store import Store
from tests.conftest import TINY_GATES, artifact_files, bare_manifest
from tests.faults import FaultPlan

RUN = {
    "thresholds": TINY_GATES,
    "bench": BenchSettings(warmup_runs=1, repeat_runs=5),
    "budget": SearchBudget(max_trials=0),
}
MODES = ("before", "after", "outage")
ENGINES = [
    pytest.param("dynamic-int8-per-channel", id="onnxruntime"),
    pytest.param("ov-nncf-int8-transformer", id="openvino"),
]
WritePath = list[tuple[str, str]]  # (operation, key) of every write of one promotion, in order


def _snapshot(store: Store) -> dict[str, str]:
    return {obj.key: obj.etag for obj in store.list("")}


def _promoted_events(version: str) -> list[object]:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=["quantgate.model.promoted"]),
        resource=EventResourceFilter(labels={"quantgate.version": [version]}),
    )
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=flt, limit=50).events
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def _allowed(key: str, ref: ModelRef, run_ids: set[str]) -> bool:
    """Keys a run of `ref` may create or change: its own prefixes and the promotion's commit objects."""
    own = tuple(
        p for r in run_ids for p in (f"promoted/fm/{ref.version}/{r}/", f"runs/fm/{ref.version}/{r}/")
    )
    commit = (f"promoted/fm/{ref.version}/manifest.json", "promoted/fm/current.json")
    return key.startswith(own) or key in commit or key.startswith("audit/fm/")


def _check_complete(
    store: Store, ref: ModelRef, before: dict[str, str], label: str, trusted: TrustedKeys
) -> None:
    pointer = lifecycle.current(store, "fm")
    assert pointer is not None
    assert pointer.version == ref.version, label
    manifest = lifecycle.load_manifest(store, ref)
    verification = lifecycle.verify_promotion(store, ref, deep=True, trusted=trusted)
    assert verification.ok, (label, verification.problems)
    assert verification.signature.status == "verified", label
    promotions = [
        e for e in lifecycle.audit_log(store, "fm") if e.action == "promote" and e.version == ref.version
    ]
    assert len(promotions) == 1, label
    assert promotions[0].pointer_moved, label
    assert _promoted_events(ref.version), f"{label}: no quantgate.model.promoted event"
    after = _snapshot(store)
    run_ids = {manifest.run_id} | {k.split("/")[3] for k in after if k.startswith(f"runs/fm/{ref.version}/")}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(_allowed(k, ref, run_ids) for k in changed), (label, sorted(changed))
    listed = {f"promoted/fm/{ref.version}/{f.path}" for f in manifest.files}
    leftovers = {k for k in after if k.startswith(f"promoted/fm/{ref.version}/")} - listed
    assert leftovers == {f"promoted/fm/{ref.version}/manifest.json"}, (label, leftovers)


def _numbered_once(shared: Path, number: Callable[[], WritePath]) -> WritePath:
    """The path numbered by `number()` the first time, read back from `shared` after that: the write path
    of a promotion depends on its engine's files, not on which walk asks (a fault-free run is the same
    run each time), so the shards of one engine share one numbering run. A lock makes a second pytest
    worker wait for the first one's run rather than start its own."""
    from filelock import FileLock

    shared.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{shared}.lock"):
        if shared.exists():
            return [(op, key) for op, key in json.loads(shared.read_text())]
        path = number()
        shared.write_text(json.dumps(path))
        return path


def walk_fault_matrix(
    recipe: str,
    fresh_store: Callable[[], Store],
    install: Callable[[Store, FaultPlan], FaultPlan],
    choose: Callable[[WritePath], list[int]],
    modes: tuple[str, ...],
    tmp_path: Path,
    tiny_model_dir: Path,
    small_sts: Path,
    signing: tuple[Signer, TrustedKeys],
    shared_path: Path | None = None,
) -> dict[str, str]:
    """Number the writes of one promotion with `recipe`, then run it with a 503 at each position `choose`
    picks from that path, in each of `modes`; every check above at every one. `fresh_store()` makes an
    empty store that the flow's Settings open; `install` puts a plan in front of it. `shared_path`: a file
    where the numbered path is kept, so the walks of one engine (shards, pytest workers) number it once."""
    if recipe.startswith("ov-"):
        pytest.importorskip("openvino")
    run = {**RUN, "recipes": [recipe]}
    signer, trusted = signing
    # Versions unique to this walk: the promoted-event check looks events up by version in a Prefect
    # server that every walk of the session shares.
    walk = secrets.token_hex(3)

    def prepare(version: str) -> tuple[Store, ModelRef]:
        """A bucket where `fm@old` serves (signed) and `fm@<version>` is registered."""
        store = fresh_store()
        old = bare_manifest("fm", "old", "run-old")
        lifecycle.promote(store, old, artifact_files(tmp_path, "old"), {}, actor="ci", signer=signer)
        ref = ModelRef(name="fm", version=version)
        lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
        return store, ref

    # -- the path: every write of one promotion, numbered (once per engine when a file is shared) ------
    def number_writes() -> WritePath:
        store, ref = prepare(f"{walk}-path")
        before = _snapshot(store)
        plan = install(store, FaultPlan())
        state = quantize_and_promote(model=ref.name, version=ref.version, **run, return_state=True)
        assert state.name == "Promoted", state.message
        _check_complete(store, ref, before, "no fault", trusted)
        path = list(plan.writes)
        assert any(k.endswith("/manifest.json") for _, k in path)
        assert any(k.endswith("current.json") for _, k in path)
        assert any(k.startswith("audit/") for _, k in path)
        assert len(path) >= 10, path
        artifact = "model.ov-int8" if recipe.startswith("ov-") else "model.int8"
        assert any(artifact in k for _, k in path), path  # this engine's files are on the path
        signature = [i for i, (_, k) in enumerate(path) if k.endswith(("/model.sig", "/promotion.json"))]
        manifest_at = next(i for i, (_, k) in enumerate(path) if k.endswith("/manifest.json"))
        assert len(signature) == 2, path  # the signature's writes are walked like every other file's
        assert max(signature) < manifest_at, path
        return path

    path = number_writes() if shared_path is None else _numbered_once(shared_path, number_writes)

    # -- a 503 at each chosen write in turn -----------------------------------------------------------
    positions = choose(path)
    assert positions, path
    outcomes: dict[str, str] = {}
    for at in positions:
        key = path[at][1]
        for mode in modes:
            label = f"{mode} 503 at write {at} ({key.split('/', 3)[-1]})"
            store, ref = prepare(f"{walk}-w{at}{mode[0]}")
            before = _snapshot(store)
            plan = install(store, FaultPlan(at=at, mode=mode))
            state = quantize_and_promote(model=ref.name, version=ref.version, **run, return_state=True)
            assert plan.injected, f"{label}: the fault was never reached ({len(plan.writes)} writes)"
            pointer = lifecycle.current(store, "fm")
            assert pointer is not None
            assert pointer.version in {"old", ref.version}, label
            if state.name != "Promoted":
                assert state.is_failed(), f"{label}: ended {state.name}: {state.message}"
                plan.heal()
                state = quantize_and_promote(model=ref.name, version=ref.version, **run, return_state=True)
                assert state.name in {"Promoted", "AlreadyDecided"}, f"{label}, re-run: {state.message}"
            outcomes[label] = state.name
            _check_complete(store, ref, before, label, trusted)
    assert len(outcomes) == len(modes) * len(positions)
    # Transient faults are absorbed by the storage tasks' retries; outages end Failed and are finished.
    assert all(v == "Promoted" for k, v in outcomes.items() if not k.startswith("outage")), outcomes
    summary = [f"{len(positions)} of {len(path)} writes x {len(modes)} modes:"]
    print("\n" + "\n".join([*summary, *(f"{k}: {v}" for k, v in outcomes.items())]))  # with `pytest -s`
    return outcomes
