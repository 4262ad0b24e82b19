#!/usr/bin/env bash
# The size sweep of issue 14: one model size per call, trained on the teacher ensembles of
# scripts/build_training_data.sh with the same data, steps and schedule, so that only the size differs.
#   SIZE      tiny (6,034 parameters, the shipped default's architecture) | small (12,925) | medium (~126k, 21x tiny) |
#             large (~593k, 98x tiny): `confdiff train --size` (confdiff.nn.score_model.MODEL_SIZES)
#   DATA      the built dataset (default /work/datasets/moses_teacher)
#   RUN_ROOT  runs go to $RUN_ROOT/$SIZE (default /work/runs/sweep)
#   STEPS     optimiser steps (default 20000); BATCH molecules per step (default 32; 128 on a GPU)
#   EXTRA     more `confdiff train` options (e.g. "--device cuda --amp bf16")
# Every run resumes from its last checkpoint: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-small}
DATA=${DATA:-/work/datasets/moses_teacher}
RUN_ROOT=${RUN_ROOT:-/work/runs/sweep}
STEPS=${STEPS:-20000}
# shellcheck disable=SC2086
exec python -m confdiff train --data "$DATA" --out "$RUN_ROOT/$SIZE" --size "$SIZE" --steps "$STEPS" \
    --batch-size "${BATCH:-32}" --lr 1e-3 --lr-decay-start $((STEPS * 7 / 10)) --checkpoint-every 250 \
    --eval-every 1000 --resume --no-progress --export "$RUN_ROOT/$SIZE/release.pt" ${EXTRA:-}
