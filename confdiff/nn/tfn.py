"""e3nn tensor-field-network layers (Thomas et al. 2018), NequIP-style interactions (Batzner et al. 2022).

Edge tensors are stored **edge index last**, ``(features, E)``: on a CPU an elementwise product over a
long contiguous last axis vectorises, whereas e3nn's per-edge einsums over ``(E, mul, 2l+1)`` blocks
run ~10x slower (measured in ``scripts/bench_score_model.py``'s notes). Edges are grouped in ``K``
slots per receiving atom, slot-major: edge ``k * N + i`` sends ``src[k * N + i] -> i``, so aggregation
is a sum over the slot axis instead of a scatter.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import Tensor

__all__ = [
    "GaussianRBF",
    "cosine_cutoff",
    "EquivariantLayerNorm",
    "DepthwiseTensorProduct",
    "TensorFieldConv",
]


class GaussianRBF(torch.nn.Module):
    """Gaussian radial basis ``exp(-(d - mu_k)^2 / (2 w^2))``, ``num`` centres evenly in ``[start, stop]``.

    ``forward(d (E,)) -> (num, E)`` (edge index last).
    """

    def __init__(self, start: float, stop: float, num: int) -> None:
        super().__init__()
        if num < 2 or not stop > start:
            raise ValueError(f"GaussianRBF needs num >= 2 and stop > start, got {start=}, {stop=}, {num=}")
        self.register_buffer("centres", torch.linspace(start, stop, num)[:, None], persistent=False)
        self.coeff = -0.5 / ((stop - start) / (num - 1)) ** 2

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(self.coeff * (d[None, :] - self.centres) ** 2)


def cosine_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """Smooth envelope ``(1 + cos(pi d / cutoff)) / 2`` for ``d < cutoff``, 0 beyond; shape like ``d``."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0), torch.zeros_like(d))


class EquivariantLayerNorm(torch.nn.Module):
    """Per-node layer norm of each irrep block: even scalars centred, every block divided by its RMS.

    The RMS over a block's channels is invariant, so the map is equivariant (odd scalars stay odd).
    Learnable per-channel scale; a bias on even scalars only. ``forward(x (N, irreps.dim))``.
    """

    def __init__(self, irreps: o3.Irreps | str, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = o3.Irreps(irreps)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(self.irreps_in.num_irreps))
        self.bias = torch.nn.Parameter(torch.zeros(sum(mul for mul, ir in self.irreps_in if ir == o3.Irrep("0e"))))

    def forward(self, x: Tensor) -> Tensor:
        blocks = []
        i_weight = i_bias = 0
        for (mul, ir), sl in zip(self.irreps_in, self.irreps_in.slices()):
            field = x[:, sl].reshape(-1, mul, ir.dim)
            if ir == o3.Irrep("0e"):
                field = field - field.mean(dim=1, keepdim=True)
            inv_rms = field.pow(2).mean(dim=(1, 2), keepdim=True).add(self.eps).rsqrt()
            field = field * inv_rms * self.weight[i_weight : i_weight + mul, None]
            if ir == o3.Irrep("0e"):
                field = field + self.bias[i_bias : i_bias + mul, None]
                i_bias += mul
            i_weight += mul
            blocks.append(field.reshape(-1, mul * ir.dim))
        return torch.cat(blocks, dim=1)


