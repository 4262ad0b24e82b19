"""Samplers: accuracy on exact mixture scores (R^2 and the torus) and the contract over every space."""

from __future__ import annotations

import math

import pytest
import torch

from confdiff.diffusion import (
    SAMPLERS,
    SDE,
    Euclidean,
    Product,
    ProductSDE,
    Torus,
    VEGeometric,
    VPLinear,
    ZeroCoM,
    time_grid,
)
from confdiff.diffusion.losses import sde_coefficients
from confdiff.diffusion.samplers import ddim_step, ddpm_step
from tests.diffusion.mixtures import GaussianMixture, WrappedNormalMixture, mean_cov_check, moment_check

N = 20_000  # samples per accuracy check

# Well separated (nearest-mean assignment is right for > 99.7% of samples), unequal weights and
# anisotropic, different covariances.
MIXTURE = GaussianMixture(
    weights=[0.5, 0.3, 0.2],
    means=[[-2.5, 0.0], [2.5, 0.5], [0.0, 3.5]],
    covs=[[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]], [[0.4, 0.0], [0.0, 0.2]]],
)
# Three wrapped normals on T^2, one of them across the wrap-around at pi.
TORUS_MIXTURE = WrappedNormalMixture(
    weights=[0.5, 0.3, 0.2],
    means=[[-2.0, 1.0], [1.5, -1.0], [2.5, 2.5]],
    stds=[0.3, 0.4, 0.35],
)


def _run(name, sde, score_fn, ts, n, seed=0, dtype=torch.float32, **options):
    gen = torch.Generator().manual_seed(seed)
    x = sde.prior_sample(torch.zeros(n, 2, dtype=dtype), gen)
    return SAMPLERS[name](score_fn, x, sde, ts, generator=gen, **options)


# name, schedule, steps, grid kind, t_min, options.  Step counts are the fewest that leave the
# discretisation bias well inside the 3-SE tolerance at 20,000 samples.
EUCLIDEAN_CASES = {
    "euler_maruyama": (VPLinear(), 200, "uniform", 1e-3, {}),
    # per-sample norms (the default) make the corrector step explode near a mode in 2-D
    "predictor_corrector": (VPLinear(), 100, "uniform", 1e-3, {"snr": 0.1, "norm": "batch"}),
    "ddpm": (VPLinear(), 300, "uniform", 1e-3, {}),
    "ddim": (VPLinear(), 200, "uniform", 1e-3, {"eta": 0.0}),
    "heun": (VPLinear(), 30, "uniform", 1e-3, {}),
    "rk45": (VPLinear(), 1, "uniform", 1e-3, {"rtol": 1e-4, "atol": 1e-4}),
    # Song & Ermon's NCSN setting: VE levels, a_i = step_lr (sigma_i / sigma_L)^2
    "annealed_langevin": (VEGeometric(0.1, 5.0), 99, "log_snr", 0.0, {"step_scale": 0.3, "n_steps_each": 10}),
}


def test_every_sampler_has_an_accuracy_case():
    assert set(EUCLIDEAN_CASES) == set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(EUCLIDEAN_CASES))
def test_sampler_reproduces_gaussian_mixture(name):
    schedule, steps, kind, t_min, options = EUCLIDEAN_CASES[name]
    sde = SDE(schedule, Euclidean())
    ts = time_grid(steps, t_min, 1.0, kind=kind, schedule=schedule)
    x = _run(name, sde, MIXTURE.score_fn(schedule), ts, N, **options)
    assert x.shape == (N, 2) and x.dtype == torch.float32
    # the samplers stop at ts[-1] > 0: compare with that marginal (alpha x0 + sigma eps)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(ts[-1].double()))
    mean, cov = MIXTURE.marginal_mean_cov(alpha, sigma)
    ok, z = mean_cov_check(x, mean, cov)
    assert ok, f"{name}: mean / covariance errors in standard errors {z.tolist()}"
    weights = torch.bincount(MIXTURE.assign(x / alpha), minlength=3).double() / N
    assert (weights - MIXTURE.weights).abs().max() < 0.02, weights


