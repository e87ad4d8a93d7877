"""Sequence classification (a fine-tuned DistilBERT/MiniLM-style sentiment or topic classifier).

Recognised by config.json architectures `*ForSequenceClassification`. Held-out: SST-2's TSV (header
`sentence<TAB>label`, optional `sentence2` for pair tasks), labels given as the model's label names or
class indices. Task metric: accuracy; the classifier gates (quantgate/families/classification.py) add
label agreement, macro-F1, calibration and the probability parity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable
from quantgate.bench import BenchReport, BenchSettings, draw_requests
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
from quantgate.gates import Limit
from quantgate.heldout import HeldoutSchema, load_headed_tsv
from quantgate.tasktypes import (
    Column,
    PlotAxis,
    TaskMetric,
    benchmark_with_torch,
    hf_architectures,
    register_task_type,
    serving_settings,
)

AUTO_CLASS = "AutoModelForSequenceClassification"


def sample_frame(texts: list[str]) -> pd.DataFrame:
    """Sample requests, one per line: a sentence, or a pair separated by a TAB (as in the held-out TSV)."""
    pairs = [t.split("\t", 1) for t in texts]
    frame = pd.DataFrame({"sentence": [p[0] for p in pairs]})
    if any(len(p) == 2 for p in pairs):
        frame["sentence2"] = [p[1] if len(p) == 2 else "" for p in pairs]
    return frame


class SequenceClassification(clf.ProbabilityClassifier):
    name = "sequence-classification"
    packages: ClassVar[tuple[str, ...]] = ("transformers", "torch", "tokenizers")
    reads_text = True  # a serving profile may declare token lengths and sample texts
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

    def recognises(self, model_dir: Path) -> bool:
        return any(a.endswith("ForSequenceClassification") for a in hf_architectures(model_dir))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        return check_head_model(model_dir, AUTO_CLASS, allow_pickle)

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        labels = id2label(self.check_model(model_dir, allow_pickle=allow_pickle))
        label_ids(heldout["label"].dropna(), labels)

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

    def _class_names(self, assets: Path) -> dict[int, str]:
        return Head(assets).labels

    def _example_texts(self, assets: Path, heldout: pd.DataFrame) -> list[str]:
        first, second = self._pairs(heldout)
        return [a if not second else f"{a} ‖ {second[i]}" for i, a in enumerate(first)]

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        settings = serving_settings(self, settings)
        tokenizer, head = load_tokenizer(assets), Head(assets)
        requests = draw_requests(
            settings,
            len(heldout),
            lambda rows, pad_to: head.feeds(self._encode(tokenizer, heldout, rows, pad_to=pad_to)),
            samples=lambda texts, pad_to: head.feeds(
                self._encode(tokenizer, sample_frame(texts), list(range(len(texts))), pad_to)
            ),
        )
        return benchmark_with_torch(
            lambda: torch_head(model_dir, AUTO_CLASS, allow_pickle),
            model_dir,
            fp32,
            candidates,
            requests,
            settings,
        )


SEQUENCE_CLASSIFICATION = register_task_type(SequenceClassification())
