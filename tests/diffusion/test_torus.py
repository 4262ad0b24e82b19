"""Wrapped normal: exact series, sampling, the fast table."""

import math
import subprocess
import sys

import pytest
import torch

from confdiff.diffusion import (
    WrappedNormalTable,
    fast_wrapped_normal_score,
    sample_wrapped_normal,
    wrap,
    wrapped_normal_log_prob,
    wrapped_normal_score,
    wrapped_normal_score_derivative,
    wrapped_normal_score_norm,
)

F64 = torch.float64
PI = math.pi
SIGMAS = [0.01, 0.05, 0.3, 1.0, 1.9, 2.1, 3.2, 6.0, 20.0]


def test_wrap_range_and_identity():
    x = torch.linspace(-20, 20, 10001, dtype=F64)
    w = wrap(x)
    assert torch.all(w >= -PI) and torch.all(w < PI)
    torch.testing.assert_close(torch.cos(w), torch.cos(x))
    torch.testing.assert_close(torch.sin(w), torch.sin(x), atol=1e-12, rtol=0)
    inside = torch.tensor([-PI, -1.0, 0.0, 3.14159], dtype=F64)
    assert torch.equal(wrap(inside), inside)  # bit-exact inside the range
    assert float(wrap(torch.tensor(PI, dtype=F64))) == -PI
    for dtype in (torch.float32, F64):
        w = wrap(torch.linspace(-50, 50, 100001, dtype=dtype))
        assert torch.all(w >= -PI) and torch.all(w < PI)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_density_integrates_to_one(sigma):
    n = 20000
    x = -PI + 2 * PI * (torch.arange(n, dtype=F64) + 0.5) / n  # midpoint rule on a periodic integrand
    if sigma < 0.05:
        x = torch.linspace(-12 * sigma, 12 * sigma, n, dtype=F64)  # the mass sits near 0
        p = wrapped_normal_log_prob(x, sigma).exp()
        total = torch.trapezoid(p, x)
    else:
        total = wrapped_normal_log_prob(x, sigma).exp().mean() * 2 * PI
    assert float(total) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_score_is_gradient_of_log_density(sigma):
    x = ((torch.rand(500, dtype=F64) * 2 - 1) * PI).requires_grad_(True)
    lp = wrapped_normal_log_prob(x, sigma)
    (grad,) = torch.autograd.grad(lp.sum(), x)
    torch.testing.assert_close(wrapped_normal_score(x.detach(), sigma), grad, rtol=1e-10, atol=1e-10)
    # and its derivative the Hessian
    x2 = x.detach().clone().requires_grad_(True)
    (h,) = torch.autograd.grad(wrapped_normal_score(x2, sigma).sum(), x2)
    torch.testing.assert_close(wrapped_normal_score_derivative(x.detach(), sigma), h, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 2.5, 3.2, 5.0])
