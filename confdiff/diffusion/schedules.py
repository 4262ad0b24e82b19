"""Noise schedules in signal-to-noise form.

A schedule fixes the marginal ``x_t = alpha(t) x_0 + sigma(t) eps`` for continuous time
``t`` in ``[0, 1]`` (data at ``t = 0``) and its log signal-to-noise ratio
``log_snr(t) = log(alpha^2 / sigma^2)`` (Kingma et al. 2021, "Variational Diffusion Models").
Everything the forward SDE needs follows from ``alpha`` and ``sigma`` (see ``sde.py``):
``f(t) = d log alpha / dt`` and ``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2``.

All methods act elementwise on ``t`` of any shape and return tensors of the same shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "Schedule",
    "VPLinear",
    "VPCosine",
    "VEGeometric",
    "SubVP",
    "LearnableMonotone",
]


def _as_time(t) -> Tensor:
    """``t`` as a floating tensor (Python numbers become default-dtype scalars)."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class Schedule(nn.Module):
    """Base class: ``alpha(t)``, ``sigma(t)``, ``log_snr(t)`` and their time derivatives.

    Subclasses give closed forms. ``variance_exploding`` is true when ``alpha == 1`` (the only
    kind of schedule that makes sense on a torus); ``prior_std()`` is the standard deviation of
    the Gaussian prior at ``t = 1`` (1 for variance-preserving schedules, ``sigma_max`` for VE).
    """

    variance_exploding: bool = False

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, decreasing in ``t``."""
        raise NotImplementedError

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``."""
        raise NotImplementedError

    def d_log_snr(self, t: Tensor) -> Tensor:
        """``d lambda / dt`` (negative)."""
        raise NotImplementedError

    def d_log_alpha(self, t: Tensor) -> Tensor:
        """``f(t) = d log alpha / dt``, the drift coefficient of the forward SDE."""
        raise NotImplementedError

    def d_sigma2(self, t: Tensor) -> Tensor:
        """``d sigma^2 / dt``."""
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))``."""
        return self.alpha(t), self.sigma(t)

    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std^2 I)`` at ``t = 1``."""
        return 1.0

    def forward(self, t: Tensor) -> Tensor:
        return self.log_snr(t)


class _VPFromLogAlpha(Schedule):
    """Variance-preserving schedule given ``log alpha(t)`` and ``beta(t) = -2 d log alpha / dt``.

    ``alpha^2 + sigma^2 = 1``; Song et al. 2021 (ICLR), eq. 11: ``dx = -beta/2 x dt + sqrt(beta) dw``.
    """

    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def beta(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(self.log_alpha(_as_time(t)))

    def _sigma2(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))  # 1 - alpha^2 without cancellation

    def sigma(self, t):
        return torch.sqrt(self._sigma2(_as_time(t)))

    def log_snr(self, t):
        t = _as_time(t)
        log_alpha = self.log_alpha(t)
        return 2.0 * log_alpha - torch.log(-torch.expm1(2.0 * log_alpha))

    def d_log_snr(self, t):
        t = _as_time(t)
        return -self.beta(t) / self._sigma2(t)  # d/dt [log alpha^2 - log(1 - alpha^2)]

    def d_log_alpha(self, t):
        return -0.5 * self.beta(_as_time(t))

    def d_sigma2(self, t):
        t = _as_time(t)
        return self.beta(t) * torch.exp(2.0 * self.log_alpha(t))  # -d alpha^2/dt = beta alpha^2


