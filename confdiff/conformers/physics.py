r"""Physics guidance: a physical potential's gradient added to the score near the end of the reverse diffusion.

The guided score of the conformer diffusion's state ``y`` (torsion changes ``d`` and / or coordinate
displacements ``e``, :mod:`confdiff.conformers.diffusion`) is

    s_guided(y, t) = s_model(y, t) + lambda(t) * grad_y [ -E(x(y)) / kT ],

guidance with an energy in place of a classifier's log-probability (Dhariwal & Nichol 2021, Alg. 1,
with ``log p(c | x) = -E(x) / kT``). The gradient reaches ``y`` through the chart ``x(y) = T(x_ref, d)
+ e``: the coordinate components are ``-dE/dx / kT`` projected to zero centre of mass, the torsion
components ``-(dT/dd)^T dE/dx / kT`` (the Jacobian of :func:`~confdiff.chem.torsions.apply_torsion_changes`
applied by autograd, exact whatever order the torsions are applied in). At a fixed ``t`` the
guided score is the score of ``p_t(y) exp(-lambda E / kT)``; as ``t -> 0`` that is the tilted density
``p_model(x) exp(-lambda E(x) / kT)`` (what Langevin dynamics at small ``t`` samples; a reverse-SDE run
approaches it as far as its last steps mix). ``lambda(t)`` (:class:`GuidanceSchedule`) is 0 at high
noise, where ``x(y)`` is far from a molecule and ``E`` meaningless.

Step stability. An Euler-Maruyama step of the VE reverse SDE moves the state by about
``d(sigma^2) * score``; a stiff term (a bond at 700 kcal/mol/A^2) times ``d(sigma^2) / kT`` overshoots
by Angstroms in the full mode, where the coordinate ``sigma`` reaches 10 A. The guidance term of each
atom (coordinate part) and each torsion is therefore capped at ``max_score / sigma`` of its part: the
model's own score is of order ``1 / sigma``, so one step moves an atom (a torsion) by at most
``max_score`` times as far as the denoiser's own step, at any stiffness, and the cap lifts as
``sigma -> 0`` (for bounded forces the exact tilted score is recovered).

Potentials are built once per molecule (``from_mol``) and evaluate conformers in batches:
``energy_and_grad(pos (B, N, 3)) -> (E (B,), dE/dx (B, N, 3))`` in kcal/mol and kcal/mol/A.

* :class:`RepulsionPotential`: cheap, torch, vectorised over terms and conformers; flat-bottom
  harmonic terms keeping 1-2 and 1-3 distances within RDKit's distance-geometry bounds, a soft
  repulsion on pairs three or more bonds apart that come closer than their DG lower bound (the
  bound PoseBusters' internal clash check scales), a planarity term on the groups the validity
  checks require flat, and a flat-bottom term on the signs of the stereo elements the input specifies.
* :class:`MMFFPotential`: MMFF94 through RDKit, one force field per molecule, ``CalcEnergy`` /
  ``CalcGrad`` per conformer. ``"mmff"`` is MMFF94 as parametrised (vacuum, dielectric 1);
  ``"mmff-screened"`` gives its electrostatics a distance-dependent dielectric ``SCREENED_DIELECTRIC * r``
  (RDKit's MMFF option), which damps the vacuum collapse of polar groups onto each other.

The density of ``confdiff score`` (:mod:`confdiff.conformers.likelihood`) is the model's own:
guidance changes sampling only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers
from torch import Tensor

from ..chem.stereo import StereoCheck
from ..chem.validity import flat_groups

__all__ = [
    "DEFAULT_GUIDANCE",
    "GUIDANCE_CHOICES",
    "GUIDANCE_WINDOWS",
    "KT_298",
    "BatchPotential",
    "GuidanceSchedule",
    "MMFFPotential",
    "Potential",
    "RepulsionPotential",
    "SCREENED_DIELECTRIC",
    "guidance_schedule",
    "make_potential",
    "physics_guidance",
]

GUIDANCE_CHOICES = ("none", "repulsion", "mmff", "mmff-screened")
#: ``"mmff-screened"``: MMFF94 electrostatics over a distance-dependent dielectric ``SCREENED_DIELECTRIC * r``
#: (``r`` in Angstrom), the common screened choice for conformer searches in solution
SCREENED_DIELECTRIC = 4.0
KT_298 = 0.0019872043 * 298.15  # kcal/mol: Boltzmann's constant (kcal/mol/K) times 298.15 K
#: per mode, ``(potential, scale)`` when the user names neither: refine from PoseBusters validity and micro-set
#: and DRUGS COV/MAT together with the generator's diverse selection of oversampled draws (MMFF94 at 3; at 1
#: before session 8); torsions as refine was before; full from validity
DEFAULT_GUIDANCE = {"refine": ("mmff", 3.0), "torsions": ("mmff", 1.0), "full": ("repulsion", 10.0)}
#: per mode, ``(t_start, t_full)`` of :class:`GuidanceSchedule`
GUIDANCE_WINDOWS = {"refine": (0.7, 0.4), "torsions": (0.7, 0.4), "full": (0.8, 0.5)}
#: cap of each atom's / torsion's guidance term, in units of ``1 / sigma`` of its part
MAX_SCORE = 3.0


class Potential(Protocol):
    """A potential of one molecule evaluated on a batch of its conformers."""

    num_atoms: int

    def energy_and_grad(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``(E (B,), dE/dx (B, N, 3))`` in kcal/mol and kcal/mol/A for ``pos (B, N, 3)`` in A."""