# Annealed Langevin moves mass between separated modes only while the noise is large, so with
# unequal weights its error at affordable step counts (weights off by ~0.01 after 500-3000 score
# evaluations here) exceeds 3 SE at 20,000 samples; it is checked on equal weights, and on the
# unequal-weight mixture in R^2 above.
TORUS_MIXTURE_EQUAL = WrappedNormalMixture(
    weights=[1 / 3, 1 / 3, 1 / 3], means=TORUS_MIXTURE.means.tolist(), stds=[0.3, 0.4, 0.35]
)
_VE_TORUS = VEGeometric(0.01, 2 * math.pi)
_VE_TORUS_ALD = VEGeometric(0.1, 2 * math.pi)
# mixture, schedule, steps, t_max, options
TORUS_CASES = {
    "euler_maruyama": (TORUS_MIXTURE, _VE_TORUS, 150, 1.0, {}),
    # per-sample norms (the default) make the corrector step explode near a mode in 2-D
    "predictor_corrector": (TORUS_MIXTURE, _VE_TORUS, 150, 1.0, {"snr": 0.05, "norm": "batch"}),
    "heun": (TORUS_MIXTURE, _VE_TORUS, 20, 1.0, {}),
    "rk45": (TORUS_MIXTURE, _VE_TORUS, 1, 1.0, {"rtol": 1e-4, "atol": 1e-4}),
    # levels from sigma = 2.5 (the uniform prior is already close) down to 0.1
    "annealed_langevin": (TORUS_MIXTURE_EQUAL, _VE_TORUS_ALD, 49, math.log(25.0) / math.log(20 * math.pi),
                          {"step_scale": 0.4, "n_steps_each": 10}),
}


@pytest.mark.parametrize("name", sorted(TORUS_CASES))
def test_sampler_reproduces_wrapped_normal_mixture(name):
    """VE diffusion on T^2 (sigma_max = 2 pi, so the uniform prior is exact to ~1e-8).

    The circular analogue of mean and covariance: the means of cos / sin of each angle, of twice
    each angle and of the sums and differences of the angles, each within 3 standard errors.
    """
    mixture, schedule, steps, t_max, options = TORUS_CASES[name]
    sde = SDE(schedule, Torus())
    ts = time_grid(steps, 0.0, t_max, kind="log_snr", schedule=schedule)
    x = _run(name, sde, mixture.score_fn(schedule), ts, N, **options)
    assert x.shape == (N, 2)
    assert bool(((x >= -math.pi) & (x < math.pi)).all())
    sigma = float(schedule.sigma(ts[-1].double()))
    ok, z = moment_check(mixture.features(x.double()), mixture.expected_features(sigma))
    assert ok, f"{name}: circular moment errors in standard errors {z.tolist()}"
    weights = torch.bincount(mixture.assign(x.double()), minlength=3).double() / N
    assert (weights - mixture.weights).abs().max() < 0.02, weights


# ----------------------------------------------------------------------------- the contract
def _data_score(sde):
    """Exact score of N(0, I) data (Euclidean parts) under ``sde``; a smooth periodic field on the
    torus.  Per sample: no coupling across the batch."""

    def score(x, t):
        alpha, sigma, _ = sde_coefficients(sde, x, t)
        return -x / (alpha**2 + sigma**2)

    return score


def _torus_score(x, t):
    return -0.5 * torch.sin(x)


