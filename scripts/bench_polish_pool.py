"""Selection rules on a pool of draws as drawn and as polished, paired on the same draws (session 13).

    python scripts/bench_polish_pool.py ../shared/data/geom_drugs_micro/reference_crest.sdf.gz --seed 61453
    python scripts/bench_polish_pool.py ../shared/data/platinum/platinum_diverse_dev.sdf.gz --bioactive --max-molecules 100

For every molecule the shipped model makes 2n usable draws twice from the same noise (``oversample=1``,
the default guidance and gate): without the polish and with 30 polish steps. Draw ``i`` is then the same
sample before and after its polish (a draw that one run's gate replaced is missing from the other). Each
rule keeps ``n`` of them by farthest-point selection in heavy-atom RMSD (``chem.ensembles``) among
candidates ordered by MMFF94 energy, as the generator's diverse selection does:

- ``drawn75``: the lowest 75 % of the draws as drawn (the package default, up to the gate's redraws);
- ``polished90``: the lowest 90 % of the polished draws (``confdiff-polish``, session 12);
- ``both75``: the lowest 75 % of the pool of both versions (``confdiff-polish-both``, ``keep_unpolished``);
- ``both75_by_well``: the lowest 75 % of the draws by their polished energy (the depth of the well each
  draw is in), then both versions of each kept draw, ordered by that energy.
- ``drawn75_polished``: ``drawn75``'s choice, each chosen draw then replaced by its polished version (a
  polish after the selection, which cannot make two chosen draws one; session 15).
- ``drawn75_polished_near25`` / ``_near50``: the same, but a chosen draw keeps its polished version only
  where the polish moved it by at most 0.25 / 0.5 A (heavy-atom RMSD): a polish that cleans the local
  geometry is kept, one that carries the draw into another well is not (session 16).

Reference sets: ``n = 2K``, COV / MAT at 0.75 A averaged over molecules; ``--bioactive``: ``n = 50``, the
share of ligands with a conformer within 0.5 / 1 / 2 A of the crystal pose and the median smallest RMSD.
One JSON line per rule.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from rdkit import Chem

from confdiff.chem.ensembles import farthest_point_conformers
from confdiff.chem.metrics import coverage_matching, rmsd_matrix
from confdiff.conformers import evaluation
from confdiff.conformers.generator import ConformerGenerator, GenerationError
from confdiff.conformers.physics import MMFFPotential

RULES = ("drawn75", "polished90", "both75", "both75_by_well", "drawn75_polished", "drawn75_polished_near25",
         "drawn75_polished_near50")
NEAR = {"drawn75_polished": np.inf, "drawn75_polished_near25": 0.25, "drawn75_polished_near50": 0.5}  # A


def candidates(rule: str, drawn: dict, polished: dict, energy: dict) -> list:
    """Pool keys ``(draw index, polished)`` that ``rule`` offers the farthest-point selection, lowest first."""
    if rule == "drawn75" or rule in NEAR:
        keys, fraction = [(i, False) for i in drawn], 0.75
    elif rule == "polished90":
        keys, fraction = [(i, True) for i in polished], 0.9
    elif rule == "both75":
        keys, fraction = [(i, False) for i in drawn] + [(i, True) for i in polished], 0.75
    else:  # both75_by_well
        well = {i: energy[i, True] if i in polished else energy[i, False] for i in set(drawn) | set(polished)}
        kept = sorted(well, key=well.get)[: int(0.75 * len(well))]
        return [(i, flag) for i in kept for flag in (True, False) if (i, flag) in energy]
    keys = sorted(keys, key=energy.get)
    return keys[: int(fraction * len(keys))]


def written(rule: str, selected: list, pool: dict, moved: dict) -> list:
    """The pool keys written for the ``selected`` ones: the ``drawn75_polished`` rules write each selected
    draw's polished version where the gate kept one and the polish moved the draw (``moved[i]``, A) by at
    most the rule's limit; every other rule writes what it selected."""
    if rule not in NEAR:
        return selected
    return [(i, True) if (i, True) in pool and moved[i] <= NEAR[rule] else (i, polished) for i, polished in selected]


