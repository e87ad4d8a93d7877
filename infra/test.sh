#!/usr/bin/env bash
# The test command: install everything, lint, then run every test suite (unit, flows, integration with a
# real SeaweedFS and Prefect, and the real MiniLM end to end). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
. .venv/bin/activate
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 DO_NOT_TRACK=1
ruff check .
python -m pytest "$@"
