"""CPU against CUDA in one run: score model, training steps and conformer generation.

    python scripts/bench_gpu.py --data DATASET_DIR --json gpu.json    # on a GPU machine
    python scripts/bench_gpu.py --data DATASET_DIR --quick            # the same on the CPU alone, small

Each figure is measured for the CPU (all its threads) and for CUDA in the same process and is
reported with the ratio CUDA / CPU throughput:

- score model forward + backward on batches of drug-like conformers (fp32, and bf16 autocast on CUDA),
  conformers per second;
- training: optimiser steps per second of ``confdiff train`` on ``--data`` (featurised cache built
  before the clock starts), batch 32 on both and larger batches on CUDA;
- generation: ``ConformerGenerator.generate_many`` on the seven benchmark molecules, n = 50 and
  n = 500, conformers per wall second, and the share spent in the score model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_score_model import SMILES, make_batch  # noqa: E402

from confdiff.conformers.dataset import ConformerDataset  # noqa: E402
from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM  # noqa: E402
from confdiff.conformers.generator import ConformerGenerator, load_model  # noqa: E402
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig  # noqa: E402
from confdiff.train import TrainConfig  # noqa: E402
from confdiff.conformers.training import train_conformer_model  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def score_model_rate(device: str, size: int, amp: bool, repeats: int) -> float:
    """Conformers per second through one forward + backward pass of the default-size model."""
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM)).to(device)
    batch = make_batch(size, torch.Generator().manual_seed(0)).to(device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms up
        sync(device)
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            tor, pos = model(batch)
        (tor.float().square().sum() + pos.float().square().sum()).backward()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return size / best


def training_rate(data: list[str], cache: str, device: str, batch_size: int, steps: int, amp: str,
                  workers: int) -> float:
    """Optimiser steps per second of the conformer trainer over ``steps`` steps after 5 warm-up steps."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(batch_size=batch_size, max_steps=5, device=device, amp=amp, num_workers=workers,
                             log_every=10**9, checkpoint_every=10**9, eval_every=10**9)
        kwargs = dict(cache_dir=cache, val_fraction=0.0, eval_molecules=0,
                      progress=False)
        train_conformer_model(data, out, train_config=config, **kwargs)
        config = dataclasses.replace(config, max_steps=5 + steps)
        sync(device)
        start = time.perf_counter()
        train_conformer_model(data, out, train_config=config, resume=True, **kwargs)
        sync(device)
        return steps / (time.perf_counter() - start)


def generation_rate(device: str, n: int, workers: int) -> dict:
    """Conformers per wall second of the shipped model on the seven molecules, and the model's share."""
    generator = ConformerGenerator(load_model(device=device), device=device, num_workers=workers)
    model_seconds = 0.0
    forward = generator.model.forward

    def timed_forward(*args, **kwargs):
        nonlocal model_seconds
        sync(device)
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        sync(device)
        model_seconds += time.perf_counter() - start
        return out

    generator.model.forward = timed_forward
    list(generator.generate_many(list(SMILES.values())[:1], 5, seed=0))  # warm-up
    model_seconds = 0.0
    start = time.perf_counter()
    results = list(generator.generate_many(list(SMILES.values()), n, seed=0))
    wall = time.perf_counter() - start
    made = sum(r.mol.GetNumConformers() for r in results if r.ok)
    return {"conformers": made, "per_second": made / wall, "model_share": model_seconds / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a `confdiff dataset build` folder")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="small sizes (a check of the script itself)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = [64] if args.quick else [64, 256, 1024]
    steps = 3 if args.quick else 40
    ns = [10] if args.quick else [50, 500]
    info = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info))
    cache = tempfile.mkdtemp(prefix="bench_gpu_cache_")
    ConformerDataset(args.data, cache_dir=cache)  # featurise once, before any clock starts
    rows = []

    def record(what: str, **values) -> None:
        rows.append({"what": what, **values})
        print(json.dumps(rows[-1]), flush=True)

    for size in sizes:
        rates = {d: score_model_rate(d, size, False, 3) for d in devices}
        if "cuda" in devices:
            rates["cuda_bf16"] = score_model_rate("cuda", size, True, 3)
        record(f"score model fwd+bwd, batch {size}, conformers/s", **rates)
    for batch_size in [32] if args.quick else [32, 128]:
        rates = {d: training_rate(args.data, cache, d, batch_size, steps, "none", 0) for d in devices
                 if d == "cuda" or batch_size == 32}
        if "cuda" in devices:
            rates["cuda_bf16"] = training_rate(args.data, cache, "cuda", batch_size, steps, "bf16", 0)
            rates["cuda_bf16_workers"] = training_rate(args.data, cache, "cuda", batch_size, steps, "bf16", args.workers)
        record(f"training, batch {batch_size}, steps/s", **rates)
    for n in ns:
        record(f"generation, 7 molecules x {n}", **{d: generation_rate(d, n, args.workers) for d in devices})
    shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
