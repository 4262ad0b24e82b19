"""Denoising score matching: parameterisations, weightings, the per-sample loss and its optimum."""

from __future__ import annotations

import math

import pytest
import torch

from confdiff.diffusion import (
    SDE,
    Euclidean,
    EpsilonPrediction,
    LikelihoodWeighting,
    MinSNRWeighting,
    Product,
    ProductSDE,
    ScoreNormWeighting,
    ScorePrediction,
    SimpleWeighting,
    Torus,
    VEGeometric,
    VPLinear,
    VPrediction,
    WrappedScorePrediction,
    X0Prediction,
    ZeroCoM,
    denoising_score_matching_loss,
    score_fn_from_model,
    wrapped_normal_log_prob,
    wrapped_normal_score_norm,
)
from confdiff.diffusion.losses import sde_coefficients
from tests.diffusion.mixtures import GaussianMixture

PARAMS = [EpsilonPrediction(), X0Prediction(), VPrediction(), ScorePrediction()]
WEIGHTS = [SimpleWeighting(), LikelihoodWeighting(), MinSNRWeighting(5.0)]
SCHEDULES = {"vp": VPLinear(), "ve": VEGeometric(0.01, 50.0)}
F64 = torch.float64


def _coeffs(schedule, t):
    a, s = schedule.alpha_sigma(torch.as_tensor(t, dtype=F64))
    return a, s


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_target_maps_to_conditional_score(param, sched):
    """``to_score(target)`` is the conditional score ``-eps / sigma`` of ``x_t = alpha x0 + sigma eps``."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 7, 3, generator=g, dtype=F64)
    for t in (1e-3, 0.3, 0.9):
        a, s = _coeffs(SCHEDULES[sched], t)
        x_t = a * x0 + s * noise
        target = param.target(x0, noise, a, s)
        torch.testing.assert_close(param.to_score(target, x_t, a, s), -noise / s)
        torch.testing.assert_close(param.to_eps(target, x_t, a, s), noise)
        torch.testing.assert_close(param.to_x0(target, x_t, a, s), x0)
        # from_score inverts to_score; to_score is affine with slope score_jacobian
        torch.testing.assert_close(param.from_score(-noise / s, x_t, a, s), target)
        delta = torch.randn(7, 3, generator=g, dtype=F64)
        torch.testing.assert_close(param.to_score(target + delta, x_t, a, s) - param.to_score(target, x_t, a, s),
                                   param.score_jacobian(a, s) * delta)


def test_v_target_is_salimans_ho_for_vp():
    a, s = _coeffs(VPLinear(), 0.4)
    x0, noise = torch.randn(2, 5, dtype=F64)
    torch.testing.assert_close(VPrediction().target(x0, noise, a, s), a * noise - s * x0)


@pytest.mark.parametrize("weighting", WEIGHTS, ids=repr)
def test_loss_is_parameterisation_invariant_in_score_units(weighting):
    """A model that implies the same score gives the same per-sample loss in every parameterisation."""
    sde = SDE(VPLinear(), Euclidean())
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 2, generator=g, dtype=F64)
    t = torch.rand(16, generator=g, dtype=F64) * 0.99 + 0.01
    noise = torch.randn(16, 2, generator=g, dtype=F64)

    def some_score(x, tt):  # any smooth field
        return torch.tanh(x) * (1 + tt[:, None]) - x

    losses = []
    for param in PARAMS:
        def model(x, tt, param=param):
            a, s, _ = sde_coefficients(sde, x, tt)
            return param.from_score(some_score(x, tt), x, a, s)

        losses.append(denoising_score_matching_loss(model, x0, sde, parameterization=param,
                                                    weighting=weighting, t=t, noise=noise))
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0])
    # ... and equals lambda(t) ||s - (-eps / sigma)||^2 computed by hand
    a, s = sde.schedule.alpha_sigma(t)
    g2 = sde.g2(t)
    lam = weighting(a, s, g2)
    x_t = a[:, None] * x0 + s[:, None] * noise
    expected = lam * ((some_score(x_t, t) + noise / s[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(losses[0], expected)


def test_weightings_in_epsilon_units():
    """Simple: ``||eps_hat - eps||^2`` (Ho et al. eq. 14); likelihood: ``g^2 / sigma^2`` times it;
    min-SNR: ``min(SNR, gamma) / SNR`` times it."""
    sde = SDE(VPLinear(), Euclidean())
    g = torch.Generator().manual_seed(2)
    x0, noise, eps_hat = torch.randn(3, 8, 2, generator=g, dtype=F64)
    t = torch.linspace(0.01, 1.0, 8, dtype=F64)
    model = lambda x, tt: eps_hat  # noqa: E731
    base = ((eps_hat - noise) ** 2).sum(-1)
    kw = dict(parameterization="epsilon", t=t, noise=noise)
    torch.testing.assert_close(denoising_score_matching_loss(model, x0, sde, weighting="simple", **kw), base)
    a, s = sde.schedule.alpha_sigma(t)
    torch.testing.assert_close(denoising_score_matching_loss(model, x0, sde, weighting="likelihood", **kw),
                               sde.g2(t) / s**2 * base)
    snr = a**2 / s**2
    torch.testing.assert_close(denoising_score_matching_loss(model, x0, sde, weighting=MinSNRWeighting(2.0), **kw),
                               torch.clamp(snr, max=2.0) / snr * base)
    # the likelihood weight g^2 is beta(t) for VP
    torch.testing.assert_close(LikelihoodWeighting()(a, s, sde.g2(t)), sde.schedule.beta(t))


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_optimum_of_the_loss_is_the_true_score(param):
    """Gaussian data, fixed t: the affine model minimising the DSM loss implies the exact score
    ``-(alpha^2 Sigma + sigma^2 I)^{-1} (x - alpha mu)`` (Vincent 2011).

    The minimiser is found by least squares on the parameterisation's targets and checked to be a
    stationary point of ``denoising_score_matching_loss``.
    """
    mix = GaussianMixture([1.0], [[0.5, -1.0]], [[[1.0, 0.4], [0.4, 0.5]]])
    sde = SDE(VPLinear(), Euclidean())
    g = torch.Generator().manual_seed(3)
    n = 100_000
    x0, _ = mix.sample(n, g)
    noise = torch.randn(n, 2, generator=g, dtype=F64)
    t = torch.full((n,), 0.3, dtype=F64)
    a, s, _ = sde_coefficients(sde, x0, t)
    x_t = sde.perturb(x0, t, noise)
    design = torch.cat([x_t, torch.ones(n, 1, dtype=F64)], -1)
    coef = torch.linalg.lstsq(design, param.target(x0, noise, a, s)).solution  # (3, 2)
    weight = coef[:2].T.clone().requires_grad_(True)
    bias = coef[2].clone().requires_grad_(True)
    model = lambda x, tt: x @ weight.T + bias  # noqa: E731
    loss = denoising_score_matching_loss(model, x0, sde, parameterization=param, weighting="likelihood",
                                         t=t, noise=noise).mean()
    grads = torch.autograd.grad(loss, [weight, bias])
    scale = float(loss.detach())
    assert all(float(gr.abs().max()) < 1e-8 * max(scale, 1.0) for gr in grads), grads
    probe = torch.randn(64, 2, generator=g, dtype=F64)
    tp = torch.full((64,), 0.3, dtype=F64)
    with torch.no_grad():
        fitted = score_fn_from_model(model, sde, param)(probe, tp)
    a, s = sde.schedule.alpha_sigma(tp)
    exact = mix.score(probe, a, s)
    # Monte-Carlo error of the fitted regression with 1e5 samples: about 1%
    assert float((fitted - exact).norm() / exact.norm()) < 0.02


def test_loss_is_per_graph_on_zero_com():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    space = ZeroCoM(batch, 3)
    sde = SDE(VPLinear(), space)
    g = torch.Generator().manual_seed(4)
    x0 = space.project(torch.randn(9, 3, generator=g, dtype=F64))
    model = lambda x, tt: 0.1 * x  # noqa: E731
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    noise = space.noise(x0, g)
    loss = denoising_score_matching_loss(model, x0, sde, t=t, noise=noise)
    assert loss.shape == (3,)
    a, s = sde.schedule.alpha_sigma(t)
    x_t = a[batch, None] * x0 + s[batch, None] * noise
    per_atom = ((0.1 * x_t - noise) ** 2).sum(-1)
    expected = torch.zeros(3, dtype=F64).index_add_(0, batch, per_atom)
    torch.testing.assert_close(loss, expected)


def test_per_sample_generators_make_losses_batch_independent():
    sde = SDE(VPLinear(), Euclidean())
    x0 = torch.randn(5, 2, dtype=F64)
    model = lambda x, tt: torch.sin(x) * tt[:, None]  # noqa: E731
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    full = denoising_score_matching_loss(model, x0, sde, generator=gens)
    part = denoising_score_matching_loss(model, x0[2:3], sde, generator=[torch.Generator().manual_seed(2)])
    assert full.shape == (5,)
    torch.testing.assert_close(part, full[2:3])
    # a single generator makes the loss reproducible
    l1 = denoising_score_matching_loss(model, x0, sde, generator=torch.Generator().manual_seed(9))
    l2 = denoising_score_matching_loss(model, x0, sde, generator=torch.Generator().manual_seed(9))
    assert torch.equal(l1, l2)


def test_wrapped_score_target_is_the_conditional_score_on_the_torus():
    sde = SDE(VEGeometric(0.01, math.pi), Torus())
    g = torch.Generator().manual_seed(5)
    x0 = (torch.rand(6, 3, generator=g, dtype=F64) * 2 - 1) * math.pi
    noise = torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.linspace(0.1, 1.0, 6, dtype=F64)
    x_t = sde.perturb(x0, t, noise)
    _, s, _ = sde_coefficients(sde, x0, t)
    target = WrappedScorePrediction().target(x0, noise, torch.ones_like(s), s)
    y = x_t.clone().requires_grad_(True)
    logp = wrapped_normal_log_prob(y - x0, s.expand_as(y)).sum()
    (exact,) = torch.autograd.grad(logp, y)
    torch.testing.assert_close(target, exact)
    loss = denoising_score_matching_loss(lambda x, tt: torch.zeros_like(x), x0, sde,
                                         parameterization="wrapped_score", weighting="simple", t=t, noise=noise)
    torch.testing.assert_close(loss, (s**2 * exact**2).sum(-1))


def test_loss_on_a_product_space_uses_each_parts_schedule():
    tor_batch = torch.tensor([0, 1, 1])
    atom_batch = torch.tensor([0, 0, 1, 1, 1])
    space = Product([Torus(tor_batch, 2), ZeroCoM(atom_batch, 2)], [(3,), (5, 3)])
    sde = ProductSDE([SDE(VEGeometric(0.01, math.pi), space.spaces[0]), SDE(VPLinear(), space.spaces[1])], space)
    x0 = space.project(torch.randn(space.numel, dtype=F64))
    t = torch.tensor([0.3, 0.7], dtype=F64)
    noise = space.noise(x0, torch.Generator().manual_seed(0))
    loss = denoising_score_matching_loss(lambda x, tt: torch.zeros_like(x), x0, sde, parameterization="score",
                                         weighting="simple", t=t, noise=noise)
    # zero output, score target -eps/sigma, simple weighting sigma^2: the loss is ||eps||^2 per sample
    torch.testing.assert_close(loss, space.sum(noise**2))


def test_loss_on_a_product_space_per_part_mean_and_weights():
    """Torsions and coordinates (the conformer loss): wrapped-score target and score-norm weighting on
    the torus, score target and simple weighting on the zero-CoM part, each part averaged over its own
    degrees of freedom (a sample without torsions: 0), the coordinate part scaled by 0.5."""
    tor_batch = torch.tensor([0, 2, 2])  # sample 1 has no torsion
    atom_batch = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    space = Product([Torus(tor_batch, 3), ZeroCoM(atom_batch, 3)], [(3,), (7, 3)])
    sde = ProductSDE([SDE(VEGeometric(0.01, math.pi), space.spaces[0]),
                      SDE(VEGeometric(0.005, 2.0), space.spaces[1])], space)
    g = torch.Generator().manual_seed(3)
    x0 = space.project(torch.randn(space.numel, generator=g, dtype=F64))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    noise = space.noise(x0, g)
    out = torch.randn(space.numel, generator=g, dtype=F64)
    loss = denoising_score_matching_loss(lambda x, tt: out, x0, sde, t=t, noise=noise,
                                         parameterization=["wrapped_score", "score"],
                                         weighting=[ScoreNormWeighting(), "simple"], reduction="mean",
                                         part_weights=[1.0, 0.5])
    (tor_out, pos_out), (tor_noise, pos_noise) = space.split(out), space.split(noise)
    s_tor = sde.sdes[0].schedule.sigma(t)[tor_batch]
    s_pos = sde.sdes[1].schedule.sigma(t)[atom_batch, None]
    y = sde.sdes[0].perturb(space.split(x0)[0], t, tor_noise).requires_grad_(True)
    (tor_target,) = torch.autograd.grad(wrapped_normal_log_prob(y - space.split(x0)[0], s_tor).sum(), y)
    tor_err = (tor_out - tor_target) ** 2 / wrapped_normal_score_norm(s_tor)
    tor = torch.zeros(3, dtype=F64).index_add_(0, tor_batch, tor_err) / torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    pos_err = (s_pos * (pos_out + pos_noise / s_pos)) ** 2
    pos_dof = torch.tensor([3.0, 6.0, 3.0], dtype=F64)  # 3 n - 3
    pos = torch.zeros(3, dtype=F64).index_add_(0, atom_batch, pos_err.sum(-1)) / pos_dof
    torch.testing.assert_close(loss, tor + 0.5 * pos)
    # one parameterisation / weighting for every part and the sum reduction: the single-space loss of each part
    whole = denoising_score_matching_loss(lambda x, tt: out, x0, sde, t=t, noise=noise, parameterization="score")
    parts = [denoising_score_matching_loss(lambda x, tt, k=k: space.split(out)[k], space.split(x0)[k], sde.sdes[k],
                                           t=t, noise=space.split(noise)[k], parameterization="score")
             for k in range(2)]
    torch.testing.assert_close(whole, parts[0] + parts[1])


def test_score_norm_weighting_is_the_simple_weighting_at_small_sigma():
    sigma = torch.tensor([0.01, 0.05, 0.2], dtype=F64)
    torch.testing.assert_close(ScoreNormWeighting()(torch.ones_like(sigma), sigma, None), sigma**2, rtol=1e-3, atol=0)


def test_per_part_options_must_match_the_parts():
    space = Product([Torus(torch.tensor([0]), 1), Euclidean()], [(1,), (1, 2)])
    sde = ProductSDE([SDE(VEGeometric(0.01, 1.0), space.spaces[0]), SDE(VPLinear(), space.spaces[1])], space)
    x0 = torch.zeros(space.numel)
    with pytest.raises(ValueError, match="3 weightings for 2 parts"):
        denoising_score_matching_loss(lambda x, t: x, x0, sde, weighting=["simple"] * 3)
    with pytest.raises(ValueError, match="not a Product"):
        denoising_score_matching_loss(lambda x, t: x, torch.zeros(2, 2), SDE(VPLinear(), Euclidean()),
                                      parameterization=["score"])
    with pytest.raises(ValueError, match="reduction"):
        denoising_score_matching_loss(lambda x, t: x, x0, sde, reduction="max")


def test_loss_trains_a_model():
    sde = SDE(VPLinear(), Euclidean())
    net = torch.nn.Linear(3, 2)
    model = lambda x, tt: net(torch.cat([x, tt[:, None]], -1))  # noqa: E731
    loss = denoising_score_matching_loss(model, torch.randn(8, 2), sde, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and loss.dtype == torch.float32
    loss.mean().backward()
    assert net.weight.grad is not None and bool(torch.isfinite(net.weight.grad).all())


def test_bad_names_raise():
    sde = SDE(VPLinear(), Euclidean())
    with pytest.raises(ValueError, match="parameterization"):
        denoising_score_matching_loss(lambda x, t: x, torch.zeros(2, 2), sde, parameterization="eps")
    with pytest.raises(ValueError, match="weighting"):
        denoising_score_matching_loss(lambda x, t: x, torch.zeros(2, 2), sde, weighting="snr")
    with pytest.raises(ValueError, match="gamma"):
        MinSNRWeighting(0.0)


class _TinyMLP(torch.nn.Module):
    """eps(x, t): an MLP on ``x`` and Fourier features of ``t``."""

    def __init__(self, width: int = 64, freqs: int = 4):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, freqs + 1, dtype=torch.float32) * math.pi)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2 + 2 * freqs, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, 2),
        )

    def forward(self, x, t):
        ft = t[:, None] * self.freqs
        return self.net(torch.cat([x, torch.sin(ft), torch.cos(ft)], -1))


def test_dsm_trained_mlp_recovers_mixture_weights():
    """A tiny network trained by DSM for a few CPU seconds samples the mixture's weights within 0.1."""
    from confdiff.diffusion import sample_ddim, time_grid

    mix = GaussianMixture([0.5, 0.3, 0.2], [[-2.5, 0.0], [2.5, 0.5], [0.0, 3.5]],
                          [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]], [[0.4, 0.0], [0.0, 0.2]]],
                          dtype=torch.float32)
    torch.manual_seed(0)
    net = _TinyMLP()
    sde = SDE(VPLinear(), Euclidean())
    gen = torch.Generator().manual_seed(0)
    steps = 800
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x0, _ = mix.sample(256, gen)
        loss = denoising_score_matching_loss(net, x0, sde, parameterization="epsilon", weighting="simple",
                                             generator=gen, t_min=1e-3).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    score = score_fn_from_model(net, sde, "epsilon")
    with torch.no_grad():
        x = sde.prior_sample(torch.zeros(5000, 2), gen)
        samples = sample_ddim(score, x, sde, time_grid(50, 1e-3))
    weights = torch.bincount(mix.assign(samples), minlength=3).float() / len(samples)
    assert float((weights - mix.weights).abs().max()) < 0.1, weights
