"""The CLI against the real server: clear errors (exit 2, no traceback) and the happy path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quantgate.cli import EXIT_ERROR, app
from tests.integration.conftest import secret_in

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def _register(model_dir, heldout, version="v1"):
    return _invoke("register", "tiny", version, "--model-dir", str(model_dir), "--heldout", str(heldout))


def test_register_then_list_and_report_before_a_decision(s3_env, tiny_model_dir, small_sts):
    result = _register(tiny_model_dir, small_sts)
    assert result.exit_code == 0, result.output
    assert "registered tiny@v1" in result.output
    listed = _invoke("list")
    assert "tiny" in listed.output
    assert "v1" in listed.output
    report = _invoke("report", "tiny", "v1")
    assert report.exit_code == EXIT_ERROR
    assert "no decision yet" in report.output


def test_registering_the_same_version_twice_is_refused(s3_env, tiny_model_dir, small_sts):
    assert _register(tiny_model_dir, small_sts).exit_code == 0
    again = _register(tiny_model_dir, small_sts)
    assert again.exit_code == EXIT_ERROR
    assert "already registered" in again.output


def test_missing_version_names_the_way_out(s3_env):
    result = _invoke("run", "tiny", "v404")
    assert result.exit_code == EXIT_ERROR
    assert "not registered" in result.output
    assert "quantgate register" in result.output
    assert "Traceback" not in result.output


def test_unreachable_endpoint_is_a_clear_error(s3_env, monkeypatch):
    monkeypatch.setenv("QUANTGATE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("QUANTGATE_MAX_ATTEMPTS", "1")
    result = _invoke("run", "tiny", "v1")
    assert result.exit_code == EXIT_ERROR
    assert "cannot reach the S3 endpoint" in result.output


def test_bad_credentials_are_a_clear_error_and_the_secret_is_not_echoed(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    result = _invoke("list")
    assert result.exit_code == EXIT_ERROR
    assert "refused the credentials" in result.output
    assert "wrong-secret-value" not in result.output
    assert not secret_in(result.output)


def test_unknown_bucket_is_a_clear_error(s3_env, monkeypatch):
    monkeypatch.setenv("QUANTGATE_BUCKET", "no-such-bucket-here")
    result = _invoke("list")
    assert result.exit_code == EXIT_ERROR
    assert "does not exist" in result.output
    assert "quantgate init" in result.output


@pytest.mark.parametrize(
    ("flag", "value"), [("--min-mean-cosine", "nan"), ("--max-task-metric-drop", "-1"), ("--abs-tol", "0")]
)
def test_nonsense_thresholds_are_refused_before_anything_runs(s3_env, flag, value):
    result = _invoke("run", "tiny", "v1", flag, value)
    assert result.exit_code == EXIT_ERROR
    assert "bad threshold" in result.output


def test_bad_names_are_refused(s3_env, tiny_model_dir, small_sts):
    result = _invoke(
        "register", "../etc", "v1", "--model-dir", str(tiny_model_dir), "--heldout", str(small_sts)
    )
    assert result.exit_code == EXIT_ERROR
    assert "invalid model name" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_run_prints_the_decision_gates_and_benchmark(s3_env, tiny_model_dir, small_sts):
    assert _register(tiny_model_dir, small_sts).exit_code == 0
    result = _invoke(
        "run", "tiny", "v1", "--min-p95-speedup", "0", "--min-objective-speedup", "0", "--repeats", "10",
        "--min-baseline-metric", "-1", "--max-baseline-half-width", "1",  # a random tiny BERT
        "--recipe", "dynamic-int8", "--recipe", "dynamic-int8-per-channel",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PROMOTED" in result.output
    assert "mean cosine" in result.output
    assert "candidates" in result.output  # the table, or a block per candidate where it does not fit
    again = _invoke("report", "tiny", "v1", "--json")
    report = json.loads(again.output)
    assert report["outcome"] == "promoted"
    tried = [c["recipe"]["name"] for c in report["search"]["candidates"]]
    assert tried == ["dynamic-int8", "dynamic-int8-per-channel"]  # exactly the --recipe options
    assert report["recipe"]["name"] in tried
