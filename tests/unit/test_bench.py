import itertools

import numpy as np
import pytest

from quantgate.bench import BenchSettings, Engine, Request, cpu_info, run_benchmark
from quantgate.errors import ConfigError

ONE = [Request(feeds={"x": np.zeros((1, 4))}, length=4, items=1)]


def _engine(name: str, size: int, calls: list[str], work: int) -> Engine:
    def load():
        def run(feeds):
            calls.append(name)
            np.linalg.svd(np.ones((work, work)))

        return run

    return Engine(name=name, load=load, size_bytes=size)


def test_engines_are_interleaved_and_every_percentile_is_reported():
    calls: list[str] = []
    settings = BenchSettings(warmup_runs=1, repeat_runs=6)
    report = run_benchmark([_engine("a", 10, calls, 8), _engine("b", 20, calls, 8)], settings, ONE)
    timed = calls[2:]  # after one warm-up round of both
    assert len(timed) == 12
    rounds = [timed[i : i + 2] for i in range(0, 12, 2)]
    assert all(sorted(r) == ["a", "b"] for r in rounds)  # every engine once per round
    for r in report.results:
        assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.throughput_per_s > 0
    assert report.by_engine("b").size_mb == pytest.approx(20 / 1e6)


def test_slower_engine_measures_slower():
    calls: list[str] = []
    report = run_benchmark(
        [_engine("small", 1, calls, 4), _engine("big", 1, calls, 160)],
        BenchSettings(warmup_runs=1, repeat_runs=10),
        ONE,
    )
    assert report.by_engine("big").p50_ms > report.by_engine("small").p50_ms


def test_a_round_without_baselines_neither_loads_nor_times_them():
    from quantgate.bench import ONNX_FP32, TORCH_FP32

    calls: list[str] = []
    loaded: list[str] = []

    def loading(engine: Engine) -> Engine:
        def load():
            loaded.append(engine.name)
            return engine.load()

        return Engine(name=engine.name, load=load, size_bytes=1)

    engines = [loading(_engine(n, 1, calls, 4)) for n in (TORCH_FP32, ONNX_FP32, "int8")]
    report = run_benchmark(engines, BenchSettings(warmup_runs=1, repeat_runs=5, baselines=False), ONE)
    assert [r.engine for r in report.results] == ["int8"]
    assert loaded == ["int8"]
    assert set(calls) == {"int8"}
    full = run_benchmark(engines, BenchSettings(warmup_runs=1, repeat_runs=5), ONE)
    assert [r.engine for r in full.results] == [TORCH_FP32, ONNX_FP32, "int8"]


def test_no_engine_is_an_error():
    with pytest.raises(ConfigError):
        run_benchmark([], BenchSettings(), ONE)


def test_cpu_info_records_int8_relevant_flags():
    info = cpu_info()
    assert isinstance(info["vnni"], bool)
    assert set(info["flags"]) <= {
        "avx2",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "fma",
    }


def test_each_engine_runs_after_every_other_about_equally_often():
    """Fixed neighbours bias a benchmark (the engine after a big model pays for it every round): the order
    is drawn anew each round, reproducibly."""
    names = ["a", "b", "c", "d"]
    orders = []
    for _ in range(2):
        calls: list[str] = []
        run_benchmark(
            [_engine(n, 1, calls, 2) for n in names], BenchSettings(warmup_runs=0, repeat_runs=400), ONE
        )
        orders.append(calls)
    assert orders[0] == orders[1]  # seeded
    follows = {(x, y): 0 for x in names for y in names if x != y}
    for i in range(0, len(orders[0]), 4):
        r = orders[0][i : i + 4]
        for x, y in itertools.pairwise(r):
            follows[(x, y)] += 1
    # 400 rounds x 3 neighbour pairs spread over 12 ordered pairs: 100 each on average
    assert min(follows.values()) > 60
