"""Serving profiles (quantgate/bench.py): the requests the benchmark times are the ones serving will see,
drawn reproducibly; a declared profile wins over the default; a profile the model cannot serve is a clear
error before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quantgate.bench import (
    FIXED_PROFILE,
    NAMED_PROFILES,
    BenchSettings,
    Engine,
    Request,
    ServingProfile,
    draw_requests,
    load_profile,
    run_benchmark,
)
from quantgate.errors import ConfigError
from quantgate.tasktypes import check_profile, get_task_type, serving_settings

SENTENCES = [
    "a",
    "a b c",
    "a b c d e f a b c d e f",
    "b c",
    "c d e f a",
    "f e d c b a f e d c b a f e d c b a f e",
]


@pytest.fixture
def assets(tmp_path):
    """A BERT word-piece tokenizer over a tiny vocabulary, saved as an export's side files."""
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdef"]))
    out = tmp_path / "assets"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    return out


def _sts(sentences: list[str]) -> pd.DataFrame:
    half = len(sentences) // 2
    return pd.DataFrame({"sentence1": sentences[:half], "sentence2": sentences[half:], "score": [1.0] * half})


def test_a_heldout_profile_is_deterministic_and_tokenized_as_serving_would(assets):
    """Batch 1: each request is one held-out sentence with no padding at all; batch 4: padded to the
    longest sentence of its own batch, never to a fixed 128."""
    from transformers import AutoTokenizer

    task = get_task_type("sentence-embedding")
    tokenizer = AutoTokenizer.from_pretrained(assets)
    heldout = _sts(SENTENCES)
    settings = BenchSettings(profile=ServingProfile(requests=30))
    first = task.requests(assets, heldout, settings)
    again = task.requests(assets, heldout, settings)
    assert [r.feeds["input_ids"].tolist() for r in first] == [r.feeds["input_ids"].tolist() for r in again]
    served = {tuple(tokenizer(s)["input_ids"]) for s in SENTENCES}
    for r in first:
        assert r.items == 1
        assert tuple(r.feeds["input_ids"][0]) in served  # exactly as serving tokenizes one sentence
        assert r.length == r.feeds["input_ids"].shape[1]
        assert r.feeds["attention_mask"].all()  # no padding at batch 1
    assert len({r.length for r in first}) > 2  # the lengths of the set, not one shape

    batched = task.requests(assets, heldout, BenchSettings(profile=ServingProfile(batch_sizes=[4])))
    for r in batched:
        ids, mask = r.feeds["input_ids"], r.feeds["attention_mask"]
        assert ids.shape[0] == 4
        assert r.items == 4
        assert mask.sum(axis=1).max() == ids.shape[1]  # padded to its longest, no further


def test_the_fixed_profile_is_todays_single_padded_shape(assets):
    task = get_task_type("sentence-embedding")
    settings = BenchSettings(batch=2, seq_len=16, profile=NAMED_PROFILES[FIXED_PROFILE])
    (request,) = task.requests(assets, _sts(SENTENCES), settings)
    assert request.feeds["input_ids"].shape == (2, 16)
    assert (request.length, request.items) == (16, 2)


def test_declared_lengths_and_sample_inputs_shape_the_requests(assets, tmp_path):
    task = get_task_type("sentence-embedding")
    declared = load_profile(_write(tmp_path / "traffic.json", {"lengths": [8, 8, 12], "requests": 40}))
    assert declared.source == "lengths"
    assert declared.name == "traffic"
    requests = task.requests(assets, _sts(SENTENCES), BenchSettings(profile=declared))
    assert {r.length for r in requests} == {8, 12}
    samples = tmp_path / "samples.txt"
    samples.write_text("a b\n\nc d e f a b c\n")
    from_file = load_profile(samples)
    assert (from_file.source, from_file.samples) == ("samples", ["a b", "c d e f a b c"])
    lengths = {r.length for r in task.requests(assets, _sts(SENTENCES), BenchSettings(profile=from_file))}
    assert lengths == {4, 9}  # [CLS] + words + [SEP]


