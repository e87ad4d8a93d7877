"""Where a model version, its decision and its promotion live: the key layout and the JSON schemas.

Layout inside one bucket (every key carries the model name and version):

    registered/<model>/<version>/uploads/<upload-id>/model/...   the Hugging Face folder as uploaded
    registered/<model>/<version>/uploads/<upload-id>/heldout/<f> the held-out set
    registered/<model>/<version>/registration.json    written last, create-only: task, upload id, sha256s
    promoted/<model>/<version>/<run-id>/...           INT8 model, tokenizer, reports (immutable, per run)
    promoted/<model>/<version>/<run-id>/model.sig     model-signing bundle over the run's files (signing.py)
    promoted/<model>/<version>/manifest.json          create-only: the commit point of a version
    promoted/<model>/current.json                     the pointer serving reads; compare-and-swap, last
    audit/<model>/<time>-<id>-<action>-<version>.json one create-only object per promotion or rollback
    rejected/<model>/<version>/<run-id>/...           the rejecting run's side files (parity, plots)
    rejected/<model>/<version>/report.json            create-only: the decision record of a rejection
    runs/<model>/<version>/<run-id>/report.json       every run's own report (promoted, rejected, failed)

Registrations made by other tools may put the folder at registered/<m>/<v>/model/ and the held-out set at
registered/<m>/<v>/heldout/ (no upload id): both layouts are read.

A version is *decided* when its manifest or its rejection record exists. Readers of promoted/ must read
manifest.json first and trust only the files it lists (with their sha256).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantgate.bench import ServingProfile
from quantgate.errors import ConfigError

# Lower-case names, no path separators, no "..", no spaces or control characters: safe as S3 key
# segments, file names and Prefect run names alike.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,62}[A-Za-z0-9])?$")

REGISTRATION_SCHEMA = "quantgate.registration/v1"
MANIFEST_SCHEMA = "quantgate.manifest/v1"
# A signed promotion's two extra files under its run prefix (quantgate/signing.py): the manifest's content
# as signed, and the model-signing bundle over every file of the run (promotion.json included).
STATEMENT_NAME = "promotion.json"
SIGNATURE_NAME = "model.sig"


def _check_segment(kind: str, value: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise ConfigError(f"invalid {kind} {value!r}: use {rule}")
    return value


def check_name(value: str) -> str:
    return _check_segment(
        "model name",
        value,
        _NAME_RE,
        "1-64 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
    )


def check_version(value: str) -> str:
    return _check_segment(
        "version",
        value,
        _VERSION_RE,
        "1-64 letters, digits, '.', '_', '+' or '-', starting and ending with a letter or digit "
        "(e.g. 2024-06-01 or v3)",
    )


class ModelRef(BaseModel):
    """A registered model version: the unit everything is keyed by."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return check_version(v)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


# --- keys ------------------------------------------------------------------------------------------------


def _safe_relpath(rel: str) -> str:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in {"", ".", ".."} for p in parts) or "\\" in rel:
        raise ConfigError(f"unsafe file path {rel!r}: paths must be relative and stay inside the folder")
    return rel


def registered_prefix(ref: ModelRef) -> str:
    return f"registered/{ref.name}/{ref.version}/"


def upload_prefix(ref: ModelRef, upload_id: str | None) -> str:
    """Where one `register` uploads its files: a prefix of its own, so two registrations of one version
    never write the same key; the create-only registration.json decides which upload counts."""
    if upload_id is None:
        return registered_prefix(ref)
    return f"{registered_prefix(ref)}uploads/{_safe_relpath(upload_id)}/"


def registered_model_key(ref: ModelRef, rel: str, upload_id: str | None = None) -> str:
    return f"{upload_prefix(ref, upload_id)}model/{_safe_relpath(rel)}"


def registered_heldout_key(ref: ModelRef, filename: str, upload_id: str | None = None) -> str:
    return f"{upload_prefix(ref, upload_id)}heldout/{_safe_relpath(filename)}"


def registration_key(ref: ModelRef) -> str:
    return f"{registered_prefix(ref)}registration.json"


def promoted_prefix(ref: ModelRef) -> str:
    return f"promoted/{ref.name}/{ref.version}/"


def promoted_key(ref: ModelRef, rel: str) -> str:
    return f"{promoted_prefix(ref)}{_safe_relpath(rel)}"


