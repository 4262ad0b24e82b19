"""Rotatable bonds, the atoms each one moves, dihedral angles and batched torsion changes; the
flexible rings, whose torsions no rotatable bond describes.

A torsion is ``(a, u, v, b)``: the rotatable bond ``u - v``, whose ``v`` side (the smaller one)
moves, and the heavy reference atoms ``a`` (a neighbour of ``u``) and ``b`` (a neighbour of ``v``)
that define its dihedral angle, with the IUPAC sign convention of RDKit's ``GetDihedralRad``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from rdkit import Chem

__all__ = ["Torsion", "apply_torsion_changes", "dihedral_angles", "flexible_rings", "moving_atoms", "rotatable_bonds"]

FLEXIBLE_RING_MIN_SIZE = 5  # smaller rings have one pucker


class Torsion(NamedTuple):
    """The dihedral ``a - u - v - b`` of the rotatable bond ``u - v``; the ``v`` side moves."""

    a: int
    u: int
    v: int
    b: int


def _adjacency(mol: Chem.Mol) -> list[list[int]]:
    adjacency: list[list[int]] = [[] for _ in range(mol.GetNumAtoms())]
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        adjacency[i].append(j)
        adjacency[j].append(i)
    return adjacency


def _side(adjacency: list[list[int]], start: int, cut: int) -> list[int]:
    """Atoms reachable from ``start`` without crossing the bond ``start - cut`` (BFS), ``start`` first."""
    seen = {start, cut}
    order = [start]
    for atom in order:  # grows while iterating: a breadth-first search
        for j in adjacency[atom]:
            if j not in seen:
                seen.add(j)
                order.append(j)
    return order


def moving_atoms(mol: Chem.Mol, torsions: list[Torsion]) -> list[list[int]]:
    """For each torsion, the sorted atoms on its ``v`` side (without ``v``, which lies on the axis)."""
    adjacency = _adjacency(mol)
    return [sorted(_side(adjacency, t.v, t.u)[1:]) for t in torsions]


def _reference_atom(atom: Chem.Atom, exclude: int) -> int | None:
    """The heaviest heavy neighbour of ``atom`` other than ``exclude`` (lowest index on ties)."""
    heavy = [(-n.GetAtomicNum(), n.GetIdx()) for n in atom.GetNeighbors()
             if n.GetAtomicNum() > 1 and n.GetIdx() != exclude]
    return min(heavy)[1] if heavy else None


def rotatable_bonds(mol: Chem.Mol) -> list[Torsion]:
    """The rotatable bonds of ``mol`` as torsions ``(a, u, v, b)``, in bond order.

    A bond is rotatable when it is a single bond outside any ring, neither end is linear (sp, where
    the dihedral is undefined) and each end has another heavy neighbour (so methyl, hydroxyl and
    other terminal groups, whose rotation only moves hydrogens, are skipped). Double bonds are not
    torsions: turning them changes E/Z configuration, not conformation. ``v`` is the end whose side
    (found by BFS with the bond removed) has fewer atoms; on a tie, the end with the larger index.
    """
    torsions = []
    adjacency = _adjacency(mol)
    for bond in mol.GetBonds():
        if bond.GetBondType() != Chem.BondType.SINGLE or bond.IsInRing():
            continue
        i, j = bond.GetBeginAtom(), bond.GetEndAtom()
        if Chem.HybridizationType.SP in (i.GetHybridization(), j.GetHybridization()):
            continue
        ri, rj = _reference_atom(i, j.GetIdx()), _reference_atom(j, i.GetIdx())
        if ri is None or rj is None:
            continue
        side_i, side_j = _side(adjacency, i.GetIdx(), j.GetIdx()), _side(adjacency, j.GetIdx(), i.GetIdx())
        if (len(side_i), i.GetIdx()) < (len(side_j), j.GetIdx()):
            torsions.append(Torsion(rj, j.GetIdx(), i.GetIdx(), ri))
        else:
            torsions.append(Torsion(ri, i.GetIdx(), j.GetIdx(), rj))
    return torsions


def flexible_rings(mol: Chem.Mol) -> list[tuple[int, ...]]:
    """The atom rings of ``mol`` (RDKit's SSSR) of ``FLEXIBLE_RING_MIN_SIZE`` or more atoms that are not
    entirely aromatic: those with more than one pucker (chairs, boats, envelopes)."""
    return [ring for ring in mol.GetRingInfo().AtomRings() if len(ring) >= FLEXIBLE_RING_MIN_SIZE
            and not all(mol.GetAtomWithIdx(i).GetIsAromatic() for i in ring)]


def dihedral_angles(pos: torch.Tensor, dihedral_index: torch.Tensor) -> torch.Tensor:
    """Dihedral angles in (-pi, pi] of the atom quadruples ``dihedral_index`` (4, T) in ``pos`` (N, 3).

    ``phi = atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3))`` with ``b1 = p_u - p_a``,
    ``b2 = p_v - p_u``, ``b3 = p_b - p_v`` (Blondel & Karplus, J. Comput. Chem. 17, 1132, 1996);
    differentiable, and the same sign as RDKit's ``GetDihedralRad``. Returns shape (T,).
    """
    p_a, p_u, p_v, p_b = (pos[idx] for idx in dihedral_index)
    b1, b2, b3 = p_u - p_a, p_v - p_u, p_b - p_v
    n2 = torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    x = (torch.linalg.cross(b1, b2) * n2).sum(-1)
    return torch.atan2(y, x)


def _torsion_ranks(num_torsions: torch.Tensor, total: int) -> torch.Tensor:
    """Rank of each torsion within its molecule: (T_total,) from per-graph counts (G,)."""
    starts = torch.cumsum(num_torsions, 0) - num_torsions
    return torch.arange(total, device=num_torsions.device) - starts.repeat_interleave(num_torsions, output_size=total)


def apply_torsion_changes(pos: torch.Tensor, graph, delta: torch.Tensor) -> torch.Tensor:
    """Turn every torsion of a batch of conformers by ``delta``; returns new positions, ``pos`` is untouched.

    pos : (N_total, 3); graph : a PyG ``Batch`` of ``MolGraph`` (or one ``MolGraph``) with
    ``torsion_index`` (2, T), ``rotate_index`` (2, R), ``num_torsions``; delta : (T_total,) radians.
    The atoms moved by torsion ``t`` turn about the axis ``u -> v`` by ``delta[t]`` (Rodrigues'
    formula), which adds ``delta[t]`` to its dihedral angle. Torsions are applied in rank order,
    the ``k``-th torsion of every molecule in one tensor step, each about its current axis.
    """
    torsion_index, rotate_index = graph.torsion_index, graph.rotate_index
    total = torsion_index.shape[1]
    if delta.shape != (total,):
        raise ValueError(f"delta has shape {tuple(delta.shape)}, expected ({total},) for this batch")
    num_torsions = torch.as_tensor(graph.num_torsions, device=pos.device).reshape(-1)
    entry_rank = _torsion_ranks(num_torsions, total)[rotate_index[0]]  # (R,)
    order = torch.argsort(entry_rank, stable=True)
    counts = torch.bincount(entry_rank, minlength=1).tolist()
    entries = rotate_index[:, order].split(counts, dim=1)
    for tors_atoms in entries:
        if tors_atoms.shape[1] == 0:
            continue
        tors, atoms = tors_atoms
        origin = pos[torsion_index[1, tors]]  # (R_k, 3), v lies on the axis
        axis = origin - pos[torsion_index[0, tors]]
        axis = axis / axis.norm(dim=-1, keepdim=True)
        angle = delta[tors].unsqueeze(-1)
        r = pos[atoms] - origin
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Rodrigues: r' = r cos + (k x r) sin + k (k . r)(1 - cos)
        rotated = r * cos + torch.linalg.cross(axis, r) * sin + axis * (axis * r).sum(-1, keepdim=True) * (1 - cos)
        pos = pos.index_copy(0, atoms, rotated + origin)
    return pos