def test_a_declared_profile_overrides_the_default_and_takes_the_tasks_objective():
    text, table = get_task_type("sentence-embedding"), get_task_type("tabular")
    assert serving_settings(text, BenchSettings()).serving == ServingProfile(objective="latency")
    default_table = serving_settings(table, BenchSettings()).serving
    assert (default_table.batch_sizes, default_table.objective) == ([64], "throughput")
    declared = ServingProfile(name="team", batch_sizes=[1, 8])
    resolved = serving_settings(table, BenchSettings(profile=declared)).serving
    assert (resolved.name, resolved.batch_sizes, resolved.objective) == ("team", [1, 8], "throughput")
    explicit = ServingProfile(name="team", objective="latency")
    assert serving_settings(table, BenchSettings(profile=explicit)).serving.objective == "latency"


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"lengths": []}, "lengths: List should have at least 1 item"),
        ({"batch_sizes": [0]}, "batch sizes must be 1..64, got [0]"),
        ({"batch_sizes": []}, "batch_sizes"),
        ({"objective": "fastest"}, "latency"),
        ({"lengths": [0, 5]}, "lengths must be at least 1 token"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_a_bad_profile_file_is_a_clear_error(tmp_path, data, words):
    with pytest.raises(ConfigError, match="not a valid serving profile") as info:
        load_profile(_write(tmp_path / "bad.json", data))
    assert words in str(info.value)


def test_an_unknown_profile_name_or_an_empty_sample_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"neither a named profile \(heldout, b1-s128\) nor a file"):
        load_profile("b1-s999")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="holds no sample inputs"):
        load_profile(empty)


def test_lengths_past_the_models_maximum_or_for_a_table_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    text, table = get_task_type("sentence-embedding"), get_task_type("tabular")
    check_profile(text, tmp_path, ServingProfile(source="lengths", lengths=[16, 128]))
    with pytest.raises(ConfigError, match="lengths up to 300 tokens, past the model's maximum of 128"):
        check_profile(text, tmp_path, ServingProfile(source="lengths", lengths=[16, 300]))
    with pytest.raises(ConfigError, match="mean nothing to a tabular model"):
        check_profile(table, tmp_path, ServingProfile(source="lengths", lengths=[16]))
    check_profile(table, tmp_path, ServingProfile(batch_sizes=[1, 256 // 4]))


def test_every_engine_times_the_same_requests_and_latency_is_reported_by_length():
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def engine(name: str, per_token_s: float) -> Engine:
        def load():
            def run(feeds):
                seen[name].append(feeds["x"].shape[1])
                # Work that grows with the tokens (singular values only: the full V of an 8 x 10008
                # matrix is 10008 x 10008, and made this one test take 100 s).
                columns = 8 + int(feeds["x"].shape[1] * per_token_s * 1e4)
                np.linalg.svd(np.ones((8, columns)), compute_uv=False)

            return run

        return Engine(name=name, load=load, size_bytes=1)

    requests = [Request(feeds={"x": np.zeros((1, n))}, length=n, items=1) for n in (4, 12, 40, 100)]
    settings = BenchSettings(warmup_runs=0, repeat_runs=40)
    report = run_benchmark([engine("a", 1e-3), engine("b", 1e-2)], settings, requests)
    assert seen["a"] == seen["b"] == [4, 12, 40, 100] * 10
    for r in report.results:
        assert [(s.low, s.high, s.requests) for s in r.by_length] == [
            (0, 8, 10), (8, 16, 10), (32, 64, 10), (64, 128, 10),
        ]  # fmt: skip
        assert r.objective_ms == r.p50_ms
    assert report.requests["length_max"] == 100
    throughput = run_benchmark(
        [engine("a", 1e-3)],
        BenchSettings(warmup_runs=0, repeat_runs=8, profile=ServingProfile(objective="throughput")),
        [Request(feeds={"x": np.zeros((4, 3))}, length=3, items=4)],
    ).results[0]
    assert throughput.objective_ms == pytest.approx(throughput.p50_ms / 4)  # ms per item at the median


def test_a_stall_does_not_decide_throughput():
    """One request stalled 200x (another process took the core) moves items/s over the sum, not the
    objective: the candidate that is faster on 19 of 20 requests stays the faster one."""
    import time

    from quantgate.bench import Engine

    calls = {"fast": 0}

    def fast_load():
        def run(feeds):
            calls["fast"] += 1
            time.sleep(0.2 if calls["fast"] == 5 else 1e-3)

        return run

    def slow_load():
        return lambda feeds: time.sleep(2e-3)

    engines = [
        Engine(name="fast", load=fast_load, size_bytes=1),
        Engine(name="slow", load=slow_load, size_bytes=1),
    ]
    settings = BenchSettings(warmup_runs=0, repeat_runs=20, profile=ServingProfile(objective="throughput"))
    report = run_benchmark(engines, settings, [Request(feeds={"x": np.zeros((8, 3))}, length=3, items=8)])
    fast, slow = report.by_engine("fast"), report.by_engine("slow")
    assert fast.throughput_per_s < slow.throughput_per_s  # the sum is dominated by the stall
    assert fast.objective_ms < slow.objective_ms  # the objective is not


def test_throughput_weighs_each_batch_size_by_the_requests_the_profile_sends():
    """1 request at batch 1 and 9 at batch 32: the batch-32 time per item is what the traffic lives with."""
    import time

    from quantgate.bench import Engine

    def engine(name: str, single_s: float, batch_s: float) -> Engine:
        return Engine(
            name=name,
            load=lambda: lambda feeds: time.sleep(single_s if feeds["x"].shape[0] == 1 else batch_s),
            size_bytes=1,
        )

    requests = [Request(feeds={"x": np.zeros((1, 3))}, length=3, items=1)] + [
        Request(feeds={"x": np.zeros((32, 3))}, length=3, items=32) for _ in range(9)
    ]
    settings = BenchSettings(warmup_runs=0, repeat_runs=10, profile=ServingProfile(objective="throughput"))
    # FP32-like: 5 ms alone, 40 ms a batch; INT8-like: 6 ms alone, 30 ms a batch (25 % faster per item).
    report = run_benchmark([engine("fp32", 5e-3, 40e-3), engine("int8", 6e-3, 30e-3)], settings, requests)
    fp32, int8 = report.by_engine("fp32"), report.by_engine("int8")
    assert fp32.objective_ms > 1.2 * int8.objective_ms  # (9*40 + 5) / (9*30 + 6) = 1.32; unweighted, 0.90


def test_a_profile_cannot_draw_from_an_empty_set_or_a_task_without_sample_inputs():
    with pytest.raises(ConfigError, match="no rows"):
        draw_requests(BenchSettings(), 0, lambda rows, pad_to: {})
    samples = ServingProfile(source="samples", samples=["x"])
    with pytest.raises(ConfigError, match="takes no file of sample inputs"):
        draw_requests(BenchSettings(profile=samples), 5, lambda rows, pad_to: {"input_ids": np.zeros((1, 2))})


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"source": "heldout", "lengths": [12]}, "lengths are read only by source 'lengths'"),
        ({"source": "fixed", "batch_sizes": [8]}, "a fixed profile's batch is BenchSettings.batch"),
        ({"source": "lengths", "lengths": [8], "samples": ["a"]}, "read only by source 'samples'"),
    ],
)
def test_a_profile_field_its_source_would_ignore_is_refused_not_dropped(tmp_path, data, words):
    """A review found these accepted and then ignored (or, for a negative seed, failing every run late)."""
    with pytest.raises(ConfigError, match="not a valid serving profile") as info:
        load_profile(_write(tmp_path / "p.json", data))
    assert words in str(info.value)


