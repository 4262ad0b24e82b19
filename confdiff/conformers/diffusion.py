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

Three processes (``MODES``, one :class:`~confdiff.conformers.modes.Mode` each) share the model:

* ``"refine"``: ``y = (d, e)`` as above, ``x_ref`` an ETKDG seed;
* ``"torsions"`` (the sampler's default, ``modes.DEFAULT_MODE``): ``y = d`` only, the seed's bond
  lengths, angles and puckers kept exactly;
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
from ..diffusion.losses import denoising_score_matching_loss
from ..diffusion.schedules import Schedule
from .modes import MODES, REFINE, Mode

__all__ = ["MODES", "ConformerDiffusionConfig", "ConformerDiffusion", "ConformerSDE", "Mode"]


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

    def check_mode(self, mode: Mode | str) -> Mode:
        """The :class:`Mode` of ``mode``; ``ValueError`` for an unknown mode, or the full mode with a
        model not trained for it."""
        mode = Mode.of(mode)
        if mode.full and self.config.full_fraction == 0:
            raise ValueError("this model was not trained for the full-coordinate mode (full_fraction = 0); "
                             "train one with `confdiff train --full-fraction F` or use mode 'refine'")
        return mode

    # --- the state space of a batch ---------------------------------------------------------
    def sde(self, batch, mode: Mode | str = REFINE) -> ConformerSDE:
        """The SDE of ``mode`` for ``batch``; its state is ``cat(d (T,), e.flatten() (3N,))``
        (``"refine"``), ``d`` (``"torsions"``) or ``e.flatten()`` (``"full"``)."""
        mode = Mode.of(mode)
        num_graphs = batch.num_graphs
        spaces, shapes, sdes = [], [], []
        if mode.torsions:
            tor_batch = batch.batch[batch.torsion_index[0]]  # graph of each torsion
            spaces.append(Torus(tor_batch, num_graphs))
            shapes.append((tor_batch.shape[0],))
            sdes.append(SDE(self.tor_schedule, spaces[-1]))
        if mode.coordinates:
            spaces.append(ZeroCoM(batch.batch, num_graphs))
            shapes.append((batch.num_nodes, 3))
            sdes.append(SDE(self.full_schedule if mode.full else self.pos_schedule, spaces[-1]))
        return ConformerSDE(sdes, Product(spaces, shapes), mode)

    def positions(self, sde: ConformerSDE, batch, pos_ref: Tensor, y: Tensor) -> Tensor:
        """Conformer ``x(y) = T(pos_ref, d) + e`` (without the parts ``sde``'s mode lacks), shape (N, 3)."""
        parts = sde.space.split(y)
        pos = apply_torsion_changes(pos_ref, batch, parts[0]) if sde.mode.torsions else pos_ref
        return pos + parts[-1] if sde.mode.coordinates else pos

    def sigmas(self, t: Tensor, mode: Mode | str = REFINE) -> tuple[Tensor, Tensor]:
        """``(sigma_tor, sigma_pos)`` that the model sees at times ``t`` in ``mode``: the pairs it was
        trained on. The refine and torsions modes take both levels at ``t`` (training draws one
        ``t`` for both parts); in the torsions mode the coordinates do not move, but running the
        model at ``sigma_pos_min`` with a larger ``sigma_tor`` would feed it a pair it never saw (its
        torsion scores then swing with 1e-4 A changes of the input, docs/likelihood.md). The full
        mode holds the torsions at ``sigma_tor_min``, as the graphs of its training share do."""
        mode = Mode.of(mode)
        pos_schedule = self.full_schedule if mode.full else self.pos_schedule
        return self.tor_schedule.sigma(torch.zeros_like(t) if mode.full else t), pos_schedule.sigma(t)

    def noisy_batch(self, batch, pos: Tensor, t: Tensor, mode: Mode | str = REFINE):
        """A shallow copy of ``batch`` with ``pos`` and the per-graph noise levels of ``t (G,)`` in ``mode``."""
        noisy = copy.copy(batch)
        noisy.pos = pos
        noisy.sigma_tor, noisy.sigma_pos = self.sigmas(t, mode)
        return noisy

    def score_fn(self, model, batch, pos_ref: Tensor, sde: ConformerSDE):
        """``score_fn(y, t)`` of the state of ``sde`` (from :meth:`sde`) for the core's samplers and likelihood."""
        mode = sde.mode

        def score(y: Tensor, t: Tensor) -> Tensor:
            pos = self.positions(sde, batch, pos_ref, y)
            tor_score, pos_score = model(self.noisy_batch(batch, pos, t, mode))
            parts = [tor_score] * mode.torsions + [pos_score] * mode.coordinates
            return sde.space.join([p.to(y.dtype) for p in parts])

        return score

    # --- training -----------------------------------------------------------------------------
    def _training_sde(self, batch, full: Tensor) -> ConformerSDE:
        """The refine SDE of ``batch`` with the graphs flagged ``full (G,)`` on the full path
        (torsions held at ``sigma_tor_min``, coordinates on the ``sigma_full`` schedule)."""
        sde = self.sde(batch)
        tor_sde, pos_sde = sde.sdes
        tor = _PerGraphSchedule(full, self.tor_schedule, _Initial(self.tor_schedule))
        pos = _PerGraphSchedule(full, self.pos_schedule, self.full_schedule)
        return ConformerSDE([SDE(tor, tor_sde.space), SDE(pos, pos_sde.space)], sde.space, REFINE)

    def loss(self, model, batch, generator: torch.Generator | None = None) -> Tensor:
        """Per-graph denoising score matching loss, shape (G,): the core's
        :func:`~confdiff.diffusion.losses.denoising_score_matching_loss` on the refine state ``(d, e)``.

        ``batch.pos`` holds data conformers (``y_0 = 0``). Draw ``t ~ U(0, 1)`` per graph; a share
        ``full_fraction`` of the graphs take the ``"full"`` noise levels (``sigma_tor_min`` and
        ``sigma_full(t)``), the others ``sigma_tor(t)`` and ``sigma_pos(t)``; then
        ``d ~ WN(0, sigma_tor)``, ``e ~ N(0, sigma_pos^2)`` (zero CoM). The targets are the exact
        conditional scores ``grad log WN(d; sigma_tor)`` and ``-e / sigma_pos^2``. Each part's error
        is measured in units of its expected score norm (torsional diffusion's normalisation;
        ``1 / sigma^2`` for a Gaussian), averaged over the graph's torsions and coordinate degrees of
        freedom, and the coordinate part weighted by ``pos_loss_weight``.
        """
        device, dtype = batch.pos.device, batch.pos.dtype
        t = torch.rand(batch.num_graphs, generator=generator, device=device, dtype=dtype)
        if self.config.full_fraction > 0:
            full = torch.rand(batch.num_graphs, generator=generator, device=device) < self.config.full_fraction
            sde = self._training_sde(batch, full)
        else:
            sde = self.sde(batch)
        tor_sde, pos_sde = sde.sdes
        sigma_tor, sigma_pos = tor_sde.schedule.sigma(t), pos_sde.schedule.sigma(t)

        def model_fn(y: Tensor, t: Tensor) -> Tensor:
            noisy = copy.copy(batch)
            noisy.pos = self.positions(sde, batch, batch.pos, y)
            noisy.sigma_tor, noisy.sigma_pos = sigma_tor, sigma_pos
            return sde.space.join([p.to(y.dtype) for p in model(noisy)])

        y0 = torch.zeros(sde.space.numel, dtype=dtype, device=device)
        return denoising_score_matching_loss(
            model_fn, y0, sde, t=t, generator=generator, parameterization=["wrapped_score", "score"],
            weighting=["score_norm", "simple"], reduction="mean", part_weights=[1.0, self.config.pos_loss_weight])


class ConformerSDE(ProductSDE):
    """The :class:`~confdiff.diffusion.ProductSDE` of a batch in one :class:`Mode` (``mode``): the
    parts are the torsions (``mode.torsions``), then the coordinates (``mode.coordinates``)."""

    def __init__(self, sdes, space: Product, mode: Mode):
        super().__init__(sdes, space)
        self.mode = mode

    def __repr__(self) -> str:
        return f"ConformerSDE({self.sdes!r}, mode={self.mode.name!r})"


class _PerGraphSchedule(Schedule):
    """``full``'s schedule for the graphs flagged in ``mask (G,)``, ``refine``'s for the others
    (both variance exploding); ``t`` of shape ``(G,)``, one time per graph."""

    variance_exploding = True

    def __init__(self, mask: Tensor, refine: Schedule, full: Schedule):
        super().__init__()
        self.mask, self.refine, self.full = mask, refine, full

    def _pick(self, name: str, t: Tensor) -> Tensor:
        return torch.where(self.mask.to(t.device), getattr(self.full, name)(t), getattr(self.refine, name)(t))

    def alpha(self, t):
        return self._pick("alpha", t)

    def sigma(self, t):
        return self._pick("sigma", t)

    def log_snr(self, t):
        return self._pick("log_snr", t)

    def d_log_snr(self, t):
        return self._pick("d_log_snr", t)

    def d_log_alpha(self, t):
        return self._pick("d_log_alpha", t)

    def d_sigma2(self, t):
        return self._pick("d_sigma2", t)

    def prior_std(self) -> float:
        return max(self.refine.prior_std(), self.full.prior_std())


class _Initial(Schedule):
    """``schedule`` held at its ``t = 0`` level for every ``t`` (a part that does not diffuse)."""

    variance_exploding = True

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.schedule.sigma(torch.zeros_like(t))

    def log_snr(self, t):
        return self.schedule.log_snr(torch.zeros_like(t))

    def d_log_snr(self, t):
        return torch.zeros_like(t)

    def d_log_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma2(self, t):
        return torch.zeros_like(t)

    def prior_std(self) -> float:
        return float(self.schedule.sigma(torch.zeros(())))
