"""Spaces: broadcasting, projection, per-sample generators, zero-CoM, torus, product."""

import math

import pytest
import torch

from confdiff.diffusion import Euclidean, Product, Space, Torus, ZeroCoM

F64 = torch.float64


def graph_batch(sizes, shuffle=False, seed=0):
    """A batch vector for graphs with ``sizes`` atoms (optionally rows in random order)."""
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        batch = batch[torch.randperm(len(batch), generator=g)]
    return batch


SIZES = [3, 5, 1, 4]


def make(kind):
    """(space, x) pairs for the contract tests, float64."""
    g = torch.Generator().manual_seed(1)
    if kind == "euclidean":
        return Euclidean(), torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    if kind == "zerocom":
        batch = graph_batch(SIZES, shuffle=True)
        return ZeroCoM(batch, len(SIZES)), torch.randn(len(batch), 3, generator=g, dtype=F64)
    if kind == "torus":
        return Torus(), (torch.rand(4, 6, generator=g, dtype=F64) * 2 - 1) * math.pi
    if kind == "torus_batch":
        batch = graph_batch([2, 0, 3, 1], shuffle=True)
        return Torus(batch, 4), (torch.rand(len(batch), generator=g, dtype=F64) * 2 - 1) * math.pi
    if kind == "product":
        batch = graph_batch(SIZES)
        parts = [Torus(graph_batch([2, 1, 3, 2]), 4), ZeroCoM(batch, 4), Euclidean()]
        shapes = [(8,), (len(batch), 3), (4, 2)]
        space = Product(parts, shapes)
        x = torch.randn(space.numel, generator=g, dtype=F64)
        return space, space.project(x)
    raise AssertionError(kind)


KINDS = ["euclidean", "zerocom", "torus", "torus_batch", "product"]


# ---------------------------------------------------------------------------- contract over every space
@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind):
    space, x = make(kind)
    assert isinstance(space, Space)
    B = space.num_samples(x)
    assert B == 4
    v = torch.arange(1.0, B + 1, dtype=F64)
    bv = space.broadcast(v, x)
    assert (bv * x).shape == x.shape
    # broadcasting v then summing ones == v * (elements per sample)
    counts = space.sum(torch.ones_like(x))
    torch.testing.assert_close(space.sum(bv * torch.ones_like(x)), v * counts)
    assert space.sum(x).shape == (B,)
    assert space.dim(x).shape == (B,)
    # projection is idempotent, difference of equal points is zero
    torch.testing.assert_close(space.project(space.project(x)), space.project(x))
    torch.testing.assert_close(space.difference(x, x), torch.zeros_like(x))
    # noise: right shape, in the tangent space (projection of Euclidean spaces leaves it alone)
    z = space.noise(x, torch.Generator().manual_seed(0))
    assert z.shape == x.shape and z.dtype == x.dtype


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_generators_do_not_depend_on_batch(kind):
    """Sample i's noise from generator i is the same alone or within a (reordered) batch."""
    space, x = make(kind)
    B = space.num_samples(x)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    z = space.noise(x, gens)
    # the same generators seeded again give the same noise
    z2 = space.noise(x, [torch.Generator().manual_seed(100 + i) for i in range(B)])
    torch.testing.assert_close(z, z2)
    # a different generator for sample 0 changes only sample 0
    gens = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    gens[0] = torch.Generator().manual_seed(7)
    z3 = space.noise(x, gens)
    changed = space.sum((z3 - z) ** 2) > 0
    assert changed.tolist() == [True] + [False] * (B - 1)


def test_euclidean_sample_alone_equals_in_batch():
    space = Euclidean()
    x = torch.zeros(5, 3, 4)
    z = space.noise(x, [torch.Generator().manual_seed(i) for i in range(5)])
    for i in range(5):
        zi = space.noise(x[i : i + 1], [torch.Generator().manual_seed(i)])
        torch.testing.assert_close(zi[0], z[i])


def test_zerocom_sample_alone_equals_in_batch():
    batch = graph_batch(SIZES, shuffle=True)
    x = torch.zeros(len(batch), 3)
    space = ZeroCoM(batch, len(SIZES))
    z = space.noise(x, [torch.Generator().manual_seed(i) for i in range(len(SIZES))])
    for i, n in enumerate(SIZES):
        alone = ZeroCoM(torch.zeros(n, dtype=torch.long), 1)
        zi = alone.noise(torch.zeros(n, 3), [torch.Generator().manual_seed(i)])
        torch.testing.assert_close(zi, z[batch == i])


def test_torus_batch_sample_alone_equals_in_batch():
    sizes = [2, 0, 3, 1]
    batch = graph_batch(sizes, shuffle=True)
    space = Torus(batch, len(sizes))
    x = torch.zeros(len(batch))
    z = space.noise(x, [torch.Generator().manual_seed(i) for i in range(len(sizes))])
    for i, n in enumerate(sizes):
        zi = Torus(torch.zeros(n, dtype=torch.long), 1).noise(torch.zeros(n), [torch.Generator().manual_seed(i)])
        torch.testing.assert_close(zi, z[batch == i])


def test_generator_list_length_checked():
    with pytest.raises(ValueError):
        Euclidean().noise(torch.zeros(3, 2), [torch.Generator()] * 2)


