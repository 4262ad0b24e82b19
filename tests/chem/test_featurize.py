"""Tests for confdiff.chem.featurize: widths, one-hot contents against RDKit, batching, typed errors."""

import pytest
import torch
from rdkit import Chem
from torch_geometric.data import Batch

from confdiff.chem.featurize import (
    ATOM_FEATURE_DIM,
    ATOM_VOCABULARIES,
    BOND_FEATURE_DIM,
    BOND_VOCABULARIES,
    OTHER,
    RING_SIZES,
    FeaturizationError,
    MolGraph,
    featurize,
)


def _mol(smiles):
    return Chem.AddHs(Chem.MolFromSmiles(smiles))


def _column(vocabularies, name, value):
    offset = 0
    for key, vocab in vocabularies.items():
        if key == name:
            return offset + (vocab.index(value) if value in vocab else vocab.index(OTHER))
        offset += len(vocab)
    raise KeyError(name)


def test_widths_derive_from_vocabularies():
    assert ATOM_FEATURE_DIM == sum(map(len, ATOM_VOCABULARIES.values())) + len(RING_SIZES)
    assert BOND_FEATURE_DIM == sum(map(len, BOND_VOCABULARIES.values()))
    assert ATOM_VOCABULARIES["element"][-1] == OTHER


def test_atom_features_match_rdkit():
    mol = _mol("O=C([O-])c1ccc2c(c1)CC2[NH3+]")  # carboxylate, aromatic 6-ring fused to a 4-ring, cation
    g = featurize(mol)
    assert g.x.shape == (mol.GetNumAtoms(), ATOM_FEATURE_DIM)
    ring_info = mol.GetRingInfo()
    for atom in mol.GetAtoms():
        row = g.x[atom.GetIdx()]
        expected = {
            _column(ATOM_VOCABULARIES, "element", atom.GetSymbol()),
            _column(ATOM_VOCABULARIES, "degree", atom.GetDegree()),
            _column(ATOM_VOCABULARIES, "formal_charge", atom.GetFormalCharge()),
            _column(ATOM_VOCABULARIES, "hybridization", atom.GetHybridization()),
            _column(ATOM_VOCABULARIES, "aromatic", atom.GetIsAromatic()),
            _column(ATOM_VOCABULARIES, "in_ring", atom.IsInRing()),
            _column(ATOM_VOCABULARIES, "chirality", atom.GetChiralTag()),
            _column(ATOM_VOCABULARIES, "total_hs", atom.GetTotalNumHs(includeNeighbors=True)),
        }
        ring_base = ATOM_FEATURE_DIM - len(RING_SIZES)
        expected |= {ring_base + k for k, size in enumerate(RING_SIZES)
                     if ring_info.IsAtomInRingOfSize(atom.GetIdx(), size)}
        assert set(torch.nonzero(row).flatten().tolist()) == expected
    # spot checks by hand: the carboxylate O- and the 4-ring CH2
    o_minus = next(a for a in mol.GetAtoms() if a.GetFormalCharge() == -1)
    assert g.x[o_minus.GetIdx(), _column(ATOM_VOCABULARIES, "formal_charge", -1)] == 1
    ch2 = next(a for a in mol.GetAtoms()
               if ring_info.IsAtomInRingOfSize(a.GetIdx(), 4) and a.GetTotalNumHs(includeNeighbors=True) == 2)
    assert g.x[ch2.GetIdx(), ATOM_FEATURE_DIM - len(RING_SIZES) + RING_SIZES.index(4)] == 1


def test_unknown_element_goes_to_other_bucket():
    g = featurize(_mol("C[Sn](C)(C)C"))
    assert g.x[1, _column(ATOM_VOCABULARIES, "element", OTHER)] == 1
    assert g.x[:, _column(ATOM_VOCABULARIES, "element", OTHER)].sum() == 1


