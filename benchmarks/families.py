"""Every model family through the real flow: train (or reuse) the real models of benchmarks/train.py,
register each with `quantgate register` (its kind told from the folder), run `quantgate run` with the
task type's default search and every default gate, and tabulate the decisions.

Starts its own SeaweedFS on 127.0.0.1 (stopped at the end, also on failure); Prefect's ephemeral API.
Benchmark settings are the CLI's defaults: 1 thread, each task type's default serving profile (requests
drawn from its held-out set, batch 1 and latency for text and images at their own lengths and sizes, 64 rows
a request and throughput for tables). Writes JSON and prints the families table (`--readme` also writes
it into docs/families.md between its markers).

    .venv/bin/python benchmarks/families.py [--models ~/.cache/quantgate-families] [--only tabular] [--readme]
        [--no-race]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

START, END = "<!-- families-table:start -->", "<!-- families-table:end -->"
TABLE_DOC = REPO / "docs" / "families.md"  # the file --readme writes the table into


def _text_classifier(root: Path) -> tuple[Path, Path]:
    from benchmarks.train import sst2_sample, train_sequence_classifier, write_tsv

    model = root / "model"
    if not (model / "model.safetensors").is_file():
        train_sequence_classifier(model, rows=8000, epochs=1)
    # GLUE dev: 872 whole review sentences (the requests a sentiment service sees), not parse-tree phrases.
    return model, write_tsv(sst2_sample("glue-dev", 872, seed=1), root / "sst2-glue-dev.tsv")


def _ner(root: Path) -> tuple[Path, Path]:
    from benchmarks.train import train_token_classifier, wnut17, write_conll

    model = root / "model"
    if not (model / "model.safetensors").is_file():
        train_token_classifier(model, epochs=3)
    return model, write_conll(wnut17("dev"), root / "wnut17-dev.conll")


def _table(kind: str, dataset: str) -> Callable[[Path], tuple[Path, Path]]:
    def make(root: Path) -> tuple[Path, Path]:
        from benchmarks.train import train_tabular

        if (root / "model" / "model.skops").is_file():
            return root / "model", root / "heldout.csv"
        return train_tabular(root, kind, dataset)

    return make


def _cnn(root: Path) -> tuple[Path, Path]:
    from benchmarks.train import train_image_classifier

    if (root / "model" / "model.safetensors").is_file():
        return root / "model", root / "digits-heldout.npz"
    return train_image_classifier(root, size=64, epochs=10, widths=(32, 64, 128, 256))


# WNUT-17 dev (945 evaluation sentences, ~800 entities) cannot show an entity-F1 drop within 1 point: the
# paired interval alone is ~1.5 points wide (the default run says heldout-too-small, with the sentences it
# would need). The second NER run states the bound this set can support explicitly. (It also needed
# `--max-prob-diff 0.4` while that gate was the largest change over 15k words; the probability tail counts
# sentences past 0.3 instead, a limit that does not tighten as the set grows.)
NER_LIMITS = ["--max-task-metric-drop", "0.02"]

# (name, family, what, how to make it, where the trained model is kept, extra `quantgate run` flags)
MODELS: list[tuple[str, str, str, Callable[[Path], tuple[Path, Path]], str, list[str]]] = [
    ("sst2-minilm", "sequence-classification", "MiniLM-L6 fine-tuned on 8k SST-2 sentences", _text_classifier,
     "sst2-minilm", []),
    ("wnut17-minilm", "token-classification", "MiniLM-L6 fine-tuned on WNUT-17 train", _ner,
     "wnut17-minilm", []),
    ("wnut17-minilm-2pt", "token-classification", "the same, judged with a 2-point drop bound", _ner,
     "wnut17-minilm", NER_LIMITS),
    ("cancer-mlp", "tabular", "MLPClassifier(256, 256), breast_cancer", _table("mlp", "breast_cancer"),
     "cancer-mlp", []),
    ("digits-mlp", "tabular", "MLPClassifier(256, 256), digits", _table("mlp", "digits"), "digits-mlp", []),
    ("cancer-logistic", "tabular", "LogisticRegression, breast_cancer", _table("logistic", "breast_cancer"),
     "cancer-logistic", []),
    ("wine-forest", "tabular", "RandomForest(100), wine", _table("forest", "wine"), "wine-forest", []),
    ("digits-resnet", "image-classification", "ResNet (4 stages, 32-256 wide), digits at 64x64", _cnn,
     "digits-resnet", []),
]  # fmt: skip


def _row(name: str, family: str, what: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    bench = {r["engine"]: r for r in report["benchmark"]["results"]}
    chosen = report["recipe"]["name"]
    fp32, int8 = bench.get("onnx-fp32"), bench.get(chosen)
    m = report["metrics"]
    promoted = report["outcome"] == "promoted"
    profile = report["benchmark"]["settings"].get("profile") or {}
    requests = report["benchmark"].get("requests") or {}

    def speed(r: dict[str, Any] | None) -> float | None:
        return None if r is None else r.get("objective_ms") or r["p50_ms"]

    return {
        "family": family,
        "model": name,
        "what": what,
        "task_metric": report["search"]["candidates"][0]["evaluation"]["task_metric"]
        if report["search"]["candidates"][0].get("evaluation")
        else "accuracy",
        "fp32_metric": round(m["task_metric_fp32"], 4),
        "promoted_metric": round(m["task_metric_candidate"], 4) if promoted else None,
        "drop_points": round(100 * m.get("task_metric_drop", 0.0), 2),
        "outcome": report["outcome"],
        "reason": report.get("reason"),
        "recipe": chosen if promoted else None,
        "profile": f"{profile.get('name', 'b1-s128')}: {profile.get('objective') or 'latency'}, batch "
        f"{'/'.join(map(str, profile.get('batch_sizes', [1])))}"
        + (f", lengths p50 {requests['length_p50']:g}" if requests.get("length_p50") else ""),
        "p50_fp32_ms": speed(fp32),
        "p50_int8_ms": speed(int8) if promoted else None,
        "speedup": round(speed(fp32) / speed(int8), 2) if (fp32 and int8 and promoted) else None,
        "size_fp32_mb": fp32["size_mb"] if fp32 else None,
        "size_int8_mb": int8["size_mb"] if (int8 and promoted) else None,
        "parity_max_abs_diff": round(report["parity"]["max_abs_diff"], 4),
        "parity_passed": report["parity"]["passed"],
        "candidates": len(report["search"]["candidates"]),
        "flow_s": round(seconds, 1),
        "limits_set": {k: v for k, v in report["thresholds"].items() if v is not None},
        "rows_needed": report.get("rows_needed"),
    }


def _ms(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.4f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | model | metric | FP32 | promoted | recipe | serving profile | ONNX FP32 → INT8 at the "
        "profile's objective (ms per request, or per item for throughput; 1 thread) | size MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["outcome"] == "promoted":
            speed = f"{_ms(r['p50_fp32_ms'])} → {_ms(r['p50_int8_ms'])} ms ({r['speedup']:.2f}x)"
            size = f"{r['size_fp32_mb']:.3g} → {r['size_int8_mb']:.3g}"
            promoted, recipe = f"{r['promoted_metric']:.4f}", f"`{r['recipe']}`"
        else:
            speed = f"{_ms(r['p50_fp32_ms'])} ms FP32 only" if r["p50_fp32_ms"] else "-"
            size = f"{r['size_fp32_mb']:.3g}" if r["size_fp32_mb"] else "-"
            needed = f" ({r['rows_needed']} rows needed)" if r.get("rows_needed") else ""
            promoted, recipe = "not promoted", f"**{r['reason']}**{needed}"
        lines.append(
            f"| {r['family']} | {r['model']} ({r['what']}) | {r['task_metric']} | {r['fp32_metric']:.4f} | "
            f"{promoted} | {recipe} | {r.get('profile', '-')} | {speed} | {size} |"
        )
    return "\n".join(lines)


def bars(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's first bars, measured in this run."""
    out = []
    for r in rows:
        if r["family"] in ("sequence-classification", "token-classification"):
            ok = bool(r["speedup"] and r["speedup"] >= 2 and r["drop_points"] <= 1)
            out.append({"model": r["model"], "bar": "≥ 2x ONNX FP32 at ≤ 1 pt drop", "ok": ok})
        elif r["family"] == "image-classification":
            ok = bool(
                r["speedup"]
                and r["speedup"] >= 2
                and r["drop_points"] <= 1
                and "static" in (r["recipe"] or "")
            )
            out.append(
                {"model": r["model"], "bar": "static INT8 ≥ 2x ONNX FP32 at ≤ 1 pt top-1 drop", "ok": ok}
            )
        elif r["model"].endswith("-mlp"):
            out.append({"model": r["model"], "bar": "parity vs scikit-learn within 0.04 / 0.01",
                        "ok": bool(r["parity_passed"])})  # fmt: skip
        elif r["model"].endswith("-forest"):
            out.append({"model": r["model"], "bar": "NotPromoted: nothing-to-quantize",
                        "ok": r["reason"] == "nothing-to-quantize"})  # fmt: skip
    return out


