#!/usr/bin/env bash
# Builds the training ensembles and trains the shipped default conformer model on the CPU
# (confdiff/weights/conformer_model.pt; docs/benchmarks.md, "The default model: how it was trained").
# Every step resumes: rerun the script after an interruption and it continues where it stopped.
#   DATA_ROOT   where the datasets go (default /work/datasets)
#   RUN_ROOT    the training run goes to $RUN_ROOT/tiny (default /work/runs/default_tiny)
#   WORKERS     processes of the dataset build (default 1)
# Data: the first 86 shards (4,300 MOSES candidates, 4,290 molecules, 71,179 conformers) of the teacher
# build of scripts/build_training_data.sh. Model: the `tiny` size (6,034 parameters), trained by
# scripts/train_size_sweep.sh's recipe (20,000 steps of 32 molecules). About 2.5 CPU hours for the data
# and 25 minutes for the training on the 2-core development machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${DATA_ROOT:-/work/datasets}
RUN_ROOT=${RUN_ROOT:-/work/runs/default_tiny}
SHARDS=86

# the build is the sweep's; with MOLECULES=4300 it stops after the shards the default model uses
# (a larger build already there keeps them: shards are fixed by the input order)
[ -f "$DATA_ROOT/moses_teacher/shard-$(printf %05d $((SHARDS - 1))).sdf.gz" ] || \
    DATA_ROOT=$DATA_ROOT MOLECULES=$((SHARDS * 50)) bash scripts/build_training_data.sh
mkdir -p "$DATA_ROOT/teacher_first$SHARDS"
for ((k = 0; k < SHARDS; k++)); do
    ln -sf "../moses_teacher/shard-$(printf %05d $k).sdf.gz" "$DATA_ROOT/teacher_first$SHARDS/"
done

OMP_NUM_THREADS=1 SIZE=tiny DATA="$DATA_ROOT/teacher_first$SHARDS" RUN_ROOT="$RUN_ROOT" bash scripts/train_size_sweep.sh
cp "$RUN_ROOT/tiny/release.pt" confdiff/weights/conformer_model.pt
