"""Which draws to keep: selection rules on a pool of raw draws, against a reference ensemble.

For every molecule of the reference file (K conformers) the generator makes a pool of ``--pool``
x 2K usable draws with ``oversample=1`` (its first usable draws, guidance and gate as configured)
and keeps 2K of the first ``P`` x 2K of them for every pool factor ``P`` of ``--factors``, by each rule:

- ``first``: the first 2K draws (``oversample=1``);
- ``lowest:ENERGY``: the 2K lowest in ``ENERGY``, evaluated on the draws as sampled: ``mmff``
  (MMFF94, the generator's ranking), ``mmff-noele`` (without electrostatics), ``mmff94s-noele``,
  ``mmff-dd4`` (distance-dependent dielectric 4);
- ``diverse:F``: farthest-point selection (heavy-atom RMSD, ``chem.ensembles.farthest_points``) among
  the lowest fraction ``F`` in MMFF94 energy, starting from the lowest (the generator's
  ``selection="diverse"`` at ``F = 0.75``), for every ``F`` of ``--fractions``;
- ``medoids:F``: greedy k-median (``medoid_points``) among the same candidates: representatives of
  the dense regions instead of the outlying draws that farthest-point selection reaches first.

``--guidance-scale`` and ``--guidance-window T_START T_FULL`` change the generator's guidance schedule
(``physics.GuidanceSchedule``) for the pool.

COV / MAT at ``--threshold`` are averaged over molecules, then over ``--seed``s; one JSON line per
(factor, rule) goes to ``--jsonl``.

    python scripts/bench_oversample.py ../shared/data/geom_drugs_micro/reference_crest.sdf.gz \\
        --seed 61453 --seed 1 --seed 2 --pool 2 --factors 1.25 1.5 2 --jsonl docs/bench/micro_oversample_rules.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers

from confdiff.chem.ensembles import SELECTION_MAX_MATCHES, farthest_points
from confdiff.chem.metrics import coverage_matching, rmsd_matrix
from confdiff.conformers.evaluation import group_by_molecule, read_records
from confdiff.conformers.generator import ConformerGenerator
from confdiff.conformers.physics import GuidanceSchedule

# name -> (MMFF variant, electrostatics, dielectric model: 1 constant, 2 distance-dependent, dielectric constant)
ENERGIES = {"mmff": ("MMFF94", True, 1, 1.0), "mmff-noele": ("MMFF94", False, 1, 1.0),
            "mmff94s-noele": ("MMFF94s", False, 1, 1.0), "mmff-dd4": ("MMFF94", True, 2, 4.0)}
DIVERSE_FRACTIONS = (1.0, 0.75, 0.5)


def energies(mol: Chem.Mol, name: str) -> np.ndarray:
    """Single-point energy (kcal/mol) of every conformer of ``mol`` as it is; shape (L,), NaN without parameters."""
    variant, electrostatics, model, dielectric = ENERGIES[name]
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol, mmffVariant=variant)
    if props is None:
        return np.full(mol.GetNumConformers(), np.nan)
    props.SetMMFFEleTerm(electrostatics)
    props.SetMMFFDielectricModel(model)
    props.SetMMFFDielectricConstant(dielectric)
    return np.array([rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props, confId=c.GetId()).CalcEnergy()
                     for c in mol.GetConformers()])


def medoid_points(rmsd: np.ndarray, n: int) -> list[int]:
    """``n`` indices of the square distance matrix ``rmsd (L, L)`` by greedy k-median, in selection order:
    first the medoid, then repeatedly the index that most lowers the summed distance of every index to
    its nearest selected (ties: the lower index)."""
    kept = [int(np.argmin(rmsd.sum(1)))]
    nearest = rmsd[kept[0]].copy()
    while len(kept) < min(n, len(rmsd)):
        gain = np.maximum(nearest[None, :] - rmsd, 0).sum(1)
        gain[kept] = -1
        k = int(np.argmax(gain))
        kept.append(k)
        nearest = np.minimum(nearest, rmsd[k])
    return kept


def selections(pool: dict, n: int, factor: float, fractions=DIVERSE_FRACTIONS) -> dict[str, list[int]]:
    """Rule name -> the kept draws (indices into the pool) of the first ``factor * n`` pool draws."""
    size = min(len(pool["mmff"]), int(round(factor * n)))
    out = {"first": list(range(min(n, size)))}
    for name in ENERGIES:
        e = np.nan_to_num(pool[name][:size], nan=np.inf)
        out[f"lowest:{name}"] = list(np.argsort(e, kind="stable")[:n])
    order = list(np.argsort(np.nan_to_num(pool["mmff"][:size], nan=np.inf), kind="stable"))
    for fraction in fractions:
        candidates = order[: max(n, int(fraction * size))]
        rmsd = pool["rmsd"][np.ix_(candidates, candidates)]
        out[f"diverse:{fraction}"] = [candidates[k] for k in farthest_points(rmsd, n)]
        out[f"medoids:{fraction}"] = [candidates[k] for k in medoid_points(rmsd, n)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference")
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--pool", type=float, default=2.0, help="pool size per conformer asked for (2)")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(DIVERSE_FRACTIONS),
                        help="the diverse rule's energy fractions (1 0.75 0.5)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="the generator's (default: its own)")
    parser.add_argument("--guidance-window", type=float, nargs=2, default=None, metavar=("T_START", "T_FULL"),
                        help="the guidance schedule's window (default: the generator's, physics.GUIDANCE_WINDOWS)")
    parser.add_argument("--conformers-per-seed", type=int, default=None, help="the generator's (default: its own)")
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--model", default=None)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_seed = {} if args.conformers_per_seed is None else {"conformers_per_seed": args.conformers_per_seed}
    generator = ConformerGenerator(args.model, oversample=1, guidance_scale=args.guidance_scale, **per_seed)
    if args.guidance_window is not None:
        generator.guidance_schedule = GuidanceSchedule(generator.guidance_schedule.scale, *args.guidance_window)
    molecules = group_by_molecule(read_records(args.reference)[0])
    metrics: dict[tuple[float, str], list[np.ndarray]] = {}
    for seed in args.seed:
        per_seed: dict[tuple[float, str], list[list[float]]] = {}
        for refs in molecules.values():
            template = Chem.Mol(refs[0])
            template.RemoveAllConformers()
            n = 2 * len(refs)
            start = time.process_time()
            mol = generator.generate(template, int(round(args.pool * n)), seed=seed)
            pool = {name: energies(mol, name) for name in ENERGIES}
            pool["rmsd"] = rmsd_matrix(mol, mol, max_matches=SELECTION_MAX_MATCHES)  # as the generator
            to_refs = rmsd_matrix(list(refs), mol)
            for factor in args.factors:
                for rule, kept in selections(pool, n, factor, args.fractions).items():
                    m = coverage_matching(to_refs[:, kept], args.threshold)
                    per_seed.setdefault((factor, rule), []).append([m["cov_r"], m["mat_r"], m["cov_p"], m["mat_p"]])
            print(f"seed {seed}: {len(refs)} references, {mol.GetNumConformers()} draws, "
                  f"{time.process_time() - start:.1f} CPU s", flush=True)
        for key, rows in per_seed.items():
            metrics.setdefault(key, []).append(np.nanmean(np.array(rows), axis=0))
    lines = []
    for (factor, rule), seeds in metrics.items():
        mean = np.mean(seeds, axis=0)
        line = {"factor": factor, "rule": rule, "cov_r": mean[0], "mat_r": mean[1], "cov_p": mean[2], "mat_p": mean[3],
                "cov_r_per_seed": [s[0] for s in seeds], "seeds": args.seed, "mode": generator.mode.name,
                "guidance_scale": generator.guidance_schedule.scale,
                "guidance_window": [generator.guidance_schedule.t_start, generator.guidance_schedule.t_full],
                "pool": args.pool, "conformers_per_seed": args.conformers_per_seed,
                "reference": args.reference, "date": time.strftime("%Y-%m-%d")}
        lines.append(line)
        print(f"x{factor:<5} {rule:22s} COV-R {mean[0]:.3f} MAT-R {mean[1]:.3f} COV-P {mean[2]:.3f} MAT-P {mean[3]:.3f}"
              f"  per seed COV-R {' '.join(f'{s[0]:.3f}' for s in seeds)}")
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            for line in lines:
                f.write(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in line.items()}) + "\n")


if __name__ == "__main__":
    main()
