"""Does ``confdiff score``'s density prefer reference conformers over the same conformers with moved
torsions? For the first molecules of a reference set: K reference conformers against the same K with
every rotatable torsion moved by a normal draw of scale S (rad); prints, per scale, the share of
(reference, moved) pairs of one molecule in which the reference has the higher log p.

    python scripts/bench_likelihood_discrimination.py data/reference/drugs_gfn2.sdf.gz --scales 0.3 1.0

Shipped model (or ``--model``), ``confdiff score``'s default density and steps, one thread.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from confdiff.chem.torsions import rotatable_bonds
from confdiff.cli.score import DEFAULT_DENSITY, DEFAULT_STEPS
from confdiff.conformers.evaluation import group_by_molecule, read_records
from confdiff.conformers.generator import load_model
from confdiff.conformers.likelihood import likelihood


def reference_and_moved(mols: list[Chem.Mol], scale: float, rng: np.random.Generator) -> Chem.Mol | None:
    """One molecule holding the conformers of ``mols`` followed by their copies with moved torsions."""
    out = Chem.Mol(mols[0])
    out.RemoveAllConformers()
    torsions = rotatable_bonds(out)
    if not torsions:
        return None
    for m in mols:
        out.AddConformer(Chem.Conformer(m.GetConformer()), assignId=True)
    for m in mols:
        conf = Chem.Conformer(m.GetConformer())
        for torsion in torsions:
            atoms = tuple(int(i) for i in torsion)
            rdMolTransforms.SetDihedralRad(conf, *atoms, rdMolTransforms.GetDihedralRad(conf, *atoms)
                                           + float(rng.normal(0.0, scale)))
        out.AddConformer(conf, assignId=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="reference conformers (.sdf or .sdf.gz), grouped into molecules "
                                          "as confdiff benchmark groups them")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--molecules", type=int, default=50)
    parser.add_argument("--conformers", type=int, default=4, help="K reference conformers per molecule")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    groups = group_by_molecule(read_records(args.reference)[0])
    model = load_model(args.model, mode=DEFAULT_DENSITY)
    for scale in args.scales:
        rng = np.random.default_rng(0)
        wins = []
        for mols in list(groups.values())[:args.molecules]:
            mol = reference_and_moved(mols[:args.conformers], scale, rng)
            if mol is None:
                continue
            k = mol.GetNumConformers() // 2
            log_p = likelihood(mol, model=model, mode=DEFAULT_DENSITY, steps=DEFAULT_STEPS)
            wins += [a > b for a, b in itertools.product(log_p[:k], log_p[k:])]
        print(f"scale {scale} rad: P(reference > moved) = {np.mean(wins):.3f} over {len(wins)} pairs", flush=True)


if __name__ == "__main__":
    main()
