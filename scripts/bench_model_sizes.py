"""CPU cost of one score-model evaluation for each named size (``confdiff train --size``).

    OMP_NUM_THREADS=1 python scripts/bench_model_sizes.py

Untrained weights (the cost does not depend on them), one thread, float32, no gradients: a batch of
35 ETKDG conformers of one 37-atom drug-like molecule (the generator's batches hold one molecule's
conformers), noise levels of the middle of the trajectory. Prints the parameters and the CPU ms per
conformer and step for every size in one run; ``small`` with ``cap_width 0`` is the shipped model.
Generation costs about 20 such steps per conformer plus the ETKDG seeds (about 5-6 ms).
"""

from __future__ import annotations

import dataclasses
import time

import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.nn.score_model import MODEL_SIZES, ScoreModel, ScoreModelConfig

SMILES = "CC(C)Cc1ccc(C(C)C(=O)O)cc1OCCN1CCOCC1"
CONFORMERS = 35


def main() -> None:
    torch.set_num_threads(1)
    mol = Chem.AddHs(Chem.MolFromSmiles(SMILES))
    AllChem.EmbedMultipleConfs(mol, CONFORMERS, randomSeed=1)
    graphs = []
    for conf in mol.GetConformers():
        graph = featurize(mol)
        graph.pos = torch.tensor(conf.GetPositions(), dtype=torch.float32)
        graphs.append(graph)
    batch = Batch.from_data_list(graphs)
    batch.sigma_tor, batch.sigma_pos = torch.full((CONFORMERS,), 0.3), torch.full((CONFORMERS,), 0.05)
    base = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM)
    sizes = {"small, hard cap (shipped)": {"cap_width": 0.0}} | {name: fields for name, fields in MODEL_SIZES.items()}
    for name, fields in sizes.items():
        model = ScoreModel(dataclasses.replace(base, **fields)).eval()
        with torch.no_grad():
            for _ in range(3):
                model(batch)
            start, repeats = time.process_time(), 10
            for _ in range(repeats):
                model(batch)
        ms = (time.process_time() - start) / repeats / CONFORMERS * 1000
        print(f"{name:>28}: {model.num_parameters():>8,} parameters, {ms:.3f} CPU ms per conformer and step", flush=True)


if __name__ == "__main__":
    main()