def with_conformers(template: Chem.Mol, positions: list) -> Chem.Mol:
    """A copy of ``template`` whose conformers are ``positions`` (each (N, 3)), in order."""
    mol = Chem.Mol(template)
    mol.RemoveAllConformers()
    for xyz in positions:
        conf = Chem.Conformer(mol.GetNumAtoms())
        conf.SetPositions(xyz)
        mol.AddConformer(conf, assignId=True)
    return mol


def polish_moves(template: Chem.Mol, drawn: dict, polished: dict) -> dict:
    """Heavy-atom RMSD (A) between each draw with both versions and its polished version."""
    both = sorted(set(drawn) & set(polished))
    if not both:
        return {}
    pair = [with_conformers(template, [versions[i] for i in both]) for versions in (drawn, polished)]
    return dict(zip(both, np.diag(rmsd_matrix(*pair)).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("--seed", type=int, default=evaluation.DEFAULT_SEED)
    parser.add_argument("--bioactive", action="store_true")
    parser.add_argument("--max-molecules", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    records, _ = evaluation.read_records(args.source)
    molecules, _, _ = evaluation.select_molecules(records, {}, bioactive=args.bioactive,
                                                  max_molecules=args.max_molecules)
    jobs = evaluation.make_jobs(molecules, ["confdiff"], {}, (lambda k: 50) if args.bioactive else (lambda k: 2 * k),
                                args.seed)
    as_drawn, with_polish = ConformerGenerator(oversample=1, polish_steps=0), ConformerGenerator(oversample=1, polish_steps=30)
    scores = {rule: [] for rule in RULES}
    for job in jobs:
        n = job.num_confs
        try:
            runs = [gen.generate(Chem.Mol(job.template), 2 * n, seed=job.seed) for gen in (as_drawn, with_polish)]
        except GenerationError:
            for rule in RULES:
                scores[rule].append(np.inf if args.bioactive else None)
            continue
        drawn, polished = ({c.GetIntProp("conformer_index"): c.GetPositions() for c in mol.GetConformers()}
                           for mol in runs)
        pool = {(i, False): p for i, p in drawn.items()} | {(i, True): p for i, p in polished.items()}
        keys = list(pool)
        try:
            values = MMFFPotential(runs[0]).energy_and_grad(torch.tensor(np.stack([pool[k] for k in keys])))[0]
        except ValueError:  # no MMFF94 parameters: draw order
            values = torch.arange(len(keys), dtype=torch.float64)
        energy = dict(zip(keys, values.tolist()))
        moved = polish_moves(runs[0], drawn, polished)
        for rule in RULES:
            chosen = candidates(rule, drawn, polished, energy)
            mol = with_conformers(runs[0], [pool[key] for key in chosen])
            selected = [chosen[cid] for cid in farthest_point_conformers(mol, n)]
            out = with_conformers(runs[0], [pool[key] for key in written(rule, selected, pool, moved)])
            distances = rmsd_matrix(list(job.reference), out)
            if args.bioactive:
                scores[rule].append(float(np.nanmin(distances)))
            else:
                r = coverage_matching(distances, 0.75)
                scores[rule].append([r["cov_r"], r["mat_r"], r["cov_p"], r["mat_p"]])
    for rule, rows in scores.items():
        if args.bioactive:
            best = np.array(rows)
            result = {f"within_{t}": float(np.mean(best <= t)) for t in (0.5, 1.0, 2.0)}
            result |= {"median": float(np.median(best))}
        else:
            mean = np.nanmean(np.array([r for r in rows if r is not None], dtype=float), axis=0)
            result = dict(zip(("cov_r", "mat_r", "cov_p", "mat_p"), mean.round(4).tolist()))
        print(json.dumps({"source": args.source.rsplit("/", 1)[-1], "seed": args.seed, "molecules": len(rows),
                          "rule": rule, **result}), flush=True)


if __name__ == "__main__":
    main()
