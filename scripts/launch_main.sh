#!/usr/bin/env bash
# Shared body of run_TaskDiffusion_{pascal,nyud}.sh and infer_TaskDiffusion_{pascal,nyud}.sh.
#   bash scripts/launch_main.sh train|infer DEFAULT_CONFIG CKPT_EXAMPLE [main.py args...]
# Environment: CONFIG (overrides DEFAULT_CONFIG), NPROC, DATA, CKPT (infer) — see the wrappers.
# train: torchrun over NPROC processes (default: visible GPUs, 1 without CUDA: CPU/gloo).
# infer: one plain process unless NPROC > 1 (then torchrun shards the val split).
# Exit status: main.py's (0 done, 2 user error, 75 storage failure, 128 + signal after a graceful stop,
# 1 a crash, with torchrun's report under torchrun).
set -euo pipefail
MODE=$1 DEFAULT_CONFIG=$2 CKPT_EXAMPLE=$3
shift 3
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-$DEFAULT_CONFIG}
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
ARGS=(--config_exp "$CONFIG" --run_mode "$MODE")
if [ "$MODE" = infer ]; then
  if [ -z "${CKPT:-}" ]; then
    echo "error: set CKPT=path/to/checkpoint (e.g. $CKPT_EXAMPLE)" >&2
    exit 2
  fi
  ARGS+=(--trained_model "$CKPT")
  NPROC=${NPROC:-1}
elif [ -z "${NPROC:-}" ]; then
  NPROC=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
[ -n "${DATA:-}" ] && ARGS+=(--data_root "$DATA")
if [ "$MODE" = train ] || [ "$NPROC" -gt 1 ]; then
  echo "[$MODE] torchrun --standalone --nproc_per_node=$NPROC main.py ${ARGS[*]} $*"
  # scripts/torchrun.py: torchrun, but a worker's user error (2), storage failure (75) or graceful stop
  # (128 + signal) ends with main.py's one line and that status instead of torchrun's traceback
  exec "$PY" scripts/torchrun.py --standalone --nproc_per_node="$NPROC" main.py "${ARGS[@]}" "$@"
fi
echo "[$MODE] python main.py ${ARGS[*]} $*"
exec "$PY" main.py "${ARGS[@]}" "$@"
