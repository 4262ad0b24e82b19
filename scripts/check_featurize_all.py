"""Featurise and find torsions for every Platinum ligand and every GEOM-DRUGS test SMILES.

Sources (under ../shared/data, see its README.md): the 1906 ligands of
``platinum/platinum_diverse_dev.sdf.gz`` (hydrogens added with coordinates where missing) and the
1000 ``corrected_smiles`` of ``geom_test_sets/drugs_test_smiles.csv`` (hydrogens added). Prints
failures with their reasons, torsion statistics and wall time; exits 1 when anything failed.

Usage: python scripts/check_featurize_all.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

from confdiff.chem.featurize import featurize

ROOT = Path(__file__).resolve().parent.parent


def platinum(path: Path) -> Iterator[tuple[str, Chem.Mol | None]]:
    with gzip.open(path, "rb") as handle, rdBase.BlockLogs():
        for i, mol in enumerate(Chem.ForwardSDMolSupplier(handle, removeHs=False)):
            name = f"platinum #{i} {mol.GetProp('_Name') if mol is not None else ''}".strip()
            if mol is not None and any(a.GetNumImplicitHs() for a in mol.GetAtoms()):
                mol = Chem.AddHs(mol, addCoords=True)
            yield name, mol


def geom_drugs(path: Path) -> Iterator[tuple[str, Chem.Mol | None]]:
    with open(path, newline="") as handle, rdBase.BlockLogs():
        for i, row in enumerate(csv.DictReader(handle)):
            mol = Chem.MolFromSmiles(row["corrected_smiles"])
            yield f"drugs #{i} {row['corrected_smiles']}", None if mol is None else Chem.AddHs(mol)


def check(source: Iterator[tuple[str, Chem.Mol | None]]) -> tuple[list[int], list[int], list[str], float]:
    """(torsions per molecule, atoms per molecule, failures, seconds spent in featurize)."""
    torsions, atoms, failures = [], [], []
    spent = 0.0
    for name, mol in source:
        if mol is None:
            failures.append(f"{name}: RDKit could not read it")
            continue
        start = time.perf_counter()
        try:
            graph = featurize(mol)
        except ValueError as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            spent += time.perf_counter() - start
        torsions.append(graph.num_torsions)
        atoms.append(graph.num_nodes)
    return torsions, atoms, failures, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    sets = {
        "platinum": platinum(args.data / "platinum" / "platinum_diverse_dev.sdf.gz"),
        "geom-drugs test": geom_drugs(args.data / "geom_test_sets" / "drugs_test_smiles.csv"),
    }
    failed = 0
    for label, source in sets.items():
        wall = time.perf_counter()
        torsions, atoms, failures, spent = check(source)
        wall = time.perf_counter() - wall
        t = np.array(torsions)
        print(f"{label}: {len(torsions)} featurised, {len(failures)} failed; atoms {np.mean(atoms):.1f} mean, "
              f"{max(atoms)} max; torsions {t.mean():.2f} mean, {np.median(t):.0f} median, {t.max()} max, "
              f"{np.mean(t == 0):.1%} with none; featurize {1e3 * spent / max(1, len(torsions)):.2f} ms/molecule, "
              f"wall {wall:.1f} s including reading")
        for line in failures:
            print(f"  FAILED {line}")
        failed += len(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
