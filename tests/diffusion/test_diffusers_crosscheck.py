"""DDIM and DDPM ancestral steps against diffusers' schedulers (a test-only dependency).

Same epsilon model (a fixed smooth function), same discrete schedule: a continuous ``Schedule``
whose log-SNR interpolates diffusers' ``alphas_cumprod`` linearly between the grid times
``t_k = (k + 1) / T``, so ``alpha(t_k)^2 = alphas_cumprod[k]`` exactly.  Our samplers see a score
function ``s = -eps / sigma`` and convert back with ``eps = -sigma s``.
"""

from __future__ import annotations

import pytest
import torch

from confdiff.diffusion import SDE, Euclidean, Schedule, sample_ddim, sample_ddpm
from confdiff.diffusion.samplers import ddim_step, ddpm_step

diffusers = pytest.importorskip("diffusers")
scheduling_ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")

F64 = torch.float64
T = 1000


class DiscreteVP(Schedule):
    """VP schedule through given ``alphas_cumprod``: log-SNR piecewise linear in ``t`` between
    ``t_k = (k + 1) / T`` (``alpha^2 = sigmoid(log_snr)``, ``sigma^2 = sigmoid(-log_snr)``)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        abar = alphas_cumprod.to(F64)
        self.register_buffer("nodes", torch.arange(1, len(abar) + 1, dtype=F64) / len(abar))
        self.register_buffer("lam", torch.log(abar) - torch.log1p(-abar))

    def _segment(self, t):
        t = torch.as_tensor(t, dtype=F64)
        i = torch.clamp(torch.searchsorted(self.nodes, t.detach().contiguous()) - 1, 0, len(self.nodes) - 2)
        slope = (self.lam[i + 1] - self.lam[i]) / (self.nodes[i + 1] - self.nodes[i])
        return self.lam[i] + slope * (t - self.nodes[i]), slope

    def log_snr(self, t):
        return self._segment(t)[0]

    def d_log_snr(self, t):
        return self._segment(t)[1]

    def alpha(self, t):
        return torch.sqrt(torch.sigmoid(self.log_snr(t)))

    def sigma(self, t):
        return torch.sqrt(torch.sigmoid(-self.log_snr(t)))

    def d_log_alpha(self, t):
        lam, dlam = self._segment(t)
        return 0.5 * torch.sigmoid(-lam) * dlam

    def d_sigma2(self, t):
        lam, dlam = self._segment(t)
        return -torch.sigmoid(lam) * torch.sigmoid(-lam) * dlam


# diffusers' "linear" betas (float32, as it computes them)
ALPHAS_CUMPROD = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float32), 0).to(F64)


def eps_model(x, timestep):
    """A fixed smooth function of the sample and the integer timestep: the exact eps of N(0, I)
    data, ``sqrt(1 - abar) x``, plus a smooth perturbation (so the chains stay of order one)."""
    tau = timestep / T
    wiggle = 0.2 * torch.tanh(2.0 * x) * torch.sin(torch.tensor(3.0 * tau))
    return torch.sqrt(1.0 - ALPHAS_CUMPROD[timestep]) * x + wiggle


def _setup(scheduler_cls, **config):
    sched = scheduler_cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, **config)
    schedule = DiscreteVP(sched.alphas_cumprod)
    sde = SDE(schedule, Euclidean())

    def score_fn(x, t):
        k = torch.round(t * T - 1).long()  # back to the integer timestep (exact on the grid)
        assert bool((k == k[0]).all())
        _, sigma = schedule.alpha_sigma(t)
        return -eps_model(x, int(k[0])) / sigma[:, None, None]

    return sched, sde, score_fn


def _x(seed=0):
    return torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_schedule_reproduces_alphas_cumprod():
    sched, sde, _ = _setup(diffusers.DDPMScheduler)
    ts = torch.arange(1, T + 1, dtype=F64) / T
    alpha, sigma = sde.schedule.alpha_sigma(ts)
    abar = sched.alphas_cumprod.to(F64)
    torch.testing.assert_close(abar, ALPHAS_CUMPROD, rtol=0, atol=0)
    torch.testing.assert_close(alpha**2, abar, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sigma**2, 1 - abar, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("timestep", [980, 500, 40])
def test_single_ddim_step_matches_diffusers(eta, timestep):
    sched, sde, score_fn = _setup(diffusers.DDIMScheduler)
    sched.set_timesteps(50)  # step 20: timestep -> timestep - 20
    x = _x()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    theirs = sched.step(eps_model(x, timestep), timestep, x, eta=eta,
                        variance_noise=noise if eta > 0 else None).prev_sample
    t, s = (timestep + 1) / T, (timestep - 20 + 1) / T
    a_t, s_t = sde.schedule.alpha_sigma(torch.tensor(t, dtype=F64))
    a_s, s_s = sde.schedule.alpha_sigma(torch.tensor(s, dtype=F64))
    ours = ddim_step(x, eps_model(x, timestep), a_t, s_t, a_s, s_s, noise, eta=eta)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # the same step through the sampler (score in, eps = -sigma * score inside)
    gen = torch.Generator().manual_seed(1)
    through = sample_ddim(score_fn, x, sde, torch.tensor([t, s], dtype=F64), eta=eta, generator=gen)
    if eta > 0:  # the sampler's noise: sde.space.noise with the same generator state
        noise2 = sde.space.noise(x, torch.Generator().manual_seed(1))
        theirs = sched.step(eps_model(x, timestep), timestep, x, eta=eta, variance_noise=noise2).prev_sample
    torch.testing.assert_close(through, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_chain_matches_diffusers(eta):
    """49 DDIM steps, timestep 980 down to 0 (the last diffusers step, to alphas_cumprod = 1, has no
    grid time here and is left out)."""
    sched, sde, score_fn = _setup(diffusers.DDIMScheduler)
    sched.set_timesteps(50)
    steps = [int(v) for v in sched.timesteps]  # 980, 960, ..., 0
    x = _x(2)
    ours = sample_ddim(score_fn, x, sde, (torch.tensor(steps, dtype=F64) + 1) / T, eta=eta,
                       generator=torch.Generator().manual_seed(3))
    noise_gen = torch.Generator().manual_seed(3)
    theirs = x.clone()
    for timestep in steps[:-1]:
        noise = sde.space.noise(theirs, noise_gen) if eta > 0 else None
        out = sched.step(eps_model(theirs, timestep), timestep, theirs, eta=eta, variance_noise=noise)
        theirs = out.prev_sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_inference_steps", [None, 50])
def test_ddpm_ancestral_chain_matches_diffusers(monkeypatch, num_inference_steps):
    """DDPMScheduler(clip_sample=False, variance "fixed_small") with every timestep (1000 -> step 1)
    or 50 inference steps (step 20); the noise it draws is replaced by ours."""
    sched, sde, score_fn = _setup(diffusers.DDPMScheduler)
    if num_inference_steps is None:
        steps = list(range(T - 1, T - 60, -1))  # the first 59 single steps: enough, and fast
    else:
        sched.set_timesteps(num_inference_steps)
        steps = [int(v) for v in sched.timesteps][:-1]  # 980 .. 20; the step to abar = 1 left out
    x = _x(4)
    ts = (torch.tensor(steps + [steps[-1] - (steps[0] - steps[1])], dtype=F64) + 1) / T
    ours = sample_ddpm(score_fn, x, sde, ts, generator=torch.Generator().manual_seed(5))

    noise_gen = torch.Generator().manual_seed(5)
    draws = []

    def fake_randn(shape, generator=None, device=None, dtype=None, **kwargs):
        draws.append(sde.space.noise(torch.empty(shape, dtype=dtype), noise_gen))
        return draws[-1]

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", fake_randn)
    theirs = x.clone()
    for timestep in steps:
        theirs = sched.step(eps_model(theirs, timestep), timestep, theirs).prev_sample
    assert len(draws) == len(steps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_single_ddpm_step_matches_diffusers(monkeypatch):
    sched, sde, _ = _setup(diffusers.DDPMScheduler)
    x = _x(6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: noise)
    timestep = 700
    theirs = sched.step(eps_model(x, timestep), timestep, x).prev_sample
    a_t, s_t = sde.schedule.alpha_sigma(torch.tensor((timestep + 1) / T, dtype=F64))
    a_s, s_s = sde.schedule.alpha_sigma(torch.tensor(timestep / T, dtype=F64))
    ours = ddpm_step(x, eps_model(x, timestep), a_t, s_t, a_s, s_s, noise)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
