"""Every automation quantgate creates has a name and a description that says what it does and why (#23):
the deployments' triggers in prefect.yaml (as `prefect deploy` turns them into automations) and the
zombie-run automation infra/zombies.py installs. The deployed ones are read back from a real server in
tests/integration/test_deployments.py."""

from __future__ import annotations

from uuid import uuid4

import yaml

from infra.zombies import AUTOMATION_NAME, zombie_automation
from tests.conftest import REPO


def _deployed_automations() -> list:
    """What `prefect deploy` creates from prefect.yaml's triggers (one automation per trigger)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter = TypeAdapter(DeploymentTriggerTypes)
    config = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    out = []
    for deployment in config["deployments"]:
        for spec in deployment.get("triggers", []):
            assert spec.get("name"), f"{deployment['name']}: a trigger without a name"
            trigger = adapter.validate_python(spec)
            trigger.set_deployment_id(uuid4())
            out.append(trigger.as_automation())
    return out


def test_each_deployment_trigger_becomes_a_named_and_described_automation():
    automations = _deployed_automations()
    assert [a.name for a in automations] == ["quantgate-run-on-registration"]
    (registration,) = automations
    assert "quantgate.model.registered" in registration.description
    assert "registry-sweep" in registration.description  # and why a missed event is no loss
    assert registration.trigger.expect == {"quantgate.model.registered"}


def test_the_zombie_automation_says_what_it_does_and_why():
    automation = zombie_automation(120)
    assert automation.name == AUTOMATION_NAME
    assert "Crashed" in automation.description
    assert "120 s" in automation.description
    assert "Running forever" in automation.description
