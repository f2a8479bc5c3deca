#!/usr/bin/env bash
# Train TaskDiffusion on NYUD-v2 with torchrun over all visible GPUs (paper: 2 GPUs x trBatch 2).
#   bash run_TaskDiffusion_nyud.sh                        # configs/nyud/vitL.yml
#   CONFIG=configs/nyud/vitL_mlore.yml bash run_TaskDiffusion_nyud.sh
#   DATA=/data bash run_TaskDiffusion_nyud.sh             # DATA: folder holding NYUDv2/
# Environment: CONFIG (config file), NPROC (processes; default: the visible GPUs, 1 without CUDA: CPU/gloo),
# DATA (dataset root; else $TASKDIFFUSION_DATA or db_root of the config) (torchrun --standalone picks a free port).
# Extra arguments go to main.py (e.g. --opts max_iter=1000 --output_dir runs/x). Restarting the same
# command after a crash resumes from <run folder>/checkpoints/last.pth.
set -euo pipefail
exec bash "$(dirname "$0")/scripts/launch_main.sh" train configs/nyud/vitL.yml \
  runs/TaskDiffusion_vitL_nyud/checkpoints/best.pth "$@"
