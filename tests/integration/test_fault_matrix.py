"""A promotion driven through an HTTP 503 at each of its storage writes in turn, on the real SeaweedFS and
the real flow (issue #10's "done when").

A first run with no fault numbers the writes of one promotion (the held-out Data Docs, every artifact file,
report.json, the manifest, current.json, the audit event, the run report). Then, for every position, a
fresh bucket with an older version already serving gets the same run with a 503 at that write:
- `before`: the request never reached the server;
- `after`: the server applied it and the answer was lost;
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

import secrets
import time
from collections.abc import Iterator

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from quantgate.settings import Settings
from quantgate.signing import Signer, TrustedKeys, create_keys, load_signer, load_trusted
from quantgate.storage import ObjectStore
from tasks import storage as storage_tasks
from tests.conftest import TINY_GATES
from tests.integration.conftest import drop_bucket, snapshot
from tests.integration.faults import FaultPlan, install
from tests.integration.test_guarantees import _files, _manifest

pytestmark = pytest.mark.usefixtures("prefect_api")

RUN = {
    "thresholds": TINY_GATES,
    "bench": BenchSettings(warmup_runs=1, repeat_runs=5),
    "budget": SearchBudget(max_trials=0),
}
MODES = ("before", "after", "outage")


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage tasks keep their retries (the behaviour under test) but not their 2-5-15 s waits."""
    for obj in vars(storage_tasks).values():
        if getattr(obj, "retries", 0) and hasattr(obj, "retry_delay_seconds"):
            monkeypatch.setattr(obj, "retry_delay_seconds", 0)


@pytest.fixture
def fresh_bucket(seaweed, monkeypatch: pytest.MonkeyPatch, s3_env: Settings) -> Iterator[callable]:
    made: list[str] = []

    def make() -> ObjectStore:
        # One bucket at a time: every bucket holds its own SeaweedFS volumes, and a matrix of ~50 positions
        # kept to the end ran the server out of volumes (HTTP 500) on CI's disk. A position is checked before
        # the next one makes its bucket, so the previous one can go.
        while made:
            drop_bucket(seaweed, made.pop())
        bucket = "qg-fm-" + secrets.token_hex(5)
        monkeypatch.setenv("QUANTGATE_BUCKET", bucket)
        store = ObjectStore(Settings())
        store.ensure_bucket()
        made.append(bucket)
        return store

    yield make
    for bucket in made:
        drop_bucket(seaweed, bucket)


@pytest.fixture
def signing(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Signer, TrustedKeys]:
    """The flow signs with QUANTGATE_SIGNING_KEY and checks its champion against QUANTGATE_TRUSTED_KEYS."""
    pair = create_keys(tmp_path_factory.mktemp("keys") / "k")
    monkeypatch.setenv("QUANTGATE_SIGNING_KEY", str(pair.private))
    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", str(pair.public.parent))
    return load_signer(pair.private), load_trusted([pair.public.parent])


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


def _prepare(
    make, tmp_path, tiny_model_dir, small_sts, version: str, signer: Signer
) -> tuple[ObjectStore, ModelRef]:
    """A bucket where `fm@old` serves (signed) and `fm@<version>` is registered."""
    store = make()
    old = _manifest("fm", "old", "run-old")
    lifecycle.promote(store, old, _files(tmp_path, "old"), {}, actor="ci", signer=signer)
    ref = ModelRef(name="fm", version=version)
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    return store, ref


def _allowed(key: str, ref: ModelRef, run_ids: set[str]) -> bool:
    """Keys a run of `ref` may create or change: its own prefixes and the promotion's commit objects."""
    own = tuple(
        p for r in run_ids for p in (f"promoted/fm/{ref.version}/{r}/", f"runs/fm/{ref.version}/{r}/")
    )
    commit = (f"promoted/fm/{ref.version}/manifest.json", "promoted/fm/current.json")
    return key.startswith(own) or key in commit or key.startswith("audit/fm/")


def _check_complete(
    store: ObjectStore, ref: ModelRef, before: dict[str, str], label: str, trusted: TrustedKeys
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
    after = snapshot(store)
    run_ids = {manifest.run_id} | {k.split("/")[3] for k in after if k.startswith(f"runs/fm/{ref.version}/")}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(_allowed(k, ref, run_ids) for k in changed), (label, sorted(changed))
    listed = {f"promoted/fm/{ref.version}/{f.path}" for f in manifest.files}
    leftovers = {k for k in after if k.startswith(f"promoted/fm/{ref.version}/")} - listed
    assert leftovers == {f"promoted/fm/{ref.version}/manifest.json"}, (label, leftovers)


ENGINES = [
    pytest.param("dynamic-int8-per-channel", id="onnxruntime"),
    pytest.param("ov-nncf-int8-transformer", id="openvino"),
]


@pytest.mark.usefixtures("no_retry_delay")
@pytest.mark.parametrize("recipe", ENGINES)
def test_a_503_at_every_storage_write_of_a_promotion(
    recipe, fresh_bucket, monkeypatch, tmp_path, tiny_model_dir, small_sts, signing
):
    if recipe.startswith("ov-"):
        pytest.importorskip("openvino")
    run = {**RUN, "recipes": [recipe]}
    signer, trusted = signing
    # -- the path: every write of one promotion, numbered ------------------------------------------------
    store, ref = _prepare(fresh_bucket, tmp_path, tiny_model_dir, small_sts, "path", signer)
    before = snapshot(store)
    plan = install(monkeypatch, FaultPlan())
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

    # -- a 503 at each of them in turn ------------------------------------------------------------
    outcomes: dict[str, str] = {}
    for at, (_, key) in enumerate(path):
        for mode in MODES:
            label = f"{mode} 503 at write {at} ({key.split('/', 3)[-1]})"
            store, ref = _prepare(
                fresh_bucket, tmp_path, tiny_model_dir, small_sts, f"w{at}{mode[0]}", signer
            )
            before = snapshot(store)
            plan = install(monkeypatch, FaultPlan(at=at, mode=mode))
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
    assert len(outcomes) == len(MODES) * len(path)
    # Transient faults are absorbed by the storage tasks' retries; outages end Failed and are finished.
    assert all(v == "Promoted" for k, v in outcomes.items() if not k.startswith("outage")), outcomes
    summary = [f"{len(path)} writes x {len(MODES)} modes:", *(f"{k}: {v}" for k, v in outcomes.items())]
    print("\n" + "\n".join(summary))  # shown with `pytest -s`: what the matrix covered
