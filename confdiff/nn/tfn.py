"""e3nn tensor-field-network layers (Thomas et al. 2018), NequIP-style interactions (Batzner et al. 2022).

Features are **channels first**: ``(irreps.dim, N)`` per atom and ``(dim, E)`` per edge, each irrep
block laid out as e3nn's ``(mul, 2l+1)`` rows. On a CPU, products over the long contiguous last axis
vectorise, whereas e3nn's ``TensorProduct`` / ``Linear`` einsums over ``(E, mul, 2l+1)`` were 5-10x
slower here (``scripts/bench_score_model.py``); the modules below keep e3nn's maths (irreps, Clebsch-
Gordan coefficients, normalisation; tests compare them with e3nn) in this layout. Edges are grouped in
``K`` slots per receiving atom, slot-major: edge ``k * N + i`` sends ``src[k * N + i] -> i``, so the
aggregation is a sum over the slot axis rather than a scatter.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor

__all__ = [
    "GaussianRBF",
    "cosine_cutoff",
    "IrrepsLinear",
    "EquivariantLayerNorm",
    "DepthwiseTensorProduct",
    "TensorFieldConv",
]


def _blocks(x: Tensor, irreps: o3.Irreps) -> tuple[Tensor, ...]:
    """The rows of each irrep block of channels-first ``x (irreps.dim, ...)``, split in one operation: the
    backward of a split concatenates the blocks' gradients, whereas each slice's would fill a zero tensor
    of the whole input (most of a training step's time, ``scripts/bench_score_model.py --backward``)."""
    return x.split([mul * ir.dim for mul, ir in irreps])


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


class IrrepsLinear(torch.nn.Module):
    r"""Equivariant linear map between irreps on channels-first features: the maths of ``o3.Linear``.

    Each output block is :math:`\sum_{\text{inputs of its irrep}} W^\top x / \sqrt{\text{fan-in}}`, weights
    ~ N(0, 1) stored flat in ``o3.Linear``'s instruction order (tested equal), plus a zero-initialised
    bias on ``0e`` outputs when ``bias``. One matrix product per output block over ``(fan-in, (2l+1) N)``.
    ``forward(x (irreps_in.dim, N)) -> (irreps_out.dim, N)``.
    """

    def __init__(self, irreps_in: o3.Irreps | str, irreps_out: o3.Irreps | str, bias: bool = False) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        # per output block: [(input block, weight block, mul_in)], bias start or None
        self._plan: list[tuple[list, int | None]] = [([], None) for _ in self.irreps_out]
        self._weight_sizes: list[int] = []
        for i_in, (mul_in, ir_in) in enumerate(self.irreps_in):
            for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
                if ir_in == ir_out:
                    self._plan[i_out][0].append((i_in, len(self._weight_sizes), mul_in))
                    self._weight_sizes.append(mul_in * mul_out)
        num_weights, num_biases = sum(self._weight_sizes), 0
        if bias:
            for i_out, (mul_out, ir_out) in enumerate(self.irreps_out):
                if ir_out == o3.Irrep("0e"):
                    self._plan[i_out] = (self._plan[i_out][0], num_biases)
                    num_biases += mul_out
        self.weight = torch.nn.Parameter(torch.randn(num_weights))
        self.bias = torch.nn.Parameter(torch.zeros(num_biases)) if num_biases else None

    def forward(self, x: Tensor) -> Tensor:
        num_nodes = x.shape[1]
        x_blocks, weights = _blocks(x, self.irreps_in), self.weight.split(self._weight_sizes)
        blocks = []
        for (mul_out, ir_out), (inputs, bias_start) in zip(self.irreps_out, self._plan):
            if inputs:
                weight = torch.cat([weights[w].view(m, mul_out) for _, w, m in inputs])  # (fan-in, mul_out)
                rows = [x_blocks[i] for i, _, _ in inputs]
                rows = (rows[0] if len(rows) == 1 else torch.cat(rows)).reshape(-1, ir_out.dim * num_nodes)
                out = (weight.t() @ rows) * weight.shape[0] ** -0.5  # (mul_out, (2l+1) N)
            else:
                out = x.new_zeros(mul_out, ir_out.dim * num_nodes)
            if bias_start is not None:
                out = out + self.bias[bias_start : bias_start + mul_out, None]
            blocks.append(out.view(mul_out * ir_out.dim, num_nodes))
        return torch.cat(blocks)


class EquivariantLayerNorm(torch.nn.Module):
    """Layer norm of each irrep block of channels-first features: even scalars centred, then every
    block divided by its RMS over channels and components.

    The RMS is invariant, so the map is equivariant (odd scalars stay odd). Learnable per-channel
    scale; a bias on even scalars only. ``forward(x (irreps.dim, N)) -> (irreps.dim, N)``.
    """

    def __init__(self, irreps: o3.Irreps | str, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = o3.Irreps(irreps)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(self.irreps_in.num_irreps))
        self.bias = torch.nn.Parameter(torch.zeros(sum(mul for mul, ir in self.irreps_in if ir == o3.Irrep("0e"))))

    def forward(self, x: Tensor) -> Tensor:
        num_nodes = x.shape[1]
        blocks = []
        i_weight = i_bias = 0
        for (mul, ir), block in zip(self.irreps_in, _blocks(x, self.irreps_in)):
            field = block.reshape(mul, ir.dim, num_nodes)
            if ir == o3.Irrep("0e"):
                field = field - field.mean(dim=0, keepdim=True)
            inv_rms = field.pow(2).mean(dim=(0, 1), keepdim=True).add(self.eps).rsqrt()  # (1, 1, N)
            field = field * inv_rms * self.weight[i_weight : i_weight + mul, None, None]
            if ir == o3.Irrep("0e"):
                field = field + self.bias[i_bias : i_bias + mul, None, None]
                i_bias += mul
            i_weight += mul
            blocks.append(field.view(mul * ir.dim, num_nodes))
        return torch.cat(blocks)


class DepthwiseTensorProduct(torch.nn.Module):
    r"""Depthwise (``uvu``) tensor product of features with spherical harmonics, per-edge weights.

    One path per (input irrep, harmonic irrep, output irrep in ``filter_ir_out``), each with its own
    weight per channel: :math:`z^{(p)}_{u k} = \sqrt{2 l_3 + 1}\, w^{(p)}_u \sum_{ij} C^{l_1 l_2 l_3}_{ijk}
    x_{u i} Y_j`. The values equal ``o3.TensorProduct(irreps_in, irreps_sh, irreps_out, [(i, j, k,
    "uvu", True), ...], shared_weights=False, internal_weights=False)`` (same weight layout, tested), but
    every tensor has the edge index last.

    ``forward(x (irreps_in.dim, E), sh (irreps_sh.dim, E), weight (weight_numel, E) or None) ->
    (irreps_out.dim, E)``; ``weight=None`` means unit weights (a plain, unweighted tensor product).
    With ``num_slots=K`` the edges are ``K`` slot-major groups of ``N`` and the output is summed over
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
        # Kept in float64 (cast where used) so that a float64 model is equivariant to float64 precision.
        for p, (i_in, i_sh, i_out) in enumerate(self.instructions):
            l1, l2, l3 = self.irreps_in[i_in].ir.l, self.irreps_sh[i_sh].ir.l, self.irreps_out[i_out].ir.l
            cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)  # e3nn "component" norm
            cg = cg.permute(0, 2, 1).reshape((2 * l1 + 1) * (2 * l3 + 1), 2 * l2 + 1)
            self.register_buffer(f"cg_{p}", cg, persistent=False)

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor | None, num_slots: int | None = None) -> Tensor:
        num_edges = x.shape[1]
        x_blocks, sh_blocks = _blocks(x, self.irreps_in), _blocks(sh, self.irreps_sh)
        weights = None if weight is None else weight.split([self.irreps_in[i].mul for i, _, _ in self.instructions])
        couplings: dict[tuple[int, int, int], tuple] = {}  # shared by paths with equal (l1, sh block, l3)
        outs: list[Tensor] = [x.new_empty(0)] * len(self.irreps_out)
        for p, (i_in, i_sh, i_out) in enumerate(self.instructions):
            mul, ir_in = self.irreps_in[i_in]
            d1, d3, l2 = ir_in.dim, self.irreps_out[i_out].ir.dim, self.irreps_sh[i_sh].ir.l
            xw = x_blocks[i_in].reshape(mul, d1, num_edges)
            if weights is not None:
                xw = xw * weights[p][:, None, :]
            if l2 == 0:  # sqrt(2l+1) C^{l0l}_{i0k} = delta_ik: a product with Y_0
                out = xw * sh_blocks[i_sh] if weights is None else xw.mul_(sh_blocks[i_sh])
            else:
                key = (ir_in.l, i_sh, self.irreps_out[i_out].ir.l)
                if key not in couplings:
                    cg = getattr(self, f"cg_{p}").to(sh.dtype)
                    couplings[key] = (cg @ sh_blocks[i_sh]).view(d1, d3, num_edges).unbind(0)
                coupling, xs = couplings[key], xw.unbind(1)
                out = xs[0][:, None, :] * coupling[0]
                for i in range(1, d1):
                    out.addcmul_(xs[i][:, None, :], coupling[i])
            out = out.reshape(mul * d3, num_edges)  # (mul, d3) flattened as e3nn does
            outs[i_out] = out if num_slots is None else out.view(mul * d3, num_slots, -1).sum(dim=1)
        return torch.cat(outs, dim=0)


class TensorFieldConv(torch.nn.Module):
    r"""One tensor-field convolution with a gated update, a residual and a layer norm.

    .. math:: h_i \leftarrow \mathrm{LN}\Big(h_i + \mathrm{Gate}\big(W \textstyle\sum_{j \in N(i)}
              h_j \otimes_{w_{ij}} Y(\hat r_{ij}) / \sqrt{\bar n}\big)\Big),
              \quad w_{ij} = \mathrm{MLP}(e_{ij} + A s_j + B s_i)

    ``e_ij`` is the edge embedding and ``s`` the even scalars of each atom (the MLP's first layer is
    applied per atom, then gathered). ``irreps_out`` lists its scalars (``0e`` / ``0o``, activated by
    SiLU / tanh) before the ``l > 0`` irreps, which are gated by sigmoids of extra ``0e`` channels
    (e3nn's ``Gate``). When ``irreps_in != irreps_out`` the residual is a linear self-connection.

    ``forward(h (irreps_in.dim, N), src (K N,), sh (irreps_sh.dim, K N), edge_emb (edge_dim, K N))
    -> (irreps_out.dim, N)``: channels first, edges in the slot-major layout of the module docstring,
    ``sh`` already multiplied by any smooth cutoff envelope (zero on empty slots).
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
        self.scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        self.gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        if (self.scalars + self.gated != self.irreps_out or not self.scalars or not self.gated
                or any(ir.p == 0 for _, ir in self.scalars)):
            raise ValueError(f"irreps_out must be 0e/0o scalars followed by l > 0 irreps, got {self.irreps_out}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.message_scale = avg_num_neighbors**-0.5

        self.tp = DepthwiseTensorProduct(self.irreps_in, irreps_sh, [ir for _, ir in self.irreps_out])
        self.num_node_scalars = self.irreps_in[0].mul
        self.src_proj = torch.nn.Parameter(torch.randn(edge_dim, self.num_node_scalars) / self.num_node_scalars**0.5)
        self.dst_proj = torch.nn.Parameter(torch.randn(edge_dim, self.num_node_scalars) / self.num_node_scalars**0.5)
        self.weight_mlp = torch.nn.Linear(edge_dim, self.tp.weight_numel)
        gates = o3.Irreps(f"{self.gated.num_irreps}x0e")
        self.linear = IrrepsLinear(self.tp.irreps_out, self.scalars + gates + self.gated, bias=True)
        self.self_connection = (
            None if self.irreps_in == self.irreps_out else IrrepsLinear(self.irreps_in, self.irreps_out)
        )
        self.norm = EquivariantLayerNorm(self.irreps_out)

    def gate(self, x: Tensor) -> Tensor:
        """SiLU on 0e, tanh on 0o (odd, so parity is kept), gated irreps times sigmoid(gates)."""
        scalars, gates, gated = x.split([self.scalars.dim, self.gated.num_irreps, self.gated.dim])
        blocks = [torch.nn.functional.silu(block) if ir.p == 1 else torch.tanh(block)
                  for (_, ir), block in zip(self.scalars, _blocks(scalars, self.scalars))]
        gates = torch.sigmoid(gates).split([mul for mul, _ in self.gated])
        for (mul, ir), block, gate in zip(self.gated, _blocks(gated, self.gated), gates):
            blocks.append((block.reshape(mul, ir.dim, -1) * gate[:, None, :]).view(mul * ir.dim, -1))
        return torch.cat(blocks)

    def forward(self, h: Tensor, src: Tensor, sh: Tensor, edge_emb: Tensor) -> Tensor:
        num_nodes = h.shape[1]
        num_slots = src.shape[0] // num_nodes
        s = h[: self.num_node_scalars]  # (ns, N)
        z = (edge_emb + (self.src_proj @ s).index_select(1, src)).view(-1, num_slots, num_nodes)
        z = torch.nn.functional.silu(z + (self.dst_proj @ s)[:, None, :]).view(-1, src.shape[0])
        weight = torch.addmm(self.weight_mlp.bias[:, None], self.weight_mlp.weight, z)  # (weight_numel, K N)
        aggregated = self.tp(h.index_select(1, src), sh, weight, num_slots) * self.message_scale  # (mid, N)
        residual = h if self.self_connection is None else self.self_connection(h)
        return self.norm(residual + self.gate(self.linear(aggregated)))