def test_bonds_both_directions_with_features():
    mol = _mol("C/C=C/C(=O)N")
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    g = featurize(mol)
    assert g.edge_index.shape == (2, 2 * mol.GetNumBonds())
    assert g.edge_attr.shape == (2 * mol.GetNumBonds(), BOND_FEATURE_DIM)
    for bond in mol.GetBonds():
        k = bond.GetIdx()
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        assert g.edge_index[:, 2 * k].tolist() == [i, j] and g.edge_index[:, 2 * k + 1].tolist() == [j, i]
        assert torch.equal(g.edge_attr[2 * k], g.edge_attr[2 * k + 1])
        expected = {
            _column(BOND_VOCABULARIES, "bond_type", bond.GetBondType()),
            _column(BOND_VOCABULARIES, "conjugated", bond.GetIsConjugated()),
            _column(BOND_VOCABULARIES, "in_ring", bond.IsInRing()),
            _column(BOND_VOCABULARIES, "stereo", bond.GetStereo()),
        }
        assert set(torch.nonzero(g.edge_attr[2 * k]).flatten().tolist()) == expected
    double = next(b for b in mol.GetBonds()
                  if b.GetBondType() == Chem.BondType.DOUBLE and b.GetStereo() != Chem.BondStereo.STEREONONE)
    assert g.edge_attr[2 * double.GetIdx(), _column(BOND_VOCABULARIES, "stereo", Chem.BondStereo.STEREOE)] == 1


@pytest.mark.parametrize(
    "smiles, expected",
    [
        ("CCCC", 1),  # only the central bond: methyls are terminal
        ("CCO", 0),  # hydroxyl and methyl are terminal
        ("CC=CC", 0),  # double bonds are not torsions
        ("CCC#N", 0),  # the bond to the sp carbon has no defined dihedral
        ("c1ccccc1-c1ccccc1", 1),  # biaryl bond; ring bonds are never rotatable
        ("CC(=O)NC", 1),  # the amide C-N
        ("OCC(O)CO", 2),
        ("C1CCCCC1", 0),
    ],
)
def test_torsion_counts(smiles, expected):
    g = featurize(_mol(smiles))
    assert g.num_torsions == expected
    assert g.torsion_index.shape == (2, expected) and g.dihedral_index.shape == (4, expected)


def test_torsion_sides_and_reference_atoms():
    mol = _mol("CC(C)Cc1ccc(cc1)C(C)C(=O)O")  # ibuprofen
    g = featurize(mol)
    n = mol.GetNumAtoms()
    assert torch.equal(g.torsion_index, g.dihedral_index[1:3])
    for t in range(g.num_torsions):
        a, u, v, b = g.dihedral_index[:, t].tolist()
        assert mol.GetBondBetweenAtoms(a, u) and mol.GetBondBetweenAtoms(u, v) and mol.GetBondBetweenAtoms(v, b)
        assert mol.GetAtomWithIdx(a).GetAtomicNum() > 1 and mol.GetAtomWithIdx(b).GetAtomicNum() > 1
        moved = g.rotate_index[1, g.rotate_index[0] == t].tolist()
        assert b in moved and u not in moved and v not in moved and a not in moved
        assert len(moved) + 1 <= n - len(moved) - 1  # the v side is the smaller one
        # the moved atoms are exactly the v component once the bond u-v is cut
        rw = Chem.RWMol(mol)
        rw.RemoveBond(u, v)
        frags = Chem.GetMolFrags(rw, asMols=False)
        v_frag = next(f for f in frags if v in f)
        assert sorted(moved) == sorted(set(v_frag) - {v})


def test_batching_increments_indices():
    g1, g2 = featurize(_mol("CCCCO")), featurize(_mol("CC(C)Cc1ccccc1CCN"))
    batch = Batch.from_data_list([g1, g2])
    n1, t1 = g1.num_nodes, g1.num_torsions
    assert batch.num_torsions.tolist() == [t1, g2.num_torsions]
    assert torch.equal(batch.edge_index[:, g1.edge_index.shape[1]:], g2.edge_index + n1)
    assert torch.equal(batch.torsion_index[:, t1:], g2.torsion_index + n1)
    assert torch.equal(batch.dihedral_index[:, t1:], g2.dihedral_index + n1)
    r1 = g1.rotate_index.shape[1]
    assert torch.equal(batch.rotate_index[:, r1:], g2.rotate_index + torch.tensor([[t1], [n1]]))
    assert isinstance(batch[1], MolGraph) and torch.equal(batch[1].rotate_index, g2.rotate_index)


def test_no_torsions_batches():
    batch = Batch.from_data_list([featurize(_mol("C")), featurize(_mol("CCCC"))])
    assert batch.rotate_index.shape[0] == 2 and batch.num_torsions.tolist() == [0, 1]


def test_typed_errors():
    with pytest.raises(FeaturizationError, match="implicit hydrogens"):
        featurize(Chem.MolFromSmiles("CCO"))
    with pytest.raises(FeaturizationError, match="no atoms"):
        featurize(Chem.Mol())
    with pytest.raises(FeaturizationError, match="None"):
        featurize(None)
    assert issubclass(FeaturizationError, ValueError)
