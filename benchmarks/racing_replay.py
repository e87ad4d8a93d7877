"""Racing replayed on recorded runs (issue #25): would racing have changed a decision?

Two checks, no model run:
- **replay**: for each recorded exhaustive run (a run report: every candidate scored on every row), the
  candidates are judged fastest first as racing judges them, skipping what `quantgate.racing.cannot_win`
  names, and `choose` over the judged ones is compared with the run's own choice.
- **pair**: an exhaustive and a raced run of the same model (`benchmarks/e2e_minilm.py --exhaustive` and
  without): the same promoted recipe; every candidate the raced run dropped after its probe failed in the
  exhaustive run too; every candidate both scored in full got the same accuracy verdict. Speed verdicts are
  each run's own timing round and are reported, not compared.

    .venv/bin/python -m benchmarks.racing_replay [--reports benchmarks/results/families/*.report.json]
        [--pair benchmarks/results/e2e_minilm_exhaustive.json benchmarks/results/e2e_minilm_raced.json]
        [--pair-reports EXHAUSTIVE_DIR RACED_DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.runs import write_result  # noqa: E402
from quantgate.racing import cannot_win  # noqa: E402
from quantgate.search import CandidateResult, SearchResult, choose, speed_of  # noqa: E402


def replay(search: SearchResult) -> dict[str, Any]:
    """Racing's order and skips over a recorded exhaustive search's own verdicts and timings."""
    timed = [c for c in search.candidates if c.status == "evaluated" and c.latency is not None]
    pending = sorted(timed, key=speed_of)
    judged: list[CandidateResult] = []
    skipped: list[str] = []
    while pending:
        losing = {c.name for c in cannot_win(pending, judged)}
        skipped += [c.name for c in pending if c.name in losing]
        pending = [c for c in pending if c.name not in losing]
        if pending:
            judged.append(pending.pop(0))
    picked = choose(judged)
    return {
        "candidates": len(search.candidates),
        "judged_in_full": len(judged),
        "cannot_win": skipped,
        "recorded_choice": search.chosen,
        "replayed_choice": picked.name if picked else None,
        "same": (picked.name if picked else None) == search.chosen,
    }


SPEED_GATES = ("speed-up", "p50 vs champion")


def accuracy_failed(failed_gates: str | None) -> bool:
    """Whether a candidate table's failed gates name one that is not a speed gate."""
    parts = [p for p in (failed_gates or "").split("; ") if p]
    return any(not any(word in p for word in SPEED_GATES) for p in parts)


def pair(exhaustive: dict[str, Any], raced: dict[str, Any]) -> dict[str, Any]:
    """An exhaustive and a raced e2e run (their candidate tables) of the same model, compared on what
    racing decides: a raced-out candidate must have failed an accuracy gate in the exhaustive run, and a
    candidate the raced run scored in full must get the same accuracy verdict."""
    every = {c["candidate"]: c for c in exhaustive["candidates"]}
    rows = []
    for c in raced["candidates"]:
        other = every[c["candidate"]]
        outcome = (c.get("scored_on") or "").split(" ")[0]
        agrees: bool | None = None  # speed-failed / cannot-win: this run's own timing round decided
        if outcome == "raced-out":
            agrees = accuracy_failed(other["failed_gates"])
        elif outcome == "full":
            agrees = accuracy_failed(c["failed_gates"]) == accuracy_failed(other["failed_gates"])
        rows.append(
            {
                "candidate": c["candidate"],
                "raced": f"{c['result']} ({outcome})",
                "exhaustive": other["result"],
                "exhaustive_failed_gates": other["failed_gates"],
                "agrees": agrees,
            }
        )
    return {
        "chosen": {"exhaustive": exhaustive["chosen"], "raced": raced["chosen"]},
        "same_choice": exhaustive["chosen"] == raced["chosen"],
        "flow_s": {"exhaustive": round(exhaustive["flow_s"], 1), "raced": round(raced["flow_s"], 1)},
        "candidates": rows,
        "disagreements": [r["candidate"] for r in rows if r["agrees"] is False],
    }