def test_samples_in_json_select_the_samples_source_and_a_file_name_with_spaces_is_fine(tmp_path):
    assert load_profile(_write(tmp_path / "p.json", {"samples": ["a b"]})).source == "samples"
    spaced = tmp_path / "prod traffic.txt"
    spaced.write_text("a b\n")
    assert load_profile(spaced).name == "prod-traffic"


def test_reports_record_sample_inputs_by_digest_not_verbatim():
    """Sample requests may be real users' text: the report and the manifest keep their digest and count."""
    profile = ServingProfile(source="samples", samples=["private text", "more"])
    report = run_benchmark(
        [Engine(name="e", load=lambda: lambda feeds: None, size_bytes=1)],
        BenchSettings(warmup_runs=0, repeat_runs=5, profile=profile),
        [Request(feeds={"x": np.zeros((1, 2))}, length=2, items=1)],
    )
    recorded = report.settings.profile
    assert recorded.samples is None
    assert recorded.samples_count == 2
    assert recorded.samples_sha256 is not None
    assert "private" not in report.model_dump_json()


def test_latency_over_mixed_batch_sizes_weighs_each_batch_size_alike():
    def engine(name: str) -> Engine:
        def load():
            def run(feeds):
                np.linalg.svd(np.ones((8, 8 * feeds["x"].shape[0])))

            return run

        return Engine(name=name, load=load, size_bytes=1)

    requests = [Request(feeds={"x": np.zeros((b, 3))}, length=3, items=b) for b in (1, 1, 1, 8)]
    (r,) = run_benchmark([engine("a")], BenchSettings(warmup_runs=0, repeat_runs=40), requests).results
    assert r.p50_ms < r.objective_ms  # 3 in 4 requests are batch 1: the pooled median ignores batch 8


def test_only_what_is_run_is_drawn_and_the_token_bound_holds_for_drawn_profiles():
    calls = []

    def encode(rows, pad_to):
        calls.append(len(rows))
        return {"input_ids": np.zeros((len(rows), pad_to or 4), dtype=np.int64)}

    many = ServingProfile(requests=10_000)
    drawn = draw_requests(BenchSettings(warmup_runs=2, repeat_runs=20, profile=many), 50, encode)
    assert len(drawn) == len(calls) == 20
    huge = ServingProfile(source="lengths", lengths=[512], batch_sizes=[64], requests=100)
    with pytest.raises(ConfigError, match="tokens \\(or rows\\) through each engine, above the bound"):
        draw_requests(BenchSettings(repeat_runs=10_000, profile=huge), 50, encode)
