#!/usr/bin/env bash
# Evaluate a TaskDiffusion checkpoint on the PASCAL-Context val split (full protocol): metrics JSON + prediction PNGs.
#   CKPT=runs/TaskDiffusion_vitL_pascal/checkpoints/best.pth bash infer_TaskDiffusion_pascal.sh
#   CKPT=taskdiffusion_pascal_vitl.pth.tar bash infer_TaskDiffusion_pascal.sh    # an original checkpoint (module. keys)
# Environment: CKPT (required), CONFIG (default configs/pascal/vitL.yml; use the config the checkpoint was trained with),
# NPROC (processes, default 1; >1 shards the val split over GPUs), DATA (dataset root).
# Extra arguments go to main.py (e.g. --output_dir runs/eval_x). Results: <run folder>/metrics/ and predictions/.
set -euo pipefail
exec bash "$(dirname "$0")/scripts/launch_main.sh" infer configs/pascal/vitL.yml \
  runs/TaskDiffusion_vitL_pascal/checkpoints/best.pth "$@"
