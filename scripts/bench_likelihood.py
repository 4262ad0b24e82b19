"""CPU time of exact conformer log-likelihoods: vmapped vector-Jacobian products against one per probe.

    python scripts/bench_likelihood.py                 # ethylene glycol, 4 ETKDG conformers
    python scripts/bench_likelihood.py "CC(C)Cc1ccc(C(C)C(=O)O)cc1" --conformers 2

Shipped model, exact divergence, one thread, both settings in one run; prints the log-likelihoods
(equal up to float rounding) and CPU seconds per conformer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

import confdiff.diffusion.likelihood as core
from confdiff.conformers.likelihood import likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("smiles", nargs="?", default="OCCO")
    parser.add_argument("--conformers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mol = Chem.AddHs(Chem.MolFromSmiles(args.smiles))
    AllChem.EmbedMultipleConfs(mol, args.conformers, randomSeed=7)
    chunk = core._PROBE_CHUNK
    times = {}
    for name, size in (("vmapped", chunk), ("one per probe", 1)):
        core._PROBE_CHUNK = size
        start = time.process_time()
        log_p = likelihood(mol, divergence="exact")
        times[name] = (time.process_time() - start) / args.conformers
        print(f"{name:>14}: {times[name]:7.2f} CPU s per conformer, log p {np.round(log_p, 4).tolist()}")
    core._PROBE_CHUNK = chunk
    print(f"speed-up {times['one per probe'] / times['vmapped']:.1f}x")


if __name__ == "__main__":
    main()
