"""Promotions signed with a key held outside the bucket (issue #20): whoever can write to the bucket can
still delete or roll back, but cannot make quantgate serve a file the promoter's key did not sign.

The format is the OpenSSF model-signing one (PyPI `model-signing`, pinned): a Sigstore bundle whose DSSE
envelope carries an in-toto statement listing the sha256 of every file of a model folder, signed offline
with an elliptic-curve private key (no Sigstore, no network; checked on this machine with sockets
disabled). A promotion's signed folder is everything under its run prefix, plus `promotion.json`: the
manifest's own content as it is written, minus the two entries the signature adds (`promotion.json` and
`model.sig`), so a rewritten manifest entry (a file's sha256, the recipe, the version) no longer matches
what was signed. The signature is stored as `<run-id>/model.sig` beside the files, listed in the manifest
like every other promoted file; the manifest stays the last write of the promotion.

Signing uses model-signing's public API on a local folder. Checking uses its key verifier on the bundle
alone (`model_signing._signing`, the code its own `verify key` command runs) and compares the signed
digests with the manifest's, so `quantgate verify` does not have to download a model to check it; a pulled
folder also verifies with `model_signing verify key`.

Keys: `quantgate keys create --out DIR` writes `DIR/signing-key.pem` (private, 0600, for the promoter:
QUANTGATE_SIGNING_KEY) and `DIR/public/<key-id>.pub.pem` (for consumers: QUANTGATE_TRUSTED_KEYS, a
comma-separated list of public-key files or folders of `*.pub.pem`). `quantgate keys rotate` replaces the
private key and adds its public key beside the old one: promotions signed with the old key keep verifying
while its public key stays trusted, and are refused once it is removed (that is how a leaked key is
retired). Promotions are never re-signed: their prefixes are immutable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from quantgate.errors import ConfigError, IntegrityError
from quantgate.registry import SIGNATURE_NAME, STATEMENT_NAME, FileEntry, Manifest

if TYPE_CHECKING:
    from quantgate.settings import Settings

PRIVATE_KEY_NAME = "signing-key.pem"
PUBLIC_DIR = "public"
PUBLIC_SUFFIX = ".pub.pem"
_KEY_ID = re.compile(r"^[0-9a-f]{64}$")  # a bundle's key hint is attacker-controlled text until verified


# --- keys ----------------------------------------------------------------------------------------------


def _public_pem(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_pem: bytes) -> str:
    """sha256 of the public key's PEM: the identifier model-signing records in a bundle as its key hint."""
    return hashlib.sha256(public_pem).hexdigest()


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def _write_private(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    path.chmod(0o600)


def _new_key(key_dir: Path) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    # P-256: model-signing's key signer accepts P-256/384/521 (Sigstore's key specs); not Ed25519.
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = _public_pem(private.public_key())
    kid = key_id(public_pem)
    public_dir = key_dir / PUBLIC_DIR
    public_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    public = public_dir / f"{kid[:16]}{PUBLIC_SUFFIX}"
    public.write_bytes(public_pem)
    private_path = key_dir / PRIVATE_KEY_NAME
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = key_dir / f".{PRIVATE_KEY_NAME}.new"
    _write_private(tmp, pem)
    tmp.replace(private_path)  # the old private key (rotation) is gone in one step
    return KeyPair(private=private_path, public=public, key_id=kid)


def create_keys(key_dir: Path) -> KeyPair:
    """A new signing key in `key_dir` (created 0700); refuses to overwrite one."""
    if (key_dir / PRIVATE_KEY_NAME).exists():
        raise ConfigError(
            f"{key_dir / PRIVATE_KEY_NAME} already exists: `quantgate keys rotate --dir {key_dir}` replaces "
            "it (keeping its public key trusted), or choose another --out folder"
        )
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _new_key(key_dir)


def rotate_keys(key_dir: Path) -> tuple[KeyPair, str]:
    """Replace the signing key in `key_dir`; the old public key stays in `public/` (so promotions it
    signed still verify) until someone deletes it. Returns the new pair and the old key's id."""
    old = load_signer(key_dir / PRIVATE_KEY_NAME)
    return _new_key(key_dir), old.key_id


# --- signing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """The promoter's private key (a path: its bytes are read by model-signing when signing, never kept,
    logged or copied)."""

    private_key: Path
    key_id: str
    public_pem: bytes = field(repr=False)

    def sign(self, files: dict[str, Path], name: str) -> bytes:
        """A model-signing bundle over `files` (a path under the run prefix -> the local file), signed as
        the folder `name`."""
        from model_signing import hashing, signing

        with tempfile.TemporaryDirectory(prefix="quantgate-sign-") as scratch:
            folder = Path(scratch) / name
            for rel, path in files.items():
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)  # no copy of a large model when the scratch is on its disk
                except OSError:
                    shutil.copyfile(path, target)
            out = Path(scratch) / SIGNATURE_NAME
            config = signing.Config().set_hashing_config(
                hashing.Config().use_file_serialization(hashing_algorithm="sha256")
            )
            config.use_elliptic_key_signer(private_key=self.private_key).sign(folder, out)
            return out.read_bytes()


def load_signer(path: Path) -> Signer:
    """The private key at `path`, refused when other users can read it (like ssh does)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    fix = "set QUANTGATE_SIGNING_KEY to a key made by `quantgate keys create --out DIR`"
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path} ({exc.strerror}): {fix}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the signing key {path} can be read by other users: `chmod 600 {path}`")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {fix}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an elliptic-curve (P-256/384/521) key: {fix}")
    public_pem = _public_pem(private.public_key())
    return Signer(private_key=path, key_id=key_id(public_pem), public_pem=public_pem)


