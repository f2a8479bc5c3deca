#!/usr/bin/env bash
# The demo in one command: set up .venv, generate the synthetic dataset of the config (PASCAL-Context-style
# by default; same on-disk layout as the real release), then train and evaluate a tiny TaskDiffusion on it, on CPU or GPU
# (about 2-3 minutes on 2 CPU cores). It ends with the per-task metric table and the paths of the log,
# checkpoints and prediction images.
# Idempotent: a second run reuses .venv and the dataset. Extra arguments go to main.py, e.g.
#   bash run_TaskDiffusion_demo.sh --opts max_iter=50
#   CONFIG=configs/demo/synthetic_pascal_convnext.yml bash run_TaskDiffusion_demo.sh   # another backbone family
#   CONFIG=configs/demo/synthetic_cityscapes.yml bash run_TaskDiffusion_demo.sh        # Cityscapes (semseg + depth)
set -euo pipefail
cd "$(dirname "$0")"

echo "[demo] step 1/3: Python environment (.venv)"
source scripts/ensure_venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

DATA=data_root/synthetic
CONFIG=${CONFIG:-configs/demo/synthetic_pascal.yml}  # e.g. CONFIG=configs/demo/synthetic_pascal_swin.yml
RUN=runs/$(sed -n 's/^version_name: *//p' "$CONFIG" | head -n 1)

# The synthetic set the config's dataset has (pascal, nyud, cityscapes) and its size.
SYNTH=$(.venv/bin/python -c 'import sys
from engine.config import load_config
from data.datasets import dataset_spec
print(dataset_spec(load_config(sys.argv[1]).db_name).synthetic or "")' "$CONFIG")
if [ -z "$SYNTH" ]; then
  echo "[demo] error: the dataset of $CONFIG has no synthetic look-alike; use a configs/demo/ config" >&2
  exit 2
fi
case "$SYNTH" in
  cityscapes) N_TRAIN=64; N_VAL=16 ;;
  *)          N_TRAIN=96; N_VAL=24 ;;
esac

# Complete = data.verify finds no error (an interrupted generation leaves no dataset folder at all).
if .venv/bin/python -m data.verify --dataset "$SYNTH" --root "$DATA" --no-progress >/dev/null 2>&1; then
  echo "[demo] step 2/3: synthetic $SYNTH dataset already present in $DATA (delete it to regenerate)"
else
  echo "[demo] step 2/3: generating the synthetic $SYNTH dataset into $DATA ($N_TRAIN train, $N_VAL val)"
  .venv/bin/python -m data.synthetic --dataset "$SYNTH" --out "$DATA" --train "$N_TRAIN" --val "$N_VAL" --seed 0
fi

echo "[demo] step 3/3: training and evaluating with $CONFIG"
echo "[demo] running: .venv/bin/python main.py --config_exp $CONFIG --run_mode train --data_root $DATA $*"
.venv/bin/python main.py --config_exp "$CONFIG" --run_mode train --data_root "$DATA" "$@"
echo "[demo] finished: the per-task metric table and the paths of the log, checkpoints, TensorBoard events,"
echo "[demo] metrics JSON and prediction images are printed above (run folder: $RUN)."
echo "[demo] Running this script again reuses the dataset and the finished run (delete the run folder to retrain);"
echo "[demo] predictions for your own images: .venv/bin/python infer.py --config_exp $RUN/config.yml \\"
echo "[demo]     --trained_model $RUN/checkpoints/best.pth --input IMAGE_OR_FOLDER --output preds/"
