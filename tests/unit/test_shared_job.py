"""What a Dask worker receives for a candidate (issue #24): a path, a sha256 and a wall-clock deadline.
The job comes back whole, its deadline on the reader's own monotonic clock; a file changed after the
search wrote it is refused before it is unpickled."""

from __future__ import annotations

import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from quantgate.errors import SearchError
from quantgate.quantize import resolve_recipes
from quantgate.search_driver import ScoreJob, load_shared_job, share_job
from quantgate.tasktypes import Reference
from quantgate.thresholds import GateThresholds

DEADLINE_SLACK_S = 1.0  # two clock reads apart, on a loaded machine


def _job(tmp_path: Path, seconds_left: float, rows: int = 2000) -> ScoreJob:
    rng = np.random.default_rng(0)
    return ScoreJob(
        task="sentence-embedding",
        fp32=tmp_path / "model.onnx",
        prepared={},
        calibration=[{"input_ids": rng.integers(0, 100, (8, 32))}],
        out_dir=tmp_path / "candidates",
        reference=Reference(outputs=rng.normal(size=(rows, 64)), task_metric=0.8, seconds=1.0),
        assets=tmp_path / "assets",
        evaluation=pd.DataFrame({"sentence1": ["a"] * rows, "sentence2": ["b"] * rows, "score": 1.0}),
        thresholds=GateThresholds(),
        deadline=time.monotonic() + seconds_left,
    )


def test_a_shared_job_is_a_small_handle_and_reads_back_with_the_same_time_left(tmp_path):
    job = _job(tmp_path, seconds_left=300.0)
    shared = share_job(job, tmp_path / "shared" / "job.pkl")
    recipe = resolve_recipes(["dynamic-int8-per-channel"])[0]
    sent = len(cloudpickle.dumps({"recipe": recipe, "job": shared, "threads": 1}))
    assert sent < 2048 < len(cloudpickle.dumps(job)) // 100  # the job is ~1 MB; its handle is not
    assert abs(shared.deadline_epoch - (time.time() + 300.0)) < DEADLINE_SLACK_S

    back = load_shared_job(shared)
    assert abs((back.deadline - time.monotonic()) - 300.0) < DEADLINE_SLACK_S
    np.testing.assert_array_equal(back.reference.outputs, job.reference.outputs)
    pd.testing.assert_frame_equal(back.evaluation, job.evaluation)


def test_a_spent_deadline_stays_spent_on_the_reader(tmp_path):
    back = load_shared_job(share_job(_job(tmp_path, seconds_left=-5.0), tmp_path / "job.pkl"))
    assert back.deadline < time.monotonic()


def test_a_job_file_changed_after_it_was_shared_is_refused(tmp_path):
    path = tmp_path / "job.pkl"
    shared = share_job(_job(tmp_path, seconds_left=60.0, rows=10), path)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SearchError, match="sha256 differs"):
        load_shared_job(shared)
