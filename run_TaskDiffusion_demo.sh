#!/usr/bin/env bash
# The demo in one command: set up .venv, generate the synthetic PASCAL-Context-style dataset (same
# on-disk layout as the real tarball), then train and evaluate a tiny TaskDiffusion on it, on CPU or GPU
# (about 2-3 minutes on 2 CPU cores). It ends with the per-task metric table and the paths of the log,
# checkpoints and prediction images.
# Idempotent: a second run reuses .venv and the dataset. Extra arguments go to main.py, e.g.
#   bash run_TaskDiffusion_demo.sh --opts max_iter=50
#   CONFIG=configs/demo/synthetic_pascal_convnext.yml bash run_TaskDiffusion_demo.sh   # another backbone family
set -euo pipefail
cd "$(dirname "$0")"

echo "[demo] step 1/3: Python environment (.venv)"
source scripts/ensure_venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

DATA=data_root/synthetic
CONFIG=${CONFIG:-configs/demo/synthetic_pascal.yml}  # e.g. CONFIG=configs/demo/synthetic_pascal_swin.yml
RUN=runs/$(sed -n 's/^version_name: *//p' "$CONFIG" | head -n 1)

# Complete = both split files exist and every listed image is there (an interrupted run is redone).
dataset_complete() {
  local root="$DATA/PASCALContext" split id
  for split in train val; do
    [ -s "$root/ImageSets/Context/$split.txt" ] || return 1
    while read -r id; do
      [ -z "$id" ] || [ -f "$root/JPEGImages/$id.jpg" ] || return 1
    done < "$root/ImageSets/Context/$split.txt"
  done
}

if dataset_complete; then
  echo "[demo] step 2/3: synthetic dataset already present in $DATA/PASCALContext (delete it to regenerate)"
else
  echo "[demo] step 2/3: generating the synthetic PASCAL-Context-style dataset into $DATA (96 train, 24 val)"
  .venv/bin/python -m data.synthetic --dataset pascal --out "$DATA" --train 96 --val 24 --seed 0
fi

echo "[demo] step 3/3: training and evaluating with $CONFIG"
echo "[demo] running: .venv/bin/python main.py --config_exp $CONFIG --run_mode train --data_root $DATA $*"
.venv/bin/python main.py --config_exp "$CONFIG" --run_mode train --data_root "$DATA" "$@"
echo "[demo] finished: the per-task metric table and the paths of the log, checkpoints, TensorBoard events,"
echo "[demo] metrics JSON and prediction images are printed above (run folder: $RUN)."
echo "[demo] Running this script again reuses the dataset and the finished run (delete the run folder to retrain);"
echo "[demo] predictions for your own images: .venv/bin/python infer.py --config_exp $RUN/config.yml \\"
echo "[demo]     --trained_model $RUN/checkpoints/best.pth --input IMAGE_OR_FOLDER --output preds/"
