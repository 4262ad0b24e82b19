"""RDKit molecule -> ``MolGraph``: one-hot atom / bond features, bonds, rotatable torsions.

Every feature is a one-hot (or a flag) over a named vocabulary defined below; the last entry of each
vocabulary, ``OTHER``, is the bucket for any value not listed. The widths ``ATOM_FEATURE_DIM`` and
``BOND_FEATURE_DIM`` are derived from the vocabularies, never written by hand.
"""

from __future__ import annotations

from typing import Any

import torch
from rdkit import Chem
from torch_geometric.data import Data

from .torsions import moving_atoms, rotatable_bonds

__all__ = [
    "ATOM_FEATURE_DIM",
    "ATOM_VOCABULARIES",
    "BOND_FEATURE_DIM",
    "BOND_VOCABULARIES",
    "FeaturizationError",
    "MolGraph",
    "OTHER",
    "RING_SIZES",
    "featurize",
]

OTHER = "other"
_HT = Chem.rdchem.HybridizationType
_CT = Chem.rdchem.ChiralType
_BT = Chem.rdchem.BondType
_BS = Chem.rdchem.BondStereo

ELEMENTS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I", "Se", OTHER)
DEGREES = (0, 1, 2, 3, 4, 5, 6, OTHER)
FORMAL_CHARGES = (-2, -1, 0, 1, 2, OTHER)
HYBRIDIZATIONS = (_HT.S, _HT.SP, _HT.SP2, _HT.SP3, _HT.SP3D, _HT.SP3D2, OTHER)
CHIRAL_TAGS = (_CT.CHI_UNSPECIFIED, _CT.CHI_TETRAHEDRAL_CW, _CT.CHI_TETRAHEDRAL_CCW, OTHER)
TOTAL_HS = (0, 1, 2, 3, 4, OTHER)
FLAG = (False, True)
RING_SIZES = (3, 4, 5, 6, 7, 8)  # multi-hot: atom lies in an (SSSR) ring of this size

BOND_TYPES = (_BT.SINGLE, _BT.DOUBLE, _BT.TRIPLE, _BT.AROMATIC, OTHER)
BOND_STEREO = (_BS.STEREONONE, _BS.STEREOANY, _BS.STEREOZ, _BS.STEREOE, _BS.STEREOCIS, _BS.STEREOTRANS, OTHER)

# name -> vocabulary, in column order; ring sizes (multi-hot) follow the atom vocabularies.
ATOM_VOCABULARIES: dict[str, tuple] = {
    "element": ELEMENTS,
    "degree": DEGREES,
    "formal_charge": FORMAL_CHARGES,
    "hybridization": HYBRIDIZATIONS,
    "aromatic": FLAG,
    "in_ring": FLAG,
    "chirality": CHIRAL_TAGS,
    "total_hs": TOTAL_HS,
}
BOND_VOCABULARIES: dict[str, tuple] = {
    "bond_type": BOND_TYPES,
    "conjugated": FLAG,
    "in_ring": FLAG,
    "stereo": BOND_STEREO,
}

ATOM_FEATURE_DIM = sum(len(v) for v in ATOM_VOCABULARIES.values()) + len(RING_SIZES)
BOND_FEATURE_DIM = sum(len(v) for v in BOND_VOCABULARIES.values())


def _offsets(vocabularies: dict[str, tuple]) -> dict[str, int]:
    out, start = {}, 0
    for name, vocab in vocabularies.items():
        out[name] = start
        start += len(vocab)
    return out


_ATOM_OFFSETS = _offsets(ATOM_VOCABULARIES)
_BOND_OFFSETS = _offsets(BOND_VOCABULARIES)
_RING_OFFSET = ATOM_FEATURE_DIM - len(RING_SIZES)
# value -> column, per vocabulary; a value not in the dict goes to the vocabulary's OTHER column
_ATOM_LOOKUP = {n: {v: _ATOM_OFFSETS[n] + i for i, v in enumerate(vs)} for n, vs in ATOM_VOCABULARIES.items()}
_BOND_LOOKUP = {n: {v: _BOND_OFFSETS[n] + i for i, v in enumerate(vs)} for n, vs in BOND_VOCABULARIES.items()}


def _column(lookup: dict[str, dict[Any, int]], name: str, value: Any) -> int:
    table = lookup[name]
    return table.get(value, table[OTHER]) if OTHER in table else table[value]


class FeaturizationError(ValueError):
    """A molecule that cannot be turned into a ``MolGraph``; the message says why."""


