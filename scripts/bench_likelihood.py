"""CPU time and error of conformer log-likelihoods: ``confdiff score``'s default against the former one.

    python scripts/bench_likelihood.py                                  # ibuprofen, 2 MMFF conformers
    python scripts/bench_likelihood.py "OCCO" --conformers 4 --skip-refine

Shipped model, exact divergence, one thread, everything in one run so that CPU times compare:

* ``refine adaptive``: the former default of ``confdiff score`` (refine density, Dormand-Prince at
  ``atol = 1e-5``, the model's float32; minutes per conformer, ``--skip-refine`` leaves it out);
* ``torsions adaptive 1e-6 f64``: the torsion density, tight adaptive solve in float64 (the reference);
* ``torsions rk4 N``: the torsion density with fixed RK4 steps, the default ``N`` of ``confdiff score``
  among them, with its error against the reference;

and, for the default, the largest change of log p over randomly rotated and translated copies of
every conformer (scored in one batch with the originals, as ``confdiff score`` does), and the spread
of log p over copies whose coordinates carry uniform noise of at most 5e-5 A (what an SD file's
rounding to 1e-4 A does), in float32 and float64.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.conformers.likelihood import likelihood
from confdiff.conformers.generator import load_model
from confdiff.cli.score import DEFAULT_DENSITY, DEFAULT_STEPS


def moved_copies(mol: Chem.Mol, seed: int = 1) -> Chem.Mol:
    """``mol`` followed by a randomly rotated and translated copy of every conformer."""
    rng = np.random.default_rng(seed)
    out = Chem.Mol(mol)
    for conf in list(mol.GetConformers()):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        q = q if np.linalg.det(q) > 0 else -q
        copy = Chem.Conformer(mol.GetNumAtoms())
        copy.SetPositions(conf.GetPositions() @ q.T + rng.normal(scale=5.0, size=3))
        out.AddConformer(copy, assignId=True)
    return out


def noisy_copies(mol: Chem.Mol, copies: int = 4, seed: int = 0) -> Chem.Mol:
    """``copies`` copies of every conformer, each coordinate moved by uniform noise in [-5e-5, 5e-5] A."""
    rng = np.random.default_rng(seed)
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for conf in mol.GetConformers():
        for _ in range(copies):
            copy = Chem.Conformer(mol.GetNumAtoms())
            copy.SetPositions(conf.GetPositions() + rng.uniform(-5e-5, 5e-5, size=(mol.GetNumAtoms(), 3)))
            out.AddConformer(copy, assignId=True)
    return out


def timed(mol, n, **kwargs) -> tuple[list[float], float]:
    start = time.process_time()
    log_p = likelihood(mol, divergence="exact", **kwargs)
    return log_p, (time.process_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("smiles", nargs="?", default="CC(C)Cc1ccc(C(C)C(=O)O)cc1")
    parser.add_argument("--conformers", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, DEFAULT_STEPS, 40])
    parser.add_argument("--skip-refine", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mol = Chem.AddHs(Chem.MolFromSmiles(args.smiles))
    AllChem.EmbedMultipleConfs(mol, args.conformers, randomSeed=7)
    AllChem.MMFFOptimizeMoleculeConfs(mol)
    n = mol.GetNumConformers()
    refine, torsions = load_model(None, mode="refine"), load_model(None, mode=DEFAULT_DENSITY)

    def show(name, log_p, cpu, ref=None):
        err = f", error {np.max(np.abs(np.subtract(log_p, ref))):.4f} nats" if ref is not None else ""
        print(f"{name:>28}: {cpu:8.2f} CPU s per conformer, log p {np.round(log_p, 4).tolist()}{err}", flush=True)

    if not args.skip_refine:
        show("refine adaptive 1e-5 (old)", *timed(mol, n, model=refine, mode="refine", atol=1e-5, align=False))
    ref, ref_cpu = timed(mol, n, model=torsions, mode=DEFAULT_DENSITY, atol=1e-6, dtype=torch.float64)
    show("torsions adaptive 1e-6 f64", ref, ref_cpu)
    for steps in args.steps:
        log_p, cpu = timed(mol, n, model=torsions, mode=DEFAULT_DENSITY, steps=steps)
        show(f"torsions rk4 {steps}" + (" (default)" if steps == DEFAULT_STEPS else ""), log_p, cpu, ref)
    moved = moved_copies(mol)
    log_p, cpu = timed(moved, 2 * n, model=torsions, mode=DEFAULT_DENSITY, steps=DEFAULT_STEPS)
    print(f"default on {n} conformers + {n} moved copies: {cpu:.2f} CPU s per conformer, largest change under "
          f"a rigid motion {np.max(np.abs(np.subtract(log_p[n:], log_p[:n]))):.2e} nats")
    noisy = noisy_copies(mol)
    for dtype in (torch.float32, torch.float64):
        log_p = np.reshape(likelihood(noisy, model=torsions, mode=DEFAULT_DENSITY, steps=DEFAULT_STEPS, dtype=dtype), (n, -1))
        print(f"default, {dtype}, 4 copies with 5e-5 A noise per conformer: spread "
              f"{np.round(np.ptp(log_p, axis=1), 4).tolist()} nats")


if __name__ == "__main__":
    main()