class DepthwiseTensorProduct(torch.nn.Module):
    r"""Depthwise (``uvu``) tensor product of features with spherical harmonics, per-edge weights.

    One path per (input irrep, harmonic irrep, output irrep in ``filter_ir_out``), each with its own
    weight per channel: :math:`z^{(p)}_{u k} = \sqrt{2 l_3 + 1}\, w^{(p)}_u \sum_{ij} C^{l_1 l_2 l_3}_{ijk}
    x_{u i} Y_j`. The values equal ``o3.TensorProduct(irreps_in, irreps_sh, irreps_out, [(i, j, k,
    "uvu", True), ...], shared_weights=False, internal_weights=False)`` (same weight layout, tested), but
    every tensor has the edge index last.

    ``forward(x (irreps_in.dim, E), sh (irreps_sh.dim, E), weight (weight_numel, E)) -> (irreps_out.dim, E)``;
    with ``num_slots=K`` the edges are ``K`` slot-major groups of ``N`` and the output is summed over
    the slots, ``(irreps_out.dim, N)``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_sh: o3.Irreps | str,
        filter_ir_out: list[o3.Irrep | str],
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"irreps_sh must have multiplicity 1 per irrep, got {self.irreps_sh}")
        wanted = [o3.Irrep(ir) for ir in filter_ir_out]

        irreps_out, instructions = [], []
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            for i_sh, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i_in, i_sh, len(irreps_out)))
                        irreps_out.append((mul, ir_out))
        if not instructions:
            raise ValueError(f"no path from {self.irreps_in} x {self.irreps_sh} to any of {wanted}")
        self.irreps_out, perm, _ = o3.Irreps(irreps_out).sort()
        self.instructions = [(i_in, i_sh, perm[i_out]) for i_in, i_sh, i_out in instructions]
        self.weight_numel = sum(self.irreps_in[i_in].mul for i_in, _, _ in self.instructions)

        # cg_p (d1 * d3, d2): contracting it with Y gives the (d1, d3) coupling matrix of path p per edge.
        for p, (i_in, i_sh, i_out) in enumerate(self.instructions):
            l1, l2, l3 = self.irreps_in[i_in].ir.l, self.irreps_sh[i_sh].ir.l, self.irreps_out[i_out].ir.l
            cg = o3.wigner_3j(l1, l2, l3) * math.sqrt(2 * l3 + 1)  # (d1, d2, d3), e3nn "component" norm
            self.register_buffer(f"cg_{p}", cg.permute(0, 2, 1).reshape((2 * l1 + 1) * (2 * l3 + 1), 2 * l2 + 1))

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor, num_slots: int | None = None) -> Tensor:
        num_edges = x.shape[1]
        in_slices, sh_slices = self.irreps_in.slices(), self.irreps_sh.slices()
        couplings: dict[tuple[int, int, int], Tensor] = {}  # paths with equal (l1, l2, l3) share one
        outs: list[Tensor] = [x.new_empty(0)] * len(self.irreps_out)
        offset = 0
        for p, (i_in, i_sh, i_out) in enumerate(self.instructions):
            mul, ir_in = self.irreps_in[i_in]
            d1, d3 = ir_in.dim, self.irreps_out[i_out].ir.dim
            key = (ir_in.l, self.irreps_sh[i_sh].ir.l, self.irreps_out[i_out].ir.l)
            if key not in couplings:
                couplings[key] = (getattr(self, f"cg_{p}") @ sh[sh_slices[i_sh]]).view(d1, d3, num_edges)
            coupling = couplings[key]
            xw = x[in_slices[i_in]].view(mul, d1, num_edges) * weight[offset : offset + mul, None, :]
            offset += mul
            out = xw[:, 0, None, :] * coupling[0]
            for i in range(1, d1):
                out = out + xw[:, i, None, :] * coupling[i]
            out = out.view(mul * d3, num_edges)  # (mul, d3) flattened as e3nn does
            outs[i_out] = out if num_slots is None else out.view(mul * d3, num_slots, -1).sum(dim=1)
        return torch.cat(outs, dim=0)


class TensorFieldConv(torch.nn.Module):
    r"""One tensor-field convolution with a gated update, a residual and a layer norm.

    .. math:: h_i \leftarrow \mathrm{LN}\Big(h_i + \mathrm{Gate}\big(W \textstyle\sum_{j \in N(i)}
              h_j \otimes_{w_{ij}} Y(\hat r_{ij}) / \sqrt{\bar n}\big)\Big),
              \quad w_{ij} = \mathrm{MLP}(e_{ij} + A s_j + B s_i)

    ``e_ij`` is the edge embedding and ``s`` the even scalars of each atom (the MLP's first layer is
    applied per atom, then gathered). ``irreps_out`` lists its scalars (``0e`` / ``0o``, activated by
    SiLU / tanh) before the gated ``l > 0`` irreps. When ``irreps_in != irreps_out`` the residual is a
    linear self-connection.

    ``forward(h (N, irreps_in.dim), src (K N,), sh (irreps_sh.dim, K N), edge_emb (edge_dim, K N))
    -> (N, irreps_out.dim)``; edges in the slot-major layout of the module docstring, and ``sh``
    already multiplied by any smooth cutoff envelope (zero on empty slots).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_sh: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        edge_dim: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        if len(self.irreps_in) == 0 or self.irreps_in[0].ir != o3.Irrep("0e"):
            raise ValueError(f"irreps_in must start with even scalars (0e), got {self.irreps_in}")
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        acts = {o3.Irrep("0e"): torch.nn.functional.silu, o3.Irrep("0o"): torch.tanh}
        if scalars + gated != self.irreps_out or not scalars or not gated or any(ir not in acts for _, ir in scalars):
            raise ValueError(f"irreps_out must be 0e/0o scalars followed by l > 0 irreps, got {self.irreps_out}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.message_scale = avg_num_neighbors**-0.5

        self.tp = DepthwiseTensorProduct(self.irreps_in, irreps_sh, [ir for _, ir in self.irreps_out])
        self.num_node_scalars = self.irreps_in[0].mul
        self.src_proj = torch.nn.Parameter(torch.randn(edge_dim, self.num_node_scalars) / self.num_node_scalars**0.5)
        self.dst_proj = torch.nn.Parameter(torch.randn(edge_dim, self.num_node_scalars) / self.num_node_scalars**0.5)
        self.weight_mlp = torch.nn.Linear(edge_dim, self.tp.weight_numel)

        self.gate = Gate(scalars, [acts[ir] for _, ir in scalars], f"{gated.num_irreps}x0e", [torch.sigmoid], gated)
        self.linear = o3.Linear(self.tp.irreps_out, self.gate.irreps_in)
        self.self_connection = None if self.irreps_in == self.irreps_out else o3.Linear(self.irreps_in, self.irreps_out)
        self.norm = EquivariantLayerNorm(self.irreps_out)

    def forward(self, h: Tensor, src: Tensor, sh: Tensor, edge_emb: Tensor) -> Tensor:
        num_nodes = h.shape[0]
        num_slots = src.shape[0] // num_nodes
        s_t = h[:, : self.num_node_scalars].t()  # (ns, N)
        z = (edge_emb + (self.src_proj @ s_t).index_select(1, src)).view(-1, num_slots, num_nodes)
        z = torch.nn.functional.silu(z + (self.dst_proj @ s_t)[:, None, :]).view(-1, src.shape[0])
        weight = torch.addmm(self.weight_mlp.bias[:, None], self.weight_mlp.weight, z)  # (weight_numel, E)
        h_src = h.t().contiguous().index_select(1, src)  # (irreps_in.dim, K N)
        aggregated = self.tp(h_src, sh, weight, num_slots).t() * self.message_scale  # (N, irreps_mid.dim)
        residual = h if self.self_connection is None else self.self_connection(h)
        return self.norm(residual + self.gate(self.linear(aggregated)))
