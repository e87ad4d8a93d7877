"""infra/deploy.sh says what it does: each step of the Prefect stack's start is told before it runs (#23:
it was silent for 38 s)."""

from __future__ import annotations

from pathlib import Path

import infra.prefect_stack as stack_module
from infra.prefect_stack import PrefectStack


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_each_step_of_the_stack_start_is_announced_before_it_runs(monkeypatch, tmp_path: Path):
    events: list[str] = []
    monkeypatch.setattr(stack_module, "start_servers", lambda *a: events.append("run server") or [_Proc(1)])
    monkeypatch.setattr(stack_module, "_prefect", lambda *a, env: events.append("run " + " ".join(a)))
    monkeypatch.setattr(stack_module, "_prefect_python", lambda *a, env: events.append("run zombies"))
    monkeypatch.setattr(
        stack_module.subprocess, "Popen", lambda *a, **k: events.append("run worker") or _Proc(2)
    )

    PrefectStack(tmp_path, 4299, say=lambda line: events.append("say " + line)).start()

    said = [e for e in events if e.startswith("say ")]
    ran = [e for e in events if e.startswith("run ")]
    assert len(said) == len(ran) + 1  # one line per step, then "done"
    for i, event in enumerate(events):
        if event.startswith("run "):
            assert events[i - 1].startswith("say "), f"{event} ran without being announced"
    assert "127.0.0.1:4299" in said[0]
    assert said[-1].endswith("done")


def test_a_stack_without_the_sweeps_schedule_turns_it_off_after_deploying(monkeypatch, tmp_path: Path):
    events: list[str] = []
    monkeypatch.setattr(stack_module, "start_servers", lambda *a: [_Proc(1)])
    monkeypatch.setattr(stack_module, "_prefect", lambda *a, env: events.append("run " + " ".join(a)))
    monkeypatch.setattr(stack_module, "_prefect_python", lambda *a, env: events.append("run zombies"))
    monkeypatch.setattr(stack_module.subprocess, "Popen", lambda *a, **k: _Proc(2))
    monkeypatch.setattr(
        stack_module.PrefectStack, "_sweep_schedule_off", lambda self: events.append("schedule off")
    )
    PrefectStack(tmp_path, 4299).start()
    assert "schedule off" not in events
    PrefectStack(tmp_path, 4299, sweep_schedule=False).start()
    assert events.index("schedule off") > max(i for i, e in enumerate(events) if "deploy" in e)
