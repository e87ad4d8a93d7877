"""Sentence embeddings judged on retrieval: Recall@10 over a corpus, for the bi-encoders that serve a
vector index (the write-ups' headline: MiniLM Recall@10 0.74 → 0.73).

The same models as `sentence-embedding` (a bare encoder); `register` tells the two apart by the held-out
file: a retrieval set is one JSON file

    {"queries": {"q1": "text", ...}, "corpus": {"d1": "text", ...}, "qrels": {"q1": ["d1", ...], ...}}

(BEIR's three parts in one file). Every query is scored against the whole corpus, whichever split it falls
in. Gates: Recall@10 drop (paired bootstrap over queries), the FP32 baseline, mean cosine to FP32 and its
tail (the share of queries and documents below the cosine floor, upper Wilson bound), and how much of each
query's FP32 top 10 the candidate keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable
from quantgate.errors import HeldoutValidationError
from quantgate.families.sentence_embedding import (
    COSINE_TAIL,
    COSINE_TAIL_LIMITS,
    MEAN_COSINE,
    MEAN_COSINE_LIMIT,
    SentenceEmbedding,
    cosine_rows,
    cosine_tail,
    embed_texts,
)
from quantgate.gates import BASELINE, BASELINE_LIMIT, GateSpec, Limit, Thresholds, judged_by
from quantgate.heldout import HeldoutSchema, check_bound, heldout_limits, read_utf8
from quantgate.tasktypes.base import Column, PlotAxis, TaskMetric, register_task_type
from quantgate.tasktypes.resampled import Comparison
from quantgate.tasktypes.results import MAX_EXAMPLES, Example, Reference, shorten

K = 10
CORPUS = "corpus"  # DataFrame.attrs key: {doc id: text}, shared by every split of the queries

TOP_K_LIMIT = Limit(
    name="min_top10_overlap",
    default=0.9,
    ge=0,
    le=1,
    help="retrieval: min mean share of each query's FP32 top 10 the candidate also returns",
)


def read_retrieval_json(path: Path) -> pd.DataFrame:
    """One row per query (query_id, query, relevant: its doc ids as a JSON list, so an id may hold any
    character); the corpus in attrs."""
    try:
        # The file's size is bounded (read_utf8) before json builds anything from it.
        data = json.loads(read_utf8(path))
        queries, corpus, qrels = data["queries"], data["corpus"], data["qrels"]
        if not all(isinstance(x, dict) for x in (queries, corpus, qrels)):
            raise TypeError("queries, corpus and qrels must be objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise HeldoutValidationError(
            f'held-out file {path.name} must be JSON {{"queries": {{id: text}}, "corpus": {{id: text}}, '
            f'"qrels": {{query id: [doc ids]}}}} ({type(exc).__name__}: {exc})',
            ["retrieval JSON layout"],
        ) from None
    limits = heldout_limits()
    for part, items in (("queries", queries), ("corpus documents", corpus), ("qrels", qrels)):
        check_bound(path.name, part, len(items), "max_heldout_rows", limits)
    not_lists = {str(q): ds for q, ds in qrels.items() if not isinstance(ds, list)}
    not_ids = sorted({repr(d) for ds in qrels.values() if isinstance(ds, list) for d in ds
                      if isinstance(d, bool) or not isinstance(d, (str, int))})  # fmt: skip
    if not_lists or not_ids:
        shown = list(not_lists.items())[:3]
        raise HeldoutValidationError(
            f"held-out qrels must map each query id to a list of document ids: {shown or not_ids[:5]} "
            'is not, e.g. "qrels": {"q1": ["d1", "d7"]}',
            ["qrels values are not lists of ids"],
        )
    unknown_docs = sorted({str(d) for ds in qrels.values() for d in ds} - set(map(str, corpus)))
    unknown_queries = sorted(set(map(str, qrels)) - set(map(str, queries)))
    if unknown_docs or unknown_queries:
        raise HeldoutValidationError(
            f"held-out qrels name documents {unknown_docs[:5]} or queries {unknown_queries[:5]} that the "
            "file does not have: every judged id must be in corpus / queries",
            ["qrels name unknown ids"],
        )
    blank = [k for k, v in corpus.items() if not str(v).strip()]
    if blank:
        raise HeldoutValidationError(
            f"held-out corpus documents {blank[:5]} are empty: drop them (and their qrels)",
            ["empty documents"],
        )
    rows = [
        {"query_id": str(q), "query": str(text), "relevant": json.dumps([str(d) for d in qrels.get(q, [])])}
        for q, text in queries.items()
        if qrels.get(q)
    ]
    frame = pd.DataFrame(rows, columns=["query_id", "query", "relevant"])
    frame.attrs[CORPUS] = {str(k): str(v) for k, v in corpus.items()}
    return frame


def recall_at_k(scores: np.ndarray, relevant: list[set[int]], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(per-query Recall@k, per-query top-k document indices) from a (queries, documents) score matrix."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    recall = np.array([len(set(top[i].tolist()) & rel) / len(rel) for i, rel in enumerate(relevant)])
    return recall, top


class SentenceRetrieval(SentenceEmbedding):
    name = "sentence-retrieval"
    recognised_by = "a bare encoder (as sentence-embedding) registered with a retrieval .json held-out set"
    heldout_format = "json: queries, corpus, qrels"
    schema = HeldoutSchema(
        columns={"query_id": "text", "query": "text", "relevant": "text"},
        unique_columns=["query_id"],
        min_rows=10,
    )
    metric = TaskMetric(name="recall_at_10")
    default_recipes: ClassVar[tuple[str, ...]] = ()
    limits: ClassVar[tuple[Limit, ...]] = (
        MEAN_COSINE_LIMIT,
        *COSINE_TAIL_LIMITS,
        TOP_K_LIMIT,
        BASELINE_LIMIT,
    )
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="top10_overlap", digits=3),
        Column(metric="mean_cosine"),
        Column(metric="share_below_cosine_floor"),
        Column(metric="min_cosine"),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(metric="top10_overlap", label="FP32 top 10 kept", limit="min_top10_overlap"),
    )

    gate_specs: ClassVar[tuple[GateSpec, ...]] = judged_by(
        evidence=(BASELINE,),
        quality=(
            MEAN_COSINE,
            COSINE_TAIL,
            GateSpec(name="top-10 overlap", metric="top10_overlap", op=">=", limit="min_top10_overlap"),
        ),
    )

    def reads(self, path: Path) -> bool:
        return path.suffix.lower() == ".json"

    def read_heldout(self, path: Path) -> pd.DataFrame:
        return read_retrieval_json(path)

    @staticmethod
    def texts(heldout: pd.DataFrame) -> list[str]:
        """The queries and the documents judged relevant to them (export samples, calibration)."""
        corpus = heldout.attrs.get(CORPUS, {})
        docs = dict.fromkeys(d for rel in heldout["relevant"] for d in json.loads(rel))
        return [*heldout["query"].astype(str), *(corpus[d] for d in docs if d in corpus)]

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> np.ndarray:
        """Each query's embedding, then each corpus document's."""
        texts = [*heldout["query"].astype(str), *heldout.attrs[CORPUS].values()]
        return embed_texts(
            model, self._tokenizer(assets), texts, max_length=self.eval_max_length, threads=threads
        )

    def check_reference(self, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame) -> None:
        return None  # recall over a corpus ranks even when every query scores the same

    @staticmethod
    def _relevant(heldout: pd.DataFrame) -> list[set[int]]:
        index = {d: i for i, d in enumerate(heldout.attrs[CORPUS])}
        return [{index[d] for d in json.loads(rel)} for rel in heldout["relevant"]]

    @staticmethod
    def _scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        return unit(queries) @ unit(docs).T

    def _recall(self, vectors: np.ndarray, heldout: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(heldout)
        return recall_at_k(self._scores(vectors[:n], vectors[n:]), self._relevant(heldout))

    def score(
        self, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame, idx: np.ndarray
    ) -> tuple[float, np.ndarray]:
        recall, _ = self._recall(predicted, heldout)
        return float(recall.mean()), recall[idx].mean(axis=1)

    def compare(
        self, reference: Reference, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds,
    ) -> Comparison:  # fmt: skip
        _, top = self._recall(predicted, heldout)
        _, ref_top = self._recall(reference.outputs, heldout)
        overlap = np.array(
            [len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ref_top, top, strict=True)]
        )
        cosines = cosine_rows(reference.outputs, predicted)
        tail, tail_intervals = cosine_tail(cosines, thresholds)
        docs = list(heldout.attrs[CORPUS].values())
        examples = [
            Example(
                row=int(i),
                text=shorten(str(heldout["query"].iloc[i])),
                fp32=f"top 1: {shorten(docs[ref_top[i][0]], 80)}",
                candidate=f"top 1: {shorten(docs[top[i][0]], 80)}; keeps {overlap[i]:.0%} of the FP32 top 10",
                change=round(float(1 - overlap[i]), 4),
            )
            for i in np.argsort(overlap, kind="stable")[:MAX_EXAMPLES]
        ]
        return Comparison(
            parity=self._parity(reference, predicted, thresholds),
            extra={
                "mean_cosine": float(cosines.mean()),
                **tail,
                "top10_overlap": float(overlap.mean()),
            },
            extra_intervals=tail_intervals,
            examples=examples,
        )


SENTENCE_RETRIEVAL = register_task_type(SentenceRetrieval())
