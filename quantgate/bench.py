"""CPU latency benchmark: every engine on the same inputs, interleaved round by round, so that noise from
a shared machine lands on all of them alike (measure the baseline, quantize, re-measure on the same
harness)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantgate.errors import ConfigError

MAX_BENCH_TOKENS = 200_000_000

# Engine names, spelled once: the FP32 export every candidate is timed against, the framework model when
# the task type times it too, and the serving version (+ its version; '@' is never in a recipe name).
ONNX_FP32 = "onnx-fp32"
TORCH_FP32 = "pytorch-fp32"
BASELINES = (TORCH_FP32, ONNX_FP32)
CHAMPION_ENGINE = "champion@"


class BenchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: int = Field(1, ge=1, le=64)
    seq_len: int = Field(128, ge=1, le=512, description="tokens per input (BERT-style models stop at 512)")
    threads: int = Field(1, ge=1, le=256)
    warmup_runs: int = Field(10, ge=0, le=1_000)
    repeat_runs: int = Field(100, ge=5, le=10_000)

    @model_validator(mode="after")
    def _bounded(self) -> BenchSettings:
        # Every engine (baselines and up to a dozen candidates) runs warmup + repeat times: bound the
        # tokens pushed through each, so a typo cannot book the machine for days. 200 M tokens is about
        # two hours of MiniLM FP32 on one core; the default is 1.4 M.
        tokens = self.batch * self.seq_len * (self.warmup_runs + self.repeat_runs)
        if tokens > MAX_BENCH_TOKENS:
            raise ValueError(
                f"batch x seq-len x (warmup + repeats) = {tokens:,} tokens per engine, above the bound of "
                f"{MAX_BENCH_TOKENS:,}: lower --repeats, --batch or --seq-len"
            )
        return self


class EngineResult(BaseModel):
    engine: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    size_mb: float
    load_s: float


class BenchReport(BaseModel):
    settings: BenchSettings
    results: list[EngineResult]
    cpu: dict[str, Any]

    def by_engine(self, engine: str) -> EngineResult:
        for r in self.results:
            if r.engine == engine:
                return r
        raise KeyError(engine)


@dataclass
class Engine:
    """A named way to run one batch. `load` returns the callable; its time is the session load time."""

    name: str
    load: Callable[[], Callable[[], Any]]
    size_bytes: int


def cpu_info() -> dict[str, Any]:
    flags: list[str] = []
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    # INT8 speed depends on these: VNNI makes int8 dot products one instruction (record with every run).
    wanted = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "fma"]
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "vnni": any(f in flags for f in ("avx512_vnni", "avx_vnni")),
    }


def run_benchmark(engines: list[Engine], settings: BenchSettings) -> BenchReport:
    if not engines:
        raise ConfigError("nothing to benchmark: give at least one engine")
    runners: list[Callable[[], Any]] = []
    loads: list[float] = []
    for engine in engines:
        start = time.perf_counter()
        runners.append(engine.load())
        loads.append(time.perf_counter() - start)
    for _ in range(settings.warmup_runs):
        for run in runners:
            run()
    times = [np.empty(settings.repeat_runs) for _ in engines]
    # A new random order each round (seeded: reproducible): each engine runs after every other about
    # equally often. A rotation keeps the neighbours fixed (j always after j-1), and the engine that runs
    # after a big FP32 model or another engine's threads then pays for them in every round: measured,
    # identical OpenVINO IRs were 3-7 % apart depending on which engine preceded them.
    rng = np.random.default_rng(0)
    for i in range(settings.repeat_runs):
        for j in rng.permutation(len(engines)):
            start = time.perf_counter()
            runners[j]()
            times[j][i] = time.perf_counter() - start
    results = []
    for engine, t, load in zip(engines, times, loads, strict=True):
        ms = t * 1000
        results.append(
            EngineResult(
                engine=engine.name,
                p50_ms=float(np.percentile(ms, 50)),
                p95_ms=float(np.percentile(ms, 95)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
                throughput_per_s=float(settings.batch / t.mean()),
                size_mb=engine.size_bytes / 1e6,
                load_s=load,
            )
        )
    return BenchReport(settings=settings, results=results, cpu=cpu_info())


def ort_engine(name: str, path: Path, feeds: dict[str, np.ndarray], threads: int) -> Engine:
    def load() -> Callable[[], Any]:
        from quantgate.runtime import inference_session

        sess = inference_session(path, threads)
        return lambda: sess.run(None, feeds)

    return Engine(name=name, load=load, size_bytes=path.stat().st_size)


def torch_engine(
    name: str, build: Callable[[], Any], feeds: dict[str, np.ndarray], threads: int, size_bytes: int
) -> Engine:
    def load() -> Callable[[], Any]:
        import torch

        # Same thread count as ORT: comparing 1-thread ORT with all-core PyTorch would flatter nothing.
        torch.set_num_threads(threads)
        module = build()
        tensors = [torch.from_numpy(v) for v in feeds.values()]

        def run() -> Any:
            with torch.inference_mode():
                return module(*tensors)

        return run

    return Engine(name=name, load=load, size_bytes=size_bytes)
