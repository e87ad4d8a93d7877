#!/usr/bin/env bash
# The test command: install everything, lint, then run each test tier on its own (unit: pure logic;
# flows: the real Prefect flow on the in-memory store, the full fault matrix; integration: real SeaweedFS
# and Prefect; slow: the real MiniLM and the trained families; browser: headless Chromium against a real
# stack), and print each one's wall time. Every tier runs even when an earlier one fails; the script fails
# if any did. Extra args go to every pytest tier (a tier they select nothing from is reported as such, not
# as a failure).
set -uo pipefail
cd "$(dirname "$0")/.."

# A tier that collects nothing is a failure (a moved file, a wrong marker), unless the extra args select
# tests (-k, -m, --deselect, a path or node id): then a tier they select nothing from is reported as such.
selecting=0
for arg in "$@"; do
  case $arg in -k|-k*|-m|-m*|--deselect*|tests/*|*::*) selecting=1 ;; esac
done
ran_any=0
names=()
times=()
results=()
failed=0

tier() {  # tier NAME COMMAND...: run it, record its wall time and result
  local name=$1 start rc result
  shift
  echo "== ${name}: $*"
  start=$(date +%s)
  "$@"
  rc=$?
  case $rc in
    0) result=passed; [[ "$*" == *pytest* ]] && ran_any=1 ;;
    5)  # pytest's exit code when nothing was collected: fine only where extra args deselected the tier
      if [ "$selecting" -eq 1 ]; then result="no tests selected"; else result="FAILED (no tests)"; failed=1; fi ;;
    *) result="FAILED (exit ${rc})"; failed=1 ;;
  esac
  names+=("$name")
  times+=("$(($(date +%s) - start))")
  results+=("$result")
}

summary() {
  local i total=0
  echo
  printf '%-12s %8s  %s\n' tier "wall" result
  for i in "${!names[@]}"; do
    printf '%-12s %5d:%02d  %s\n' "${names[$i]}" $((times[i] / 60)) $((times[i] % 60)) "${results[$i]}"
    total=$((total + times[i]))
  done
  printf '%-12s %5d:%02d\n' total $((total / 60)) $((total % 60))
}

tier setup bash infra/setup.sh
if [ "${results[0]}" != passed ]; then
  summary
  exit 1
fi
. .venv/bin/activate || { echo "cannot activate .venv" >&2; exit 1; }
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 DO_NOT_TRACK=1

# Four pytest workers on two cores where a run waits as much as it computes (Prefect API calls, server-side
# event writes, thread joins, server starts): the flows tier used one core's worth of CPU with two workers
# and both cores with four (11:03 -> 7:35). Each worker starts its own SeaweedFS and Prefect harness; in
# the integration tier a file's tests stay on one worker, so module fixtures are built once.
# The slow tier runs alone: the real MiniLM's latency gates (p50 vs the champion) must not share the CPU
# (with two workers, test_evidence's second version measured 2.06x its champion and was rejected).
PARALLEL=(-n 4 --dist loadfile)
tier lint ruff check .
tier unit python -m pytest tests/unit -m "not slow" -n 2 "$@"
tier flows python -m pytest tests/flows -m "not slow" -n 4 "$@"
tier integration python -m pytest tests/integration -m "not slow" "${PARALLEL[@]}" "$@"
tier slow python -m pytest tests -m "slow and not browser" "$@"
# Chromium comes from Debian's packages, installed here rather than by setup.sh: it needs root (or sudo)
# and apt, which the Python environment does not, and only this tier uses it. Its own line, so a first
# install's minute is not counted as the browser tests' time; a no-op when both binaries are on PATH.
tier chromium bash infra/browser.sh
tier browser python -m pytest tests/browser "$@"

if [ "$ran_any" -eq 0 ]; then
  echo "no tier ran a test: nothing was checked" >&2
  failed=1
fi
summary
exit "$failed"
