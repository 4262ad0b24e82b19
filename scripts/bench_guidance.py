"""Physics guidance tuning: clashes, PoseBusters validity and CPU time per conformer, raw output.

    OMP_NUM_THREADS=1 python scripts/bench_guidance.py data/examples/molecules.sdf -n 20 --seed 0 \
        --mode refine --config none --config repulsion:1 --config mmff:1 --bust 10

Per configuration (``guidance[:scale]``): heavy-atom pairs closer than 2.2 A at three or more bonds
apart (per 20 conformers, summed over molecules), the share of the first ``--bust`` conformers of
each molecule that pass PoseBusters' ``mol`` checks (and the failing checks), and CPU seconds per
conformer of the generation (one thread), with RDKit ETKDGv3 on the same molecules for scale.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import Counter

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from confdiff.conformers import generator as conformers, physics
from confdiff.conformers.generator import ConformerGenerator
from confdiff.conformers.modes import DEFAULT_MODE

CLASH = 2.2  # A


def clashes(mol: Chem.Mol) -> int:
    """Heavy-atom pairs closer than 2.2 A and three or more bonds apart, summed over conformers."""
    topo = Chem.GetDistanceMatrix(mol)
    heavy = np.array([a.GetAtomicNum() > 1 for a in mol.GetAtoms()])
    mask = np.triu((topo >= 3) & heavy[:, None] & heavy[None, :], 1)
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    dist = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)
    return int(((dist < CLASH) & mask).sum())


def bust(mol: Chem.Mol, count: int) -> tuple[int, int, Counter]:
    from posebusters import PoseBusters

    confs = []
    for conf in list(mol.GetConformers())[:count]:
        single = Chem.Mol(mol)
        single.RemoveAllConformers()
        copy = Chem.Conformer(conf)
        copy.SetId(0)  # PoseBusters' energy check reads conformer 0
        single.AddConformer(copy)
        confs.append(single)
    table = PoseBusters(config="mol").bust(confs, None, None)
    ok = table.all(axis=1)
    fails = Counter(col for col in table.columns for v in table[col] if not v)
    return int(ok.sum()), len(ok), fails


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default=DEFAULT_MODE)
    parser.add_argument("--config", action="append", required=True, help="guidance[:scale]")
    parser.add_argument("--bust", type=int, default=0, help="PoseBusters on the first B conformers per molecule")
    parser.add_argument("--json", default=None)
    parser.add_argument("--window", default=None, help="t_start,t_full of the guidance schedule (tuning)")
    parser.add_argument("--cap", type=float, default=None, help="max_score of physics_guidance (tuning)")
    parser.add_argument("--no-gate", action="store_true", help="the sampler's raw draws, without the validity gate")
    args = parser.parse_args()
    if args.window:
        physics.GUIDANCE_WINDOWS[args.mode] = tuple(float(v) for v in args.window.split(","))
    if args.cap is not None:
        conformers.physics_guidance = functools.partial(physics.physics_guidance, max_score=args.cap)
    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)
    mols = [m for m in Chem.SDMolSupplier(args.input, removeHs=False)]
    start = time.process_time()
    for m in mols:
        probe = Chem.Mol(m)
        probe.RemoveAllConformers()
        params = AllChem.ETKDGv3()
        params.randomSeed = args.seed
        AllChem.EmbedMultipleConfs(probe, args.n, params)
    etkdg = (time.process_time() - start) / (args.n * len(mols))
    print(f"ETKDGv3: {1000 * etkdg:.1f} ms CPU per conformer")
    rows = {}
    for config in args.config:
        name, _, scale = config.partition(":")
        gen = ConformerGenerator(None, device="cpu", mode=args.mode, guidance=name,
                                 guidance_scale=float(scale) if scale else None, validity_gate=not args.no_gate)
        gen.generate("CCO", 2, seed=0)  # warm up (model load, first calls)
        out, cpu, n_confs = [], 0.0, 0
        for m in mols:
            start = time.process_time()
            res = next(gen.generate_many([m], args.n, seed=args.seed))
            cpu += time.process_time() - start
            if res.ok:
                out.append(res.mol)
                n_confs += res.mol.GetNumConformers()
        row = {"clashes": sum(clashes(m) for m in out), "per_mol": [clashes(m) for m in out],
               "ms_per_conf": 1000 * cpu / max(n_confs, 1), "confs": n_confs}
        if args.bust:
            passed = total = 0
            fails: Counter = Counter()
            for m in out:
                p, t, f = bust(m, args.bust)
                passed, total, fails = passed + p, total + t, fails + f
            row.update(pb_pass=passed / max(total, 1), pb_total=total, pb_fails=dict(fails))
        rows[config] = row
        print(config, json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"mode": args.mode, "n": args.n, "seed": args.seed, "etkdg_ms": 1000 * etkdg, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
