"""Tests for ``confdiff.conformers.evaluation``: the benchmark's methods, validity counts and CPU time."""

import shutil
import subprocess
import sys

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.conformers import evaluation


def _has_posebusters() -> bool:
    import importlib.util

    return importlib.util.find_spec("posebusters") is not None


def test_validity_counts_every_conformer_and_a_posebusters_sample():
    mol = evaluation.generate_etkdg(Chem.AddHs(Chem.MolFromSmiles("CCCCO")), 4, 1)
    conf = mol.GetConformer(mol.GetConformers()[0].GetId())
    conf.SetAtomPosition(0, (conf.GetAtomPosition(0) + conf.GetAtomPosition(0) - conf.GetAtomPosition(1)))  # C0-C1 x2
    assert evaluation.validity_counts([mol], 0) == (3, 4, 0, 0)
    if _has_posebusters():  # posebusters judges conformers 0 and 3 (evenly spread): the first fails
        assert mol.GetConformers()[3].GetId() != 0  # posebusters' energy check reads conformer 0 only
        assert evaluation.validity_counts([mol], 2) == (3, 4, 1, 2)


@pytest.mark.skipif(shutil.which("xtb") is None, reason="needs the xtb executable")
def test_etkdg_gfn2_optimises_every_conformer():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCO"))
    before = evaluation.generate_etkdg(Chem.Mol(mol), 2, 3)
    after = evaluation.generate_etkdg_gfn2(Chem.Mol(mol), 2, 3)
    assert after.GetNumConformers() == 2
    moved = [abs(a.GetPositions() - b.GetPositions()).max() for a, b in zip(before.GetConformers(), after.GetConformers())]
    assert min(moved) > 1e-3  # optimised, not the ETKDG geometry


def test_cpu_time_counts_child_processes():
    """xtb runs as a child process: its CPU time belongs to the method that called it."""
    start = evaluation.cpu_seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert evaluation.cpu_seconds() - start >= 0.25


def test_teacher_method_keeps_distinct_low_energy_conformers():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCOC(=O)CCCCN(C)CCO"))
    out = evaluation.generate_method("teacher", mol, 6, 3)
    k = out.GetNumConformers()
    assert 1 <= k <= 6
    heavy = Chem.RemoveHs(out)
    ids = [c.GetId() for c in out.GetConformers()]
    for i in range(k):
        for j in range(i):
            assert AllChem.GetBestRMS(Chem.Mol(heavy), Chem.Mol(heavy), ids[i], ids[j]) > 0.25 - 1e-6
