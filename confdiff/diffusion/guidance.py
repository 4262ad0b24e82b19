r"""Guidance: score functions for conditional sampling built from other score functions.

Convention (stated once, used by both functions): the guidance weight ``w`` is the *extra*
weight on the condition, so ``w = 0`` is plain conditional sampling.

* :func:`classifier_guidance` (Dhariwal & Nichol 2021, Alg. 1; Song et al. 2021, eq. 14):
  ``s(x, t) + scale * grad_x log p_t(y | x)``, which samples ``p_t(x) p_t(y | x)^scale``;
  ``scale = 1`` is exact conditional sampling.
* :func:`classifier_free_guidance` (Ho & Salimans 2022, eq. 6):
  ``(1 + w) s(x, t | y) - w s(x, t)``, which samples ``p_t(x | y) p_t(y | x)^w``; ``w = 0`` gives the
  conditional score.  Equal to classifier guidance with ``scale = 1 + w`` and the implicit
  classifier ``p_t(y | x) = p_t(x | y) p(y) / p_t(x)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["classifier_guidance", "classifier_free_guidance"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: Callable[[Tensor, Tensor], Tensor],
                        scale: float) -> ScoreFn:
    """Score function ``s(x, t) + scale * grad_x log p_t(y | x)``.

    ``log_prob_fn(x, t) -> (B,)`` is the (noise-conditional) classifier's log-probability of the
    wanted classes; its gradient is taken with autograd even inside ``torch.no_grad()``.
    """

    def guided(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(xg, t).sum(), xg)
        return score_fn(x, t) + scale * grad

    return guided


def classifier_free_guidance(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float) -> ScoreFn:
    """Score function ``(1 + w) s(x, t | y) - w s(x, t)`` (Ho & Salimans 2022); ``w = 0``: conditional."""

    def guided(x: Tensor, t: Tensor) -> Tensor:
        cond = cond_score_fn(x, t)
        if w == 0:
            return cond
        return (1.0 + w) * cond - w * uncond_score_fn(x, t)

    return guided
