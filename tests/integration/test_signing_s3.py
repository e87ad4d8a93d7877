"""Issue #20 point 4 on the real SeaweedFS: the attacker with bucket write access replaces a promoted model,
rewrites its manifest entry and forges an audit event; with the promoter's key outside the bucket, verify,
pull, rollback and load_runtime refuse it (tests/signing_attacks.py, the same scenarios as the in-memory
tests/unit/test_signing.py), and the CLI says so with the way out."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from quantgate import lifecycle
from quantgate.cli import app
from quantgate.signing import PUBLIC_DIR, create_keys, load_signer, load_trusted, rotate_keys
from quantgate.storage import ObjectStore
from tests.signing_attacks import (
    V1,
    V2,
    assert_refused_everywhere,
    assert_served_everywhere,
    keys,
    promote,
    tamper,
)


def test_signed_promotions_on_seaweedfs_pass_and_the_attackers_tampering_is_refused(store, tmp_path):
    signer, trusted = keys(tmp_path, "k")
    promote(store, V1, tmp_path, signer)
    promote(store, V2, tmp_path, signer)
    # (c) a valid signed promotion passes all four (rollback there and back)
    assert_served_everywhere(store, V2, tmp_path, trusted)
    assert lifecycle.rollback(store, "m", "v1", "ops", trusted).version == "v1"
    assert_served_everywhere(store, V1, tmp_path, trusted)
    assert lifecycle.rollback(store, "m", "v2", "ops", trusted).version == "v2"
    # (a) the attack: model replaced, manifest entry rewritten, audit event forged
    tamper(store, V1, tmp_path)
    assert lifecycle.verify_promotion(store, V1).ok  # without keys: the old hole
    assert_refused_everywhere(store, V1, tmp_path, trusted, "model.int8.onnx: manifest.json says sha256")


def test_untrusted_keys_and_rotation_on_seaweedfs(store: ObjectStore, tmp_path: Path):
    key_dir = tmp_path / "keys"
    old = create_keys(key_dir)
    promote(store, V1, tmp_path, load_signer(old.private))
    new, _ = rotate_keys(key_dir)
    promote(store, V2, tmp_path, load_signer(new.private))
    # (d) the old key's promotion verifies while its public key is kept, and is refused once removed
    assert_served_everywhere(store, V1, tmp_path, load_trusted([key_dir / PUBLIC_DIR]))
    old.public.unlink()
    retired = load_trusted([key_dir / PUBLIC_DIR])
    assert_refused_everywhere(store, V1, tmp_path, retired, "not among the trusted keys")
    assert_served_everywhere(store, V2, tmp_path, retired)
    # (b) another key's promotion is refused as well
    attacker, _ = keys(tmp_path, "attacker")
    promote(store, lifecycle.ModelRef(name="m", version="v0"), tmp_path, attacker)
    assert_refused_everywhere(
        store, lifecycle.ModelRef(name="m", version="v0"), tmp_path, retired, "not among the trusted keys"
    )


def _said(result) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_the_cli_says_unsigned_verified_or_refused_with_the_way_out(s3_env, store, tmp_path, monkeypatch):
    signer, _ = keys(tmp_path, "k")
    promote(store, V1, tmp_path, None)
    promote(store, V2, tmp_path, signer)
    runner = CliRunner()
    unsigned = runner.invoke(app, ["verify", "m", "v1"])
    assert unsigned.exit_code == 0, unsigned.output
    assert "every file verified (stored checksums); unsigned" in _said(unsigned)
    unchecked = runner.invoke(app, ["verify", "m", "v2"])
    assert "not checked: no QUANTGATE_TRUSTED_KEYS" in _said(unchecked)

    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", str(tmp_path / "k" / PUBLIC_DIR))
    verified = runner.invoke(app, ["verify", "m", "v2"])
    assert verified.exit_code == 0, verified.output
    assert "signature verified" in _said(verified)
    refused = runner.invoke(app, ["pull", "m", "--version", "v1", "--to", str(tmp_path / "out")])
    assert refused.exit_code == 2
    assert "signature INVALID: the promotion is unsigned" in _said(refused)
    assert "QUANTGATE_SIGNING_KEY" in _said(refused)  # the way out
    assert runner.invoke(app, ["rollback", "m", "--to", "v1"]).exit_code == 2
    assert lifecycle.current(store, "m").version == "v2"
    tamper(store, V2, tmp_path)
    broken = runner.invoke(app, ["verify", "m"])
    assert broken.exit_code == 2
    assert "m@v2 fails verification: signature INVALID: model.int8.onnx: manifest.json says" in _said(broken)


def test_run_refuses_to_start_when_its_promotion_would_be_refused(
    s3_env, store, tmp_path, monkeypatch, tiny_model_dir, small_sts
):
    """Trusted keys configured where the run starts, but no signing key: a clear error before the flow."""
    lifecycle.register(store, V1, tiny_model_dir, small_sts, "sentence-embedding")
    pair = create_keys(tmp_path / "k")
    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", str(pair.public.parent))
    result = CliRunner().invoke(app, ["run", "m", "v1"])
    assert result.exit_code == 2, result.output
    assert "QUANTGATE_SIGNING_KEY is not: consumers would refuse an unsigned promotion" in _said(result)
    assert lifecycle.decision_of(store, V1) is None
    assert not list(store.list("runs/"))  # the flow never started
