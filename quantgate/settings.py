"""Typed configuration, parsed once at the entry point (CLI or flow), never at import time.

Credentials are deliberately *not* settings: boto3 reads them from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the AWS config files or an instance role, so they never pass
through our objects, reports or logs."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from quantgate.workspace import user_cache_root


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint, e.g. http://127.0.0.1:8333 for SeaweedFS/MinIO; unset means AWS S3.",
    )
    s3_region: str = "us-east-1"
    bucket: str = Field(default="quantgate", min_length=3, max_length=63)
    store_url: str | None = Field(
        default=None,
        description="where promotions live, chosen by scheme (storage.open_store): s3://<bucket> (the "
        "default, s3://$QUANTGATE_BUCKET at QUANTGATE_S3_ENDPOINT_URL) or memory://<name> (a store held "
        "in this process, for tests of the whole flow); its bucket or name becomes `bucket`",
    )
    work_dir: Path = Field(
        default_factory=lambda: user_cache_root() / "work",
        description="per-run work folders; must be this user's own (0700), see workspace.private_dir",
    )
    cache_dir: Path = Field(
        default_factory=lambda: user_cache_root() / "exports",
        description="local cache of ONNX exports keyed by model checksum, and of built candidates (its "
        "builds/ folder) keyed by what they were built from; must be this user's own (0700)",
    )
    build_cache: bool = Field(
        default=True,
        description="take candidates built from the same graph, recipe, calibration data and code from the "
        "cache instead of quantizing again (each is still scored, timed and gated); false: always build",
    )
    cache_max_gb: float = Field(
        default=20.0,
        gt=0,
        description="each of the build and prediction caches is pruned to this size when a run starts, the "
        "entries used longest ago first",
    )
    prediction_cache: bool = Field(
        default=True,
        description="read a model's outputs on held-out rows back from the cache when the same model files, "
        "side files, rows, threads and code computed them before (every metric and gate is still computed "
        "from them); false: always run the model",
    )
    search_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="where the search's candidates are built and scored: threads of the flow's process, or "
        "Dask worker processes (prefect-dask's DaskTaskRunner; the benchmark stays in the flow's process)",
    )
    dask_address: str | None = Field(
        default=None,
        description="an existing Dask scheduler (tcp://host:port) for search_runner=dask; its workers must "
        "import this project and read the run's work folder at the same path; unset: a LocalCluster of "
        "dask_workers processes on 127.0.0.1, started for the search and closed after it",
    )
    dask_workers: int = Field(
        default=2, ge=1, le=64, description="worker processes of the LocalCluster (one thread each)"
    )
    s3_link_endpoint_url: str | None = Field(
        default=None,
        description="the S3 endpoint as the operator's browser reaches it, for presigned links (a signature "
        "covers the host); unset: s3_endpoint_url",
    )
    link_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        le=7 * 24 * 3600,
        description="how long the presigned HTTP(S) links a run publishes (model, plots, report, Data Docs) "
        "stay valid, in seconds; 7 days is the most SigV4 allows",
    )
    multipart_threshold_mb: int = Field(
        default=64,
        ge=1,
        description="files larger than this many MiB are uploaded in parts (S3 multipart: one request per "
        "part, each with its SHA-256; a failed upload is aborted) and shown with a progress bar in the CLI; "
        "a file past 5 GiB, S3's limit for one PUT, always is",
    )
    multipart_part_size_mb: int = Field(
        default=16,
        ge=5,
        le=5120,
        description="size of one part of a multipart upload in MiB (S3: 5 MiB to 5 GiB, at most 10,000 "
        "parts, so a larger file gets larger parts); the upload holds one part in memory",
    )
    s3_checksums: Literal["when_supported", "when_required"] | None = Field(
        default=None,
        description="botocore's default CRC checksums (boto3 >= 1.36) on requests and responses: "
        "when_supported (AWS S3 and SeaweedFS 4.48 accept them) or when_required (only where an operation "
        "demands one: for S3-compatible servers that refuse the new checksum headers); unset: botocore's "
        "own choice (AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION or the AWS config "
        "file, else when_supported); every upload still sends its SHA-256 either way",
    )
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    actor: str = Field(default_factory=_default_actor, description="who the audit log names")
    max_attempts: int = Field(default=3, ge=1, description="botocore retry attempts per request")
    promotion_lock_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="how long a promotion waits for its model's Prefect concurrency slot before going on "
        "without it (a run killed while holding it keeps it until its 60 s lease expires)",
    )
    require_approval: bool = Field(
        default=False,
        description="pause every run whose candidate passed every gate until a person approves or rejects "
        "it (Prefect's pause with a typed form; `quantgate approve`/`reject`); a flow's `require_approval` "
        "parameter overrides it",
    )
    approval_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="how long a run waits for its approval; then it fails, deciding nothing (the version "
        "stays undecided and is asked again on its next run)",
    )
    signing_key: Path | None = Field(
        default=None,
        description="the promoter's private key (`quantgate keys create`): every promotion is signed "
        "with it; its bytes are read when signing, never logged",
    )
    trusted_keys: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="public keys (files, or folders of *.pub.pem; comma-separated) whose signatures "
        "consumers accept: once set, pull, verify, rollback and load_runtime refuse any promotion they do "
        "not verify, unsigned ones included",
    )

    @model_validator(mode="before")
    @classmethod
    def _bucket_from_store_url(cls, data: object) -> object:
        """`s3://b` or `memory://b` names the bucket: one source for it, so links and store agree."""
        if not isinstance(data, dict) or not data.get("store_url"):
            return data
        url = str(data["store_url"])
        scheme, sep, name = url.partition("://")
        if not sep or not scheme or not name or "/" in name:
            raise ValueError(
                f"QUANTGATE_STORE_URL {url!r} is not <scheme>://<bucket>: use e.g. s3://quantgate or "
                "memory://tests"
            )
        if data.get("bucket") not in (None, name):
            raise ValueError(
                f"QUANTGATE_STORE_URL {url!r} and QUANTGATE_BUCKET {data['bucket']!r} name different "
                "buckets: set one of them"
            )
        return {**data, "bucket": name}

    @property
    def build_cache_dir(self) -> Path | None:
        """Where built candidates are cached; None when the build cache is off."""
        return self.cache_dir / "builds" if self.build_cache else None

    @property
    def prediction_cache_dir(self) -> Path | None:
        """Where models' outputs on held-out rows are cached; None when the prediction cache is off."""
        return self.cache_dir / "predictions" if self.prediction_cache else None

    @property
    def store_address(self) -> str:
        """The store's URL: QUANTGATE_STORE_URL, else S3 with QUANTGATE_BUCKET."""
        return self.store_url or f"s3://{self.bucket}"

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value


