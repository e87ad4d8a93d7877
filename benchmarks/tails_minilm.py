"""The cosine tail on all-MiniLM-L6-v2: what the run's rows say about texts the run never saw.

Builds the promoted recipe and three others exactly as a run does (`recipes_minilm.in_process_search`: the
flow's export, split and gates), plus NNCF calibrated the way a user does (`peers.user_calibrated_peer`),
then embeds (1) the run's evaluation texts and (2) unseen texts (SST-2 train sentences: another corpus,
so a harder test than "the same distribution") with FP32 and each candidate. For each, per text: the
cosine to FP32. Printed and written as JSON: the minimum, low quantiles, the share below each of a few
floors with its Wilson interval, the tail gate's decision at each floor (1 % limit) and the old
min-cosine gate's (>= 0.90) on the run's texts, and the same quantiles and shares on the unseen texts.

    .venv/bin/python benchmarks/tails_minilm.py            # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = (
    "ov-nncf-int8-transformer-symmetric",  # what the default search promoted (README, peers table)
    "dynamic-int8-per-channel",
    "dynamic-int8-per-channel-reduce-range-no-sln",
    "dynamic-int8",  # the write-ups' one-liner: per tensor
)
UNSEEN = 5000


FLOORS = (0.90, 0.95, 0.97)


def summary(cosines: np.ndarray) -> dict[str, Any]:
    """Quantiles of the per-text cosines, and for each floor the texts below it, their share and its
    Wilson interval (whose upper end the tail gate judges)."""
    from quantgate.stats import share_beyond

    out: dict[str, Any] = {
        "texts": len(cosines),
        "min": round(float(cosines.min()), 4),
        "p001": round(float(np.quantile(cosines, 0.001)), 4),
        "p01": round(float(np.quantile(cosines, 0.01)), 4),
        "mean": round(float(cosines.mean()), 4),
    }
    for floor in FLOORS:
        share, (lo, hi) = share_beyond(cosines, floor, below=True)
        out[f"below_{floor:g}"] = {
            "texts": int((cosines < floor).sum()),
            "share": round(share, 5),
            "interval": [round(lo, 5), round(hi, 5)],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tails_minilm.json")
    args = parser.parse_args()

    from benchmarks.peers import user_calibrated_peer
    from benchmarks.recipes_minilm import in_process_search
    from benchmarks.train import sst2_sample
    from infra.stsb import stsb_path
    from quantgate.backends import Servable
    from quantgate.families.sentence_embedding import cosine_rows, embed_texts
    from quantgate.quantize import resolve_recipes
    from quantgate.search_driver import servable_of
    from quantgate.thresholds import GateThresholds

    stsb = stsb_path()
    assert stsb is not None, "STS-B dev not found (python -m infra.stsb)"
    thresholds = GateThresholds()
    floor, share_limit = thresholds.cosine_floor, thresholds.max_share_below_cosine_floor
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        done = in_process_search(resolve_recipes(list(RECIPES)), stsb, work)
        task, job = done.task, done.job
        peer = user_calibrated_peer(task, done, done.exported.onnx_path, done.exported.assets_dir, stsb, work)
        tokenizer = task._tokenizer(done.exported.assets_dir)
        unseen = [r["sentence"] for r in sst2_sample("train", UNSEEN, seed=7)]

        def embed(servable: Servable, texts: list[str]) -> np.ndarray:
            return embed_texts(servable, tokenizer, texts, max_length=task.eval_max_length, threads=2)

        run_texts = task.texts(job.evaluation)
        fp32_run = job.reference.outputs
        fp32_unseen = embed(Servable(done.exported.onnx_path), unseen)
        results = []
        for c in [*(done.result.get(r) for r in RECIPES), peer]:
            servable = servable_of(c, job.out_dir)
            run = summary(cosine_rows(fp32_run, embed(servable, run_texts)))
            new = summary(cosine_rows(fp32_unseen, embed(servable, unseen)))
            results.append(
                {
                    "recipe": c.name,
                    "run": run,
                    "unseen": new,
                    "tail_gate_passes": {
                        f"{f:g}": run[f"below_{f:g}"]["interval"][1] <= share_limit for f in FLOORS
                    },
                    "old_min_gate_passes": run["min"] >= 0.90,
                    "other_failed_gates": [
                        r.gate.name for r in (c.gates.failed if c.gates else []) if r.gate.per_row is None
                    ],
                }
            )
            print(json.dumps(results[-1]), flush=True)
    meta = {
        "default_floor": floor,
        "max_share": share_limit,
        "unseen": f"SST-2 train, {UNSEEN} sentences (seed 7)",
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
