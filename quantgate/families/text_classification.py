"""Sequence classification (a fine-tuned DistilBERT/MiniLM-style sentiment or topic classifier).

Recognised by config.json architectures `*ForSequenceClassification`. Held-out: SST-2's TSV (header
`sentence<TAB>label`, optional `sentence2` for pair tasks), labels given as the model's label names or
class indices. Task metric: accuracy; the classifier gates (quantgate/families/classification.py) add
label agreement, macro-F1, calibration and the probability parity.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable
from quantgate.bench import TORCH_FP32, BenchReport, BenchSettings, run_benchmark, torch_engine
from quantgate.evaluate import parity_report
from quantgate.export import ExportResult, load_tokenizer
from quantgate.families import classification as clf
from quantgate.families.hf_text import (
    Head,
    check_head_model,
    export_text_head,
    id2label,
    label_ids,
    run_batches,
    torch_head,
)
from quantgate.gates import Gate, Limit, Thresholds
from quantgate.heldout import HeldoutSchema, load_headed_tsv
from quantgate.stats import bootstrap_indices, percentile_interval
from quantgate.tasktypes import (
    Column,
    Evaluation,
    PlotAxis,
    Reference,
    TaskMetric,
    engines_for,
    hf_architectures,
    paired_intervals,
    register_task_type,
)

AUTO_CLASS = "AutoModelForSequenceClassification"


class SequenceClassification:
    name = "sequence-classification"
    recognised_by = "config.json architectures `*ForSequenceClassification`"
    heldout_format = "tsv: header sentence<TAB>label[<TAB>sentence2]"
    schema = HeldoutSchema(
        columns={"sentence": "text", "label": "label"},
        optional_columns={"sentence2": "text"},
        min_rows=20,
        unique_columns=["sentence", "label"],
    )
    metric = TaskMetric(name="accuracy")
    default_recipes: ClassVar[tuple[str, ...]] = ()
    limits: ClassVar[tuple[Limit, ...]] = clf.LIMITS
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="label_agreement"),
        Column(metric="macro_f1_drop"),
        Column(metric="ece_increase"),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(metric="label_agreement", label="label agreement with FP32", limit="min_label_agreement"),
    )
    max_length = 128
    export_samples = 32
    calibration_batch = 8

    def gates(self, t: Thresholds) -> list[Gate]:
        return clf.gates(t)

    def recognises(self, model_dir: Path) -> bool:
        return any(a.endswith("ForSequenceClassification") for a in hf_architectures(model_dir))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        return check_head_model(model_dir, AUTO_CLASS, allow_pickle)

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame) -> None:
        labels = id2label(self.check_model(model_dir, allow_pickle=True))
        label_ids(heldout["label"].dropna(), labels)

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        return self.schema

    def reads(self, heldout: Path) -> bool:
        return True  # no other task type recognises the same models

    def read_heldout(self, path: Path) -> pd.DataFrame:
        return load_headed_tsv(path)

    @staticmethod
    def _pairs(frame: pd.DataFrame) -> tuple[list[str], list[str] | None]:
        first = frame["sentence"].astype(str).tolist()
        second = frame["sentence2"].astype(str).tolist() if "sentence2" in frame else None
        return first, second

    def _encode(self, tokenizer: Any, frame: pd.DataFrame, idx: list[int], pad_to: int | None = None) -> Any:
        first, second = self._pairs(frame.iloc[idx])
        enc = tokenizer(
            first,
            second,
            padding="max_length" if pad_to else True,
            truncation=True,
            max_length=pad_to or self.max_length,
            return_tensors="np",
        )
        out = {k: v.astype(np.int64) for k, v in enc.items()}
        out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
        return out

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        lengths = heldout["sentence"].astype(str).str.len().to_numpy()
        order = np.argsort(lengths, kind="stable")
        step = max(1, len(order) // self.export_samples)
        sample = [int(i) for i in order[::step][: self.export_samples]]
        return export_text_head(
            model_dir,
            out_dir,
            AUTO_CLASS,
            lambda tok: [self._encode(tok, heldout, sample[i : i + 8]) for i in range(0, len(sample), 8)],
            atol,
            allow_pickle,
            per_token=False,
        )

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        if calibration.empty:
            return []
        tokenizer, head = load_tokenizer(assets), Head(assets)
        # One common length for every batch: ORT's histogram calibrators need equal shapes.
        longest = self._encode(tokenizer, calibration, list(range(len(calibration))))["input_ids"].shape[1]
        b = self.calibration_batch
        rows = list(range(max(b, len(calibration) // b * b)))[: len(calibration)]
        return [
            head.feeds(self._encode(tokenizer, calibration, rows[i : i + b], pad_to=longest))
            for i in range(0, len(rows), b)
        ]

    def _proba(self, model: Servable, assets: Path, frame: pd.DataFrame, threads: int) -> np.ndarray:
        tokenizer, head = load_tokenizer(assets), Head(assets)
        first, second = self._pairs(frame)
        lengths = [len(a) + (len(second[i]) if second else 0) for i, a in enumerate(first)]
        logits = run_batches(
            model, lambda idx: head.feeds(self._encode(tokenizer, frame, idx)), lengths, threads
        )
        return clf.softmax(np.stack(logits))

    def _gold(self, assets: Path, frame: pd.DataFrame) -> np.ndarray:
        return label_ids(frame["label"], Head(assets).labels)

    def reference(self, fp32: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Reference:
        start = time.perf_counter()
        gold = self._gold(assets, heldout)
        proba = self._proba(fp32, assets, heldout, threads)
        resampled = clf.accuracy_resampled(gold, proba.argmax(1), bootstrap_indices(len(gold)))
        return Reference(
            outputs=proba,
            task_metric=float((proba.argmax(1) == gold).mean()),
            seconds=time.perf_counter() - start,
            interval=percentile_interval(resampled),
            resampled=resampled,
        )

    def score_champion(
        self, reference: Reference, version: str, model: Servable, assets: Path, heldout: pd.DataFrame,
        threads: int,
    ) -> Reference:  # fmt: skip
        gold = self._gold(assets, heldout)
        pred = self._proba(model, assets, heldout, threads).argmax(1)
        return reference.model_copy(
            update={
                "champion_version": version,
                "champion_metric": float((pred == gold).mean()),
                "champion_resampled": clf.accuracy_resampled(gold, pred, bootstrap_indices(len(gold))),
            }
        )

    def evaluate(
        self, reference: Reference, candidate: Servable, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds, threads: int,
    ) -> Evaluation:  # fmt: skip
        start = time.perf_counter()
        head = Head(assets)
        gold = label_ids(heldout["label"], head.labels)
        proba = self._proba(candidate, assets, heldout, threads)
        scores = clf.score_classifier(gold, reference.outputs, proba, len(head.labels))
        _, champion = paired_intervals(
            reference, clf.accuracy_resampled(gold, proba.argmax(1), bootstrap_indices(len(gold)))
        )
        first, second = self._pairs(heldout)
        texts = [a if not second else f"{a} ‖ {second[i]}" for i, a in enumerate(first)]
        return Evaluation(
            task_metric=self.metric.name,
            task_metric_fp32=reference.task_metric,
            task_metric_candidate=scores.accuracy,
            parity=parity_report(
                {"probabilities": reference.outputs},
                {"probabilities": proba},
                thresholds.value("abs_tol"),
                thresholds.value("mean_tol"),
            ),
            seconds=time.perf_counter() - start,
            rows=len(heldout),
            task_metric_fp32_interval=reference.interval,
            task_metric_drop_interval=scores.drop_interval,
            extra=scores.extra,
            extra_intervals=scores.extra_intervals,
            examples=clf.flipped_examples(texts, reference.outputs, proba, head.labels.__getitem__, gold),
            champion_version=reference.champion_version,
            task_metric_champion=reference.champion_metric,
            champion_drop_interval=champion,
        )

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        import torch

        tokenizer, head = load_tokenizer(assets), Head(assets)
        rows = [i % len(heldout) for i in range(settings.batch)]
        feeds = head.feeds(self._encode(tokenizer, heldout, rows, pad_to=settings.seq_len))
        weights = model_dir / "model.safetensors"
        previous = torch.get_num_threads()
        try:
            return run_benchmark(
                [
                    torch_engine(
                        TORCH_FP32,
                        lambda: torch_head(model_dir, AUTO_CLASS, allow_pickle),
                        feeds,
                        settings.threads,
                        weights.stat().st_size if weights.exists() else 0,
                    ),
                    *engines_for(fp32, candidates, feeds, settings.threads),
                ],
                settings,
            )
        finally:
            torch.set_num_threads(previous)


SEQUENCE_CLASSIFICATION = register_task_type(SequenceClassification())
