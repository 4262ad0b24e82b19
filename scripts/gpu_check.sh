#!/usr/bin/env bash
# The GPU checks in one run: the CUDA tests, CPU-vs-CUDA throughput, the CLI on CUDA and torchrun
# with NCCL. Every step has its own time limit and log; a failing step does not stop the others.
#   OUT    where logs and results go (default /tmp/gpu_check)
#   DATA   a `confdiff dataset build` folder for the training figures (default .gpu/moses_mmff)
# Missing Python packages can sit as wheels in .whl/ (installed into /tmp/site first).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-.gpu/moses_mmff}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, print its tail and exit code
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc, $((SECONDS - start)) s"
    tail -n 8 "$OUT/$name.log"
}

step env 60 bash -c 'nvidia-smi -L; python3 -c "import torch, e3nn, torch_geometric, rdkit; print(torch.__version__, torch.version.cuda, e3nn.__version__, torch_geometric.__version__, rdkit.__version__, torch.cuda.get_device_name(0))"'
step tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/nn/test_score_model.py
step bench 180 python3 scripts/bench_gpu.py --data "$DATA" --json "$OUT/bench_gpu.json"
step generate 45 python3 -m confdiff generate data/examples/molecules.sdf -n 50 -o "$OUT/conformers.sdf" --device cuda --seed 0
step torchrun 90 bash -c "python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m confdiff train \
    --data $DATA --out /tmp/gpu_check_ddp --steps 60 --batch-size 64 --eval-every 30 --eval-molecules 2 \
    --checkpoint-every 30 --amp bf16 --no-progress --cache-dir /tmp/gpu_check_cache && cat /tmp/gpu_check_ddp/train.log"
echo "=== done"
