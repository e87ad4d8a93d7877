"""Sentence embeddings (bi-encoders, sentence-transformers style) judged on STS pairs: the task metric is
Spearman(cosine of each pair, gold score), with slices by genre and pair length; beside it the embeddings
themselves must stay close to FP32 (mean cosine, the share of texts below a cosine floor, nearest-neighbour
agreement) and the element-wise parity (`abs_tol` / `mean_tol`). sentence-retrieval (retrieval.py) judges
the same models on a retrieval set and shares the cosine limits and the export declared here.
"""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable, get_runtime, open_session
from quantgate.bench import BenchReport, BenchSettings, Request, draw_requests
from quantgate.errors import HeldoutValidationError
from quantgate.evaluate import ParityReport, parity_report
from quantgate.export import (
    INPUT_NAMES,
    OPSET,
    ExportResult,
    check_model_folder,
    export_module,
    load_hf_model,
    load_tokenizer,
    model_files_size,
    parity_vs_torch,
    tokenize,
)
from quantgate.gates import (
    BASELINE,
    BASELINE_LIMIT,
    GateSpec,
    Limit,
    Thresholds,
    judged_by,
    limit_value,
    tail_spec,
)
from quantgate.heldout import HeldoutSchema, check_bound, heldout_limits, iter_lines, read_utf8
from quantgate.stats import (
    bootstrap_indices,
    percentile_interval,
    share_beyond,
    spearman_resampled,
    wilson_interval,
)
from quantgate.tasktypes.base import Column, PlotAxis, TaskMetric, hf_architectures, register_task_type
from quantgate.tasktypes.resampled import Comparison, ResampledTaskType
from quantgate.tasktypes.results import (
    MAX_EXAMPLES,
    MIN_SLICE_ROWS,
    Example,
    Interval,
    Reference,
    SliceResult,
    shorten,
)
from quantgate.tasktypes.serving import benchmark_with_torch, serving_settings

# --- export, reader and metrics of this task type (shared with sentence-retrieval) ------------------


def _pooling_of(model_dir: Path) -> tuple[str, bool]:
    """Pooling and normalisation from a sentence-transformers folder; mean + L2 for plain HF folders."""
    mode, normalize = "mean", True
    pooling_cfg = model_dir / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
    modules = model_dir / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return mode, normalize


def build_embedding_module(model_dir: Path, allow_pickle: bool = False) -> tuple[Any, Any, str, bool]:
    """(torch module taking named inputs, tokenizer, pooling, normalize)."""
    import torch

    check_model_folder(model_dir, allow_pickle)
    tokenizer = load_tokenizer(model_dir)
    base = load_hf_model(model_dir, "AutoModel", allow_pickle)
    pooling, normalize = _pooling_of(model_dir)

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "max":
                pooled = (hidden + (mask - 1.0) * 1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return hidden, pooled

    return SentenceEmbedder(base).eval(), tokenizer, pooling, normalize


OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]


