"""The only module that talks S3. Works with any S3-compatible endpoint (AWS, SeaweedFS, MinIO, Ceph).

Every upload sends its SHA-256 (`ChecksumSHA256`), so the server rejects a body that arrived damaged
(SeaweedFS answers BadDigest), and every download is hashed as it streams, then compared by the caller
with the record. Create-only writes use `If-None-Match: *`, which SeaweedFS 4.48 and AWS S3 honour with 412.

Files above `QUANTGATE_MULTIPART_THRESHOLD_MB` (and any past 5 GiB, the most one PUT takes) go up as a
multipart upload, made of explicit requests rather than boto3's transfer manager: s3transfer 0.19 drops
`IfNoneMatch` from CompleteMultipartUpload, uploads parts from threads in no fixed order (the fault tests
number every write), and cannot check the file against the digest it was registered with before the
upload commits. Each part carries its own SHA-256 (S3 keeps only a checksum of the part checksums, "…-N",
for the whole object), the whole file's SHA-256 stays in the object's `sha256` metadata as for one PUT,
and any failure aborts the upload. docs/storage.md, "Big files", says what SeaweedFS does with a
conditional multipart completion.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import mimetypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from quantgate.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    StorageAuthError,
    StorageError,
    StorageUnreachableError,
)
from quantgate.settings import Settings
from quantgate.store import (
    RUN_METADATA,
    ObjectHead,
    Progress,
    Store,
    StoredObject,
    memory_store,
    too_large,
)
from quantgate.workspace import translating_disk_full

_AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken"}
_CHUNK = 1 << 20
MIB = 1 << 20
# S3's limits (docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): one PUT up to 5 GiB; a multipart
# upload of at most 10,000 parts, each 5 MiB to 5 GiB (the last one may be smaller).
SINGLE_PUT_MAX = 5 << 30
MAX_PARTS = 10_000
# A body that breaks off mid-download: the rest is asked for again from where it stopped.
_STREAM_ERRORS = (ResponseStreamingError, ReadTimeoutError, IncompleteReadError, ConnectionClosedError)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_type_of(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _metadata(digest: str, run_id: str | None) -> dict[str, str]:
    return {"sha256": digest} | ({RUN_METADATA: run_id} if run_id else {})


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


@functools.cache
def _service_models() -> Any:
    """botocore's loader of the service models (S3's API, its endpoints): read-only data, parsed once per
    process and shared by every client's session, as one session shares it between its clients."""
    return botocore.session.get_session().get_component("data_loader")


def make_client(settings: Settings) -> Any:
    """The boto3 S3 client every ObjectStore uses. Tests wrap it to inject faults at every write."""
    # boto3 >= 1.36 adds a CRC32 to requests and asks for one back by default; some S3-compatible servers
    # refuse those headers (boto3 issue #4392). Unset, botocore's own environment variables and config
    # file decide. Explicit SHA-256s are sent either way.
    checksums = (
        {
            "request_checksum_calculation": settings.s3_checksums,
            "response_checksum_validation": settings.s3_checksums,
        }
        if settings.s3_checksums
        else {}
    )
    # A session of its own: boto3's default session caches the credentials it resolved first. Its loader
    # of service models is the process's one: a new loader parses S3's model and endpoints again (~0.1 CPU-s
    # a client; a run opens a store in each task that touches storage).
    core = botocore.session.get_session()
    core.register_component("data_loader", _service_models())
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            **checksums,
        ),
    )


