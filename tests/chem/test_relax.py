"""MMFF94 and xtb relaxation: energies fall, coordinates move consistently, clear errors."""

import shutil

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.chem.embed import embed_etkdg
from confdiff.chem.relax import RelaxationError, XtbNotFoundError, relax_mmff, relax_xtb

needs_xtb = pytest.mark.skipif(shutil.which("xtb") is None, reason="xtb binary not installed")


def _mmff_energy(mol, cid):
    props = AllChem.MMFFGetMoleculeProperties(mol)
    return AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid).CalcEnergy()


def test_mmff_lowers_energy_and_returns_final_energies():
    mol = embed_etkdg(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"), 4, seed=2).mol
    before = [_mmff_energy(mol, c.GetId()) for c in mol.GetConformers()]
    energies = relax_mmff(mol)
    assert len(energies) == 4
    for cid, (e0, e1) in enumerate(zip(before, energies)):
        assert e1 < e0
        assert e1 == pytest.approx(_mmff_energy(mol, cid), abs=1e-6)
    # a converged structure stays put: a second pass changes the energy by almost nothing
    again = relax_mmff(mol)
    np.testing.assert_allclose(again, energies, atol=1e-3)


def test_mmff_relaxes_only_the_given_conformers():
    mol = embed_etkdg(Chem.MolFromSmiles("CCOC(=O)CCN"), 3, seed=4).mol
    untouched = mol.GetConformer(0).GetPositions()
    energies = relax_mmff(mol, conf_ids=[2, 1])
    assert len(energies) == 2
    np.testing.assert_array_equal(mol.GetConformer(0).GetPositions(), untouched)
    assert energies[0] == pytest.approx(_mmff_energy(mol, 2), abs=1e-6)


def test_mmff_without_parameters_raises_typed_error():
    mol = embed_etkdg(Chem.MolFromSmiles("CB(C)C"), 1).mol
    mol.SetProp("_Name", "trimethylborane")
    with pytest.raises(RelaxationError, match="trimethylborane"):
        relax_mmff(mol)


def test_missing_xtb_binary_is_a_clear_error():
    mol = embed_etkdg(Chem.MolFromSmiles("CO"), 1).mol
    with pytest.raises(XtbNotFoundError, match="apt install xtb"):
        relax_xtb(mol, executable="xtb-not-installed-here")
    with pytest.raises(ValueError, match="method"):
        relax_xtb(mol, method="gfn0-typo")


@needs_xtb
@pytest.mark.parametrize("method", ["gfnff", "gfn2"])
def test_xtb_optimises_in_place_and_converges(method):
    mol = embed_etkdg(Chem.MolFromSmiles("OCC(=O)N"), 1, seed=9).mol
    start = mol.GetConformer(0).GetPositions()
    e1 = relax_xtb(mol, 0, method=method)
    relaxed = mol.GetConformer(0).GetPositions()
    assert np.sqrt(((relaxed - start) ** 2).sum(1).mean()) > 1e-3  # coordinates were read back
    assert e1 < 0  # a total energy in kcal/mol
    # stretch the C=O bond by 0.15 A: relaxing again restores it and recovers the same energy
    c, o = 2, 3
    stretched = relaxed.copy()
    stretched[o] += 0.15 * (relaxed[o] - relaxed[c]) / np.linalg.norm(relaxed[o] - relaxed[c])
    conf = mol.GetConformer(0)
    for i, p in enumerate(stretched):
        conf.SetAtomPosition(i, p.tolist())
    e2 = relax_xtb(mol, 0, method=method)
    final = mol.GetConformer(0).GetPositions()
    assert e2 == pytest.approx(e1, abs=0.05)
    assert np.linalg.norm(final[o] - final[c]) == pytest.approx(np.linalg.norm(relaxed[o] - relaxed[c]), abs=0.01)


def _fake_xtb(directory, body: str) -> str:
    """An executable ``xtb`` in ``directory`` that runs the shell ``body``; returns its path."""
    path = directory / "xtb"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_hung_xtb_is_killed_at_the_timeout_and_reported_by_every_caller(tmp_path):
    import time

    from confdiff.chem.properties import xtb_single_point
    from confdiff.chem.relax import XtbError, run_xtb

    fake = _fake_xtb(tmp_path, "sleep 60")
    mol = embed_etkdg(Chem.MolFromSmiles("CCO"), 1, seed=0).mol
    start = time.monotonic()
    with pytest.raises(XtbError, match="timeout"):
        run_xtb(mol, flags=["--sp"], executable=fake, timeout=0.5)
    with pytest.raises(RelaxationError, match="timeout"):
        relax_xtb(mol, executable=fake, timeout=0.5)
    with pytest.raises(XtbError, match="timeout"):
        xtb_single_point(mol, executable=fake, timeout=0.5)
    assert time.monotonic() - start < 20  # three runs of 0.5 s, not of 60 s


def test_a_failing_xtb_names_its_exit_status(tmp_path):
    fake = _fake_xtb(tmp_path, "echo 'normal termination of xtb? no' >&2; exit 3")
    mol = embed_etkdg(Chem.MolFromSmiles("CCO"), 1, seed=0).mol
    with pytest.raises(RelaxationError, match="exited with 3"):
        relax_xtb(mol, executable=fake)