class MolGraph(Data):
    """A molecule as a PyG graph (hydrogens explicit, atom order of the RDKit molecule).

    x : (N, ATOM_FEATURE_DIM) float; edge_index : (2, 2B) long, bonds in both directions;
    edge_attr : (2B, BOND_FEATURE_DIM) float; torsion_index : (2, T) long, rotatable bonds (u, v),
    the ``v`` side moves; dihedral_index : (4, T) long, atoms (a, u, v, b) of each torsion angle;
    rotate_index : (2, R) long, pairs (torsion id, atom id) of atoms moved by that torsion;
    num_torsions : int. ``pos`` (N, 3) is set per conformer.
    """

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == "rotate_index":
            # torsion ids shift by this graph's torsion count, atom ids by its atom count
            return torch.tensor([[self.num_torsions], [self.num_nodes]])
        return super().__inc__(key, value, *args, **kwargs)


def _atom_columns(mol: Chem.Mol) -> tuple[list[int], list[int]]:
    rows: list[int] = []
    cols: list[int] = []
    for atom in mol.GetAtoms():
        i = atom.GetIdx()
        symbol = atom.GetSymbol()
        values = {
            "element": symbol,
            "degree": atom.GetDegree(),
            "formal_charge": atom.GetFormalCharge(),
            "hybridization": atom.GetHybridization(),
            "aromatic": atom.GetIsAromatic(),
            "in_ring": atom.IsInRing(),
            "chirality": atom.GetChiralTag(),
            "total_hs": atom.GetTotalNumHs(includeNeighbors=True),
        }
        for name, value in values.items():
            rows.append(i)
            cols.append(_column(_ATOM_LOOKUP, name, value))
    for ring in mol.GetRingInfo().AtomRings():
        if len(ring) in RING_SIZES:
            col = _RING_OFFSET + RING_SIZES.index(len(ring))
            rows.extend(ring)
            cols.extend([col] * len(ring))
    return rows, cols


def _bond_columns(mol: Chem.Mol) -> tuple[list[int], list[int]]:
    rows: list[int] = []
    cols: list[int] = []
    for bond in mol.GetBonds():
        values = {
            "bond_type": bond.GetBondType(),
            "conjugated": bond.GetIsConjugated(),
            "in_ring": bond.IsInRing(),
            "stereo": bond.GetStereo(),
        }
        for name, value in values.items():
            col = _column(_BOND_LOOKUP, name, value)
            rows.extend((2 * bond.GetIdx(), 2 * bond.GetIdx() + 1))  # both directions
            cols.extend((col, col))
    return rows, cols


def _check(mol: Chem.Mol) -> None:
    if mol is None:
        raise FeaturizationError("molecule is None (it could not be read)")
    if mol.GetNumAtoms() == 0:
        raise FeaturizationError("molecule has no atoms")
    implicit = [a.GetIdx() for a in mol.GetAtoms() if a.GetNumImplicitHs() > 0]
    if implicit:
        raise FeaturizationError(
            f"hydrogens must be explicit, but atoms {implicit[:10]} carry implicit hydrogens "
            "(use Chem.AddHs(mol, addCoords=True))"
        )


def featurize(mol: Chem.Mol) -> MolGraph:
    """Featurise a sanitised RDKit molecule with explicit hydrogens (docs/architecture.md, section 2).

    Raises ``FeaturizationError`` for a molecule without atoms or with implicit hydrogens.
    """
    _check(mol)
    n = mol.GetNumAtoms()
    x = torch.zeros(n, ATOM_FEATURE_DIM)
    rows, cols = _atom_columns(mol)
    x[rows, cols] = 1.0

    num_bonds = mol.GetNumBonds()
    ends = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    edge_index = torch.tensor([[e for i, j in ends for e in (i, j)], [e for i, j in ends for e in (j, i)]],
                              dtype=torch.long).reshape(2, 2 * num_bonds)
    edge_attr = torch.zeros(2 * num_bonds, BOND_FEATURE_DIM)
    rows, cols = _bond_columns(mol)
    edge_attr[rows, cols] = 1.0

    torsions = rotatable_bonds(mol)
    dihedral_index = torch.tensor(torsions, dtype=torch.long).reshape(-1, 4).T.contiguous()  # (4, T)
    pairs = [(t, atom) for t, atoms in enumerate(moving_atoms(mol, torsions)) for atom in atoms]
    rotate_index = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()  # (2, R)
    return MolGraph(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        torsion_index=dihedral_index[1:3].clone(),
        dihedral_index=dihedral_index,
        rotate_index=rotate_index,
        num_torsions=len(torsions),
        num_nodes=n,
    )
