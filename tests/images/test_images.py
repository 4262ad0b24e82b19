"""The image side: datasets and dequantisation, a seconds-long training, every sampler on the
shipped model, the likelihood pieces, the CLI, and no rdkit anywhere in the import graph."""

import gzip
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from confdiff.diffusion.samplers import SAMPLERS
from confdiff.images import (
    DIGITS_LEVELS,
    DIGITS_SPLIT,
    ImageDiffusionConfig,
    ImageModel,
    bin_centres,
    clip_denoised,
    dequantize,
    image_loss,
    load_dataset,
    pf_ode_bits_per_dim,
    read_idx,
    sample_images,
    to_levels,
    to_unit,
    train_image_model,
    variational_bound_bits_per_dim,
)
from confdiff.images.likelihood import _log_prob_gaussian_bin
from confdiff.nn.unet import UNetConfig
from confdiff.train import TrainConfig


@pytest.fixture(scope="module")
def shipped():
    return ImageModel.from_checkpoint()


def test_digits_split_is_fixed_disjoint_and_complete():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == DIGITS_SPLIT
    assert train.shape == (1, 8, 8) and train.num_levels == DIGITS_LEVELS == 17 and train.num_classes == 10
    assert int(train.levels.max()) == 16 and int(train.levels.min()) == 0
    assert set(train.labels.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    rows = {tuple(r) for r in load_digits().images.reshape(-1, 64).astype(int).tolist()}
    split = {tuple(r) for r in torch.cat([train.levels, test.levels]).reshape(-1, 64).tolist()}
    assert split == rows
    torch.testing.assert_close(load_dataset("digits", "test").levels, test.levels)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_dequantisation_fills_each_bin_of_minus_one_one(num_levels):
    k = torch.arange(num_levels).repeat(2000)
    y = dequantize(k, num_levels, torch.Generator().manual_seed(0))
    assert y.min() >= -1.0 and y.max() < 1.0
    assert torch.equal(to_levels(y, num_levels), k)  # every value stays in its own bin
    width = 2.0 / num_levels
    means = y.reshape(2000, num_levels).double().mean(0)
    torch.testing.assert_close(means, bin_centres(torch.arange(num_levels), num_levels), atol=0.05 * width, rtol=0)
    assert bin_centres(torch.tensor([0]), num_levels).item() == pytest.approx(-1 + width / 2)
    torch.testing.assert_close(to_unit(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])),
                               torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def _write_idx(path, array: np.ndarray, dtype_code: int) -> None:
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_idx_directory_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 4, 0x08)
    train, test = load_dataset(f"idx:{tmp_path}", "train"), load_dataset(f"idx:{tmp_path}", "test")
    assert train.levels.shape == (6, 1, 28, 28) and test.levels.shape == (3, 1, 28, 28)
    assert train.num_levels == 256 and train.num_classes == 4
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), test.levels[:, 0].numpy())
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar")


def test_seconds_of_training_on_a_tiny_subset_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    unet = UNetConfig(resolution=8, channels=16, channel_mult=(1, 2), attention_resolutions=(), num_classes=10,
                      dropout=0.0)
    config = TrainConfig(lr=2e-3, batch_size=32, max_steps=30, ema_decay=0.9, log_every=10,
                         checkpoint_every=30, eval_every=30, seed=0)
    diffusion = ImageDiffusionConfig()
    data = load_dataset("digits", "train").subset(64)
    batch = (data.levels, data.labels)
    kw = {"diffusion": diffusion, "num_levels": 17, "null_label": 10}

    def fixed_loss(net):
        with torch.no_grad():
            return image_loss(net.eval(), batch, torch.Generator().manual_seed(1), **kw).mean().item()

    trainer = train_image_model("digits", tmp_path, config=config, diffusion=diffusion, unet_config=unet,
                                num_train=64, progress=False)
    before = 64.0  # a fresh eps-model outputs 0: E||eps||^2 = 64 pixels
    after = fixed_loss(trainer.ema)
    assert after < 0.6 * before
    model = ImageModel.from_checkpoint(tmp_path / "checkpoint.pt")
    assert model.shape == (1, 8, 8) and model.num_levels == 17 and model.dataset == "digits"
    assert fixed_loss(model.unet) == pytest.approx(after, rel=1e-5)


# Per sampler, the fewest steps (and options) at which the shipped model draws recognisable digits;
# the adaptive solver and the Langevin inner loop are kept cheap. A sampler missing here runs 20 steps.
SAMPLER_SETTINGS = {
    "ddim": (4, {}),
    "ddpm": (4, {}),
    "heun": (10, {}),
    "rk45": (4, {"rtol": 1e-2, "atol": 1e-2}),
    "euler_maruyama": (20, {}),
    "predictor_corrector": (20, {}),
    "annealed_langevin": (30, {"n_steps_each": 1, "step_scale": 1.0}),
}


