"""JSON records in the store: written with one encoder, parsed into a clear error naming the key and the
way out (never a pydantic trace)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from quantgate.errors import IntegrityError
from quantgate.signing import TrustedKeys
from quantgate.store import Store

M = TypeVar("M", bound=BaseModel)
NO_TRUST = TrustedKeys()  # signatures not checked: quantgate's behaviour before signing (README, Guarantees)


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


def _put_json(
    store: Store,
    key: str,
    data: Any,
    *,
    create_only: bool = False,
    if_match: str | None = None,
    run_id: str | None = None,
) -> str:
    return store.put_bytes(
        key,
        _json_bytes(data),
        create_only=create_only,
        if_match=if_match,
        content_type="application/json",
        run_id=run_id,
    )


def _corrupt(store: Store, key: str, what: str, problem: str, fix: str) -> IntegrityError:
    return IntegrityError(f"s3://{store.bucket}/{key} is not a valid {what} ({problem}): {fix}")


def _parse_record(store: Store, key: str, raw: bytes, model: type[M], what: str, fix: str) -> M:
    """A stored JSON record, or a clear error naming its key and the way out (never a pydantic trace)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "document"
        problem = f"{exc.error_count()} problem(s), first: {where}: {first['msg']}"
        raise _corrupt(store, key, what, problem[:300], fix) from None


def _load_json(store: Store, key: str, what: str, fix: str) -> dict[str, Any]:
    raw = store.get_bytes(key)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(store, key, what, f"not JSON: {exc}"[:200], fix) from None
    if not isinstance(data, dict):
        raise _corrupt(store, key, what, "not a JSON object", fix)
    return data


def _delete_prefix(store: Store, prefix: str) -> None:
    for obj in list(store.list(prefix)):
        store.delete(obj.key)


_MANIFEST_FIX = (
    "restore it from the audit log's manifest_sha256 and a backup, or remove the version's promoted/ "
    "prefix and run the version again"
)
