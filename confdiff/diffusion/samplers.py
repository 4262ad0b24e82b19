r"""Samplers: pure functions from a prior sample to a data sample, given a score function.

Every sampler has the signature::

    sample_NAME(score_fn, x, sde, ts, *, generator=None, callback=None, **options) -> x

* ``score_fn(x, t) -> Tensor like x`` with ``t`` of shape ``(B,)`` (see ``losses.score_fn_from_model``
  to turn an eps / x0 / v network into one);
* ``x``: a sample of the prior at ``ts[0]`` (``sde.prior_sample``), one tensor laid out as ``sde.space``
  expects;
* ``ts``: a decreasing 1-D tensor of times from :func:`time_grid`, ``ts[0] = t_max``, ``ts[-1] = t_min``;
  the result is a sample of the marginal at ``ts[-1]``;
* ``generator``: ``None``, one ``torch.Generator`` or a list of one per sample (sample ``i`` then
  does not depend on the batch); all noise comes from ``sde.space.noise``;
* ``callback``: called once per step with ``{"step": i, "t": t (B,), "x": x, "x0": x0_hat}``, the
  state at ``ts[i]`` before the step and its denoised estimate (Tweedie:
  ``x0_hat = (x + sigma^2 score) / alpha``; omitted by :func:`sample_rk45`).

After every step the state is mapped back onto the space with ``sde.space.project`` (torus: wrap to
``[-pi, pi)``; zero-CoM: remove each graph's centre of mass).  Per-sample scalars (``alpha``,
``sigma``, ``g``, step sizes) are broadcast through the space; nothing here assumes an image layout.

Notation: ``alpha_t, sigma_t`` are the marginal coefficients of ``x_t = alpha_t x_0 + sigma_t eps``,
``f`` and ``g`` the forward drift and diffusion, ``s`` the score, ``eps = -sigma_t s``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .losses import sde_coefficients

__all__ = [
    "time_grid",
    "sample_euler_maruyama",
    "sample_predictor_corrector",
    "sample_ddpm",
    "sample_ddim",
    "sample_heun",
    "sample_rk45",
    "sample_annealed_langevin",
    "ddpm_step",
    "ddim_step",
    "SAMPLERS",
    "dopri5",
    "rk4",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- time grids
def _invert_log_snr(schedule, lam: Tensor, t_min: float, t_max: float, iters: int = 100) -> Tensor:
    """Times ``t`` in ``[t_min, t_max]`` with ``schedule.log_snr(t) = lam`` (bisection; log-SNR decreases)."""
    lo = torch.full_like(lam, t_min)
    hi = torch.full_like(lam, t_max)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = schedule.log_snr(mid).to(lam.dtype) > lam  # still too little noise: go later
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def time_grid(steps: int, t_min: float = 1e-3, t_max: float = 1.0, *, kind: str = "uniform",
              schedule=None, rho: float = 7.0, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Decreasing grid of ``steps + 1`` times from ``t_max`` to ``t_min``.

    ``kind``:

    * ``"uniform"``: equal steps in ``t``;
    * ``"quadratic"``: ``t = t_min + (t_max - t_min) u^2`` (Song, Meng & Ermon 2021, DDIM appendix),
      denser near the data;
    * ``"log"``: equal steps in ``log t``;
    * ``"log_snr"``: equal steps in ``schedule.log_snr`` (geometric in ``sigma`` for VE);
    * ``"edm"``: Karras et al. 2022, eq. 5, in the noise-to-signal ratio ``sigma / alpha``
      ``= exp(-log_snr / 2)``: ``(r_max^(1/rho) + i/N (r_min^(1/rho) - r_max^(1/rho)))^rho``.

    The last two need ``schedule`` and invert its log-SNR by bisection.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_min < t_max:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    u = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=dtype, device=device)  # 1 -> 0
    if kind == "uniform":
        ts = t_min + (t_max - t_min) * u
    elif kind == "quadratic":
        ts = t_min + (t_max - t_min) * u**2
    elif kind == "log":
        if t_min <= 0:
            raise ValueError(f"kind='log' needs t_min > 0, got {t_min!r}")
        ts = torch.exp(math.log(t_min) + (math.log(t_max) - math.log(t_min)) * u)
    elif kind in ("log_snr", "edm"):
        if schedule is None:
            raise ValueError(f"kind={kind!r} needs the schedule")
        ends = torch.tensor([t_min, t_max], dtype=dtype, device=device)
        lam_max, lam_min = (float(v) for v in schedule.log_snr(ends).to(dtype))
        if kind == "log_snr":
            lam = lam_max + (lam_min - lam_max) * u
        else:
            r_min, r_max = math.exp(-lam_max / 2) ** (1 / rho), math.exp(-lam_min / 2) ** (1 / rho)
            ratio = (r_max + (1 - u) * (r_min - r_max)) ** rho  # noise-to-signal ratio, decreasing
            lam = -2.0 * torch.log(ratio)
        ts = _invert_log_snr(schedule, lam, t_min, t_max)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from 'uniform', 'quadratic', 'log', 'log_snr', "
                         "'edm'")
    ts[0], ts[-1] = t_max, t_min
    return ts


# ----------------------------------------------------------------------------- shared pieces
def _check_grid(ts, x: Tensor) -> Tensor:
    ts = torch.as_tensor(ts).to(dtype=x.dtype, device=x.device)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly decreasing (from t_max down to t_min)")
    return ts


def _per_sample(t: Tensor, num: int) -> Tensor:
    return t.expand(num)


def _denoised(sde, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    """Tweedie's estimate ``E[x_0 | x_t] = (x + sigma^2 score) / alpha`` mapped onto the space."""
    alpha, sigma, _ = sde_coefficients(sde, x, t)
    return sde.space.project((x + sigma**2 * score) / alpha)


