#!/usr/bin/env bash
# Evaluates one model of the size sweep (issue 14) at the package's default pipeline and without
# guidance: the micro set and the GFN2-xTB DRUGS reference set (ETKDGv3 + MMFF94 in the same run),
# each on three seeds, CPU time against ETKDGv3 (scripts/bench_generate.py), the spread of
# `confdiff score` over copies rounded as an SD file rounds them (scripts/bench_likelihood_noise.py)
# and, with PLATINUM=1, the first 300 Platinum dev ligands (ETKDGv3 + MMFF94 in the same run). One
# thread per process, WORKERS processes (default 1) per benchmark.
#   SIZE      the model: $RUN_ROOT/$SIZE/release.pt (scripts/train_size_sweep.sh)
#   RUN_ROOT  default /work/runs/sweep;  OUT  where the results go (default docs/bench)
# Every result is one file named after SIZE; a file already there is kept, so a rerun resumes.
# The pipeline is the package default's: the refine mode for the files of sessions 9-11, the torsions
# mode from version 0.2.0 (session 11) on (session 12's *_polish_tiny10k_s12* files came from a development
# build whose default had the torsion polish; it never landed); the DRUGS
# set ran on one seed (drugs_sweep_SIZE.json) until session 11 and on three from session 12.
# The table and plot: scripts/plot_size_sweep.py --run "SIZE:PARAMETERS:$OUT/micro_sweep_SIZE_seed*.json".
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:?SIZE=tiny|small|medium|large}
RUN_ROOT=${RUN_ROOT:-/work/runs/sweep}
OUT=${OUT:-docs/bench}
MODEL="$RUN_ROOT/$SIZE/release.pt"
export OMP_NUM_THREADS=1
[ -f "$MODEL" ] || { echo "no model at $MODEL" >&2; exit 1; }
mkdir -p "$OUT"

for S in 61453 1 2; do
    F="$OUT/micro_sweep_${SIZE}_seed$S.json"
    [ -f "$F" ] || python -m confdiff benchmark ../shared/data/geom_drugs_micro/reference_crest.sdf.gz \
        --threshold 0.75 --method confdiff:none --method confdiff --model "$MODEL" --seed "$S" --pb-sample 0 \
        --num-workers "${WORKERS:-1}" --json "$F"
done
for S in 61453 1 2; do
    F="$OUT/drugs_sweep_${SIZE}_seed$S.json"
    [ -f "$F" ] || python -m confdiff benchmark data/reference/drugs_gfn2.sdf.gz --threshold 0.75 \
        --method etkdg-mmff --method confdiff:none --method confdiff --model "$MODEL" --seed "$S" --pb-sample 0 \
        --num-workers "${WORKERS:-1}" --json "$F"
done
F="$OUT/generate_sweep_$SIZE.txt"
[ -f "$F" ] || { python scripts/bench_generate.py --model "$MODEL" > "$F.part" && mv "$F.part" "$F"; }
F="$OUT/likelihood_noise_sweep_$SIZE.txt"
[ -f "$F" ] || { python scripts/bench_likelihood_noise.py "$MODEL" > "$F.part" && mv "$F.part" "$F"; }
if [ "${PLATINUM:-0}" = 1 ]; then
    F="$OUT/platinum300_sweep_$SIZE.json"
    [ -f "$F" ] || python -m confdiff benchmark --bioactive ../shared/data/platinum/platinum_diverse_dev.sdf.gz \
        -n 50 --max-molecules 300 --method etkdg-mmff --method confdiff --model "$MODEL" --pb-sample 0 \
        --num-workers "${WORKERS:-1}" --json "$F"
fi
