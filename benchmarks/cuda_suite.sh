#!/usr/bin/env bash
# The CUDA part of the speed benchmark (BENCHMARKS.md), in pieces that each fit a 10-minute slot.
# Every piece writes its JSON after each config/batch group, so a piece cut by its timeout keeps
# what it measured. Results go to $OUT (default: benchmarks_out/).
#
#   bash benchmarks/cuda_suite.sh            # all pieces
#   PIECES="b2 compile" bash benchmarks/cuda_suite.sh
#   PIECES="learn-pascal learn-nyud" bash benchmarks/cuda_suite.sh   # the --long learning benchmark
# (finished learning runs are reused, so a piece cut by its timeout continues where it stopped)
#
# Notes from the first H100 run: cuDNN autotuning (cudnn.benchmark) makes the fp32 reference's
# warm-up 12-45 s per group; torch.compile of the full model (3-step DDIM graph + training graph)
# did not finish its warm-up within 230 s, so the compile pieces get their own slots: 'compile' is the
# regional compilation (models/compile.py), 'compile-model' the whole-model torch.compile.
set -u
OUT=${OUT:-benchmarks_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
PY=${PY:-python3}
PIECES=${PIECES:-"b2 b8 compile compile-model"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
$PY -c "import torch; print(torch.__version__, torch.version.cuda)"

for piece in $PIECES; do
  case $piece in
    b2) timeout 550 $PY -m benchmarks.speed --device cuda --configs pascal_vitB nyud_vitL pascal_vitL --batch 2 \
          --variants ref-fp32,fp32,bf16,baseline-fp32,baseline-bf16 --warmup 1 --repeats 3 \
          --json "$OUT/speed_cuda_b2.json" > "$OUT/b2.log" 2>&1 ;;
    b8) timeout 550 $PY -m benchmarks.speed --device cuda --configs pascal_vitB nyud_vitL pascal_vitL --batch 8 \
          --variants ref-fp32,fp32,bf16,baseline-bf16 --warmup 1 --repeats 3 \
          --json "$OUT/speed_cuda_b8.json" > "$OUT/b8.log" 2>&1 ;;
    compile) timeout 550 $PY -m benchmarks.speed --device cuda --configs pascal_vitB --batch 2 8 \
          --variants ref-fp32,bf16,bf16-compile-regions --warmup 1 --repeats 3 \
          --json "$OUT/speed_cuda_compile.json" > "$OUT/compile.log" 2>&1 ;;
    compile-model) timeout 550 $PY -m benchmarks.speed --device cuda --configs pascal_vitB --batch 2 \
          --variants ref-fp32,bf16,bf16-compile --warmup 1 --repeats 3 \
          --json "$OUT/speed_cuda_compile_model.json" > "$OUT/compile-model.log" 2>&1 ;;
    learn-pascal|learn-nyud) timeout 580 $PY -m benchmarks.learning --long --device cuda --datasets "${piece#learn-}" \
          --variant 'steps5:timesteps=5' --out "$OUT/learning_runs" --data_root "$OUT/learning_data" \
          --json "$OUT/learning_${piece#learn-}.json" > "$OUT/$piece.log" 2>&1 ;;
    profile) timeout 300 $PY -m benchmarks.profile_model --config pascal_vitB --batch 8 --device cuda \
          --precision bf16 --repeats 2 --ops 30 --json "$OUT/profile_cuda_bf16_b8.json" > "$OUT/profile.log" 2>&1 ;;
    *) echo "unknown piece $piece"; continue ;;
  esac
  echo "piece $piece: rc=$?"
  grep -v "Warn\|warn" "$OUT/$piece.log" | grep "^| \|failed\|Error" | tail -20
done
