"""Tests for confdiff.chem.torsions against RDKit's SetDihedralRad / GetDihedralRad."""

import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem import rdMolTransforms as mt
from torch_geometric.data import Batch

from confdiff.chem.featurize import featurize
from confdiff.chem.torsions import apply_torsion_changes, dihedral_angles, flexible_rings, moving_atoms, rotatable_bonds

SMILES = [
    "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1",  # imatinib
    "CC(C)C[C@@H](C(=O)O)NC(=O)[C@H](Cc1ccccc1)NC(=O)OC(C)(C)C",  # Boc-Phe-Leu, two stereocentres
    "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)OCCN(CC)CC",  # an ibuprofen ester
]


def _embedded(smiles, num_confs=1, seed=7):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert len(AllChem.EmbedMultipleConfs(mol, num_confs, params)) == num_confs
    return mol


@pytest.fixture(scope="module")
def molecules():
    return [_embedded(s, num_confs=2) for s in SMILES]


def _pos(mol, conf_id=0, dtype=torch.float64):
    return torch.tensor(mol.GetConformer(conf_id).GetPositions(), dtype=dtype)


def _wrap(x):
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def test_rotatable_bonds_are_deterministic_and_torsions(molecules):
    for mol in molecules:
        torsions = rotatable_bonds(mol)
        assert torsions == rotatable_bonds(Chem.Mol(mol))
        assert len(torsions) >= 5
        moved = moving_atoms(mol, torsions)
        reverse = moving_atoms(mol, [t._replace(u=t.v, v=t.u) for t in torsions])
        for (a, u, v, b), side, other in zip(torsions, moved, reverse):
            bond = mol.GetBondBetweenAtoms(u, v)
            assert bond.GetBondType() == Chem.BondType.SINGLE and not bond.IsInRing()
            assert b in side and a in other and len(side) + len(other) + 2 == mol.GetNumAtoms()
            assert len(side) <= len(other)