class ObjectStore(Store):
    """A bucket behind boto3, with errors translated into quantgate's error family (the S3 `Store`)."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.bucket = settings.bucket
        self.endpoint = settings.s3_endpoint_url or "AWS S3"
        self._client = client or make_client(settings)
        self.multipart_threshold = settings.multipart_threshold_mb * MIB
        self.part_size = settings.multipart_part_size_mb * MIB
        self.max_attempts = settings.max_attempts
        link = settings.s3_link_endpoint_url
        # Presigning sends no request: a client for the browser's address only computes signatures.
        self._link_client = (
            make_client(settings.model_copy(update={"s3_endpoint_url": link})) if link else self._client
        )

    # --- error translation ---------------------------------------------------------------------------
    def _translate(self, exc: Exception, key: str | None = None) -> StorageError:  # noqa: PLR0911 - one return per S3 error class
        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        if isinstance(exc, EndpointConnectionError):
            return StorageUnreachableError(
                f"cannot reach the S3 endpoint {self.endpoint}: start the local server with "
                "`python -m infra.seaweed start` or set QUANTGATE_S3_ENDPOINT_URL"
            )
        if isinstance(exc, NoCredentialsError):
            return StorageAuthError(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(for the local server: `source .quantgate/seaweed.env`)"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES or status == 403:
                return StorageAuthError(
                    f"the S3 endpoint {self.endpoint} refused the credentials ({code}) for {where}: "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            if code == "NoSuchBucket":
                return NotFoundError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it with "
                    "`quantgate init` or set QUANTGATE_BUCKET"
                )
            if code in {"NoSuchKey", "404", "NotFound"}:
                return NotFoundError(f"{where} does not exist")
            if code == "PreconditionFailed" or status == 412:
                return ConflictError(f"{where} already exists (create-only write refused)")
            if isinstance(status, int) and status >= 500:
                return StorageError(
                    f"S3 request for {where} failed: {code or status} (HTTP {status}) from {self.endpoint}, "
                    "retries included: the server itself failed, see its log (local server: "
                    ".quantgate/seaweedfs/weed.log; a full disk shows there as 'no free volumes left')"
                )
            return StorageError(f"S3 request for {where} failed: {code or status}")
        if isinstance(exc, BotoCoreError):
            return StorageError(f"S3 request for {where} failed: {type(exc).__name__}")
        raise exc

    def _call(self, op: str, key: str | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, op)(Bucket=self.bucket, **({"Key": key} if key else {}), **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from None

    # --- bucket --------------------------------------------------------------------------------------
    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True when it was created."""
        try:
            self._call("head_bucket")
            return False
        except (StorageAuthError, StorageUnreachableError):
            raise
        except StorageError:
            pass  # NoSuchBucket, or a bare 404: HEAD responses carry no error code
        self._call("create_bucket")
        return True

    def require_bucket(self) -> None:
        """A clear error when the bucket is missing: a bare 404 on a key would otherwise read as "not
        registered" or "no decision"."""
        try:
            self._call("head_bucket")
        except (StorageAuthError, StorageUnreachableError):
            raise
        except StorageError as exc:
            if isinstance(exc, NotFoundError) or "404" in str(exc):
                raise NotFoundError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it with "
                    "`quantgate init` or set QUANTGATE_BUCKET to the bucket you registered into"
                ) from None
            raise

    # --- objects -------------------------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        create_only: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        run_id: str | None = None,
    ) -> str:
        """Write data; create_only refuses an existing key, if_match refuses a key whose ETag changed
        since it was read (compare-and-swap). Either refusal raises ConflictError. `run_id` tags the
        object as written by that run (RUN_METADATA)."""
        digest = sha256_bytes(data)
        extra: dict[str, str] = {"IfNoneMatch": "*"} if create_only else {}
        if if_match is not None:
            extra["IfMatch"] = f'"{if_match}"'
        self._call(
            "put_object",
            key,
            Body=data,
            ChecksumSHA256=_b64(digest),
            ContentType=content_type,
            Metadata=_metadata(digest, run_id),
            **extra,
        )
        return digest

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        digest: str | None = None,
        create_only: bool = False,
        run_id: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Upload a file: one PUT up to the multipart threshold, parts above it (and always past 5 GiB).
        A create-only upload stays one PUT up to 5 GiB: SeaweedFS 4.48 checks `If-None-Match` on a
        multipart completion, but not atomically (docs/storage.md, "Big files")."""
        size = path.stat().st_size
        digest = digest or sha256_file(path)
        if size > SINGLE_PUT_MAX or (size > self.multipart_threshold and not create_only):
            return self._put_multipart(key, path, size, digest, create_only, run_id, progress)
        extra = {"IfNoneMatch": "*"} if create_only else {}
        with path.open("rb") as fh:
            self._call(
                "put_object",
                key,
                Body=fh,
                ChecksumSHA256=_b64(digest),
                # A browser opening a presigned link renders a page or a plot only with its real type.
                ContentType=content_type_of(key),
                Metadata=_metadata(digest, run_id),
                **extra,
            )
        if progress is not None:
            progress(size)
        return digest

    def _part_size(self, size: int) -> int:
        """The configured part size, or the smallest whole MiB that fits the file into 10,000 parts."""
        fits = -(-size // MAX_PARTS)
        return max(self.part_size, -(-fits // MIB) * MIB)

    def _put_multipart(
        self,
        key: str,
        path: Path,
        size: int,
        digest: str,
        create_only: bool,
        run_id: str | None,
        progress: Progress | None,
    ) -> str:
        where = f"s3://{self.bucket}/{key}"
        if create_only and self.exists(key):  # fail before uploading gigabytes; the completion decides
            raise ConflictError(f"{where} already exists (create-only write refused)")
        try:
            upload_id = self._call(
                "create_multipart_upload",
                key,
                ChecksumAlgorithm="SHA256",
                ContentType=content_type_of(key),
                Metadata=_metadata(digest, run_id),
            )["UploadId"]
        except StorageError as exc:
            if not isinstance(exc, StorageAuthError):
                self._abort_unknown_uploads(key)  # the server may have created it and lost the answer
            raise
        try:
            parts = []
            whole = hashlib.sha256()
            part_size = self._part_size(size)
            with path.open("rb") as fh:
                # One part in memory at a time: its SHA-256 goes in the request's header, before the body.
                while chunk := fh.read(part_size):
                    whole.update(chunk)
                    check = _b64(hashlib.sha256(chunk).hexdigest())
                    number = len(parts) + 1
                    answer = self._call(
                        "upload_part",
                        key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumSHA256=check,
                    )
                    parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": check})
                    if progress is not None:
                        progress(len(chunk))
            if whole.hexdigest() != digest:
                raise IntegrityError(
                    f"{path} changed while it was uploaded to {where}: its sha256 is now "
                    f"{whole.hexdigest()[:12]}…, not {digest[:12]}… as hashed before; nothing was stored, "
                    "upload it again once nothing writes to it"
                )
            etag = self._call(
                "complete_multipart_upload",
                key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **({"IfNoneMatch": "*"} if create_only else {}),
            )["ETag"].strip('"')
        except BaseException:
            self._abort(key, upload_id)
            raise
        if create_only:
            self._check_won(key, etag)
        return digest

    def _check_won(self, key: str, etag: str) -> None:
        """After a create-only multipart completion: the object is ours, or another writer's completion
        passed the same check and landed after ours (SeaweedFS 4.48: in 7 of 40 rounds of 8 racing
        completions, 2-6 were answered 200; benchmarks/multipart_race.py). This catches an overwrite that
        lands before the HEAD, not one after it: docs/storage.md says so."""
        try:
            stored = self._call("head_object", key)["ETag"].strip('"')
        except StorageError:
            return  # the completion answered 200: a failed check is no evidence against it
        if stored != etag:
            raise ConflictError(
                f"s3://{self.bucket}/{key} already exists (create-only write refused: another writer's "
                "upload completed at the same time)"
            )

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort an upload and its parts; never raises over the error that made it necessary (a part left
        behind is what a bucket's AbortIncompleteMultipartUpload lifecycle rule removes)."""
        with contextlib.suppress(StorageError):
            self._call("abort_multipart_upload", key, UploadId=upload_id)

    def _abort_unknown_uploads(self, key: str) -> None:
        """Abort every unfinished upload of exactly `key`: after a CreateMultipartUpload whose answer was
        lost, the server may hold an upload nobody knows the id of. Safe because quantgate uploads files
        only under a prefix of their writer's own (an upload id or a run id): no one else uploads that key."""
        with contextlib.suppress(StorageError):
            listed = self._call("list_multipart_uploads", Prefix=key).get("Uploads", [])
            for upload in listed:
                if upload["Key"] == key:
                    self._abort(key, upload["UploadId"])

    def get_bytes(self, key: str) -> bytes:
        return self._call("get_object", key)["Body"].read()

    def sha256_of_content(self, key: str) -> str:
        """The SHA-256 of the object's bytes, streamed in 1 MiB chunks and resumed like a download (a deep
        verify of a model past 2 GB holds one chunk at a time and writes nothing)."""
        return self._stream(key, lambda chunk: None)

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """(data, ETag) for compare-and-swap, None when the key does not exist."""
        try:
            obj = self._call("get_object", key)
        except NotFoundError:
            return None
        return obj["Body"].read(), obj["ETag"].strip('"')

    def get_file(
        self, key: str, path: Path, max_bytes: int | None = None, progress: Progress | None = None
    ) -> str:
        """Download to path (via a .part file) and return the SHA-256 of the bytes written, hashed as they
        stream (`_stream`). A full local disk is a DiskFullError naming the folder, never an error a storage
        retry would repeat."""
        with translating_disk_full(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            try:
                with tmp.open("wb") as fh:
                    sha = self._stream(key, fh.write, max_bytes, progress)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(path)
        return sha

    def _stream(
        self,
        key: str,
        sink: Callable[[bytes], object],
        max_bytes: int | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Read the object's body into `sink` chunk by chunk and return its SHA-256. With max_bytes, an
        object the response says is larger is refused before its body is read, and the body is never read
        past max_bytes + 1 (a server that misreports its length cannot fill the disk either). One GET streams
        the whole object (a GET has no 5 GiB limit); a body that breaks off is asked for again from the byte
        it reached, with `If-Match` on the first answer's ETag so that every byte comes from the same
        object."""
        where = f"s3://{self.bucket}/{key}"
        response = self._call("get_object", key)
        body = response["Body"]
        size = int(response.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            body.close()
            raise too_large(where, response["ContentLength"], max_bytes)
        etag = response.get("ETag")  # every S3 server sends one; without it a broken body is not resumed
        digest = hashlib.sha256()
        read = 0
        resumed = 0
        try:
            while True:
                try:
                    while chunk := body.read(_CHUNK):
                        read += len(chunk)
                        if max_bytes is not None and read > max_bytes:
                            raise too_large(where, f"at least {read}", max_bytes)
                        sink(chunk)
                        digest.update(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    break
                except _STREAM_ERRORS as exc:
                    body.close()
                    resumed += 1
                    if resumed >= self.max_attempts or read >= size or etag is None:
                        raise self._translate(exc, key) from None
                    body = self._resume(key, read, etag)
                except FlexibleChecksumError:
                    raise IntegrityError(
                        f"{where}: the body does not match the checksum the server stored with it: "
                        "the object is damaged on the server or on the way; download it again"
                    ) from None
                except BotoCoreError as exc:
                    raise self._translate(exc, key) from None
        finally:
            body.close()
        return digest.hexdigest()

    def _resume(self, key: str, start: int, etag: str) -> Any:
        try:
            return self._call("get_object", key, Range=f"bytes={start}-", IfMatch=etag)["Body"]
        except ConflictError:  # a 412: If-Match failed
            raise StorageError(
                f"s3://{self.bucket}/{key} was replaced while it was downloaded: download it again"
            ) from None

    def head(self, key: str) -> ObjectHead:
        """Size, stored SHA-256 and metadata of one object; NotFoundError when it does not exist."""
        try:
            head = self._call("head_object", key, ChecksumMode="ENABLED")
        except StorageError as exc:
            # HEAD carries no body, so a missing key can surface as a bare 404 without a code.
            if not isinstance(exc, NotFoundError) and "404" in str(exc):
                raise NotFoundError(f"s3://{self.bucket}/{key} does not exist") from None
            raise
        metadata = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        b64 = head.get("ChecksumSHA256")
        # Multipart uploads carry a checksum of checksums ("...-N"): fall back to the metadata then.
        sha = base64.b64decode(b64).hex() if b64 and "-" not in b64 else metadata.get("sha256")
        return ObjectHead(size=int(head.get("ContentLength", 0)), sha256=sha, metadata=metadata)

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", key)
        except NotFoundError:
            return False
        except StorageError as exc:
            # HEAD carries no body, so a missing key can surface as a bare 404 without a code.
            if "404" in str(exc):
                return False
            raise
        return True

    def _pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every page of a ListObjectsV2 (1,000 entries each), following the continuation tokens."""
        while True:
            page = self._call("list_objects_v2", **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list(self, prefix: str) -> Iterator[StoredObject]:
        for page in self._pages(Prefix=prefix):
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"], obj["Size"], obj["ETag"].strip('"'))

    def list_prefixes(self, prefix: str) -> list[str]:
        """Immediate 'sub-folders' below prefix (which must end with '/')."""
        return [group[len(prefix) :].rstrip("/") for group in self.list_grouped(prefix, "/")[1]]

    def list_grouped(self, prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
        # A delimiter of more than one character is plain S3 (and SeaweedFS 4.48, checked 2026-11-30):
        # a page holds up to 1,000 keys and groups together, however many objects each group rolls up.
        keys: list[str] = []
        groups: list[str] = []
        for page in self._pages(Prefix=prefix, Delimiter=delimiter):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            groups += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return sorted(keys), sorted(groups)

    def delete(self, key: str) -> None:
        self._call("delete_object", key)

    def presign(self, key: str, expires_s: int) -> str:
        """A presigned GET (SigV4, at most 7 days): a browser opens it without credentials until it
        expires. The response is typed from the key, so objects stored before uploads were typed (as
        binary/octet-stream) still render rather than download."""
        return self._link_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type_of(key)},
            ExpiresIn=expires_s,
        )


# A store is chosen by the scheme of its URL (MLflow's ArtifactRepositoryRegistry): a factory takes the
# settings and the URL's bucket (or name) part. A new kind of store is one Store subclass that passes
# tests/store_contract.py and one `register_store` line.
StoreFactory = Callable[[Settings, str], Store]
_STORES: dict[str, StoreFactory] = {}


def register_store(scheme: str, factory: StoreFactory) -> None:
    _STORES[scheme] = factory


def store_schemes() -> list[str]:
    return sorted(_STORES)


def open_store(settings: Settings) -> Store:
    """The store the settings name (`Settings.store_address`): `s3://<bucket>` at
    QUANTGATE_S3_ENDPOINT_URL (AWS when unset) by default, or another registered scheme."""
    url = settings.store_address
    scheme, _, name = url.partition("://")
    factory = _STORES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in store_schemes())
        raise ConfigError(
            f"QUANTGATE_STORE_URL {url!r}: no store is registered for the scheme {scheme!r}; known "
            f"schemes: {known}"
        )
    return factory(settings, name)


# The bucket is the URL's (Settings copies it into `bucket`), the endpoint QUANTGATE_S3_ENDPOINT_URL.
register_store("s3", lambda settings, _bucket: ObjectStore(settings))

MEMORY_OPT_IN = "QUANTGATE_ALLOW_MEMORY_STORE"


def _memory(_settings: Settings, name: str) -> Store:
    """An in-process bucket, gone when the process exits: for tests (the flows tier), never by accident.
    A worker or CLI configured with memory:// would report promotions that nothing stored."""
    if os.environ.get(MEMORY_OPT_IN) != "1":
        raise ConfigError(
            f"QUANTGATE_STORE_URL 'memory://{name}' is an in-process store that loses everything when the "
            f"process exits (for tests only): use s3://<bucket>, or set {MEMORY_OPT_IN}=1 in a test"
        )
    return memory_store(name)


register_store("memory", _memory)
