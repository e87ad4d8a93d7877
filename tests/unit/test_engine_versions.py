"""Which engine judged a promotion: the manifest records the versions of the packages the run's task type
and the candidate's backend declare (an OpenVINO promotion names its OpenVINO and NNCF), and `quantgate
pull` warns when the local engine is another version; a manifest written before that pulls as it did."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantgate import cli, lifecycle
from quantgate.backends.onnxruntime import OrtRecipe
from quantgate.backends.openvino import OvRecipe
from quantgate.bench import BenchReport, BenchSettings, EngineResult
from quantgate.recipe import Recipe
from quantgate.registry import FileEntry, Manifest, ModelRef, Registration
from quantgate.report import ExportSummary, HeldoutSummary, build_run_report, manifest_for
from quantgate.search import SearchBudget, SearchResult
from quantgate.store import MemoryStore
from tests.conftest import scored_candidate

REF = ModelRef(name="m", version="v1")
ORT_VERSION = importlib.metadata.version("onnxruntime")


def _manifest_of_a_run(recipe: Recipe, task: str = "sentence-embedding") -> Manifest:
    """The manifest the flow writes for a run whose lead candidate is `recipe` (report, then manifest)."""
    latency = EngineResult(
        engine=recipe.name, p50_ms=1.0, p95_ms=1.1, p99_ms=1.2, mean_ms=1.0, throughput_per_s=1000.0,
        size_mb=1.0, load_s=0.1,
    )  # fmt: skip
    lead = scored_candidate(
        recipe, bench_round="candidates", latency=latency,
        metrics={"task_metric_fp32": 0.87, "task_metric_candidate": 0.868},
    )  # fmt: skip
    search = SearchResult(
        candidates=[lead],
        benchmarks={"candidates": BenchReport(settings=BenchSettings(), results=[latency], cpu={})},
        chosen=None,
        lead=lead.name,
        budget=SearchBudget(),
        seconds=1.0,
    )
    report = build_run_report(
        ref_name=REF.name, ref_version=REF.version, run_id="run-1", task=task,
        export=ExportSummary(
            onnx_path=Path("model.onnx"), input_names=["input_ids"], output_names=["sentence_embedding"],
            opset=17, max_abs_diff_vs_torch={}, parity_samples=1, size_bytes=1,
        ),
        heldout=HeldoutSummary(rows=100), thresholds={}, search=search,
    )  # fmt: skip
    file = FileEntry(path="model.safetensors", sha256="0" * 64, size=1)
    registration = Registration(
        model=REF.name, version=REF.version, task=task, heldout_format="sts-tsv", files=[file], heldout=file,
        source_checksum="0" * 64,
    )  # fmt: skip
    return manifest_for(report, registration)


def test_an_openvino_promotions_manifest_names_the_openvino_and_nncf_that_judged_it():
    pytest.importorskip("openvino")
    manifest = _manifest_of_a_run(OvRecipe(name="ov-nncf-int8-transformer"))
    packages = manifest.environment["packages"]
    for name in ("openvino", "nncf", "transformers", "tokenizers", "onnxruntime", "quantgate"):
        assert packages[name] == importlib.metadata.version(name), name
    assert manifest.engine == {"openvino": importlib.metadata.version("openvino")}


def test_an_onnx_runtime_promotion_names_its_engine_and_no_other_backends_packages():
    manifest = _manifest_of_a_run(OrtRecipe(name="dynamic-int8"))
    assert manifest.engine == {"onnxruntime": ORT_VERSION}
    assert "nncf" not in manifest.environment["packages"]


def test_a_tabular_run_records_the_scikit_learn_stack_it_was_judged_with():
    packages = _manifest_of_a_run(OrtRecipe(name="dynamic-int8"), task="tabular").environment["packages"]
    for name in ("scikit-learn", "skl2onnx", "skops"):
        assert packages[name] == importlib.metadata.version(name), name


# --- quantgate pull -------------------------------------------------------------------------------------


class OldQuantgateStore(MemoryStore):
    """Writes manifests as quantgate did before it recorded the engine: without the `engine` field."""

    def put_bytes(self, key: str, data: bytes, **kwargs) -> str:
        if key.endswith("/manifest.json"):
            record = json.loads(data)
            record.pop("engine")
            data = json.dumps(record, indent=2, sort_keys=True).encode()
        return super().put_bytes(key, data, **kwargs)


def _promoted(store: MemoryStore, tmp_path: Path, engine: dict[str, str]) -> MemoryStore:
    manifest = Manifest(
        model=REF.name, version=REF.version, run_id="run-1", task="sentence-embedding", recipe={}, files=[],
        source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={}, engine=engine,
    )  # fmt: skip
    artifact = tmp_path / "model.int8.onnx"
    artifact.write_bytes(b"onnx" * 100)
    lifecycle.promote(store, manifest, {"model.int8.onnx": artifact}, {"run": "run-1"}, "ci")
    return store


def _pull(store: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "_store", lambda: store)
    monkeypatch.setattr(cli, "_trusted", lambda: lifecycle.NO_TRUST)
    return CliRunner().invoke(cli.app, ["pull", "m", "--to", str(tmp_path / "serving")])


def test_pull_warns_naming_the_package_the_judged_version_and_the_local_one(tmp_path, monkeypatch):
    store = _promoted(MemoryStore(), tmp_path, {"onnxruntime": "0.0.1"})
    result = _pull(store, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "serving" / "model.int8.onnx").is_file()  # a warning, not a refusal
    said = " ".join(result.output.split())
    assert f"warning: m@v1 was judged with onnxruntime 0.0.1, this machine has {ORT_VERSION}" in said


def test_pull_says_when_the_engine_is_not_installed_here(tmp_path, monkeypatch):
    store = _promoted(MemoryStore(), tmp_path, {"no-such-engine-quantgate": "1.0"})
    said = " ".join(_pull(store, tmp_path, monkeypatch).output.split())
    assert "judged with no-such-engine-quantgate 1.0, this machine has none installed" in said


def test_pull_is_silent_when_the_local_engine_is_the_one_that_judged(tmp_path, monkeypatch):
    store = _promoted(MemoryStore(), tmp_path, {"onnxruntime": ORT_VERSION})
    result = _pull(store, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_a_manifest_written_before_engines_were_recorded_pulls_silently(tmp_path, monkeypatch):
    store = _promoted(OldQuantgateStore(), tmp_path, {})
    raw = json.loads(store.get_bytes("promoted/m/v1/manifest.json"))
    assert "engine" not in raw
    result = _pull(store, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert lifecycle.engine_drift(lifecycle.load_manifest(store, REF)) == []
