"""The wrapped normal distribution on the circle: density, score, sampling, and a fast score.

``WN(x; sigma) = sum_k N(x + 2 pi k; 0, sigma^2)`` for ``x`` in ``[-pi, pi)``. It is the
marginal of Brownian motion on the torus, so a VE diffusion of angles has wrapped-normal
transition kernels (Jing et al. 2022, "Torsional Diffusion", eq. 4).

Two exact series are used, each where it converges fast (truncation below float64 precision):

* images (small ``sigma``): ``log WN = logsumexp_k(-(x + 2 pi k)^2 / 2 sigma^2) - log(sigma sqrt(2 pi))``;
* Fourier / theta function (large ``sigma``): ``WN = (1 + 2 sum_n q^{n^2} cos(n x)) / 2 pi``,
  ``q = exp(-sigma^2 / 2)``.

:class:`WrappedNormalTable` is the fast score used in training and sampling: an analytic
two-image formula where it is exact (``sigma <= 1``) and bilinear interpolation of a smooth,
non-vanishing quantity elsewhere; tables are built on first use (never at import) and cached.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "wrap",
    "wrapped_normal_log_prob",
    "wrapped_normal_score",
    "wrapped_normal_score_derivative",
    "sample_wrapped_normal",
    "WrappedNormalTable",
    "fast_wrapped_normal_score",
    "wrapped_normal_score_norm",
]

PI = math.pi
TWO_PI = 2.0 * math.pi
_LOG_2PI = math.log(TWO_PI)

# Truncate a series when the omitted terms are below exp(-_TAIL) relative to the leading one
# (exp(-45) ~ 3e-20, well below float64's 1.1e-16).
_TAIL = 45.0
# The image series is used for sigma < _SWITCH, the Fourier series for sigma >= _SWITCH.
_SWITCH = 2.0


def _n_images(sigma_max: float) -> int:
    """Images ``k = -K..K`` needed for ``sigma <= sigma_max``: for ``|x| <= pi`` the first omitted
    image is at distance ``>= (2K + 1) pi`` against ``<= pi`` for the leading one, so require
    ``((2K + 1)^2 - 1) pi^2 / (2 sigma^2) >= _TAIL``."""
    return max(1, math.ceil((math.sqrt(1.0 + 2.0 * _TAIL * sigma_max**2 / PI**2) - 1.0) / 2.0))


def _n_fourier(sigma_min: float) -> int:
    """Fourier terms ``n = 1..N`` needed for ``sigma >= sigma_min``: the first omitted term is
    ``(N + 1) q^{(N+1)^2}`` against a leading 1, so require ``(N + 1)^2 sigma^2 / 2 >= _TAIL + 3``
    (the 3 covers the factor ``n`` in the score)."""
    return math.ceil(math.sqrt(2.0 * (_TAIL + 3.0)) / sigma_min)


_K_IMAGES = _n_images(_SWITCH)  # 3
_N_FOURIER = _n_fourier(_SWITCH)  # 5


def wrap(x: Tensor) -> Tensor:
    """Wrap angles to ``[-pi, pi)``; values already there are returned unchanged (bit for bit)."""
    y = torch.remainder(x + PI, TWO_PI) - PI
    y = torch.where(y >= PI, y - TWO_PI, y)  # remainder can round up to 2 pi
    return torch.where((x >= -PI) & (x < PI), x, y)


def _prepare(x, sigma) -> tuple[Tensor, Tensor, torch.dtype]:
    """Broadcast ``x`` and ``sigma``, wrap ``x``; return float64 copies and the output dtype."""
    x = torch.as_tensor(x)
    sigma_is_tensor = isinstance(sigma, Tensor)
    if not sigma_is_tensor:  # a Python number keeps its full precision
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if x.is_floating_point():
        dtype = x.dtype
    elif sigma_is_tensor and sigma.is_floating_point():
        dtype = sigma.dtype
    else:
        dtype = torch.get_default_dtype()
    x, sigma = torch.broadcast_tensors(x, sigma)
    return wrap(x.to(torch.float64)), sigma.to(torch.float64), dtype


def _images(x: Tensor, sigma: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """Distances ``d_k = x + 2 pi k`` and log-weights ``-d_k^2 / 2 sigma^2``, shape ``(..., 2K+1)``."""
    k = torch.arange(-K, K + 1, dtype=x.dtype, device=x.device)
    d = x.unsqueeze(-1) + TWO_PI * k
    return d, -0.5 * (d / sigma.unsqueeze(-1)) ** 2


def _fourier(x: Tensor, sigma: Tensor, N: int) -> tuple[Tensor, Tensor, Tensor]:
    """``c = 1 + 2 sum q^{n^2} cos nx`` and its first two derivatives in ``x``."""
    n = torch.arange(1, N + 1, dtype=x.dtype, device=x.device)
    qn = torch.exp(-0.5 * n**2 * sigma.unsqueeze(-1) ** 2)  # q^{n^2}
    nx = n * x.unsqueeze(-1)
    c = 1.0 + 2.0 * (qn * torch.cos(nx)).sum(-1)
    dc = -2.0 * (n * qn * torch.sin(nx)).sum(-1)
    d2c = -2.0 * (n**2 * qn * torch.cos(nx)).sum(-1)
    return c, dc, d2c


def _by_regime(sigma: Tensor, images: Callable[[Tensor], Tensor],
               fourier: Callable[[Tensor], Tensor]) -> Tensor:
    """``images(sigma)`` where ``sigma < _SWITCH``, else ``fourier(sigma)``. When both regimes
    occur, each branch gets sigma clamped into its regime so the unused side of ``torch.where``
    stays finite (and so do gradients)."""
    small = sigma < _SWITCH
    if bool(small.all()):
        return images(sigma)
    if not bool(small.any()):
        return fourier(sigma)
    return torch.where(small, images(torch.where(small, sigma, 0.5 * _SWITCH)),
                       fourier(torch.where(small, _SWITCH, sigma)))


def wrapped_normal_log_prob(x, sigma, n_terms: int | None = None) -> Tensor:
    """Exact ``log WN(x; sigma)`` for ``x``, ``sigma`` broadcastable; ``x`` is wrapped first.

    ``n_terms`` forces the image series with ``k = -n_terms..n_terms``; by default the series and
    its length are chosen from ``sigma`` so that truncation is below float64 precision.
    Computed in float64 and returned in ``x``'s dtype.
    """
    x, sigma, dtype = _prepare(x, sigma)
    if n_terms is not None:
        _, logw = _images(x, sigma, int(n_terms))
        out = torch.logsumexp(logw, -1) - torch.log(sigma) - 0.5 * _LOG_2PI
        return out.to(dtype)

    def images(s):
        _, logw = _images(x, s, _K_IMAGES)
        return torch.logsumexp(logw, -1) - torch.log(s) - 0.5 * _LOG_2PI

    def fourier(s):
        return torch.log(_fourier(x, s, _N_FOURIER)[0]) - _LOG_2PI

    return _by_regime(sigma, images, fourier).to(dtype)


def wrapped_normal_score(x, sigma, n_terms: int | None = None) -> Tensor:
    """Exact score ``d/dx log WN(x; sigma)`` (same conventions as :func:`wrapped_normal_log_prob`)."""
    x, sigma, dtype = _prepare(x, sigma)
    if n_terms is not None:
        d, logw = _images(x, sigma, int(n_terms))
        return (-(torch.softmax(logw, -1) * d).sum(-1) / sigma**2).to(dtype)

    def images(s):
        d, logw = _images(x, s, _K_IMAGES)
        return -(torch.softmax(logw, -1) * d).sum(-1) / s**2

    def fourier(s):
        c, dc, _ = _fourier(x, s, _N_FOURIER)
        return dc / c

    return _by_regime(sigma, images, fourier).to(dtype)


def wrapped_normal_score_derivative(x, sigma) -> Tensor:
    """Exact ``d^2/dx^2 log WN(x; sigma)``: ``-1/sigma^2 + Var_k(d_k)/sigma^4`` (images) or
    ``c''/c - (c'/c)^2`` (Fourier)."""
    x, sigma, dtype = _prepare(x, sigma)

    def images(s):
        d, logw = _images(x, s, _K_IMAGES)
        w = torch.softmax(logw, -1)
        mean = (w * d).sum(-1, keepdim=True)
        return -1.0 / s**2 + (w * (d - mean) ** 2).sum(-1) / s**4

    def fourier(s):
        c, dc, d2c = _fourier(x, s, _N_FOURIER)
        return d2c / c - (dc / c) ** 2

    return _by_regime(sigma, images, fourier).to(dtype)


def sample_wrapped_normal(shape, sigma=None, generator: torch.Generator | None = None, *,
                          dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Samples of ``WN(0, sigma^2)``: ``wrap(sigma * eps)``.

    ``shape`` is a shape (with ``sigma`` a float or a tensor broadcastable to it), or a tensor of
    sigmas when ``sigma`` is omitted (the samples then have its shape).
    """
    if sigma is None:
        if not isinstance(shape, Tensor):
            raise ValueError("sigma is required unless the first argument is a tensor of sigmas")
        sigma, shape = shape, shape.shape
    if isinstance(shape, int):
        shape = (shape,)
    if isinstance(sigma, Tensor):
        dtype = dtype or (sigma.dtype if sigma.is_floating_point() else torch.get_default_dtype())
        device = device if device is not None else sigma.device
    else:
        dtype = dtype or torch.get_default_dtype()
        device = device if device is not None else "cpu"
    sigma = torch.as_tensor(sigma, dtype=dtype, device=device)
    if generator is None:
        eps = torch.randn(shape, dtype=dtype, device=device)
    else:
        eps = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)
    return wrap(sigma * eps)


class WrappedNormalTable:
    """Fast wrapped-normal score and expected squared score, checked against the exact series.

    Score (``y = |x|``, the score is odd in ``x``):

    * ``sigma <= sigma_split`` (1.0): the images ``k = -1, 0, 1`` in closed form,
      ``sigma^2 s = -y + 2 pi (S(y) - S(-y))`` with ``S(y) = sigmoid(2 pi (y - pi) / sigma^2)``,
      rewritten as ``d - pi tanh(pi d / sigma^2) - 2 pi S(-y)`` with ``d = pi - y`` near ``pi``
      to avoid cancellation. Omitted terms are ``O(exp(-4 pi^2 / sigma^2))`` (< 1e-17): exact.
    * ``sigma_split < sigma <= sigma_far`` (8.0): bilinear interpolation of
      ``L(y, sigma) = log(-sigma^2 s(y) / sin(y))`` on a grid (cell-centred in ``y`` with mirror
      ghost cells: ``L`` is even about ``y = 0`` and ``y = pi``). ``L`` is smooth and finite
      including at the zeros of the score, so the relative error of ``s = -sin(x) e^L / sigma^2``
      is uniformly that of ``e^L``.
    * ``sigma > sigma_far``: ``L = log(2 sigma^2) - sigma^2 / 2`` (first Fourier term; relative
      error ``O(exp(-sigma^2 / 2))``).

    Expected squared score ``E_{x ~ WN}[s(x)^2]``: trapezoidal quadrature (spectrally accurate
    for periodic integrands) of the exact series on a uniform ``sigma`` grid, stored as
    ``log(sigma^2 E)`` and interpolated linearly; ``1 / sigma^2`` below ``sigma = 0.1`` and
    ``2 exp(-sigma^2)`` above ``sigma_far``.

    Tables are built in float64 on the first call and cached per ``(dtype, device)``.
    """

    def __init__(self, n_x: int = 512, sigma_step: float = 0.01, sigma_split: float = 1.0,
                 sigma_far: float = 8.0, e_sigma_step: float = 0.005, n_quadrature: int = 128):
        if n_x < 2:
            raise ValueError(f"n_x must be >= 2, got {n_x!r}")
        if not (0 < sigma_split < sigma_far):
            raise ValueError(f"need 0 < sigma_split < sigma_far, got {sigma_split!r}, {sigma_far!r}")
        if not (0 < sigma_step < sigma_far - sigma_split):
            raise ValueError(f"sigma_step must be in (0, sigma_far - sigma_split), got {sigma_step!r}")
        if not (0 < e_sigma_step < sigma_far):
            raise ValueError(f"e_sigma_step must be in (0, sigma_far), got {e_sigma_step!r}")
        if n_quadrature < 16:
            raise ValueError(f"n_quadrature must be >= 16, got {n_quadrature!r}")
        self.n_x = int(n_x)
        self.sigma_split = float(sigma_split)
        self.sigma_far = float(sigma_far)
        self.n_sigma = int(math.ceil((sigma_far - sigma_split) / sigma_step)) + 1
        self.sigma_step = (self.sigma_far - self.sigma_split) / (self.n_sigma - 1)
        self.n_quadrature = int(n_quadrature)
        self.e_sigma_small = 0.1
        self.n_e_sigma = int(math.ceil(sigma_far / e_sigma_step)) + 1
        self.e_sigma_step = self.sigma_far / (self.n_e_sigma - 1)
        self._master: tuple[Tensor, Tensor] | None = None
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._lock = threading.Lock()

    # --- building ----------------------------------------------------------------------------
    def _build(self) -> tuple[Tensor, Tensor]:
        f64 = torch.float64
        h = PI / self.n_x
        y = (torch.arange(self.n_x, dtype=f64) + 0.5) * h  # cell centres in (0, pi)
        sig = self.sigma_split + self.sigma_step * torch.arange(self.n_sigma, dtype=f64)
        yy, ss = torch.meshgrid(y, sig, indexing="ij")
        score = wrapped_normal_score(yy, ss)
        L = torch.log(-ss**2 * score / torch.sin(yy))
        L = torch.cat([L[:1], L, L[-1:]])  # mirror ghost cells at y = -h/2 and y = pi + h/2

        # log(sigma^2 E[s^2]) by the periodic trapezoidal rule on [-pi, pi)
        e_sig = self.e_sigma_step * torch.arange(self.n_e_sigma, dtype=f64)
        F = torch.zeros_like(e_sig)
        xq = -PI + TWO_PI * torch.arange(self.n_quadrature, dtype=f64) / self.n_quadrature
        idx = torch.nonzero(e_sig >= self.e_sigma_small).flatten()
        for chunk in idx.split(128):
            s = e_sig[chunk].unsqueeze(-1)
            xx, sb = torch.broadcast_tensors(xq, s)
            logp = wrapped_normal_log_prob(xx, sb)
            sc = wrapped_normal_score(xx, sb)
            e2 = (torch.exp(logp) * sc**2).mean(-1) * TWO_PI
            F[chunk] = torch.log(s.squeeze(-1) ** 2 * e2)
        return L.contiguous(), F

    def _tables(self, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
        key = (dtype, torch.device(device))
        tables = self._cache.get(key)
        if tables is None:
            with self._lock:
                if self._master is None:
                    self._master = self._build()
                tables = tuple(t.to(dtype=dtype, device=device) for t in self._master)
                self._cache[key] = tables
        return tables

    # --- evaluation --------------------------------------------------------------------------
    @staticmethod
    def _inputs(x, sigma) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return torch.broadcast_tensors(x, sigma)

    def _near(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``sigma^2 * score`` from the images -1, 0, 1 (exact for ``sigma <= 1``)."""
        y = x.abs()
        s2 = sigma**2
        # d = pi - y to full precision: pi = pi_hi + pi_lo with pi_hi = pi rounded to x's dtype,
        # pi_hi - y is exact near pi (Sterbenz), so d keeps its relative accuracy as y -> pi
        pi_hi = float(torch.tensor(PI, dtype=x.dtype))
        d = (pi_hi - y) + (PI - pi_hi)
        tail = torch.sigmoid(-TWO_PI * (y + PI) / s2)  # S(-y): image k = +1
        g_low = -y + TWO_PI * (torch.sigmoid(-TWO_PI * d / s2) - tail)
        g_high = d - PI * torch.tanh(PI * d / s2) - TWO_PI * tail
        g = torch.where(y < 0.5 * PI, g_low, g_high)
        return torch.sign(x) * g

    def score(self, x, sigma) -> Tensor:
        """Fast ``d/dx log WN(x; sigma)``; ``x`` and ``sigma`` broadcast, result in ``x``'s dtype."""
        x, sigma = self._inputs(x, sigma)
        x = wrap(x)
        L_table, _ = self._tables(x.dtype, x.device)
        near_mask = sigma <= self.sigma_split
        s_near = torch.where(near_mask, sigma, self.sigma_split)
        s_far = torch.where(near_mask, self.sigma_split, sigma)
        near = self._near(x, s_near) / s_near**2

        # bilinear interpolation of L(y, sigma) in the padded, cell-centred table
        y = x.abs()
        py = (y * (self.n_x / PI) + 0.5).clamp(0.0, self.n_x + 1.0)  # +0.5 = -0.5 + 1 ghost row
        i0 = py.floor().clamp(max=self.n_x).long()
        fy = py - i0
        ps = ((s_far - self.sigma_split) / self.sigma_step).clamp(0.0, self.n_sigma - 1.0)
        j0 = ps.floor().clamp(max=self.n_sigma - 2).long()
        fs = ps - j0
        flat = L_table.reshape(-1)
        n_s = self.n_sigma
        base = i0 * n_s + j0
        L = ((1 - fy) * ((1 - fs) * flat[base] + fs * flat[base + 1])
             + fy * ((1 - fs) * flat[base + n_s] + fs * flat[base + n_s + 1]))
        L_far = torch.log(2.0 * s_far**2) - 0.5 * s_far**2
        L = torch.where(s_far > self.sigma_far, L_far, L)
        far = -torch.sin(x) * torch.exp(L) / s_far**2
        return torch.where(near_mask, near, far)

    def expected_squared_score(self, sigma) -> Tensor:
        """``E_{x ~ WN(0, sigma^2)}[score(x)^2]`` (Fisher information of the location)."""
        sigma = torch.as_tensor(sigma)
        if not sigma.is_floating_point():
            sigma = sigma.to(torch.get_default_dtype())
        _, F_table = self._tables(sigma.dtype, sigma.device)
        p = (sigma / self.e_sigma_step).clamp(0.0, self.n_e_sigma - 1.0)
        j0 = p.floor().clamp(max=self.n_e_sigma - 2).long()
        f = p - j0
        F = (1 - f) * F_table[j0] + f * F_table[j0 + 1]
        F = torch.where(sigma < self.e_sigma_small, torch.zeros_like(F), F)
        F_far = math.log(2.0) + 2.0 * torch.log(sigma) - sigma**2
        F = torch.where(sigma > self.sigma_far, F_far, F)
        return torch.exp(F) / sigma**2


_shared_table: WrappedNormalTable | None = None
_shared_lock = threading.Lock()


def _table() -> WrappedNormalTable:
    global _shared_table
    if _shared_table is None:
        with _shared_lock:
            if _shared_table is None:
                _shared_table = WrappedNormalTable()
    return _shared_table


def fast_wrapped_normal_score(x, sigma) -> Tensor:
    """Fast wrapped-normal score from the shared lazily built :class:`WrappedNormalTable`."""
    return _table().score(x, sigma)


def wrapped_normal_score_norm(sigma) -> Tensor:
    """``E[score^2]`` at ``sigma`` from the shared table; torsion scores are divided by its square
    root (torsional diffusion's ``score_norm``)."""
    return _table().expected_squared_score(sigma)
