"""Tensor-field-network layers: agreement with e3nn, equivariance (float32 and float64), validation."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from confdiff.nn.tfn import (
    DepthwiseTensorProduct,
    EquivariantLayerNorm,
    GaussianRBF,
    IrrepsLinear,
    TensorFieldConv,
    cosine_cutoff,
)

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
IRREPS = o3.Irreps("4x0e + 2x0o + 3x1o + 2x1e + 1x2e")



@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    """Also the default dtype: e3nn builds the rotation matrices of its checker in it."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(default)


def channels_last(module):
    """Wrap a channels-first module ``(dim, N) -> (dim, N)`` for e3nn's ``(N, dim)`` test tools."""
    return lambda x: module(x.t().contiguous()).t()


@pytest.mark.parametrize("irreps_sh", ["0e + 1o + 2e", "1o + 1e"])
def test_depthwise_tensor_product_equals_e3nn(irreps_sh, dtype):
    tp = DepthwiseTensorProduct(IRREPS, irreps_sh, ["0e", "0o", "1o", "1e", "2e"]).to(dtype)
    instructions = [(i_in, i_sh, i_out, "uvu", True) for i_in, i_sh, i_out in tp.instructions]
    reference = o3.TensorProduct(IRREPS, irreps_sh, tp.irreps_out, instructions, shared_weights=False,
                                 internal_weights=False)
    assert reference.weight_numel == tp.weight_numel
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, IRREPS.dim, generator=generator, dtype=dtype)
    sh = torch.randn(50, o3.Irreps(irreps_sh).dim, generator=generator, dtype=dtype)
    weight = torch.randn(50, tp.weight_numel, generator=generator, dtype=dtype)
    out = tp(x.t(), sh.t(), weight.t())
    expected = reference(x, sh, weight)
    torch.testing.assert_close(out.t(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    # the gradients too (the blocks are split, not sliced, for a fast backward)
    cotangent = torch.randn(expected.shape, generator=generator, dtype=dtype)
    inputs = tuple(v.requires_grad_() for v in (x, sh, weight))
    ours = torch.autograd.grad(tp(*(v.t() for v in inputs)).t(), inputs, cotangent)
    theirs = torch.autograd.grad(reference(*inputs), inputs, cotangent)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    summed = tp(x.t(), sh.t(), weight.t(), num_slots=5)  # 5 slots of 10 receivers
    torch.testing.assert_close(summed, out.view(-1, 5, 10).sum(1), atol=TOLERANCE[dtype], rtol=0)


def test_irreps_linear_equals_e3nn(dtype):
    irreps_out = o3.Irreps("3x0e + 2x1o + 1x1e + 2x0o + 1x2o")
    linear = IrrepsLinear(IRREPS, irreps_out, bias=True)
    reference = o3.Linear(IRREPS, irreps_out, biases=True)
    with torch.no_grad():
        linear.bias.normal_()
        reference.weight.copy_(linear.weight)
        reference.bias.copy_(linear.bias)
    x = torch.randn(7, IRREPS.dim, requires_grad=True)
    out, expected = linear(x.t()).t(), reference(x)
    torch.testing.assert_close(out, expected, atol=TOLERANCE[dtype], rtol=0)
    cotangent = torch.randn(expected.shape)
    ours = torch.autograd.grad(out, [x, linear.weight, linear.bias], cotangent)
    theirs = torch.autograd.grad(expected, [x, reference.weight, reference.bias], cotangent)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=TOLERANCE[dtype], rtol=0)


def test_linear_and_norm_are_equivariant(dtype):
    torch.manual_seed(0)
    for module, irreps_out in [(IrrepsLinear(IRREPS, "2x0e + 3x1o + 1x0o", bias=True), "2x0e + 3x1o + 1x0o"),
                               (EquivariantLayerNorm(IRREPS), IRREPS)]:
        module = module.to(dtype)
        x = torch.randn(6, IRREPS.dim, dtype=dtype)
        assert_equivariant(channels_last(module), [x], [IRREPS], [irreps_out], tolerance=TOLERANCE[dtype])


def test_layer_norm_normalises_each_block():
    norm = EquivariantLayerNorm(IRREPS).double()
    out = norm(10 * torch.randn(IRREPS.dim, 5, dtype=torch.float64))
    for (mul, ir), sl in zip(IRREPS, IRREPS.slices()):
        block = out[sl].view(mul, ir.dim, 5)
        torch.testing.assert_close(block.pow(2).mean((0, 1)), torch.ones(5, dtype=torch.float64), rtol=1e-4, atol=0)


def random_slots(num_nodes: int, num_slots: int, generator: torch.Generator) -> torch.Tensor:
    """Slot-major neighbours: any atom but the receiver itself."""
    shift = torch.randint(1, num_nodes, (num_slots, num_nodes), generator=generator)
    return ((torch.arange(num_nodes) + shift) % num_nodes).reshape(-1)


@pytest.mark.parametrize("lmax", [1, 2])
def test_tensor_field_conv_is_equivariant(dtype, lmax):
    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("4x0e + 2x1o"), o3.Irreps("4x0e + 2x0o + 2x1o + 2x1e")
    irreps_sh = o3.Irreps.spherical_harmonics(lmax)
    conv = TensorFieldConv(irreps_in, irreps_sh, irreps_out, edge_dim=8, avg_num_neighbors=3.0).to(dtype)
    num_nodes, num_slots = 9, 4
    src = random_slots(num_nodes, num_slots, torch.Generator().manual_seed(1))
    edge_emb = torch.randn(8, src.numel(), dtype=dtype)

    def fn(h, pos):
        vec = pos[src] - pos.repeat(num_slots, 1)
        sh = o3.spherical_harmonics(irreps_sh, vec, normalize=True, normalization="component")
        return conv(h.t().contiguous(), src, sh.t().contiguous(), edge_emb).t()

    h = torch.randn(num_nodes, irreps_in.dim, dtype=dtype)
    pos = torch.randn(num_nodes, 3, dtype=dtype)
    assert fn(h, pos).abs().max() > 0.1
    assert_equivariant(fn, [h, pos], [irreps_in, "cartesian_points"], [irreps_out], tolerance=TOLERANCE[dtype])


def test_tensor_field_conv_rejects_bad_irreps():
    with pytest.raises(ValueError, match="irreps_in"):
        TensorFieldConv("2x1o", "0e + 1o", "2x0e + 1x1o", 4, 1.0)
    with pytest.raises(ValueError, match="irreps_out"):
        TensorFieldConv("2x0e", "0e + 1o", "1x1o + 2x0e", 4, 1.0)
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        TensorFieldConv("2x0e", "0e + 1o", "2x0e + 1x1o", 4, 0.0)
    with pytest.raises(ValueError, match="no path"):
        DepthwiseTensorProduct("2x0e", "1o", ["0e"])


def test_radial_basis_and_cutoff():
    d = torch.linspace(0.0, 6.0, 601, dtype=torch.float64, requires_grad=True)
    rbf = GaussianRBF(0.0, 5.0, 6)
    assert rbf(d).shape == (6, 601)
    env = cosine_cutoff(d, 5.0)
    assert env[0] == 1 and (env[d >= 5.0] == 0).all() and (env.diff() <= 0).all()
    (grad,) = torch.autograd.grad(env.sum(), d)
    assert grad[d >= 5.0].abs().max() == 0 and grad[(d > 4.9) & (d < 5.0)].abs().max() < 0.05  # smooth at the cutoff
    with pytest.raises(ValueError, match="num"):
        GaussianRBF(0.0, 5.0, 1)
