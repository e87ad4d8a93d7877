"""A team's own task type and backend reach every process that looks them up (quantgate/plugins.py): a
worker's flow-run process imports only the flow's entrypoint, so the registries load the plugins named by
QUANTGATE_PLUGINS or by installed packages' `quantgate.plugins` entry points. Each case runs in a fresh
interpreter, as a flow run does: this process's registries already hold what other tests imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOKUP = (
    "from quantgate.tasktypes import get_task_type; from quantgate.backends import get_quantizer; "
    "print(get_task_type('toy-regression').name, get_quantizer('copy-fp32').name)"
)


def _run(env: dict[str, str], code: str = LOOKUP) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"QUANTGATE_PLUGINS", "PYTHONPATH"}}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fresh_process_finds_the_plugins_the_setting_names():
    found = _run({"QUANTGATE_PLUGINS": "tests.plugins.toy_regression, tests.plugins.copy_backend"})
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["toy-regression", "copy-fp32"]
    # Without the setting, the same lookup in a fresh process does not know them: what a worker's run
    # saw before (docs/scale.md, the flood benchmark).
    missing = _run({})
    assert missing.returncode != 0
    assert "unknown task type 'toy-regression'" in missing.stderr


def test_an_installed_packages_entry_point_is_loaded_without_any_setting(tmp_path):
    """A package's `quantgate.plugins` entry point (its dist-info on sys.path, as `pip install` leaves it)."""
    dist = tmp_path / "team_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[quantgate.plugins]\ntoy = tests.plugins.toy_regression\ncopy = tests.plugins.copy_backend\n"
    )
    found = _run({"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["toy-regression", "copy-fp32"]


def test_a_plugin_that_cannot_be_imported_names_itself_and_the_setting():
    code = "from quantgate.tasktypes import get_task_type; get_task_type('sentence-embedding')"
    failed = _run({"QUANTGATE_PLUGINS": "team_plugins.not_installed"}, code)
    assert failed.returncode != 0
    assert "plugin module 'team_plugins.not_installed' cannot be imported" in failed.stderr
    assert "QUANTGATE_PLUGINS" in failed.stderr
