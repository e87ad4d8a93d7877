"""`quantgate run`'s gate flags are generated from the declared limits: a task type quantgate does not ship
brings its own flags without an edit to cli.py, and a bad value for one is refused like any threshold."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import tests.plugins.toy_regression  # registers the task type before the CLI builds its command
from typer.testing import CliRunner
from quantgate.cli import app
runner = CliRunner()
help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
print("FLAG" if "--max-mae-vs-mean" in help_text else "NO FLAG")
bad = runner.invoke(app, ["run", "toy", "v1", "--max-mae-vs-mean", "-1"])
print(bad.exit_code, "bad threshold" in bad.output, "max_mae_vs_mean" in bad.output)
"""


def test_a_new_task_types_limit_is_a_run_flag_and_is_checked():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split("\n")
    assert out[0] == "FLAG"
    assert out[1] == "2 True True"  # refused before anything runs, naming the limit


def test_the_built_in_limits_are_flags():
    from typer.testing import CliRunner

    from quantgate.cli import app

    help_text = (
        CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
    )
    for flag in (
        "--max-task-metric-drop", "--min-mean-cosine", "--max-slice-drop", "--abs-tol",
        # the tail gates' two limits each, declared beside their metrics
        "--cosine-floor", "--max-share-below-cosine-floor", "--prob-diff-ceiling",
        "--max-share-above-prob-diff-ceiling", "--max-proba-abs-diff", "--max-share-above-proba-abs-diff",
    ):  # fmt: skip
        assert flag in help_text
    assert "--expect-metric" not in help_text  # set at registration, not per run
    assert "--min-min-cosine" not in help_text  # the sample's worst row is shown, not gated
    assert "--max-prob-diff " not in help_text