def manifest_key(ref: ModelRef) -> str:
    return promoted_key(ref, "manifest.json")


def artifact_prefix(ref: ModelRef, run_id: str) -> str:
    """Each run uploads under its own prefix, so two runs of one version never overwrite each other."""
    return f"{promoted_prefix(ref)}{_safe_relpath(run_id)}/"


def current_key(model: str) -> str:
    return f"promoted/{check_name(model)}/current.json"


def audit_prefix(model: str) -> str:
    return f"audit/{check_name(model)}/"


def rejected_prefix(ref: ModelRef) -> str:
    return f"rejected/{ref.name}/{ref.version}/"


def rejection_key(ref: ModelRef) -> str:
    return f"{rejected_prefix(ref)}report.json"


def rejection_files_prefix(ref: ModelRef, run_id: str) -> str:
    """A rejecting run's side files (parity report, plots): its own prefix, named by its record."""
    return f"{rejected_prefix(ref)}{_safe_relpath(run_id)}/"


def promoted_model_prefix(model: str) -> str:
    """Every promotion of one model (a folder per version, and current.json)."""
    return f"promoted/{check_name(model)}/"


def rejected_model_prefix(model: str) -> str:
    return f"rejected/{check_name(model)}/"


def registered_model_prefix(model: str | None) -> str:
    """Every registration (of one model, or of all)."""
    return f"registered/{check_name(model)}/" if model else "registered/"


def runs_prefix(ref: ModelRef) -> str:
    """Every run report of one version."""
    return f"runs/{ref.name}/{ref.version}/"


def run_prefix(ref: ModelRef, run_id: str) -> str:
    return f"{runs_prefix(ref)}{_safe_relpath(run_id)}/"