@pytest.fixture(scope="module")
def class_templates():
    """The mean training image of each digit, in ``[0, 1]``: ``(10, 1, 8, 8)``."""
    train = load_dataset("digits", "train")
    unit = train.levels.float() / (DIGITS_LEVELS - 1)
    return torch.stack([unit[train.labels == c].mean(0) for c in range(10)]), unit.mean().item()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_the_asked_digits_from_the_shipped_model(shipped, class_templates, name):
    """One image of each class: each must lie nearest its own class's mean training image.

    The pixel range alone cannot tell a sampler that diverged from one that works (``to_unit``
    clamps to ``[0, 1]``; a diverged sampler gives saturated noise, nearest a random template and
    with a mean intensity near 0.5 instead of the data's 0.31).
    """
    templates, data_mean = class_templates
    labels = torch.arange(10)
    steps, options = SAMPLER_SETTINGS.get(name, (20, {}))
    images = sample_images(shipped, 10, sampler=name, steps=steps, labels=labels, guidance=1.0, seed=5,
                           sampler_options=options)
    assert images.shape == (10, 1, 8, 8) and torch.isfinite(images).all()
    nearest = ((images[:, None] - templates[None]) ** 2).flatten(2).sum(-1).argmin(1)
    assert (nearest == labels).sum() >= 8, f"{name}: asked for {labels.tolist()}, drew {nearest.tolist()}"
    assert abs(images.mean().item() - data_mean) < 0.1


def test_samples_do_not_depend_on_the_batch(shipped):
    a = sample_images(shipped, 4, sampler="ddim", steps=5, seed=2, batch_size=4)
    b = sample_images(shipped, 4, sampler="ddim", steps=5, seed=2, batch_size=2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float round-off only


def test_gaussian_bin_log_probability():
    lo = torch.tensor([-math.inf, -1.0, 2.0, 30.0, -31.0], dtype=torch.float64)
    hi = torch.tensor([0.0, 1.0, math.inf, 31.0, -30.0], dtype=torch.float64)
    got = _log_prob_gaussian_bin(lo, hi)
    direct = torch.log(torch.special.ndtr(hi[:3]) - torch.special.ndtr(lo[:3]))
    torch.testing.assert_close(got[:3], direct)
    assert torch.isfinite(got).all()  # far tails: ndtr differences underflow, the log does not
    torch.testing.assert_close(got[3], got[4])  # symmetry
    assert got[3] == pytest.approx(-(30.0**2) / 2 - math.log(30.0 * math.sqrt(2 * math.pi)), rel=1e-3)


def test_variational_bound_parts_on_the_shipped_model(shipped):
    levels = load_dataset("digits", "test").levels[:8]
    vb = variational_bound_bits_per_dim(shipped, levels, steps=50)
    assert vb["bpd"].shape == (8,)
    torch.testing.assert_close(vb["bpd"], vb["prior"] + vb["diffusion"] + vb["decoder"])
    assert (vb["prior"] >= 0).all() and (vb["diffusion"] >= 0).all() and (vb["decoder"] >= 0).all()
    assert (vb["prior"] < 1e-3).all()  # q(z_1 | x) is almost the prior
    coarse = variational_bound_bits_per_dim(shipped, levels, steps=10)
    assert coarse["bpd"].mean() > vb["bpd"].mean()  # more steps, tighter bound (Kingma et al. 2021, sec. 4)


def test_clip_denoised_bounds_the_implied_x0_and_keeps_inner_ones(shipped):
    sde = shipped.sde
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.99, 0.9, 0.5, 0.1])
    alpha, sigma = (v[:, None, None, None] for v in sde.schedule.alpha_sigma(t))

    def score_of_x0(x0):  # the score whose Tweedie estimate is x0
        return lambda x_, t_: -(x_ - alpha * x0) / sigma**2

    wild = 5.0 * torch.randn(4, 1, 8, 8)
    s = clip_denoised(score_of_x0(wild), sde)(x, t)
    torch.testing.assert_close((x + sigma**2 * s) / alpha, wild.clamp(-1, 1), atol=1e-4, rtol=1e-4)
    tame = 0.9 * torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(clip_denoised(score_of_x0(tame), sde)(x, t), score_of_x0(tame)(x, t))


