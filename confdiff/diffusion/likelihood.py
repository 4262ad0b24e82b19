r"""Log-likelihood through the probability-flow ODE, and bits per dimension.

The probability-flow ODE ``dx/dt = F(x, t) = f(x, t) - g(t)^2 s(x, t) / 2`` (Song et al. 2021,
eq. 13) transports ``p_t``; by the instantaneous change of variables (Chen et al. 2018,
Song et al. 2021 eq. 39)

.. math::  \log p_{t_{min}}(x) = \log p_T(x_T) + \int_{t_{min}}^{T} \nabla \cdot F(x_t, t)\, dt ,

where ``x_t`` solves the ODE forward from ``x_{t_min} = x``.  ``p_T`` is replaced by the prior
(``sde.prior_log_prob``).  The divergence is either exact (one vector-Jacobian product per element
of a sample, batched over samples: right for small dimension) or Hutchinson's estimator
``E_v[v^T (dF/dx) v]`` with ``E[v v^T] = I`` (Gaussian or Rademacher probes, held fixed along the
trajectory; Grathwohl et al. 2019).  On a space with constraints (zero centre of mass) the probes
are tangent vectors, so the divergence is the one on the space, matching ``space.dim``.

Assumes the score function does not couple samples (no batch statistics).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .samplers import dopri5, rk4

__all__ = ["log_likelihood", "bits_per_dim"]

_PROBE_CHUNK = 64  # probes per vmapped backward pass (memory grows with it)


def _sample_index(space, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """For every element of ``x``: its sample and its rank among that sample's elements.

    Returns ``(sample_id, rank, max_count)`` with the ids and ranks shaped like ``x``.
    """
    num = space.num_samples(x)
    ids = space.broadcast(torch.arange(num, dtype=x.dtype, device=x.device), x)
    ids = torch.broadcast_to(ids, x.shape).round().long().reshape(-1)
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=num)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(ids)
    rank[order] = torch.arange(ids.numel(), device=x.device) - starts[ids[order]]
    max_count = int(counts.max()) if num else 0
    return ids.reshape(x.shape), rank.reshape(x.shape), max_count


def _rademacher(space, x: Tensor, generator) -> Tensor:
    """Rademacher signs like ``x`` (one draw per element, per-sample generators honoured),
    mapped to the tangent space with ``space.project`` (linear on Euclidean / zero-CoM)."""
    if generator is None:
        u = torch.randint(0, 2, x.shape, dtype=x.dtype, device=x.device)
    elif isinstance(generator, torch.Generator):
        u = torch.randint(0, 2, x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    else:
        ids, rank, _ = _sample_index(space, x)
        counts = torch.bincount(ids.reshape(-1), minlength=len(generator))
        draws = torch.cat([torch.randint(0, 2, (n,), generator=g, dtype=x.dtype, device=g.device).to(x.device)
                           for g, n in zip(generator, counts.tolist())])
        starts = torch.cumsum(counts, 0) - counts
        u = draws[starts[ids] + rank]  # element of rank r in sample i: draw r of generator i
    return space.project(2.0 * u - 1.0)


def log_likelihood(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sde,
    *,
    divergence: str = "exact",
    probe: str = "gaussian",
    num_probes: int = 1,
    t_min: float = 1e-5,
    t_max: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator=None,
    first_step: float | None = None,
    max_steps: int = 100_000,
    steps: int | None = None,
) -> tuple[Tensor, dict]:
    """PF-ODE log-likelihood ``log p(x)`` in nats, shape ``(B,)``, and an info dict.

    Parameters
    ----------
    score_fn : ``score_fn(x, t)`` as for the samplers.
    x : data (taken as a sample of the marginal at ``t_min``), laid out as ``sde.space`` expects.
    divergence : ``"exact"`` (one vector-Jacobian product per element of a sample) or
        ``"hutchinson"`` (``num_probes`` fixed probes ``v``, each giving an unbiased estimate).
    probe : ``"gaussian"`` (``sde.space.noise``) or ``"rademacher"``; Hutchinson only.
    rtol, atol : tolerances of the adaptive Dormand-Prince solver (``samplers.dopri5``).
    steps : None for the adaptive solver, else the number of fixed RK4 steps (``samplers.rk4``,
        equal steps in ``t``, ``4 steps`` evaluations, no step-size control: a known cost and a
        trajectory that does not depend on the input's frame); ``rtol``, ``atol`` then unused.
    generator : draws the Hutchinson probes (one generator or one per sample).

    Returns ``(log_p, info)``; ``info`` has ``prior_log_prob (B,)``, ``delta (B,)`` (the integral of
    the divergence), ``x_T``, ``nfe`` and, for Hutchinson, ``log_p_per_probe (B, P)`` and
    ``stderr (B,)``: the standard error of the probe mean (``nan`` for one probe).
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    if int(num_probes) != num_probes or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    if not 0.0 <= t_min < t_max:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be None or a positive integer, got {steps!r}")
    space = sde.space
    num = space.num_samples(x)
    x = x.detach()

    if divergence == "exact":
        _, rank, max_count = _sample_index(space, x)
        # unit vectors picking the r-th element of every sample at once, in the tangent space
        probes = [space.project((rank == r).to(x.dtype)) for r in range(max_count)]
    else:
        draw = space.noise if probe == "gaussian" else (lambda y, g: _rademacher(space, y, g))
        probes = [draw(x, generator) for _ in range(int(num_probes))]

    batched = True  # vmapped backward passes until an operation turns out to have no batching rule

    def quadratic_forms(drift: Tensor, y: Tensor) -> list[Tensor]:
        """``v^T (dF/dy) v`` per sample for every probe ``v``: vector-Jacobian products of up to
        ``_PROBE_CHUNK`` probes in one vmapped backward pass (several times faster than a loop)."""
        nonlocal batched
        if batched:
            try:
                terms = []
                for start in range(0, len(probes), _PROBE_CHUNK):
                    chunk = torch.stack(probes[start : start + _PROBE_CHUNK])
                    (vjps,) = torch.autograd.grad(drift, y, chunk, retain_graph=True, is_grads_batched=True)
                    terms += [space.sum(vjp * v) for vjp, v in zip(vjps, chunk)]
                return terms
            except RuntimeError:  # one backward pass per probe from now on
                batched = False
        return [space.sum(torch.autograd.grad(drift, y, v, retain_graph=True)[0] * v) for v in probes]

    def fn(y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            drift = sde.ode_drift(y, t, score_fn(y, t))
            terms = quadratic_forms(drift, y)
        terms = torch.stack(terms, -1).detach()  # (B, R)
        if divergence == "exact":
            terms = terms.sum(-1, keepdim=True)  # trace = sum over the unit vectors
        return drift.detach(), terms

    k = 1 if divergence == "exact" else len(probes)
    e0 = x.new_zeros((num, k))
    if steps is None:
        x_T, delta, stats = dopri5(fn, x, e0, float(t_min), float(t_max), space, rtol=rtol, atol=atol,
                                   first_step=first_step, max_steps=max_steps)
    else:
        ts = torch.linspace(float(t_min), float(t_max), int(steps) + 1, dtype=x.dtype, device=x.device)
        x_T, delta, stats = rk4(fn, x, e0, ts, space)
        stats["steps"] = torch.full((num,), int(steps), dtype=torch.long, device=x.device)
    prior = sde.prior_log_prob(x_T)
    per_probe = prior[:, None] + delta
    log_p = per_probe.mean(-1)
    info = {"prior_log_prob": prior, "delta": delta.mean(-1), "x_T": x_T, "nfe": stats["nfe"],
            "steps": stats["steps"]}
    if divergence == "hutchinson":
        info["log_p_per_probe"] = per_probe
        info["stderr"] = (per_probe.std(-1) / math.sqrt(k)) if k > 1 else torch.full_like(log_p, float("nan"))
    return log_p, info


def bits_per_dim(log_p_nats: Tensor, num_dims, *, n_bins: int = 256, data_scale: float = 2.0) -> Tensor:
    r"""Bits per dimension of discrete data from a continuous log-density in nats.

    The model density ``p_y`` lives on ``y = lo + (k + u) a`` with bin width
    ``a = data_scale / n_bins`` (``data_scale = hi - lo``: 2 for data in ``[-1, 1]``, 1 for
    ``[0, 1]``).  In pixel units ``z = k + u`` the density is ``p_z(z) = p_y(y) a^D``, and with
    uniform dequantisation ``log P(k) >= E_u log p_z(k + u)`` (Theis et al. 2016), so

    .. math::  \mathrm{bpd} = -\frac{\log p_y(y) + D \log a}{D \ln 2}
                            = -\frac{\log p_y(y)}{D \ln 2} + \log_2 \frac{n_{bins}}{data\_scale}

    (``+8`` for ``[0, 1]`` and ``+7`` for ``[-1, 1]`` with 256 bins, as in Song et al. 2021).
    ``num_dims`` is ``D``, an int or a per-sample tensor.  Exact for a density that is constant
    within each bin (a uniform density on ``[lo, hi]^D`` gives ``log2(n_bins)`` bits).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if not data_scale > 0:
        raise ValueError(f"data_scale must be > 0, got {data_scale!r}")
    d = torch.as_tensor(num_dims, dtype=log_p_nats.dtype, device=log_p_nats.device)
    log_bin = math.log(data_scale / n_bins)  # log a
    return -(log_p_nats + d * log_bin) / (d * math.log(2.0))
