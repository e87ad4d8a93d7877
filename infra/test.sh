#!/usr/bin/env bash
# The test command: install everything, lint, then run each test tier and print each one's wall time.
#   unit         pure logic
#   flows        the real Prefect flow on the in-memory store: the full fault matrix
#   integration  real SeaweedFS and Prefect servers and workers
#   browser      headless Chromium against a real stack
#   scale        the Prefect server on a real PostgreSQL (QUANTGATE_PREFECT_DB=postgres, infra/postgres.py),
#                SeaweedFS as a cluster (infra/seaweed_cluster.py, fixed ports 4650-4658), and the tiny BERT
#                exported with ONNX external data (the twin of a model past 2 GB)
#   slow         the real MiniLM and the families trained from real data
# Every tier runs side by side. The slow tier judges the real models' speed, so it runs at the normal
# priority and the other five (none of which judges a latency) at nice 19: the kernel gives them only the
# CPU the slow tier leaves (it keeps ~1.3 of the 2 cores busy; alone, after the others, it left the rest
# idle for five minutes). Without the nice, a second version of MiniLM measured 2.06x its identical
# champion with another pytest worker beside it.
# Chromium's install (Debian's packages: it needs root and apt, not the Python environment) runs beside
# the Python setup. Every tier runs even when another fails; the script fails if any did. Extra args go to
# every pytest tier (a tier they select nothing from is reported as such, not as a failure).
set -uo pipefail
cd "$(dirname "$0")/.."

# A tier that collects nothing is a failure (a moved file, a wrong marker), unless the extra args select
# tests (-k, -m, --deselect, a path or node id): then a tier they select nothing from is reported as such.
selecting=0
for arg in "$@"; do
  case $arg in -k|-k*|-m|-m*|--deselect*|tests/*|*::*) selecting=1 ;; esac
done
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
order=()
waiting=()

children_cpu() {  # children_cpu FILE: CPU seconds (user + system) of this shell's ended children, from
  # bash's `times` (run in this shell: in a $(...) subshell it would count that subshell's children)
  times > "$1"
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } }
    END { printf "%.0f", s }' "$1"
}

run_tier() {  # run_tier NAME COMMAND...: run it; "seconds|result|ran a test|cpu seconds" to $logs/NAME.result
  local name=$1 start rc result ran=0 cpu
  shift
  echo "== ${name}: $*"
  start=$(date +%s)
  children_cpu "$logs/${name}.times" > "$logs/${name}.cpu0"
  "$@"
  rc=$?
  children_cpu "$logs/${name}.times" > "$logs/${name}.cpu1"
  cpu=$(($(cat "$logs/${name}.cpu1") - $(cat "$logs/${name}.cpu0")))
  case $rc in
    0) result=passed; [[ "$*" == *pytest* ]] && ran=1 ;;
    5)  # pytest's exit code when nothing was collected: fine only where extra args deselected the tier
      if [ "$selecting" -eq 1 ]; then result="no tests selected"; else result="FAILED (no tests)"; fi ;;
    *) result="FAILED (exit ${rc})" ;;
  esac
  echo "$(($(date +%s) - start))|${result}|${ran}|${cpu}" > "$logs/${name}.result"
}

tier() {  # tier NAME COMMAND...: in the foreground, its output as it comes
  order+=("$1")
  run_tier "$@"
}

spawn() {  # spawn NAME [--after TIER] COMMAND...: in the background; its output is shown when it ends
  local name=$1 after=""
  shift
  if [ "${1:-}" = --after ]; then after=$2; shift 2; fi
  order+=("$name")
  waiting+=("$name")
  (
    if [ -n "$after" ]; then  # its clock starts once the tier it needs has ended
      while [ ! -f "$logs/${after}.result" ]; do sleep 1; done
      if [ "$(cut -d'|' -f2 "$logs/${after}.result")" != passed ]; then
        echo "== ${name}: not run, ${after} failed"
        echo "0|FAILED (${after} failed)|0|0" > "$logs/${name}.result"
        exit
      fi
    fi
    run_tier "$name" "$@"
  ) > "$logs/${name}.log" 2>&1 &
}

collect() {  # wait for every background tier and show its output, in the order they were started
  local name
  for name in "${waiting[@]}"; do
    while [ ! -f "$logs/${name}.result" ]; do sleep 1; done
    cat "$logs/${name}.log"
  done
  waiting=()
  wait
}

summary() {
  local name seconds result ran cpu total=$(($(date +%s) - began)) failed=0 ran_any=0 cpu_all=0
  echo
  printf '%-12s %8s %7s  %s\n' tier "wall" "CPU-s" result
  for name in "${order[@]}"; do
    IFS='|' read -r seconds result ran cpu < "$logs/${name}.result"
    printf '%-12s %5d:%02d %7d  %s\n' "$name" $((seconds / 60)) $((seconds % 60)) "$cpu" "$result"
    cpu_all=$((cpu_all + cpu))
    case $result in passed|"no tests selected") ;; *) failed=1 ;; esac
    [ "$ran" -eq 1 ] && ran_any=1
  done
  printf '%-12s %5d:%02d %7d  %s\n' total $((total / 60)) $((total % 60)) "$cpu_all" \
    "(every tier after lint side by side, all but slow at nice 19; CPU-s: each tier's ended processes)"
  if [ "$ran_any" -eq 0 ]; then
    echo "no tier ran a test: nothing was checked" >&2
    failed=1
  fi
  return "$failed"
}

began=$(date +%s)
spawn chromium bash infra/browser.sh  # a no-op when both binaries are on PATH
tier setup bash infra/setup.sh
if [ "$(cut -d'|' -f2 "$logs/setup.result")" != passed ]; then
  collect
  summary
  exit 1
fi
. .venv/bin/activate || { echo "cannot activate .venv" >&2; exit 1; }
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 DO_NOT_TRACK=1

tier lint ruff check .
# Side by side: ten pytest processes on two cores, each starting its own Prefect harness (and SeaweedFS
# where it needs one). In the integration tier a file's tests stay on one worker, so module fixtures are
# built once; the fault matrix's shards spread over the flows tier's workers.
# Each tier ends with its ten slowest tests (setup and teardown apart): where the next minute is.
slowest=(--durations=10 --durations-min=5)
spawn slow python -m pytest tests -m "slow and not browser and not scale" "${slowest[@]}" "$@"
low=(nice -n 19)  # below the slow tier (above)
spawn unit "${low[@]}" python -m pytest tests/unit -m "not slow and not scale" -n 1 "${slowest[@]}" "$@"
spawn flows "${low[@]}" python -m pytest tests/flows -m "not slow and not scale" -n 3 "${slowest[@]}" "$@"
spawn integration "${low[@]}" python -m pytest tests/integration -m "not slow and not scale" -n 3 \
  --dist loadfile "${slowest[@]}" "$@"
spawn browser --after chromium "${low[@]}" python -m pytest tests/browser "${slowest[@]}" "$@"
spawn scale "${low[@]}" python -m pytest tests -m scale "${slowest[@]}" "$@"
collect

summary
