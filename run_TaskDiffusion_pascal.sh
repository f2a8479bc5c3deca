#!/usr/bin/env bash
# Train TaskDiffusion on PASCAL-Context with torchrun over all visible GPUs (paper: 2 GPUs x trBatch 2).
#   bash run_TaskDiffusion_pascal.sh                        # configs/pascal/vitL.yml
#   CONFIG=configs/pascal/vitL_mlore.yml NPROC=1 bash run_TaskDiffusion_pascal.sh --opts trBatch=4
#   DATA=/data bash run_TaskDiffusion_pascal.sh             # DATA: folder holding PASCALContext/
# Environment: CONFIG (config file), NPROC (processes; default: the visible GPUs, 1 without CUDA: CPU/gloo),
# DATA (dataset root; else $TASKDIFFUSION_DATA or db_root of the config) (torchrun --standalone picks a free port).
# Extra arguments go to main.py (e.g. --opts max_iter=1000 --output_dir runs/x). Restarting the same
# command after a crash resumes from <run folder>/checkpoints/last.pth.
set -euo pipefail
exec bash "$(dirname "$0")/scripts/launch_main.sh" train configs/pascal/vitL.yml \
  runs/TaskDiffusion_vitL_pascal/checkpoints/best.pth "$@"
