#!/usr/bin/env bash
# Trains and evaluates sizes of the sweep (issue 14) one after another, in one lane; run two lanes
# side by side on a 2-core machine, e.g.
#   nohup bash scripts/run_size_sweep.sh tiny medium > lane_a.log 2>&1 &
#   nohup bash scripts/run_size_sweep.sh small large > lane_b.log 2>&1 &
# It waits while a `confdiff dataset build` runs and resumes an incomplete build of $DATA
# (scripts/build_training_data.sh, when DATA ends in moses_teacher), then for each size: trains it (CORES threads,
# scripts/train_size_sweep.sh), evaluates it without Platinum (scripts/evaluate_size_sweep.sh); at the end
# the Platinum runs of the same sizes. Every step resumes: rerun the same commands after an interruption.
#   RUN_ROOT, DATA: as scripts/train_size_sweep.sh; OUT: as scripts/evaluate_size_sweep.sh
#   SHARDS: the number of shards the build must hold before training starts (default 204)
#   CORES: the cores this lane uses: torch threads of a training, worker processes of an evaluation
#          (default 1, for two lanes side by side; a lone lane on a free 2-core machine takes CORES=2,
#          with which `large` trains 1.3x faster: 0.70 against 0.92 s per step)
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_ROOT=${RUN_ROOT:-/work/runs/sweep}
DATA=${DATA:-/work/datasets/moses_teacher}
export RUN_ROOT DATA
mkdir -p "$RUN_ROOT"
shards() { find "$DATA" -maxdepth 1 -name 'shard-*.sdf.gz' 2> /dev/null | wc -l; }
{   # one lane at a time resumes the build; the other waits here for it
    flock 9
    while pgrep -f "confdiff dataset build" > /dev/null; do sleep 60; done
    n=$(shards)
    echo "[$(date +%T)] the build holds $n shards"
    if [ "$n" -lt "${SHARDS:-204}" ] && [ "$(basename "$DATA")" = moses_teacher ]; then
        echo "[$(date +%T)] resume the build with ${CORES:-1} worker(s): $(dirname "$DATA")/build.log"
        WORKERS=${CORES:-1} DATA_ROOT=$(dirname "$DATA") nice -n 5 bash scripts/build_training_data.sh \
            >> "$(dirname "$DATA")/build.log" 2>&1 || exit 1
    fi
} 9> "$RUN_ROOT/.build.lock"
n=$(shards)
[ "$n" -ge "${SHARDS:-204}" ] || { echo "the build holds $n shards: rerun scripts/build_training_data.sh" >&2; exit 1; }
for SIZE in "$@"; do
    if [ ! -f "$RUN_ROOT/$SIZE/release.pt" ]; then
        echo "[$(date +%T)] train $SIZE"
        OMP_NUM_THREADS=${CORES:-1} SIZE=$SIZE nice -n 10 bash scripts/train_size_sweep.sh >> "$RUN_ROOT/$SIZE.log" 2>&1 || exit 1
    fi
    echo "[$(date +%T)] evaluate $SIZE"
    WORKERS=${CORES:-1} SIZE=$SIZE nice -n 10 bash scripts/evaluate_size_sweep.sh >> "$RUN_ROOT/eval_$SIZE.log" 2>&1 || exit 1
done
for SIZE in "$@"; do
    echo "[$(date +%T)] Platinum $SIZE"
    WORKERS=${CORES:-1} SIZE=$SIZE PLATINUM=1 nice -n 10 bash scripts/evaluate_size_sweep.sh >> "$RUN_ROOT/eval_$SIZE.log" 2>&1 || exit 1
done
echo "[$(date +%T)] done: $*"