def _ode_drift(sde, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Probability-flow ODE drift ``f(x, t) - g(t)^2 / 2 * score`` (Song et al. 2021, eq. 13)."""
    return sde.ode_drift(x, t, score_fn(x, t))


def _notify(callback, step: int, t: Tensor, x: Tensor, x0: Tensor | None = None) -> None:
    if callback is not None:
        info = {"step": step, "t": t, "x": x}
        if x0 is not None:
            info["x0"] = x0
        callback(info)


# ----------------------------------------------------------------------------- SDE samplers
def _euler_maruyama_step(score_fn, sde, x, t, s, generator):
    """One reverse-SDE step from ``t`` to ``s < t``; returns ``(x_next, score at (x, t))``."""
    h = s - t  # negative
    score = score_fn(x, t)
    g = sde.diffusion(x, t)
    drift = sde.drift(x, t) - g**2 * score  # reverse drift f - g^2 s (Anderson 1982; Song et al. eq. 6)
    z = sde.space.noise(x, generator)
    x = x + drift * sde.space.broadcast(h, x) + g * sde.space.broadcast(torch.sqrt(-h), x) * z
    return sde.space.project(x), score


def sample_euler_maruyama(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE ``dx = [f - g^2 s] dt + g dw`` (Song et al. 2021, eq. 6)."""
    ts = _check_grid(ts, x)
    num = sde.space.num_samples(x)
    for i in range(len(ts) - 1):
        t, s = _per_sample(ts[i], num), _per_sample(ts[i + 1], num)
        x_new, score = _euler_maruyama_step(score_fn, sde, x, t, s, generator)
        _notify(callback, i, t, x, _denoised(sde, x, t, score) if callback else None)
        x = x_new
    return x


def _sample_norm(space, v: Tensor) -> Tensor:
    return torch.sqrt(space.sum(v**2))


def sample_predictor_corrector(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None,
                               snr: float = 0.16, corrector_steps: int = 1, norm: str = "sample") -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 4 (VE) / 5 (VP)).

    Predictor: one reverse-SDE Euler-Maruyama step ``t -> s``.  Corrector: ``corrector_steps``
    Langevin steps at ``s``, ``x <- x + e s(x) + sqrt(2 e) z`` with the signal-to-noise-tuned step
    ``e = 2 a (snr ||z|| / ||s(x)||)^2``, ``a = alpha_t^2 / alpha_s^2`` (``= 1 - beta_i`` for VP, 1 for VE).

    ``norm="sample"`` (default) takes the norms per sample, as the algorithm is written for one
    sample; sample ``i`` then does not depend on the batch.  It needs many dimensions per sample
    (images, molecules): in very low dimension ``||s||`` is often near 0 close to a mode and that
    sample's step explodes (2-D mixtures come out badly wrong).  ``norm="batch"`` averages both
    norms over the batch, as the reference implementation (score_sde) does: steady in any dimension,
    but samples then depend on the batch.
    """
    if norm not in ("sample", "batch"):
        raise ValueError(f"norm must be 'sample' or 'batch', got {norm!r}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr!r}")
    ts = _check_grid(ts, x)
    space = sde.space
    num = space.num_samples(x)
    for i in range(len(ts) - 1):
        t, s = _per_sample(ts[i], num), _per_sample(ts[i + 1], num)
        x_new, score = _euler_maruyama_step(score_fn, sde, x, t, s, generator)
        _notify(callback, i, t, x, _denoised(sde, x, t, score) if callback else None)
        x = x_new
        alpha_t, _, _ = sde_coefficients(sde, x, t)
        alpha_s, _, _ = sde_coefficients(sde, x, s)
        a = torch.clamp((alpha_t / alpha_s) ** 2, max=1.0)
        for _ in range(corrector_steps):
            grad = score_fn(x, s)
            z = space.noise(x, generator)
            g_norm, z_norm = _sample_norm(space, grad), _sample_norm(space, z)
            if norm == "batch":
                g_norm, z_norm = g_norm.mean().expand(num), z_norm.mean().expand(num)
            e = a * space.broadcast(2.0 * (snr * z_norm / g_norm) ** 2, x)
            x = space.project(x + e * grad + torch.sqrt(2.0 * e) * z)
    return x


def ddpm_step(x: Tensor, eps: Tensor, alpha_t, sigma_t, alpha_s, sigma_s, noise: Tensor) -> Tensor:
    """Ancestral step ``t -> s < t``: a draw of ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020, eqs. 6-7 and 11).

    With ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
    (the ``beta_t`` of DDPM between consecutive grid times; Kingma et al. 2021, eq. 33):
    ``mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0_hat``,
    ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``, ``x0_hat = (x_t - sigma_t eps) / alpha_t``.
    For VP this is eq. 11 with ``sigma^2 = beta-tilde``; for VE (``alpha = 1``) it is the ancestral
    sampler of Song et al. 2021 (appendix F).
    """
    a_ts = alpha_t / alpha_s
    var_ts = torch.clamp(sigma_t**2 - a_ts**2 * sigma_s**2, min=0.0)  # sigma_{t|s}^2 ("beta_t")
    x0 = (x - sigma_t * eps) / alpha_t
    mean = (a_ts * sigma_s**2 / sigma_t**2) * x + (alpha_s * var_ts / sigma_t**2) * x0
    return mean + torch.sqrt(var_ts * sigma_s**2 / sigma_t**2) * noise


def ddim_step(x: Tensor, eps: Tensor, alpha_t, sigma_t, alpha_s, sigma_s, noise: Tensor | None,
              eta: float = 0.0) -> Tensor:
    """DDIM step ``t -> s < t`` (Song, Meng & Ermon 2021, eq. 12 with eq. 16's ``sigma(eta)``).

    ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c z`` with ``x0_hat = (x_t - sigma_t eps) / alpha_t``
    and ``c = eta sigma_s / sigma_t sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)``
    (VP: ``eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t / abar_s)``).  ``eta = 0`` is the
    deterministic DDIM; ``eta = 1`` is :func:`ddpm_step`.
    """
    x0 = (x - sigma_t * eps) / alpha_t
    var_ts = torch.clamp(sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2, min=0.0)
    c = eta * sigma_s / sigma_t * torch.sqrt(var_ts)
    out = alpha_s * x0 + torch.sqrt(torch.clamp(sigma_s**2 - c**2, min=0.0)) * eps
    if eta > 0:
        out = out + c * noise
    return out


def _discrete_steps(score_fn: ScoreFn, x: Tensor, sde, ts, step, callback) -> Tensor:
    """The loop shared by DDPM and DDIM: ``eps = -sigma_t s`` at each grid time, then
    ``x <- project(step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s))`` for ``t -> s``."""
    ts = _check_grid(ts, x)
    space = sde.space
    num = space.num_samples(x)
    for i in range(len(ts) - 1):
        t, s = _per_sample(ts[i], num), _per_sample(ts[i + 1], num)
        alpha_t, sigma_t, _ = sde_coefficients(sde, x, t)
        alpha_s, sigma_s, _ = sde_coefficients(sde, x, s)
        eps = -sigma_t * score_fn(x, t)
        _notify(callback, i, t, x, space.project((x - sigma_t * eps) / alpha_t) if callback else None)
        x = space.project(step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s))
    return x


def sample_ddpm(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None) -> Tensor:
    """DDPM ancestral sampling on the grid ``ts`` (Ho et al. 2020, Alg. 2 / eq. 11), via :func:`ddpm_step`.

    The score is turned into ``eps = -sigma_t s``.  Meant for Euclidean-like marginals
    ``x_t = alpha_t x_0 + sigma_t eps`` (VP, sub-VP, VE); on the torus it is only the wrapped
    version of the Euclidean update.
    """

    def step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s):
        return ddpm_step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s, sde.space.noise(x, generator))

    return _discrete_steps(score_fn, x, sde, ts, step, callback)


def sample_ddim(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None,
                eta: float = 0.0) -> Tensor:
    """DDIM sampling on the grid ``ts`` (Song, Meng & Ermon 2021), via :func:`ddim_step`.

    ``eta = 0`` is deterministic (a first-order solver of the probability-flow ODE in log-SNR);
    ``eta = 1`` equals DDPM ancestral sampling.  ``eps = -sigma_t s``; for Euclidean-like marginals.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")

    def step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s):
        noise = sde.space.noise(x, generator) if eta > 0 else None
        return ddim_step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s, noise, eta)

    return _discrete_steps(score_fn, x, sde, ts, step, callback)