class VPLinear(_VPFromLogAlpha):
    """VP schedule with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` (DDPM / Song et al. 2021).

    ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__()
        if not (math.isfinite(beta_min) and beta_min >= 0.0):
            raise ValueError(f"beta_min must be finite and >= 0, got {beta_min!r}")
        if not (math.isfinite(beta_max) and beta_max >= beta_min and beta_max > 0.0):
            raise ValueError(f"beta_max must be finite, > 0 and >= beta_min={beta_min!r}, got {beta_max!r}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def log_alpha(self, t):
        t = _as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def beta(self, t):
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}"


class VPCosine(_VPFromLogAlpha):
    """Cosine VP schedule (Nichol & Dhariwal 2021, eq. 17): ``alpha^2 = f(t) / f(0)``,
    ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``.

    Nichol & Dhariwal clip the discrete ``beta_t`` at 0.999 (with ``T = 1000``) so the
    schedule does not collapse at ``t = 1``. The continuous counterpart used here clips the rate
    ``beta(t) = -d log alpha^2 / dt = pi / (1 + s) * tan((t + s) / (1 + s) * pi / 2)`` at ``max_beta``
    (default 999 = 0.999 * T): past the time ``t_clip`` where it reaches ``max_beta``, ``beta`` stays
    constant and ``log alpha^2`` decreases linearly, so ``alpha(1) > 0`` and ``log_snr(1)`` is finite.
    ``max_beta = inf`` disables the clip.
    """

    def __init__(self, s: float = 0.008, max_beta: float = 999.0):
        super().__init__()
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"s must be finite and >= 0, got {s!r}")
        if not (max_beta > 0.0):  # also rejects nan
            raise ValueError(f"max_beta must be > 0, got {max_beta!r}")
        self.s = float(s)
        self.max_beta = float(max_beta)
        scale = math.pi / (2.0 * (1.0 + self.s))  # d phi / dt
        self._scale = scale
        if math.isfinite(self.max_beta):
            # beta(t) = 2 * scale * tan(phi(t)) = max_beta  <=>  phi = atan(max_beta / (2 scale))
            self.t_clip = math.atan(self.max_beta / (2.0 * scale)) / scale - self.s
        else:
            self.t_clip = math.inf

    def _phi(self, t):
        return (t + self.s) * self._scale

    def log_alpha(self, t):
        t = _as_time(t)
        # log cos phi(0) with the same ops and dtype, so that log_alpha(0) == 0 exactly
        log_cos0 = torch.log(torch.cos(self._phi(torch.zeros((), dtype=t.dtype, device=t.device))))
        if self.t_clip >= 1.0:
            return torch.log(torch.cos(self._phi(t))) - log_cos0
        t_in = torch.clamp(t, max=self.t_clip)
        tail = torch.clamp(t - self.t_clip, min=0.0)
        return torch.log(torch.cos(self._phi(t_in))) - log_cos0 - 0.5 * self.max_beta * tail

    def beta(self, t):
        t = _as_time(t)
        t_in = torch.clamp(t, max=self.t_clip) if self.t_clip < 1.0 else t
        return 2.0 * self._scale * torch.tan(self._phi(t_in))

    def extra_repr(self) -> str:
        return f"s={self.s}, max_beta={self.max_beta}"


class SubVP(VPLinear):
    """Sub-VP schedule (Song et al. 2021, eq. 29): ``alpha`` as :class:`VPLinear`,
    ``sigma = 1 - alpha^2``, so ``g^2 = beta(t) (1 - exp(-2 int_0^t beta))``."""

    def sigma(self, t):
        t = _as_time(t)
        return -torch.expm1(2.0 * self.log_alpha(t))

    def log_snr(self, t):
        t = _as_time(t)
        log_alpha = self.log_alpha(t)
        return 2.0 * log_alpha - 2.0 * torch.log(-torch.expm1(2.0 * log_alpha))

    def d_log_snr(self, t):
        t = _as_time(t)
        log_alpha = self.log_alpha(t)
        beta = self.beta(t)
        # d/dt [2 log alpha - 2 log(1 - alpha^2)] = -beta - 2 beta alpha^2 / (1 - alpha^2)
        return -beta - 2.0 * beta * torch.exp(2.0 * log_alpha) / (-torch.expm1(2.0 * log_alpha))

    def d_sigma2(self, t):
        t = _as_time(t)
        log_alpha = self.log_alpha(t)
        alpha2 = torch.exp(2.0 * log_alpha)
        # sigma = 1 - alpha^2, d sigma / dt = beta alpha^2
        return 2.0 * (-torch.expm1(2.0 * log_alpha)) * self.beta(t) * alpha2


class VEGeometric(Schedule):
    """Variance-exploding schedule (Song et al. 2021, eq. 9 / 30): ``alpha = 1``,
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.

    As in Song et al., ``sigma(0) = sigma_min`` (not 0): the marginal std is taken to be
    ``sigma(t)`` and ``g(t)^2 = d sigma^2/dt = 2 sigma(t)^2 log(sigma_max / sigma_min)``.
    """

    variance_exploding = True

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        super().__init__()
        if not (math.isfinite(sigma_min) and sigma_min > 0.0):
            raise ValueError(f"sigma_min must be finite and > 0, got {sigma_min!r}")
        if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
            raise ValueError(f"sigma_max must be finite and > sigma_min={sigma_min!r}, got {sigma_max!r}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._log_ratio

    def alpha(self, t):
        return torch.ones_like(_as_time(t))

    def sigma(self, t):
        return torch.exp(self._log_sigma(_as_time(t)))

    def log_snr(self, t):
        return -2.0 * self._log_sigma(_as_time(t))

    def d_log_snr(self, t):
        return torch.full_like(_as_time(t), -2.0 * self._log_ratio)

    def d_log_alpha(self, t):
        return torch.zeros_like(_as_time(t))

    def d_sigma2(self, t):
        return 2.0 * self._log_ratio * torch.exp(2.0 * self._log_sigma(_as_time(t)))

    def prior_std(self) -> float:
        return self.sigma_max

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"


class LearnableMonotone(Schedule):
    """Learnable VP schedule with a monotone network (Kingma et al. 2021, VDM, appendix H).

    ``gamma(t) = -log_snr(t)`` is ``gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0))``
    where ``g(t) = l1(t) + l3(sigmoid(2 (l2(l1(t)) - 1/2))) / hidden`` is built from linear layers
    with positive weights (``softplus`` of free parameters), hence strictly increasing for any
    parameter values. The endpoints ``log_snr(0) = log_snr_max`` and ``log_snr(1) = log_snr_min``
    hold exactly unless ``learn_endpoints`` (then they are parameters, ``log_snr_max > log_snr_min``
    kept by a softplus gap). ``alpha^2 = sigmoid(log_snr)``, ``sigma^2 = sigmoid(-log_snr)``.
    All derivatives are closed-form and differentiable in the parameters.
    """

    def __init__(
        self,
        log_snr_min: float = -10.0,
        log_snr_max: float = 10.0,
        learn_endpoints: bool = False,
        hidden: int = 1024,
    ):
        super().__init__()
        if not (math.isfinite(log_snr_min) and math.isfinite(log_snr_max) and log_snr_max > log_snr_min):
            raise ValueError(
                f"need finite log_snr_min < log_snr_max, got log_snr_min={log_snr_min!r}, "
                f"log_snr_max={log_snr_max!r}"
            )
        if int(hidden) != hidden or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        self.hidden = int(hidden)
        self.learn_endpoints = bool(learn_endpoints)
        gap = log_snr_max - log_snr_min
        lo = torch.tensor(float(log_snr_min))
        raw_gap = torch.tensor(gap + math.log(-math.expm1(-gap)))  # softplus^{-1}(gap)
        if self.learn_endpoints:
            self._log_snr_min = nn.Parameter(lo)
            self._raw_gap = nn.Parameter(raw_gap)
        else:
            self.register_buffer("_log_snr_min", lo)
            self.register_buffer("_raw_gap", raw_gap)
        # free parameters of the positive-weight layers (weights = softplus(raw))
        self.w1 = nn.Parameter(torch.randn(()))
        self.b1 = nn.Parameter(torch.randn(()))
        self.w2 = nn.Parameter(torch.randn(self.hidden))
        self.b2 = nn.Parameter(torch.randn(self.hidden))
        self.w3 = nn.Parameter(torch.randn(self.hidden))
        self.b3 = nn.Parameter(torch.randn(()))

    @property
    def log_snr_min(self) -> Tensor:
        return self._log_snr_min

    @property
    def log_snr_max(self) -> Tensor:
        return self._log_snr_min + nn.functional.softplus(self._raw_gap)

    def _params(self, dtype, device):
        sp = nn.functional.softplus
        cast = lambda p: p.to(dtype=dtype, device=device)  # noqa: E731
        return (
            cast(sp(self.w1)), cast(self.b1), cast(sp(self.w2)), cast(self.b2), cast(sp(self.w3)), cast(self.b3)
        )

    def _net(self, t: Tensor, with_derivative: bool):
        """Unnormalised ``g(t)`` (and ``dg/dt``) for ``t`` of any shape."""
        w1, b1, w2, b2, w3, b3 = self._params(t.dtype, t.device)
        tt = t.reshape(-1, 1)
        h = w1 * tt + b1  # l1
        a = torch.sigmoid(2.0 * (h * w2 + b2 - 0.5))  # (M, hidden)
        g = h + (a @ w3 + b3).unsqueeze(-1) / self.hidden
        g = g.reshape(t.shape)
        if not with_derivative:
            return g
        dg = w1 + (a * (1.0 - a)) @ (2.0 * w2 * w3) * w1 / self.hidden
        return g, dg.reshape(t.shape)

    def _gamma_and_scale(self, t):
        t = _as_time(t)
        ends = torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)
        g_ends = self._net(ends, with_derivative=False)
        lo = self.log_snr_min.to(t.dtype)
        hi = self.log_snr_max.to(t.dtype)
        scale = (hi - lo) / (g_ends[1] - g_ends[0])  # (gamma_1 - gamma_0) / (g(1) - g(0))
        return t, g_ends[0], hi, scale

    def log_snr(self, t):
        t, g0, hi, scale = self._gamma_and_scale(t)
        return hi - scale * (self._net(t, with_derivative=False) - g0)

    def d_log_snr(self, t):
        t, _, _, scale = self._gamma_and_scale(t)
        _, dg = self._net(t, with_derivative=True)
        return -scale * dg

    def _lam_dlam(self, t):
        t, g0, hi, scale = self._gamma_and_scale(t)
        g, dg = self._net(t, with_derivative=True)
        return hi - scale * (g - g0), -scale * dg

    def alpha(self, t):
        return torch.sqrt(torch.sigmoid(self.log_snr(t)))

    def sigma(self, t):
        return torch.sqrt(torch.sigmoid(-self.log_snr(t)))

    def alpha_sigma(self, t):
        lam = self.log_snr(t)
        return torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))

    def d_log_alpha(self, t):
        lam, dlam = self._lam_dlam(t)
        return 0.5 * torch.sigmoid(-lam) * dlam  # d/dt 1/2 log sigmoid(lam)

    def d_sigma2(self, t):
        lam, dlam = self._lam_dlam(t)
        return -torch.sigmoid(lam) * torch.sigmoid(-lam) * dlam  # d/dt sigmoid(-lam)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, learn_endpoints={self.learn_endpoints}"
