"""Schedules: closed forms, derivatives, monotonicity, the learnable schedule."""

import math

import pytest
import torch

from confdiff.diffusion import LearnableMonotone, Schedule, SubVP, VEGeometric, VPCosine, VPLinear

F64 = torch.float64


def all_schedules():
    torch.manual_seed(0)
    return {
        "vp_linear": VPLinear(),
        "vp_cosine": VPCosine(),
        "vp_cosine_noclip": VPCosine(max_beta=math.inf),
        "ve": VEGeometric(0.01, 50.0),
        "subvp": SubVP(0.1, 20.0),
        "learnable": LearnableMonotone(-10.0, 8.0, hidden=64).double(),
        "learnable_ends": LearnableMonotone(-7.0, 9.0, learn_endpoints=True, hidden=64).double(),
    }


SCHEDULES = all_schedules()
NAMES = sorted(SCHEDULES)
T_INNER = torch.linspace(0.02, 0.98, 49, dtype=F64)


# ---------------------------------------------------------------------------- closed forms
def test_vp_linear_closed_form():
    s = VPLinear(0.1, 20.0)
    t = T_INNER
    integral = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)  # int_0^t beta
    alpha = torch.exp(-0.5 * integral)
    torch.testing.assert_close(s.alpha(t), alpha)
    torch.testing.assert_close(s.sigma(t), torch.sqrt(1 - alpha**2))
    torch.testing.assert_close(s.log_snr(t), torch.log(alpha**2 / (1 - alpha**2)))
    assert float(s.alpha(torch.tensor(0.0))) == 1.0 and float(s.sigma(torch.tensor(0.0))) == 0.0


def test_vp_cosine_closed_form():
    s_ = 0.008
    sched = VPCosine(s=s_)
    t = torch.linspace(0.0, 0.99, 50, dtype=F64)  # below the clip time
    assert sched.t_clip > 0.99
    f = lambda u: torch.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = f(t) / f(torch.zeros((), dtype=F64))
    torch.testing.assert_close(sched.alpha(t) ** 2, alpha_bar)
    torch.testing.assert_close(sched.sigma(t) ** 2, 1 - alpha_bar)
    # clipped: beta never exceeds max_beta, log-SNR finite at t = 1
    t_all = torch.linspace(0, 1, 1001, dtype=F64)
    assert float(sched.beta(t_all).max()) <= 999.0 + 1e-9
    assert math.isfinite(float(sched.log_snr(torch.tensor(1.0, dtype=F64))))
    assert float(sched.alpha(torch.tensor(1.0, dtype=F64))) > 0


def test_ve_closed_form():
    s = VEGeometric(0.01, 50.0)
    t = T_INNER
    torch.testing.assert_close(s.sigma(t), 0.01 * (50.0 / 0.01) ** t)
    torch.testing.assert_close(s.alpha(t), torch.ones_like(t))
    torch.testing.assert_close(s.log_snr(t), -2 * torch.log(0.01 * (50.0 / 0.01) ** t))
    assert s.prior_std() == 50.0 and s.variance_exploding


def test_subvp_closed_form():
    s, vp = SubVP(0.1, 20.0), VPLinear(0.1, 20.0)
    t = T_INNER
    torch.testing.assert_close(s.alpha(t), vp.alpha(t))
    torch.testing.assert_close(s.sigma(t), 1 - vp.alpha(t) ** 2)  # Song et al. eq. 29
    torch.testing.assert_close(s.log_snr(t), torch.log(vp.alpha(t) ** 2 / (1 - vp.alpha(t) ** 2) ** 2))


