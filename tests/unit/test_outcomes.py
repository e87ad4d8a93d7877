"""What a rollback reads as outside storage: the quantgate.model.rolled-back event."""

from __future__ import annotations

from quantgate import announce
from quantgate.registry import AuditEvent


def test_the_rolled_back_event_names_both_versions():
    event = AuditEvent(
        action="rollback", model="m", version="v1", previous_version="v2", run_id=None, actor="ops",
        manifest_sha256="ab" * 32,
    )  # fmt: skip
    name, resource, payload = announce.rolled_back(event)
    assert name == "quantgate.model.rolled-back"
    assert resource["quantgate.version"] == "v1"
    assert (payload["version"], payload["previous_version"], payload["actor"]) == ("v1", "v2", "ops")
