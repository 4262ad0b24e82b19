"""``ValidityChecker`` against the ``posebusters`` package: agreement per check, and time per conformer.

    python scripts/check_validity_agreement.py                  # data/examples/molecules.sdf, 20 ETKDGv3 conformers each
    python scripts/check_validity_agreement.py -n 20 --noise 0.15

Every molecule gets ``n`` ETKDGv3 conformers (seed 0) and, with ``--noise S``, as many copies with
Gaussian noise of ``S`` A on every coordinate (a mix of passing and failing conformers). Each
conformer is judged by ``PoseBusters(config="mol")`` one at a time and by the checker (energy
included) on the whole stack; the script prints the agreement per check and both times per conformer
(the checker's without and with ``internal_energy``, its preparation apart). Needs ``posebusters``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from rdkit import Chem, rdBase  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

from confdiff.chem.validity import POSEBUSTERS_NAMES, ValidityChecker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _conformers(mol: Chem.Mol, n: int, noise: float) -> np.ndarray:
    params = AllChem.ETKDGv3()
    params.randomSeed = 0
    params.numThreads = 1
    AllChem.EmbedMultipleConfs(mol, n, params)
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    if noise > 0:
        rng = np.random.default_rng(0)
        pos = np.concatenate([pos, pos + rng.normal(scale=noise, size=pos.shape)])
    return pos


def _with_conformer(mol: Chem.Mol, pos: np.ndarray) -> Chem.Mol:
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(len(pos))
    for k, p in enumerate(pos):
        conf.SetAtomPosition(k, p.tolist())
    out.AddConformer(conf, assignId=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdf", nargs="?", default=str(REPO / "data" / "examples" / "molecules.sdf"))
    parser.add_argument("-n", type=int, default=20, help="ETKDGv3 conformers per molecule (20)")
    parser.add_argument("--noise", type=float, default=0.0, help="also n noisy copies, noise in A (0: none)")
    parser.add_argument("--timing-confs", type=int, default=50, help="stack size for the checker's timing (50)")
    args = parser.parse_args()

    import confdiff.conformers  # noqa: F401 -- torch and the rest imported here, not in the first preparation
    from posebusters import PoseBusters

    buster = PoseBusters(config="mol")
    agree, total, fails_ours, fails_pb = Counter(), Counter(), Counter(), Counter()
    t_ours = t_ours_energy = t_prep = t_prep_energy = t_pb = 0.0
    num_confs = num_timed = num_mols = 0
    for mol in Chem.SDMolSupplier(args.sdf, removeHs=False):
        mol.RemoveAllConformers()
        name = mol.GetProp("_Name")
        num_mols += 1
        pos = _conformers(Chem.Mol(mol), args.n, args.noise)
        t = time.perf_counter()
        checker = ValidityChecker.from_mol(mol)
        t_prep += time.perf_counter() - t
        t = time.perf_counter()
        checker_e = ValidityChecker.from_mol(mol, energy=True)
        t_prep_energy += time.perf_counter() - t
        stack = np.concatenate([pos] * -(-args.timing_confs // len(pos)))[: args.timing_confs]
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            checker.check(stack)
        t_ours += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(reps):
            checker_e.check(stack)
        t_ours_energy += time.perf_counter() - t
        num_timed += reps * len(stack)

        ours = checker_e.check(pos)
        buster.bust(_with_conformer(mol, pos[0]))  # the ensemble energy, cached by InChI, out of the timing
        t = time.perf_counter()
        with rdBase.BlockLogs():
            rows = [buster.bust(_with_conformer(mol, p)).iloc[0] for p in pos]
        t_pb += time.perf_counter() - t
        num_confs += len(pos)
        for check, column in POSEBUSTERS_NAMES.items():
            theirs = np.array([bool(r[column] is True or r[column] == True) for r in rows])  # noqa: E712 (numpy bools)
            same = ours[check] == theirs
            agree[check] += int(same.sum())
            total[check] += len(pos)
            fails_ours[check] += int((~ours[check]).sum())
            fails_pb[check] += int((~theirs).sum())
            for k in np.flatnonzero(~same):
                print(f"  disagreement: {name} conformer {k} {check}: ours {ours[check][k]}, posebusters {theirs[k]}")
        print(f"{name}: {mol.GetNumAtoms()} atoms, {len(pos)} conformers, ours fail "
              f"{ {c: int((~v).sum()) for c, v in ours.items() if (~v).any()} }")

    print(f"\n{num_confs} conformers; agreement per check (failures ours / posebusters):")
    for check in POSEBUSTERS_NAMES:
        print(f"  {check:32s} {agree[check]:4d}/{total[check]}  ({fails_ours[check]} / {fails_pb[check]})")
    print(f"\nchecker, stacks of {args.timing_confs}: {1e6 * t_ours / num_timed:.0f} us per conformer "
          f"({1e6 * t_ours_energy / num_timed:.0f} us with internal_energy); preparation "
          f"{1e3 * t_prep / num_mols:.0f} ms per molecule ({1e3 * t_prep_energy / num_mols:.0f} ms with energy, cache cold)")
    print(f"posebusters mol config, one conformer at a time: {1e3 * t_pb / num_confs:.0f} ms per conformer "
          "(ensemble energy cached)")


if __name__ == "__main__":
    main()