# ---------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autograd(name):
    sched = SCHEDULES[name]
    t = T_INNER.clone().requires_grad_(True)

    def grad(fn):
        out = fn(t)
        if not out.requires_grad:  # constant in t (VE alpha = 1)
            return torch.zeros_like(t)
        (g,) = torch.autograd.grad(out.sum(), t)
        return g

    with torch.no_grad():
        d_log_snr, d_log_alpha, d_sigma2 = sched.d_log_snr(t), sched.d_log_alpha(t), sched.d_sigma2(t)
    torch.testing.assert_close(d_log_snr, grad(sched.log_snr), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d_log_alpha, grad(lambda u: torch.log(sched.alpha(u))), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d_sigma2, grad(lambda u: sched.sigma(u) ** 2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    sched = SCHEDULES[name]
    t, h = T_INNER, 1e-6
    with torch.no_grad():
        fd = (sched.log_snr(t + h) - sched.log_snr(t - h)) / (2 * h)
        torch.testing.assert_close(sched.d_log_snr(t), fd, rtol=1e-6, atol=1e-6)
        fd = (sched.sigma(t + h) ** 2 - sched.sigma(t - h) ** 2) / (2 * h)
        torch.testing.assert_close(sched.d_sigma2(t), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_consistency_and_monotone(name):
    sched = SCHEDULES[name]
    t = torch.linspace(0.001, 1.0, 500, dtype=F64)
    with torch.no_grad():
        lam = sched.log_snr(t)
        alpha, sigma = sched.alpha_sigma(t)
        assert isinstance(sched, Schedule)
        assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease"
        assert torch.all(sched.d_log_snr(t) < 0)
        torch.testing.assert_close(lam, torch.log(alpha**2 / sigma**2))
        torch.testing.assert_close(alpha, sched.alpha(t))
        torch.testing.assert_close(sigma, sched.sigma(t))
        assert torch.all(sigma > 0) and torch.all(alpha > 0)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_float32(name):
    sched = SCHEDULES[name]
    t = torch.rand(3, 4)
    if name.startswith("learnable"):
        sched = all_schedules()[name].float()
    for fn in (sched.log_snr, sched.alpha, sched.sigma, sched.d_log_snr, sched.d_log_alpha, sched.d_sigma2):
        out = fn(t)
        assert out.shape == t.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------- learnable
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_learnable_monotone_random_init_and_endpoints(seed):
    torch.manual_seed(seed)
    sched = LearnableMonotone(-12.0, 9.0, hidden=32).double()
    with torch.no_grad():
        for p in sched.parameters():  # any parameter values keep it monotone
            p.normal_(0.0, 3.0)
        t = torch.linspace(0, 1, 2001, dtype=F64)
        lam = sched.log_snr(t)
        assert torch.all(lam[1:] < lam[:-1])
        assert float(lam[0]) == pytest.approx(9.0, abs=1e-12)
        assert float(lam[-1]) == pytest.approx(-12.0, abs=1e-12)


def test_learnable_gradients_flow_and_endpoints_fixed():
    torch.manual_seed(0)
    sched = LearnableMonotone(-10.0, 10.0, hidden=16)
    t = torch.rand(64)
    loss = (sched.log_snr(t) ** 2).mean() + sched.d_log_snr(t).abs().mean()
    loss.backward()
    for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
        g = getattr(sched, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert {n for n, _ in sched.named_parameters()} == {"w1", "b1", "w2", "b2", "w3", "b3"}
    # a training step moves the interior but not the fixed endpoints
    opt = torch.optim.SGD(sched.parameters(), lr=0.5)
    before = sched.log_snr(torch.tensor([0.0, 0.5, 1.0])).detach()
    opt.step()
    after = sched.log_snr(torch.tensor([0.0, 0.5, 1.0])).detach()
    assert after[0] == pytest.approx(10.0, abs=1e-5) and after[2] == pytest.approx(-10.0, abs=1e-5)
    assert abs(float(after[1] - before[1])) > 1e-6


def test_learnable_endpoints_learned():
    sched = LearnableMonotone(-10.0, 10.0, learn_endpoints=True, hidden=8)
    ends = sched.log_snr(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends, torch.tensor([10.0, -10.0]))
    ends.sum().backward()
    assert sched._log_snr_min.grad is not None and sched._raw_gap.grad is not None


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "factory",
    [
        lambda: VPLinear(-0.1, 20.0),
        lambda: VPLinear(1.0, 0.5),
        lambda: VPLinear(0.1, float("nan")),
        lambda: VPCosine(s=-0.1),
        lambda: VPCosine(max_beta=0.0),
        lambda: VEGeometric(0.0, 1.0),
        lambda: VEGeometric(1.0, 1.0),
        lambda: VEGeometric(1.0, float("inf")),
        lambda: SubVP(2.0, 1.0),
        lambda: LearnableMonotone(1.0, 1.0),
        lambda: LearnableMonotone(-1.0, float("inf")),
        lambda: LearnableMonotone(-1.0, 1.0, hidden=0),
    ],
)
def test_constructor_validation(factory):
    with pytest.raises(ValueError):
        factory()
