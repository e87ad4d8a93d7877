"""quantgate/lifecycle.py, the guarantees code, branch by branch on the in-memory store (the same
contract as S3: tests/store_contract.py): register, promote, finish, repair, reject, rollback, verify,
the audit log and the sweep, with races and a fault injected at every write of a promotion."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from quantgate import lifecycle
from quantgate.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    SizeExceededError,
    StorageError,
    StorageUnreachableError,
)
from quantgate.registry import Manifest, ModelRef, current_key, manifest_key, registration_key, rejection_key
from quantgate.signing import TrustedKeys, create_keys, load_signer
from quantgate.storage import sha256_bytes
from quantgate.store import RUN_METADATA, MemoryStore
from tests.conftest import artifact_files, bare_manifest

V1 = ModelRef(name="m", version="v1")
V2 = ModelRef(name="m", version="v2")


def _manifest(ref: ModelRef, run_id: str) -> Manifest:
    return bare_manifest(ref.name, ref.version, run_id)


def _files(tmp_path: Path, tag: str) -> dict[str, Path]:
    return artifact_files(tmp_path, tag, repeat=100)


def _promote(store, ref, run_id, tmp_path, signer=None):
    files = _files(tmp_path, run_id)
    return lifecycle.promote(store, _manifest(ref, run_id), files, {"run": run_id}, "t", signer)


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    pair = create_keys(tmp_path_factory.mktemp("keys") / "k")
    return load_signer(pair.private)


def assert_complete(store: MemoryStore, ref: ModelRef) -> Manifest:
    """One promotion, whole: every object under promoted/<m>/<v>/ is the manifest or a file it lists with
    matching bytes; the pointer names it; exactly one promote audit event."""
    manifest = Manifest.model_validate_json(store.get_bytes(manifest_key(ref)))
    listed = {f"promoted/{ref.name}/{ref.version}/{f.path}": f for f in manifest.files}
    assert {o.key for o in store.list(f"promoted/{ref.name}/{ref.version}/")} == {*listed, manifest_key(ref)}
    for key, entry in listed.items():
        assert sha256_bytes(store.get_bytes(key)) == entry.sha256
    assert lifecycle.current(store, ref.name).version == ref.version
    events = [
        e for e in lifecycle.audit_log(store, ref.name) if e.action == "promote" and e.version == ref.version
    ]
    assert len(events) == 1
    return manifest


# --- register --------------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    """A folder the sentence-embedding task type accepts: config + safetensors matching it + tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)  # fmt: skip
    out = tmp_path / "model"
    BertModel(config).save_pretrained(out, safe_serialization=True)
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"abcdef"]))
    return out


