"""Faults at numbered storage writes, for both stores: every write request (put, delete, copy, and each
request of a multipart upload: create, every part, complete, abort) is numbered, and a plan answers
HTTP 503 at the chosen ones.
- On S3, a layer around the boto3 client, installed by patching `quantgate.storage.make_client`, so every
  ObjectStore the flow builds goes through it (`install`, `faulty_store`).
- On the in-memory store, the plan as the store's `fault` hook (`memory_hook`): every task of the flow that
  opens `memory://<name>` gets that store, hook included.

Modes, for the write numbered `at` (0-based, counted from when the plan is installed):
- `before`: the request never reaches the server (a 503 from a proxy or an overloaded front end);
- `after`: the server applies it, then the answer is lost (a 503 or a reset after the commit);
- `outage`: that write and every later one fail before reaching the server, until `heal()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import ClientError

from quantgate.errors import StorageError

WRITE_OPS = frozenset(
    {
        "put_object",
        "delete_object",
        "delete_objects",
        "copy_object",
        "create_multipart_upload",
        "upload_part",
        "complete_multipart_upload",
        "abort_multipart_upload",
        "upload_file",
        "upload_fileobj",
    }
)

Mode = Literal["before", "after", "outage"]


def _unavailable(op: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ServiceUnavailable", "Message": "injected fault"},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        op,
    )


@dataclass
class FaultPlan:
    at: int | None = None  # None: record writes, inject nothing
    mode: Mode = "before"
    # Which writes count (and can fail); default every write.
    match: Callable[[str, str], bool] = lambda op, key: True
    writes: list[tuple[str, str]] = field(default_factory=list)  # (operation, key) in order
    injected: list[tuple[str, str]] = field(default_factory=list)
    healed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def heal(self) -> None:
        self.healed = True

    def decide(self, op: str, key: str) -> Literal["before", "after"] | None:
        """Number this write; whether it fails before reaching the store, after being applied, or not."""
        if not self.match(op, key):
            return None
        with self._lock:
            n = len(self.writes)
            self.writes.append((op, key))
            armed = self.at is not None and not self.healed
            hit = armed and n == self.at
            fail_before = (hit and self.mode == "before") or (
                armed and self.mode == "outage" and n >= (self.at or 0)
            )
            fail_after = hit and self.mode == "after"
            if fail_before or fail_after:
                self.injected.append((op, key))
        return "before" if fail_before else "after" if fail_after else None

    def write(self, op: str, key: str, call: Callable[[], Any]) -> Any:
        fail = self.decide(op, key)
        if fail == "before":
            raise _unavailable(op)
        result = call()
        if fail == "after":
            raise _unavailable(op)
        return result

    def memory_hook(self) -> Callable[[str, str], str | None]:
        """The plan as a MemoryStore `fault` hook: the same numbering and the same outcomes, with the
        StorageError the S3 store makes of a 503 (tasks retry it like the S3 one)."""

        def hook(op: str, key: str) -> str | None:
            fail = self.decide(op, key)
            if fail == "before":
                raise StorageError(f"memory write {op} {key}: ServiceUnavailable (HTTP 503, injected)")
            return fail

        return hook


class FaultyClient:
    """Delegates everything to the real client; numbers and maybe fails the writes."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self._inner = inner
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITE_OPS:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            key = kwargs.get("Key", "")
            return self._plan.write(name, key, lambda: attr(*args, **kwargs))

        return write


def faulty_store(settings: Any, plan: FaultPlan) -> Any:
    from quantgate.storage import ObjectStore, make_client

    return ObjectStore(settings, client=FaultyClient(make_client(settings), plan))


def install(monkeypatch: Any, plan: FaultPlan) -> FaultPlan:
    from quantgate import storage

    real = storage.make_client
    monkeypatch.setattr(storage, "make_client", lambda settings: FaultyClient(real(settings), plan))
    return plan
