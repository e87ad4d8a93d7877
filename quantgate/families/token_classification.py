"""Token classification (NER taggers).

Recognised by config.json architectures `*ForTokenClassification`. Held-out: CoNLL (`token<TAB>tag` per
line, a blank line between sentences; tags in the model's id2label). Words are pre-tokenised: the
tokenizer is called with `is_split_into_words=True` and each word is labelled by its first word piece.
Task metric: entity-level F1, exact span match (seqeval's conlleval convention), with a paired bootstrap
over sentences; token-label agreement with FP32 gates how many words changed tag, and the probability
tail how many sentences have a word whose tag probabilities moved past the ceiling (sentences, not words:
the words of one sentence move together, so only sentences are independent draws for the Wilson bound).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable
from quantgate.bench import BenchReport, BenchSettings, draw_requests
from quantgate.errors import HeldoutValidationError
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
from quantgate.gates import BASELINE, BASELINE_LIMIT, GateSpec, Limit, Thresholds, judged_by, limit_value
from quantgate.heldout import HeldoutSchema, check_bound, heldout_limits, iter_lines, read_utf8
from quantgate.stats import wilson_interval
from quantgate.tasktypes.base import Column, PlotAxis, TaskMetric, hf_architectures, register_task_type
from quantgate.tasktypes.resampled import Comparison, ResampledTaskType
from quantgate.tasktypes.results import MAX_EXAMPLES, Example, Reference, shorten
from quantgate.tasktypes.serving import benchmark_with_torch, serving_settings

AUTO_CLASS = "AutoModelForTokenClassification"


def read_conll(path: Path) -> pd.DataFrame:
    """One row per sentence: `tokens` and `tags`, each space-joined (what the GX suite checks). A line
    that is not `token<TAB>tag` is refused with its line number."""
    limits = heldout_limits()
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    tokens = 0
    for number, line in enumerate(iter_lines(read_utf8(path, limits)), start=1):
        if not line.strip():
            if words:
                check_bound(path.name, "sentences (at least)", len(sentences) + 1, "max_heldout_rows", limits)
                sentences.append((words, tags))
            words, tags = [], []
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise HeldoutValidationError(
                f"held-out file {path.name} line {number} is not `token<TAB>tag` ({line[:60]!r}): CoNLL "
                "has one token and its tag per line and a blank line between sentences",
                [f"line {number}: not token<TAB>tag"],
            )
        tokens += 1
        check_bound(path.name, "tokens (at least)", tokens, "max_heldout_tokens", limits)
        words.append(fields[0].strip())
        tags.append(fields[1].strip())
    if words:
        sentences.append((words, tags))
    return pd.DataFrame(
        {"tokens": [" ".join(w) for w, _ in sentences], "tags": [" ".join(t) for _, t in sentences]}
    )


def entity_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """Per sentence (true positives, predicted entities, gold entities), exact span and type match."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gs, ps = set(get_entities(g)), set(get_entities(p))
        out[i] = (len(gs & ps), len(ps), len(gs))
    return out


def f1_of(counts: np.ndarray) -> float:
    tp, predicted, actual = counts.sum(axis=0)
    return float(2 * tp / (predicted + actual)) if predicted + actual else 0.0


