r"""Denoising score matching: parameterisations, weightings and the per-sample loss.

Notation (Kingma et al. 2021, "Variational Diffusion Models"; Song et al. 2021, "Score-based
generative modeling through SDEs"): the forward marginal is ``x_t = alpha x_0 + sigma eps`` with
``eps ~ N(0, I)`` in the space's tangent space, so the conditional score is
``grad log p(x_t | x_0) = -eps / sigma``.  A network output ``F`` is one of

=================  =======================================  =================================
parameterisation   target ``F*``                            score ``s(F, x_t)``
=================  =======================================  =================================
epsilon            ``eps``                                  ``-F / sigma``
x0                 ``x_0``                                  ``-(x_t - alpha F) / sigma^2``
v                  ``(alpha eps - sigma x_0) / r``          ``-(sigma x_t / r^2 + alpha F / r) / sigma``
score              ``-eps / sigma``                         ``F``
=================  =======================================  =================================

with ``r = sqrt(alpha^2 + sigma^2)`` (``r = 1`` for variance-preserving schedules, where ``v`` is
the ``v = alpha eps - sigma x_0`` of Salimans & Ho 2022).  Each ``s`` is affine in ``F``,
``s = J F + c`` with ``J = -1/sigma, alpha/sigma^2, -alpha/(r sigma), 1``, and maps the target to
the conditional score; so the minimiser of ``E ||F - F*||^2`` (the conditional expectation of the
target) is mapped to ``E[-eps/sigma | x_t] = grad log p_t(x_t)`` (Vincent 2011).

The loss is written in score units (Song et al. 2021, eq. 7):

.. math::  L(x_0) = \lambda(t)\, \| s_\theta(x_t, t) - \nabla \log p(x_t | x_0) \|^2
                  = \lambda(t)\, J^2\, \| F_\theta - F^* \|^2,

summed per sample (per graph) with ``space.sum``; ``t ~ U(t_min, 1)``.  Weightings
``lambda(alpha, sigma, g2)``:

* :class:`SimpleWeighting` ``lambda = sigma^2``: the simple epsilon loss ``||eps_theta - eps||^2``
  of Ho et al. 2020 (eq. 14), whatever the parameterisation;
* :class:`LikelihoodWeighting` ``lambda = g(t)^2``: Song, Durkan, Murray & Ermon 2021
  ("Maximum likelihood training of score-based diffusion models", Thm. 1), for which the expected
  loss over ``t ~ U(0, 1)`` bounds the negative log-likelihood up to constants;
* :class:`MinSNRWeighting` ``lambda = sigma^2 min(SNR, gamma) / SNR``, ``SNR = alpha^2 / sigma^2``:
  the Min-SNR-gamma weighting of Hang et al. 2023 (eps-loss weight ``min(SNR, gamma) / SNR``;
  ``gamma = inf`` gives the simple loss).

* :class:`ScoreNormWeighting` ``lambda = 1 / E[s^2]``, the expected squared conditional score per
  element at ``sigma``: on the torus the wrapped normal's (torsional diffusion's score
  normalisation, Jing et al. 2022), which on the real line is ``sigma^2``, the simple loss.

All weightings are per element so that products of spaces with different schedules work. On a
:class:`~confdiff.diffusion.spaces.Product` the loss takes one parameterisation and one weighting
per part, ``reduction="mean"`` averages each part over its own degrees of freedom (``space.dim``),
and ``part_weights`` scale the parts' per-sample losses before they are summed.
On the torus (``alpha = 1``, ``x_t = wrap(x_0 + sigma eps)``) the score target ``-eps / sigma`` is
still unbiased (the wrapped score is the conditional mean of the unwrapped one) but noisy at large
``sigma``; :class:`WrappedScorePrediction` uses the exact wrapped-normal conditional score instead
(torsional diffusion, Jing et al. 2022).  The epsilon / x0 / v maps assume the Euclidean-like
marginal and should not be used on the torus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .spaces import Product

__all__ = [
    "Parameterization",
    "EpsilonPrediction",
    "X0Prediction",
    "VPrediction",
    "ScorePrediction",
    "WrappedScorePrediction",
    "SimpleWeighting",
    "LikelihoodWeighting",
    "MinSNRWeighting",
    "ScoreNormWeighting",
    "PARAMETERIZATIONS",
    "WEIGHTINGS",
    "denoising_score_matching_loss",
    "score_fn_from_model",
    "sde_coefficients",
    "uniform_times",
]


# ----------------------------------------------------------------------------- coefficients
def sde_coefficients(sde, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(alpha, sigma, g^2)`` of ``sde`` at per-sample times ``t (B,)``, broadcastable against ``x``.

    Read from the SDE object itself, so that it works for one schedule and for a ``ProductSDE``
    whose parts have different schedules: ``alpha`` is the marginal mean of ``x0 = 1``,
    ``sigma`` the marginal std, ``g^2 = diffusion^2`` (``= d sigma^2/dt - 2 f sigma^2``).
    """
    mean, sigma = sde.marginal(torch.ones_like(x), t)
    return mean, sigma, sde.diffusion(x, t) ** 2


