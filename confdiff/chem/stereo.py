"""Stereochemistry: the stereo elements of a molecule tested on many conformers at once, one
embeddable stereoisomer for unspecified elements, and canonical SMILES perceived from 3D."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDistGeom
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

from .io import mol_name

__all__ = ["StereoCheck", "StereoError", "fix_stereo", "stereo_smiles"]

_VOLUME_TOL = 0.1  # A^3 (A^2 for double bonds): smaller counts as flat, i.e. broken (RDKit's ZERO_VOLUME_TOL)


class StereoError(RuntimeError):
    """A molecule for which no stereoisomer with the required configuration could be made."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _bond_sides(mol: Chem.Mol, bond: Chem.Bond) -> tuple[int, int, bool] | None:
    """``(a, d, trans)`` for a bond with specified stereo: reference neighbours and whether they are trans.

    STEREOCIS / STEREOTRANS refer to the bond's stereo atoms; STEREOE / STEREOZ (CIP labels) to the
    highest-ranked neighbour on each side (legacy ``_CIPRank``).
    """
    stereo = bond.GetStereo()
    if stereo in (Chem.BondStereo.STEREOCIS, Chem.BondStereo.STEREOTRANS):
        a, d = bond.GetStereoAtoms()
        return a, d, stereo == Chem.BondStereo.STEREOTRANS
    if stereo in (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOZ):
        ends = (bond.GetBeginAtom(), bond.GetEndAtom())
        ref = []
        for atom, other in (ends, ends[::-1]):
            ranked = [(int(n.GetProp("_CIPRank")), n.GetIdx()) for n in atom.GetNeighbors()
                      if n.GetIdx() != other.GetIdx()]
            ref.append(max(ranked)[1])
        return ref[0], ref[1], stereo == Chem.BondStereo.STEREOE
    return None