def parse_registration_key(key: str) -> ModelRef | None:
    """The ModelRef of a `registered/<m>/<v>/registration.json` key, None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "registered" and parts[3] == "registration.json":
        try:
            return ModelRef(name=parts[1], version=parts[2])
        except (ConfigError, ValueError):
            return None
    return None


# --- schemas -------------------------------------------------------------------------------------------


def utcnow() -> str:
    # Microseconds: promotion times order versions (a pointer never moves back to an older promotion).
    return datetime.now(UTC).isoformat(timespec="microseconds")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class FileEntry(BaseModel):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ExpectedMetric(BaseModel):
    """What the registering team measured for its FP32 model on this held-out set (`0.85±0.03`)."""

    value: float = Field(allow_inf_nan=False)
    tolerance: float = Field(gt=0, allow_inf_nan=False)

    @classmethod
    def parse(cls, text: str) -> ExpectedMetric:
        for sep in ("±", "+-", "+/-"):
            if sep in text:
                value, tolerance = text.split(sep, 1)
                try:
                    return cls(value=float(value), tolerance=float(tolerance))
                except ValueError:
                    break
        raise ConfigError(
            f"--expect-metric {text!r} is not VALUE±TOLERANCE: write e.g. 0.85±0.03 (or 0.85+-0.03), the "
            "FP32 task metric you measured on this held-out set"
        )

    def __str__(self) -> str:
        return f"{self.value:g}±{self.tolerance:g}"


class Registration(BaseModel):
    schema_version: Literal["quantgate.registration/v1"] = REGISTRATION_SCHEMA
    model: str
    version: str
    task: str
    heldout_format: str
    registered_at: str = Field(default_factory=utcnow)
    files: list[FileEntry]
    heldout: FileEntry
    source_checksum: str
    upload_id: str | None = Field(
        default=None, description="the upload whose files count; None: files at registered/<m>/<v>/model/"
    )
    expect_metric: ExpectedMetric | None = Field(
        default=None, description="the FP32 task metric the team expects on this held-out set"
    )
    profile: ServingProfile | None = Field(
        default=None,
        description="the serving profile the team declared at register (None: drawn from the held-out set)",
    )

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.model, version=self.version)

    def model_key(self, rel: str) -> str:
        return registered_model_key(self.ref, rel, self.upload_id)

    def heldout_key(self) -> str:
        return registered_heldout_key(self.ref, self.heldout.path, self.upload_id)


def source_checksum(files: list[FileEntry]) -> str:
    """One digest for a whole model folder: sha256 over the sorted 'path sha256' lines."""
    from quantgate.storage import sha256_bytes

    lines = "".join(f"{f.path} {f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return sha256_bytes(lines.encode())


class Approval(BaseModel):
    """A reviewer's answer to a run that paused for approval after passing every gate (off by default:
    QUANTGATE_REQUIRE_APPROVAL or the flow's `require_approval`). `by` is who the reviewer says they are:
    the Prefect OSS server has no users, so it is a record, not an authentication."""

    decision: Literal["approve", "reject"]
    by: str = Field(min_length=1, max_length=100, pattern=r"^\S(.*\S)?$")
    comment: str | None = Field(default=None, max_length=2000)
    at: str = Field(default_factory=utcnow)


class Manifest(BaseModel):
    """Written last, create-only, at promoted/<m>/<v>/manifest.json: what was promoted and why."""

    schema_version: Literal["quantgate.manifest/v1"] = MANIFEST_SCHEMA
    model: str
    version: str
    run_id: str
    promoted_at: str = Field(
        default_factory=utcnow, description="set when the manifest is written: orders promoted versions"
    )
    task: str
    recipe: dict[str, Any]
    files: list[FileEntry]
    source: dict[str, Any]
    thresholds: dict[str, Any]
    metrics: dict[str, float]
    gates: list[dict[str, Any]]
    benchmark: dict[str, Any]
    environment: dict[str, Any]
    engine: dict[str, str] = Field(
        default_factory=dict,
        description="the packages that run the promoted artifact and the versions it was judged with "
        "(`quantgate pull` warns when the local ones differ); empty in manifests written before",
    )
    approval: Approval | None = Field(
        default=None, description="who approved the promotion, when the run asked; None when it did not"
    )


Outcome = Literal["promoted", "rejected"]


class Pointer(BaseModel):
    """promoted/<model>/current.json: which promoted version serving should load."""

    model: str
    version: str
    manifest_sha256: str
    run_id: str
    updated_at: str = Field(default_factory=utcnow)
    action: Literal["promote", "rollback"]
    promoted_at: str | None = Field(default=None, description="the promotion time of `version`")
    previous_version: str | None = None


class AuditEvent(BaseModel):
    action: Literal["promote", "rollback"]
    model: str
    version: str
    previous_version: str | None
    run_id: str | None
    actor: str
    at: str = Field(default_factory=utcnow)
    manifest_sha256: str
    files: list[FileEntry] = Field(default_factory=list)
    pointer_moved: bool = Field(
        default=True,
        description="False when a promotion finished after a newer one (or a rollback) moved the pointer "
        "and it never served: the version is promoted, but current.json stays where the later decision put "
        "it. True when it served, also when a later decision had already replaced it by the time its "
        "event was recorded (then previous_version names that later decision's version)",
    )


# Audit keys: a zero-padded nanosecond clock (so keys sort in time order), a random id, the action and the
# version. Objects under audit/<m>/ whose key does not have this shape are not events and are skipped.
AUDIT_NAME_RE = re.compile(r"^\d{20}-[0-9a-f]{8}-(promote|rollback)-[A-Za-z0-9._+-]+\.json$")


def audit_key(model: str, time_ns: int, token: str, action: str, version: str) -> str:
    return f"{audit_prefix(model)}{time_ns:020d}-{token}-{action}-{check_version(version)}.json"


def registry_summary(
    outcome: str, ref: ModelRef, failed: list[Any], reason: str | None = None, rows_needed: int | None = None
) -> str:
    """One line for a run's final state: where the result is, and why when rejected."""
    if outcome == "promoted":
        return f"{ref} promoted to {promoted_prefix(ref)}"
    reasons = ", ".join(
        f"{r.gate.name} = {r.value if r.value is None else round(r.value, 4)} "
        + ("" if getattr(r, "interval", None) is None else f"[{r.interval[0]:.4f}, {r.interval[1]:.4f}] ")
        + f"(limit {r.gate.op} {r.gate.limit:g})"
        for r in failed
    )
    why = (f"{reason}: " if reasons else reason) if reason else ""
    more = f" (about {rows_needed} held-out rows would be needed)" if rows_needed else ""
    return f"{ref} not promoted: {why}{reasons}{more}; report at {rejection_key(ref)}"