# --- trust ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a consumer accepts promotions from. Empty: signatures are not checked (quantgate
    before signing); otherwise every promotion must carry a signature one of them verifies."""

    keys: dict[str, Path] = field(default_factory=dict)  # key id -> public key file

    @property
    def enforced(self) -> bool:
        return bool(self.keys)


def _public_files(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.iterdir() if p.name.endswith(PUBLIC_SUFFIX) and p.is_file())
    if entry.is_file():
        return [entry]
    raise ConfigError(
        f"QUANTGATE_TRUSTED_KEYS names {entry}, which does not exist: give public-key files or folders of "
        f"*{PUBLIC_SUFFIX} (`quantgate keys create` writes them to DIR/{PUBLIC_DIR}/)"
    )


def load_trusted(paths: list[Path]) -> TrustedKeys:
    """Every public key in `paths` (files, or folders of *.pub.pem)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys: dict[str, Path] = {}
    for entry in paths:
        files = _public_files(entry)
        if not files:
            raise ConfigError(
                f"QUANTGATE_TRUSTED_KEYS names the folder {entry}, which holds no *{PUBLIC_SUFFIX}: "
                "copy the promoter's public keys there"
            )
        for path in files:
            try:
                public = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"trusted key {path} is not a PEM public key ({exc}): use a {PUBLIC_SUFFIX} file "
                    "written by `quantgate keys create`"
                ) from None
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise ConfigError(f"trusted key {path} is not an elliptic-curve public key")
            keys[key_id(_public_pem(public))] = path
    return TrustedKeys(keys)


# --- checking a promotion ------------------------------------------------------------------------------


SignatureStatus = Literal["verified", "unsigned", "unchecked", "invalid"]


class SignatureCheck(BaseModel):
    """What a promotion's signature says: `verified` (by a trusted key), `unsigned`, `unchecked` (signed,
    but no trusted key is configured to check it), or `invalid` (with the problem)."""

    status: SignatureStatus
    key_id: str | None = None
    problem: str = ""

    def line(self) -> str:
        kid = f" (key {self.key_id[:16]})" if self.key_id else ""
        if self.status == "verified":
            return f"signature verified{kid}"
        if self.status == "unchecked":
            return f"signed{kid}, not checked: no QUANTGATE_TRUSTED_KEYS configured"
        if self.status == "unsigned":
            return "unsigned"
        return f"signature INVALID: {self.problem}"


def run_prefix_of(manifest: Manifest) -> str:
    return f"{manifest.run_id}/"


def signed_entries(manifest: Manifest) -> tuple[list[FileEntry], FileEntry | None, FileEntry | None]:
    """The manifest's files split into (the data files, promotion.json, model.sig)."""
    prefix = run_prefix_of(manifest)
    data, statement, signature = [], None, None
    for entry in manifest.files:
        if entry.path == prefix + SIGNATURE_NAME:
            signature = entry
        elif entry.path == prefix + STATEMENT_NAME:
            statement = entry
        else:
            data.append(entry)
    return data, statement, signature


