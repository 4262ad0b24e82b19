#!/usr/bin/env bash
# Trains and evaluates sizes of the sweep (issue 14) one after another, in one lane; run two lanes
# side by side on a 2-core machine, e.g.
#   nohup bash scripts/run_size_sweep.sh tiny medium > lane_a.log 2>&1 &
#   nohup bash scripts/run_size_sweep.sh small large > lane_b.log 2>&1 &
# It waits while a `confdiff dataset build` runs, then for each size: trains it (one thread,
# scripts/train_size_sweep.sh), evaluates it without Platinum (scripts/evaluate_size_sweep.sh); at the end
# the Platinum runs of the same sizes. Every step resumes: rerun the same commands after an interruption.
#   RUN_ROOT, DATA: as scripts/train_size_sweep.sh; OUT: as scripts/evaluate_size_sweep.sh
#   SHARDS: the number of shards the build must hold before training starts (default 204)
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_ROOT=${RUN_ROOT:-/work/runs/sweep}
DATA=${DATA:-/work/datasets/moses_teacher}
export RUN_ROOT DATA
mkdir -p "$RUN_ROOT"
while pgrep -f "confdiff dataset build" > /dev/null; do sleep 60; done
n=$(find "$DATA" -maxdepth 1 -name 'shard-*.sdf.gz' | wc -l)
echo "[$(date +%T)] the build holds $n shards"
[ "$n" -ge "${SHARDS:-204}" ] || { echo "the build is not complete: rerun scripts/build_training_data.sh" >&2; exit 1; }
for SIZE in "$@"; do
    if [ ! -f "$RUN_ROOT/$SIZE/release.pt" ]; then
        echo "[$(date +%T)] train $SIZE"
        OMP_NUM_THREADS=1 SIZE=$SIZE nice -n 10 bash scripts/train_size_sweep.sh >> "$RUN_ROOT/$SIZE.log" 2>&1 || exit 1
    fi
    echo "[$(date +%T)] evaluate $SIZE"
    SIZE=$SIZE nice -n 10 bash scripts/evaluate_size_sweep.sh >> "$RUN_ROOT/eval_$SIZE.log" 2>&1 || exit 1
done
for SIZE in "$@"; do
    echo "[$(date +%T)] Platinum $SIZE"
    SIZE=$SIZE PLATINUM=1 nice -n 10 bash scripts/evaluate_size_sweep.sh >> "$RUN_ROOT/eval_$SIZE.log" 2>&1 || exit 1
done
echo "[$(date +%T)] done: $*"
