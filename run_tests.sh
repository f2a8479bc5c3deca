#!/usr/bin/env bash
# Create/update .venv, install requirements.txt, run the test suite. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
echo "[run_tests] running pytest"
exec .venv/bin/python -m pytest -q "$@"
