"""What every storage task shares: retries with backoff, but only for errors a retry can fix."""

from __future__ import annotations

import errno
from typing import Any

from quantgate.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    QuantgateError,
    StorageAuthError,
    StorageError,
)

_PERMANENT = (NotFoundError, StorageAuthError, ConflictError, IntegrityError)


def retry_transient_storage(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an outage or a dropped connection; never a missing object, bad keys or a lost race."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except StorageError:
        return True
    except QuantgateError:
        return False
    except OSError as exc:  # a local disk problem is not an outage; a dropped socket is
        return exc.errno not in {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}
    except Exception:  # noqa: BLE001 - an unexpected error from the network stack is worth one more try
        return True
    return False


STORAGE_TASK = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "retry_condition_fn": retry_transient_storage,
}