def write_readme(table: str) -> None:
    readme = TABLE_DOC
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])


def main() -> int:  # noqa: PLR0915 - the benchmark reads top to bottom, one step per statement
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "families.json")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "quantgate-families",
                        help="where the trained models are kept (reused when present)")  # fmt: skip
    parser.add_argument("--only", nargs="*", help="families or model names to run (default: all)")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/families.md")
    parser.add_argument("--train-only", action="store_true", help="make the models, run nothing")
    parser.add_argument(
        "--no-race", action="store_true", help="score every candidate on every row (the exhaustive search)"
    )
    parser.add_argument("--table-from", type=Path, help="only print (and --readme write) the table of a JSON")
    args = parser.parse_args()

    if args.table_from:
        rows = json.loads(args.table_from.read_text())["rows"]
        print(markdown(rows))
        if args.readme:
            write_readme(markdown(rows))
        return 0

    from typer.testing import CliRunner

    from infra.seaweed import SeaweedServer
    from quantgate.cli import app
    from quantgate.process import configure_process
    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore

    configure_process()
    chosen = [m for m in MODELS if not args.only or m[0] in args.only or m[1] in args.only]
    made = {}
    for name, _family, _what, make, cache, _flags in chosen:
        t0 = time.perf_counter()
        made[name] = make(args.models / cache)
        print(f"{name}: model ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.train_only:
        return 0

    runner = CliRunner()
    rows = []
    key, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, SeaweedServer(Path(tmp) / "s3", key, secret) as server:
        os.environ.update(
            {
                "QUANTGATE_S3_ENDPOINT_URL": server.endpoint_url,
                "QUANTGATE_BUCKET": "quantgate-families",
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret,
                "QUANTGATE_WORK_DIR": str(Path(tmp) / "work"),
            }
        )
        store = ObjectStore(Settings())
        store.ensure_bucket()
        for name, family, what, _, _, flags in chosen:
            model_dir, heldout = made[name]
            registered = runner.invoke(
                app, ["register", name, "v1", "--model-dir", str(model_dir), "--heldout", str(heldout)]
            )
            if registered.exit_code != 0:
                print(registered.output, file=sys.stderr)
                return 1
            t0 = time.perf_counter()
            ran = runner.invoke(app, ["run", name, "v1", *flags, *(["--no-race"] if args.no_race else [])])
            seconds = time.perf_counter() - t0
            decided = [
                k.key for k in store.list("") if k.key.endswith("/report.json") and f"/{name}/v1/" in k.key
            ]
            decision = next((k for k in decided if k.startswith(("promoted/", "rejected/"))), None)
            if decision is None:
                print(ran.output, file=sys.stderr)
                return 1
            report = json.loads(store.get_bytes(decision))
            if "benchmark" not in report:  # a run that failed: its own report says why
                print(ran.output[-3000:], decided, json.dumps(report)[:2000], file=sys.stderr)
                return 1
            rows.append(_row(name, family, what, report, seconds))
            (args.out.parent / "families").mkdir(parents=True, exist_ok=True)
            (args.out.parent / "families" / f"{name}.report.json").write_text(json.dumps(report, indent=1))
            print(json.dumps(rows[-1]), flush=True)

    table = markdown(rows)
    checked = bars(rows)
    print("\n" + table + "\n")
    for b in checked:
        print(f"{'PASS' if b['ok'] else 'FAIL'}  {b['model']}: {b['bar']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "bars": checked, "command": " ".join(sys.argv)}, indent=1))
    if args.readme:
        write_readme(table)
    return 0 if all(b["ok"] for b in checked) else 2


if __name__ == "__main__":
    sys.exit(main())