def uniform_times(num: int, *, generator=None, t_min: float = 1e-5, t_max: float = 1.0,
                  dtype=None, device=None) -> Tensor:
    """``t ~ U(t_min, t_max)``, shape ``(num,)``; a list of generators draws one time per generator."""
    dtype = dtype or torch.get_default_dtype()
    if isinstance(generator, (list, tuple)):
        if len(generator) != num:
            raise ValueError(f"got {len(generator)} generators for {num} samples")
        u = torch.cat([torch.rand(1, generator=g, dtype=dtype, device=g.device) for g in generator]).to(device)
    elif generator is not None:  # draw on the generator's device, so a CPU generator works for any state
        u = torch.rand(num, generator=generator, dtype=dtype, device=generator.device).to(device)
    else:
        u = torch.rand(num, dtype=dtype, device=device)
    return t_min + (t_max - t_min) * u


# ----------------------------------------------------------------------------- parameterisations
class Parameterization:
    """What a network predicts; maps between its output ``F`` and the score.

    ``alpha`` and ``sigma`` broadcast against ``x`` (per-sample values expanded by the space).
    """

    name: str = ""

    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The regression target ``F*`` for ``x_t = alpha x0 + sigma noise``."""
        raise NotImplementedError

    def to_score(self, output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Score ``grad_x log p_t(x)`` implied by the output."""
        raise NotImplementedError

    def from_score(self, score: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`to_score`: the output that implies ``score``."""
        raise NotImplementedError

    def score_jacobian(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``J = d score / d output`` (a scalar per element); score errors are ``J`` times output errors."""
        raise NotImplementedError

    def to_eps(self, output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``eps = -sigma * score``."""
        return -sigma * self.to_score(output, x, alpha, sigma)

    def to_x0(self, output: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Tweedie's denoised estimate ``x0 = (x + sigma^2 score) / alpha`` (Euclidean-like spaces)."""
        return (x + sigma**2 * self.to_score(output, x, alpha, sigma)) / alpha

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsilonPrediction(Parameterization):
    """``F = eps`` (Ho et al. 2020): ``score = -F / sigma``."""

    name = "epsilon"

    def target(self, x0, noise, alpha, sigma):
        return noise

    def to_score(self, output, x, alpha, sigma):
        return -output / sigma

    def from_score(self, score, x, alpha, sigma):
        return -sigma * score

    def score_jacobian(self, alpha, sigma):
        return -1.0 / sigma

    def to_eps(self, output, x, alpha, sigma):
        return output


class X0Prediction(Parameterization):
    """``F = x_0``: ``score = -(x - alpha F) / sigma^2``."""

    name = "x0"

    def target(self, x0, noise, alpha, sigma):
        return x0

    def to_score(self, output, x, alpha, sigma):
        return -(x - alpha * output) / sigma**2

    def from_score(self, score, x, alpha, sigma):
        return (x + sigma**2 * score) / alpha

    def score_jacobian(self, alpha, sigma):
        return alpha / sigma**2

    def to_x0(self, output, x, alpha, sigma):
        return output


class VPrediction(Parameterization):
    """``F = v = (alpha eps - sigma x_0) / r``, ``r = sqrt(alpha^2 + sigma^2)`` (Salimans & Ho 2022, sec. 4).

    With ``a = alpha / r``, ``b = sigma / r``: ``eps = b x / r + a v`` and ``x_0 = a x / r - b v``.
    """

    name = "v"

    def target(self, x0, noise, alpha, sigma):
        r = torch.sqrt(alpha**2 + sigma**2)
        return (alpha * noise - sigma * x0) / r

    def to_eps(self, output, x, alpha, sigma):
        r2 = alpha**2 + sigma**2
        return sigma * x / r2 + alpha * output / torch.sqrt(r2)

    def to_score(self, output, x, alpha, sigma):
        return -self.to_eps(output, x, alpha, sigma) / sigma

    def from_score(self, score, x, alpha, sigma):
        r2 = alpha**2 + sigma**2
        eps = -sigma * score
        return (eps - sigma * x / r2) * torch.sqrt(r2) / alpha

    def score_jacobian(self, alpha, sigma):
        return -alpha / (torch.sqrt(alpha**2 + sigma**2) * sigma)


class ScorePrediction(Parameterization):
    """``F = score`` directly; target the conditional score ``-eps / sigma`` (Song & Ermon 2019)."""

    name = "score"

    def target(self, x0, noise, alpha, sigma):
        return -noise / sigma

    def to_score(self, output, x, alpha, sigma):
        return output

    def from_score(self, score, x, alpha, sigma):
        return score

    def score_jacobian(self, alpha, sigma):
        return torch.ones_like(sigma)


class WrappedScorePrediction(ScorePrediction):
    """Score output on the torus with the exact conditional score target (Jing et al. 2022).

    ``x_t = wrap(x_0 + sigma eps)`` so ``x_t - x_0 = wrap(sigma eps)`` and
    ``grad log p(x_t | x_0) = wrapped_normal_score(wrap(sigma eps), sigma)`` (``alpha = 1``).
    """

    name = "wrapped_score"

    def target(self, x0, noise, alpha, sigma):
        from .torus import wrap, wrapped_normal_score

        sigma = torch.broadcast_to(sigma, noise.shape)
        return wrapped_normal_score(wrap(sigma * noise), sigma)


PARAMETERIZATIONS: dict[str, Callable[[], Parameterization]] = {
    "epsilon": EpsilonPrediction,
    "x0": X0Prediction,
    "v": VPrediction,
    "score": ScorePrediction,
    "wrapped_score": WrappedScorePrediction,
}


# ----------------------------------------------------------------------------- weightings
class SimpleWeighting:
    """``lambda = sigma^2``: the simple epsilon loss of Ho et al. 2020, eq. 14."""

    def __call__(self, alpha: Tensor, sigma: Tensor, g2: Tensor) -> Tensor:
        return sigma**2

    def __repr__(self) -> str:
        return "SimpleWeighting()"


class LikelihoodWeighting:
    """``lambda = g(t)^2``: likelihood weighting (Song, Durkan, Murray & Ermon 2021, eq. 9 / Thm. 1).

    The weight in epsilon units is ``g^2 / sigma^2``, which grows like ``1 / t`` near ``t = 0`` for
    VP schedules: keep ``t_min`` away from 0 or sample ``t`` by importance.
    """

    def __call__(self, alpha, sigma, g2):
        return g2

    def __repr__(self) -> str:
        return "LikelihoodWeighting()"


class MinSNRWeighting:
    """``lambda = sigma^2 min(SNR, gamma) / SNR``, ``SNR = alpha^2 / sigma^2`` (Hang et al. 2023).

    In epsilon units the weight is ``min(SNR, gamma) / SNR``: the simple loss, with low-noise
    steps (``SNR > gamma``) down-weighted.
    """

    def __init__(self, gamma: float = 5.0):
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, alpha, sigma, g2):
        snr = alpha**2 / sigma**2
        return sigma**2 * torch.clamp(snr, max=self.gamma) / snr

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma})"


