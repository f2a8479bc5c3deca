#!/usr/bin/env bash
# Evaluate a TaskDiffusion checkpoint on the NYUD-v2 val split (full protocol): metrics JSON + prediction PNGs.
#   CKPT=runs/TaskDiffusion_vitL_nyud/checkpoints/best.pth bash infer_TaskDiffusion_nyud.sh
#   CKPT=taskdiffusion_nyud_vitl.pth.tar bash infer_TaskDiffusion_nyud.sh    # an original checkpoint (module. keys)
# Environment: CKPT (required), CONFIG (default configs/nyud/vitL.yml; use the config the checkpoint was trained with),
# NPROC (processes, default 1; >1 shards the val split over GPUs), DATA (dataset root).
# Extra arguments go to main.py (e.g. --output_dir runs/eval_x). Results: <run folder>/metrics/ and predictions/.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-configs/nyud/vitL.yml}
if [ -z "${CKPT:-}" ]; then
  echo "error: set CKPT=path/to/checkpoint (e.g. runs/TaskDiffusion_vitL_nyud/checkpoints/best.pth)" >&2
  exit 2
fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
NPROC=${NPROC:-1}
ARGS=(--config_exp "$CONFIG" --run_mode infer --trained_model "$CKPT")
[ -n "${DATA:-}" ] && ARGS+=(--data_root "$DATA")
if [ "$NPROC" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    main.py "${ARGS[@]}" "$@"
fi
echo "[infer] python main.py ${ARGS[*]} $*"
exec "$PY" main.py "${ARGS[@]}" "$@"
