"""Classifier and classifier-free guidance against the closed form of a class-conditional mixture.

Class ``y = k`` is component ``k`` of a Gaussian mixture, so at every noise level
``p_t(x | y=k)`` is one Gaussian, ``p_t(x)`` the mixture and ``p_t(y=k | x)`` the responsibility.
"""

from __future__ import annotations

import pytest
import torch

from confdiff.diffusion import (
    SDE,
    Euclidean,
    VPLinear,
    classifier_free_guidance,
    classifier_guidance,
    sample_heun,
    time_grid,
)
from tests.diffusion.mixtures import GaussianMixture, mean_cov_check

F64 = torch.float64
SCHED = VPLinear()
MIX = GaussianMixture(
    weights=[0.6, 0.4],
    means=[[-2.0, 0.0], [2.0, 1.0]],
    covs=[[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]],
)


def uncond_score(x, t):
    return MIX.score(x, SCHED.alpha(t), SCHED.sigma(t))


def cond_score(k):
    return lambda x, t: MIX.component_score(x, SCHED.alpha(t), SCHED.sigma(t), k)


def log_classifier(k):
    """``log p_t(y = k | x)``, shape (B,)."""
    return lambda x, t: MIX.log_responsibilities(x, SCHED.alpha(t), SCHED.sigma(t))[:, k]


def _points(n=64):
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(n, 2, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64) * 0.98 + 0.01
    return x, t


@pytest.mark.parametrize("k", [0, 1])
def test_classifier_guidance_with_scale_one_is_the_conditional_score(k):
    x, t = _points()
    guided = classifier_guidance(uncond_score, log_classifier(k), 1.0)
    with torch.no_grad():  # the classifier gradient is taken even under no_grad
        out = guided(x, t)
    torch.testing.assert_close(out, cond_score(k)(x, t))


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_classifier_free_guidance_closed_form(w):
    """``(1 + w) s(x | y) - w s(x)``: ``w = 0`` is the conditional score, and any ``w`` equals
    classifier guidance with scale ``1 + w`` (the implicit classifier ``p_t(y | x)``)."""
    x, t = _points()
    k = 1
    cfg = classifier_free_guidance(cond_score(k), uncond_score, w)(x, t)
    torch.testing.assert_close(cfg, (1 + w) * cond_score(k)(x, t) - w * uncond_score(x, t))
    torch.testing.assert_close(cfg, classifier_guidance(uncond_score, log_classifier(k), 1.0 + w)(x, t))
    if w == 0.0:
        torch.testing.assert_close(cfg, cond_score(k)(x, t))


def test_classifier_guidance_scale_zero_is_unconditional():
    x, t = _points()
    torch.testing.assert_close(classifier_guidance(uncond_score, log_classifier(0), 0.0)(x, t), uncond_score(x, t))


def test_guided_sampling_reproduces_the_class():
    """Sampling the w = 0 guided score (Heun on the PF-ODE) gives class 1's Gaussian."""
    sde = SDE(SCHED, Euclidean())
    n = 20_000
    gen = torch.Generator().manual_seed(1)
    x = sde.prior_sample(torch.zeros(n, 2), gen)
    ts = time_grid(30, 1e-3, 1.0)
    score = classifier_free_guidance(cond_score(1), uncond_score, 0.0)
    out = sample_heun(score, x, sde, ts)
    a, s = (float(v) for v in SCHED.alpha_sigma(ts[-1]))
    comp = GaussianMixture([1.0], MIX.means[1:], MIX.covs[1:])
    ok, z = mean_cov_check(out, *comp.marginal_mean_cov(a, s))
    assert ok, z
    # stronger guidance pushes samples further from the other class
    strong = sample_heun(classifier_free_guidance(cond_score(1), uncond_score, 2.0), x, sde, ts)
    assert float(strong[:, 0].mean()) > float(out[:, 0].mean())
