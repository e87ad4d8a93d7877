"""Issue #20 point 4, as the attacker did it: someone with write access to the bucket (and nothing else)
replaces a promoted model, rewrites its manifest entry (and the pointer's digest) and forges an audit event.
With the promoter's key held outside the bucket, every consumer path refuses that promotion, naming the
signature: `verify`, `pull`, `rollback` and `load_runtime`.

Written against the `Store` contract, so the same scenarios run on the in-memory store
(tests/unit/test_signing.py) and on the real SeaweedFS (tests/integration/test_signing_s3.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quantgate import lifecycle
from quantgate.errors import IntegrityError
from quantgate.registry import (
    STATEMENT_NAME,
    AuditEvent,
    FileEntry,
    Manifest,
    ModelRef,
    Pointer,
    audit_key,
    current_key,
    manifest_key,
    promoted_key,
)
from quantgate.serving import load_runtime
from quantgate.signing import (
    Signer,
    TrustedKeys,
    create_keys,
    load_signer,
    load_trusted,
    statement_bytes,
)
from quantgate.storage import sha256_bytes
from quantgate.store import Store

V1 = ModelRef(name="m", version="v1")
V2 = ModelRef(name="m", version="v2")
MODEL = "model.int8.onnx"


def onnx_model(path: Path, op: str = "Identity") -> Path:
    """A one-node model ONNX Runtime opens: Identity (the promoted one) or Neg (the attacker's)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def promote(store: Store, ref: ModelRef, tmp_path: Path, signer: Signer | None) -> Manifest:
    run_id = f"run-{ref.version}"
    manifest = Manifest(
        model=ref.name, version=ref.version, run_id=run_id, task="sentence-embedding",
        recipe={"name": "dynamic-int8"}, files=[], source={}, thresholds={}, metrics={}, gates=[],
        benchmark={}, environment={},
    )  # fmt: skip
    tokenizer = tmp_path / run_id / "tokenizer" / "tokenizer.json"
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.write_text('{"version": "1.0"}')
    files = {MODEL: onnx_model(tmp_path / run_id / MODEL), "tokenizer/tokenizer.json": tokenizer}
    return lifecycle.promote(store, manifest, files, {"run": run_id}, "ci", signer)


def keys(tmp_path: Path, name: str) -> tuple[Signer, TrustedKeys]:
    pair = create_keys(tmp_path / name)
    return load_signer(pair.private), load_trusted([pair.public.parent])


# --- what the attacker does, with bucket write access only ----------------------------------------------


def rewrite_commit(store: Store, ref: ModelRef, manifest: Manifest) -> None:
    """Write a rewritten manifest, point current.json at its digest (when it names this version) and forge
    the audit event that makes `verify`'s audit comparison agree."""
    raw = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    store.put_bytes(manifest_key(ref), raw)
    digest = sha256_bytes(raw)
    found = store.get_with_etag(current_key(ref.name))
    if found is not None:
        pointer = Pointer.model_validate_json(found[0])
        if pointer.version == ref.version:
            store.put_bytes(
                current_key(ref.name),
                pointer.model_copy(update={"manifest_sha256": digest}).model_dump_json().encode(),
            )
    event = AuditEvent(
        action="promote", model=ref.name, version=ref.version, previous_version=None,
        run_id=manifest.run_id, actor="ci", manifest_sha256=digest, files=manifest.files,
    )  # fmt: skip
    store.put_bytes(audit_key(ref.name, time.time_ns(), "f0f0f0f0", "promote", ref.version),
                    event.model_dump_json().encode())  # fmt: skip


def _replace(store: Store, ref: ModelRef, manifest: Manifest, name: str, data: bytes) -> Manifest:
    """Overwrite one promoted file and return the manifest with its entry rewritten to match."""
    entry = next(e for e in manifest.files if e.path.endswith("/" + name))
    store.put_bytes(promoted_key(ref, entry.path), data)
    new = FileEntry(path=entry.path, sha256=sha256_bytes(data), size=len(data))
    return manifest.model_copy(update={"files": [new if e is entry else e for e in manifest.files]})


def tamper(store: Store, ref: ModelRef, tmp_path: Path, *, rewrite_statement: bool = False) -> None:
    """Replace the promoted model with another model, rewrite its manifest entry, the pointer's digest
    and the audit log; with `rewrite_statement`, also promotion.json to match the rewritten manifest."""
    manifest = lifecycle.load_manifest(store, ref)
    evil = onnx_model(tmp_path / "attacker" / MODEL, op="Neg").read_bytes()
    manifest = _replace(store, ref, manifest, MODEL, evil)
    if rewrite_statement:
        manifest = _replace(store, ref, manifest, STATEMENT_NAME, statement_bytes(manifest))
    rewrite_commit(store, ref, manifest)


# --- what every consumer must do ------------------------------------------------------------------------


def assert_refused_everywhere(
    store: Store, ref: ModelRef, tmp_path: Path, trusted: TrustedKeys, match: str
) -> None:
    """verify, pull, rollback (to `ref`, which must not be current) and load_runtime all refuse `ref`,
    with an error naming the signature (and `match`), and change nothing."""
    check = lifecycle.verify_promotion(store, ref, trusted=trusted)
    assert not check.ok
    assert check.signature.status == "invalid"
    assert "signature" in check.problems[0]
    assert match in check.signature.problem, check.signature.problem
    out = tmp_path / f"pulled-{ref.version}-{time.time_ns()}"
    with pytest.raises(IntegrityError, match=f"refusing to pull {ref}: signature INVALID.*{match}"):
        lifecycle.pull_promotion(store, ref.name, ref.version, out, trusted)
    assert not out.exists()
    pointer = lifecycle.current(store, ref.name)
    if pointer is not None and pointer.version != ref.version:
        with pytest.raises(
            IntegrityError, match=f"refusing to roll back to {ref}: signature INVALID.*{match}"
        ):
            lifecycle.rollback(store, ref.name, ref.version, "ops", trusted)
        assert lifecycle.current(store, ref.name) == pointer
    # A consumer without keys still downloads it (today's behaviour, sha256 only); load_runtime with the
    # trusted key refuses the folder before opening anything.
    lifecycle.pull_promotion(store, ref.name, ref.version, out)
    with pytest.raises(IntegrityError, match=f"refusing to load .*signature INVALID.*{match}"):
        load_runtime(out, trusted=trusted)


def assert_served_everywhere(store: Store, ref: ModelRef, tmp_path: Path, trusted: TrustedKeys) -> None:
    """verify, pull and load_runtime accept `ref` (rollback is exercised by the callers), and the model
    that runs is the promoted Identity."""
    check = lifecycle.verify_promotion(store, ref, deep=True, trusted=trusted)
    assert check.ok, check.problems
    assert check.signature.status == "verified"
    out = tmp_path / f"pulled-{ref.version}-{time.time_ns()}"
    lifecycle.pull_promotion(store, ref.name, ref.version, out, trusted)
    session = load_runtime(out, trusted=trusted)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x)