class HeldoutLimits(BaseSettings):
    """What reading a held-out file may cost, checked from headers BEFORE anything is decoded: a 140 KB
    PNG can declare 12000x12000 pixels (432 MB as RGB), a 6 MB tar.gz a 1.5 GB member, a 1 MB .npz
    800 MB of zeros. Each bound is a `QUANTGATE_` environment variable a user with a larger set can raise;
    the error that refuses a file names the variable."""

    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    max_image_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="width x height of one held-out image (25 MP: a 6000x4000 photo)",
    )
    max_heldout_member_bytes: int = Field(
        default=64 * 2**20,
        ge=1,
        description="bytes of one member (or pax header) of a held-out tar, as its header says",
    )
    max_heldout_bytes: int = Field(
        default=512 * 2**20,
        ge=1,
        description="bytes of the held-out file on disk, and of everything decoded from it (pixels, arrays, "
        "table cells) in total",
    )
    max_heldout_rows: int = Field(
        default=1_000_000, ge=1, description="rows (images, sentences, table rows, queries) of a held-out set"
    )
    max_heldout_tokens: int = Field(default=2_000_000, ge=1, description="tokens of a CoNLL held-out set")


class ExportSettings(BaseSettings):
    """How an export is laid out on disk, read where the export runs (quantgate/export.py)."""

    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    external_data_min_bytes: int = Field(
        # 256 MiB: well below the 2 GiB protobuf limit of one ONNX file, because an export to external data
        # never holds its weights as one proto (BERT-large's flow peaked at 6.3 GB in one file, 5.0 GB so).
        default=256 * 2**20,
        ge=0,
        description="an export whose weights reach this many bytes is saved with ONNX external data "
        "(model.onnx + model.onnx.data), written one tensor at a time; 0 forces it for every export (the "
        "CI-sized twin of a model past 2 GB); the quantizers then write theirs the same way",
    )


class PluginSettings(BaseSettings):
    """Which plugin modules every process loads before it looks up a task type or a backend
    (quantgate/plugins.py): the registering CLI, and a worker's flow-run process alike."""

    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated modules to import (each calls register_task_type or defines a "
        "Quantizer/Runtime subclass), besides the `quantgate.plugins` entry points of installed packages",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
