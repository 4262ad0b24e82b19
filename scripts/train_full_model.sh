#!/usr/bin/env bash
# Trains the shipped full-mode model (confdiff/weights/conformer_model_full.pt) on the CPU, after
# scripts/train_default_model.sh: the default run continued to step 32,000 with a cosine decay,
# then fine-tuned for all three modes (half of each batch on the full-coordinate path).
# Every step resumes: rerun the script after an interruption and it continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${DATA_ROOT:-/work/datasets}
RUN_DIR=${RUN_DIR:-/work/runs/default}
FULL_DIR=${FULL_DIR:-/work/runs/full}
DATA=(--data "$DATA_ROOT/moses_mmff" --data "$DATA_ROOT/moses2_mmff12")

OMP_NUM_THREADS=1 confdiff train "${DATA[@]}" --out "$RUN_DIR" --steps 32000 --lr-decay-start 26000 \
    --batch-size 32 --lr 1e-3 --checkpoint-every 250 --eval-every 500 --resume --no-progress \
    --export "$RUN_DIR/release_32000.pt"
OMP_NUM_THREADS=1 confdiff train "${DATA[@]}" --out "$FULL_DIR" --init-from "$RUN_DIR/release_32000.pt" \
    --centre-vector --full-fraction 0.5 --sigma-full-max 10 --steps 20000 --lr-decay-start 14000 \
    --batch-size 32 --lr 1e-3 --checkpoint-every 250 --eval-every 1000 --resume --no-progress \
    --export confdiff/weights/conformer_model_full.pt
