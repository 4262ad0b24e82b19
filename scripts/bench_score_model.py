"""Time the conformer score model on drug-like molecules (DESIGN.md, "The speed budget").

    python scripts/bench_score_model.py                 # default config, batches of 64 and 256
    python scripts/bench_score_model.py --no-scatter    # force the pure-torch scatter fallback
    python scripts/bench_score_model.py --mallopt       # keep freed memory in glibc malloc (see below)
    python scripts/bench_score_model.py --set num_layers=2 --set max_neighbors=8

Reports milliseconds per conformer per forward pass on one thread (CPU time of this process and wall
time), the parameter count and the peak resident memory. ``--mallopt`` raises glibc's mmap and trim
thresholds: by default every large tensor is a fresh ``mmap`` whose pages fault in on first touch,
which on this VM costs more than the arithmetic of the elementwise kernels.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import resource
import time

import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.nn.scatter import pure_torch_scatter, torch_scatter_available
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig

# Drug-like molecules, 40-63 atoms with hydrogens (mean ~46, close to GEOM-drugs).
SMILES = {
    "omeprazole": "COc1ccc2[nH]c(S(=O)Cc3ncc(C)c(OC)c3C)nc2c1",
    "losartan": "CCCCc1nc(Cl)c(CO)n1Cc1ccc(-c2ccccc2-c2nn[nH]n2)cc1",
    "metoprolol": "COCCc1ccc(OCC(O)CNC(C)C)cc1",
    "celecoxib": "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1",
    "fluoxetine": "CNCCC(Oc1ccc(C(F)(F)F)cc1)c1ccccc1",
    "sildenafil": "CCCc1nn(C)c2c(=O)[nH]c(-c3cc(S(=O)(=O)N4CCN(C)CC4)ccc3OCC)nc12",
    "propranolol": "CC(C)NCC(O)COc1cccc2ccccc12",
}


def conformer_graphs(num_conformers: int, seed: int = 0) -> list:
    """``num_conformers`` featurised ETKDG conformers, cycling through the molecules."""
    per_molecule = []
    for smiles in SMILES.values():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = AllChem.EmbedMultipleConfs(mol, numConfs=4, randomSeed=seed)
        graph = featurize(mol)
        per_molecule.append([(graph, torch.tensor(mol.GetConformer(i).GetPositions(), dtype=torch.float32))
                             for i in ids])
    graphs = []
    for k in range(num_conformers):
        graph, pos = per_molecule[k % len(per_molecule)][(k // len(per_molecule)) % 4]
        g = graph.clone()
        g.pos = pos
        graphs.append(g)
    return graphs


def make_batch(num_conformers: int, generator: torch.Generator) -> Batch:
    batch = Batch.from_data_list(conformer_graphs(num_conformers))
    batch.sigma_tor = torch.exp(torch.empty(num_conformers).uniform_(-4.6, 1.1, generator=generator))
    batch.sigma_pos = torch.exp(torch.empty(num_conformers).uniform_(-5.3, -1.6, generator=generator))
    return batch


def time_forward(model: ScoreModel, batch: Batch, repeats: int, backward: bool) -> tuple[float, float]:
    """Best CPU and wall seconds of one forward (and backward) pass over ``repeats`` runs."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        cpu, wall = time.process_time(), time.perf_counter()
        if backward:
            tor, pos = model(batch)
            (tor.square().sum() + pos.square().sum()).backward()
        else:
            with torch.no_grad():
                model(batch)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def keep_freed_memory() -> None:
    """glibc: serve large blocks from the heap and never trim it (no page faults on reuse)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-scatter", action="store_true", help="force the pure-torch scatter fallback")
    parser.add_argument("--mallopt", action="store_true", help="keep freed memory in glibc malloc")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (training)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ScoreModelConfig field")
    args = parser.parse_args()

    if args.mallopt:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    overrides = {}
    fields = {f.name: f for f in dataclasses.fields(ScoreModelConfig)}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown ScoreModelConfig field {key!r}")
        overrides[key] = float(value) if fields[key].type == "float" else int(value)
    config = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, **overrides)
    torch.manual_seed(0)
    model = ScoreModel(config).eval()
    print(f"config: {config.to_dict()}")
    print(f"parameters: {model.num_parameters()}, threads: {args.threads}, "
          f"torch-scatter: {torch_scatter_available() and not args.no_scatter}, mallopt: {args.mallopt}")

    generator = torch.Generator().manual_seed(0)
    for size in args.batch_sizes:
        batch = make_batch(size, generator)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if args.no_scatter:
            with pure_torch_scatter():
                cpu, wall = time_forward(model, batch, args.repeats, args.backward)
        else:
            cpu, wall = time_forward(model, batch, args.repeats, args.backward)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"batch {size:4d} conformers ({batch.num_nodes / size:.1f} atoms, "
              f"{batch.torsion_index.shape[1] / size:.1f} torsions each): "
              f"{1e3 * cpu / size:.3f} ms CPU / conformer, {1e3 * wall / size:.3f} ms wall / conformer, "
              f"peak RSS {rss_after / 1024:.0f} MiB (+{(rss_after - rss_before) / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
