"""Capped neighbour lists computed within each graph of a batch (never across the whole batch).

Both functions pad every graph to the largest one, ``(G, n_max, ...)``, so their cost is
``G * n_max^2`` rather than ``N_total^2``. Selection runs without gradients; callers recompute edge
vectors from positions so that scores stay differentiable in ``pos``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AtomNeighbors", "atom_neighbors", "bond_neighbors"]


class AtomNeighbors(NamedTuple):
    """``K`` neighbour slots per atom, slot-major (entry ``k * N + i`` is slot ``k`` of atom ``i``).

    ``src (K N,)`` the neighbour (the atom itself on an empty slot), ``valid (K N,)`` bool,
    ``bond (K N,)`` the index of the bond ``src -> i`` in ``edge_index`` or -1.
    """

    src: Tensor
    valid: Tensor
    bond: Tensor


def _dense_layout(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, int]:
    """Per-atom graph offsets ``ptr[batch] (N,)``, local indices ``(N,)`` and the largest graph size."""
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    return ptr[batch], local, int(counts.max()) if num_graphs else 0


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
    offset, local, n_max = _dense_layout(batch, num_graphs)
    dense = pos.new_zeros(num_graphs, n_max, 3)
    dense[batch, local] = pos
    exists = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=pos.device)
    exists[batch, local] = True

    key = (dense[:, :, None, :] - dense[:, None, :, :]).pow(2).sum(-1)  # (G, n, n) squared distances
    key.masked_fill_(key > cutoff**2, float("inf"))
    key.masked_fill_(~exists[:, None, :], float("inf"))
    key.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    bond_id = torch.full((num_graphs, n_max, n_max), -1, dtype=torch.long, device=pos.device)
    src_b, dst_b = edge_index
    bond_id[batch[dst_b], local[dst_b], local[src_b]] = torch.arange(src_b.numel(), device=pos.device)
    key.masked_fill_(bond_id >= 0, -1.0)  # bonded atoms sort first

    degree = int(torch.bincount(dst_b, minlength=num_atoms).max()) if dst_b.numel() else 0
    num_slots = max(1, min(max(max_neighbors, degree), n_max - 1))
    dist, idx = key[batch, local].topk(num_slots, dim=-1, largest=False)  # (N, K)
    valid = dist < float("inf")
    self_index = torch.arange(num_atoms, device=pos.device)[:, None]
    src = torch.where(valid, offset[:, None] + idx, self_index)
    bond = torch.where(valid, bond_id[batch[:, None], local[:, None], idx], -1)
    return AtomNeighbors(src.t().reshape(-1), valid.t().reshape(-1), bond.t().reshape(-1))


@torch.no_grad()
def bond_neighbors(
    pos: Tensor, batch: Tensor, num_graphs: int, bonds: Tensor, cutoff: float, max_neighbors: int
) -> tuple[Tensor, Tensor]:
    """Atoms of the same graph nearest to each bond centre, the bond's own two atoms always included.

    ``bonds (2, T)``. Returns ``atoms (K, T)`` slot-major (the bond's first atom on an empty slot) and
    ``valid (K, T)`` bool, with ``K = min(max_neighbors, largest graph size)``.
    """
    num_bonds = bonds.shape[1]
    offset, local, n_max = _dense_layout(batch, num_graphs)
    u, v = bonds
    graph = batch[u]
    dense = pos.new_zeros(num_graphs, n_max, 3)
    dense[batch, local] = pos
    exists = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=pos.device)
    exists[batch, local] = True

    centre = 0.5 * (pos[u] + pos[v])
    key = (dense[graph] - centre[:, None, :]).pow(2).sum(-1)  # (T, n)
    key.masked_fill_(key > cutoff**2, float("inf"))
    key.masked_fill_(~exists[graph], float("inf"))
    rows = torch.arange(num_bonds, device=pos.device)
    key[rows, local[u]] = -1.0
    key[rows, local[v]] = -1.0

    num_slots = max(2, min(max_neighbors, n_max))
    dist, idx = key.topk(num_slots, dim=-1, largest=False)  # (T, K)
    valid = dist < float("inf")
    atoms = torch.where(valid, offset[u][:, None] + idx, u[:, None])
    return atoms.t().contiguous(), valid.t().contiguous()