class ScoreNormWeighting:
    """``lambda = 1 / E[s^2]`` of the wrapped normal at ``sigma`` (torsional diffusion's score
    normalisation, Jing et al. 2022): on the torus the analogue of :class:`SimpleWeighting`
    (``E[s^2] = 1 / sigma^2`` per element for a Gaussian, which the wrapped normal approaches as
    ``sigma -> 0``)."""

    def __call__(self, alpha, sigma, g2):
        from .torus import wrapped_normal_score_norm

        return 1.0 / wrapped_normal_score_norm(sigma)

    def __repr__(self) -> str:
        return "ScoreNormWeighting()"


WEIGHTINGS: dict[str, Callable[[], Callable]] = {
    "simple": SimpleWeighting,
    "likelihood": LikelihoodWeighting,
    "min_snr": MinSNRWeighting,
    "score_norm": ScoreNormWeighting,
}


def _resolve(value, table: dict, what: str):
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"unknown {what} {value!r}; choose from {sorted(table)}")
        return table[value]()
    return value


# ----------------------------------------------------------------------------- the loss
REDUCTIONS = ("sum", "mean")


def _per_part(space, values, what: str) -> list:
    """``values`` as one entry per part of ``space``: a sequence must match a ``Product``'s parts."""
    num_parts = len(space.spaces) if isinstance(space, Product) else 1
    if isinstance(values, (list, tuple)):
        if not isinstance(space, Product) or len(values) != num_parts:
            where = f"{num_parts} parts" if isinstance(space, Product) else "a space that is not a Product"
            raise ValueError(f"got {len(values)} {what}s for {where}")
        return list(values)
    return [values] * num_parts