@pytest.fixture
def heldout(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("".join(f"g\tf\t2012\t{i}\t{i % 5}.0\ta {i}\tb {i}\n" for i in range(12)))
    return path


def test_register_stores_files_under_its_own_upload_and_refuses_a_second_registration(model_dir, heldout):
    store = MemoryStore()
    reg = lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding")
    assert all(k.startswith(f"registered/m/v1/uploads/{reg.upload_id}/") or k.endswith("registration.json")
               for k in store.snapshot())  # fmt: skip
    assert lifecycle.load_registration(store, V1) == reg
    before = store.snapshot()
    with pytest.raises(ConflictError, match="already registered"):
        lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding")
    assert store.snapshot() == before


def test_racing_registrations_leave_one_upload_and_the_loser_removes_its_own(model_dir, heldout):
    store = MemoryStore()
    barrier = threading.Barrier(3)
    outcomes: list[object] = []

    def register() -> None:
        barrier.wait()
        try:
            outcomes.append(lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding"))
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=register) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winner = lifecycle.load_registration(store, V1)
    uploads = {k.split("/")[4] for k in store.snapshot() if "/uploads/" in k}
    assert uploads == {winner.upload_id}


def test_a_registration_whose_upload_fails_leaves_nothing(model_dir, heldout):
    def fail_on_heldout(op, key):
        if key.endswith("sts.tsv"):
            raise StorageUnreachableError("injected")

    store = MemoryStore(fault=fail_on_heldout)
    with pytest.raises(StorageUnreachableError):
        lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding")
    assert store.snapshot() == {}


def test_a_registration_that_understates_its_sizes_is_refused_at_the_declared_size(
    model_dir, heldout, tmp_path
):
    """A record declaring 1 byte per file (written by anyone with bucket access) must neither pass the
    disk pre-check with it nor make pull download the real size: the download stops at 1 byte."""
    store = MemoryStore()
    reg = lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding")
    lying = reg.model_copy(update={"files": [f.model_copy(update={"size": 1}) for f in reg.files]})
    store.put_bytes(registration_key(V1), lying.model_dump_json().encode())
    dest = tmp_path / "pulled"
    with pytest.raises(SizeExceededError, match="more than the 1 its record declares"):
        lifecycle.pull(store, V1, dest)
    assert not any(p.is_file() and p.stat().st_size > 1 for p in dest.rglob("*"))


# --- promote, finish, repair ----------------------------------------------------------------------------


def test_a_promotion_writes_files_then_the_manifest_then_pointer_and_audit(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    manifest = assert_complete(store, V1)
    keys = [k for _, k in store.writes]
    assert keys.index(manifest_key(V1)) > max(i for i, k in enumerate(keys) if "/run-a/" in k)
    assert keys.index(current_key("m")) > keys.index(manifest_key(V1))
    assert lifecycle.decision_of(store, V1) == "promoted"
    assert lifecycle.verify_promotion(store, V1, deep=True).ok
    assert manifest.run_id == "run-a"


def test_a_second_run_loses_the_race_and_removes_its_own_uploads(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    before = store.snapshot()
    with pytest.raises(ConflictError, match="already promoted by run run-a"):
        _promote(store, V1, "run-b", tmp_path)
    assert store.snapshot() == before


def test_concurrent_promotions_of_one_version_promote_exactly_once(tmp_path):
    store = MemoryStore()
    barrier = threading.Barrier(4)
    results: list[object] = []

    def attempt(run_id: str) -> None:
        barrier.wait()
        try:
            results.append(_promote(store, V1, run_id, tmp_path))
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Manifest) for r in results) == 1
    assert_complete(store, V1)


def signer_public(signer, tmp_path: Path) -> Path:
    path = tmp_path / "trusted.pub.pem"
    path.write_bytes(signer.public_pem)
    return path


def _writes(tmp_path, signer) -> list[str]:
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path, signer)
    return [key for _, key in store.writes]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("mode", ["lost", "after"])
def test_a_fault_at_every_write_of_a_promotion_ends_promoted_or_untouched_and_a_rerun_completes(
    tmp_path, mode, signed, signer
):
    """Each write in turn fails (its request lost, or applied with its answer lost). Then the store holds
    either nothing outside the run's own prefix, or a manifest that finish_promotion completes; a re-run
    (a new run id, as the flow's) ends with one complete promotion. Signed, the signature and
    promotion.json are write positions like every other promoted file, and the result verifies."""
    signer = signer if signed else None
    trusted = TrustedKeys({signer.key_id: signer_public(signer, tmp_path)}) if signer else TrustedKeys()
    path = _writes(tmp_path, signer)
    signature_writes = {k for k in path if k.endswith(("/model.sig", "/promotion.json"))}
    assert len(signature_writes) == (2 if signed else 0), path
    for position in range(len(path)):

        def fault(op, key, position=position, seen=[0]):  # noqa: B006 - one counter per position
            seen[0] += 1
            if seen[0] - 1 == position:
                if mode == "lost":
                    raise StorageUnreachableError(f"injected at write {position}")
                return "after"
            return None

        store = MemoryStore(fault=fault)
        with pytest.raises(StorageError):
            _promote(store, V1, "run-a", tmp_path, signer)
        store.fault = None
        outside = {k for k in store.snapshot() if "/run-a/" not in k}
        decided = lifecycle.decision_of(store, V1)
        if decided is None:
            assert outside == set(), f"write {position}: {outside}"
            _promote(store, V1, "run-b", tmp_path, signer)
        else:
            assert decided == "promoted"
            lifecycle.finish_promotion(store, V1, "sweep", trusted)  # the sweep checks the signature
        assert_complete(store, V1)
        if signer is not None:
            assert lifecycle.verify_promotion(store, V1, deep=True, trusted=trusted).signature.status == (
                "verified"
            ), f"write {position} ({path[position]})"


