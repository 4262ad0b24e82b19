"""Forward SDEs built from schedules: Song et al. closed forms, marginals, priors, reverse."""

import math

import pytest
import torch

from confdiff.diffusion import (
    SDE,
    Euclidean,
    LearnableMonotone,
    Product,
    ProductSDE,
    SubVP,
    Torus,
    VEGeometric,
    VPCosine,
    VPLinear,
    ZeroCoM,
    wrapped_normal_log_prob,
)

F64 = torch.float64
T = torch.linspace(0.01, 0.99, 50, dtype=F64)


# ---------------------------------------------------------------------------- Song et al. closed forms
def test_vp_sde_coefficients():
    """VP SDE (Song et al. 2021, eq. 11): f = -beta/2, g^2 = beta."""
    sde = SDE(VPLinear(0.1, 20.0), Euclidean())
    beta = 0.1 + T * (20.0 - 0.1)
    torch.testing.assert_close(sde.f(T), -0.5 * beta)
    torch.testing.assert_close(sde.g2(T), beta)


def test_ve_sde_coefficients():
    """VE SDE (eq. 9 / 30): f = 0, g = sigma_min (sigma_max/sigma_min)^t sqrt(2 log(sigma_max/sigma_min))."""
    sde = SDE(VEGeometric(0.01, 50.0), Euclidean())
    g = 0.01 * (50.0 / 0.01) ** T * math.sqrt(2 * math.log(50.0 / 0.01))
    torch.testing.assert_close(sde.f(T), torch.zeros_like(T))
    torch.testing.assert_close(sde.g(T), g)


def test_subvp_sde_coefficients():
    """sub-VP SDE (eq. 29): f = -beta/2, g^2 = beta (1 - exp(-2 int_0^t beta))."""
    sde = SDE(SubVP(0.1, 20.0), Euclidean())
    beta = 0.1 + T * (20.0 - 0.1)
    integral = 0.1 * T + 0.5 * T**2 * (20.0 - 0.1)
    torch.testing.assert_close(sde.f(T), -0.5 * beta)
    torch.testing.assert_close(sde.g2(T), beta * (1 - torch.exp(-2 * integral)))


