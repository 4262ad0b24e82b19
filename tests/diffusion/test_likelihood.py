"""Probability-flow log-likelihood (exact and Hutchinson divergence) and bits per dimension."""

from __future__ import annotations

import math

import pytest
import torch

from confdiff.diffusion import (
    SDE,
    Euclidean,
    Torus,
    VEGeometric,
    VPLinear,
    ZeroCoM,
    bits_per_dim,
    log_likelihood,
)
from tests.diffusion.mixtures import GaussianMixture, WrappedNormalMixture

F64 = torch.float64


# zero mean: with VPLinear(0.1, 20), p_1 differs from the N(0, I) prior by O(alpha(1)^2) ~ 4e-5
GAUSSIAN = GaussianMixture([1.0], [[0.0, 0.0]], [[[2.0, 0.6], [0.6, 0.5]]])


def _gaussian_case(n=32, seed=0):
    sched = VPLinear()
    sde = SDE(sched, Euclidean())
    x, _ = GAUSSIAN.sample(n, torch.Generator().manual_seed(seed))
    exact = GAUSSIAN.log_prob(x, torch.ones(n, dtype=F64), torch.zeros(n, dtype=F64))
    return sde, GAUSSIAN.score_fn(sched), x, exact


def test_exact_divergence_matches_gaussian_log_density():
    sde, score_fn, x, exact = _gaussian_case()
    log_p, info = log_likelihood(score_fn, x, sde, divergence="exact", rtol=1e-6, atol=1e-6)
    assert log_p.shape == (32,) and log_p.dtype == F64
    assert float((log_p - exact).abs().max()) < 1e-3
    torch.testing.assert_close(log_p, info["prior_log_prob"] + info["delta"])
    assert info["x_T"].shape == x.shape and info["nfe"] > 0


def test_fixed_rk4_steps_converge_to_the_adaptive_solution():
    sde, score_fn, x, exact = _gaussian_case()
    adaptive, _ = log_likelihood(score_fn, x, sde, divergence="exact", rtol=1e-9, atol=1e-9)
    errors = {}
    for steps in (10, 40):
        log_p, info = log_likelihood(score_fn, x, sde, divergence="exact", steps=steps)
        assert info["nfe"] == 4 * steps
        assert float((log_p - exact).abs().max()) < 2e-3
        errors[steps] = float((log_p - adaptive).abs().max())
    assert errors[40] < 1e-5 and errors[40] < errors[10] / 30  # 4th order: 256x
    with pytest.raises(ValueError, match="steps"):
        log_likelihood(score_fn, x, sde, steps=0)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_agrees_within_its_standard_error(probe):
    sde, score_fn, x, exact = _gaussian_case()
    log_p, info = log_likelihood(score_fn, x, sde, divergence="hutchinson", probe=probe, num_probes=16,
                                 generator=torch.Generator().manual_seed(1), rtol=1e-5, atol=1e-5)
    se = info["stderr"]
    assert info["log_p_per_probe"].shape == (32, 16) and bool((se > 0).all())
    z = (log_p - exact) / se
    # each sample's estimate within its standard error (3 SE; at most 10% of 32 outside) ...
    assert float((z.abs() <= 3).double().mean()) >= 0.9, z
    # ... and the batch mean within the standard error of the mean
    mean_err = float((log_p - exact).mean())
    assert abs(mean_err) <= 3 * float(se.pow(2).sum().sqrt()) / 32, (mean_err, se)


def test_hutchinson_with_per_sample_generators_is_batch_independent():
    sde, score_fn, x, _ = _gaussian_case(n=4)
    gens = lambda ids: [torch.Generator().manual_seed(100 + i) for i in ids]  # noqa: E731
    for probe in ("gaussian", "rademacher"):
        full, _ = log_likelihood(score_fn, x, sde, divergence="hutchinson", probe=probe, num_probes=2,
                                 generator=gens(range(4)))
        one, _ = log_likelihood(score_fn, x[2:3], sde, divergence="hutchinson", probe=probe, num_probes=2,
                                generator=gens([2]))
        torch.testing.assert_close(one, full[2:3], rtol=1e-10, atol=1e-10)


def test_exact_divergence_on_a_gaussian_mixture():
    """A non-linear score: the mixture's log-density at t_min is known exactly."""
    sched = VPLinear(0.1, 30.0)  # alpha(1) ~ 5e-4: the prior matches p_1 to ~1e-3 nats for this mixture
    sde = SDE(sched, Euclidean())
    mix = GaussianMixture([0.6, 0.4], [[-1.0, 0.0], [1.5, 0.5]],
                          [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]])
    x, _ = mix.sample(16, torch.Generator().manual_seed(2))
    t_min = 1e-5
    log_p, _ = log_likelihood(mix.score_fn(sched), x, sde, t_min=t_min, rtol=1e-6, atol=1e-6)
    a, s = sched.alpha_sigma(torch.full((16,), t_min, dtype=F64))
    exact = mix.log_prob(x, a, s)
    assert float((log_p - exact).abs().max()) < 3e-3


