"""The conformer score model: a parity-odd (0o) score per rotatable bond and a 1o score per atom.

In the spirit of torsional diffusion's score model (Jing et al. 2022), made much cheaper: a few
depthwise tensor-field convolutions (``tfn.py``) over bonds plus a capped radius graph, a
bond-centred convolution for the torsion scores and GeoDiff-style (Xu et al. 2022) edge vectors plus
an equivariant linear read-out for the coordinate scores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from e3nn import o3
from torch import Tensor

from confdiff.diffusion.torus import wrapped_normal_score_norm
from confdiff.nn.neighbors import atom_neighbors, bond_neighbors, cap_weights
from confdiff.nn.scatter import scatter_mean
from confdiff.nn.tfn import DepthwiseTensorProduct, GaussianRBF, IrrepsLinear, TensorFieldConv, cosine_cutoff

__all__ = ["MODEL_SIZES", "ScoreModelConfig", "ScoreModel", "SigmaEmbedding"]


@dataclass(frozen=True)
class ScoreModelConfig:
    """Every hyperparameter of ``ScoreModel``; saved in checkpoints (``to_dict`` / ``from_dict``).

    node_feature_dim, edge_feature_dim : widths of ``x`` and ``edge_attr`` (from the featuriser).
    num_scalars, num_vectors : channels per atom of ``0e`` and ``0o`` / of ``1o`` and ``1e``.
    num_layers : tensor-field convolutions; sh_lmax : degree of the edge spherical harmonics.
    edge_dim : width of the edge embedding (the hidden layer of every radial MLP).
    num_rbf : Gaussian radial basis functions; sigma_embed_dim : sinusoidal features per noise level.
    cutoff, max_neighbors : radius graph (Angstrom) and neighbour slots per atom (bonds included).
    torsion_cutoff, torsion_max_neighbors : the same around each rotatable bond's centre.
    cap_width : Angstrom; a capped (non-bonded) neighbour fades out smoothly as the nearest candidate
        that the cap left out comes within ``cap_width`` of it (``neighbors.cap_weights``), and the
        torsion head counts its neighbours by these weights, so the scores are continuous where the
        cap's choice changes. 0 is the hard cap of the checkpoints written before this option.
    avg_num_neighbors : messages are divided by its square root.
    centre_vector : the position head also reads each atom's offset from its graph's centre,
        ``psi(s_i) (x_i - c) / (1 + sigma_pos^2)^(1/2)``: the global pull that the full-coordinate
        mode needs at large noise (a local graph cannot see the centre), zero at initialisation.
    """

    node_feature_dim: int
    edge_feature_dim: int
    num_scalars: int = 16
    num_vectors: int = 4
    num_layers: int = 3
    sh_lmax: int = 1
    edge_dim: int = 16
    num_rbf: int = 16
    sigma_embed_dim: int = 16
    cutoff: float = 5.0
    max_neighbors: int = 10
    torsion_cutoff: float = 5.0
    torsion_max_neighbors: int = 12
    cap_width: float = 0.25
    avg_num_neighbors: float = 10.0
    centre_vector: bool = False

    def __post_init__(self) -> None:
        positive = ("node_feature_dim", "num_scalars", "num_vectors", "num_layers", "sh_lmax", "edge_dim",
                    "max_neighbors", "torsion_max_neighbors", "cutoff", "torsion_cutoff", "avg_num_neighbors")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ScoreModelConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.num_layers < 2:  # the first layer sees 0e inputs only: parity-odd (0o) features need two
            raise ValueError(f"ScoreModelConfig.num_layers must be >= 2 (torsion scores are identically zero "
                             f"with one layer), got {self.num_layers!r}")
        if self.cap_width < 0:
            raise ValueError(f"ScoreModelConfig.cap_width must be >= 0, got {self.cap_width!r}")
        if self.edge_feature_dim < 0:
            raise ValueError(f"ScoreModelConfig.edge_feature_dim must be >= 0, got {self.edge_feature_dim!r}")
        if self.num_rbf < 2:
            raise ValueError(f"ScoreModelConfig.num_rbf must be >= 2, got {self.num_rbf!r}")
        if self.sigma_embed_dim < 2 or self.sigma_embed_dim % 2:
            raise ValueError(f"ScoreModelConfig.sigma_embed_dim must be even and >= 2, got {self.sigma_embed_dim!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoreModelConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ScoreModelConfig keys: {sorted(unknown)}")
        return cls(**{"cap_width": 0.0, **values})  # saved before cap_width existed: the hard cap


#: named architectures (``ScoreModelConfig`` fields over the defaults) of ``confdiff train --size``
#: and the size sweep: parameters 6,034 (the shipped default's architecture) / 12,925 / ~126k / ~593k
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_scalars": 12, "num_vectors": 3, "num_layers": 2, "edge_dim": 12},
    "small": {},
    "medium": {"num_scalars": 48, "num_vectors": 12, "num_layers": 4, "edge_dim": 48},
    "large": {"num_scalars": 96, "num_vectors": 24, "num_layers": 5, "edge_dim": 96},
}


class SigmaEmbedding(torch.nn.Module):
    """Sinusoidal features of ``log sigma`` with periods geometric in ``[0.5, 50]``: ``(G,) -> (G, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        periods = torch.logspace(math.log10(0.5), math.log10(50.0), dim // 2)
        self.register_buffer("frequencies", 2 * math.pi / periods, persistent=False)

    def forward(self, sigma: Tensor) -> Tensor:
        phase = torch.log(sigma)[:, None] * self.frequencies
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


def _mlp(dim_in: int, dim_hidden: int, dim_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(dim_in, dim_hidden), torch.nn.SiLU(), torch.nn.Linear(dim_hidden, dim_out)
    )


def _linear_t(layer: torch.nn.Linear, x_t: Tensor) -> Tensor:
    """``layer`` applied to features stored edge index last: ``(in, E) -> (out, E)``."""
    return torch.addmm(layer.bias[:, None], layer.weight, x_t) if layer.bias is not None else layer.weight @ x_t


def _spherical_harmonics(irreps: o3.Irreps | str, unit: Tensor) -> Tensor:
    """Component-normalised spherical harmonics of unit vectors, channels first: ``(3, E) -> (dim, E)``."""
    return o3.spherical_harmonics(irreps, unit.t(), normalize=False, normalization="component").t()


def _safe_norm(vec: Tensor, dim: int) -> Tensor:
    """Euclidean norm with a finite gradient at zero (empty neighbour slots hold zero vectors)."""
    return vec.pow(2).sum(dim).clamp_min(1e-12).sqrt()


class ScoreModel(torch.nn.Module):
    """SE(3)-equivariant scores for a batch of noisy conformers (docs/architecture.md, section 3).

    ``forward(batch) -> (torsion_score (T,), pos_score (N, 3))``. ``batch`` is a PyG ``Batch`` of
    ``MolGraph`` with ``pos``, ``batch`` and per-graph ``sigma_tor (G,)``, ``sigma_pos (G,)``.
    Torsion scores are 0o scalars times ``sqrt(E[score^2])`` of the wrapped normal at ``sigma_tor``;
    position scores are 1o vectors divided by ``sigma_pos`` with each graph's mean removed.
    The batch is only read.
    """

    def __init__(self, config: ScoreModelConfig) -> None:
        super().__init__()
        self.config = c = config
        ns, nv, ed = c.num_scalars, c.num_vectors, c.edge_dim
        self.irreps_node = o3.Irreps(f"{ns}x0e + {ns}x0o + {nv}x1o + {nv}x1e")
        self.irreps_sh = o3.Irreps.spherical_harmonics(c.sh_lmax)

        self.sigma_embedding = SigmaEmbedding(c.sigma_embed_dim)
        self.node_embedding = _mlp(c.node_feature_dim + 2 * c.sigma_embed_dim, ns, ns)
        self.rbf = GaussianRBF(0.0, c.cutoff, c.num_rbf)
        self.rbf_proj = torch.nn.Linear(c.num_rbf, ed)
        self.bond_proj = torch.nn.Linear(c.edge_feature_dim, ed)
        self.nonbond_embedding = torch.nn.Parameter(torch.zeros(ed))
        self.edge_out = torch.nn.Linear(ed, ed)
        self.layers = torch.nn.ModuleList(
            TensorFieldConv(f"{ns}x0e" if i == 0 else self.irreps_node, self.irreps_sh, self.irreps_node, ed,
                            c.avg_num_neighbors)
            for i in range(c.num_layers)
        )

        # position head: invariant edge scalars along unit edge vectors, plus a linear 1o read-out
        self.pos_src = torch.nn.Parameter(torch.randn(ed, ns) / ns**0.5)
        self.pos_dst = torch.nn.Parameter(torch.randn(ed, ns) / ns**0.5)
        self.pos_edge_out = torch.nn.Linear(ed, 1)
        self.pos_linear = IrrepsLinear(self.irreps_node, "1x1o")
        if c.centre_vector:
            self.pos_centre = torch.nn.Linear(ns, 1)
            torch.nn.init.zeros_(self.pos_centre.weight)
            torch.nn.init.zeros_(self.pos_centre.bias)

        # torsion head: bond-centred convolution, harmonics of (atom - centre) coupled with the axis (2e)
        node_irs = [ir for _, ir in self.irreps_node]
        self.tor_sh = DepthwiseTensorProduct(self.irreps_sh, "2e", node_irs)  # used unweighted
        self.tor_rbf = GaussianRBF(0.0, c.torsion_cutoff, c.num_rbf)
        self.tor_rbf_proj = torch.nn.Linear(c.num_rbf, ed)
        self.tor_edge_out = torch.nn.Linear(ed, ed)
        self.tor_atom_proj = torch.nn.Parameter(torch.randn(ed, ns) / ns**0.5)
        self.tor_bond_proj = torch.nn.Parameter(torch.randn(ed, ns) / ns**0.5)
        self.tor_tp = DepthwiseTensorProduct(self.irreps_node, self.tor_sh.irreps_out, ["0e", "0o"])
        self.tor_weight = torch.nn.Linear(ed, self.tor_tp.weight_numel)
        num_odd = sum(mul for mul, ir in self.tor_tp.irreps_out if ir == o3.Irrep("0o"))
        num_even = sum(mul for mul, ir in self.tor_tp.irreps_out if ir == o3.Irrep("0e"))
        if num_odd == 0:
            raise ValueError(f"no 0o torsion features from {self.irreps_node} x {self.tor_sh.irreps_out}")
        # odd read-out: tanh (odd, no bias) of the 0o features, gated by an MLP of invariant features
        self.tor_odd = torch.nn.Linear(num_odd, ns, bias=False)
        self.tor_even = _mlp(num_even + ns, ns, ns)
        self.tor_out = torch.nn.Linear(ns, 1, bias=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        c = self.config
        pos, x = batch.pos, batch.x
        sigma_tor, sigma_pos = batch.sigma_tor, batch.sigma_pos
        num_graphs, num_atoms = sigma_tor.shape[0], pos.shape[0]
        graph = batch.batch if batch.batch is not None else pos.new_zeros(num_atoms, dtype=torch.long)

        # --- node embedding: atom features and both noise levels -> ns x 0e; features channels first
        sigma_features = torch.cat([self.sigma_embedding(sigma_tor), self.sigma_embedding(sigma_pos)], dim=1)
        h = self.node_embedding(torch.cat([x, sigma_features[graph]], dim=1)).t()  # (ns, N)

        # --- edges: K slots per atom (bonds, then nearest atoms within the cutoff), edge index last
        nbr = atom_neighbors(pos, graph, num_graphs, batch.edge_index, c.cutoff, c.max_neighbors)
        num_slots = nbr.src.shape[0] // num_atoms
        pos_t = pos.t()
        vec = (pos_t.index_select(1, nbr.src).view(3, num_slots, num_atoms) - pos_t[:, None, :]).view(3, -1)
        dist = _safe_norm(vec, 0)
        unit = vec / dist
        nonbond = cosine_cutoff(dist, c.cutoff)
        if c.cap_width > 0:
            left = nbr.left_out
            left_dist = torch.where(left >= 0, _safe_norm(pos_t[:, left.clamp_min(0)] - pos_t, 0), c.cutoff)
            nonbond = nonbond * cap_weights(dist.view(num_slots, num_atoms), left_dist, c.cap_width).view(-1)
        envelope = torch.where(nbr.bond >= 0, torch.ones_like(dist), nonbond) * nbr.valid
        sh = _spherical_harmonics(self.irreps_sh, unit) * envelope  # (irreps_sh.dim, E)
        bond_table = torch.cat([_linear_t(self.bond_proj, batch.edge_attr.t()), self.nonbond_embedding[:, None]], 1)
        edge_emb = _linear_t(self.rbf_proj, self.rbf(dist)) + bond_table[:, nbr.bond]  # bond -1: non-bond column
        edge_emb = _linear_t(self.edge_out, torch.nn.functional.silu(edge_emb))  # (edge_dim, E)

        for layer in self.layers:
            h = layer(h, nbr.src, sh, edge_emb)
        s = h[: c.num_scalars]  # (ns, N)

        # --- position score: sum_j phi(e_ij, s_i, s_j) (r_j - r_i)/|r_j - r_i| + W h_i (1o), then / sigma
        z = (edge_emb + (self.pos_src @ s).index_select(1, nbr.src)).view(-1, num_slots, num_atoms)
        z = torch.nn.functional.silu(z + (self.pos_dst @ s)[:, None, :]).view(-1, nbr.src.shape[0])
        phi = _linear_t(self.pos_edge_out, z) * envelope  # (1, E)
        pos_score = ((phi * unit).view(3, num_slots, num_atoms).sum(1) + self.pos_linear(h)).t()  # (N, 3)
        if c.centre_vector:
            offset = pos - scatter_mean(pos, graph, num_graphs)[graph]
            pos_score = pos_score + self.pos_centre(s.t()) * offset / torch.sqrt(1 + sigma_pos[graph, None] ** 2)
        pos_score = pos_score / sigma_pos[graph, None]
        pos_score = pos_score - scatter_mean(pos_score, graph, num_graphs)[graph]

        return self._torsion_scores(batch, h, s, graph, num_graphs), pos_score

    def _torsion_scores(self, batch, h: Tensor, s: Tensor, graph: Tensor, num_graphs: int) -> Tensor:
        """Bond-centred convolution -> one 0o scalar per rotatable bond, times sqrt(E[score^2])."""
        c = self.config
        pos, bonds = batch.pos, batch.torsion_index
        if bonds.shape[1] == 0:
            return pos.new_zeros(0)
        u, v = bonds
        atoms, valid, left_out = bond_neighbors(pos, graph, num_graphs, bonds, c.torsion_cutoff,
                                                c.torsion_max_neighbors)
        num_slots, num_bonds = atoms.shape
        atoms, valid = atoms.view(-1), valid.view(-1)
        pos_t = pos.t()
        centre = 0.5 * (pos_t[:, u] + pos_t[:, v])  # (3, T)
        vec = (pos_t[:, atoms].view(3, num_slots, num_bonds) - centre[:, None, :]).view(3, -1)  # (3, K T)
        dist = _safe_norm(vec, 0)
        envelope = cosine_cutoff(dist, c.torsion_cutoff) * valid
        count = valid.view(num_slots, num_bonds).sum(0)  # neighbours per bond, (T,)
        if c.cap_width > 0:
            left_dist = torch.where(left_out >= 0, _safe_norm(pos_t[:, left_out.clamp_min(0)] - centre, 0),
                                    c.torsion_cutoff)
            fade = cap_weights(dist.view(num_slots, num_bonds), left_dist, c.cap_width)
            fade = torch.cat([torch.ones_like(fade[:2]), fade[2:]])  # the bond's own atoms are never capped
            envelope = envelope * fade.view(-1)
            count = envelope.view(num_slots, num_bonds).sum(0)  # counted by weight: continuous
        sh = _spherical_harmonics(self.irreps_sh, vec / dist) * envelope
        axis = pos_t[:, v] - pos_t[:, u]
        axis_sh = _spherical_harmonics("2e", axis / _safe_norm(axis, 0))  # even: symmetric in u <-> v
        axis_sh = axis_sh[:, None, :].expand(-1, num_slots, -1).reshape(axis_sh.shape[0], -1)  # (5, K T)
        edge_sh = self.tor_sh(sh, axis_sh, None)  # (Y(r) x Y2(axis)) up to l = 1, (dim, K T)

        bond_s = s[:, u] + s[:, v]  # (ns, T), symmetric in u <-> v
        edge_emb = _linear_t(self.tor_rbf_proj, self.tor_rbf(dist))
        edge_emb = _linear_t(self.tor_edge_out, torch.nn.functional.silu(edge_emb))  # (edge_dim, K T)
        z = (edge_emb + (self.tor_atom_proj @ s).index_select(1, atoms)).view(-1, num_slots, num_bonds)
        z = torch.nn.functional.silu(z + (self.tor_bond_proj @ bond_s)[:, None, :]).view(-1, atoms.shape[0])
        out = self.tor_tp(h.index_select(1, atoms), edge_sh, _linear_t(self.tor_weight, z), num_slots)  # (dim, T)
        out = out / count.clamp_min(1).sqrt()  # sum / sqrt(#neighbours)

        irreps = self.tor_tp.irreps_out
        blocks = out.split([mul * ir.dim for mul, ir in irreps])
        odd = torch.cat([block for (_, ir), block in zip(irreps, blocks) if ir == o3.Irrep("0o")]).t()
        even = torch.cat([block for (_, ir), block in zip(irreps, blocks) if ir == o3.Irrep("0e")]).t()
        gate = self.tor_even(torch.cat([even, bond_s.t()], dim=1))
        score = self.tor_out(torch.tanh(self.tor_odd(odd)) * gate).squeeze(1)  # odd in `odd`: a 0o scalar
        return score * wrapped_normal_score_norm(batch.sigma_tor[graph[u]]).sqrt()