# --- the cheap potential -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RepulsionPotential:
    """Bonded geometry, planarity, stereo signs and soft repulsion: cheap terms from the molecular graph.

    ``E = E_pair + E_plane + E_stereo``, each a sum over conformers' terms:

    * ``E_pair = sum_p k_p [relu(l_p - d_p)^2 + relu(d_p - u_p)^2]`` over atom pairs ``p`` with
      distance ``d_p``: 1-2 and 1-3 pairs (bond lengths, angles) keep ``[l_p, u_p]`` with ``k_bond``
      and ``k_angle``, and so do 1-4 pairs with narrow bounds (rigid: rings, double bonds); other
      pairs 3+ bonds apart have ``u_p = inf`` and ``k_repulsion`` (a soft clash term). Bounds come
      from ``rdDistGeom.GetMoleculeBoundsMatrix`` with PoseBusters' settings (1-5 bounds, scaled van
      der Waals lower bounds, triangle smoothing).
    * ``E_plane = k_plane sum_g sum_{a in g} (n_g . (x_a - c_g))^2`` over the groups ``g`` that
      :func:`~confdiff.chem.validity.flat_groups` lists (aromatic rings, ``C(*)(*)=C(*)(*)``): squared
      distances from the least-squares plane, centroid ``c_g``, unit normal ``n_g`` the eigenvector of
      the smallest eigenvalue of the scatter matrix ``S_g = sum_a (x_a - c_g)(x_a - c_g)^T``, so
      ``E_plane = k_plane sum_g lambda_min(S_g)``. Since ``n_g`` minimises the sum, its own change drops
      out of the gradient (envelope theorem) and ``dE/dx_a = 2 k_plane (n_g . (x_a - c_g)) n_g`` is
      exact wherever ``lambda_min`` is simple; at a degenerate (collinear, collapsed) group it is a
      one-sided derivative. Autograd through ``eigh`` would divide by eigenvalue gaps there, and
      improper dihedrals per sp2 centre are singular for collinear neighbours and do not measure the
      checks' distance to the group's plane.
    * ``E_stereo = k_stereo sum_s relu(margin - sign_s q_s)^2`` over the specified stereo elements of
      :class:`~confdiff.chem.stereo.StereoCheck`, with its signed quantities ``q_s``: a tetrahedral
      centre's chiral volume ``v1 . (v2 x v3)`` (A^3) and, for a double bond ``a - b = c - d``,
      ``|c - b|^2`` times the dot product of ``a``'s and ``d``'s offsets perpendicular to the bond
      (A^4, positive when cis). A reflection inverts every centre and the full-mode generator
      reflects such a draw back, so the centres' signs are those of the input or of its mirror image,
      whichever costs less in each conformer (``E`` is reflection invariant).

    pairs : (P, 2) long; lower, upper, k : (P,) float64; planes : (G, k) long, one per group size k;
    stereo : (S, 4) long rows of StereoCheck (centres first); stereo_sign : (S,) float64, +1 / -1;
    num_centres : how many rows of ``stereo`` are centres.
    """

    num_atoms: int
    pairs: Tensor
    lower: Tensor
    upper: Tensor
    k: Tensor
    planes: tuple[Tensor, ...]
    k_plane: float
    stereo: Tensor
    stereo_sign: Tensor
    num_centres: int
    k_stereo: float
    margin: float

    @classmethod
    def from_mol(cls, mol: Chem.Mol, *, k_bond: float = 100.0, k_angle: float = 50.0,
                 k_repulsion: float = 10.0, k_plane: float = 200.0, k_stereo: float = 10.0, margin: float = 0.5,
                 contact: float = 1.0, rigid_width: float = 0.3, hydrogens: bool = True) -> RepulsionPotential:
        """The potential of ``mol`` (sanitised, explicit hydrogens as in the conformers). Pairs 3+ bonds
        apart repel below ``contact`` times their DG lower bound (PoseBusters calls a pair closer than
        0.7 times it a clash); ``hydrogens=False`` leaves out the repulsion of pairs with a hydrogen.
        1-4 pairs whose DG bounds are narrower than ``rigid_width`` (A) keep both bounds with
        ``k_angle``: in rings, across double bonds and amides these bounds encode planarity.
        ``k_plane`` (kcal/mol/A^2), ``k_stereo`` (kcal/mol per squared unit of ``q``) and ``margin``
        (A^3 for centres, A^4 for double bonds; natural values are 2-3) weight the other terms:
        ``k_plane = 200`` from 140 raw full-mode draws of the examples (aromatic / double-bond
        flatness failures: 25 / 30 at 50, 3 / 10 at 200; 400 and 1000 broke bonds and made clashes)."""
        if min(k_bond, k_angle, k_repulsion, k_plane, k_stereo, margin) < 0:
            raise ValueError(f"force constants and margin must be >= 0, got {k_bond}, {k_angle}, {k_repulsion}, "
                             f"{k_plane}, {k_stereo}, {margin}")
        if not 0 < contact <= 1:
            raise ValueError(f"contact must be in (0, 1], got {contact}")
        bounds = rdDistGeom.GetMoleculeBoundsMatrix(mol, set15bounds=True, scaleVDW=True,
                                                    doTriangleSmoothing=True, useMacrocycle14config=False)
        topo = Chem.GetDistanceMatrix(mol)
        i, j = np.triu_indices(mol.GetNumAtoms(), k=1)
        hops = topo[i, j]
        heavy = np.array([a.GetAtomicNum() > 1 for a in mol.GetAtoms()])
        keep = (hops >= 1) & (hops <= 2) | (hops >= 3) & (hydrogens | heavy[i] & heavy[j])
        i, j, hops = i[keep], j[keep], hops[keep]
        lower, upper = bounds[j, i], bounds[i, j]  # RDKit: lower bounds below the diagonal
        bonded = (hops <= 2) | (hops == 3) & (upper - lower < rigid_width)
        upper = np.where(bonded, upper, np.inf)
        lower = np.where(bonded, lower, contact * lower)
        k = np.select([hops == 1, bonded], [k_bond, k_angle], k_repulsion)
        check = StereoCheck.from_mol(mol)
        rows = np.concatenate([check.centres, check.bonds])
        specified = check.expected != 0
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
        as_index = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
        return cls(mol.GetNumAtoms(), as_index(np.stack([i, j], 1)), as_t(lower), as_t(upper), as_t(k),
                   tuple(as_index(g) for g in flat_groups(mol)), k_plane, as_index(rows[specified]),
                   as_t(check.expected[specified]), int(specified[:len(check.centres)].sum()), k_stereo, margin)

    def energy_and_grad(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``(E (B,), dE/dx (B, N, 3))`` for ``pos (B, N, 3)`` (any float dtype, any device)."""
        i, j = self.pairs.to(pos.device).unbind(1)
        lower, upper, k = (v.to(pos) for v in (self.lower, self.upper, self.k))
        diff = pos[:, i] - pos[:, j]  # (B, P, 3)
        dist = diff.norm(dim=-1).clamp(min=1e-6)
        short, long = (lower - dist).clamp(min=0), (dist - upper).clamp(min=0)
        energy = (k * (short**2 + long**2)).sum(-1)
        d_dist = 2 * k * (long - short)  # dE/dd per pair, (B, P)
        force = (d_dist / dist).unsqueeze(-1) * diff  # dE/dx_i of each pair; dE/dx_j is its negative
        grad = torch.zeros_like(pos).index_add_(1, i, force).index_add_(1, j, -force)
        for groups in self.planes:
            group_energy, group_grad = _plane_terms(pos, groups.to(pos.device), self.k_plane)
            energy = energy + group_energy
            grad.index_add_(1, groups.to(pos.device).flatten(), group_grad.flatten(1, 2))
        if len(self.stereo):
            stereo = self.stereo.to(pos.device)
            stereo_energy, stereo_grad = self._stereo_terms(pos, stereo)
            energy = energy + stereo_energy
            grad.index_add_(1, stereo.flatten(), stereo_grad.flatten(1, 2))
        return energy, grad

    def _stereo_terms(self, pos: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``E_stereo (B,)`` and its gradient on each row's atoms ``(B, S, 4, 3)`` for ``pos (B, N, 3)``."""
        c = self.num_centres
        q, dq = _signed_volumes(pos, rows[:c])
        q_bond, dq_bond = _double_bond_sides(pos, rows[c:])
        q, dq = torch.cat([q, q_bond], 1), torch.cat([dq, dq_bond], 1)  # (B, S), (B, S, 4, 3)
        sign = self.stereo_sign.to(pos)
        mirror = torch.cat([-sign[:c], sign[c:]])  # the mirror image: centres inverted, double bonds kept

        def violation(s):  # (B, S): how far each element is short of margin on the side s
            return (self.margin - s * q).clamp(min=0)

        mirrored = (violation(mirror) ** 2).sum(-1) < (violation(sign) ** 2).sum(-1)  # (B,)
        sign = torch.where(mirrored.unsqueeze(-1), mirror, sign)  # (B, S)
        short = violation(sign)
        d_q = -2 * self.k_stereo * sign * short  # dE/dq, (B, S)
        return self.k_stereo * (short**2).sum(-1), d_q[..., None, None] * dq


def _plane_terms(pos: Tensor, groups: Tensor, k_plane: float) -> tuple[Tensor, Tensor]:
    """``k_plane sum_g lambda_min(S_g)`` (B,) and its gradient ``(B, G, k, 3)`` on the atoms of groups (G, k)."""
    x = pos[:, groups]  # (B, G, k, 3)
    x = x - x.mean(2, keepdim=True)
    scatter = x.detach().transpose(-1, -2) @ x.detach()  # (B, G, 3, 3)
    normal = torch.linalg.eigh(scatter.nan_to_num())[1][..., 0]  # eigenvalues ascend: the smallest's vector
    dist = (x * normal.unsqueeze(2)).sum(-1)  # (B, G, k) signed distances from the plane
    return k_plane * (dist**2).sum((1, 2)), 2 * k_plane * dist.unsqueeze(-1) * normal.unsqueeze(2)


def _signed_volumes(pos: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Chiral volumes ``v1 . (v2 x v3)``, ``v_k = x[n_k] - x[c]``, of rows ``(c, n1, n2, n3)`` (C, 4):
    ``(B, C)`` and their gradients on the rows' atoms ``(B, C, 4, 3)``."""
    x = pos[:, rows]  # (B, C, 4, 3)
    v1, v2, v3 = (x[:, :, k] - x[:, :, 0] for k in (1, 2, 3))
    d1, d2, d3 = v2.cross(v3, dim=-1), v3.cross(v1, dim=-1), v1.cross(v2, dim=-1)
    return (v1 * d1).sum(-1), torch.stack([-(d1 + d2 + d3), d1, d2, d3], 2)


def _double_bond_sides(pos: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``q = (u . w)(e . e) - (u . e)(w . e)`` for rows ``(a, b, c, d)`` (D, 4) with ``u = a - b``,
    ``w = d - c``, ``e = c - b``: ``|e|^2`` times the dot product of ``u`` and ``w`` perpendicular to
    ``e`` (StereoCheck's cis / trans quantity), ``(B, D)``, and its gradients ``(B, D, 4, 3)``."""
    x = pos[:, rows]  # (B, D, 4, 3)
    u, w, e = x[:, :, 0] - x[:, :, 1], x[:, :, 3] - x[:, :, 2], x[:, :, 2] - x[:, :, 1]
    uw, ee, ue, we = ((p * q).sum(-1, keepdim=True) for p, q in ((u, w), (e, e), (u, e), (w, e)))
    d_u, d_w = ee * w - we * e, ee * u - ue * e
    d_e = 2 * uw * e - we * u - ue * w
    q = (uw * ee - ue * we).squeeze(-1)
    return q, torch.stack([d_u, -d_u - d_e, d_e - d_w, d_w], 2)


# --- MMFF94 ---------------------------------------------------------------------------------------------

_DISTANCE_DEPENDENT = 2  # RDKit's code of the MMFF dielectric model eps(r) = constant * r


class MMFFPotential:
    """MMFF94 through RDKit: one ``MMFFGetMoleculeForceField`` per molecule, evaluated per conformer.

    screened : electrostatics over a distance-dependent dielectric ``SCREENED_DIELECTRIC * r`` in place of
    MMFF94's constant 1. Raises ``ValueError`` when MMFF94 has no parameters for the molecule.
    """

    def __init__(self, mol: Chem.Mol, variant: str = "MMFF94", *, screened: bool = False):
        probe = Chem.Mol(mol)
        if probe.GetNumConformers() == 0:  # the force field needs a conformer; its coordinates are not used
            probe.AddConformer(Chem.Conformer(probe.GetNumAtoms()), assignId=True)
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(probe, mmffVariant=variant)
        if props is None:
            raise ValueError(f"{variant} has no parameters for {Chem.MolToSmiles(Chem.RemoveHs(mol))}")
        if screened:
            props.SetMMFFDielectricModel(_DISTANCE_DEPENDENT)
            props.SetMMFFDielectricConstant(SCREENED_DIELECTRIC)
        self.num_atoms = probe.GetNumAtoms()
        self._mol = probe  # the force field keeps a reference to it
        self._ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(probe, props, ignoreInterfragInteractions=False)

    @classmethod
    def from_mol(cls, mol: Chem.Mol, *, screened: bool = False) -> MMFFPotential:
        return cls(mol, screened=screened)

    def energy_and_grad(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``(E (B,), dE/dx (B, N, 3))`` for ``pos (B, N, 3)``; computed in float64 on the CPU."""
        flat = pos.detach().to("cpu", torch.float64).reshape(pos.shape[0], -1).numpy()
        energy = np.empty(len(flat))
        grad = np.empty_like(flat)
        for b, coords in enumerate(flat):
            values = coords.tolist()
            energy[b] = self._ff.CalcEnergy(values)
            grad[b] = self._ff.CalcGrad(values)
        return (torch.as_tensor(energy).to(pos), torch.as_tensor(grad).reshape(pos.shape).to(pos))


def make_potential(kind: str, mol: Chem.Mol) -> Potential | None:
    """The potential named ``kind`` (one of ``GUIDANCE_CHOICES``) for ``mol``; None for ``"none"``."""
    if kind == "none":
        return None
    if kind == "repulsion":
        return RepulsionPotential.from_mol(mol)
    if kind in ("mmff", "mmff-screened"):
        return MMFFPotential.from_mol(mol, screened=kind == "mmff-screened")
    raise ValueError(f"unknown guidance {kind!r}; choose from {GUIDANCE_CHOICES}")


class BatchPotential:
    """Potentials of several molecules over a PyG batch whose graphs are runs of conformers.

    segments : ``(potential, number of conformers)`` in batch order; the batch's positions
    ``(N_total, 3)`` are consecutive blocks of ``count * potential.num_atoms`` atoms.
    """

    def __init__(self, segments: Sequence[tuple[Potential, int]]):
        self.segments = list(segments)

    def __call__(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``(E (G,), dE/dx (N_total, 3))`` for the batch's positions ``pos (N_total, 3)``."""
        energies, grads, start = [], [], 0
        for potential, count in self.segments:
            size = count * potential.num_atoms
            energy, grad = potential.energy_and_grad(pos[start:start + size].reshape(count, potential.num_atoms, 3))
            energies.append(energy)
            grads.append(grad.reshape(size, 3))
            start += size
        if start != pos.shape[0]:
            raise ValueError(f"the potentials cover {start} atoms, the batch has {pos.shape[0]}")
        return torch.cat(energies), torch.cat(grads)


# --- the guided score -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuidanceSchedule:
    """``lambda(t) = scale * clamp((t_start - t) / (t_start - t_full), 0, 1)``: zero for ``t >= t_start``,
    rising linearly to ``scale`` at ``t_full`` and constant below."""

    scale: float = 1.0
    t_start: float = 0.5
    t_full: float = 0.25

    def __post_init__(self):
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        if not 0 <= self.t_full < self.t_start:
            raise ValueError(f"need 0 <= t_full < t_start, got t_full={self.t_full}, t_start={self.t_start}")

    def __call__(self, t: Tensor) -> Tensor:
        return self.scale * ((self.t_start - t) / (self.t_start - self.t_full)).clamp(0.0, 1.0)


def guidance_schedule(mode: str, scale: float) -> GuidanceSchedule:
    """The schedule of ``mode`` (``GUIDANCE_WINDOWS``) with ``lambda = scale`` at the end."""
    if mode not in GUIDANCE_WINDOWS:
        raise ValueError(f"unknown mode {mode!r}; choose from {tuple(GUIDANCE_WINDOWS)}")
    return GuidanceSchedule(scale, *GUIDANCE_WINDOWS[mode])


def _cap_rows(v: Tensor, limit: Tensor) -> Tensor:
    """Scale each row of ``v`` (an atom's vector, or a torsion's scalar) down to norm ``<= limit`` (broadcast)."""
    norm = v.norm(dim=-1, keepdim=True) if v.ndim > 1 else v.abs()
    return v * (limit / norm.clamp(min=1e-30)).clamp(max=1.0)


def physics_guidance(score_fn: Callable[[Tensor, Tensor], Tensor], sde, positions: Callable[[Tensor], Tensor],
                     potential: Callable[[Tensor], tuple[Tensor, Tensor]], schedule: GuidanceSchedule, *,
                     kT: float = KT_298, max_score: float | None = MAX_SCORE):
    """Score function ``s(y, t) + lambda(t) grad_y[-E(x(y)) / kT]`` of the conformer diffusion's state.

    score_fn : the model's ``score_fn(y, t)``; sde : the ``ProductSDE`` of the state (torus part
    for torsion changes, zero-CoM part for coordinates, in that order, as
    ``ConformerDiffusion.sde`` builds it); positions : ``y -> x (N_total, 3)``, differentiable
    (``ConformerDiffusion.positions``); potential : ``x (N_total, 3) -> (E (G,), dE/dx (N_total, 3))``
    (:class:`BatchPotential`); max_score : cap on each atom's / torsion's guidance term in units of
    ``1 / sigma`` of its part (None: no cap).
    """
    from ..diffusion.spaces import ZeroCoM

    def guided(y: Tensor, t: Tensor) -> Tensor:
        score = score_fn(y, t)
        lam = schedule(t)  # (B,)
        if y.numel() == 0 or not bool((lam > 0).any()):  # nothing to move (rigid molecules in the torsions mode)
            return score
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            pos = positions(yg)
            _, grad_x = potential(pos.detach())
            (grad_y,) = torch.autograd.grad(pos, yg, grad_outputs=-grad_x.to(pos.dtype) / kT)
        parts = []
        for part_sde, space, part in zip(sde.sdes, sde.space.spaces, sde.space.split(grad_y)):
            if max_score is not None:
                part = _cap_rows(part, space.broadcast(max_score / part_sde.schedule.sigma(t).to(part), part))
            if isinstance(space, ZeroCoM):
                part = space.project(part)  # onto the tangent space: zero centre of mass
            parts.append(part * space.broadcast(lam.to(part), part))
        return score + sde.space.join(parts)

    return guided
