"""Exact time-dependent scores of mixtures, shared by the diffusion tests.

* :class:`GaussianMixture` in ``R^D``: under a linear SDE with marginal
  ``x_t = alpha(t) x_0 + sigma(t) eps`` the marginal of a Gaussian mixture is again a Gaussian
  mixture, ``p_t(x) = sum_k w_k N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)``, so its score is
  known in closed form at every noise level.
* :class:`WrappedNormalMixture` on the torus ``T^m`` under the variance-exploding diffusion
  ``x_t = wrap(x_0 + sigma(t) eps)``: a wrapped normal convolved with a wrapped normal is a wrapped
  normal, so component ``k`` at time ``t`` is the product over angles of
  ``WN(mu_kd, s_kd^2 + sigma(t)^2)``.  The series here is written independently of
  ``confdiff.diffusion.torus`` so that it can check it.

Everything is vectorised over the batch (per-sample ``alpha``, ``sigma`` of shape ``(B,)``) and
computed in the dtype of ``x``.  Nothing here imports the package under test.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["GaussianMixture", "WrappedNormalMixture", "wrap", "moment_check", "mean_cov_check"]


def wrap(x: Tensor) -> Tensor:
    """Angles wrapped to ``[-pi, pi)``."""
    y = x - 2 * math.pi * torch.floor((x + math.pi) / (2 * math.pi))
    return torch.where(y >= math.pi, y - 2 * math.pi, y)  # rounding can land on pi


def _per_sample(v: Tensor, n: int, dtype):
    """``v`` as a Python float when it is one value for the whole batch (the usual case: samplers
    step all samples together), else as a ``(n,)`` tensor; scalars make the loops below cheaper."""
    v = torch.as_tensor(v)
    if v.numel() == 1 or bool((v == v.reshape(-1)[0]).all()):
        return float(v.reshape(-1)[0])
    return v.to(dtype).expand(n)


def _randn(shape: tuple[int, ...], generator, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype)


class GaussianMixture:
    """``sum_k w_k N(mu_k, Sigma_k)`` in ``R^D`` with its exact score under a linear SDE.

    Parameters
    ----------
    weights : shape (K,)
    means : shape (K, D)
    covs : shape (K, D, D), symmetric positive definite
    """

    def __init__(self, weights, means, covs, dtype=torch.float64):
        self.weights = torch.as_tensor(weights, dtype=dtype)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=dtype)
        self.covs = torch.as_tensor(covs, dtype=dtype)
        self.num_components, self.dim = self.means.shape
        # Sigma_k = U_k diag(lam_k) U_k^T: the marginal covariance alpha^2 Sigma_k + sigma^2 I has the
        # same eigenvectors and eigenvalues alpha^2 lam_k + sigma^2, so everything below is elementwise.
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # (K, D), (K, D, D)
        self._chol = torch.linalg.cholesky(self.covs)

    # ------------------------------------------------------------------ data statistics
    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def cov(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def marginal_mean_cov(self, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        """Mean and covariance of the time-t marginal ``alpha x_0 + sigma eps``."""
        eye = torch.eye(self.dim, dtype=self.means.dtype)
        return alpha * self.mean(), alpha**2 * self.cov() + sigma**2 * eye

    def sample(self, n: int, generator=None) -> tuple[Tensor, Tensor]:
        """``n`` samples ``(n, D)`` and their component labels ``(n,)``."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = _randn((n, self.dim), generator, self.means.dtype)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol[labels], z)
        return x, labels

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean (Euclidean) for each row of ``x``."""
        return torch.cdist(x.to(self.means.dtype), self.means).argmin(-1)

    # ------------------------------------------------------------------ time-dependent density
    def _terms(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component log-densities ``[K x (B,)]`` and score columns ``[K x [D x (B,)]]`` at time t.

        Written over contiguous ``(B,)`` vectors (loops over the few components and dimensions):
        reductions over tiny trailing dimensions are slow on the CPU.
        """
        a = _per_sample(alpha, x.shape[0], x.dtype)
        s2 = _per_sample(sigma, x.shape[0], x.dtype) ** 2
        a2 = a * a
        cols = x.T.contiguous()  # (D, B)
        D = self.dim
        log_comps, score_comps = [], []
        for k in range(self.num_components):
            U = self.eigvecs[k].tolist()
            lam_k = self.eigvals[k].tolist()
            mu = self.means[k].tolist()
            d = [cols[j] - mu[j] * a for j in range(D)]  # x - alpha mu_k
            quad = 0.0
            logdet = 0.0
            w = []  # y_i / lam_i with y = U^T d
            for i in range(D):
                lam = a2 * lam_k[i] + s2  # eigenvalue of alpha^2 Sigma_k + sigma^2 I
                y = sum(U[j][i] * d[j] for j in range(D))
                quad = quad + y * y / lam
                logdet = logdet + (math.log(lam) if isinstance(lam, float) else torch.log(lam))
                w.append(y / lam)
            log_comps.append(-0.5 * (quad + logdet + D * math.log(2 * math.pi)))
            # -C_k^{-1} (x - alpha mu_k) = -U (y / lam)
            score_comps.append([-sum(U[j][i] * w[i] for i in range(D)) for j in range(D)])  # D columns (B,)
        return log_comps, score_comps

    def _posterior(self, x, alpha, sigma):
        log_comps, score_comps = self._terms(x, alpha, sigma)
        logw = self.weights.log().tolist()
        lw = [lc + lwk for lc, lwk in zip(log_comps, logw)]
        m = lw[0]
        for v in lw[1:]:
            m = torch.maximum(m, v)
        e = [torch.exp(torch.clamp(v - m, min=-80.0)) for v in lw]  # no denormals (slow)
        total = sum(e)
        return [v / total for v in e], m + torch.log(total), score_comps

    def log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``log p_t(x)``, shape (B,)."""
        return self._posterior(x, alpha, sigma)[1]

    def responsibilities(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``p(k | x_t)``, shape (B, K) (values below ~1e-35 relative are flushed to 0)."""
        return torch.stack(self._posterior(x, alpha, sigma)[0], -1)

    def log_responsibilities(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``log p(k | x_t)``, shape (B, K), exact in log space (a classifier's log-probability)."""
        log_comps, _ = self._terms(x, alpha, sigma)
        lw = torch.stack(log_comps, -1) + torch.log(self.weights.to(x.dtype))
        return lw - torch.logsumexp(lw, -1, keepdim=True)

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``grad_x log p_t(x) = sum_k p(k | x) (-C_k^{-1}(x - alpha mu_k))``, shape (B, D)."""
        r, _, score_comps = self._posterior(x, alpha, sigma)
        return torch.stack([sum(rk * sk[j] for rk, sk in zip(r, score_comps)) for j in range(self.dim)], -1)

    def component_score(self, x: Tensor, alpha: Tensor, sigma: Tensor, k: int) -> Tensor:
        """Score of component ``k`` alone (the class-conditional score ``grad log p_t(x | y=k)``)."""
        return torch.stack(self._terms(x, alpha, sigma)[1][k], -1)

    # ------------------------------------------------------------------ bound to a schedule
    def score_fn(self, schedule):
        """``score_fn(x, t)`` of the marginal under ``schedule`` (``alpha(t)``, ``sigma(t)``)."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, schedule.alpha(t), schedule.sigma(t))

        return fn

    def log_prob_fn(self, schedule):
        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.log_prob(x, schedule.alpha(t), schedule.sigma(t))

        return fn


def _wn_images(d: Tensor, v: Tensor, n_max: int) -> tuple[Tensor, Tensor]:
    """Image series ``sum_{|n| <= n_max} N(d + 2 pi n; 0, v)``: the ``n = 0`` image dominates for
    ``|d| <= pi``, so the others enter as ratios ``exp(-(2 pi n d + 2 pi^2 n^2) / v) <= 1``."""
    inv_v = 1.0 / v
    total, moment = torch.ones_like(d), d.clone()
    for n in [*range(-n_max, 0), *range(1, n_max + 1)]:
        # clamped: a term below exp(-80) is negligible, and denormal results are very slow
        e = torch.exp(torch.clamp(-(2 * math.pi * n) * inv_v * (d + math.pi * n), min=-80.0))
        total = total + e
        moment = moment + (d + 2 * math.pi * n) * e
    log_norm = math.log(2 * math.pi * v) if isinstance(v, float) else torch.log(2 * math.pi * v)
    log_p = -0.5 * d * d * inv_v - 0.5 * log_norm + torch.log(total)
    return log_p, -moment * inv_v / total


def _wn_fourier(d: Tensor, v: Tensor, n_max: int) -> tuple[Tensor, Tensor]:
    """Theta-function series ``(1 + 2 sum_{n=1}^{n_max} q^{n^2} cos(n d)) / 2 pi``, ``q = exp(-v / 2)``."""
    c, dc = torch.ones_like(d), torch.zeros_like(d)
    for n in range(1, n_max + 1):
        qn = math.exp(-0.5 * n * n * v) if isinstance(v, float) else torch.exp(-0.5 * n * n * v)
        c = c + 2.0 * qn * torch.cos(n * d)
        dc = dc - 2.0 * n * qn * torch.sin(n * d)
    return torch.log(c) - math.log(2 * math.pi), dc / c


def _wn_terms(d: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Log-density and d/dx log-density of the 1-D wrapped normal ``WN(0, var)`` at ``d`` in ``[-pi, pi)``.

    Two exact series, each truncated where the omitted terms are below ``exp(-45)`` relative:
    images for ``var < 4`` (``|n| <= N`` with ``((2N + 1)^2 - 1) pi^2 / (2 var) >= 45``) and the
    theta-function series for ``var >= 4`` (``n <= N`` with ``N^2 var / 2 >= 48``).  ``d`` and
    ``var`` have the same shape; every operation is on whole tensors (reductions over a tiny
    trailing axis are slow on the CPU).
    """
    if isinstance(var, float):  # one variance for the whole batch
        if var < 4.0:
            return _wn_images(d, var, max(1, math.ceil((math.sqrt(1.0 + 90.0 * var / math.pi**2) - 1.0) / 2.0)))
        return _wn_fourier(d, var, max(1, math.ceil(math.sqrt(96.0 / var))))
    small = var < 4.0
    all_small, none_small = bool(small.all()), not bool(small.any())
    if not none_small:
        vmax = float(var.max()) if all_small else float(torch.where(small, var, torch.zeros_like(var)).max())
        n_img = max(1, math.ceil((math.sqrt(1.0 + 90.0 * vmax / math.pi**2) - 1.0) / 2.0))
        v = var if all_small else torch.where(small, var, torch.ones_like(var))
        img = _wn_images(d, v, n_img)
        if all_small:
            return img
    vmin = float(var.min()) if none_small else float(torch.where(small, torch.full_like(var, math.inf), var).min())
    v = var if none_small else torch.where(small, torch.full_like(var, 4.0), var)
    four = _wn_fourier(d, v, max(1, math.ceil(math.sqrt(96.0 / vmin))))
    if none_small:
        return four
    return torch.where(small, img[0], four[0]), torch.where(small, img[1], four[1])


class WrappedNormalMixture:
    """``sum_k w_k prod_d WN(mu_kd, s_kd^2)`` on ``T^m`` with its exact score under VE noising.

    Parameters
    ----------
    weights : shape (K,)
    means : shape (K, m), angles
    stds : shape (K, m) or (K,): per-angle standard deviations of the unwrapped normals
    """

    def __init__(self, weights, means, stds, dtype=torch.float64):
        self.weights = torch.as_tensor(weights, dtype=dtype)
        self.weights = self.weights / self.weights.sum()
        self.means = wrap(torch.as_tensor(means, dtype=dtype))
        self.num_components, self.dim = self.means.shape
        stds = torch.as_tensor(stds, dtype=dtype)
        self.stds = stds[:, None].expand(-1, self.dim).clone() if stds.ndim == 1 else stds

    def sample(self, n: int, generator=None) -> tuple[Tensor, Tensor]:
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = _randn((n, self.dim), generator, self.means.dtype)
        return wrap(self.means[labels] + self.stds[labels] * z), labels

    def assign(self, x: Tensor) -> Tensor:
        """Nearest component mean in wrapped (geodesic) distance."""
        d = wrap(x[:, None, :] - self.means[None].to(x.dtype))
        return (d**2).sum(-1).argmin(-1)

    def _posterior(self, x: Tensor, sigma: Tensor):
        """Responsibilities ``[K x (B,)]``, ``log p (B,)`` and component score columns ``[K x [m x (B,)]]``."""
        s2 = _per_sample(sigma, x.shape[0], x.dtype) ** 2
        cols = x.T.contiguous()  # (m, B)
        means, var0 = self.means.tolist(), (self.stds**2).tolist()
        log_comps, score_comps = [], []
        for k in range(self.num_components):
            lc, sc = 0.0, []
            for j in range(self.dim):
                lp, s = _wn_terms(wrap(cols[j] - means[k][j]), var0[k][j] + s2)
                lc = lc + lp
                sc.append(s)
            log_comps.append(lc)
            score_comps.append(sc)
        lw = [lc + math.log(w) for lc, w in zip(log_comps, self.weights.tolist())]
        m = lw[0]
        for v in lw[1:]:
            m = torch.maximum(m, v)
        e = [torch.exp(torch.clamp(v - m, min=-80.0)) for v in lw]  # no denormals (slow)
        total = sum(e)
        return [v / total for v in e], m + torch.log(total), score_comps

    def log_prob(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Log-density of the VE marginal at noise level ``sigma (B,)``, shape (B,)."""
        return self._posterior(x, sigma)[1]

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Its score, shape (B, m)."""
        r, _, score_comps = self._posterior(x, sigma)
        return torch.stack([sum(rk * sk[j] for rk, sk in zip(r, score_comps)) for j in range(self.dim)], -1)

    def score_fn(self, schedule):
        """``score_fn(x, t)`` of the VE marginal ``wrap(x_0 + sigma(t) eps)``."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, schedule.sigma(t))

        return fn

    # Circular moments: E[exp(i n theta)] = exp(i n mu) exp(-n^2 s^2 / 2) for WN(mu, s^2).
    def features(self, x: Tensor) -> Tensor:
        """Trigonometric features whose means fix the circular mean and (co)variance.

        ``cos / sin`` of each angle (the circular mean), of twice each angle (the spread), and of
        the sum and difference of every pair of angles (the correlation).
        """
        cols = [torch.cos(x), torch.sin(x), torch.cos(2 * x), torch.sin(2 * x)]
        i, j = torch.triu_indices(self.dim, self.dim, 1)
        if len(i):
            cols += [torch.cos(x[:, i] - x[:, j]), torch.cos(x[:, i] + x[:, j]),
                     torch.sin(x[:, i] - x[:, j]), torch.sin(x[:, i] + x[:, j])]
        return torch.cat(cols, -1)

    def expected_features(self, sigma: float = 0.0) -> Tensor:
        """Exact ``E[features(x)]`` under the mixture convolved with ``WN(0, sigma^2)`` (the VE
        marginal at noise level ``sigma``; ``sigma = 0`` is the data)."""
        mu, s2, w = self.means, self.stds**2 + sigma**2, self.weights

        def cexp(n_mu, n2_s2):  # E[exp(i (...))] per component -> (K, ...)
            return torch.exp(-0.5 * n2_s2) * torch.cos(n_mu), torch.exp(-0.5 * n2_s2) * torch.sin(n_mu)

        c1, s1 = cexp(mu, s2)
        c2, s2_ = cexp(2 * mu, 4 * s2)
        cols = [c1, s1, c2, s2_]
        i, j = torch.triu_indices(self.dim, self.dim, 1)
        if len(i):
            cd, sd = cexp(mu[:, i] - mu[:, j], s2[:, i] + s2[:, j])
            cs, ss = cexp(mu[:, i] + mu[:, j], s2[:, i] + s2[:, j])
            cols += [cd, cs, sd, ss]
        per_comp = torch.cat(cols, -1)  # (K, F)
        return (w[:, None] * per_comp).sum(0)


def moment_check(samples_features: Tensor, expected: Tensor, n_se: float = 3.0) -> tuple[bool, Tensor]:
    """Are the sample means of ``features (n, F)`` within ``n_se`` standard errors of ``expected``?

    Returns ``(ok, z)`` with ``z`` the per-feature error in standard errors.
    """
    f = samples_features.to(expected.dtype)
    n = f.shape[0]
    se = f.std(0) / math.sqrt(n)
    z = (f.mean(0) - expected) / se
    return bool((z.abs() <= n_se).all()), z


def mean_cov_check(x: Tensor, mean: Tensor, cov: Tensor, n_se: float = 3.0) -> tuple[bool, Tensor]:
    """Sample mean and covariance of ``x (n, D)`` against the exact ones, in standard errors.

    SE of the mean: ``sqrt(var / n)``.  SE of the sample covariance entry ``C_ij``: the standard
    deviation of ``(x_i - m_i)(x_j - m_j)`` over the samples divided by ``sqrt(n)`` (the delta-method
    SE of a sample covariance).  Returns ``(ok, z)`` with ``z`` the errors in SEs:
    ``D`` mean entries followed by the ``D (D + 1) / 2`` upper-triangular covariance entries.
    """
    x = x.to(mean.dtype)
    n, d = x.shape
    m = x.mean(0)
    z_mean = (m - mean) / (x.var(0) / n).sqrt()
    c = x - m
    i, j = torch.triu_indices(d, d)
    prods = c[:, i] * c[:, j]  # (n, P)
    z_cov = (prods.sum(0) / (n - 1) - cov[i, j]) / (prods.std(0) / math.sqrt(n))
    z = torch.cat([z_mean, z_cov])
    return bool((z.abs() <= n_se).all()), z