def statement_of(manifest: Manifest) -> Manifest:
    """The manifest as signed: without the promotion.json and model.sig entries."""
    data, _, _ = signed_entries(manifest)
    return manifest.model_copy(update={"files": data})


def statement_bytes(manifest: Manifest) -> bytes:
    return json.dumps(statement_of(manifest).model_dump(mode="json"), indent=2, sort_keys=True).encode()


def unverified_digests(bundle: bytes) -> dict[str, str]:
    """The {path: sha256} a bundle claims, its signature NOT checked: for the signer's own sanity check."""
    payload = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    return {r["name"]: r["digest"] for r in payload["predicate"]["resources"]}


def _verify_bundle(bundle: bytes, trusted: TrustedKeys) -> tuple[str, dict[str, str]]:
    """(key id, {signed path: sha256}) when a trusted key verifies the bundle; IntegrityError otherwise."""
    # model-signing 1.1.1's key verifier (what `model_signing verify key` runs), on the bundle alone.
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    try:
        parsed = json.loads(bundle)
        hint = parsed["verificationMaterial"]["publicKey"]["hint"]
        payload = json.loads(base64.b64decode(parsed["dsseEnvelope"]["payload"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{SIGNATURE_NAME} is not a model-signing bundle ({exc})"[:300]) from None
    if not isinstance(hint, str) or not _KEY_ID.fullmatch(hint):
        raise IntegrityError(f"{SIGNATURE_NAME} names no key id (a sha256 hex public-key hint)")
    path = trusted.keys.get(hint)
    if path is None:
        raise IntegrityError(
            f"signed by key {hint[:16]}, which is not among the trusted keys "
            f"({', '.join(k[:16] for k in trusted.keys)})"
        )
    with tempfile.TemporaryDirectory(prefix="quantgate-verify-") as scratch:
        sig_path = Path(scratch) / SIGNATURE_NAME
        sig_path.write_bytes(bundle)
        try:
            signed = sign_ec_key.Verifier(path).verify(sign_sigstore_pb.Signature.read(sig_path))
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser or crypto failure is "invalid"
            raise IntegrityError(
                f"{SIGNATURE_NAME} does not verify with trusted key {hint[:16]} "
                f"({type(exc).__name__}: {exc})"[:300]
            ) from None
    if payload.get("predicate", {}).get("serialization", {}).get("hash_type") != "sha256":
        raise IntegrityError(f"{SIGNATURE_NAME} signs digests other than sha256 per file")
    return hint, {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}


def _file_difference(manifest: Manifest, signed: dict[str, str]) -> str:
    """'' when the manifest lists exactly the files that were signed, with their digests; otherwise the
    first difference."""
    prefix = run_prefix_of(manifest)
    data, statement_entry, _ = signed_entries(manifest)
    outside = [e.path for e in data if not e.path.startswith(prefix)]
    if outside:
        return f"{outside[0]} is not under the signed run prefix {prefix}"
    listed = {e.path.removeprefix(prefix): e.sha256 for e in data}
    if statement_entry is not None:
        listed[STATEMENT_NAME] = statement_entry.sha256
    for name in sorted(set(listed) | set(signed)):
        if name not in signed:
            return f"{name} is listed in manifest.json but was not signed"
        if name not in listed:
            return f"{name} was signed but manifest.json does not list it"
        if listed[name] != signed[name]:
            return f"{name}: manifest.json says sha256 {listed[name][:12]}…, signed {signed[name][:12]}…"
    return ""


def _content_difference(manifest: Manifest, signed: dict[str, str], statement: bytes) -> str:
    """'' when the manifest's own content is the signed promotion.json; otherwise what differs."""
    if hashlib.sha256(statement).hexdigest() != signed.get(STATEMENT_NAME):
        return f"{STATEMENT_NAME} is not the signed one"
    try:
        signed_manifest = Manifest.model_validate_json(statement)
    except ValueError:
        return f"the signed {STATEMENT_NAME} is not a manifest"
    if signed_manifest != statement_of(manifest):
        return f"manifest.json differs from the signed {STATEMENT_NAME} (a field was rewritten after signing)"
    return ""


def _unenforced(manifest: Manifest, signature: bytes | None) -> SignatureCheck:
    """Without trusted keys: `unsigned`, or `unchecked` with the key id the bundle names."""
    if signed_entries(manifest)[2] is None:
        return SignatureCheck(status="unsigned")
    try:
        hint = json.loads(signature or b"{}")["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError):
        hint = None
    valid = isinstance(hint, str) and _KEY_ID.fullmatch(hint)
    return SignatureCheck(status="unchecked", key_id=hint if valid else None)


def check_promotion(
    manifest: Manifest, signature: bytes | None, statement: bytes | None, trusted: TrustedKeys
) -> SignatureCheck:
    """The signature status of a promotion, from its manifest and the bytes of its model.sig and
    promotion.json (None when missing). The callers check every file's bytes against the manifest."""
    if not trusted.enforced:
        return _unenforced(manifest, signature)
    _, statement_entry, signature_entry = signed_entries(manifest)
    if signature_entry is None:
        return SignatureCheck(status="invalid", problem=f"the promotion is unsigned (no {SIGNATURE_NAME})")
    if signature is None or statement is None or statement_entry is None:
        return SignatureCheck(status="invalid", problem=f"{SIGNATURE_NAME} or {STATEMENT_NAME} is missing")
    try:
        kid, signed = _verify_bundle(signature, trusted)
    except IntegrityError as exc:
        return SignatureCheck(status="invalid", problem=str(exc))
    problem = _file_difference(manifest, signed) or _content_difference(manifest, signed, statement)
    if problem:
        return SignatureCheck(status="invalid", key_id=kid, problem=problem)
    return SignatureCheck(status="verified", key_id=kid)


SIGNATURE_FIX = (
    "no trusted key vouches for these files: roll back to a version that verifies (`quantgate verify MODEL "
    "VERSION` shows its signature), or run the model again as a new version with QUANTGATE_SIGNING_KEY set; "
    "if the promoter's key is missing from QUANTGATE_TRUSTED_KEYS, add its public key there"
)


def check_folder(folder: Path, manifest: Manifest, trusted: TrustedKeys) -> SignatureCheck:
    """A pulled promotion in `folder` (`quantgate pull`): every file the manifest lists has its sha256,
    and, with trusted keys, the signature verifies; IntegrityError naming the problem otherwise."""
    for entry in manifest.files:
        path = folder / entry.path.split("/", 1)[-1]  # pulled files lose their run prefix
        try:
            with path.open("rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            actual = "missing"
        if actual != entry.sha256:
            raise IntegrityError(
                f"{path} does not match its manifest ({actual[:12]}…, manifest says {entry.sha256[:12]}…): "
                "pull the promotion again into an empty folder with `quantgate pull`"
            )
    _, statement, signature = signed_entries(manifest)

    def read(entry: FileEntry | None) -> bytes | None:
        return None if entry is None else (folder / entry.path.split("/", 1)[-1]).read_bytes()

    check = check_promotion(manifest, read(signature), read(statement), trusted)
    if check.status == "invalid":
        raise IntegrityError(f"refusing to load {folder}: {check.line()}; {SIGNATURE_FIX}")
    return check


# --- from the settings ---------------------------------------------------------------------------------


def trusted_keys(settings: Settings) -> TrustedKeys:
    return load_trusted(settings.trusted_keys)


def promotion_signer(settings: Settings) -> Signer | None:
    """The key promotions are signed with, checked before a run does any work. Once consumers are given
    trusted keys (QUANTGATE_TRUSTED_KEYS set here too), an unsigned promotion, or one signed with a key
    they do not trust, would be refused by all of them: refused here first."""
    trusted = trusted_keys(settings)
    if settings.signing_key is None:
        if trusted.enforced:
            raise ConfigError(
                "QUANTGATE_TRUSTED_KEYS is set but QUANTGATE_SIGNING_KEY is not: consumers would refuse an "
                "unsigned promotion; set QUANTGATE_SIGNING_KEY to the promoter's private key"
            )
        return None
    signer = load_signer(settings.signing_key)
    if trusted.enforced and signer.key_id not in trusted.keys:
        raise ConfigError(
            f"the signing key {settings.signing_key} (key {signer.key_id[:16]}) is not among "
            "QUANTGATE_TRUSTED_KEYS: add its public key (DIR/public/) there"
        )
    return signer