class _Case:
    """Builds a space / SDE / score for samples of the given sizes; ``part(x, i)`` is sample i."""

    def __init__(self, kind):
        self.kind = kind

    def build(self, sizes, dtype):
        kind, n = self.kind, len(sizes)
        if kind == "euclidean":
            space = Euclidean()
            sde = SDE(VPLinear(), space)
            like = torch.zeros(n, 3, 2, dtype=dtype)
            return sde, like, _data_score(sde), lambda x, i: x[i].reshape(-1)
        if kind == "zero_com":
            batch = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes))
            space = ZeroCoM(batch, n)
            sde = SDE(VPLinear(), space)
            like = torch.zeros(len(batch), 3, dtype=dtype)
            return sde, like, _data_score(sde), lambda x, i: x[batch == i].reshape(-1)
        if kind == "torus":
            sde = SDE(VEGeometric(0.01, math.pi), Torus())
            return sde, torch.zeros(n, 4, dtype=dtype), _torus_score, lambda x, i: x[i]
        if kind == "torus_batch":
            batch = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes))
            sde = SDE(VEGeometric(0.01, math.pi), Torus(batch, n))
            return sde, torch.zeros(len(batch), dtype=dtype), _torus_score, lambda x, i: x[batch == i]
        if kind == "product":
            tor_batch = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes))
            atom_sizes = [s + 2 for s in sizes]
            atom_batch = torch.repeat_interleave(torch.arange(n), torch.tensor(atom_sizes))
            space = Product([Torus(tor_batch, n), ZeroCoM(atom_batch, n)],
                            [(len(tor_batch),), (len(atom_batch), 3)])
            sde = ProductSDE([SDE(VEGeometric(0.01, math.pi), space.spaces[0]),
                              SDE(VPLinear(), space.spaces[1])], space)
            coord_score = _data_score(sde.sdes[1])

            def score(x, t):
                tor, pos = space.split(x)
                return space.join([_torus_score(tor, t), coord_score(pos, t)])

            def part(x, i):
                tor, pos = space.split(x)
                return torch.cat([tor[tor_batch == i], pos[atom_batch == i].reshape(-1)])

            return sde, torch.zeros(space.numel, dtype=dtype), score, part
        raise AssertionError(kind)


SPACES = ["euclidean", "zero_com", "torus", "torus_batch", "product"]
CONTRACT_OPTIONS = {"rk45": {"rtol": 1e-3, "atol": 1e-3}, "annealed_langevin": {"n_steps_each": 2}}


def _sample(name, case, sizes, dtype, seeds):
    sde, like, score, part = case.build(sizes, dtype)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = sde.prior_sample(like, gens)
    ts = time_grid(4, 1e-2, 1.0)
    out = SAMPLERS[name](score, x, sde, ts, generator=gens, **CONTRACT_OPTIONS.get(name, {}))
    return out, x, sde, part


