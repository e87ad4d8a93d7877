#!/usr/bin/env bash
# Start a real Prefect server (UI on http://127.0.0.1:${PREFECT_PORT:-4200}), create the process work pool,
# deploy every deployment in prefect.yaml and start a worker, all on 127.0.0.1. Storage settings come from
# the environment (source .quantgate/seaweed.env first). Stop: python -m infra.prefect_stack stop
# QUANTGATE_PREFECT_DB=postgres puts the server on a local PostgreSQL (docs/deployments.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
echo "deploy.sh: Prefect server, work pool, deployments, zombie automation and the workers (QUANTGATE_WORKERS, default 1) on 127.0.0.1" \
    "(storage: ${QUANTGATE_S3_ENDPOINT_URL:-AWS S3}, bucket ${QUANTGATE_BUCKET:-quantgate};" \
    "database: ${QUANTGATE_PREFECT_DB:-sqlite})"
python -m infra.prefect_stack start --port "${PREFECT_PORT:-4200}"