# ----------------------------------------------------------------------------- ODE samplers
def sample_heun(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE in ``t`` (Karras et al. 2022, Alg. 1).

    ``d = F(x, t)``, ``x' = x + h d``, ``x <- x + h (d + F(x', s)) / 2`` with ``h = s - t`` and
    ``F = f - g^2 s / 2``; two score evaluations per step.  ``generator`` is unused (deterministic).
    """
    ts = _check_grid(ts, x)
    space = sde.space
    num = space.num_samples(x)
    for i in range(len(ts) - 1):
        t, s = _per_sample(ts[i], num), _per_sample(ts[i + 1], num)
        h = space.broadcast(s - t, x)
        score = score_fn(x, t)
        d = sde.ode_drift(x, t, score)
        _notify(callback, i, t, x, _denoised(sde, x, t, score) if callback else None)
        x_euler = space.project(x + h * d)
        d_next = _ode_drift(sde, score_fn, x_euler, s)
        x = space.project(x + h * 0.5 * (d + d_next))
    return x


# Dormand & Prince (1980) RK5(4)7M tableau: nodes c, stages a, 5th-order weights b (= last row of
# a: "first same as last"), and b - b* (5th minus embedded 4th order) for the error estimate.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_E = (
    35 / 384 - 5179 / 57600,
    0.0,
    500 / 1113 - 7571 / 16695,
    125 / 192 - 393 / 640,
    -2187 / 6784 + 92097 / 339200,
    11 / 84 - 187 / 2100,
    -1 / 40,
)


def _combine(coeffs, ks):
    out = None
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            out = c * k if out is None else out + c * k
    return out if out is not None else torch.zeros_like(ks[0])


def dopri5(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], x: Tensor, e: Tensor, t0: float, t1: float,
           space, *, rtol: float = 1e-5, atol: float = 1e-5, first_step: float | None = None,
           max_steps: int = 100_000, callback=None) -> tuple[Tensor, Tensor, dict]:
    """Adaptive Dormand-Prince RK5(4) from ``t0`` to ``t1`` with one step size per sample.

    Integrates ``dx/dt, de/dt = fn(x, t)`` where ``x`` lives in ``space`` and ``e (B, k)`` holds
    per-sample extras (the log-density change in ``likelihood.py``; ``k = 0`` when sampling); ``t``
    passed to ``fn`` has shape ``(B,)`` and differs between samples.  Each sample has its own step
    size and accept / reject decisions (error norm: RMS over the sample's elements and extras of
    ``err / (atol + rtol max(|y_old|, |y_new|))``, Hairer, Norsett & Wanner, II.4), so a sample's
    trajectory does not depend on the rest of the batch.  Stages and accepted states are mapped onto
    the space with ``space.project``.  Returns ``(x, e, stats)`` with ``stats`` the number of
    function evaluations ``nfe``, accepted steps per sample ``steps (B,)`` and ``rejected (B,)``.
    """
    num = space.num_samples(x)
    dtype, device = x.dtype, x.device
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    bx = lambda v: space.broadcast(v, x)  # noqa: E731  per-sample -> per-element
    t = torch.full((num,), float(t0), dtype=dtype, device=device)
    h = torch.full((num,), float(first_step) if first_step else 0.01 * span, dtype=dtype, device=device)
    done = torch.full((num,), span == 0.0, dtype=torch.bool, device=device)
    steps = torch.zeros(num, dtype=torch.long, device=device)
    rejected = torch.zeros(num, dtype=torch.long, device=device)
    n_elem = space.sum(torch.ones_like(x)) + e.shape[1]
    kx, ke = fn(x, t)
    nfe = 1
    iteration = 0
    while not bool(done.all()):
        if iteration >= max_steps:
            raise RuntimeError(f"dopri5: {max_steps} iterations without reaching t1={t1} "
                               f"({int((~done).sum())} samples left); loosen rtol / atol")
        iteration += 1
        remaining = (t1 - t).abs()
        hh = torch.where(done, torch.zeros_like(h), torch.minimum(h, remaining))
        dt = direction * hh
        dtx, dte = bx(dt), dt[:, None]
        ks_x, ks_e = [kx], [ke]
        for i in range(1, 7):
            xi = space.project(x + dtx * _combine(_DP_A[i], ks_x))
            kxi, kei = fn(xi, t + _DP_C[i] * dt)
            ks_x.append(kxi)
            ks_e.append(kei)
        nfe += 6
        x5 = x + dtx * _combine(_DP_B, ks_x)  # unprojected, for the error scale
        e5 = e + dte * _combine(_DP_B, ks_e)
        err_x = dtx * _combine(_DP_E, ks_x)
        err_e = dte * _combine(_DP_E, ks_e)
        sx = atol + rtol * torch.maximum(x.abs(), x5.abs())
        se = atol + rtol * torch.maximum(e.abs(), e5.abs())
        ratio = torch.sqrt((space.sum((err_x / sx) ** 2) + ((err_e / se) ** 2).sum(-1)) / n_elem)
        accept = (ratio <= 1.0) & ~done
        ax = bx(accept.to(dtype)) > 0.5
        x = torch.where(ax, space.project(x5), x)
        e = torch.where(accept[:, None], e5, e)
        finished = accept & (hh >= remaining)
        t = torch.where(finished, torch.full_like(t, float(t1)), torch.where(accept, t + dt, t))
        kx = torch.where(ax, ks_x[6], kx)  # first same as last: stage 7 is the next stage 1
        ke = torch.where(accept[:, None], ks_e[6], ke)
        steps += accept.long()
        rejected += (~accept & ~done).long()
        done = done | finished
        factor = torch.clamp(0.9 * ratio.clamp(min=1e-10) ** -0.2, 0.2, 10.0)
        h = torch.where(done, h, hh.clamp(min=1e-12 * max(span, 1e-12)) * factor)
        if callback is not None:
            callback({"step": iteration, "t": t, "x": x})
    return x, e, {"nfe": nfe, "steps": steps, "rejected": rejected}


def rk4(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], x: Tensor, e: Tensor, ts, space) -> tuple[Tensor, Tensor, dict]:
    """Classical 4th-order Runge-Kutta over the fixed grid ``ts`` (any direction), same ``fn`` as :func:`dopri5`.

    Four evaluations per step and no step-size control, so the cost is known in advance and the
    steps do not depend on the input (nor on its orientation). Stages and states are mapped onto the
    space with ``space.project``. Returns ``(x, e, stats)`` with ``stats["nfe"]``.
    """
    ts = torch.as_tensor(ts).to(dtype=x.dtype, device=x.device)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    num = space.num_samples(x)
    for i in range(len(ts) - 1):
        t, h = ts[i].expand(num), ts[i + 1] - ts[i]
        k1x, k1e = fn(x, t)  # y' = F(y, t); e' = the extras (log-density change)
        k2x, k2e = fn(space.project(x + 0.5 * h * k1x), t + 0.5 * h)
        k3x, k3e = fn(space.project(x + 0.5 * h * k2x), t + 0.5 * h)
        k4x, k4e = fn(space.project(x + h * k3x), t + h)
        x = space.project(x + h / 6 * (k1x + 2 * k2x + 2 * k3x + k4x))
        e = e + h / 6 * (k1e + 2 * k2e + 2 * k3e + k4e)
    return x, e, {"nfe": 4 * (len(ts) - 1)}


def sample_rk45(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None,
                rtol: float = 1e-5, atol: float = 1e-5, first_step: float | None = None,
                max_steps: int = 100_000) -> Tensor:
    """Adaptive RK45 (Dormand-Prince) on the probability-flow ODE from ``ts[0]`` to ``ts[-1]``
    (Song et al. 2021, sec. 4.3, which used scipy's RK45); see :func:`dopri5`.

    Only the end points of ``ts`` are used.  The callback gets ``step``, per-sample ``t`` and ``x``
    after every iteration.  ``generator`` is unused (deterministic).
    """
    ts = _check_grid(ts, x)
    num = sde.space.num_samples(x)
    empty = x.new_zeros((num, 0))

    def fn(y, t):
        return _ode_drift(sde, score_fn, y, t), empty

    x, _, _ = dopri5(fn, x, empty, float(ts[0]), float(ts[-1]), sde.space, rtol=rtol, atol=atol,
                     first_step=first_step, max_steps=max_steps, callback=callback)
    return x


# ----------------------------------------------------------------------------- Langevin
def sample_annealed_langevin(score_fn: ScoreFn, x: Tensor, sde, ts, *, generator=None, callback=None,
                             step_scale: float = 0.2, n_steps_each: int = 5) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) over the noise levels of ``ts``.

    For each level ``t_i`` (all of ``ts``), ``n_steps_each`` steps
    ``x <- x + a_i / 2 s(x, t_i) + sqrt(a_i) z`` with ``a_i = step_scale sigma_i^2``; each level's
    target is the marginal ``p_{t_i}``. Song & Ermon's ``epsilon = 2e-5`` at ``sigma_L = 0.01`` is
    ``step_scale = 0.2``; in units of ``sigma_i^2`` the step does not depend on the noise range.
    """
    if not step_scale > 0:
        raise ValueError(f"step_scale must be > 0, got {step_scale!r}")
    if int(n_steps_each) != n_steps_each or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive integer, got {n_steps_each!r}")
    ts = _check_grid(ts, x)
    space = sde.space
    num = space.num_samples(x)
    for i in range(len(ts)):
        t = _per_sample(ts[i], num)
        _, sigma, _ = sde_coefficients(sde, x, t)
        a = step_scale * sigma**2
        for k in range(n_steps_each):
            score = score_fn(x, t)
            if k == 0:
                _notify(callback, i, t, x, _denoised(sde, x, t, score) if callback else None)
            x = space.project(x + 0.5 * a * score + torch.sqrt(a) * space.noise(x, generator))
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler_maruyama": sample_euler_maruyama,
    "predictor_corrector": sample_predictor_corrector,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "heun": sample_heun,
    "rk45": sample_rk45,
    "annealed_langevin": sample_annealed_langevin,
}
