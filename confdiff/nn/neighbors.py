"""Capped neighbour lists computed within each graph of a batch (never across the whole batch).

Both functions pad the coordinates of every graph to the largest one, ``(3, G, n_max)``, and compare
each atom (or bond centre) with its own graph only: cost ``N * n_max`` rather than ``N_total^2``.
Selection runs without gradients; callers recompute edge vectors from positions so that scores stay
differentiable in ``pos``. Both also return, per atom (bond centre), the nearest candidate that the
cap left out, so that callers can fade a kept neighbour out as that one comes as close
(:func:`cap_weights`): a hard cap alone makes scores jump wherever two candidates are equally far,
which minimised conformers, with their locally symmetric groups (methyl hydrogens), often are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AtomNeighbors", "atom_neighbors", "bond_neighbors", "cap_weights"]


class AtomNeighbors(NamedTuple):
    """``K`` neighbour slots per atom, slot-major (entry ``k * N + i`` is slot ``k`` of atom ``i``).

    ``src (K N,)`` the neighbour (the atom itself on an empty slot), ``valid (K N,)`` bool,
    ``bond (K N,)`` the index of the bond ``src -> i`` in ``edge_index`` or -1, ``left_out (N,)`` the
    nearest non-bonded atom within the cutoff that the cap left out, or -1.
    """

    src: Tensor
    valid: Tensor
    bond: Tensor
    left_out: Tensor


def _dense_layout(pos: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-atom graph offsets ``(N,)`` and local indices ``(N,)``, coordinates padded per graph
    channels first ``(3, G, n_max)`` and a mask of real atoms ``(G, n_max)``."""
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    n_max = int(counts.max()) if num_graphs else 0
    dense = pos.new_zeros(3, num_graphs, n_max)
    dense[:, batch, local] = pos.t()
    exists = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=pos.device)
    exists[batch, local] = True
    return ptr[batch], local, dense, exists


@torch.no_grad()
def atom_neighbors(
    pos: Tensor, batch: Tensor, num_graphs: int, edge_index: Tensor, cutoff: float, max_neighbors: int
) -> AtomNeighbors:
    """Bonded atoms (always) plus the nearest other atoms of the same graph within ``cutoff``.

    ``pos (N, 3)``, ``batch (N,)``, ``edge_index (2, 2B)`` bonds (both directions). The slot count is
    ``K = max(max_neighbors, largest degree)`` capped by the largest graph size; an atom with more
    candidates keeps its bonded atoms and the nearest others.
    """
    num_atoms = pos.shape[0]
    offset, local, dense, exists = _dense_layout(pos, batch, num_graphs)
    n_max = dense.shape[2]
    rows = torch.arange(num_atoms, device=pos.device)
    # squared distances from each atom to every atom slot of its graph, (N, n_max)
    key = sum((c[batch] - p[:, None]).square_() for c, p in zip(dense, pos.t()))
    key.masked_fill_((key > cutoff**2) | ~exists[batch], float("inf"))
    key[rows, local] = float("inf")
    bond_id = torch.full((num_atoms, n_max), -1, dtype=torch.long, device=pos.device)
    src_b, dst_b = edge_index
    bond_id[dst_b, local[src_b]] = torch.arange(src_b.numel(), device=pos.device)
    key[dst_b, local[src_b]] = -1.0  # bonded atoms sort first

    degree = int(torch.bincount(dst_b, minlength=num_atoms).max()) if dst_b.numel() else 0
    num_slots = max(1, min(max(max_neighbors, degree), n_max - 1))
    dist, idx = key.topk(num_slots + 1, dim=-1, largest=False)  # (N, K + 1); K < n_max
    left_out = torch.where(dist[:, -1] < float("inf"), offset + idx[:, -1], -1)
    dist, idx = dist[:, :-1], idx[:, :-1]
    valid = dist < float("inf")
    src = torch.where(valid, offset[:, None] + idx, rows[:, None])
    bond = torch.where(valid, bond_id.gather(1, idx), -1)
    return AtomNeighbors(src.t().reshape(-1), valid.t().reshape(-1), bond.t().reshape(-1), left_out)


@torch.no_grad()
def bond_neighbors(
    pos: Tensor, batch: Tensor, num_graphs: int, bonds: Tensor, cutoff: float, max_neighbors: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Atoms of the same graph nearest to each bond centre, the bond's own two atoms always included
    (slots 0 and 1).

    ``bonds (2, T)``. Returns ``atoms (K, T)`` slot-major (the bond's first atom on an empty slot),
    ``valid (K, T)`` bool, with ``K = min(max_neighbors, largest graph size)``, and ``left_out (T,)``:
    the nearest atom within the cutoff that the cap left out, or -1.
    """
    num_bonds = bonds.shape[1]
    offset, local, dense, exists = _dense_layout(pos, batch, num_graphs)
    n_max = dense.shape[2]
    u, v = bonds
    graph = batch[u]
    centre = 0.5 * (pos[u] + pos[v])
    key = sum((c[graph] - m[:, None]).square_() for c, m in zip(dense, centre.t()))  # (T, n) squared distances
    key.masked_fill_(key > cutoff**2, float("inf"))
    key.masked_fill_(~exists[graph], float("inf"))
    rows = torch.arange(num_bonds, device=pos.device)
    key[rows, local[u]] = -1.0
    key[rows, local[v]] = -1.0

    num_slots = max(2, min(max_neighbors, n_max))
    dist, idx = key.topk(min(num_slots + 1, n_max), dim=-1, largest=False)  # (T, K) or (T, K + 1)
    left_out = torch.full_like(u, -1)
    if dist.shape[1] > num_slots:
        left_out = torch.where(dist[:, -1] < float("inf"), offset[u] + idx[:, -1], -1)
        dist, idx = dist[:, :-1], idx[:, :-1]
    valid = dist < float("inf")
    atoms = torch.where(valid, offset[u][:, None] + idx, u[:, None])
    return atoms.t().contiguous(), valid.t().contiguous(), left_out


def cap_weights(dist: Tensor, left_out_dist: Tensor, width: float) -> Tensor:
    """Weights in [0, 1] of the capped neighbours at ``dist (K, M)`` from their centre, given the
    distance ``left_out_dist (M,)`` of the centre's nearest left-out candidate (the cutoff when none).

    ``smoothstep((left_out_dist - dist) / width)``: 1 for a neighbour at least ``width`` nearer than
    the left-out one, falling smoothly to 0 as the two become equally far, so that swapping them
    changes nothing. ``width = 0``: the hard cap (all ones).
    """
    if width <= 0:
        return torch.ones_like(dist)
    u = ((left_out_dist[None, :] - dist) / width).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)