def export_sentence_embedding(
    model_dir: Path,
    out_dir: Path,
    sample_texts: list[str],
    atol: float,
    allow_pickle: bool = False,
    max_length: int = 128,
) -> ExportResult:
    module, tokenizer, pooling, normalize = build_embedding_module(model_dir, allow_pickle)
    onnx_path = out_dir / "model.onnx"
    example = tokenize(tokenizer, sample_texts[:2], max_length)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, "last_hidden_state"]}
    axes["sentence_embedding"] = {0: "batch"}
    export_module(module, onnx_path, example, OUTPUT_NAMES, axes, model_dir.name)
    tokenizer_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    batches = [
        tokenize(tokenizer, sample_texts[i : i + 8], max_length) for i in range(0, len(sample_texts), 8)
    ]
    diffs = parity_vs_torch(module, onnx_path, batches, OUTPUT_NAMES, atol)
    return ExportResult(
        onnx_path=onnx_path,
        tokenizer_files=sorted(p for p in tokenizer_dir.iterdir() if p.is_file()),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset=OPSET,
        pooling=pooling,
        normalize=normalize,
        max_abs_diff_vs_torch=diffs,
        parity_samples=len(sample_texts),
        size_bytes=model_files_size(onnx_path),
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def neighbour_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Share of rows whose nearest other row (by cosine) is the same under both embeddings."""
    if len(ref) < 2:
        return float("nan")

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return float((nearest(ref) == nearest(cand)).mean())


def embedding_agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """How far candidate embeddings moved: mean and worst cosine to FP32, nearest-neighbour agreement."""
    cos = cosine_rows(ref, cand)
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "neighbour_agreement": neighbour_agreement(ref, cand),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


# Texts per evaluation batch. On MiniLM (STS-B dev's texts, one thread, this 2-core machine) batches of 8
# took 14.4 s in FP32 against 17.0 s for 64 (5.7 vs 6.3 s for a dynamic INT8 candidate): the smaller
# activations stay in cache, and the length-sorted batches carry less padding (benchmarks/eval_batching.py).
EVAL_BATCH = 8


def embed_texts(
    model: Servable | Path,
    tokenizer: Any,
    texts: list[str],
    *,
    batch: int = EVAL_BATCH,
    max_length: int = 256,
    threads: int = 2,
) -> np.ndarray:
    """sentence_embedding for every text, in batches of texts of similar length (sorted by length: little
    padding). The batches do not depend on `threads`. On an engine whose session runs calls from several
    threads at once (ONNX Runtime), one single-threaded session runs `threads` batches side by side, so
    the outputs do not depend on the thread count either (MiniLM FP32, batches of 8: 7.3 s side by side
    against 9.1 s on one session of two threads); otherwise one session of `threads` threads runs them in
    turn."""
    servable = model if isinstance(model, Servable) else Servable(model)
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunks = [order[start : start + batch] for start in range(0, len(texts), batch)]
    if not chunks:
        raise ValueError("no texts to embed")
    concurrent = get_runtime(servable.runtime).concurrent_runs
    side_by_side = concurrent and threads > 1 and len(chunks) > 1
    sess = open_session(servable, 1 if concurrent else threads)
    # Tokenized here, in this thread: a fast tokenizer called from two threads at once can fail
    # ("Already borrowed"), since each call sets its truncation and padding on the shared object.
    feeds = [tokenize(tokenizer, [texts[i] for i in idx], max_length) for idx in chunks]

    def run(one: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(["sentence_embedding"], one)[0]

    if side_by_side:
        with ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as pool:
            embeddings = list(pool.map(run, feeds))
    else:
        embeddings = [run(one) for one in feeds]
    out = np.zeros((len(texts), embeddings[0].shape[1]), dtype=np.float32)
    for idx, emb in zip(chunks, embeddings, strict=True):
        out[idx] = emb
    return out


def load_sts_tsv(path: Path) -> pd.DataFrame:
    """STS Benchmark layout: tab separated, no header, no quoting;
    `genre filename year score sentence1 sentence2 [extra fields...]`. Sentences contain '"', so quoting
    is off (csv.QUOTE_NONE). Rows with too few fields keep None in the missing columns, so the GX suite
    reports them instead of the parser guessing."""
    limits = heldout_limits()
    text = read_utf8(path, limits)
    records = []
    for fields in csv.reader(iter_lines(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        if not fields or fields == [""]:
            continue
        check_bound(path.name, "rows (at least)", len(records) + 1, "max_heldout_rows", limits)
        padded = fields + [None] * (7 - len(fields))
        records.append(
            {"score": padded[4], "sentence1": padded[5], "sentence2": padded[6], "genre": padded[0]}
        )
    df = pd.DataFrame.from_records(records, columns=["score", "sentence1", "sentence2", "genre"])
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df


# The per-row cosine tail (quantgate/gates.py `tail_gate`), shared with sentence-retrieval. It replaces
# "min cosine >= 0.90 over the sample", whose meaning changed with the sample's size: the promoted MiniLM's
# minimum was 0.983 on the run's 2,872 texts and 0.911 on a set it never saw. 1 % of new texts is the share
# a pass vouches for (381 texts, 191 STS pairs, show it with none below). The floor is 0.95, not the old
# 0.90, to keep the old gate's decisions (benchmarks/tails_minilm.py, benchmarks/results/tails_minilm.json):
# the INT8 MiniLMs it passed have no text below 0.95 (worst 0.960-0.982), while NNCF calibrated on the
# file's first 300 sentences, which it caught, has only 4 of 2,872 texts below 0.90 (a 1 % tail passes
# that) but its 1 % quantile at 0.944, and per-tensor INT8 its at 0.926.
COSINE_TAIL_LIMITS: tuple[Limit, ...] = (
    Limit(
        name="cosine_floor",
        default=0.95,
        ge=-1,
        le=1,
        help="a text whose INT8 embedding has a cosine to FP32 below this counts against "
        "max_share_below_cosine_floor",
    ),
    Limit(
        name="max_share_below_cosine_floor",
        default=0.01,
        gt=0,
        le=1,
        help="max share of texts with cosine below cosine_floor (upper 95% bound: a bound on new texts)",
    ),
)


COSINE_TAIL = tail_spec(
    name="cosine tail",
    metric="share_below_cosine_floor",
    per_row="cosine_floor",
    share="max_share_below_cosine_floor",
    tail="below",
    rows="texts",
)


def cosine_tail(cosines: np.ndarray, thresholds: Thresholds) -> tuple[dict[str, float], dict[str, Interval]]:
    """The share of texts below the cosine floor with its Wilson interval, and the worst text's cosine
    (shown, not gated: the extreme of a sample bounds nothing beyond it)."""
    share, interval = share_beyond(cosines, limit_value(thresholds, "cosine_floor"), below=True)
    return (
        {"share_below_cosine_floor": share, "min_cosine": float(np.min(cosines))},
        {"share_below_cosine_floor": interval},
    )


MEAN_COSINE_LIMIT = Limit(
    name="min_mean_cosine", default=0.98, ge=-1, le=1, help="min mean cosine INT8 vs FP32"
)
MEAN_COSINE = GateSpec(name="mean cosine", metric="mean_cosine", op=">=", limit="min_mean_cosine")


class SentenceEmbedding(ResampledTaskType):
    """Bi-encoders (sentence-transformers style): STS pairs, metric = Spearman(cosine, gold score)."""

    name = "sentence-embedding"
    packages: ClassVar[tuple[str, ...]] = ("transformers", "torch", "tokenizers")
    reads_text = True  # a serving profile may declare token lengths and sample texts
    recognised_by = (
        "a bare encoder: config.json architectures `*Model` (no task head), or sentence-transformers' "
        "modules.json"
    )
    heldout_format = "sts-tsv"
    schema = HeldoutSchema(
        columns={"score": "score", "sentence1": "text", "sentence2": "text"},
        score_min=0.0,
        score_max=5.0,
        min_rows=10,
        unique_columns=["score", "sentence1", "sentence2"],
        slice_columns=["genre"],
    )
    metric = TaskMetric(name="sts_spearman")
    default_recipes: ClassVar[tuple[str, ...]] = ()
    # Measured on all-MiniLM-L6-v2 / STS-B dev: plain per-tensor dynamic INT8 keeps Spearman within 0.4
    # points but moves embeddings (mean cosine 0.963, neighbour agreement 88%); per-channel reaches 0.993 /
    # 94%. The cosine and neighbour gates catch the first kind of damage, the task-metric gate the second;
    # the cosine tail catches a few texts moved far while the mean holds.
    limits: ClassVar[tuple[Limit, ...]] = (
        MEAN_COSINE_LIMIT,
        *COSINE_TAIL_LIMITS,
        Limit(
            name="min_neighbour_agreement",
            default=0.90,
            ge=0,
            le=1,
            help="min share of examples whose nearest neighbour is unchanged (lower 95% bound)",
        ),
        BASELINE_LIMIT,
    )
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="mean_cosine"),
        Column(metric="share_below_cosine_floor"),
        Column(metric="min_cosine"),
        Column(metric="neighbour_agreement", digits=3),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(metric="mean_cosine", label="mean cosine to FP32", limit="min_mean_cosine"),
    )
    export_samples = 32
    eval_max_length = 256
    calibration_batch = 8
    calibration_max_length = 128

    gate_specs: ClassVar[tuple[GateSpec, ...]] = judged_by(
        evidence=(BASELINE,),
        quality=(
            MEAN_COSINE,
            COSINE_TAIL,
            GateSpec(
                name="neighbour agreement",
                metric="neighbour_agreement",
                op=">=",
                limit="min_neighbour_agreement",
                judge="lower",
            ),
        ),
    )

    def recognises(self, model_dir: Path) -> bool:
        if (model_dir / "modules.json").is_file():
            return True
        architectures = hf_architectures(model_dir)
        return bool(architectures) and all(a.endswith("Model") for a in architectures)

    def reads(self, heldout: Path) -> bool:
        return heldout.suffix.lower() != ".json"

    def read_heldout(self, path: Path) -> pd.DataFrame:
        return load_sts_tsv(path)

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        from quantgate.export import check_model_folder

        return check_model_folder(model_dir, allow_pickle)

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

    @staticmethod
    def _tokenizer(assets: Path) -> Any:
        return load_tokenizer(assets)

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        """Both sentences of each calibration pair, in batches padded to one common length: ORT's
        histogram calibrators (Entropy, Percentile) need every batch to have the same shape."""
        if calibration.empty:
            return []
        tokenizer = self._tokenizer(assets)
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

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> np.ndarray:
        """Each text's embedding: both sentences of every pair (first sentences, then second ones)."""
        return embed_texts(
            model,
            self._tokenizer(assets),
            self.texts(heldout),
            max_length=self.eval_max_length,
            threads=threads,
        )

    def _pairs(self, embeddings: np.ndarray, heldout: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(cosine of each pair, gold score of each pair)."""
        n = len(heldout)
        return (embeddings[:n] * embeddings[n:]).sum(1), heldout["score"].to_numpy(dtype=np.float64)

    def check_reference(self, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame) -> None:
        scores, gold = self._pairs(predicted, heldout)
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

    def score(
        self, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame, idx: np.ndarray
    ) -> tuple[float, np.ndarray]:
        scores, gold = self._pairs(predicted, heldout)
        return spearman(scores, gold), spearman_resampled(gold, scores, idx)

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
    def _parity(reference: Reference, predicted: np.ndarray, thresholds: Thresholds) -> ParityReport:
        """Element-wise parity of the embeddings, against the core limits `abs_tol` / `mean_tol`."""
        return parity_report(
            reference.outputs,
            predicted,
            thresholds.value("abs_tol"),
            thresholds.value("mean_tol"),
            output="sentence_embedding",
        )

    def compare(
        self, reference: Reference, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds,
    ) -> Comparison:  # fmt: skip
        cand = predicted
        scores, gold = self._pairs(cand, heldout)
        parity = self._parity(reference, cand, thresholds)
        agreement = embedding_agreement(reference.outputs, cand)
        texts = 2 * len(heldout)
        neighbours = agreement["neighbour_agreement"]
        agree = round(neighbours * texts) if np.isfinite(neighbours) else 0
        fp32_scores, _ = self._pairs(reference.outputs, heldout)
        inputs = self.texts(heldout)
        cosines = cosine_rows(reference.outputs, cand)
        tail, tail_intervals = cosine_tail(cosines, thresholds)
        examples = [
            Example(
                row=int(i) % len(heldout),
                text=shorten(inputs[i]),
                gold=f"pair score {gold[i % len(heldout)]:g}",
                fp32=f"pair cosine {fp32_scores[i % len(heldout)]:.4f}",
                candidate=f"pair cosine {scores[i % len(heldout)]:.4f}; vs FP32 {cosines[i]:.4f}",
                change=round(float(1 - cosines[i]), 4),
            )
            for i in np.argsort(cosines, kind="stable")[:MAX_EXAMPLES]
        ]
        return Comparison(
            parity=parity,
            extra=agreement | tail,
            extra_intervals={"neighbour_agreement": wilson_interval(agree, texts), **tail_intervals},
            slices=slice_results(self._slices(heldout), gold, fp32_scores, scores),
            examples=examples,
        )

    def requests(self, assets: Path, heldout: pd.DataFrame, settings: BenchSettings) -> list[Request]:
        """The serving profile's requests: held-out sentences tokenized as serving would (cut at the
        model's length, padded only to the longest of a batch: not at all at batch 1)."""
        tokenizer, texts = self._tokenizer(assets), self.texts(heldout)

        def encode_texts(picked: list[str], pad_to: int | None) -> dict[str, np.ndarray]:
            return tokenize(tokenizer, picked, pad_to or self.eval_max_length, pad_to_max=pad_to is not None)

        return draw_requests(
            serving_settings(self, settings), len(texts),
            lambda rows, pad_to: encode_texts([texts[i] for i in rows], pad_to), samples=encode_texts,
        )  # fmt: skip

    def benchmark(
        self,
        model_dir: Path,
        fp32: Servable,
        candidates: dict[str, Servable],
        assets: Path,
        heldout: pd.DataFrame,
        settings: BenchSettings,
        allow_pickle: bool = False,
    ) -> BenchReport:
        settings = serving_settings(self, settings)
        requests = self.requests(assets, heldout, settings)
        return benchmark_with_torch(
            lambda: build_embedding_module(model_dir, allow_pickle)[0], model_dir, fp32, candidates, requests,
            settings,
        )  # fmt: skip


def slice_results(
    masks: dict[str, np.ndarray], gold: np.ndarray, fp32: np.ndarray, candidate: np.ndarray
) -> list[SliceResult]:
    """Each slice's FP32 and candidate Spearman, drop and paired bootstrap interval."""
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


SENTENCE_EMBEDDING = register_task_type(SentenceEmbedding())