def test_dihedral_angles_match_rdkit(molecules):
    for mol in molecules:
        g = featurize(mol)
        conf = mol.GetConformer()
        expected = [mt.GetDihedralRad(conf, *map(int, q)) for q in g.dihedral_index.T]
        measured = dihedral_angles(_pos(mol), g.dihedral_index)
        torch.testing.assert_close(measured, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_apply_matches_rdkit_set_dihedral(molecules, sign):
    gen = torch.Generator().manual_seed(0)
    for mol in molecules:
        g = featurize(mol)
        delta = sign * torch.rand(g.num_torsions, generator=gen, dtype=torch.float64) * math.pi
        new = apply_torsion_changes(_pos(mol), g, delta)
        ref = Chem.Mol(mol)
        conf = ref.GetConformer()
        # RDKit moves the side of the last atom, i.e. our v side; torsions in the same (rank) order
        for t, q in enumerate(g.dihedral_index.T.tolist()):
            mt.SetDihedralRad(conf, *q, mt.GetDihedralRad(conf, *q) + float(delta[t]))
        np.testing.assert_allclose(new.numpy(), conf.GetPositions(), atol=1e-5, rtol=0)


def test_changes_dihedrals_by_delta_and_keeps_geometry(molecules):
    gen = torch.Generator().manual_seed(1)
    for mol in molecules:
        g = featurize(mol)
        pos = _pos(mol)
        before = pos.clone()
        delta = (torch.rand(g.num_torsions, generator=gen, dtype=torch.float64) * 2 - 1) * 3.0
        new = apply_torsion_changes(pos, g, delta)
        assert torch.equal(pos, before)  # never in place
        change = dihedral_angles(new, g.dihedral_index) - dihedral_angles(pos, g.dihedral_index)
        torch.testing.assert_close(_wrap(change - delta), torch.zeros_like(delta), atol=1e-6, rtol=0)
        # bond lengths and bond angles unchanged
        i, j = g.edge_index
        torch.testing.assert_close((new[i] - new[j]).norm(dim=-1), (pos[i] - pos[j]).norm(dim=-1), atol=1e-5, rtol=0)
        conf = mol.GetConformer()
        moved = Chem.Mol(mol)
        moved.GetConformer().SetPositions(new.numpy())
        for atom in mol.GetAtoms():
            nbrs = [n.GetIdx() for n in atom.GetNeighbors()]
            for x in range(len(nbrs)):
                for y in range(x + 1, len(nbrs)):
                    q = (nbrs[x], atom.GetIdx(), nbrs[y])
                    assert abs(mt.GetAngleRad(moved.GetConformer(), *q) - mt.GetAngleRad(conf, *q)) < 1e-5


def _signed_volumes(mol, pos):
    out = []
    for atom in mol.GetAtoms():
        if atom.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED:
            c = pos[atom.GetIdx()]
            n = [pos[x.GetIdx()] - c for x in atom.GetNeighbors()][:3]
            out.append(float(torch.dot(n[0], torch.linalg.cross(n[1], n[2]))))
    return np.array(out)


def test_chirality_unchanged(molecules):
    mol = molecules[1]
    g = featurize(mol)
    pos = _pos(mol)
    new = apply_torsion_changes(pos, g, torch.full((g.num_torsions,), 2.0, dtype=torch.float64))
    before, after = _signed_volumes(mol, pos), _signed_volumes(mol, new)
    assert len(before) == 2
    np.testing.assert_allclose(after, before, atol=1e-5)
    moved = Chem.Mol(mol)
    moved.GetConformer().SetPositions(new.numpy())
    Chem.AssignStereochemistryFrom3D(moved)
    assert Chem.MolToSmiles(Chem.RemoveHs(moved)) == Chem.MolToSmiles(Chem.RemoveHs(mol))
    assert Chem.FindMolChiralCenters(moved) == Chem.FindMolChiralCenters(mol)


def test_batched_equals_per_molecule(molecules):
    gen = torch.Generator().manual_seed(2)
    graphs, singles, deltas = [], [], []
    for conf_id in range(2):  # several conformers of several molecules, interleaved
        for mol in molecules + [_embedded("CCO")]:  # and one without torsions
            g = featurize(mol)
            g.pos = _pos(mol, conf_id if mol.GetNumConformers() > 1 else 0)
            delta = torch.randn(g.num_torsions, generator=gen, dtype=torch.float64)
            graphs.append(g)
            deltas.append(delta)
            singles.append(apply_torsion_changes(g.pos, g, delta))
    batch = Batch.from_data_list(graphs)
    new = apply_torsion_changes(batch.pos, batch, torch.cat(deltas))
    torch.testing.assert_close(new, torch.cat(singles), atol=1e-12, rtol=0)
    # dihedral angles on the concatenated batch agree with the per-molecule ones
    torch.testing.assert_close(dihedral_angles(new, batch.dihedral_index),
                               torch.cat([dihedral_angles(s, g.dihedral_index) for s, g in zip(singles, graphs)]))


def test_float32_and_gradients(molecules):
    mol = molecules[2]
    g = featurize(mol)
    delta = torch.linspace(-1, 1, g.num_torsions, dtype=torch.float64)
    exact = apply_torsion_changes(_pos(mol), g, delta)
    single = apply_torsion_changes(_pos(mol, dtype=torch.float32), g, delta.float())
    torch.testing.assert_close(single.double(), exact, atol=1e-4, rtol=0)
    d = delta.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: apply_torsion_changes(_pos(mol), g, x), (d,))
    # the dihedrals' Jacobian with respect to delta is the identity
    jac = torch.autograd.functional.jacobian(
        lambda x: dihedral_angles(apply_torsion_changes(_pos(mol), g, x), g.dihedral_index), delta)
    torch.testing.assert_close(jac, torch.eye(g.num_torsions, dtype=torch.float64), atol=1e-8, rtol=0)


def test_bad_delta_shape(molecules):
    g = featurize(molecules[0])
    with pytest.raises(ValueError, match="delta has shape"):
        apply_torsion_changes(_pos(molecules[0]), g, torch.zeros(g.num_torsions + 1, dtype=torch.float64))


def test_no_torsions_leaves_positions():
    mol = _embedded("CCO")
    g = featurize(mol)
    assert g.num_torsions == 0
    pos = _pos(mol)
    assert torch.equal(apply_torsion_changes(pos, g, torch.zeros(0, dtype=torch.float64)), pos)


def test_flexible_rings_are_the_non_aromatic_rings_of_five_or_more_atoms():
    assert flexible_rings(Chem.MolFromSmiles("c1ccccc1CC1CC1")) == []  # aromatic; a cyclopropane has one pucker
    assert flexible_rings(Chem.MolFromSmiles("C1CC1N1CCC1")) == []
    tetralin = Chem.MolFromSmiles("c1ccc2c(c1)CCCC2")  # the saturated ring of a fused pair
    (ring,) = flexible_rings(tetralin)
    assert len(ring) == 6 and not all(tetralin.GetAtomWithIdx(i).GetIsAromatic() for i in ring)
    assert [len(r) for r in flexible_rings(Chem.MolFromSmiles("O=C1CCCO1.C1CCNCC1"))] == [5, 6]  # a lactone, a piperidine
