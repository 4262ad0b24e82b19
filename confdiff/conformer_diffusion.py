r"""The conformer diffusion: torsions on the torus and coordinates on the zero-CoM space.

A conformer is described relative to a reference conformer ``pos_ref`` (an ETKDG seed when
sampling, the data conformer when training or scoring) by a flat state ``y = (d, e)``:

* ``d`` in ``T^m``: changes of the ``m`` rotatable torsions (a wrapped-normal VE diffusion,
  ``sigma_tor`` geometric from ``0.01 pi`` to ``pi`` as in torsional diffusion, Jing et al. 2022);
* ``e`` in ``R^{3N}`` with zero centre of mass: a small isotropic Gaussian displacement of every
  atom (VE, ``sigma_pos`` geometric in Angstrom) that refines bond lengths, angles and puckers.

The conformer is ``x(y) = T(pos_ref, d) + e`` with ``T`` the rigid rotations of the torsions'
moving sides. Both parts share one time ``t``, so the state lives in the product space
``T^m x R^{3N-3}`` of :class:`confdiff.diffusion.Product` and every sampler and the likelihood of
the core run on it unchanged. The prior is uniform on the torus times an isotropic Gaussian on the
zero-CoM subspace; the score network is SE(3)-equivariant (torsion scores invariant, coordinate
scores rotating with the input), so the density of every step is SE(3)-invariant.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .chem.torsions import apply_torsion_changes
from .diffusion import SDE, Product, ProductSDE, Torus, VEGeometric, ZeroCoM
from .diffusion.torus import sample_wrapped_normal, wrapped_normal_score, wrapped_normal_score_norm

__all__ = ["ConformerDiffusionConfig", "ConformerDiffusion"]


@dataclass(frozen=True)
class ConformerDiffusionConfig:
    """Noise ranges of the two parts (radians and Angstrom) and the loss balance."""

    sigma_tor_min: float = 0.01 * math.pi
    sigma_tor_max: float = math.pi
    sigma_pos_min: float = 0.005
    sigma_pos_max: float = 0.2
    pos_loss_weight: float = 1.0

    def __post_init__(self):
        if not 0 < self.sigma_tor_min < self.sigma_tor_max:
            raise ValueError(f"need 0 < sigma_tor_min < sigma_tor_max, got {self.sigma_tor_min}, {self.sigma_tor_max}")
        if not 0 < self.sigma_pos_min < self.sigma_pos_max:
            raise ValueError(f"need 0 < sigma_pos_min < sigma_pos_max, got {self.sigma_pos_min}, {self.sigma_pos_max}")
        if self.pos_loss_weight < 0:
            raise ValueError(f"pos_loss_weight must be >= 0, got {self.pos_loss_weight}")

    def to_dict(self) -> dict:
        return asdict(self)


class ConformerDiffusion:
    """The process over ``y = (d, e)`` for a PyG batch of ``MolGraph`` (one graph per conformer)."""

    def __init__(self, config: ConformerDiffusionConfig = ConformerDiffusionConfig()):
        self.config = config
        self.tor_schedule = VEGeometric(config.sigma_tor_min, config.sigma_tor_max)
        self.pos_schedule = VEGeometric(config.sigma_pos_min, config.sigma_pos_max)

    # --- the state space of a batch ---------------------------------------------------------
    def sde(self, batch, *, coordinates: bool = True) -> ProductSDE:
        """The product SDE for ``batch``; its state is ``cat(d (T,), e.flatten() (3N,))``.

        ``coordinates=False`` gives the torsion-only process (state ``d``; the local structure of
        ``pos_ref`` is kept exactly, as in torsional diffusion).
        """
        num_graphs = batch.num_graphs
        tor_batch = batch.batch[batch.torsion_index[0]]  # graph of each torsion
        spaces, shapes = [Torus(tor_batch, num_graphs)], [(tor_batch.shape[0],)]
        sdes = [SDE(self.tor_schedule, spaces[0])]
        if coordinates:
            spaces.append(ZeroCoM(batch.batch, num_graphs))
            shapes.append((batch.num_nodes, 3))
            sdes.append(SDE(self.pos_schedule, spaces[1]))
        return ProductSDE(sdes, Product(spaces, shapes))

    def positions(self, sde: ProductSDE, batch, pos_ref: Tensor, y: Tensor) -> Tensor:
        """Conformer ``x(y) = T(pos_ref, d) + e`` (``e = 0`` for the torsion-only process), shape (N, 3)."""
        d, *e = sde.space.split(y)
        pos = apply_torsion_changes(pos_ref, batch, d)
        return pos + e[0] if e else pos

    def noisy_batch(self, batch, pos: Tensor, t: Tensor, *, coordinates: bool = True):
        """A shallow copy of ``batch`` with ``pos`` and the per-graph noise levels of ``t (G,)``
        (the smallest coordinate noise level when the coordinates do not diffuse)."""
        noisy = copy.copy(batch)
        noisy.pos = pos
        noisy.sigma_tor = self.tor_schedule.sigma(t)
        noisy.sigma_pos = self.pos_schedule.sigma(t if coordinates else torch.zeros_like(t))
        return noisy

    def score_fn(self, model, batch, pos_ref: Tensor, sde: ProductSDE):
        """``score_fn(y, t)`` of the state of ``sde`` for the core's samplers and likelihood."""
        coordinates = len(sde.space.spaces) == 2

        def score(y: Tensor, t: Tensor) -> Tensor:
            pos = self.positions(sde, batch, pos_ref, y)
            tor_score, pos_score = model(self.noisy_batch(batch, pos, t, coordinates=coordinates))
            parts = [tor_score, pos_score] if coordinates else [tor_score]
            return sde.space.join([p.to(y.dtype) for p in parts])

        return score

    # --- training -----------------------------------------------------------------------------
    def loss(self, model, batch, generator: torch.Generator | None = None) -> Tensor:
        """Per-graph denoising score matching loss, shape (G,).

        ``batch.pos`` holds data conformers. Draw ``t ~ U(0, 1)`` per graph, ``d ~ WN(0, sigma_tor)``,
        ``e ~ N(0, sigma_pos^2)`` (zero CoM); the targets are the exact conditional scores
        ``grad log WN(d; sigma_tor)`` and ``-e / sigma_pos^2``. Each part's error is measured in
        units of its expected score norm (torsional diffusion's normalisation; ``1 / sigma^2`` for
        a Gaussian) and averaged over the graph's torsions and coordinate degrees of freedom.
        """
        sde = self.sde(batch)
        tor_space, pos_space = sde.space.spaces
        device, dtype = batch.pos.device, batch.pos.dtype
        t = torch.rand(batch.num_graphs, generator=generator, device=device, dtype=dtype)
        sigma_tor = tor_space.broadcast(self.tor_schedule.sigma(t), batch.torsion_index[0].to(dtype))
        d = sample_wrapped_normal(sigma_tor.shape, sigma_tor, generator=generator)
        sigma_pos = self.pos_schedule.sigma(t)
        e = pos_space.noise(batch.pos, generator) * pos_space.broadcast(sigma_pos, batch.pos)
        pos = apply_torsion_changes(batch.pos, batch, d) + e
        tor_pred, pos_pred = model(self.noisy_batch(batch, pos, t))

        tor_target = wrapped_normal_score(d, sigma_tor)
        tor_err = (tor_pred - tor_target) ** 2 / wrapped_normal_score_norm(sigma_tor)
        # per-graph mean over torsions (0 for a rigid graph; a batch may hold no torsion at all)
        n_tor = torch.bincount(tor_space.batch, minlength=batch.num_graphs).to(tor_err.dtype)
        tor_sum = torch.zeros(batch.num_graphs, dtype=tor_err.dtype, device=device)
        tor_loss = tor_sum.index_add_(0, tor_space.batch, tor_err) / n_tor.clamp(min=1.0)

        pos_target = -e / pos_space.broadcast(sigma_pos**2, e)
        pos_err = ((pos_pred - pos_target) * pos_space.broadcast(sigma_pos, e)) ** 2
        pos_loss = pos_space.sum(pos_err) / pos_space.dim(e).clamp(min=1.0)
        return tor_loss + self.config.pos_loss_weight * pos_loss