@dataclass(frozen=True)
class StereoCheck:
    """The stereo elements of a molecule as signs of 3D quantities, tested on many conformers at once.

    Tetrahedral centre ``c`` (row ``(c, n1, n2, n3)``): RDKit's chiral volume
    ``v1 . (v2 x v3)``, ``v_k = p[n_k] - p[c]`` over the first three neighbours in bond order,
    positive for ``CHI_TETRAHEDRAL_CCW``. Double bond ``a - b = c - d`` (row ``(a, b, c, d)``): the
    dot product of ``a``'s and ``d``'s offsets perpendicular to the bond, positive when cis.
    Elements come from ``Chem.FindPotentialStereo``; ``expected`` is +1 / -1 where the molecule
    specifies the configuration and 0 where it leaves it open.
    """

    centres: np.ndarray  # (C, 4) int
    bonds: np.ndarray  # (D, 4) int
    expected: np.ndarray  # (C + D,) int8

    @classmethod
    def from_mol(cls, mol: Chem.Mol) -> StereoCheck:
        """The check for ``mol`` (hydrogens explicit, stereo as read from the input)."""
        ranked = Chem.Mol(mol)
        Chem.AssignStereochemistry(ranked, cleanIt=True, force=True)  # sets _CIPRank for E/Z
        centres, bonds, expected_c, expected_d = [], [], [], []
        for element in Chem.FindPotentialStereo(Chem.Mol(mol)):
            specified = element.specified == Chem.StereoSpecified.Specified
            if element.type == Chem.StereoType.Atom_Tetrahedral:
                atom = mol.GetAtomWithIdx(element.centeredOn)
                neighbours = [n.GetIdx() for n in atom.GetNeighbors()][:3]
                tag = atom.GetChiralTag()
                centres.append([atom.GetIdx(), *neighbours])
                expected_c.append(0 if not specified else 1 if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW else -1)
            elif element.type == Chem.StereoType.Bond_Double:
                bond = ranked.GetBondWithIdx(element.centeredOn)
                b, c = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
                sides = _bond_sides(ranked, bond) if specified else None
                if sides is None:
                    a = next(n.GetIdx() for n in bond.GetBeginAtom().GetNeighbors() if n.GetIdx() != c)
                    d = next(n.GetIdx() for n in bond.GetEndAtom().GetNeighbors() if n.GetIdx() != b)
                    expected_d.append(0)
                else:
                    a, d, trans = sides
                    expected_d.append(-1 if trans else 1)
                bonds.append([a, b, c, d])
        return cls(np.array(centres, dtype=np.int64).reshape(-1, 4), np.array(bonds, dtype=np.int64).reshape(-1, 4),
                   np.array(expected_c + expected_d, dtype=np.int8))

    @property
    def num_specified(self) -> int:
        return int(np.count_nonzero(self.expected))

    @property
    def num_open(self) -> int:
        return int(self.expected.size - self.num_specified)

    def signs(self, pos: np.ndarray) -> np.ndarray:
        """Signs (+1, -1, 0 when flat) of every element in conformers ``pos (K, N, 3)``: shape (K, C + D)."""
        c = self.centres
        v = pos[:, c[:, 1:]] - pos[:, c[:, :1]]  # (K, C, 3, 3)
        volume = np.einsum("kci,kci->kc", v[:, :, 0], np.cross(v[:, :, 1], v[:, :, 2]))
        a, b, cc, d = (pos[:, self.bonds[:, k]] for k in range(4))  # (K, D, 3) each
        axis = cc - b
        length = np.linalg.norm(axis, axis=-1, keepdims=True)
        axis = axis / np.maximum(length, 1e-12)
        side_a, side_d = a - b, d - cc
        side_a = side_a - (side_a * axis).sum(-1, keepdims=True) * axis
        side_d = side_d - (side_d * axis).sum(-1, keepdims=True) * axis
        sides = (side_a * side_d).sum(-1) * (length[..., 0] > 1e-6)  # coincident double-bond atoms: flat
        values = np.concatenate([volume, sides], axis=1)
        return (np.sign(values) * (np.abs(values) > _VOLUME_TOL)).astype(np.int8)

    def matches_input(self, pos: np.ndarray) -> np.ndarray:
        """Which conformers ``pos (K, N, 3)`` have every specified configuration of the input: (K,) bool."""
        specified = self.expected != 0
        return (self.signs(pos)[:, specified] == self.expected[specified]).all(axis=1)


def _embeds(mol: Chem.Mol, seed: int) -> bool:
    """Whether ETKDGv3 places one conformer within 20 attempts: geometrically impossible
    stereoisomers (an inverted bridgehead) fail this quickly and deterministically."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.maxIterations = 20
    params.timeout = 10
    return len(rdDistGeom.EmbedMultipleConfs(Chem.AddHs(mol), 1, params)) == 1


def fix_stereo(mol: Chem.Mol, seed: int) -> Chem.Mol:
    """Pick one embeddable stereoisomer (seeded order) for unspecified centres and double bonds,
    so that every conformer of the ensemble has the stereochemistry of the graph it trains."""
    options = StereoEnumerationOptions(onlyUnassigned=True, unique=True, maxIsomers=64)
    isomers = list(EnumerateStereoisomers(mol, options=options))
    if len(isomers) <= 1:
        return Chem.Mol(isomers[0]) if isomers else mol
    random.Random(seed).shuffle(isomers)
    for isomer in isomers:
        if _embeds(isomer, seed):
            return Chem.Mol(isomer)
    raise StereoError(mol_name(mol), f"none of its {len(isomers)} stereoisomers embeds")


def stereo_smiles(mol: Chem.Mol, conf_id: int | None = None) -> str:
    """Canonical isomeric SMILES; with ``conf_id``, the stereochemistry perceived from that conformer."""
    work = Chem.Mol(mol) if conf_id is None else Chem.Mol(mol, confId=conf_id)
    if conf_id is not None:
        Chem.AssignStereochemistryFrom3D(work)
    return Chem.MolToSmiles(Chem.RemoveHs(work))