def test_image_and_fourier_series_agree(sigma):
    """Independent check: the image series with many terms vs the default choice of series."""
    x = torch.linspace(-PI, PI, 1001, dtype=F64)[:-1]
    torch.testing.assert_close(wrapped_normal_log_prob(x, sigma), wrapped_normal_log_prob(x, sigma, n_terms=40),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(wrapped_normal_score(x, sigma), wrapped_normal_score(x, sigma, n_terms=40),
                               rtol=1e-11, atol=1e-12)


def test_small_sigma_is_gaussian_and_large_sigma_is_uniform():
    x = torch.linspace(-0.5, 0.5, 101, dtype=F64)
    s = 0.05
    torch.testing.assert_close(wrapped_normal_log_prob(x, s), -0.5 * (x / s) ** 2 - math.log(s * math.sqrt(2 * PI)))
    torch.testing.assert_close(wrapped_normal_score(x, s), -x / s**2)
    x = torch.linspace(-PI, PI, 101, dtype=F64)
    torch.testing.assert_close(wrapped_normal_log_prob(x, 10.0), torch.full_like(x, -math.log(2 * PI)))
    assert wrapped_normal_score(x, 10.0).abs().max() < 1e-20


def test_symmetry_and_zeros():
    for s in (0.1, 1.0, 2.5):
        x = torch.linspace(0.01, 3.0, 50, dtype=F64)
        torch.testing.assert_close(wrapped_normal_score(-x, s), -wrapped_normal_score(x, s))
        torch.testing.assert_close(wrapped_normal_log_prob(-x, s), wrapped_normal_log_prob(x, s))
        zeros = wrapped_normal_score(torch.tensor([0.0, -PI], dtype=F64), s)
        assert zeros.abs().max() < 1e-12


def test_mixed_sigma_vectorised_and_float32():
    x = (torch.rand(4, 50, dtype=F64) * 2 - 1) * PI
    s = torch.tensor([0.1, 1.0, 2.5, 7.0], dtype=F64)[:, None].expand(4, 50)
    out = wrapped_normal_score(x, s)
    for i in range(4):
        torch.testing.assert_close(out[i], wrapped_normal_score(x[i], float(s[i, 0])))
    out32 = wrapped_normal_log_prob(x.float(), s.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, wrapped_normal_log_prob(x, s).float())
    # gradient through a mixed-regime call stays finite
    sg = s.clone().requires_grad_(True)
    wrapped_normal_log_prob(x, sg).sum().backward()
    assert torch.isfinite(sg.grad).all()


@pytest.mark.parametrize("sigma", [0.2, 1.0, 2.0, 3.0])
def test_sampling_moments_and_histogram(sigma):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x = sample_wrapped_normal((n,), sigma, g, dtype=F64)
    assert torch.all(x >= -PI) and torch.all(x < PI)
    # circular moments: E[cos(k x)] = exp(-k^2 sigma^2 / 2), E[sin(k x)] = 0
    for k in (1, 2, 3):
        assert float(torch.cos(k * x).mean()) == pytest.approx(math.exp(-(k**2) * sigma**2 / 2), abs=5e-3)
        assert abs(float(torch.sin(k * x).mean())) < 5e-3
    # histogram against the density
    bins = 40
    counts = torch.histc(x, bins=bins, min=-PI, max=PI) / n
    edges = torch.linspace(-PI, PI, bins + 1, dtype=F64)
    fine = torch.linspace(0, 1, 201, dtype=F64)
    expected = torch.stack([
        torch.trapezoid(wrapped_normal_log_prob(a + (b - a) * fine, sigma).exp(), a + (b - a) * fine)
        for a, b in zip(edges[:-1], edges[1:])
    ])
    assert (counts.double() - expected).abs().max() < 4e-3


def test_sampling_with_sigma_tensor_and_generator():
    sigma = torch.tensor([0.1, 1.0, 5.0])
    a = sample_wrapped_normal(sigma, generator=torch.Generator().manual_seed(1))
    b = sample_wrapped_normal(sigma.shape, sigma, torch.Generator().manual_seed(1))
    assert a.shape == (3,) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        sample_wrapped_normal((3,))


# ---------------------------------------------------------------------------- fast table
FLOOR = 1e-8  # relative error is measured against max(|exact|, FLOOR)


def _dense_points(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, dtype=F64, generator=g) * 2 - 1) * PI
    m = n // 10  # one tenth right next to the zeros at 0 and +-pi
    offs = 10 ** torch.empty(m, dtype=F64).uniform_(-7, -1, generator=g)
    x[:m] = torch.sign(x[:m]) * (PI - offs)
    x[m : 2 * m] = torch.sign(x[m : 2 * m]) * offs
    sigma = torch.exp(torch.empty(n, dtype=F64).uniform_(math.log(0.01), math.log(3.2), generator=g))
    sigma[:100] = torch.tensor([0.01, 0.999, 1.0, 1.001, 3.2] * 20, dtype=F64)
    return x, sigma


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_score_relative_error(dtype):
    """Relative error below 1e-4 for sigma in [0.01, 3.2], including right next to the zeros."""
    x, sigma = _dense_points(100_000, seed=0)
    x, sigma = x.to(dtype), sigma.to(dtype)
    fast = fast_wrapped_normal_score(x, sigma)
    assert fast.dtype == dtype and fast.shape == x.shape
    exact = wrapped_normal_score(x.double(), sigma.double())  # exact at the same (rounded) inputs
    rel = (fast.double() - exact).abs() / exact.abs().clamp(min=FLOOR)
    assert float(rel.max()) < 1e-4


