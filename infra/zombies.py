"""Killed flow runs must not stay `Running` forever (a SIGKILLed run was seen Running for 42 minutes).

Prefect's own mechanism: the flow engine of every flow run (worker-started or `quantgate run` against a
server) emits `prefect.flow-run.heartbeat` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds from a
background thread, and stops only when the run reaches a final state. This module installs the
automation that watches them (Prefect's documented zombie-flow recipe): after a heartbeat, expect another
heartbeat or a final state within `within` seconds; if neither comes, the run's process is gone, and the
automation changes its state to Crashed.

Numbers: heartbeats every 30 s (Prefect's minimum; its default is 180 s), Crashed after 120 s of silence,
i.e. four missed heartbeats: a CPU-bound benchmark can delay the heartbeat thread a little, never by
minutes. Install on any server with `python -m infra.zombies --api-url http://127.0.0.1:4200/api`;
infra/prefect_stack.py installs it when it starts the local stack.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

HEARTBEAT_S = 30
CRASHED_AFTER_S = 120
AUTOMATION_NAME = "quantgate-crash-zombie-runs"

# Final states end the watch. quantgate's runs end in custom-named states (Promoted, NotPromoted,
# AlreadyDecided: all COMPLETED), and Prefect names state events after the state's name.
FINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed", "Promoted", "NotPromoted", "AlreadyDecided")


def zombie_automation(crashed_after_s: int = CRASHED_AFTER_S):
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"Marks a flow run Crashed when its heartbeats stop for {crashed_after_s} s before it reached a "
            "final state: its process was killed (SIGKILL, OOM, a lost machine). Without it such a run "
            "stays Running forever (one was seen Running for 42 minutes); once Crashed, the next "
            "registry-sweep reports it as failed (report, `failed` tag, quantgate.model.failed) and runs "
            "the version again."
        ),
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_STATES)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crashed_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {crashed_after_s} s: the flow run's process is gone (killed?). "
                "Run the version again; a promotion it left unfinished is completed by the next run.",
            )
        ],
    )


def ensure_zombie_automation(crashed_after_s: int = CRASHED_AFTER_S) -> str:
    """Create or replace (by name) the automation on the server PREFECT_API_URL names; its id."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(existing.id)
        return str(client.create_automation(zombie_automation(crashed_after_s)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", help="Prefect API (default: PREFECT_API_URL)")
    parser.add_argument("--crashed-after", type=int, default=CRASHED_AFTER_S, help="seconds of silence")
    args = parser.parse_args(argv)
    if args.api_url:
        os.environ["PREFECT_API_URL"] = args.api_url
    print(f"automation {AUTOMATION_NAME}: {ensure_zombie_automation(args.crashed_after)}")


if __name__ == "__main__":
    main()