def test_exact_divergence_on_the_zero_com_space():
    """Isotropic N(0, v I) restricted to the zero-CoM subspace: 3n - 3 degrees of freedom per graph."""
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    space = ZeroCoM(batch, 2)
    sched = VPLinear()
    sde = SDE(sched, space)
    v = 0.49
    x = math.sqrt(v) * space.noise(torch.zeros(7, 3, dtype=F64), torch.Generator().manual_seed(3))

    def score_fn(y, t):
        a, s = sched.alpha_sigma(t)
        return -y / (v * a**2 + s**2)[batch, None]

    log_p, _ = log_likelihood(score_fn, x, sde, rtol=1e-6, atol=1e-6)
    exact = -0.5 * space.sum(x**2) / v - 0.5 * space.dim(x) * math.log(2 * math.pi * v)
    assert float((log_p - exact).abs().max()) < 1e-3


def test_exact_divergence_on_the_torus():
    """Wrapped-normal mixture under VE noising on T^2 (uniform prior at sigma_max = 2 pi)."""
    sched = VEGeometric(0.01, 2 * math.pi)
    sde = SDE(sched, Torus())
    mix = WrappedNormalMixture([0.7, 0.3], [[-2.0, 1.0], [2.5, -2.9]], [0.4, 0.6])
    x, _ = mix.sample(16, torch.Generator().manual_seed(4))
    log_p, info = log_likelihood(mix.score_fn(sched), x, sde, t_min=0.0, rtol=1e-6, atol=1e-6)
    exact = mix.log_prob(x, torch.full((16,), 0.01, dtype=F64))
    assert float((log_p - exact).abs().max()) < 1e-3
    assert bool(((info["x_T"] >= -math.pi) & (info["x_T"] < math.pi)).all())


def test_bad_arguments_raise():
    sde, score_fn, x, _ = _gaussian_case(n=2)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(score_fn, x, sde, divergence="skilling")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(score_fn, x, sde, divergence="hutchinson", probe="sphere")
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(score_fn, x, sde, divergence="hutchinson", num_probes=0)
    with pytest.raises(ValueError, match="n_bins"):
        bits_per_dim(torch.zeros(1), 3, n_bins=0)


# ----------------------------------------------------------------------------- bits per dimension
@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("n_bins", [2, 256])
def test_uniform_density_has_log2_bins_bits(data_range, n_bins):
    lo, hi = data_range
    d = 12
    log_p = torch.full((3,), -d * math.log(hi - lo), dtype=F64)  # uniform on [lo, hi]^D
    bpd = bits_per_dim(log_p, d, n_bins=n_bins, data_scale=hi - lo)
    torch.testing.assert_close(bpd, torch.full((3,), math.log2(n_bins), dtype=F64))


def test_song_et_al_offsets():
    """-log p / (D ln 2) + 8 for [0, 1] data and + 7 for [-1, 1] data (Song et al. 2021, 256 bins)."""
    log_p = torch.tensor([-1234.5, 17.0], dtype=F64)
    d = 3 * 32 * 32
    nats = -log_p / (d * math.log(2))
    torch.testing.assert_close(bits_per_dim(log_p, d, data_scale=1.0), nats + 8)
    torch.testing.assert_close(bits_per_dim(log_p, d, data_scale=2.0), nats + 7)
    torch.testing.assert_close(bits_per_dim(log_p, torch.tensor([d, d]), data_scale=2.0), nats + 7)


def test_dequantised_histogram_density_gives_exact_discrete_bits():
    """A density constant within each bin, evaluated at dequantised pixels, gives exactly
    ``-log2 P(k) / D`` whatever the dequantisation noise."""
    g = torch.Generator().manual_seed(5)
    n_bins, d, lo, hi = 8, 5, -1.0, 1.0
    probs = torch.rand(n_bins, generator=g, dtype=F64)
    probs = probs / probs.sum()  # P(pixel = k), independent pixels
    pixels = torch.multinomial(probs, 4 * d, replacement=True, generator=g).reshape(4, d)
    width = (hi - lo) / n_bins
    y = lo + (pixels + torch.rand(pixels.shape, generator=g, dtype=F64)) * width  # uniform dequantisation
    assert bool(((y - lo) // width == pixels).all())  # each value stays in its own bin
    k = ((y - lo) // width).long()
    log_p_y = torch.log(probs[k] / width).sum(-1)  # histogram density in data units
    exact_bits = -torch.log2(probs[pixels]).sum(-1) / d
    torch.testing.assert_close(bits_per_dim(log_p_y, d, n_bins=n_bins, data_scale=hi - lo), exact_bits)
