"""Micro-set quality and CPU time of the conformer sampler's settings, one seed per call (issue 15).

    python scripts/bench_sampler_settings.py 61453 20:euler_maruyama:uniform:5 12:euler_maruyama:uniform:5

Each setting is ``STEPS:SAMPLER:GRID:CONFORMERS_PER_SEED``: reverse-diffusion steps, a sampler of
``confdiff.diffusion.samplers.SAMPLERS``, a ``time_grid`` kind (the generator's grid is uniform in
``t``; another kind is tried by replacing the generator's ``time_grid`` in this process) and the
conformers drawn per ETKDG seed (for every molecule: both ``conformers_per_seed`` and
``ring_conformers_per_seed``). Default settings otherwise (MMFF94 guidance, the validity gate), one
thread, 2K conformers per molecule, 0.75 A, the same molecules and seed as ``confdiff benchmark``.
Prints one JSON line per setting: mean COV-R / MAT-R / COV-P / MAT-P over the molecules and the CPU
ms per written conformer (generation only). ``--mmff-iters 5 50 500`` adds a line per count for the
same conformers after at most that many MMFF94 minimisation iterations (how far the raw output is
from the force field's minima), with the minimisation's CPU ms per conformer. ``--torsion-mmff-iters 50``
does the same with MMFF94 minimised over the rotatable torsions alone (L-BFGS, the model's bond lengths,
angles and rings kept), a candidate for a cheap final step of the sampler. ``--torsion-guidance-scale F``
multiplies the torsion part of the physics guidance by ``F`` (the coordinate part stays), in this process.
``--seed-relax none`` diffuses from the ETKDG seeds as embedded (the default before session 7) and
``--seed-mmff-iters K`` changes the MMFF94 iterations of the seeds' minimisation, in this process.
``--torsion-score-scale F:T`` multiplies the model's torsion score by ``F`` at diffusion times below ``T``
(sampling a sharper, "colder" torsion density late in the trajectory), in this process.
``--polish-steps K``, ``--diverse-fraction F``, ``--keep-unpolished`` and ``--oversample F`` set the generator's
options of those names (default: the generator's, 0, 0.75, the polished draws only and 2). ``--reference`` takes another reference set (e.g. the GFN2 DRUGS set).
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
from scipy.optimize import minimize

from confdiff.chem.metrics import coverage_matching, rmsd_matrix
from confdiff.chem.torsions import moving_atoms, rotatable_bonds
from confdiff.conformers import evaluation, physics
from confdiff.conformers.diffusion import ConformerDiffusion
from confdiff.conformers import generator as generator_module
from confdiff.diffusion import samplers
from confdiff.diffusion.spaces import ZeroCoM

REFERENCE = "../shared/data/geom_drugs_micro/reference_crest.sdf.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("settings", nargs="+", metavar="STEPS:SAMPLER:GRID:CPS")
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--mmff-iters", type=int, nargs="*", default=[], metavar="K")
    parser.add_argument("--torsion-mmff-iters", type=int, nargs="*", default=[], metavar="K")
    parser.add_argument("--torsion-guidance-scale", type=float, default=1.0, metavar="F")
    parser.add_argument("--torsion-score-scale", default=None, metavar="F:T")
    parser.add_argument("--seed-relax", default="mmff", choices=generator_module.SEED_RELAX_METHODS)
    parser.add_argument("--seed-mmff-iters", type=int, default=generator_module.SEED_MMFF_ITERS, metavar="K")
    parser.add_argument("--polish-steps", type=int, default=0, metavar="K")
    parser.add_argument("--keep-unpolished", action="store_true")
    parser.add_argument("--diverse-fraction", type=float, default=generator_module.DIVERSE_FRACTION, metavar="F")
    parser.add_argument("--oversample", type=float, default=generator_module.DEFAULT_OVERSAMPLE, metavar="F")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records, _ = evaluation.read_records(args.reference)
    molecules, _, _ = evaluation.select_molecules(records, {}, bioactive=False)
    if args.torsion_guidance_scale != 1.0:
        generator_module.physics_guidance = functools.partial(_torsion_scaled_guidance, args.torsion_guidance_scale)
    generator_module.SEED_MMFF_ITERS = args.seed_mmff_iters
    if args.torsion_score_scale:
        factor, below = (float(v) for v in args.torsion_score_scale.split(":"))
        original = ConformerDiffusion.score_fn
        ConformerDiffusion.score_fn = lambda self, *a: _cold_torsions(factor, below, original(self, *a), a[-1])
    jobs = evaluation.make_jobs(molecules, ["confdiff"], {}, lambda k: 2 * k, args.seed)
    for setting in args.settings:
        steps, sampler, grid, per_seed = setting.split(":")
        generator_module.time_grid = functools.partial(samplers.time_grid, kind=grid)
        gen = generator_module.ConformerGenerator(args.model, steps=int(steps), sampler=sampler,
                                                  conformers_per_seed=int(per_seed),
                                                  ring_conformers_per_seed=int(per_seed), seed_relax=args.seed_relax,
                                                  polish_steps=args.polish_steps, diverse_fraction=args.diverse_fraction,
                                                  keep_unpolished=args.keep_unpolished, oversample=args.oversample)
        rows, cpu, written = [], 0.0, 0
        minimised = {("mmff_iters", k): ([], 0.0) for k in args.mmff_iters}
        minimised |= {("torsion_mmff_iters", k): ([], 0.0) for k in args.torsion_mmff_iters}
        for job in jobs:
            start = time.process_time()
            out = gen.generate(Chem.Mol(job.template), job.num_confs, seed=job.seed)
            cpu += time.process_time() - start
            written += out.GetNumConformers()
            rows.append(_scores(job, out, args.threshold))
            for (kind, k), (k_rows, k_cpu) in minimised.items():
                relaxed, start = Chem.Mol(out), time.process_time()
                if kind == "mmff_iters":
                    AllChem.MMFFOptimizeMoleculeConfs(relaxed, numThreads=1, maxIters=k)
                else:
                    _minimise_torsions(relaxed, k)
                minimised[kind, k] = (k_rows + [_scores(job, relaxed, args.threshold)],
                                      k_cpu + time.process_time() - start)
        _report(args.seed, setting, rows, 1000 * cpu / written, polish_steps=gen.polish_steps,
                diverse_fraction=gen.diverse_fraction, keep_unpolished=gen.keep_unpolished, oversample=gen.oversample)
        for (kind, k), (k_rows, k_cpu) in minimised.items():
            _report(args.seed, setting, k_rows, 1000 * k_cpu / written, **{kind: k})


def _scale_torsions(sde, v, factor: float):
    """The state-space vector ``v`` of ``sde`` with its torsion part times ``factor`` (coordinates kept)."""
    return sde.space.join([p if isinstance(space, ZeroCoM) else factor * p
                           for space, p in zip(sde.space.spaces, sde.space.split(v))])


def _torsion_scaled_guidance(factor: float, score_fn, sde, *args, **kwargs):
    """``physics.physics_guidance`` with its torsion part times ``factor``."""
    guidance = physics.physics_guidance(lambda y, t: torch.zeros_like(y), sde, *args, **kwargs)
    return lambda y, t: score_fn(y, t) + _scale_torsions(sde, guidance(y, t), factor)


def _cold_torsions(factor: float, below: float, score_fn, sde):
    """``score_fn`` with its torsion part times ``factor`` at times ``t < below`` (one ``t`` per batch)."""

    def scaled(y, t):
        score = score_fn(y, t)
        return score if float(t.max()) >= below else _scale_torsions(sde, score, factor)

    return scaled


def _dihedral(x: np.ndarray, t) -> float:
    """The dihedral ``a-u-v-b`` of ``x (N, 3)`` in radians, RDKit's sign convention."""
    b0, b1, b2 = x[t.u] - x[t.a], x[t.v] - x[t.u], x[t.b] - x[t.v]
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    return -float(np.arctan2(np.cross(n1, b1 / np.linalg.norm(b1)) @ n2, n1 @ n2))


