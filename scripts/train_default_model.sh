#!/usr/bin/env bash
# Builds the training ensembles and trains the shipped default conformer model on the CPU.
# Every step resumes: rerun the script after an interruption and it continues where it stopped.
#   DATA_ROOT   where the datasets go (default /work/datasets)
#   RUN_DIR     the training run (default /work/runs/default)
#   STEPS       optimiser steps (default 11250, the shipped model's; docs/benchmarks.md)
# Its defaults are the documented data (100 MOSES molecules x 24 seeds, 2,000 x 12) and steps. The
# shipped run itself was resumed once on a dataset that had grown meanwhile, so a rerun matches its
# recipe, not its weights bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${DATA_ROOT:-/work/datasets}
RUN_DIR=${RUN_DIR:-/work/runs/default}
STEPS=${STEPS:-11250}
SHARED=${SHARED:-../shared/data}
mkdir -p "$DATA_ROOT"

# MOSES training molecules 3001-20000 (the first 3000 went into moses_mmff with 24 seeds each)
[ -f "$DATA_ROOT/moses_part2.smi" ] || zcat "$SHARED/train_smiles/moses_train_200k.smi.gz" | sed -n '3001,20000p' > "$DATA_ROOT/moses_part2.smi"
confdiff dataset build "$SHARED/train_smiles/moses_train_200k.smi.gz" -o "$DATA_ROOT/moses_mmff" \
    --exclude data/evaluation_exclusion.txt --max-molecules "${MOSES1_MOLECULES:-100}" --num-conformers 24 --relax mmff --workers 1
confdiff dataset build "$DATA_ROOT/moses_part2.smi" -o "$DATA_ROOT/moses2_mmff12" \
    --exclude data/evaluation_exclusion.txt --max-molecules "${MOSES2_MOLECULES:-2000}" --num-conformers 12 \
    --relax mmff --workers 1 --shard-size 50

OMP_NUM_THREADS=1 confdiff train --data "$DATA_ROOT/moses_mmff" --data "$DATA_ROOT/moses2_mmff12" \
    --out "$RUN_DIR" --steps "$STEPS" --batch-size 32 --lr 1e-3 --resume --no-progress \
    --export confdiff/weights/conformer_model.pt