def test_finishing_an_old_promotion_never_moves_the_pointer_back(tmp_path):
    store = MemoryStore()

    def stop_after_manifest(op, key):
        if key == current_key("m"):
            raise StorageUnreachableError("killed after the manifest")

    store.fault = stop_after_manifest
    with pytest.raises(StorageUnreachableError):
        _promote(store, V1, "run-a", tmp_path)
    store.fault = None
    _promote(store, V2, "run-b", tmp_path)
    lifecycle.finish_promotion(store, V1, "sweep")
    assert lifecycle.current(store, "m").version == "v2"
    v1_events = [e for e in lifecycle.audit_log(store, "m") if e.version == "v1"]
    assert [e.pointer_moved for e in v1_events] == [False]


@pytest.mark.parametrize("later", ["promotion", "rollback"])
def test_a_promotion_that_served_before_a_later_decision_is_audited_as_served(tmp_path, later):
    """v2's pointer swap lands, then the run dies before its audit event; a later promotion (v3) or a
    rollback replaces it. Finishing v2 afterwards must not record that it never served (#20: the event
    said pointer_moved false for a promotion that served)."""
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)

    def die_before_audit(op, key):
        if key.startswith("audit/"):
            raise StorageUnreachableError("killed after the pointer")

    store.fault = die_before_audit
    with pytest.raises(StorageUnreachableError):
        _promote(store, V2, "run-b", tmp_path)
    store.fault = None
    assert lifecycle.current(store, "m").version == "v2"  # it served
    if later == "promotion":
        _promote(store, ModelRef(name="m", version="v3"), "run-c", tmp_path)
    else:
        lifecycle.rollback(store, "m", "v1", "oncall")
    assert lifecycle.finish_promotion(store, V2, "sweep") is True
    assert lifecycle.current(store, "m").version == ("v3" if later == "promotion" else "v1")
    (event,) = [e for e in lifecycle.audit_log(store, "m") if e.version == "v2"]
    assert event.pointer_moved is True


