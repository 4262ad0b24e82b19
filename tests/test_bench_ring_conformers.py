"""scripts/bench_ring_conformers.py: ring torsions and their matching."""

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from tests.scripts import load_script

bench = load_script("bench_ring_conformers")


def test_ring_torsions_skip_aromatic_and_small_rings():
    mol = Chem.AddHs(Chem.MolFromSmiles("C1CC1c1ccccc1C1CCCCC1"))  # cyclopropyl, phenyl, cyclohexyl
    quads = bench.ring_torsions(mol)
    assert len(quads) == 6
    ring = {i for q in quads for i in q}
    assert len(ring) == 6 and all(not mol.GetAtomWithIdx(i).GetIsAromatic() for i in ring)
    assert bench.ring_torsions(Chem.MolFromSmiles("c1ccccc1C1CC1")) == []


def test_chair_torsions_alternate_and_match_themselves():
    mol = Chem.AddHs(Chem.MolFromSmiles("C1CCCCC1"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    AllChem.MMFFOptimizeMolecule(mol)
    angles = bench.torsion_angles([mol], bench.ring_torsions(mol))
    assert angles.shape == (1, 6)
    np.testing.assert_allclose(np.abs(angles), 55.0, atol=5.0)  # a chair
    assert np.all(np.sign(angles[0]) == -np.sign(np.roll(angles[0], 1)))
    refs_ok, gen_ok = bench.ring_matches(angles, -angles, 30.0)  # the flipped chair is another conformation
    assert not refs_ok.any() and not gen_ok.any()


def test_ring_matches_need_every_torsion_within_the_tolerance_periodically():
    reference = np.array([[179.0, 60.0], [0.0, 0.0]])
    generated = np.array([[-179.0, 85.0], [-179.0, 95.0], [100.0, 100.0]])
    refs_ok, gen_ok = bench.ring_matches(reference, generated, 30.0)
    assert refs_ok.tolist() == [True, False]  # 179 and -179 are 2 degrees apart
    assert gen_ok.tolist() == [True, False, False]
