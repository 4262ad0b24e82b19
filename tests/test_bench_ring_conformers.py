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


def test_embedders_give_minimised_conformers_and_the_small_ring_terms_change_them():
    template = Chem.AddHs(Chem.MolFromSmiles("CC(=O)NC1CCCCC1"))
    plain = bench.embed_and_minimise("etkdgv3", template, 3, seed=2)
    small_rings = bench.embed_and_minimise("etkdgv3-small-rings", template, 3, seed=2)
    assert plain.GetNumConformers() == small_rings.GetNumConformers() == 3 and template.GetNumConformers() == 0
    props = AllChem.MMFFGetMoleculeProperties(plain)
    for conf in plain.GetConformers():  # at a minimum: the gradient is small
        gradient = np.array(AllChem.MMFFGetMoleculeForceField(plain, props, confId=conf.GetId()).CalcGrad())
        assert np.abs(gradient).max() < 0.1
    assert np.abs(plain.GetConformer(0).GetPositions() - small_rings.GetConformer(0).GetPositions()).max() > 1e-2
