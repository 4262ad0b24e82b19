"""Forward SDEs built from a schedule and a space; the reverse SDE and probability-flow ODE.

For the marginal ``x_t = alpha(t) x_0 + sigma(t) eps`` the linear SDE
``dx = f(t) x dt + g(t) dw`` with

    f(t)   = d log alpha / dt,
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2

has exactly these marginals (Kingma et al. 2021, eq. 30-31). It reproduces the VP, VE and
sub-VP SDEs of Song et al. 2021 (eqs. 9, 11, 29). The reverse-time SDE (Anderson 1982; Song et
al. eq. 6) and the probability-flow ODE (eq. 13) come from the same object:

    dx = [f x - g^2 score] dt + g dw_bar,        dx/dt = f x - g^2 score / 2.

``t`` is per sample, shape ``(B,)`` (a Python number is expanded), and broadcast through the space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
from torch import Tensor

from .schedules import Schedule
from .spaces import GeneratorLike, Product, Space

__all__ = ["SDE", "ProductSDE", "ReverseSDE"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class _SDEBase:
    """Shared reverse-time constructions from ``drift`` / ``diffusion`` (per element)."""

    space: Space

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _time(self, t, x: Tensor) -> Tensor:
        """``t`` as a ``(B,)`` tensor on ``x``'s device and dtype."""
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
        if t.ndim == 0:
            t = t.expand(self.space.num_samples(x))
        return t

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow``, the PF-ODE) for ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Probability-flow ODE velocity ``f x - g^2 score / 2`` (Song et al. 2021, eq. 13)."""
        t = self._time(t, x)
        return self.drift(x, t) - 0.5 * self.diffusion(x, t) ** 2 * score

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Reverse-time SDE drift ``f x - g^2 score`` (Song et al. 2021, eq. 6)."""
        t = self._time(t, x)
        return self.drift(x, t) - self.diffusion(x, t) ** 2 * score


class SDE(_SDEBase):
    """The forward SDE of ``schedule`` on ``space``.

    Per-sample coefficients: :meth:`f`, :meth:`g2`, :meth:`g` (``(B,)`` from ``t (B,)``);
    per-element: :meth:`drift`, :meth:`diffusion` (broadcast against ``x``).
    """

    def __init__(self, schedule: Schedule, space: Space):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {schedule!r}")
        if not isinstance(space, Space):
            raise ValueError(f"space must be a Space, got {space!r}")
        if space.periodic and not schedule.variance_exploding:
            raise ValueError(
                f"{type(space).__name__} is periodic: only variance-exploding schedules (alpha = 1) "
                f"apply, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.space = space

    # --- per-sample coefficients ---------------------------------------------------------------
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient ``f(t) = d log alpha / dt``."""
        return self.schedule.d_log_alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``g(t)^2 = d sigma^2/dt - 2 f sigma^2``."""
        sigma = self.schedule.sigma(t)
        return self.schedule.d_sigma2(t) - 2.0 * self.schedule.d_log_alpha(t) * sigma**2

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``."""
        return torch.sqrt(torch.clamp(self.g2(t), min=0.0))

    # --- per-element ---------------------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(t) x``, like ``x``."""
        t = self._time(t, x)
        return self.space.broadcast(self.f(t), x) * x

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """``g(t)`` broadcast against ``x``."""
        t = self._time(t, x)
        return self.space.broadcast(self.g(t), x)

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` of ``p_t(x | x0)``: ``alpha(t) x0`` and ``sigma(t)`` broadcast against
        ``x0`` (on the torus the kernel is the wrapped normal with these parameters)."""
        t = self._time(t, x0)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return self.space.broadcast(alpha, x0) * x0, self.space.broadcast(sigma, x0)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = alpha x0 + sigma noise`` projected onto the space (wrapped on the torus)."""
        mean, std = self.marginal(x0, t)
        return self.space.project(mean + std * noise)

    def prior_sample(self, like: Tensor, generator: GeneratorLike = None) -> Tensor:
        """A sample of the prior at ``t = 1`` shaped like ``like``: ``N(0, prior_std^2)`` in the
        space (zero-CoM projected); on the torus uniform when ``prior_std >= ~pi``, else a
        wrapped normal."""
        return self.space.prior_sample(like, self.schedule.prior_std(), generator)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the prior, ``(B,)``, with ``space.dim`` degrees of freedom per sample."""
        return self.space.prior_log_prob(x, self.schedule.prior_std())

    def __repr__(self) -> str:
        return f"SDE({self.schedule!r}, {self.space!r})"


class ProductSDE(_SDEBase):
    """One SDE per part of a :class:`Product` space, sharing ``t`` (e.g. torsions on the torus
    and coordinates on the zero-CoM space)."""

    def __init__(self, sdes: Sequence[SDE], space: Product):
        sdes = list(sdes)
        if not isinstance(space, Product):
            raise ValueError(f"space must be a Product, got {space!r}")
        if len(sdes) != len(space.spaces):
            raise ValueError(f"got {len(sdes)} SDEs for {len(space.spaces)} parts")
        self.sdes = sdes
        self.space = space

    def _map(self, fn, *xs: Tensor) -> Tensor:
        parts = [self.space.split(x) for x in xs]
        return self.space.join([fn(sde, *ps) for sde, *ps in zip(self.sdes, *parts)])

    def drift(self, x, t):
        t = self._time(t, x)
        return self._map(lambda sde, p: sde.drift(p, t), x)

    def diffusion(self, x, t):
        """``g_k(t)`` of each part, per element (a flat tensor like ``x``)."""
        t = self._time(t, x)
        return self._map(lambda sde, p: sde.diffusion(p, t).expand_as(p).to(p.dtype), x)

    def marginal(self, x0, t):
        t = self._time(t, x0)
        pairs = [sde.marginal(p, t) for sde, p in zip(self.sdes, self.space.split(x0))]
        mean = self.space.join([m for m, _ in pairs])
        std = self.space.join([s.expand_as(m).to(m.dtype) for m, s in pairs])
        return mean, std

    def perturb(self, x0, t, noise):
        t = self._time(t, x0)
        return self._map(lambda sde, p, n: sde.perturb(p, t, n), x0, noise)

    def prior_sample(self, like, generator: GeneratorLike = None):
        return self._map(lambda sde, p: sde.prior_sample(p, generator), like)

    def prior_log_prob(self, x):
        return sum(sde.prior_log_prob(p) for sde, p in zip(self.sdes, self.space.split(x)))

    def __repr__(self) -> str:
        return f"ProductSDE({self.sdes!r})"


class ReverseSDE:
    """Reverse-time SDE ``dx = [f x - g^2 s] dt + g dw_bar`` or, with ``probability_flow``, the
    ODE ``dx/dt = f x - g^2 s / 2`` with zero diffusion (Song et al. 2021, eqs. 6 and 13).
    Integrate from ``t = 1`` to ``0`` (``dt < 0``)."""

    def __init__(self, sde: _SDEBase, score_fn: ScoreFn, probability_flow: bool = False):
        self.sde = sde
        self.space = sde.space
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        t = self.sde._time(t, x)
        score = self.score_fn(x, t)
        if self.probability_flow:
            return self.sde.ode_drift(x, t, score)
        return self.sde.reverse_drift(x, t, score)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        g = self.sde.diffusion(x, t)
        return torch.zeros_like(g) if self.probability_flow else g
