"""Signed promotions (quantgate/signing.py) on the in-memory store: keys, the attacker's tampering refused
by every consumer path, untrusted keys, rotation, unsigned promotions, and what the configuration allows.
The same scenarios run once on SeaweedFS in tests/integration/test_signing_s3.py."""

from __future__ import annotations

import json
import socket
import stat

import pytest
from typer.testing import CliRunner

from quantgate import lifecycle
from quantgate.cli import app
from quantgate.errors import ConfigError, IntegrityError
from quantgate.registry import SIGNATURE_NAME, STATEMENT_NAME, manifest_key
from quantgate.settings import Settings
from quantgate.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_DIR,
    create_keys,
    load_signer,
    load_trusted,
    promotion_signer,
    rotate_keys,
)
from quantgate.store import MemoryStore
from tests.signing_attacks import (
    V1,
    V2,
    assert_refused_everywhere,
    assert_served_everywhere,
    keys,
    promote,
    rewrite_commit,
    tamper,
)

# --- keys ----------------------------------------------------------------------------------------------


def test_keys_create_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite_it(tmp_path):
    pair = create_keys(tmp_path / "keys")
    assert pair.private == tmp_path / "keys" / PRIVATE_KEY_NAME
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert pair.public.parent.name == PUBLIC_DIR
    assert b"PRIVATE" not in pair.public.read_bytes()
    assert load_signer(pair.private).key_id == pair.key_id
    assert list(load_trusted([pair.public.parent]).keys) == [pair.key_id]
    with pytest.raises(ConfigError, match="already exists: `quantgate keys rotate"):
        create_keys(tmp_path / "keys")


def test_a_signing_key_other_users_can_read_is_refused(tmp_path):
    pair = create_keys(tmp_path / "keys")
    pair.private.chmod(0o640)
    with pytest.raises(ConfigError, match="can be read by other users: `chmod 600"):
        load_signer(pair.private)


def test_the_keys_commands_create_and_rotate_and_never_print_the_private_key(tmp_path):
    out = tmp_path / "keys"
    created = CliRunner().invoke(app, ["keys", "create", "--out", str(out)])
    assert created.exit_code == 0, created.output
    assert "QUANTGATE_SIGNING_KEY" in created.output
    assert "QUANTGATE_TRUSTED_KEYS" in created.output
    rotated = CliRunner().invoke(app, ["keys", "rotate", "--dir", str(out)])
    assert rotated.exit_code == 0, rotated.output
    assert "stays trusted" in rotated.output
    private = (out / PRIVATE_KEY_NAME).read_text()
    body = "".join(private.splitlines()[1:-1])
    assert body[:40] not in created.output + rotated.output
    assert len(list((out / PUBLIC_DIR).glob("*.pub.pem"))) == 2
    again = CliRunner().invoke(app, ["keys", "create", "--out", str(out)])
    assert again.exit_code == 2
    assert "keys rotate" in again.output