def _reduce(space, x: Tensor, reduction: str) -> Tensor:
    """Per-sample ``(B,)`` sum (``"sum"``) or mean over the degrees of freedom (``"mean"``, a sample
    without any counting 0) of ``x``."""
    if reduction == "sum":
        return space.sum(x)
    return space.sum(x) / space.dim(x).clamp(min=1.0)


def denoising_score_matching_loss(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sde,
    *,
    parameterization: Parameterization | str | Sequence[Parameterization | str] = "epsilon",
    weighting: Callable | str | Sequence[Callable | str] = "simple",
    reduction: str = "sum",
    part_weights: Sequence[float] | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator=None,
    t_min: float = 1e-5,
) -> Tensor:
    r"""Per-sample denoising score matching loss ``lambda(t) J^2 ||F_theta(x_t, t) - F*||^2``, shape ``(B,)``.

    Parameters
    ----------
    model_fn : ``model_fn(x_t, t) -> F`` with ``x_t`` like ``x0`` and ``t`` of shape ``(B,)``.
    x0 : data, one tensor laid out as ``sde.space`` expects.
    sde : gives ``space`` (noise, sums, broadcasting) and the marginal (``perturb``, coefficients).
    parameterization : a :class:`Parameterization` (or its name in :data:`PARAMETERIZATIONS`); on a
        ``Product`` space also one per part (e.g. ``["wrapped_score", "score"]`` for torsions and
        coordinates).
    weighting : ``weighting(alpha, sigma, g2) -> lambda`` in score units (or a name in
        :data:`WEIGHTINGS`); on a ``Product`` space also one per part.
    reduction : ``"sum"`` over each sample's elements (``sde.space.sum``), or ``"mean"``: over each
        sample's degrees of freedom (``space.dim``; on a ``Product`` each part over its own, the
        parts' means then summed, so that a part's share does not grow with its size).
    part_weights : on a ``Product`` space, one factor per part for its reduced loss (default 1).
    t : per-sample times ``(B,)``; drawn ``U(t_min, 1)`` from ``generator`` when omitted.
    noise : the ``eps`` of ``x_t``; drawn with ``sde.space.noise(x0, generator)`` when omitted.

    Returns the unreduced loss, one value per sample (per graph); average (or weight) it outside.
    """
    space = sde.space
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose from {REDUCTIONS}")
    params = [_resolve(p, PARAMETERIZATIONS, "parameterization")
              for p in _per_part(space, parameterization, "parameterization")]
    weight_fns = [_resolve(w, WEIGHTINGS, "weighting") for w in _per_part(space, weighting, "weighting")]
    factors = _per_part(space, 1.0 if part_weights is None else list(part_weights), "part weight")
    if t is None:
        t = uniform_times(space.num_samples(x0), generator=generator, t_min=t_min,
                          dtype=x0.dtype, device=x0.device)
    if noise is None:
        noise = space.noise(x0, generator)
    x_t = sde.perturb(x0, t, noise)
    alpha, sigma, g2 = sde_coefficients(sde, x0, t)
    output = model_fn(x_t, t)
    spaces = space.spaces if isinstance(space, Product) else [space]
    per_part = zip(spaces, *(_split(space, v) for v in (x0, noise, alpha, sigma, g2, output)))
    losses = []
    for (part, x0_k, noise_k, alpha_k, sigma_k, g2_k, output_k), param, weight_fn, factor in zip(
            per_part, params, weight_fns, factors):
        target = param.target(x0_k, noise_k, alpha_k, sigma_k)
        # lambda J^2 is the weight of the output error in score units (see module docstring)
        w = weight_fn(alpha_k, sigma_k, g2_k) * param.score_jacobian(alpha_k, sigma_k) ** 2
        loss = _reduce(part, w * (output_k - target) ** 2, reduction)
        losses.append(loss if factor == 1.0 else factor * loss)
    return sum(losses[1:], losses[0])


def _split(space, x: Tensor) -> list[Tensor]:
    """The parts of ``x`` on a ``Product`` space, else ``[x]``; a per-sample or scalar coefficient
    that does not span the state (a broadcastable ``(B, 1, ...)``) is left whole for every part."""
    if not isinstance(space, Product):
        return [x]
    if x.shape != (space.numel,):
        return [x] * len(space.spaces)
    return space.split(x)


def score_fn_from_model(
    model_fn: Callable[[Tensor, Tensor], Tensor], sde, parameterization: Parameterization | str = "epsilon"
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap ``model_fn(x, t) -> F`` as the score function ``score_fn(x, t)`` that samplers take."""
    param = _resolve(parameterization, PARAMETERIZATIONS, "parameterization")

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma, _ = sde_coefficients(sde, x, t)
        return param.to_score(model_fn(x, t), x, alpha, sigma)

    return score_fn