@pytest.mark.parametrize("space_kind", SPACES)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name, space_kind):
    case = _Case(space_kind)
    sizes = [3, 5, 4]
    out, x, sde, part = _sample(name, case, sizes, torch.float64, seeds=[10, 11, 12])
    # shape and dtype kept, finite
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())
    # deterministic under fixed generators
    again, *_ = _sample(name, case, sizes, torch.float64, seeds=[10, 11, 12])
    assert torch.equal(out, again)
    # per-sample generators: sample 0 does not depend on the rest of the batch
    alone, _, _, part_alone = _sample(name, case, sizes[:1], torch.float64, seeds=[10])
    torch.testing.assert_close(part_alone(alone, 0), part(out, 0), rtol=1e-9, atol=1e-9)
    # the samples stay on their space
    torch.testing.assert_close(sde.space.project(out), out, rtol=0, atol=1e-9)
    if space_kind in ("torus", "torus_batch"):
        assert bool(((out >= -math.pi) & (out < math.pi)).all())
    if space_kind == "zero_com":
        assert float(sde.space.mean(out).abs().max()) < 1e-9
    if space_kind == "product":
        tor, pos = sde.space.split(out)
        assert bool(((tor >= -math.pi) & (tor < math.pi)).all())
        assert float(sde.space.spaces[1].mean(pos).abs().max()) < 1e-9
    # float32 in, float32 out
    out32, x32, *_ = _sample(name, case, sizes, torch.float32, seeds=[10, 11, 12])
    assert out32.dtype == torch.float32 and out32.shape == x32.shape


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_gets_step_time_state(name):
    sde = SDE(VPLinear(), Euclidean())
    x = sde.prior_sample(torch.zeros(6, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    ts = time_grid(5, 1e-2, 1.0)
    seen = []
    SAMPLERS[name](_data_score(sde), x, sde, ts, generator=torch.Generator().manual_seed(1),
                   callback=seen.append, **CONTRACT_OPTIONS.get(name, {}))
    assert seen, "callback never called"
    for i, info in enumerate(seen):
        assert {"step", "t", "x"} <= set(info)
        assert info["x"].shape == x.shape and info["t"].shape == (6,)
    if name != "rk45":
        expected = len(ts) if name == "annealed_langevin" else len(ts) - 1
        assert [info["step"] for info in seen] == list(range(expected))
        assert all("x0" in info and info["x0"].shape == x.shape for info in seen)
        torch.testing.assert_close(seen[0]["t"], ts[0].expand(6))


# ----------------------------------------------------------------------------- steps and grids
def test_ddim_with_eta_one_is_the_ddpm_step():
    g = torch.Generator().manual_seed(0)
    x, eps, noise = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    sched = VPLinear()
    a_t, s_t = sched.alpha_sigma(torch.tensor(0.6, dtype=torch.float64))
    a_s, s_s = sched.alpha_sigma(torch.tensor(0.45, dtype=torch.float64))
    torch.testing.assert_close(ddim_step(x, eps, a_t, s_t, a_s, s_s, noise, eta=1.0),
                               ddpm_step(x, eps, a_t, s_t, a_s, s_s, noise))


def test_ddim_eta_zero_is_exact_for_point_mass():
    """Data = a single point x0: the exact eps takes DDIM from any x_t straight to alpha_s x0 + sigma_s eps."""
    sched = VPLinear()
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    eps = torch.tensor([[0.7, 0.1]], dtype=torch.float64)
    a_t, s_t = sched.alpha_sigma(torch.tensor(0.8, dtype=torch.float64))
    a_s, s_s = sched.alpha_sigma(torch.tensor(0.2, dtype=torch.float64))
    x_t = a_t * x0 + s_t * eps
    torch.testing.assert_close(ddim_step(x_t, eps, a_t, s_t, a_s, s_s, None), a_s * x0 + s_s * eps)


@pytest.mark.parametrize("kind", ["uniform", "quadratic", "log", "log_snr", "edm"])
def test_time_grid(kind):
    sched = VPLinear()
    ts = time_grid(10, 1e-3, 1.0, kind=kind, schedule=sched)
    assert ts.shape == (11,) and ts.dtype == torch.float64
    assert float(ts[0]) == 1.0 and float(ts[-1]) == 1e-3
    assert bool((ts[1:] < ts[:-1]).all())
    if kind == "log_snr":
        lam = sched.log_snr(ts)
        torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(10), rtol=1e-6, atol=1e-6)


def test_time_grid_log_snr_is_geometric_in_sigma_for_ve():
    sched = VEGeometric(0.01, 50.0)
    ts = time_grid(8, 0.0, 1.0, kind="log_snr", schedule=sched)
    torch.testing.assert_close(ts, torch.linspace(1.0, 0.0, 9, dtype=torch.float64), rtol=0, atol=1e-9)


def test_bad_arguments_raise():
    sde = SDE(VPLinear(), Euclidean())
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="kind"):
        time_grid(4, kind="cubic")
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="needs the schedule"):
        time_grid(4, kind="log_snr")
    with pytest.raises(ValueError, match="decreasing"):
        SAMPLERS["euler_maruyama"](lambda y, t: -y, x, sde, torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match="norm"):
        SAMPLERS["predictor_corrector"](lambda y, t: -y, x, sde, time_grid(2), norm="global")
    with pytest.raises(ValueError, match="eta"):
        SAMPLERS["ddim"](lambda y, t: -y, x, sde, time_grid(2), eta=-1.0)
