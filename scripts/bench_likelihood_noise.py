"""Spread of ``confdiff score``'s log-likelihoods over copies of a conformer whose coordinates carry
uniform noise of at most 5e-5 A (what writing an SD file at 1e-4 A does), per checkpoint.

    python scripts/bench_likelihood_noise.py /tmp/capab/w0.0.pt /tmp/capab/w0.25.pt

Three drug-like molecules, two MMFF94 conformers each, two noise draws of four copies per conformer;
the torsion density at ``confdiff score``'s default steps, one thread. Prints every spread (nats)
and their largest and median value for each checkpoint. ``--segment`` also prints, for the case with
the largest spread, log p at 11 equally spaced points of the straight segment between its lowest and
highest copy (float64): a jump there is a discontinuity of the network, an even slope a steep density.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_likelihood import noisy_copies
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.cli.score import DEFAULT_DENSITY, DEFAULT_STEPS
from confdiff.conformers.generator import load_model
from confdiff.conformers.likelihood import likelihood

SMILES = ["CC(C)Cc1ccc(C(C)C(=O)O)cc1", "COc1ccc2[nH]cc(CCNC(C)=O)c2c1", "CC(C)NCC(O)COc1cccc2ccccc12"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="checkpoints (release files)")
    parser.add_argument("--segment", action="store_true", help="log p along the worst case's segment")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mols = []
    for smiles in SMILES:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMultipleConfs(mol, 2, randomSeed=7)
        AllChem.MMFFOptimizeMoleculeConfs(mol)
        mols.append(mol)
    for path in args.models:
        model = load_model(path, mode=DEFAULT_DENSITY)
        spreads, worst = [], None
        for mol in mols:
            for seed in (0, 1):
                copies = noisy_copies(mol, seed=seed)
                log_p = np.reshape(likelihood(copies, model=model, mode=DEFAULT_DENSITY, steps=DEFAULT_STEPS),
                                   (mol.GetNumConformers(), -1))
                spreads += np.ptp(log_p, axis=1).tolist()
                for c, row in enumerate(log_p):
                    if worst is None or np.ptp(row) > worst[0]:
                        ids = [c * log_p.shape[1] + int(np.argmin(row)), c * log_p.shape[1] + int(np.argmax(row))]
                        worst = (np.ptp(row), copies, ids)
        print(f"{path} (cap_width {model[0].config.cap_width}): spreads {np.round(spreads, 4).tolist()}, "
              f"largest {max(spreads):.4f}, median {np.median(spreads):.4f} nats", flush=True)
        if args.segment:
            _, copies, (low, high) = worst
            a, b = (copies.GetConformer(i).GetPositions() for i in (low, high))
            segment = Chem.Mol(copies)
            segment.RemoveAllConformers()
            for w in np.linspace(0.0, 1.0, 11):
                conf = Chem.Conformer(copies.GetNumAtoms())
                conf.SetPositions((1 - w) * a + w * b)
                segment.AddConformer(conf, assignId=True)
            log_p = likelihood(segment, model=model, mode=DEFAULT_DENSITY, steps=DEFAULT_STEPS, dtype=torch.float64)
            print(f"  segment of the largest spread ({np.abs(b - a).max():.1e} A apart at most): "
                  f"{np.round(log_p, 4).tolist()}", flush=True)


if __name__ == "__main__":
    main()
