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

Three processes (``MODES``) share the model:

* ``"refine"`` (the default): ``y = (d, e)`` as above, ``x_ref`` an ETKDG seed;
* ``"torsions"``: ``y = d`` only, the seed's bond lengths, angles and puckers kept exactly;
* ``"full"``: ``y = e`` only with ``x = x_ref + e``, ``x_ref = 0`` when sampling, and a coordinate
  noise scale ``sigma_full`` geometric up to ``sigma_full_max`` (several Angstrom, the size of a
  molecule): every coordinate starts from the isotropic prior, so rings, puckers and macrocycles
  are generated rather than inherited from a seed. The model sees ``sigma_tor = sigma_tor_min``.
  A model learns it when ``full_fraction`` of its training graphs are noised this way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..chem.torsions import apply_torsion_changes
from ..diffusion import SDE, Product, ProductSDE, Torus, VEGeometric, ZeroCoM
from ..diffusion.torus import sample_wrapped_normal, wrapped_normal_score, wrapped_normal_score_norm

__all__ = ["MODES", "ConformerDiffusionConfig", "ConformerDiffusion"]

MODES = ("refine", "torsions", "full")


@dataclass(frozen=True)
class ConformerDiffusionConfig:
    """Noise ranges (radians and Angstrom), the loss balance, the share of full-coordinate
    training graphs (``full_fraction``; 0 gives a model that cannot run the ``"full"`` mode), and
    how training draws a molecule's conformers: with probability ``w_k ** boltzmann_power / sum``
    of their Boltzmann weights ``w`` (0: uniformly, every minimum counts as coverage counts it;
    1: the Boltzmann distribution)."""

    sigma_tor_min: float = 0.01 * math.pi
    sigma_tor_max: float = math.pi
    sigma_pos_min: float = 0.005
    sigma_pos_max: float = 0.2
    pos_loss_weight: float = 1.0
    sigma_full_max: float = 10.0
    full_fraction: float = 0.0
    boltzmann_power: float = 0.0

    def __post_init__(self):
        if not 0 < self.sigma_tor_min < self.sigma_tor_max:
            raise ValueError(f"need 0 < sigma_tor_min < sigma_tor_max, got {self.sigma_tor_min}, {self.sigma_tor_max}")
        if not 0 < self.sigma_pos_min < self.sigma_pos_max:
            raise ValueError(f"need 0 < sigma_pos_min < sigma_pos_max, got {self.sigma_pos_min}, {self.sigma_pos_max}")
        if not self.sigma_full_max > self.sigma_pos_min:
            raise ValueError(f"need sigma_full_max > sigma_pos_min, got {self.sigma_full_max}")
        if not 0 <= self.full_fraction <= 1:
            raise ValueError(f"full_fraction must be in [0, 1], got {self.full_fraction}")
        if self.boltzmann_power < 0:
            raise ValueError(f"boltzmann_power must be >= 0, got {self.boltzmann_power}")
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
        self.full_schedule = VEGeometric(config.sigma_pos_min, config.sigma_full_max)

    def check_mode(self, mode: str) -> None:
        """Raise ``ValueError`` for an unknown mode, or ``"full"`` with a model not trained for it."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        if mode == "full" and self.config.full_fraction == 0:
            raise ValueError("this model was not trained for the full-coordinate mode (full_fraction = 0); "
                             "train one with `confdiff train --full-fraction F` or use mode 'refine'")

    # --- the state space of a batch ---------------------------------------------------------
    def sde(self, batch, mode: str = "refine") -> ProductSDE:
        """The SDE of ``mode`` for ``batch``; its state is ``cat(d (T,), e.flatten() (3N,))``
        (``"refine"``), ``d`` (``"torsions"``) or ``e.flatten()`` (``"full"``)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        num_graphs = batch.num_graphs
        spaces, shapes, sdes = [], [], []
        if mode != "full":
            tor_batch = batch.batch[batch.torsion_index[0]]  # graph of each torsion
            spaces.append(Torus(tor_batch, num_graphs))
            shapes.append((tor_batch.shape[0],))
            sdes.append(SDE(self.tor_schedule, spaces[-1]))
        if mode != "torsions":
            spaces.append(ZeroCoM(batch.batch, num_graphs))
            shapes.append((batch.num_nodes, 3))
            sdes.append(SDE(self.full_schedule if mode == "full" else self.pos_schedule, spaces[-1]))
        return ProductSDE(sdes, Product(spaces, shapes))

    @staticmethod
    def _parts(sde: ProductSDE) -> tuple[bool, bool]:
        """Whether the state of ``sde`` holds torsion changes ``d`` and coordinate displacements ``e``."""
        kinds = [type(space) for space in sde.space.spaces]
        return Torus in kinds, ZeroCoM in kinds

    def positions(self, sde: ProductSDE, batch, pos_ref: Tensor, y: Tensor) -> Tensor:
        """Conformer ``x(y) = T(pos_ref, d) + e`` (without the parts ``sde`` lacks), shape (N, 3)."""
        has_tor, has_pos = self._parts(sde)
        parts = sde.space.split(y)
        pos = apply_torsion_changes(pos_ref, batch, parts[0]) if has_tor else pos_ref
        return pos + parts[-1] if has_pos else pos

    def sigmas(self, t: Tensor, mode: str = "refine") -> tuple[Tensor, Tensor]:
        """``(sigma_tor, sigma_pos)`` at times ``t`` in ``mode``; a part that does not diffuse in
        ``mode`` stays at its smallest level."""
        zero = torch.zeros_like(t)
        schedule = self.full_schedule if mode == "full" else self.pos_schedule
        return self.tor_schedule.sigma(zero if mode == "full" else t), schedule.sigma(zero if mode == "torsions" else t)

    def noisy_batch(self, batch, pos: Tensor, t: Tensor, mode: str = "refine"):
        """A shallow copy of ``batch`` with ``pos`` and the per-graph noise levels of ``t (G,)`` in ``mode``."""
        noisy = copy.copy(batch)
        noisy.pos = pos
        noisy.sigma_tor, noisy.sigma_pos = self.sigmas(t, mode)
        return noisy

    def score_fn(self, model, batch, pos_ref: Tensor, sde: ProductSDE):
        """``score_fn(y, t)`` of the state of ``sde`` (from :meth:`sde`) for the core's samplers and likelihood."""
        has_tor, has_pos = self._parts(sde)
        mode = "refine" if has_tor and has_pos else "torsions" if has_tor else "full"

        def score(y: Tensor, t: Tensor) -> Tensor:
            pos = self.positions(sde, batch, pos_ref, y)
            tor_score, pos_score = model(self.noisy_batch(batch, pos, t, mode))
            parts = [tor_score] * has_tor + [pos_score] * has_pos
            return sde.space.join([p.to(y.dtype) for p in parts])

        return score

    # --- training -----------------------------------------------------------------------------
    def loss(self, model, batch, generator: torch.Generator | None = None) -> Tensor:
        """Per-graph denoising score matching loss, shape (G,).

        ``batch.pos`` holds data conformers. Draw ``t ~ U(0, 1)`` per graph; a share
        ``full_fraction`` of the graphs take the ``"full"`` noise levels (``sigma_tor_min`` and
        ``sigma_full(t)``), the others ``sigma_tor(t)`` and ``sigma_pos(t)``; then
        ``d ~ WN(0, sigma_tor)``, ``e ~ N(0, sigma_pos^2)`` (zero CoM). The targets are the exact
        conditional scores ``grad log WN(d; sigma_tor)`` and ``-e / sigma_pos^2``. Each part's error
        is measured in units of its expected score norm (torsional diffusion's normalisation;
        ``1 / sigma^2`` for a Gaussian) and averaged over the graph's torsions and coordinate
        degrees of freedom.
        """
        sde = self.sde(batch)
        tor_space, pos_space = sde.space.spaces
        device, dtype = batch.pos.device, batch.pos.dtype
        t = torch.rand(batch.num_graphs, generator=generator, device=device, dtype=dtype)
        graph_sigma_tor, sigma_pos = self.sigmas(t)
        if self.config.full_fraction > 0:
            full = torch.rand(batch.num_graphs, generator=generator, device=device) < self.config.full_fraction
            full_tor, full_pos = self.sigmas(t, "full")
            graph_sigma_tor = torch.where(full, full_tor, graph_sigma_tor)
            sigma_pos = torch.where(full, full_pos, sigma_pos)
        sigma_tor = tor_space.broadcast(graph_sigma_tor, batch.torsion_index[0].to(dtype))
        d = sample_wrapped_normal(sigma_tor.shape, sigma_tor, generator=generator)
        e = pos_space.noise(batch.pos, generator) * pos_space.broadcast(sigma_pos, batch.pos)
        noisy = copy.copy(batch)
        noisy.pos = apply_torsion_changes(batch.pos, batch, d) + e
        noisy.sigma_tor, noisy.sigma_pos = graph_sigma_tor, sigma_pos
        tor_pred, pos_pred = model(noisy)

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