def f1_resampled(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Micro entity F1 on each resample of sentences (rows of `idx`): sums of the per-sentence counts."""
    tp, predicted, actual = (counts[:, k][idx].sum(axis=1) for k in range(3))
    total = predicted + actual
    return np.where(total > 0, 2 * tp / np.maximum(total, 1), 0.0)


class Tagged:
    """A model's word-level output on the held-out sentences: probabilities (all words, concatenated)
    and each sentence's tags."""

    def __init__(self, proba: np.ndarray, offsets: np.ndarray, labels: dict[int, str]) -> None:
        self.proba = proba
        self.offsets = offsets
        pred = proba.argmax(axis=1)
        self.tags = [[labels[int(k)] for k in pred[a:b]] for a, b in itertools.pairwise(offsets)]


def sentence_prob_diff(fp32: Tagged, candidate: Tagged) -> np.ndarray:
    """Each sentence's largest probability change over its words and tags: the probability tail counts
    sentences, the independent draws of a held-out set (words of one sentence move together)."""
    moved = clf.row_prob_diff(fp32.proba, candidate.proba)
    return np.array([moved[a:b].max(initial=0.0) for a, b in itertools.pairwise(fp32.offsets)])


class TokenClassification(ResampledTaskType):
    name = "token-classification"
    packages: ClassVar[tuple[str, ...]] = ("transformers", "torch", "tokenizers", "seqeval")
    reads_text = True  # a serving profile may declare token lengths and sample texts
    recognised_by = "config.json architectures `*ForTokenClassification`"
    heldout_format = "conll: token<TAB>tag per line, a blank line between sentences"
    schema = HeldoutSchema(
        columns={"tokens": "text", "tags": "label"},
        min_rows=20,
        max_text_chars=20_000,
        unique_columns=["tokens", "tags"],
    )
    metric = TaskMetric(name="entity_f1")
    default_recipes: ClassVar[tuple[str, ...]] = ()
    limits: ClassVar[tuple[Limit, ...]] = (*clf.LIMITS, BASELINE_LIMIT)
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="label_agreement"),
        Column(metric="entities_changed"),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(
            metric="label_agreement", label="word tags unchanged from FP32", limit="min_label_agreement"
        ),
    )
    max_length = 256
    export_samples = 32
    calibration_batch = 8

    # Entity F1 has no majority class to beat (all-O scores 0): the baseline is a fixed floor instead; the
    # probability tail counts sentences (module docstring).
    gate_specs: ClassVar[tuple[GateSpec, ...]] = judged_by(
        evidence=(BASELINE,),
        quality=(clf.LABEL_AGREEMENT,),
        parity=(clf.prob_diff_tail_spec(rows="sentences"), clf.MEAN_PROB_DIFF),
    )

    def recognises(self, model_dir: Path) -> bool:
        return any(a.endswith("ForTokenClassification") for a in hf_architectures(model_dir))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        return check_head_model(model_dir, AUTO_CLASS, allow_pickle)

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        labels = id2label(check_head_model(model_dir, AUTO_CLASS, allow_pickle=allow_pickle))
        label_ids([t for row in heldout["tags"] for t in str(row).split()], labels, what="tag")

    def read_heldout(self, path: Path) -> pd.DataFrame:
        return read_conll(path)

    @staticmethod
    def _words(frame: pd.DataFrame, idx: list[int]) -> list[list[str]]:
        return [str(frame["tokens"].iloc[i]).split(" ") for i in idx]

    def _encode(self, tokenizer: Any, words: list[list[str]], pad_to: int | None = None) -> Any:
        return tokenizer(
            words,
            is_split_into_words=True,
            padding="max_length" if pad_to else True,
            truncation=True,
            max_length=pad_to or self.max_length,
            return_tensors="np",
        )

    @staticmethod
    def _arrays(enc: Any) -> dict[str, np.ndarray]:
        out = {k: v.astype(np.int64) for k, v in enc.items()}
        out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
        return out

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        order = np.argsort(heldout["tokens"].astype(str).str.len().to_numpy(), kind="stable")
        step = max(1, len(order) // self.export_samples)
        sample = [int(i) for i in order[::step][: self.export_samples]]
        return export_text_head(
            model_dir,
            out_dir,
            AUTO_CLASS,
            lambda tok: [
                self._arrays(self._encode(tok, self._words(heldout, sample[i : i + 8])))
                for i in range(0, len(sample), 8)
            ],
            atol,
            allow_pickle,
            per_token=True,
        )

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        if calibration.empty:
            return []
        tokenizer, head = load_tokenizer(assets), Head(assets)
        words = self._words(calibration, list(range(len(calibration))))
        longest = self._encode(tokenizer, words)["input_ids"].shape[1]  # one length: equal batch shapes
        b = self.calibration_batch
        usable = words[: max(b, len(words) // b * b)]
        return [
            head.feeds(self._arrays(self._encode(tokenizer, usable[i : i + b], pad_to=longest)))
            for i in range(0, len(usable), b)
        ]

    def _tag(self, model: Servable, assets: Path, frame: pd.DataFrame, threads: int) -> Tagged:
        """Probabilities of each word's first word piece; a word cut off by max_length keeps none and
        counts as `O` (with a uniform probability row), the same for every model compared."""
        tokenizer, head = load_tokenizer(assets), Head(assets)
        words = self._words(frame, list(range(len(frame))))
        first_piece: dict[int, list[int]] = {}

        def feeds(idx: list[int]) -> dict[str, np.ndarray]:
            enc = self._encode(tokenizer, [words[i] for i in idx])
            for row, i in enumerate(idx):
                seen: dict[int, int] = {}
                for position, word in enumerate(enc.word_ids(row)):
                    if word is not None and word not in seen:
                        seen[word] = position
                first_piece[i] = [seen.get(w, -1) for w in range(len(words[i]))]
            return head.feeds(self._arrays(enc))

        logits = run_batches(model, feeds, [len(w) for w in words], threads)
        classes = len(head.labels)
        outside = next((k for k, v in head.labels.items() if v == "O"), 0)
        rows = []
        for i, sentence_logits in enumerate(logits):
            proba = clf.softmax(sentence_logits)
            positions = first_piece[i]
            word_proba = np.full((len(positions), classes), 0.0)
            kept = [p >= 0 for p in positions]
            word_proba[np.array(kept, dtype=bool)] = proba[[p for p in positions if p >= 0]]
            word_proba[~np.array(kept, dtype=bool), outside] = 1.0
            rows.append(word_proba)
        offsets = np.cumsum([0, *(len(r) for r in rows)])
        return Tagged(np.concatenate(rows), offsets, head.labels)

    @staticmethod
    def _gold(frame: pd.DataFrame) -> list[list[str]]:
        return [str(t).split(" ") for t in frame["tags"]]

    def _check_tags(self, assets: Path, frame: pd.DataFrame) -> None:
        label_ids([t for row in self._gold(frame) for t in row], Head(assets).labels, what="tag")
        words, tags = frame["tokens"].astype(str).str.split(" "), frame["tags"].astype(str).str.split(" ")
        bad = [i for i, (w, t) in enumerate(zip(words, tags, strict=True)) if len(w) != len(t)]
        if bad:
            raise HeldoutValidationError(
                f"{len(bad)} held-out sentences have a different number of tokens and tags (e.g. row "
                f"{bad[0]}): a token containing a space? Fix the file and register a new version",
                ["tokens and tags differ in length"],
            )

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Tagged:
        return self._tag(model, assets, heldout, threads)

    def stored(self, predicted: Tagged) -> np.ndarray:
        return predicted.proba

    def check_reference(self, predicted: Tagged, assets: Path, heldout: pd.DataFrame) -> None:
        self._check_tags(assets, heldout)

    def score(
        self, predicted: Tagged, assets: Path, heldout: pd.DataFrame, idx: np.ndarray
    ) -> tuple[float, np.ndarray]:
        counts = entity_counts(self._gold(heldout), predicted.tags)
        return f1_of(counts), f1_resampled(counts, idx)

    def _examples(self, heldout: pd.DataFrame, fp32: Tagged, cand: Tagged) -> list[Example]:
        from seqeval.metrics.sequence_labeling import get_entities

        changed = fp32.proba.argmax(1) != cand.proba.argmax(1)
        moved = np.abs(fp32.proba - cand.proba).max(axis=1)
        spans = list(zip(fp32.offsets[:-1], fp32.offsets[1:], strict=True))
        flips = np.array([changed[a:b].sum() for a, b in spans])
        most = np.array([moved[a:b].max() if b > a else 0.0 for a, b in spans])
        order = np.lexsort((-most, -flips))[:MAX_EXAMPLES]

        def entities(words: list[str], tags: list[str]) -> str:
            found = [f"{' '.join(words[s : e + 1])}/{kind}" for kind, s, e in get_entities(tags)]
            return ", ".join(found) or "(none)"

        out = []
        for i in order:
            words, gold = str(heldout["tokens"].iloc[i]).split(" "), self._gold(heldout)[i]
            out.append(
                Example(
                    row=int(i),
                    text=shorten(" ".join(words)),
                    fp32=entities(words, fp32.tags[i]),
                    candidate=entities(words, cand.tags[i]),
                    gold=entities(words, gold),
                    change=float(flips[i]),
                )
            )
        return out

    def compare(
        self, reference: Reference, predicted: Tagged, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds,
    ) -> Comparison:  # fmt: skip
        gold = self._gold(heldout)
        fp32 = Tagged(reference.outputs, np.cumsum([0, *(len(g) for g in gold)]), Head(assets).labels)
        cand = predicted
        words = len(cand.proba)
        agree = int((fp32.proba.argmax(1) == cand.proba.argmax(1)).sum())
        fp32_entities = [set(map(tuple, _spans(t))) for t in fp32.tags]
        cand_entities = [set(map(tuple, _spans(t))) for t in cand.tags]
        changed = sum(len(a ^ b) for a, b in zip(fp32_entities, cand_entities, strict=True))
        tail, tail_intervals = clf.prob_diff_tail(
            sentence_prob_diff(fp32, cand), limit_value(thresholds, "prob_diff_ceiling")
        )
        return Comparison(
            parity=parity_report(
                {"probabilities": reference.outputs},
                {"probabilities": cand.proba},
                thresholds.value("abs_tol"),
                thresholds.value("mean_tol"),
            ),
            extra={"label_agreement": agree / words, "entities_changed": float(changed), **tail},
            extra_intervals={"label_agreement": wilson_interval(agree, words), **tail_intervals},
            examples=self._examples(heldout, fp32, cand),
        )

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        settings = serving_settings(self, settings)
        tokenizer, head = load_tokenizer(assets), Head(assets)

        def encode_words(words: list[list[str]], pad_to: int | None) -> dict[str, np.ndarray]:
            return head.feeds(self._arrays(self._encode(tokenizer, words, pad_to=pad_to)))

        requests = draw_requests(
            settings,
            len(heldout),
            lambda rows, pad_to: encode_words(self._words(heldout, rows), pad_to),
            samples=lambda texts, pad_to: encode_words([t.split() for t in texts], pad_to),
        )
        return benchmark_with_torch(
            lambda: torch_head(model_dir, AUTO_CLASS, allow_pickle),
            model_dir,
            fp32,
            candidates,
            requests,
            settings,
        )


def _spans(tags: list[str]) -> list[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return get_entities(tags)


TOKEN_CLASSIFICATION = register_task_type(TokenClassification())
