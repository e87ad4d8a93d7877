"""The storage seam: what quantgate's lifecycle (quantgate/lifecycle.py) needs from an object store, and
the contract its guarantees rest on (after MLflow's ArtifactRepository and Kedro's AbstractDataset).

Two implementations, chosen by the scheme of the store's URL (`storage.open_store(settings)`, after
MLflow's artifact-repository registry): `ObjectStore` (quantgate/storage.py, `s3://<bucket>`: any S3
endpoint through boto3) and `MemoryStore` (here, `memory://<name>`: a dict held by the process, with a
hook that injects a fault at any write, so unit tests take every lifecycle branch and tests/flows runs the
whole Prefect flow at every write position without a server). `tests/unit/test_store_contract.py` holds
both to the same contract.

The contract:
- `put_bytes(create_only=True)` writes only when the key does not exist; otherwise ConflictError and the
  stored object is untouched. Two racing create-only writers: exactly one wins.
- `put_bytes(if_match=etag)` (compare-and-swap) writes only when the object's current ETag is `etag`;
  otherwise ConflictError (or NotFoundError when the key is gone), and nothing changes.
- Every put stores the body's SHA-256 (returned, and given back by `head`) and, with `run_id`, the
  metadata `quantgate-run: <run id>` that marks the object as that run's (repair deletes only those).
- `put_file` and `get_file` take an optional `progress` callback, called with the bytes just moved (a
  progress bar's advance); `get_file` returns the SHA-256 of the bytes it wrote, for the caller to compare
  with its record (older stores return None: the caller hashes the file then).
- `get_bytes` / `get_file` / `head` of a missing key raise NotFoundError; `get_with_etag` returns None;
  `exists` returns False; `delete` of a missing key is not an error.
- `list(prefix)` yields every object under the prefix (recursively) in key order; `list_prefixes(p)` the
  immediate sub-folder names below `p` (which ends with '/'); `list_grouped(p, delimiter)` S3's listing
  with a delimiter: keys without it, and one entry per group of keys that share it (few requests however
  many objects a group holds).
- Errors are quantgate's (StorageError and children), never a client library's.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quantgate.errors import ConflictError, NotFoundError, SizeExceededError

# User metadata that marks an object as written by a quantgate run (its run id): repair deletes only
# objects carrying it, never a file a team put beside a promotion (S3 lower-cases metadata names).
RUN_METADATA = "quantgate-run"


def too_large(where: str, size: int | str, max_bytes: int) -> SizeExceededError:
    return SizeExceededError(
        f"{where} holds {size} bytes, more than the {max_bytes} its record declares: the download stopped "
        "there. The object was replaced after it was recorded: register the model again as a new version"
    )


# Called with the number of bytes just uploaded or downloaded, as they go (boto3's `Callback` convention).
Progress = Callable[[int], None]
# Given a file's name and size, the Progress its transfer reports to; None: report nothing (a CLI's bar).
TransferProgress = Callable[[str, int], Progress | None]


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectHead:
    """What HEAD tells about one object: its size, the SHA-256 the server stored at upload (None when it
    keeps none), and its user metadata."""

    size: int
    sha256: str | None
    metadata: dict[str, str]


class Store(ABC):
    """An object store holding one bucket's keys. See the module docstring for the contract."""

    bucket: str

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True when it was created."""
        return False

    def require_bucket(self) -> None:  # noqa: B027 - optional: a store whose bucket always exists checks nothing
        """A clear NotFoundError when the bucket is missing."""

    @abstractmethod
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
        """Write data, return its SHA-256 hex."""

    @abstractmethod
    def put_file(
        self,
        key: str,
        path: Path,
        *,
        digest: str | None = None,
        create_only: bool = False,
        run_id: str | None = None,
        progress: Progress | None = None,
    ) -> str: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """(data, ETag) for compare-and-swap, None when the key does not exist."""

    @abstractmethod
    def get_file(
        self, key: str, path: Path, max_bytes: int | None = None, progress: Progress | None = None
    ) -> str | None:
        """Download to path, return the SHA-256 of what was written. With max_bytes, at most that many
        bytes are read: a larger object is a SizeExceededError and nothing is left at path."""

    @abstractmethod
    def head(self, key: str) -> ObjectHead: ...

    def sha256_of(self, key: str) -> str | None:
        return self.head(key).sha256

    def sha256_of_content(self, key: str) -> str:
        """The SHA-256 of the object's bytes as read back now (not the one stored at upload). A store
        whose objects can be large streams them: a model is never read whole into memory."""
        return hashlib.sha256(self.get_bytes(key)).hexdigest()

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]: ...

    def list_grouped(self, prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
        """(keys, groups) under prefix, in key order, as S3's ListObjectsV2 with `Delimiter` gives them: a
        key holding `delimiter` after the prefix is not listed, its group (the key up to and including the
        delimiter's first occurrence) is, once. This default reads every key; the S3 store asks the server,
        which answers with one entry per group."""
        keys: list[str] = []
        groups: dict[str, None] = {}
        for obj in self.list(prefix):
            cut = obj.key.find(delimiter, len(prefix))
            if cut < 0:
                keys.append(obj.key)
            else:
                groups[obj.key[: cut + len(delimiter)]] = None
        return keys, sorted(groups)

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def presign(self, key: str, expires_s: int) -> str | None:
        """An HTTP(S) address a browser can GET `key` from for `expires_s` seconds, or None when this
        store has none to give (the in-memory one)."""
        return None


@dataclass
class _Object:
    data: bytes
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)


# A hook called before every write with (operation, key); it may raise (the write is lost) or return
# "after" to have the write applied and then raise StorageError (the answer is lost).
FaultHook = Callable[[str, str], str | None]


class MemoryStore(Store):
    """A bucket in a dict, under a lock, with the same contract as S3. `fault` injects failures at
    writes: tests/unit/test_lifecycle.py runs every lifecycle branch and every write position on it."""

    def __init__(self, bucket: str = "memory", fault: FaultHook | None = None) -> None:
        self.bucket = bucket
        self.fault = fault
        self.objects: dict[str, _Object] = {}
        self.writes: list[tuple[str, str]] = []  # (operation, key) of every write attempted
        self._lock = threading.Lock()

    def _write(self, op: str, key: str, apply: Callable[[], None]) -> None:
        from quantgate.errors import StorageError

        self.writes.append((op, key))
        mode = self.fault(op, key) if self.fault else None
        with self._lock:
            apply()
        if mode == "after":
            raise StorageError(f"memory://{self.bucket}/{key}: {op} applied, answer lost (injected)")

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
        digest = hashlib.sha256(data).hexdigest()
        metadata = {"sha256": digest} | ({RUN_METADATA: run_id} if run_id else {})

        def apply() -> None:
            current = self.objects.get(key)
            if create_only and current is not None:
                raise ConflictError(f"memory://{self.bucket}/{key} already exists (create-only refused)")
            if if_match is not None:
                if current is None:
                    raise NotFoundError(f"memory://{self.bucket}/{key} does not exist")
                if current.etag != if_match:
                    raise ConflictError(f"memory://{self.bucket}/{key} changed since it was read")
            self.objects[key] = _Object(bytes(data), hashlib.md5(data).hexdigest(), metadata)  # noqa: S324 - an ETag, as S3's

        self._write("put", key, apply)
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
        data = path.read_bytes()
        digest = self.put_bytes(key, data, create_only=create_only, run_id=run_id)
        if progress is not None:
            progress(len(data))
        return digest

    def _get(self, key: str) -> _Object:
        with self._lock:
            obj = self.objects.get(key)
        if obj is None:
            raise NotFoundError(f"memory://{self.bucket}/{key} does not exist")
        return obj

    def get_bytes(self, key: str) -> bytes:
        return self._get(key).data

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            obj = self._get(key)
        except NotFoundError:
            return None
        return obj.data, obj.etag

    def get_file(
        self, key: str, path: Path, max_bytes: int | None = None, progress: Progress | None = None
    ) -> str:
        data = self._get(key).data
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(f"memory://{self.bucket}/{key}", len(data), max_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        if progress is not None:
            progress(len(data))
        return hashlib.sha256(data).hexdigest()

    def head(self, key: str) -> ObjectHead:
        obj = self._get(key)
        return ObjectHead(size=len(obj.data), sha256=obj.metadata.get("sha256"), metadata=dict(obj.metadata))

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self.objects

    def list(self, prefix: str) -> Iterator[StoredObject]:
        with self._lock:
            items = sorted((k, o) for k, o in self.objects.items() if k.startswith(prefix))
        for key, obj in items:
            yield StoredObject(key, len(obj.data), obj.etag)

    def list_prefixes(self, prefix: str) -> list[str]:
        with self._lock:
            keys = [k[len(prefix) :] for k in self.objects if k.startswith(prefix)]
        return sorted({k.split("/", 1)[0] for k in keys if "/" in k})

    def delete(self, key: str) -> None:
        self._write("delete", key, lambda: self.objects.pop(key, None))

    def snapshot(self) -> dict[str, str]:
        """key -> sha256 of every object: what a test compares before and after."""
        with self._lock:
            return {k: o.metadata.get("sha256", "") for k, o in sorted(self.objects.items())}


_NAMED: dict[str, MemoryStore] = {}
_NAMED_LOCK = threading.Lock()


def memory_store(name: str) -> MemoryStore:
    """The process's MemoryStore called `name` (`memory://<name>`), created empty on first use: every
    task of a flow run that opens the store from its settings gets the same one."""
    with _NAMED_LOCK:
        if name not in _NAMED:
            _NAMED[name] = MemoryStore(bucket=name)
        return _NAMED[name]


def drop_memory_store(name: str) -> None:
    """Forget `memory://<name>`: its next use starts empty."""
    with _NAMED_LOCK:
        _NAMED.pop(name, None)