def test_fast_score_outside_range_and_broadcast():
    # x beyond [-pi, pi) (wrapped first); offset from the multiples of pi, where the score of a
    # float64 input one ulp from +-pi is not resolved at sigma = 0.005 by either formula
    x = torch.linspace(-3 * PI, 3 * PI, 301, dtype=F64) + 1e-3
    for s in (0.005, 4.0, 7.9, 8.1, 15.0):
        fast = fast_wrapped_normal_score(x, s)
        exact = wrapped_normal_score(x, s)
        rel = (fast - exact).abs() / exact.abs().clamp(min=FLOOR)
        assert float(rel.max()) < 1e-4, s
    out = fast_wrapped_normal_score(torch.zeros(2, 3), torch.tensor([0.5, 2.0, 9.0]))
    assert out.shape == (2, 3)


def test_expected_squared_score():
    sigma = torch.cat([torch.linspace(0.01, 3.2, 150, dtype=F64), torch.tensor([5.0, 7.99, 8.01, 10.0], dtype=F64)])
    n = 1024  # periodic trapezoidal rule: aliasing error ~ exp(-n^2 sigma^2 / 2) < 1e-20 here
    x = -PI + 2 * PI * torch.arange(n, dtype=F64) / n
    xx, ss = torch.broadcast_tensors(x, sigma[:, None])
    ref = (wrapped_normal_log_prob(xx, ss).exp() * wrapped_normal_score(xx, ss) ** 2).mean(-1) * 2 * PI
    got = wrapped_normal_score_norm(sigma)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=0)
    # limits: 1 / sigma^2 for small sigma, 2 exp(-sigma^2) for large sigma
    assert float(wrapped_normal_score_norm(torch.tensor(0.01, dtype=F64))) == pytest.approx(1e4, rel=1e-9)
    assert float(wrapped_normal_score_norm(torch.tensor(6.0, dtype=F64))) == pytest.approx(
        2 * math.exp(-36.0), rel=1e-4)
    # Monte Carlo: E[s^2] over wrapped-normal samples
    g = torch.Generator().manual_seed(0)
    s = 0.7
    samples = sample_wrapped_normal((100_000,), s, g, dtype=F64)
    mc = float((wrapped_normal_score(samples, s) ** 2).mean())
    assert mc == pytest.approx(float(wrapped_normal_score_norm(torch.tensor(s, dtype=F64))), rel=2e-2)
    assert wrapped_normal_score_norm(torch.tensor([1.0])).dtype == torch.float32


def test_table_cached_per_dtype_and_device_and_lazy():
    table = WrappedNormalTable(n_x=64, sigma_step=0.1, e_sigma_step=0.1, n_quadrature=64)
    assert table._master is None and not table._cache  # nothing built at construction
    table.score(torch.zeros(3), 1.5)
    assert table._master is not None and set(table._cache) == {(torch.float32, torch.device("cpu"))}
    t32 = table._cache[(torch.float32, torch.device("cpu"))]
    table.score(torch.zeros(3), 2.5)
    assert table._cache[(torch.float32, torch.device("cpu"))] is t32
    table.score(torch.zeros(3, dtype=F64), 2.5)
    assert len(table._cache) == 2
    with pytest.raises(ValueError):
        WrappedNormalTable(n_x=1)


def test_no_table_built_at_import():
    code = (
        "import confdiff.diffusion as d, confdiff.diffusion.torus as t; "
        "assert t._shared_table is None; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_score_on_cuda_matches_cpu():
    x, sigma = _dense_points(100_000, seed=1)
    for dtype in (torch.float32, torch.float64):
        xc, sc = x.to("cuda", dtype), sigma.to("cuda", dtype)
        fast = fast_wrapped_normal_score(xc, sc)
        assert fast.device.type == "cuda" and fast.dtype == dtype
        exact = wrapped_normal_score(xc.double().cpu(), sc.double().cpu())
        rel = (fast.double().cpu() - exact).abs() / exact.abs().clamp(min=FLOOR)
        assert float(rel.max()) < 1e-4
        ref = wrapped_normal_score_norm(sigma.to(dtype))
        torch.testing.assert_close(wrapped_normal_score_norm(sc).cpu(), ref)