class _GaussianEps(torch.nn.Module):
    """The exact eps-model of data ``N(0, s^2 I)`` under a VP schedule, fed ``log_snr`` like the U-Net.

    ``x_t ~ N(0, v I)`` with ``v = alpha^2 s^2 + sigma^2``, so ``eps_hat = -sigma score = sigma x / v``
    (``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``).
    """

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x, log_snr, labels=None):
        a2, s2 = (torch.sigmoid(v).reshape(-1, 1, 1, 1).to(x.dtype) for v in (log_snr, -log_snr))
        return s2.sqrt() * x / (a2 * self.s**2 + s2)


def test_pf_ode_bits_per_dim_of_a_gaussian_model_is_the_closed_form():
    """With the exact score of ``N(0, s^2 I)``, the PF-ODE gives ``log N(y; 0, v(t_min) I)`` of the
    dequantised ``y``; ``bpd = -log p(y) / (D ln 2) + log2(L / 2)`` then lies between its values at
    the ends of each pixel's bin (``-log N`` grows with ``|y|``), a bracket 0.03 bits/dim wide for
    ``L = 256``. A wrong bin width, dimension count, dequantisation or ODE is off by far more."""
    s, num_levels, t_min = 0.5, 256, 1e-4
    model = ImageModel(_GaussianEps(s), ImageDiffusionConfig(t_min=t_min), num_levels, (1, 4, 4), "gaussian")
    levels = torch.tensor([[0, 255, 128, 127], [40, 200, 90, 170], [3, 252, 64, 192], [127, 128, 0, 255]],
                          dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    levels[1] = 255 - levels[1]
    bpd = pf_ode_bits_per_dim(model, levels, divergence="exact", rtol=1e-6, atol=1e-6)

    alpha, sigma = model.sde.schedule.alpha_sigma(torch.tensor(t_min, dtype=torch.float64))
    v = alpha**2 * s**2 + sigma**2
    lo, hi = 2.0 * levels.double() / num_levels - 1.0, 2.0 * (levels.double() + 1.0) / num_levels - 1.0
    near = torch.where((lo < 0) & (hi > 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    far = torch.maximum(lo.abs(), hi.abs())

    def closed_form(y):  # -log N(y; 0, v) per image in bits/dim, plus log2(L / 2)
        nll = (y**2 / (2 * v) + 0.5 * torch.log(2 * math.pi * v)).flatten(1).mean(1)
        return nll / math.log(2.0) + math.log2(num_levels / 2)

    assert bpd.shape == (2,)
    assert (closed_form(near) - 1e-4 <= bpd).all() and (bpd <= closed_form(far) + 1e-4).all(), (bpd, closed_form(near))
    assert (closed_form(far) - closed_form(near) < 0.03).all()  # the bracket is tight


def test_cli_image_sample_writes_npz_and_grid(tmp_path, shipped):
    """The npz holds exactly the library's samples for the given arguments, and the grid shows them."""
    import matplotlib.image

    from confdiff.cli import main

    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    rc = main(["image", "sample", "--sampler", "ddim", "--steps", "5", "--label", "4", "--guidance", "2",
               "-n", "6", "--out", str(out), "--grid", str(grid), "--seed", "1"])
    assert rc == 0
    data = np.load(out)
    assert set(data.files) == {"images", "labels"}
    assert data["images"].shape == (6, 8, 8) and data["images"].dtype == np.float32
    np.testing.assert_array_equal(data["labels"], np.full(6, 4))
    expected = sample_images(shipped, 6, sampler="ddim", steps=5, labels=torch.full((6,), 4), guidance=2.0, seed=1)
    np.testing.assert_array_equal(data["images"], expected[:, 0].numpy())  # every argument reached the sampler
    other = sample_images(shipped, 6, sampler="ddim", steps=5, labels=torch.full((6,), 4), guidance=2.0, seed=2)
    assert not torch.equal(other, expected)  # so the comparison above can tell seeds apart
    # the grid: 10 per row, a 1-pixel border, scaled 4x; the colormap floors to one of 256 greys
    png = matplotlib.image.imread(str(grid))[..., 0]
    assert png.shape == (4 * (8 + 2), 4 * (10 * 9 + 1))
    for i, img in enumerate(data["images"]):
        tile = png[4:4 + 32:4, 4 * (1 + 9 * i):4 * (1 + 9 * i) + 32:4]
        np.testing.assert_allclose(tile, img, atol=2 / 255)


def test_image_code_and_core_never_import_rdkit():
    code = (
        "import sys; sys.modules['rdkit'] = None\n"  # any `import rdkit...` now raises ImportError
        "import pkgutil, importlib, confdiff.diffusion, confdiff.images\n"
        "for m in pkgutil.iter_modules(confdiff.diffusion.__path__):\n"
        "    importlib.import_module('confdiff.diffusion.' + m.name)\n"
        "assert not [m for m in sys.modules if m.startswith('rdkit.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
