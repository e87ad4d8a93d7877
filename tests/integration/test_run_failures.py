"""Every run ends with a report, whatever raised; a clear error is printed without Prefect's traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.registry import ModelRef
from tests.conftest import HANG_S, REPO

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_crash_that_is_not_a_quantgate_error_still_writes_the_runs_report(
    store, monkeypatch, tiny_model_dir, small_sts
):
    ref = ModelRef(name="tiny", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug nobody anticipated")

    monkeypatch.setattr("flows.quantize_and_promote.split_heldout", explode)
    state = quantize_and_promote(model="tiny", version="v1", return_state=True)
    assert state.is_failed()
    reports = [o.key for o in store.list("runs/tiny/v1/") if o.key.endswith("/report.json")]
    assert len(reports) == 1
    report = json.loads(store.get_bytes(reports[0]))
    assert (report["outcome"], report["error"]) == ("failed", "RuntimeError")
    assert "a bug nobody anticipated" in report["message"]
    assert lifecycle.failed_runs(store, ref) == 1  # so the sweep gives up after max_failures
    assert not list(store.list("promoted/"))


def test_an_in_flow_error_is_printed_once_without_a_traceback(s3_env, store, tiny_model_dir, small_sts):
    from prefect.settings import PREFECT_API_URL

    ref = ModelRef(name="tiny", version="tampered")
    registration = lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    store.put_bytes(registration.model_key("config.json"), b'{"model_type": "bert"}')
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "quantgate.cli", "run", "tiny", "tampered"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    # Once: Prefect's task and flow "failed"/"Finished in state Failed(...)" lines repeated it 4 to 5 times
    # before (#20); they now name the error's type and point at the one line that says it.
    assert out.count("changed after registration") == 1, out[-3000:]
    assert "IntegrityError" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_a_full_disk_fails_the_run_at_once_naming_the_space_needed(
    store, monkeypatch, tiny_model_dir, small_sts
):
    """At 5 MB free the pull is refused before it starts (estimated from the registration's sizes), and
    not retried as if storage were down."""
    import shutil
    from collections import namedtuple

    from quantgate.errors import DiskFullError
    from tests.conftest import task_runs_of

    ref = ModelRef(name="tiny", version="full")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5_000_000, 5_000_000))
    state = quantize_and_promote(model="tiny", version="full", return_state=True)
    assert state.is_failed()
    with pytest.raises(DiskFullError, match=r"needs about \d+ MB .* only 5 MB are free"):
        state.result()
    runs = task_runs_of(state.state_details.flow_run_id, last="announce-failure")
    pulls = [r for r in runs if r.name.startswith("pull")]
    assert [r.run_count for r in pulls] == [1]  # no retry
    assert not list(store.list("promoted/"))


def test_enospc_while_downloading_is_a_clear_error(store, monkeypatch, tmp_path):
    import errno
    from pathlib import Path

    from quantgate.errors import DiskFullError

    store.put_bytes("some/object", b"x" * 1000)
    real_open = Path.open

    def full_open(self, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_open)
    with pytest.raises(DiskFullError, match="no space left"):
        store.get_file("some/object", tmp_path / "dl" / "object")


def test_the_reference_counts_against_the_search_budget(store, tiny_model_dir, small_sts):
    from quantgate.errors import SearchError
    from quantgate.search import SearchBudget

    ref = ModelRef(name="tiny", version="budget")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    state = quantize_and_promote(
        model="tiny", version="budget", budget=SearchBudget(max_seconds=0.01), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(SearchError, match=r"FP32 reference on \d+ evaluation rows .* lower max_eval_rows"):
        state.result()


def test_hostile_benchmark_settings_are_refused_by_the_cli(s3_env):
    from typer.testing import CliRunner

    from quantgate.cli import app

    result = CliRunner().invoke(
        app, ["run", "tiny", "v1", "--batch", "64", "--seq-len", "512", "--repeats", "10000"]
    )
    assert result.exit_code == 2
    assert "tokens per engine" in result.output.replace("\n", "")
