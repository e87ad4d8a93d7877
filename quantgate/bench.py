"""CPU latency benchmark: every engine on the same requests, interleaved round by round, so that noise from
a shared machine lands on all of them alike (measure the baseline, quantize, re-measure on the same
harness).

What is timed is a *serving profile* (`ServingProfile`): the requests the model will serve. By default they
are drawn from the held-out set itself, each tokenized as serving would (no padding at batch 1, padded to
the longest input of its batch above), so a candidate that only wins at one padded shape does not win
here. A fixed shape (`b1-s128`: batch 1, every input padded to 128 tokens) stays available by name, and a
team can declare batch sizes, a length distribution or a file of sample inputs. The profile's objective
says what "fastest" means: latency (p50 over the requests) or throughput (items per second).
"""

from __future__ import annotations

import itertools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantgate.errors import ConfigError

MAX_BENCH_TOKENS = 200_000_000

# Engine names, spelled once: the FP32 export every candidate is timed against, the framework model when
# the task type times it too, and the serving version (+ its version; '@' is never in a recipe name).
ONNX_FP32 = "onnx-fp32"
TORCH_FP32 = "pytorch-fp32"
BASELINES = (TORCH_FP32, ONNX_FP32)
CHAMPION_ENGINE = "champion@"


Objective = Literal["latency", "throughput"]
ProfileSource = Literal["heldout", "fixed", "lengths", "samples"]
MAX_PROFILE_BATCH = 64
MAX_SAMPLE_CHARS = 20_000  # a request past this is no sentence; the tokenizer cuts at 512 tokens anyway
# Distinct requests held in memory at once (their feeds); past it the drawn requests are reused in turn.
MAX_REQUEST_BYTES = 256 * 2**20