def test_single_generator_reproducible():
    space, x = make("zerocom")
    a = space.noise(x, torch.Generator().manual_seed(3))
    b = space.noise(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- Euclidean
def test_euclidean_broadcast_sum_dim():
    space = Euclidean()
    x = torch.randn(3, 2, 5)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert space.broadcast(v, x).shape == (3, 1, 1)
    torch.testing.assert_close(space.sum(x), x.sum(dim=(1, 2)))
    torch.testing.assert_close(space.dim(x), torch.full((3,), 10.0))


# ---------------------------------------------------------------------------- zero CoM
def test_zerocom_invariants():
    batch = graph_batch(SIZES, shuffle=True)
    G = len(SIZES)
    space = ZeroCoM(batch, G)
    x = torch.randn(len(batch), 3, dtype=F64) + 5.0
    p = space.project(x)
    means = torch.stack([p[batch == i].mean(0) for i in range(G)])
    torch.testing.assert_close(means, torch.zeros(G, 3, dtype=F64))
    torch.testing.assert_close(space.mean(x), torch.stack([x[batch == i].mean(0) for i in range(G)]))
    # dim = 3n - 3
    torch.testing.assert_close(space.dim(x), torch.tensor([3.0 * n - 3 for n in SIZES], dtype=F64))
    # per-graph broadcast and sum
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    torch.testing.assert_close(space.broadcast(v, x).squeeze(-1), v[batch])
    torch.testing.assert_close(space.sum(x), torch.stack([x[batch == i].sum() for i in range(G)]))
    # noise is projected and has unit variance per remaining degree of freedom
    z = space.noise(torch.zeros(len(batch), 3, dtype=F64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(space.mean(z), torch.zeros(G, 3, dtype=F64))


def test_zerocom_noise_statistics():
    n, reps = 4, 20000
    batch = torch.arange(reps).repeat_interleave(n)
    space = ZeroCoM(batch, reps)
    z = space.noise(torch.zeros(reps * n, 3, dtype=F64), torch.Generator().manual_seed(0))
    sq = space.sum(z**2)  # chi^2 with 3n - 3 degrees of freedom
    assert float(sq.mean()) == pytest.approx(3 * n - 3, rel=0.02)


def test_zerocom_validation():
    with pytest.raises(ValueError):
        ZeroCoM(torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError):
        ZeroCoM(torch.tensor([0.0, 1.0]), 2)


# ---------------------------------------------------------------------------- torus
def test_torus_wrapping_and_difference():
    space = Torus()
    x = torch.tensor([[0.0, math.pi, -math.pi, 3 * math.pi, -7.0, 2 * math.pi]], dtype=F64)
    p = space.project(x)
    assert torch.all(p >= -math.pi) and torch.all(p < math.pi)
    torch.testing.assert_close(torch.cos(p), torch.cos(x))
    torch.testing.assert_close(torch.sin(p), torch.sin(x), atol=1e-12, rtol=0)
    a = torch.tensor([[3.0]], dtype=F64)
    b = torch.tensor([[-3.0]], dtype=F64)
    torch.testing.assert_close(space.difference(a, b), torch.tensor([[6.0 - 2 * math.pi]], dtype=F64))


def test_torus_batched_layout():
    batch = torch.tensor([1, 0, 1, 3, 1])
    space = Torus(batch, 4)  # sample 2 has no angles
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    torch.testing.assert_close(space.sum(x), torch.tensor([0.2, 0.9, 0.0, 0.4]))
    torch.testing.assert_close(space.dim(x), torch.tensor([1.0, 3.0, 0.0, 1.0]))
    expected = torch.tensor([20.0, 10, 20, 40, 20])
    torch.testing.assert_close(space.broadcast(torch.tensor([10.0, 20, 30, 40]), x), expected)
    assert Torus(batch).num_samples(x) == 4  # inferred from batch.max() + 1
    with pytest.raises(ValueError):
        Torus(batch, 3)
    with pytest.raises(ValueError):
        Torus(None, 3)


# ---------------------------------------------------------------------------- product
def test_product_split_join_roundtrip():
    space, x = make("product")
    parts = space.split(x)
    assert [tuple(p.shape) for p in parts] == [tuple(s) for s in space.shapes]
    torch.testing.assert_close(space.join(parts), x)
    assert space.num_samples(x) == 4
    with pytest.raises(ValueError):
        space.split(x[:-1])
    with pytest.raises(ValueError):
        space.join(parts[:2])


def test_product_is_sum_of_parts():
    space, x = make("product")
    parts = space.split(x)
    torch.testing.assert_close(space.sum(x), sum(s.sum(p) for s, p in zip(space.spaces, parts)))
    torch.testing.assert_close(space.dim(x), sum(s.dim(p) for s, p in zip(space.spaces, parts)))
    # project applies per part: wrap, zero CoM, identity
    y = space.project(x + 10.0)
    torus_part, com_part, euc_part = space.split(y)
    assert torch.all(torus_part.abs() <= math.pi)
    torch.testing.assert_close(space.spaces[1].mean(com_part), torch.zeros(4, 3, dtype=F64))
    torch.testing.assert_close(euc_part, parts[2] + 10.0)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    b = space.split(space.broadcast(v, x))
    torch.testing.assert_close(b[0], v[space.spaces[0].batch])
    torch.testing.assert_close(b[2], v[:, None].expand(4, 2))
    assert space.periodic


def test_product_validation():
    with pytest.raises(ValueError):
        Product([Euclidean()], [(2,), (3,)])
    with pytest.raises(ValueError):
        Product([], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generators_give_the_same_noise_on_cuda():
    space, x = make("zerocom")
    B = space.num_samples(x)
    cpu = space.noise(x, [torch.Generator().manual_seed(i) for i in range(B)])
    cuda_space = ZeroCoM(space.batch.cuda(), B)
    gpu = cuda_space.noise(x.cuda(), [torch.Generator().manual_seed(i) for i in range(B)])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