def test_drift_and_diffusion_broadcast_per_sample():
    sde = SDE(VPLinear(), Euclidean())
    x = torch.randn(3, 2, 4, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    drift = sde.drift(x, t)
    for i in range(3):
        torch.testing.assert_close(drift[i], sde.f(t[i : i + 1]) * x[i])
    assert sde.diffusion(x, t).shape == (3, 1, 1)
    torch.testing.assert_close(sde.diffusion(x, t).flatten(), sde.g(t))
    # a Python float t is expanded to every sample
    torch.testing.assert_close(sde.drift(x, 0.5), sde.drift(x, torch.full((3,), 0.5, dtype=F64)))


def test_torus_needs_variance_exploding():
    with pytest.raises(ValueError):
        SDE(VPLinear(), Torus())
    SDE(VEGeometric(0.01 * math.pi, math.pi), Torus())


# ---------------------------------------------------------------------------- marginals by simulation
def _euler_maruyama(sde, x, t0, t1, steps, generator):
    ts = torch.linspace(t0, t1, steps + 1, dtype=F64)
    for a, b in zip(ts[:-1], ts[1:]):
        t = a.reshape(1)  # one time shared by all paths: shape (1,) broadcasts against x (n, 1)
        dt = float(b - a)
        z = torch.randn(x.shape, generator=generator, dtype=F64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(x, t) * math.sqrt(dt) * z
    return x


@pytest.mark.parametrize(
    "schedule",
    [VPLinear(), VPCosine(), SubVP(), VEGeometric(0.01, 5.0), LearnableMonotone(-8.0, 8.0, hidden=16).double()],
    ids=["vp", "cosine", "subvp", "ve", "learnable"],
)
def test_marginal_matches_simulated_sde(schedule):
    """Euler-Maruyama of dx = f x dt + g dw from x(0) ~ N(alpha(0) x0, sigma(0)^2) has the marginal
    mean alpha(t) x0 and std sigma(t)."""
    torch.manual_seed(0)
    sde = SDE(schedule, Euclidean())
    n, x0, t1 = 20_000, 1.5, 0.6
    g = torch.Generator().manual_seed(0)
    x_init = torch.full((n, 1), x0, dtype=F64)
    t0 = torch.zeros(n, dtype=F64)
    with torch.no_grad():
        mean0, std0 = sde.marginal(x_init, t0)
        x = mean0 + std0 * torch.randn(n, 1, generator=g, dtype=F64)
        x = _euler_maruyama(sde, x, 0.0, t1, 200, g)
        mean, std = sde.marginal(x_init[:1], torch.tensor([t1], dtype=F64))
    se = float(std) / math.sqrt(n)
    assert float(x.mean()) == pytest.approx(float(mean), abs=5 * se + 2e-3)
    assert float(x.std()) == pytest.approx(float(std), rel=3e-2)


def test_perturb_uses_marginal_and_projects():
    g = torch.Generator().manual_seed(0)
    sde = SDE(VPLinear(), Euclidean())
    x0 = torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.rand(4, generator=g, dtype=F64)
    noise = torch.randn(4, 3, generator=g, dtype=F64)
    mean, std = sde.marginal(x0, t)
    torch.testing.assert_close(sde.perturb(x0, t, noise), mean + std * noise)
    alpha, sigma = sde.schedule.alpha_sigma(t)
    torch.testing.assert_close(mean, alpha[:, None] * x0)
    torch.testing.assert_close(std, sigma[:, None])
    # torus: wrapped
    tsde = SDE(VEGeometric(0.1, math.pi), Torus())
    xt = tsde.perturb(x0, t, 10 * noise)
    assert torch.all(xt >= -math.pi) and torch.all(xt < math.pi)
    # zero CoM: stays zero CoM
    batch = torch.tensor([0, 0, 1, 1, 1, 1])
    space = ZeroCoM(batch, 2)
    csde = SDE(VPLinear(), space)
    pos = space.project(torch.randn(6, 3, generator=g, dtype=F64))
    xt = csde.perturb(pos, torch.tensor([0.3, 0.8], dtype=F64), space.noise(pos, g))
    torch.testing.assert_close(space.mean(xt), torch.zeros(2, 3, dtype=F64))


# ---------------------------------------------------------------------------- priors
def test_prior_log_prob_standard_normal():
    sde = SDE(VPLinear(), Euclidean())
    x = torch.randn(5, 2, 3, dtype=F64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(sde.prior_log_prob(x), ref)
    ve = SDE(VEGeometric(0.01, 50.0), Euclidean())
    ref = torch.distributions.Normal(0.0, 50.0).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(ve.prior_log_prob(x), ref)


def test_prior_log_prob_zero_com_uses_subspace_dimension():
    batch = torch.tensor([0, 0, 0, 1, 1])
    space = ZeroCoM(batch, 2)
    sde = SDE(VPLinear(), space)
    x = space.project(torch.randn(5, 3, dtype=F64))
    logp = sde.prior_log_prob(x)
    for i, n in enumerate([3, 2]):
        d = 3 * n - 3
        expected = -0.5 * (x[batch == i] ** 2).sum() - 0.5 * d * math.log(2 * math.pi)
        assert float(logp[i]) == pytest.approx(float(expected))


def test_prior_on_torus():
    g = torch.Generator().manual_seed(0)
    uniform = SDE(VEGeometric(0.01 * math.pi, math.pi), Torus())
    x = uniform.prior_sample(torch.zeros(2000, 3, dtype=F64), g)
    assert torch.all(x >= -math.pi) and torch.all(x < math.pi)
    assert float(x.std()) == pytest.approx(math.pi / math.sqrt(3), rel=3e-2)
    torch.testing.assert_close(uniform.prior_log_prob(x[:4]), torch.full((4,), -3 * math.log(2 * math.pi), dtype=F64))
    narrow = SDE(VEGeometric(0.01, 1.0), Torus())
    x = narrow.prior_sample(torch.zeros(4, 3, dtype=F64), g)
    torch.testing.assert_close(narrow.prior_log_prob(x), wrapped_normal_log_prob(x, 1.0).sum(-1))
    # batched torus layout
    batch = torch.tensor([0, 1, 1, 2])
    bsde = SDE(VEGeometric(0.01 * math.pi, math.pi), Torus(batch, 3))
    x = bsde.prior_sample(torch.zeros(4, dtype=F64), [torch.Generator().manual_seed(i) for i in range(3)])
    torch.testing.assert_close(bsde.prior_log_prob(x), -math.log(2 * math.pi) * torch.tensor([1.0, 2, 1], dtype=F64))


def test_prior_sample_statistics_and_generators():
    sde = SDE(VEGeometric(0.01, 7.0), Euclidean())
    x = sde.prior_sample(torch.zeros(20000, 2, dtype=F64), torch.Generator().manual_seed(0))
    assert float(x.std()) == pytest.approx(7.0, rel=2e-2)
    vp = SDE(VPLinear(), Euclidean())
    like = torch.zeros(3, 4)
    a = vp.prior_sample(like, [torch.Generator().manual_seed(i) for i in range(3)])
    b = vp.prior_sample(like[1:2], [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(a[1:2], b)
    space = ZeroCoM(torch.tensor([0, 0, 1, 1, 1]), 2)
    x = SDE(VPLinear(), space).prior_sample(torch.zeros(5, 3))
    torch.testing.assert_close(space.mean(x), torch.zeros(2, 3), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- reverse SDE / PF-ODE
def test_reverse_drift_and_probability_flow():
    """With data N(0, I) under VP, p_t = N(0, I) for all t, so the score is -x: the PF-ODE velocity
    f x - g^2 s / 2 vanishes and the reverse drift is f x - g^2 s = beta x / 2."""
    sde = SDE(VPLinear(), Euclidean())
    x = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=F64)
    score_fn = lambda x, t: -x  # noqa: E731
    rev = sde.reverse(score_fn)
    beta = sde.g2(t)[:, None]
    torch.testing.assert_close(rev.drift(x, t), 0.5 * beta * x)
    torch.testing.assert_close(rev.diffusion(x, t), sde.diffusion(x, t))
    pf = sde.reverse(score_fn, probability_flow=True)
    torch.testing.assert_close(pf.drift(x, t), torch.zeros_like(x))
    torch.testing.assert_close(pf.diffusion(x, t), torch.zeros_like(sde.diffusion(x, t)))
    torch.testing.assert_close(sde.ode_drift(x, t, -x), torch.zeros_like(x))


def test_reverse_sde_recovers_gaussian_data():
    """Reverse Euler-Maruyama with the exact score of data N(m, s^2) returns to N(m, s^2)."""
    m, s = 2.0, 0.5
    sde = SDE(VPLinear(), Euclidean())

    def score_fn(x, t):
        alpha, sigma = sde.schedule.alpha_sigma(t)
        var = (alpha * s) ** 2 + sigma**2
        return -(x - alpha[:, None] * m) / var[:, None]

    g = torch.Generator().manual_seed(0)
    n = 10_000
    x = sde.prior_sample(torch.zeros(n, 1, dtype=F64), g)
    rev = sde.reverse(score_fn)
    ts = torch.linspace(1.0, 1e-3, 300, dtype=F64)
    for a, b in zip(ts[:-1], ts[1:]):
        t = a.reshape(1)  # shared time, broadcast against x (n, 1)
        dt = float(b - a)
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = x + rev.drift(x, t) * dt + rev.diffusion(x, t) * math.sqrt(-dt) * z
    assert float(x.mean()) == pytest.approx(m, abs=0.03)
    assert float(x.std()) == pytest.approx(s, rel=0.04)


# ---------------------------------------------------------------------------- product SDE
def _product():
    tor_batch = torch.tensor([0, 1, 1, 2])
    pos_batch = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    tor, pos = Torus(tor_batch, 3), ZeroCoM(pos_batch, 3)
    space = Product([tor, pos], [(4,), (7, 3)])
    sdes = [SDE(VEGeometric(0.01 * math.pi, math.pi), tor), SDE(VPLinear(), pos)]
    return ProductSDE(sdes, space), space


def test_product_sde_matches_parts():
    psde, space = _product()
    g = torch.Generator().manual_seed(0)
    x = space.project(torch.randn(space.numel, generator=g, dtype=F64))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    parts = space.split(x)
    for name in ("drift", "diffusion"):
        got = space.split(getattr(psde, name)(x, t))
        for sde, p, q in zip(psde.sdes, parts, got):
            torch.testing.assert_close(q, getattr(sde, name)(p, t).expand_as(p))
    mean, std = psde.marginal(x, t)
    assert mean.shape == x.shape and std.shape == x.shape
    noise = space.noise(x, g)
    xt = psde.perturb(x, t, noise)
    torch.testing.assert_close(space.split(xt)[0], psde.sdes[0].perturb(parts[0], t, space.split(noise)[0]))
    torch.testing.assert_close(psde.prior_log_prob(x), sum(s.prior_log_prob(p) for s, p in zip(psde.sdes, parts)))
    prior = psde.prior_sample(x, [torch.Generator().manual_seed(i) for i in range(3)])
    assert prior.shape == x.shape
    rev = psde.reverse(lambda x, t: -x, probability_flow=True)
    torch.testing.assert_close(rev.drift(x, t), psde.drift(x, t) + 0.5 * psde.diffusion(x, t) ** 2 * x)
    torch.testing.assert_close(rev.diffusion(x, t), torch.zeros_like(x))


def test_product_sde_validation():
    psde, space = _product()
    with pytest.raises(ValueError):
        ProductSDE(psde.sdes[:1], space)
    with pytest.raises(ValueError):
        ProductSDE(psde.sdes, Euclidean())