class ServingProfile(BaseModel):
    """The requests a model will serve, and what "fastest" means on them.

    - `heldout` (the default): requests drawn from the held-out set, as serving tokenizes them;
    - `fixed`: every request one batch of `BenchSettings.batch` inputs padded to `BenchSettings.seq_len`
      (the named profile `b1-s128` is today's shape);
    - `lengths`: held-out inputs cut and padded to lengths drawn from `lengths` (tokens; repeat a length
      to weight it), for a team that knows its traffic's length distribution;
    - `samples`: inputs from a file of sample requests (one per line), tokenized as serving would.
    Batch sizes are drawn from `batch_sizes` per request. `objective` None takes the task type's default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("heldout", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: ProfileSource = "heldout"
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=16)
    lengths: list[int] | None = Field(None, min_length=1, max_length=10_000)
    samples: list[str] | None = Field(None, min_length=1, max_length=100_000)
    requests: int = Field(100, ge=1, le=10_000, description="distinct requests drawn for the benchmark")
    objective: Objective | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)
    samples_sha256: str | None = Field(
        None, description="in reports and manifests the sample inputs are replaced by their digest and count"
    )
    samples_count: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ServingProfile:
        bad = [b for b in self.batch_sizes if not 1 <= b <= MAX_PROFILE_BATCH]
        if bad:
            raise ValueError(f"batch sizes must be 1..{MAX_PROFILE_BATCH}, got {bad}")
        if self.lengths is not None and min(self.lengths) < 1:
            raise ValueError(f"lengths must be at least 1 token, got {min(self.lengths)}")
        if self.source == "lengths" and not self.lengths:
            raise ValueError("a `lengths` profile needs a non-empty list of lengths")
        if self.source == "samples" and not (self.samples or self.samples_sha256):
            raise ValueError("a `samples` profile needs at least one sample input")
        if self.lengths is not None and self.source != "lengths":
            raise ValueError(f"lengths are read only by source 'lengths', not {self.source!r}: drop one")
        if self.samples is not None and self.source != "samples":
            raise ValueError(f"samples are read only by source 'samples', not {self.source!r}: drop one")
        if self.source == "fixed" and self.batch_sizes != [1]:
            raise ValueError("a fixed profile's batch is BenchSettings.batch (--batch), not batch_sizes")
        if self.samples is not None and any(len(x) > MAX_SAMPLE_CHARS for x in self.samples):
            raise ValueError(f"a sample input is longer than {MAX_SAMPLE_CHARS:,} characters: cut it")
        if self.samples is not None and any(not str(x).strip() for x in self.samples):
            raise ValueError("sample inputs must not be blank")
        return self

    def published(self) -> ServingProfile:
        """As reports and manifests record it: sample inputs (real requests, perhaps personal data) replaced
        by their digest and count."""
        if not self.samples:
            return self
        import hashlib

        digest = hashlib.sha256("\n".join(self.samples).encode()).hexdigest()
        return self.model_copy(
            update={"samples": None, "samples_sha256": digest, "samples_count": len(self.samples)}
        )

    def describe(self, settings: BenchSettings | None = None) -> str:
        batches = "/".join(map(str, self.batch_sizes))
        if self.source == "fixed":
            shape = f"b{settings.batch}/s{settings.seq_len}" if settings else "fixed shape"
            return f"{self.name} ({shape}, {self.objective or 'latency'})"
        what = {
            "heldout": "held-out inputs at their own lengths",
            "lengths": f"declared lengths ({len(self.lengths or [])} values)",
            "samples": f"{len(self.samples or []) or self.samples_count} sample inputs",
        }[self.source]
        objective = self.objective or "latency"
        return f"{self.name} ({what}, batch {batches}, {self.requests} requests, {objective})"


# Named profiles a person can give as `--profile NAME`: the default, and today's fixed shape.
FIXED_PROFILE = "b1-s128"
NAMED_PROFILES: dict[str, ServingProfile] = {
    "heldout": ServingProfile(),
    FIXED_PROFILE: ServingProfile(name=FIXED_PROFILE, source="fixed"),
}


def load_profile(value: str | Path) -> ServingProfile:
    """`--profile`: a named profile, a JSON file (ServingProfile's fields), or a text file of sample
    inputs (one per line)."""
    text = str(value)
    if text in NAMED_PROFILES:
        return NAMED_PROFILES[text]
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"--profile {text!r} is neither a named profile ({', '.join(NAMED_PROFILES)}) nor a file: give "
            'a name, a JSON file like {"batch_sizes": [1, 8], "lengths": [12, 30, 64]}, or a text file of '
            "sample inputs, one per line"
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the profile file {path} ({exc}): save it as UTF-8 text") from None
    import re

    if path.suffix.lower() == ".json":
        import json

        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("it must be a JSON object")
            if data.get("lengths") and "source" not in data:
                data["source"] = "lengths"
            if data.get("samples") and "source" not in data:
                data["source"] = "samples"
            stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-")[:64]
            data.setdefault("name", stem or "declared")
            return ServingProfile.model_validate(data)
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, ValidationError):
                error = exc.errors()[0]
                field = ".".join(str(x) for x in error["loc"])
                detail = f"{field}: {error['msg']}" if field else error["msg"]
            else:
                detail = str(exc)
            raise ConfigError(
                f"profile file {path.name} is not a valid serving profile: {detail}. Fields: batch_sizes, "
                "lengths, requests, objective (latency or throughput)"
            ) from None
    samples = [line for line in raw.splitlines() if line.strip()]
    if not samples:
        raise ConfigError(f"profile file {path.name} holds no sample inputs: one request per line")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-")[:64] or "samples"
    try:
        return ServingProfile(name=name, source="samples", samples=samples)
    except ValidationError as exc:
        raise ConfigError(f"profile file {path.name}: {exc.errors()[0]['msg']}") from None


class BenchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: int = Field(1, ge=1, le=64, description="the fixed shape's batch (the `fixed` profile)")
    seq_len: int = Field(
        128, ge=1, le=512, description="the fixed shape's tokens per input (BERT-style models stop at 512)"
    )
    threads: int = Field(1, ge=1, le=256)
    warmup_runs: int = Field(10, ge=0, le=1_000)
    repeat_runs: int = Field(100, ge=5, le=10_000)
    profile: ServingProfile | None = Field(
        None, description="the serving profile; None = the registration's, else the held-out default"
    )
    baselines: bool = Field(
        True,
        description="time the FP32 baselines beside the candidates (the fixed-shape comparison round, which "
        "only ranks candidates, leaves them out)",
    )

    @property
    def serving(self) -> ServingProfile:
        return self.profile or NAMED_PROFILES["heldout"]

    @property
    def objective(self) -> Objective:
        return self.serving.objective or "latency"

    def fixed_shape(self) -> BenchSettings:
        """The same settings on the fixed shape (the report's comparison with b1/s128)."""
        return self.model_copy(update={"profile": NAMED_PROFILES[FIXED_PROFILE]})

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


class LengthStat(BaseModel):
    """One engine's latency on the requests whose longest input falls in (`low`, `high`] tokens."""

    low: int
    high: int
    requests: int
    p50_ms: float


class EngineResult(BaseModel):
    engine: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    size_mb: float
    load_s: float
    objective_ms: float | None = Field(
        None,
        description="what 'fastest' is judged on, lower is better: p50 ms per request (latency) or ms per "
        "item, each batch size's requests at their median (throughput); None in reports written before "
        "serving profiles (then p50_ms)",
    )
    by_length: list[LengthStat] = Field(default_factory=list)

    @property
    def speed(self) -> float:
        return self.p50_ms if self.objective_ms is None else self.objective_ms


class BenchReport(BaseModel):
    settings: BenchSettings
    results: list[EngineResult]
    cpu: dict[str, Any]
    requests: dict[str, Any] = Field(
        default_factory=dict, description="the timed requests: count, batch sizes, length percentiles"
    )

    def describe(self) -> str:
        """What was timed, in one line: the profile, its requests, threads and runs. A report written before
        serving profiles has none: it was timed at its fixed shape."""
        s, r = self.settings, self.requests
        if s.profile is None:
            return (
                f"batch {s.batch}, seq {s.seq_len} (fixed shape); {s.threads} thread(s), {s.repeat_runs} "
                "interleaved runs"
            )
        lengths = (
            f"; lengths p50 {r['length_p50']:g}, p95 {r['length_p95']:g}, max {r['length_max']}"
            if r and s.serving.source != "fixed"
            else ""
        )
        return (
            f"profile {s.serving.describe(s)}{lengths}; {s.threads} thread(s), {s.repeat_runs} interleaved "
            "runs"
        )

    def by_engine(self, engine: str) -> EngineResult:
        for r in self.results:
            if r.engine == engine:
                return r
        raise KeyError(engine)


@dataclass
class Engine:
    """A named way to run one request. `load` returns the callable taking a request's feeds; its time is
    the session load time."""

    name: str
    load: Callable[[], Callable[[dict[str, np.ndarray]], Any]]
    size_bytes: int


@dataclass(frozen=True)
class Request:
    """One request of a profile: its feeds, its length (tokens of its longest input; rows or images where
    length means nothing) and how many items it carries (the batch)."""

    feeds: dict[str, np.ndarray]
    length: int
    items: int


LENGTH_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1 << 30)


def _by_length(ms: np.ndarray, lengths: np.ndarray) -> list[LengthStat]:
    out = []
    for low, high in itertools.pairwise(LENGTH_EDGES):
        mask = (lengths > low) & (lengths <= high)
        if mask.any():
            out.append(
                LengthStat(low=low, high=high, requests=int(mask.sum()), p50_ms=float(np.median(ms[mask])))
            )
    return out


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


def run_benchmark(engines: list[Engine], settings: BenchSettings, requests: list[Request]) -> BenchReport:
    """Every engine on the same requests: round i times request i (cycling through the profile's
    requests, whose order is drawn once, seeded) on every engine, in a new seeded random engine order."""
    if not settings.baselines:
        engines = [e for e in engines if e.name not in BASELINES]  # left out before anything loads
    if not engines:
        raise ConfigError("nothing to benchmark: give at least one engine")
    if not requests:
        raise ConfigError("nothing to benchmark: the serving profile gave no request")
    runners: list[Callable[[dict[str, np.ndarray]], Any]] = []
    loads: list[float] = []
    for engine in engines:
        start = time.perf_counter()
        runners.append(engine.load())
        loads.append(time.perf_counter() - start)
    for i in range(settings.warmup_runs):
        for run in runners:
            run(requests[i % len(requests)].feeds)
    times = [np.empty(settings.repeat_runs) for _ in engines]
    # A new random order each round (seeded: reproducible): each engine runs after every other about
    # equally often. A rotation keeps the neighbours fixed (j always after j-1), and the engine that runs
    # after a big FP32 model or another engine's threads then pays for them in every round: measured,
    # identical OpenVINO IRs were 3-7 % apart depending on which engine preceded them.
    rng = np.random.default_rng(0)
    timed = [requests[i % len(requests)] for i in range(settings.repeat_runs)]
    for i, request in enumerate(timed):
        for j in rng.permutation(len(engines)):
            start = time.perf_counter()
            runners[j](request.feeds)
            times[j][i] = time.perf_counter() - start
    lengths = np.array([r.length for r in timed])
    items = float(sum(r.items for r in timed))
    results = []
    for engine, t, load in zip(engines, times, loads, strict=True):
        ms = t * 1000
        throughput = items / float(t.sum())
        p50 = float(np.percentile(ms, 50))
        # One median over a mix of batch sizes lands between the classes; each batch size's own p50,
        # averaged, weighs them alike.
        batches = np.array([r.items for r in timed])
        latency = float(np.mean([np.median(ms[batches == b]) for b in np.unique(batches)]))
        # Throughput as time per item with each batch size's requests taken at their median: a stall on a
        # shared machine (one request 50x slower) moves a sum over the requests, not what a serving replica
        # sustains; the profile's mix still weighs each batch size by the requests it sends.
        sizes = np.unique(batches)
        served = sum(np.median(ms[batches == b]) * np.sum(batches == b) for b in sizes)
        per_item = float(served / batches.sum())
        results.append(
            EngineResult(
                engine=engine.name,
                p50_ms=p50,
                p95_ms=float(np.percentile(ms, 95)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
                throughput_per_s=throughput,
                size_mb=engine.size_bytes / 1e6,
                load_s=load,
                objective_ms=latency if settings.objective == "latency" else per_item,
                by_length=_by_length(ms, lengths),
            )
        )
    return BenchReport(
        settings=settings.model_copy(update={"profile": settings.profile.published()})
        if settings.profile
        else settings,
        results=results,
        cpu=cpu_info(),
        requests={
            "count": len(requests),
            "timed": len(timed),
            "batch_sizes": sorted({r.items for r in requests}),
            "length_p50": float(np.percentile([r.length for r in requests], 50)),
            "length_p95": float(np.percentile([r.length for r in requests], 95)),
            "length_max": max(r.length for r in requests),
        },
    )


def draw_requests(
    settings: BenchSettings,
    rows: int,
    encode: Callable[[list[int], int | None], dict[str, np.ndarray]],
    length_of: Callable[[dict[str, np.ndarray]], int] | None = None,
    samples: Callable[[list[str], int | None], dict[str, np.ndarray]] | None = None,
) -> list[Request]:
    """A profile's requests for a task type. `encode(rows, pad_to)` makes one request's feeds from held-out
    rows: pad_to None = as serving tokenizes (no padding for one input, the batch's longest above),
    pad_to=L = cut and padded to L tokens. `samples(texts, pad_to)` does the same from sample inputs.
    `length_of` measures a request (default: its `input_ids`' width)."""
    profile = settings.serving
    length_of = length_of or (lambda feeds: int(feeds["input_ids"].shape[1]))

    def request(feeds: dict[str, np.ndarray], items: int) -> Request:
        return Request(feeds=feeds, length=length_of(feeds), items=items)

    if rows < 1 and profile.source != "samples":
        raise ConfigError("the serving profile draws from the held-out set, which has no rows")
    if profile.source == "fixed":
        return [request(encode([i % rows for i in range(settings.batch)], settings.seq_len), settings.batch)]
    rng = np.random.default_rng(profile.seed)
    out: list[Request] = []
    held = 0
    # Only what is run is drawn (warm-up and timed runs cycle through the requests), and at most
    # MAX_REQUEST_BYTES of feeds are held: past it the drawn requests are reused in turn.
    for _ in range(min(profile.requests, max(settings.warmup_runs, settings.repeat_runs))):
        if held > MAX_REQUEST_BYTES:
            break
        batch = int(rng.choice(profile.batch_sizes))
        pad_to = int(rng.choice(profile.lengths)) if profile.source == "lengths" and profile.lengths else None
        if profile.source == "samples":
            if samples is None:
                raise ConfigError(
                    "this task type takes no file of sample inputs: declare batch sizes (and lengths) instead"
                )
            texts = profile.samples or []
            picked = [texts[int(k)] for k in rng.choice(len(texts), size=batch)]
            out.append(request(samples(picked, None), batch))
        else:
            picked_rows = [int(k) for k in rng.choice(rows, size=batch, replace=rows < batch)]
            out.append(request(encode(picked_rows, pad_to), batch))
        held += sum(v.nbytes for v in out[-1].feeds.values())
    runs = settings.warmup_runs + settings.repeat_runs
    tokens = sum(out[i % len(out)].items * out[i % len(out)].length for i in range(runs))
    if tokens > MAX_BENCH_TOKENS:
        raise ConfigError(
            f"the serving profile pushes {tokens:,} tokens (or rows) through each engine, above the bound of "
            f"{MAX_BENCH_TOKENS:,}: lower --repeats or the profile's batch sizes and lengths"
        )
    return out


def ort_engine(name: str, path: Path, threads: int) -> Engine:
    def load() -> Callable[[dict[str, np.ndarray]], Any]:
        from quantgate.runtime import inference_session

        sess = inference_session(path, threads)
        return lambda feeds: sess.run(None, feeds)

    from quantgate.export import model_files_size

    return Engine(name=name, load=load, size_bytes=model_files_size(path))


def torch_engine(name: str, build: Callable[[], Any], threads: int, size_bytes: int) -> Engine:
    def load() -> Callable[[dict[str, np.ndarray]], Any]:
        import torch

        # Same thread count as ORT: comparing 1-thread ORT with all-core PyTorch would flatter nothing.
        torch.set_num_threads(threads)
        module = build()

        def run(feeds: dict[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                return module(*(torch.from_numpy(v) for v in feeds.values()))

        return run

    return Engine(name=name, load=load, size_bytes=size_bytes)