def pair_reports(exhaustive: SearchResult, raced: SearchResult) -> dict[str, Any]:
    """The same comparison on two run reports' searches (benchmarks/families.py with --no-race and
    without): what racing decided must agree; the choices are shown side by side with both runs' speeds,
    since which of two near-equal candidates is faster is each run's own timing round."""
    every = {c.name: c for c in exhaustive.candidates}
    rows = []
    for c in raced.candidates:
        other = every.get(c.name)
        if other is None or other.gates is None:
            continue
        outcome = c.race.outcome if c.race else "full"
        other_failed = any(r.gate.kind != "speed" for r in other.gates.failed)
        agrees: bool | None = None
        if outcome == "raced-out":
            raced_gates = {r.gate.name for r in (c.gates.failed if c.gates else [])}
            agrees = raced_gates <= {r.gate.name for r in other.gates.failed}
        elif outcome == "full" and c.gates is not None:
            agrees = any(r.gate.kind != "speed" for r in c.gates.failed) == other_failed
        rows.append(
            {
                "candidate": c.name,
                "raced": outcome,
                "agrees": agrees,
                "speed": {"exhaustive": round(speed_of(other), 4), "raced": round(speed_of(c), 4)},
            }
        )
    return {
        "chosen": {"exhaustive": exhaustive.chosen, "raced": raced.chosen},
        "racing": raced.racing.model_dump() if raced.racing else None,
        "candidates": rows,
        "disagreements": [r["candidate"] for r in rows if r["agrees"] is False],
    }


def compare_folders(exhaustive_dir: Path, raced_dir: Path) -> dict[str, Any]:
    families = {}
    for path in sorted(raced_dir.glob("*.report.json")):
        other = exhaustive_dir / path.name
        if not other.is_file():
            continue
        raced, every = json.loads(path.read_text())["search"], json.loads(other.read_text())["search"]
        if not raced or not every:
            continue
        name = path.name.removesuffix(".report.json")
        compared = pair_reports(SearchResult.model_validate(every), SearchResult.model_validate(raced))
        families[name] = compared
        print(
            f"\n{name}: chosen exhaustive {compared['chosen']['exhaustive']}, raced "
            f"{compared['chosen']['raced']}; racing {'on' if compared['racing'] else 'off (too few rows)'}; "
            f"disagreements {compared['disagreements'] or 'none'}"
        )
        for row in compared["candidates"]:
            verdict = {True: "agrees", False: "DISAGREES", None: "timing"}[row["agrees"]]
            print(
                f"  {row['candidate']:<46}{row['raced']:<14}{verdict:<10}"
                f"speed {row['speed']['exhaustive']} / {row['speed']['raced']}"
            )
    return families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reports",
        nargs="*",
        type=Path,
        default=sorted((REPO / "benchmarks" / "results" / "families").glob("*.report.json")),
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        type=Path,
        default=[
            REPO / "benchmarks" / "results" / "e2e_minilm_exhaustive.json",
            REPO / "benchmarks" / "results" / "e2e_minilm_raced.json",
        ],
    )
    parser.add_argument(
        "--pair-reports",
        nargs=2,
        type=Path,
        metavar=("EXHAUSTIVE_DIR", "RACED_DIR"),
        help="two folders of families.py run reports (<model>.report.json), --no-race and raced",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "racing_replay.json")
    args = parser.parse_args()

    replays = {}
    print(f"{'recorded run':<28}{'cands':>6}{'full':>6}  {'recorded choice':<46}{'replayed':<8}")
    for path in args.reports:
        report = json.loads(path.read_text())
        if not report.get("search"):
            continue
        r = replay(SearchResult.model_validate(report["search"]))
        replays[path.name] = r
        print(
            f"{path.name.removesuffix('.report.json'):<28}{r['candidates']:>6}{r['judged_in_full']:>6}  "
            f"{r['recorded_choice'] or '(none)':<46}{'same' if r['same'] else 'DIFFERS'}"
        )
    paired = None
    if all(p.is_file() for p in args.pair):
        paired = pair(*(json.loads(p.read_text()) for p in args.pair))
        print(
            f"\n{args.pair[0].name} vs {args.pair[1].name}: chosen {paired['chosen']}, flow "
            f"{paired['flow_s']['exhaustive']} s -> {paired['flow_s']['raced']} s"
        )
        for row in paired["candidates"]:
            verdict = {True: "agrees", False: "DISAGREES", None: "timing (each run's own round)"}
            print(f"  {row['candidate']:<46}{row['raced']:<28}{row['exhaustive']:<9}{verdict[row['agrees']]}")
    families = compare_folders(*args.pair_reports) if args.pair_reports else {}
    write_result(
        args.out,
        " ".join(sys.argv),
        "racing replayed on recorded runs",
        {"replays": replays, "pair": paired, "families": families},
    )
    same = (
        all(r["same"] for r in replays.values())
        and (paired is None or (paired["same_choice"] and not paired["disagreements"]))
        and not any(f["disagreements"] for f in families.values())
    )
    return 0 if same else 2


if __name__ == "__main__":
    sys.exit(main())
