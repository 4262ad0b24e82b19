"""Micro-set quality and CPU time of the conformer sampler's settings, one seed per call (issue 15).

    python scripts/bench_sampler_settings.py 61453 20:euler_maruyama:uniform:5 12:euler_maruyama:uniform:5

Each setting is ``STEPS:SAMPLER:GRID:CONFORMERS_PER_SEED``: reverse-diffusion steps, a sampler of
``confdiff.diffusion.samplers.SAMPLERS``, a ``time_grid`` kind (the generator's grid is uniform in
``t``; another kind is tried by replacing the generator's ``time_grid`` in this process) and the
conformers drawn per ETKDG seed. Default settings otherwise (MMFF94 guidance, the validity gate), one
thread, 2K conformers per molecule, 0.75 A, the same molecules and seed as ``confdiff benchmark``.
Prints one JSON line per setting: mean COV-R / MAT-R / COV-P / MAT-P over the molecules and the CPU
ms per written conformer (generation only). ``--mmff-iters 5 50 500`` adds a line per count for the
same conformers after at most that many MMFF94 minimisation iterations (how far the raw output is
from the force field's minima), with the minimisation's CPU ms per conformer.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.chem.metrics import coverage_matching, rmsd_matrix
from confdiff.conformers import evaluation
from confdiff.conformers import generator as generator_module
from confdiff.diffusion import samplers

REFERENCE = "../shared/data/geom_drugs_micro/reference_crest.sdf.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("settings", nargs="+", metavar="STEPS:SAMPLER:GRID:CPS")
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--mmff-iters", type=int, nargs="*", default=[], metavar="K")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records, _ = evaluation.read_records(args.reference)
    molecules, _, _ = evaluation.select_molecules(records, {}, bioactive=False)
    jobs = evaluation.make_jobs(molecules, ["confdiff"], {}, lambda k: 2 * k, args.seed)
    for setting in args.settings:
        steps, sampler, grid, per_seed = setting.split(":")
        generator_module.time_grid = functools.partial(samplers.time_grid, kind=grid)
        gen = generator_module.ConformerGenerator(steps=int(steps), sampler=sampler, conformers_per_seed=int(per_seed))
        rows, cpu, written = [], 0.0, 0
        minimised = {k: ([], 0.0) for k in args.mmff_iters}
        for job in jobs:
            start = time.process_time()
            out = gen.generate(Chem.Mol(job.template), job.num_confs, seed=job.seed)
            cpu += time.process_time() - start
            written += out.GetNumConformers()
            rows.append(_scores(job, out, args.threshold))
            for k, (k_rows, k_cpu) in minimised.items():
                relaxed, start = Chem.Mol(out), time.process_time()
                AllChem.MMFFOptimizeMoleculeConfs(relaxed, numThreads=1, maxIters=k)
                minimised[k] = (k_rows + [_scores(job, relaxed, args.threshold)], k_cpu + time.process_time() - start)
        _report(args.seed, setting, rows, 1000 * cpu / written)
        for k, (k_rows, k_cpu) in minimised.items():
            _report(args.seed, setting, k_rows, 1000 * k_cpu / written, mmff_iters=k)


def _scores(job, out: Chem.Mol, threshold: float) -> list[float]:
    r = coverage_matching(rmsd_matrix(list(job.reference), out), threshold)
    return [r["cov_r"], r["mat_r"], r["cov_p"], r["mat_p"]]


def _report(seed: int, setting: str, rows: list, ms: float, **extra) -> None:
    mean = np.nanmean(np.array(rows, dtype=float), axis=0)
    print(json.dumps({"seed": seed, "setting": setting, **extra, "cov_r": mean[0], "mat_r": mean[1],
                      "cov_p": mean[2], "mat_p": mean[3], "ms_per_conformer": ms}), flush=True)


if __name__ == "__main__":
    main()
