"""Task types: the seam between "what kind of model is this" and the pipeline.

A task type knows its held-out schema and format, how to export its model, how to score an ONNX file on
its held-out set (parity outputs and the task metric) and how to feed the benchmark. The flow only asks
for `get_task_type(registration.task)`; classifiers, NER, scikit-learn and CNN models add a class here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from quantgate.bench import BenchReport, BenchSettings, ort_engine, run_benchmark, torch_engine
from quantgate.errors import ConfigError, HeldoutValidationError
from quantgate.evaluate import ParityReport, embed_texts, parity_report, spearman
from quantgate.export import ExportResult, build_embedding_module, export_sentence_embedding, tokenize
from quantgate.heldout import HeldoutSchema
from quantgate.stats import bootstrap_indices, percentile_interval, spearman_resampled, wilson_interval

Interval = tuple[float, float]


def _half_width(interval: Interval | None) -> float:
    return (interval[1] - interval[0]) / 2 if interval else float("nan")


MIN_SLICE_ROWS = 50  # a smaller slice's drop is noise: it is shown, not gated


class SliceResult(BaseModel):
    """The task metric on one subgroup of the evaluation rows (a slice column's value, a length bucket)."""

    name: str
    rows: int
    task_metric_fp32: float
    task_metric_candidate: float
    drop: float
    drop_interval: Interval | None = None
    gated: bool = Field(description=f"counted by the max-slice-drop gate (at least {MIN_SLICE_ROWS} rows)")


class Evaluation(BaseModel):
    task_metric: str
    task_metric_fp32: float
    task_metric_candidate: float
    parity: ParityReport
    seconds: float
    rows: int = 0
    task_metric_fp32_interval: Interval | None = None
    task_metric_drop_interval: Interval | None = None
    neighbour_agreement_interval: Interval | None = None
    slices: list[SliceResult] = Field(default_factory=list)
    champion_version: str | None = None
    task_metric_champion: float | None = None
    champion_drop_interval: Interval | None = Field(
        None, description="champion minus candidate on the same resamples: > 0 means worse than the champion"
    )

    def max_slice_drop(self) -> float:
        """The worst drop among slices large enough to judge; the overall drop when none is."""
        gated = [s.drop for s in self.slices if s.gated]
        return max(gated) if gated else self.task_metric_fp32 - self.task_metric_candidate

    def metrics(self) -> dict[str, float]:
        """The flat metric dict the gates read (intervals as `<metric>_lo` / `_hi`)."""
        out = {
            "task_metric_fp32": self.task_metric_fp32,
            "task_metric_candidate": self.task_metric_candidate,
            "task_metric_drop": self.task_metric_fp32 - self.task_metric_candidate,
            "max_abs_diff": self.parity.max_abs_diff,
            "mean_abs_diff": self.parity.mean_abs_diff,
            "mean_cosine": self.parity.mean_cosine,
            "min_cosine": self.parity.min_cosine,
            "neighbour_agreement": self.parity.neighbour_agreement,
            "task_metric_fp32_half_width": _half_width(self.task_metric_fp32_interval),
            "task_metric_drop_half_width": _half_width(self.task_metric_drop_interval),
            "max_slice_drop": self.max_slice_drop(),
        }
        if self.task_metric_champion is not None:
            out["champion_drop"] = self.task_metric_champion - self.task_metric_candidate
        for name, interval in (
            ("task_metric_fp32", self.task_metric_fp32_interval),
            ("task_metric_drop", self.task_metric_drop_interval),
            ("neighbour_agreement", self.neighbour_agreement_interval),
            ("champion_drop", self.champion_drop_interval),
        ):
            if interval is not None:
                out[f"{name}_lo"], out[f"{name}_hi"] = interval
        return out


BASELINES = ("pytorch-fp32", "onnx-fp32")


CHAMPION_ENGINE = "champion@"  # + version: '@' never appears in a recipe name


def speed_metrics(bench: BenchReport, engine: str) -> dict[str, float]:
    """Speed of one candidate against the baselines (and the champion) of the same interleaved benchmark."""
    torch_fp32, onnx_fp32, candidate = (bench.by_engine(e) for e in (*BASELINES, engine))
    out = {
        "p95_speedup_vs_onnx_fp32": onnx_fp32.p95_ms / candidate.p95_ms,
        "p50_speedup_vs_onnx_fp32": onnx_fp32.p50_ms / candidate.p50_ms,
        "p50_speedup_vs_torch_fp32": torch_fp32.p50_ms / candidate.p50_ms,
        "size_ratio_vs_onnx_fp32": onnx_fp32.size_mb / candidate.size_mb,
    }
    champion = next((r for r in bench.results if r.engine.startswith(CHAMPION_ENGINE)), None)
    if champion is not None:
        out["p50_ratio_vs_champion"] = candidate.p50_ms / champion.p50_ms
    return out


class Reference(BaseModel):
    """The FP32 ONNX model's outputs on the evaluation split: computed once, compared with every candidate."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    outputs: np.ndarray
    task_metric: float
    seconds: float
    interval: Interval | None = None  # the FP32 task metric's 95 % bootstrap interval
    resampled: np.ndarray | None = None  # the FP32 task metric on each bootstrap resample
    champion_version: str | None = None  # the serving version, scored on the same rows
    champion_metric: float | None = None
    champion_resampled: np.ndarray | None = None


class TaskType(Protocol):
    name: str
    heldout_format: str
    schema: HeldoutSchema

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult: ...

    def calibration_feeds(
        self, tokenizer_dir: Path, calibration: pd.DataFrame
    ) -> list[dict[str, np.ndarray]]: ...

    def reference(
        self, fp32: Path, tokenizer_dir: Path, heldout: pd.DataFrame, threads: int
    ) -> Reference: ...

    def evaluate(
        self,
        reference: Reference,
        candidate: Path,
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        abs_tol: float,
        mean_tol: float,
        threads: int,
    ) -> Evaluation: ...

    def benchmark(
        self,
        model_dir: Path,
        fp32: Path,
        candidates: dict[str, Path],
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        settings: BenchSettings,
        allow_pickle: bool = False,
    ) -> BenchReport: ...

    def score_champion(
        self,
        reference: Reference,
        version: str,
        model: Path,
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        threads: int,
    ) -> Reference: ...


class SentenceEmbedding:
    """Bi-encoders (sentence-transformers style): STS pairs, metric = Spearman(cosine, gold score)."""

    name = "sentence-embedding"
    heldout_format = "sts-tsv"
    schema = HeldoutSchema(
        columns={"score": "score", "sentence1": "text", "sentence2": "text"},
        score_min=0.0,
        score_max=5.0,
        min_rows=10,
        unique_columns=["score", "sentence1", "sentence2"],
        slice_columns=["genre"],
    )
    export_samples = 32
    eval_max_length = 256

    @staticmethod
    def texts(heldout: pd.DataFrame) -> list[str]:
        return [*heldout["sentence1"].astype(str), *heldout["sentence2"].astype(str)]

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        texts = self.texts(heldout)
        # Spread the parity samples over short and long texts: a graph that only breaks on long inputs
        # (a wrongly static axis) must be caught here.
        by_length = sorted(texts, key=len)
        step = max(1, len(by_length) // self.export_samples)
        return export_sentence_embedding(
            model_dir, out_dir, by_length[::step][: self.export_samples], atol=atol, allow_pickle=allow_pickle
        )

    calibration_batch = 8
    calibration_max_length = 128

    def calibration_feeds(
        self, tokenizer_dir: Path, calibration: pd.DataFrame
    ) -> list[dict[str, np.ndarray]]:
        """Both sentences of each calibration pair, in batches padded to one common length: ORT's
        histogram calibrators (Entropy, Percentile) need every batch to have the same shape."""
        from transformers import AutoTokenizer

        if calibration.empty:
            return []
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        texts = self.texts(calibration)
        longest = max(
            len(tokenizer(t, truncation=True, max_length=self.calibration_max_length)["input_ids"])
            for t in texts
        )
        b = self.calibration_batch
        usable = texts[: max(b, len(texts) // b * b)]
        return [
            tokenize(tokenizer, usable[i : i + b], longest, pad_to_max=True) for i in range(0, len(usable), b)
        ]

    def reference(self, fp32: Path, tokenizer_dir: Path, heldout: pd.DataFrame, threads: int) -> Reference:
        import time

        from transformers import AutoTokenizer

        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        outputs = embed_texts(
            fp32, tokenizer, self.texts(heldout), max_length=self.eval_max_length, threads=threads
        )
        scores, gold = self._scores(outputs, heldout), self._gold(heldout)
        if np.ptp(scores) <= 1e-9 or np.ptp(gold) == 0:
            raise HeldoutValidationError(
                "the held-out set cannot rank anything: "
                + (
                    "every pair has the same gold score"
                    if np.ptp(gold) == 0
                    else "the FP32 model gives every pair the same similarity (the texts carry nothing it "
                    "can read, e.g. only emoji or zero-width characters)"
                )
                + ". Register a held-out set of real, varied pairs",
                ["degenerate held-out set"],
            )
        resampled = spearman_resampled(gold, scores, bootstrap_indices(len(gold)))
        return Reference(
            outputs=outputs,
            task_metric=spearman(scores, gold),
            seconds=time.perf_counter() - start,
            interval=percentile_interval(resampled),
            resampled=resampled,
        )

    def score_champion(
        self,
        reference: Reference,
        version: str,
        model: Path,
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        threads: int,
    ) -> Reference:
        """The serving version's task metric on this version's evaluation rows and resamples."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        outputs = embed_texts(
            model, tokenizer, self.texts(heldout), max_length=self.eval_max_length, threads=threads
        )
        scores, gold = self._scores(outputs, heldout), self._gold(heldout)
        return reference.model_copy(
            update={
                "champion_version": version,
                "champion_metric": spearman(scores, gold),
                "champion_resampled": spearman_resampled(gold, scores, bootstrap_indices(len(gold))),
            }
        )

    def _slices(self, heldout: pd.DataFrame) -> dict[str, np.ndarray]:
        """Row masks: one per value of each slice column, and three pair-length buckets (tertiles)."""
        out = {}
        for column in self.schema.slice_columns:
            if column in heldout:
                values = heldout[column].astype(str).to_numpy()
                out |= {f"{column}={v}": values == v for v in sorted(set(values))}
        lengths = (
            heldout["sentence1"].astype(str).str.len() + heldout["sentence2"].astype(str).str.len()
        ).to_numpy()
        edges = np.quantile(lengths, [1 / 3, 2 / 3])
        bucket = np.digitize(lengths, edges, right=True)
        for i, name in enumerate(("short", "medium", "long")):
            out[f"length={name}"] = bucket == i
        return out

    @staticmethod
    def _gold(heldout: pd.DataFrame) -> np.ndarray:
        return heldout["score"].to_numpy(dtype=np.float64)

    @staticmethod
    def _scores(embeddings: np.ndarray, heldout: pd.DataFrame) -> np.ndarray:
        n = len(heldout)
        return (embeddings[:n] * embeddings[n:]).sum(1)

    def evaluate(
        self,
        reference: Reference,
        candidate: Path,
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        abs_tol: float,
        mean_tol: float,
        threads: int,
    ) -> Evaluation:
        import time

        from transformers import AutoTokenizer

        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        cand = embed_texts(
            candidate, tokenizer, self.texts(heldout), max_length=self.eval_max_length, threads=threads
        )
        scores, gold = self._scores(cand, heldout), self._gold(heldout)
        parity = parity_report(reference.outputs, cand, abs_tol, mean_tol)
        drop_interval = champion_interval = None
        if reference.resampled is not None:
            # Paired: the same resamples as the FP32 reference (same seed, same n).
            candidate_resampled = spearman_resampled(gold, scores, bootstrap_indices(len(gold)))
            drop_interval = percentile_interval(reference.resampled - candidate_resampled)
            if reference.champion_resampled is not None:
                champion_interval = percentile_interval(reference.champion_resampled - candidate_resampled)
        texts = 2 * len(heldout)
        agree = round(parity.neighbour_agreement * texts) if np.isfinite(parity.neighbour_agreement) else 0
        fp32_scores = self._scores(reference.outputs, heldout)
        return Evaluation(
            task_metric="sts_spearman",
            task_metric_fp32=reference.task_metric,
            task_metric_candidate=spearman(scores, gold),
            parity=parity,
            seconds=time.perf_counter() - start,
            rows=len(heldout),
            task_metric_fp32_interval=reference.interval,
            task_metric_drop_interval=drop_interval,
            neighbour_agreement_interval=wilson_interval(agree, texts),
            slices=slice_results(self._slices(heldout), gold, fp32_scores, scores),
            champion_version=reference.champion_version,
            task_metric_champion=reference.champion_metric,
            champion_drop_interval=champion_interval,
        )

    def benchmark(
        self,
        model_dir: Path,
        fp32: Path,
        candidates: dict[str, Path],
        tokenizer_dir: Path,
        heldout: pd.DataFrame,
        settings: BenchSettings,
        allow_pickle: bool = False,
    ) -> BenchReport:
        import torch
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        texts = self.texts(heldout)
        batch_texts = [texts[i % len(texts)] for i in range(settings.batch)]
        feeds = tokenize(tokenizer, batch_texts, settings.seq_len, pad_to_max=True)
        weights = model_dir / "model.safetensors"
        size = weights.stat().st_size if weights.exists() else 0
        previous_threads = torch.get_num_threads()
        try:
            return run_benchmark(
                [
                    torch_engine(
                        "pytorch-fp32",
                        lambda: build_embedding_module(model_dir, allow_pickle)[0],
                        feeds,
                        settings.threads,
                        size,
                    ),
                    ort_engine("onnx-fp32", fp32, feeds, settings.threads),
                    *(ort_engine(name, path, feeds, settings.threads) for name, path in candidates.items()),
                ],
                settings,
            )
        finally:
            torch.set_num_threads(previous_threads)


def slice_results(
    masks: dict[str, np.ndarray], gold: np.ndarray, fp32: np.ndarray, candidate: np.ndarray
) -> list[SliceResult]:
    """Each slice's FP32 and candidate metric, drop and paired bootstrap interval."""
    out = []
    for name, mask in masks.items():
        n = int(mask.sum())
        if n < 3:
            continue
        g, f, c = gold[mask], fp32[mask], candidate[mask]
        idx = bootstrap_indices(n)
        interval = percentile_interval(spearman_resampled(g, f, idx) - spearman_resampled(g, c, idx))
        rho_f, rho_c = spearman(f, g), spearman(c, g)
        out.append(
            SliceResult(
                name=name,
                rows=n,
                task_metric_fp32=rho_f,
                task_metric_candidate=rho_c,
                drop=rho_f - rho_c,
                drop_interval=None if np.isnan(interval[0]) else interval,
                gated=n >= MIN_SLICE_ROWS and np.isfinite(rho_f - rho_c),
            )
        )
    return out


TASK_TYPES: dict[str, TaskType] = {SentenceEmbedding.name: SentenceEmbedding()}


def get_task_type(name: str) -> TaskType:
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown task type {name!r}: choose one of {sorted(TASK_TYPES)}") from None
