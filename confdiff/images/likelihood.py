"""Bits per dimension of images under a trained :class:`~confdiff.images.model.ImageModel`.

Two ways, both upper bounds on the discrete NLL:

* probability-flow ODE (Song et al. 2021, sec. D.2) on dequantised test images,
  ``bpd = -E_u[log p(y)] / (D ln 2) + log2(L / 2)``, where ``log2(L/2)`` converts the density on
  ``[-1, 1]^D`` to the probability of a bin of width ``2 / L``;
* the DDPM variational bound (Ho et al. 2020 eq. 5; Kingma et al. 2021 eqs. 11-13) on the bin
  centres ``x = 2 (k + 1/2) / L - 1`` with times ``t_i = t_min + (1 - t_min) i / T``::

      -log P(x) <= KL(q(z_1 | x) || N(0, I))                                        (prior)
                 + sum_{i=1..T} E_eps[ (exp(lambda_{i-1} - lambda_i) - 1) ||eps - eps_hat(z_{t_i}, t_i)||^2 / 2 ]
                 - E_eps[ log prod_d int_{bin(x_d)} N(y; x_hat_d(z_{t_0}), sigma(t_0)^2) dy ]   (decoder)

  where ``lambda = log SNR`` and the decoder is Ho et al.'s discretised Gaussian (outer bins
  extended to +-inf; its variance ``sigma(t_0)^2`` is their ``beta_1``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion.likelihood import bits_per_dim, log_likelihood
from .data import bin_centres, dequantize
from .model import ImageModel

__all__ = ["pf_ode_bits_per_dim", "variational_bound_bits_per_dim"]


def _log_prob_gaussian_bin(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for standardised bounds ``lo < hi``, stable in both tails."""
    flip = lo > 0  # use the mirror image so both bounds sit in the left tail
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(torch.clamp(log_lo - log_hi, max=-1e-300)))


def _time_of_sigma(schedule, sigma: float, iters: int = 60) -> float:
    """The ``t`` in ``(0, 1)`` with ``schedule.sigma(t) = sigma`` (bisection; sigma increases)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(schedule.sigma(torch.tensor(mid, dtype=torch.float64))) < sigma else (lo, mid)
    return 0.5 * (lo + hi)


@torch.no_grad()
def variational_bound_bits_per_dim(model: ImageModel, levels: Tensor, *, steps: int = 1000,
                                   t_min: float | None = None, seed: int = 0, batch_size: int = 512) -> dict:
    """The DDPM variational bound (module docstring) in bits/dim, per image ``(N,)`` and its parts.

    Null label (unconditional model). Every one of the ``steps`` terms is evaluated with one
    ``eps`` per image and term. The bound holds for any ``t_min``; by default ``sigma(t_min) = 1/L``,
    half a bin, which minimised it on training digits (the model is trained on dequantised data,
    so below that noise level the decoder, not the diffusion, should account for the bins).
    Returns ``{"bpd": (N,), "prior", "diffusion", "decoder"}`` (bits/dim).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sched, L = model.sde.schedule, model.num_levels
    if t_min is None:
        t_min = _time_of_sigma(sched, 1.0 / L)
    model_fn = model.model_fn(None)
    ts = t_min + (1.0 - t_min) * torch.arange(steps + 1, dtype=torch.float64) / steps
    lam = sched.log_snr(ts)
    parts = {"prior": [], "diffusion": [], "decoder": []}
    for start in range(0, len(levels), batch_size):
        k = levels[start : start + batch_size].long()
        x = bin_centres(k, L)  # float64, (n, C, H, W)
        n, gen = len(x), torch.Generator().manual_seed(seed * 7919 + start)
        # prior: KL(N(alpha_1 x, sigma_1^2) || N(0, 1)), summed over pixels
        a1, s1 = sched.alpha(ts[-1:]).double(), sched.sigma(ts[-1:]).double()
        parts["prior"].append(0.5 * (a1**2 * x**2 + s1**2 - 1.0 - torch.log(s1**2)).flatten(1).sum(1))
        diffusion = torch.zeros(n, dtype=torch.float64)
        for i in range(1, steps + 1):
            t = ts[i].expand(n)
            eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            z = sched.alpha(t[:1]) * x + sched.sigma(t[:1]) * eps
            eps_hat = model_fn(z.float(), t.float()).double()
            w = torch.expm1(lam[i - 1] - lam[i])  # SNR(t_{i-1}) / SNR(t_i) - 1
            diffusion += 0.5 * w * (eps - eps_hat).pow(2).flatten(1).sum(1)
        parts["diffusion"].append(diffusion)
        # decoder: discretised Gaussian around x_hat(z_{t_0}) with std sigma(t_0)
        a0, s0 = sched.alpha(ts[:1]).double(), sched.sigma(ts[:1]).double()
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        z = a0 * x + s0 * eps
        eps_hat = model_fn(z.float(), ts[:1].expand(n).float()).double()
        x_hat = (z - s0 * eps_hat) / a0
        lo = torch.where(k == 0, -math.inf, 2.0 * k / L - 1.0)
        hi = torch.where(k == L - 1, math.inf, 2.0 * (k + 1) / L - 1.0)
        log_p = _log_prob_gaussian_bin((lo - x_hat) / s0, (hi - x_hat) / s0)
        parts["decoder"].append(-log_p.flatten(1).sum(1))
    dims = math.prod(model.shape) * math.log(2.0)
    out = {name: torch.cat(v) / dims for name, v in parts.items()}
    out["bpd"] = out["prior"] + out["diffusion"] + out["decoder"]
    return out


def pf_ode_bits_per_dim(model: ImageModel, levels: Tensor, *, seed: int = 0, batch_size: int = 512,
                        **likelihood_kwargs) -> Tensor:
    """Bits/dim ``(N,)`` of dequantised images under the probability-flow ODE (Hutchinson trace).

    ``bpd = -log p(y) / (D ln 2) + log2(L / 2)`` with ``y`` uniformly dequantised (module docstring).
    Null label (unconditional model). Extra keywords go to :func:`~confdiff.diffusion.likelihood.log_likelihood`.
    """
    likelihood_kwargs.setdefault("divergence", "hutchinson")
    likelihood_kwargs.setdefault("t_min", model.diffusion.t_min)
    score_fn = model.score_fn(None)
    dims, out = math.prod(model.shape), []
    for start in range(0, len(levels), batch_size):
        gen = torch.Generator().manual_seed(seed * 7919 + start)
        y = dequantize(levels[start : start + batch_size], model.num_levels, gen)
        logp, _ = log_likelihood(score_fn, y, model.sde, generator=gen, **likelihood_kwargs)
        out.append(bits_per_dim(logp.double(), dims, n_bins=model.num_levels, data_scale=2.0))
    return torch.cat(out)
