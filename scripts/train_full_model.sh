#!/usr/bin/env bash
# Trains the shipped full-mode model (confdiff/weights/conformer_model_full.pt) on the CPU: the former
# default model's recipe (session 1's MMFF94 ensembles; that model was shipped until session 6)
# continued to step 32,000 with a cosine decay, then fine-tuned for all three modes (half of each batch
# on the full-coordinate path). Every step resumes: rerun the script after an interruption.
#   DATA_ROOT  where the datasets go (default /work/datasets)
#   RUN_DIR    the base run (default /work/runs/default); FULL_DIR the fine-tuning (default /work/runs/full)
# The base run was trained to step 11,250 first and later resumed (its dataset grew meanwhile); with
# the learning rate constant until step 26,000 one run to 32,000 follows the same schedule, so a rerun
# matches the recipe, not the weights bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${DATA_ROOT:-/work/datasets}
RUN_DIR=${RUN_DIR:-/work/runs/default}
FULL_DIR=${FULL_DIR:-/work/runs/full}
SHARED=${SHARED:-../shared/data}
mkdir -p "$DATA_ROOT"

# 100 MOSES molecules x 24 seeds, then MOSES training molecules 3001-20000 (2,000 used) x 12 seeds
[ -f "$DATA_ROOT/moses_part2.smi" ] || zcat "$SHARED/train_smiles/moses_train_200k.smi.gz" | sed -n '3001,20000p' > "$DATA_ROOT/moses_part2.smi"
confdiff dataset build "$SHARED/train_smiles/moses_train_200k.smi.gz" -o "$DATA_ROOT/moses_mmff" \
    --exclude data/evaluation_exclusion.txt --max-molecules 100 --num-conformers 24 --relax mmff --workers 1
confdiff dataset build "$DATA_ROOT/moses_part2.smi" -o "$DATA_ROOT/moses2_mmff12" \
    --exclude data/evaluation_exclusion.txt --max-molecules 2000 --num-conformers 12 \
    --relax mmff --workers 1 --shard-size 50
DATA=(--data "$DATA_ROOT/moses_mmff" --data "$DATA_ROOT/moses2_mmff12")

OMP_NUM_THREADS=1 confdiff train "${DATA[@]}" --out "$RUN_DIR" --steps 32000 --lr-decay-start 26000 \
    --batch-size 32 --lr 1e-3 --checkpoint-every 250 --eval-every 500 --resume --no-progress \
    --export "$RUN_DIR/release_32000.pt"
OMP_NUM_THREADS=1 confdiff train "${DATA[@]}" --out "$FULL_DIR" --init-from "$RUN_DIR/release_32000.pt" \
    --centre-vector --full-fraction 0.5 --sigma-full-max 10 --steps 20000 --lr-decay-start 14000 \
    --batch-size 32 --lr 1e-3 --checkpoint-every 250 --eval-every 1000 --resume --no-progress \
    --export confdiff/weights/conformer_model_full.pt
