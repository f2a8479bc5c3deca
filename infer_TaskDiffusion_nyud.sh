#!/usr/bin/env bash
# Evaluate a TaskDiffusion checkpoint on the NYUD-v2 val split (full protocol): metrics JSON + prediction PNGs.
#   CKPT=runs/TaskDiffusion_vitL_nyud/checkpoints/best.pth bash infer_TaskDiffusion_nyud.sh
#   CKPT=taskdiffusion_nyud_vitl.pth.tar bash infer_TaskDiffusion_nyud.sh    # an original checkpoint (module. keys)
# Environment: CKPT (required), CONFIG (default configs/nyud/vitL.yml; use the config the checkpoint was trained with),
# NPROC (processes, default 1; >1 shards the val split over GPUs), DATA (dataset root).
# Extra arguments go to main.py (e.g. --output_dir runs/eval_x). Results: <run folder>/metrics/ and predictions/.
set -euo pipefail
exec bash "$(dirname "$0")/scripts/launch_main.sh" infer configs/nyud/vitL.yml \
  runs/TaskDiffusion_vitL_nyud/checkpoints/best.pth "$@"