def _minimise_torsions(mol: Chem.Mol, max_iter: int) -> None:
    """MMFF94 minimised over the rotatable torsions of every conformer of ``mol`` (in place, L-BFGS)."""
    torsions = rotatable_bonds(mol)
    if not torsions:
        return
    sides = [np.asarray(s) for s in moving_atoms(mol, torsions)]
    ff = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    for conf in mol.GetConformers():
        x0 = conf.GetPositions()

        def build(angles: np.ndarray) -> np.ndarray:  # x0 with torsion k set to angles[k], its v side rotated
            x = x0.copy()
            for t, side, angle in zip(torsions, sides, angles):
                axis = (x[t.v] - x[t.u]) / np.linalg.norm(x[t.v] - x[t.u])
                turn, p = angle - _dihedral(x, t), x[side] - x[t.v]
                x[side] = (x[t.v] + p * np.cos(turn) + np.cross(axis, p) * np.sin(turn)
                           + np.outer(p @ axis, axis) * (1 - np.cos(turn)))
            return x

        def energy_and_grad(angles: np.ndarray) -> tuple[float, np.ndarray]:
            x = build(angles)
            energy = ff.CalcEnergy(x.ravel().tolist())  # first: CalcGrad reuses state of the last CalcEnergy
            grad = np.asarray(ff.CalcGrad(x.ravel().tolist())).reshape(-1, 3)
            axes = [(x[t.v] - x[t.u]) / np.linalg.norm(x[t.v] - x[t.u]) for t in torsions]
            return energy, np.array([np.sum(np.cross(a, x[s] - x[t.v]) * grad[s])
                                     for t, s, a in zip(torsions, sides, axes)])

        start = np.array([_dihedral(x0, t) for t in torsions])
        result = minimize(energy_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        conf.SetPositions(build(result.x))


def _scores(job, out: Chem.Mol, threshold: float) -> list[float]:
    r = coverage_matching(rmsd_matrix(list(job.reference), out), threshold)
    return [r["cov_r"], r["mat_r"], r["cov_p"], r["mat_p"]]


def _report(seed: int, setting: str, rows: list, ms: float, **extra) -> None:
    mean = np.nanmean(np.array(rows, dtype=float), axis=0)
    print(json.dumps({"seed": seed, "setting": setting, **extra, "cov_r": mean[0], "mat_r": mean[1],
                      "cov_p": mean[2], "mat_p": mean[3], "ms_per_conformer": ms}), flush=True)


if __name__ == "__main__":
    main()
