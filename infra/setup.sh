#!/usr/bin/env bash
# Create .venv and install quantgate with everything it needs. Idempotent; safe to re-run.
# torch is installed first and pinned (2.13.0, CPU): any unpinned torch requirement pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[dev]"
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