def test_repair_removes_only_the_runs_own_unlisted_objects(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    store.put_bytes("promoted/m/v1/run-a/leftover.tmp", b"x", run_id="run-a")
    store.put_bytes("promoted/m/v1/run-a/NOTES.md", b"a team's note")  # no run tag: not ours to delete
    lifecycle.finish_promotion(store, V1, "sweep")
    assert not store.exists("promoted/m/v1/run-a/leftover.tmp")
    assert store.exists("promoted/m/v1/run-a/NOTES.md")


# --- reject ---------------------------------------------------------------------------------------------


def test_a_rejection_is_recorded_with_its_side_files_and_a_concurrent_one_leaves_nothing(tmp_path):
    store = MemoryStore()
    plot = tmp_path / "latency.png"
    plot.write_bytes(b"png")
    report = {"run_id": "run-a", "outcome": "rejected"}
    assert lifecycle.reject(store, V1, report, {"passed": False}, {"latency.png": plot}) == rejection_key(V1)
    record = lifecycle.load_rejection(store, V1)
    assert {f["path"] for f in record["side_files"]} == {"run-a/parity_report.json", "run-a/latency.png"}
    before = store.snapshot()
    with pytest.raises(ConflictError, match="concurrent run"):
        lifecycle.reject(store, V1, {"run_id": "run-b"}, {"passed": False}, {"latency.png": plot})
    assert store.snapshot() == before
    assert lifecycle.decision_of(store, V1) == "rejected"
    assert not list(store.list("promoted/"))


def test_a_rejection_whose_answer_was_lost_is_its_own(tmp_path):
    def lose_answer(op, key):
        return "after" if key == rejection_key(V1) else None

    store = MemoryStore(fault=lose_answer)
    with pytest.raises(StorageError):
        lifecycle.reject(store, V1, {"run_id": "run-a"}, {"passed": False})
    store.fault = None
    assert lifecycle.reject(store, V1, {"run_id": "run-a"}, {"passed": False}) == rejection_key(V1)


def test_a_version_another_run_rejected_is_not_promoted_and_one_it_promoted_is_not_rejected(tmp_path):
    """The manifest and the rejection record are two create-only keys: each decision checks the other."""
    store = MemoryStore()
    lifecycle.reject(store, V1, {"run_id": "run-a"}, {"passed": False})
    before = store.snapshot()
    with pytest.raises(ConflictError, match="already rejected by run run-a"):
        _promote(store, V1, "run-b", tmp_path)
    assert store.snapshot() == before
    _promote(store, V2, "run-c", tmp_path)
    before = store.snapshot()
    with pytest.raises(ConflictError, match="already promoted"):
        lifecycle.reject(store, V2, {"run_id": "run-d"}, {"passed": False})
    assert store.snapshot() == before
    assert (lifecycle.decision_of(store, V1), lifecycle.decision_of(store, V2)) == ("rejected", "promoted")


class _DecidedMeanwhile(MemoryStore):
    """Another run's decision of V1 lands right after this run's write number `at`, whichever write that is
    (the sweep's run and the registration's run of one version, seen in CI: one rejected it, then the other
    promoted it). `at=None` only counts this run's writes."""

    def __init__(self, other: object, at: int | None) -> None:
        super().__init__()
        self.other, self.at, self.mine = other, at, 0
        self.other_refused: ConflictError | None = None

    def _write(self, op, key, apply):
        super()._write(op, key, apply)
        if self.other is None:  # the other run's own writes
            return
        self.mine += 1
        if self.mine - 1 == self.at:
            other, self.other = self.other, None
            try:
                other(self)
            except ConflictError as exc:  # the other run lost: its own failure, not this run's
                self.other_refused = exc


def _refusal(decide, store) -> ConflictError | None:
    try:
        decide(store)
    except ConflictError as exc:
        return exc
    return None


def _writes_of_run_b(decide) -> int:
    store = _DecidedMeanwhile(lambda s: None, None)
    decide(store)
    return store.mine


def _plot(tmp_path: Path) -> dict[str, Path]:
    plot = tmp_path / "latency.png"
    plot.write_bytes(b"png")
    return {"latency.png": plot}


def test_a_rejection_landing_after_any_write_of_a_promotion_leaves_one_decision(tmp_path):
    promote = lambda s: _promote(s, V1, "run-b", tmp_path)  # noqa: E731 - the run under test, each time
    reject = lambda s: lifecycle.reject(s, V1, {"run_id": "run-a"}, {"passed": False})  # noqa: E731
    outcomes = []
    for at in range(_writes_of_run_b(promote)):
        store = _DecidedMeanwhile(reject, at)
        refused = _refusal(promote, store)
        # Exactly one of the two runs was refused.
        assert (refused is None) != (store.other_refused is None), at
        if refused is not None:
            # Landed before the manifest: the promotion refuses and removes its own uploads.
            assert "already rejected by run run-a" in str(refused), at
            assert lifecycle.decision_of(store, V1) == "rejected", at
            assert not list(store.list("promoted/")), at
        else:
            # Landed after the manifest (the commit): the rejection is the one refused, nothing kept.
            assert lifecycle.decision_of(store, V1) == "promoted", at
            assert not list(store.list("rejected/")), at
            assert_complete(store, V1)
        outcomes.append(refused is None)
    assert set(outcomes) == {False, True}  # both sides of the commit point were walked


def test_a_promotion_landing_after_any_write_of_a_rejection_leaves_one_decision(tmp_path):
    plots = _plot(tmp_path)
    reject = lambda s: lifecycle.reject(s, V1, {"run_id": "run-b"}, {"passed": False}, plots)  # noqa: E731
    outcomes = []
    for at in range(_writes_of_run_b(reject)):
        store = _DecidedMeanwhile(lambda s: _promote(s, V1, "run-a", tmp_path), at)
        refused = _refusal(reject, store)
        assert (refused is None) != (store.other_refused is None), at
        if refused is not None:
            assert "already promoted" in str(refused), at
            assert lifecycle.decision_of(store, V1) == "promoted", at
            assert not list(store.list("rejected/")), at
            assert_complete(store, V1)
        else:
            assert lifecycle.decision_of(store, V1) == "rejected", at
            assert not list(store.list("promoted/")), at
        outcomes.append(refused is None)
    assert set(outcomes) == {False, True}


# --- rollback and verify --------------------------------------------------------------------------------


def test_rollback_points_back_after_verifying_and_refuses_a_damaged_target(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    _promote(store, V2, "run-b", tmp_path)
    event = lifecycle.rollback(store, "m", None, "ops")
    assert (event.version, lifecycle.current(store, "m").version) == ("v1", "v1")

    _promote(store, ModelRef(name="m", version="v3"), "run-c", tmp_path)
    key = "promoted/m/v1/run-a/model.int8.onnx"
    store.objects[key].data = b"damaged"  # bit rot behind the store's back
    assert not lifecycle.verify_promotion(store, V1, deep=True).ok
    with pytest.raises(IntegrityError):
        lifecycle.rollback(store, "m", "v1", "ops")
    assert lifecycle.current(store, "m").version == "v3"


def test_rollback_is_one_compare_and_swap_a_concurrent_move_wins(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    _promote(store, V2, "run-b", tmp_path)
    other = store.get_bytes(current_key("m")).replace(b'"v2"', b'"v2"').replace(b'"promote"', b'"rollback"')

    def someone_else_moves_it_first(op, key):
        if key == current_key("m"):
            store.fault = None
            store.put_bytes(key, other)  # another operator's write lands between our read and our swap

    store.fault = someone_else_moves_it_first
    with pytest.raises(ConflictError):
        lifecycle.rollback(store, "m", "v1", "ops")
    assert store.get_bytes(current_key("m")) == other


def test_rollback_without_a_promotion_says_so():
    with pytest.raises(NotFoundError, match="no promoted version"):
        lifecycle.rollback(MemoryStore(), "m", None, "ops")


# --- audit log and sweep --------------------------------------------------------------------------------


def test_stray_objects_under_audit_are_not_events(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    store.put_bytes("audit/m/notes.txt", b"hello")
    log = lifecycle.read_audit_log(store, "m")
    assert [e.version for e in log.events] == ["v1"]
    assert log.skipped == ["audit/m/notes.txt"]


def test_the_sweep_picks_registered_undecided_versions_and_unfinished_promotions(
    model_dir, heldout, tmp_path
):
    store = MemoryStore()
    lifecycle.register(store, V1, model_dir, heldout, "sentence-embedding")
    lifecycle.register(store, V2, model_dir, heldout, "sentence-embedding")
    _promote(store, V2, "run-b", tmp_path)
    assert lifecycle.sweep_plan(store, max_failures=3).pending == [V1]
    for key in [k for k in store.snapshot() if k.startswith("audit/m/")]:
        store.delete(key)  # the promote event never landed
    assert set(lifecycle.sweep_plan(store, max_failures=3).pending) == {V1, V2}


def test_objects_a_run_writes_carry_its_run_id(tmp_path):
    store = MemoryStore()
    _promote(store, V1, "run-a", tmp_path)
    for key in store.snapshot():
        if key.startswith("promoted/m/v1/run-a/"):
            assert store.head(key).metadata[RUN_METADATA] == "run-a"