def test_trusted_keys_name_files_or_folders_and_a_missing_one_is_a_clear_error(tmp_path, monkeypatch):
    a, b = create_keys(tmp_path / "a"), create_keys(tmp_path / "b")
    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", f"{a.public}, {b.public.parent}")
    assert set(load_trusted(Settings().trusted_keys).keys) == {a.key_id, b.key_id}
    with pytest.raises(ConfigError, match="does not exist"):
        load_trusted([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no \*\.pub\.pem"):
        load_trusted([tmp_path / "empty"])


def test_the_promoter_refuses_to_promote_what_its_consumers_would_refuse(tmp_path, monkeypatch):
    """Once trusted keys are configured, a promotion needs a signing key they trust; checked before a run
    does any work (`quantgate run` calls promotion_signer first)."""
    ours, theirs = create_keys(tmp_path / "ours"), create_keys(tmp_path / "theirs")
    assert promotion_signer(Settings()) is None  # nothing configured: unsigned, as before
    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", str(ours.public.parent))
    with pytest.raises(ConfigError, match="QUANTGATE_SIGNING_KEY is not"):
        promotion_signer(Settings())
    monkeypatch.setenv("QUANTGATE_SIGNING_KEY", str(theirs.private))
    with pytest.raises(ConfigError, match="is not among QUANTGATE_TRUSTED_KEYS"):
        promotion_signer(Settings())
    monkeypatch.setenv("QUANTGATE_SIGNING_KEY", str(ours.private))
    assert promotion_signer(Settings()).key_id == ours.key_id


# --- a signed promotion ----------------------------------------------------------------------------------


def test_signing_and_checking_need_no_network(tmp_path, monkeypatch):
    """model-signing signs with a local private key: no Sigstore, no transparency log."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    signer, trusted = keys(tmp_path, "k")
    store = MemoryStore()
    promote(store, V1, tmp_path, signer)
    assert lifecycle.verify_promotion(store, V1, deep=True, trusted=trusted).signature.status == "verified"


def test_the_signature_is_written_before_the_manifest_and_listed_in_it(tmp_path):
    signer, _ = keys(tmp_path, "k")
    store = MemoryStore()
    manifest = promote(store, V1, tmp_path, signer)
    keys_written = [k for _, k in store.writes]
    sig, statement = "promoted/m/v1/run-v1/" + SIGNATURE_NAME, "promoted/m/v1/run-v1/" + STATEMENT_NAME
    assert keys_written.index(statement) < keys_written.index(sig) < keys_written.index(manifest_key(V1))
    assert {f.path for f in manifest.files} >= {"run-v1/" + SIGNATURE_NAME, "run-v1/" + STATEMENT_NAME}
    bundle = json.loads(store.get_bytes(sig))
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")  # model-signing's format
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == signer.key_id


def test_a_valid_signed_promotion_passes_verify_pull_rollback_and_load_runtime(tmp_path):
    signer, trusted = keys(tmp_path, "k")
    store = MemoryStore()
    promote(store, V1, tmp_path, signer)
    promote(store, V2, tmp_path, signer)
    assert_served_everywhere(store, V2, tmp_path, trusted)
    assert lifecycle.rollback(store, "m", "v1", "ops", trusted).version == "v1"
    assert_served_everywhere(store, V1, tmp_path, trusted)


# --- the attacker ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rewrite_statement", [False, True], ids=["manifest", "manifest+promotion.json"])
def test_a_replaced_model_with_its_manifest_and_audit_rewritten_is_refused_everywhere(
    tmp_path, rewrite_statement
):
    """The attack of issue #20: it used to pass `verify` and be served by `rollback`."""
    signer, trusted = keys(tmp_path, "k")
    store = MemoryStore()
    promote(store, V1, tmp_path, signer)
    promote(store, V2, tmp_path, signer)
    tamper(store, V1, tmp_path, rewrite_statement=rewrite_statement)
    assert lifecycle.verify_promotion(store, V1).ok  # without keys the forgery is consistent: the old hole
    assert_refused_everywhere(store, V1, tmp_path, trusted, "model.int8.onnx: manifest.json says sha256")
    tamper(store, V2, tmp_path)  # the serving version too (its pointer rewritten to the forged manifest)
    with pytest.raises(IntegrityError, match="signature INVALID"):
        lifecycle.pull_promotion(store, "m", None, tmp_path / "serving", trusted)


def test_a_promotion_signed_with_an_untrusted_key_is_refused(tmp_path):
    signer, trusted = keys(tmp_path, "ours")
    attacker, _ = keys(tmp_path, "attacker")
    store = MemoryStore()
    promote(store, V2, tmp_path, attacker)  # whole and self-consistent, signed by the wrong key
    promote(store, V1, tmp_path, signer)  # promoted later: current
    assert lifecycle.current(store, "m").version == "v1"
    assert_refused_everywhere(store, V2, tmp_path, trusted, "not among the trusted keys")


def test_an_unsigned_promotion_is_refused_by_a_consumer_with_trusted_keys_and_shown_unsigned_without(
    tmp_path,
):
    signer, trusted = keys(tmp_path, "k")
    store = MemoryStore()
    promote(store, V1, tmp_path, None)
    promote(store, V2, tmp_path, signer)
    check = lifecycle.verify_promotion(store, V1)
    assert (check.ok, check.signature.status, check.signature.line()) == (True, "unsigned", "unsigned")
    unchecked = lifecycle.verify_promotion(store, V2).signature
    assert unchecked.status == "unchecked"
    assert unchecked.key_id == signer.key_id
    assert "not checked" in unchecked.line()
    assert_refused_everywhere(store, V1, tmp_path, trusted, "unsigned")


def test_rotation_keeps_old_promotions_verifying_until_the_old_public_key_is_removed(tmp_path):
    key_dir = tmp_path / "keys"
    old_pair = create_keys(key_dir)
    store = MemoryStore()
    promote(store, V1, tmp_path, load_signer(old_pair.private))
    new_pair, old_id = rotate_keys(key_dir)
    assert old_id == old_pair.key_id != new_pair.key_id
    assert new_pair.private == old_pair.private  # the private key was replaced in place
    promote(store, V2, tmp_path, load_signer(new_pair.private))
    trusted = load_trusted([key_dir / PUBLIC_DIR])
    assert_served_everywhere(store, V1, tmp_path, trusted)
    assert_served_everywhere(store, V2, tmp_path, trusted)

    old_pair.public.unlink()  # retire the old key
    retired = load_trusted([key_dir / PUBLIC_DIR])
    assert_refused_everywhere(store, V1, tmp_path, retired, "not among the trusted keys")
    assert_served_everywhere(store, V2, tmp_path, retired)


def test_a_rewritten_manifest_field_or_a_stripped_signature_is_refused(tmp_path):
    """Not only files: the recipe (which artifact serving opens) and the rest of the manifest are signed
    through promotion.json; dropping model.sig from the manifest makes the promotion unsigned."""
    signer, trusted = keys(tmp_path, "k")
    store = MemoryStore()
    promote(store, V1, tmp_path, signer)
    promote(store, V2, tmp_path, signer)
    manifest = lifecycle.load_manifest(store, V1)
    rewrite_commit(store, V1, manifest.model_copy(update={"recipe": {"name": "dynamic-int8-per-channel"}}))
    assert_refused_everywhere(store, V1, tmp_path, trusted, "differs from the signed promotion.json")
    stripped = [f for f in manifest.files if not f.path.endswith(SIGNATURE_NAME)]
    rewrite_commit(store, V1, manifest.model_copy(update={"files": stripped}))
    assert_refused_everywhere(store, V1, tmp_path, trusted, "unsigned")


def test_a_manifest_forged_for_an_undecided_version_is_not_finished_by_the_sweep(tmp_path):
    """Someone with bucket access writes a manifest for a version nobody promoted: with trusted keys, the
    sweep (finish_promotion) does not move the pointer to it."""
    signer, trusted = keys(tmp_path, "k")
    attacker, _ = keys(tmp_path, "attacker")
    store = MemoryStore()
    promote(store, V1, tmp_path, signer)
    forged = MemoryStore()
    promote(forged, V2, tmp_path, attacker)
    for key in forged.snapshot():
        if key.startswith("promoted/m/v2/"):
            store.put_bytes(key, forged.get_bytes(key))
    refused = r"refusing to finish the promotion of m@v2 \(pointer and audit event\): signature INVALID"
    with pytest.raises(IntegrityError, match=refused):
        lifecycle.finish_promotion(store, V2, "sweep", trusted)
    assert lifecycle.current(store, "m").version == "v1"
    assert lifecycle.finish_promotion(store, V2, "sweep")  # without keys: today's behaviour
