"""Image datasets and the image pipeline on the domain-agnostic diffusion core.

Data. A pixel with integer level ``k`` in ``{0, ..., L-1}`` (``L = 17`` for scikit-learn's 8x8
digits, 256 for MNIST-format IDX files) lives in the bin ``[e_k, e_{k+1})`` of ``[-1, 1]`` with
edges ``e_k = 2 k / L - 1``. Training uses *uniform dequantisation* (Theis et al. 2016; Ho et al.
2019): ``y = 2 (k + u) / L - 1`` with ``u ~ U[0, 1)``, so ``y`` covers ``[-1, 1)`` and
``floor((y + 1) L / 2) = k``.

Model. An eps-predicting :class:`~confdiff.nn.unet.UNet` fed with the log-SNR of a cosine VP
schedule (Nichol & Dhariwal 2021), trained with :func:`~confdiff.diffusion.losses.denoising_score_matching_loss`
(simple weighting) and label dropout for classifier-free guidance (Ho & Salimans 2022). Sampling is
any sampler of :data:`~confdiff.diffusion.samplers.SAMPLERS`, one random generator per image.

Likelihood. Bits per dimension two ways, both upper bounds on the discrete NLL:

* probability-flow ODE (Song et al. 2021, sec. D.2) on dequantised test images,
  ``bpd = -E_u[log p(y)] / (D ln 2) + log2(L / 2)``, where ``log2(L/2)`` converts the density on
  ``[-1, 1]^D`` to the probability of a bin of width ``2 / L``;
* the DDPM variational bound (Ho et al. 2020 eq. 5; Kingma et al. 2021 eqs. 11-13) on the bin
  centres ``x = 2 (k + 1/2) / L - 1`` with times ``t_i = t_min + (1 - t_min) i / T``::

      -log P(x) <= KL(q(z_1 | x) || N(0, I))                                        (prior)
                 + sum_{i=1..T} E_eps[ (exp(lambda_{i-1} - lambda_i) - 1) ||eps - eps_hat(z_{t_i}, t_i)||^2 / 2 ]
                 - E_eps[ log prod_d int_{bin(x_d)} N(y; x_hat_d(z_{t_0}), sigma(t_0)^2) dy ]   (decoder)

  where ``lambda = log SNR`` and the decoder is Ho et al.'s discretised Gaussian (outer bins
  extended to +-inf; its variance ``sigma(t_0)^2`` is their ``beta_1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.resources
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .diffusion.guidance import classifier_free_guidance
from .diffusion.likelihood import bits_per_dim, log_likelihood
from .diffusion.losses import (
    ScorePrediction,
    X0Prediction,
    denoising_score_matching_loss,
    score_fn_from_model,
    sde_coefficients,
)
from .diffusion.samplers import SAMPLERS, time_grid
from .diffusion.schedules import VPCosine
from .diffusion.sde import SDE
from .diffusion.spaces import Euclidean
from .nn.unet import UNet, UNetConfig
from .train import TrainConfig, Trainer, load_checkpoint

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_SPLIT",
    "KIND",
    "ImageDataset",
    "ImageDiffusionConfig",
    "ImageModel",
    "add_arguments",
    "bin_centres",
    "clip_denoised",
    "default_model_path",
    "default_unet_config",
    "dequantize",
    "export_model",
    "image_loss",
    "load_dataset",
    "pf_ode_bits_per_dim",
    "read_idx",
    "run",
    "sample_images",
    "save_grid",
    "to_levels",
    "to_unit",
    "train_image_model",
    "variational_bound_bits_per_dim",
]

DIGITS_LEVELS = 17  # sklearn digits: integers 0..16
DIGITS_SPLIT = (1500, 297)  # fixed seeded train / test split of the 1797 digits
KIND = "image_unet"
_SPLIT_SEED = 0


# ============================================================================ data
class ImageDataset(Dataset):
    """Quantised images: item ``i`` is ``(levels[i] (C, H, W) uint8, labels[i] long)``.

    Pixels stay integers here; :func:`dequantize` makes them continuous inside the loss, from the
    step's random generator (so a resumed run sees the same noise).
    """

    def __init__(self, levels: Tensor, labels: Tensor, num_levels: int, num_classes: int, name: str):
        if levels.ndim != 4:
            raise ValueError(f"levels must be (N, C, H, W), got shape {tuple(levels.shape)}")
        if len(levels) != len(labels):
            raise ValueError(f"{len(levels)} images but {len(labels)} labels")
        if levels.numel() and int(levels.max()) >= num_levels:
            raise ValueError(f"pixel level {int(levels.max())} >= num_levels={num_levels}")
        self.levels, self.labels = levels, labels.long()
        self.num_levels, self.num_classes, self.name = num_levels, num_classes, name

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, i):
        return self.levels[i], self.labels[i]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.levels.shape[1:])

    def subset(self, n: int) -> ImageDataset:
        """The first ``n`` images."""
        return ImageDataset(self.levels[:n], self.labels[:n], self.num_levels, self.num_classes, self.name)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an MNIST-format IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian dims."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r})")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find_idx(directory: Path, prefixes: tuple[str, ...], kind: str) -> Path:
    for prefix in prefixes:
        for suffix in ("", ".gz"):
            for sep in ("-", "."):
                p = directory / f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte{suffix}"
                if p.exists():
                    return p
    raise ValueError(f"no {'/'.join(prefixes)} {kind} IDX file in {directory}")


def load_dataset(spec: str, split: str = "train") -> ImageDataset:
    """``"digits"`` (scikit-learn, 17 levels, seeded 1500 / 297 split) or ``"idx:DIR"`` (MNIST-format
    ``train-*`` / ``t10k-*`` images and labels, 256 levels); ``split`` is ``"train"`` or ``"test"``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(digits.images))
        idx = order[: DIGITS_SPLIT[0]] if split == "train" else order[DIGITS_SPLIT[0] :]
        levels = torch.from_numpy(digits.images[idx].astype(np.uint8))[:, None]
        labels = torch.from_numpy(digits.target[idx])
        return ImageDataset(levels, labels, DIGITS_LEVELS, 10, spec)
    if spec.startswith("idx:"):
        directory = Path(spec[4:]).expanduser()
        prefixes = ("train",) if split == "train" else ("t10k", "test")
        images = read_idx(_find_idx(directory, prefixes, "images"))
        labels = read_idx(_find_idx(directory, prefixes, "labels")).astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W) in {directory}, got {images.dtype} {images.shape}")
        num_classes = int(labels.max()) + 1 if labels.size else 0
        return ImageDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels), 256, num_classes, spec)
    raise ValueError(f"dataset must be 'digits' or 'idx:DIR', got {spec!r}")


def dequantize(levels: Tensor, num_levels: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform dequantisation ``y = 2 (k + u) / L - 1``, ``u ~ U[0, 1)``: values in ``[-1, 1)``.

    Computed in float64; a value that rounds onto a bin edge in ``dtype`` is moved one ulp back
    inside, so ``to_levels(y) == k`` holds exactly.
    """
    device = generator.device if generator is not None else levels.device
    u = torch.rand(levels.shape, generator=generator, device=device, dtype=torch.float64).to(levels.device)
    k = levels.double()
    y = (2.0 * (k + u) / num_levels - 1.0).to(dtype)
    lo, hi = 2.0 * k / num_levels - 1.0, 2.0 * (k + 1.0) / num_levels - 1.0
    y = torch.where(y.double() >= hi, torch.nextafter(y, torch.full_like(y, -2.0)), y)
    return torch.where(y.double() < lo, torch.nextafter(y, torch.full_like(y, 2.0)), y)


def bin_centres(levels: Tensor, num_levels: int) -> Tensor:
    """Centre ``2 (k + 1/2) / L - 1`` of each pixel's bin."""
    return (2.0 * levels.double() + 1.0) / num_levels - 1.0


def to_levels(x: Tensor, num_levels: int) -> Tensor:
    """The bin ``k = floor((x + 1) L / 2)`` of values in ``[-1, 1]`` (clipped to ``0 .. L-1``)."""
    return torch.clamp(torch.floor((x.double() + 1.0) * num_levels / 2.0), 0, num_levels - 1).long()


def to_unit(x: Tensor) -> Tensor:
    """Model space ``[-1, 1]`` to pixel intensities in ``[0, 1]`` (clipped)."""
    return torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)


# ============================================================================ model
@dataclass(frozen=True)
class ImageDiffusionConfig:
    """How the U-Net is trained: cosine VP schedule, eps prediction, simple weighting, label dropout.

    ``t_min`` is the smallest training time; samplers and likelihoods integrate down to it.
    """

    cosine_s: float = 0.008
    weighting: str = "simple"
    label_dropout: float = 0.1
    t_min: float = 1e-4

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 < self.t_min < 0.1:
            raise ValueError(f"t_min must be in (0, 0.1), got {self.t_min}")

    def sde(self) -> SDE:
        return SDE(VPCosine(s=self.cosine_s), Euclidean())


@dataclass
class ImageModel:
    """A trained U-Net with what is needed to use it: its SDE and the data it models."""

    unet: UNet
    diffusion: ImageDiffusionConfig
    num_levels: int
    shape: tuple[int, int, int]
    dataset: str

    @property
    def sde(self) -> SDE:
        return self.diffusion.sde()

    @property
    def num_classes(self) -> int:
        return self.unet.config.num_classes

    def model_config(self) -> dict:
        return {
            "unet": dataclasses.asdict(self.unet.config),
            "diffusion": dataclasses.asdict(self.diffusion),
            "data": {"num_levels": self.num_levels, "shape": list(self.shape), "dataset": self.dataset},
        }

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, map_location="cpu") -> ImageModel:
        """Load a trainer checkpoint or an exported model (EMA weights); ``None`` = the shipped digits model."""
        if path is None:
            with importlib.resources.as_file(default_model_path()) as p:
                ckpt = load_checkpoint(p, map_location)
        else:
            ckpt = load_checkpoint(path, map_location)
        if ckpt.get("kind") != KIND:
            raise ValueError(f"{path} holds a {ckpt.get('kind')!r} checkpoint, not {KIND!r}")
        cfg = ckpt["model_config"]
        unet = UNet(UNetConfig(**cfg["unet"]))
        unet.load_state_dict({k: v.float() for k, v in (ckpt.get("ema") or ckpt["model"]).items()})
        data = cfg["data"]
        return cls(unet.eval(), ImageDiffusionConfig(**cfg["diffusion"]), data["num_levels"],
                   tuple(data["shape"]), data["dataset"])

    def model_fn(self, labels: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x, t) -> eps_hat`` (see :func:`_eps_model`)."""
        return _eps_model(self.unet, self.sde.schedule, labels)

    def score_fn(self, labels: Tensor | None = None, guidance: float = 0.0,
                 clip: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
        """Score of ``p_t(x | label)``; ``guidance = w > 0`` gives classifier-free guidance with
        the null label as the unconditional model; ``clip`` applies :func:`clip_denoised`."""
        sde = self.sde
        score = score_fn_from_model(self.model_fn(labels), sde, "epsilon")
        if guidance != 0.0:
            if labels is None:
                raise ValueError("guidance needs labels (classifier-free guidance of a class)")
            uncond = score_fn_from_model(self.model_fn(None), sde, "epsilon")
            score = classifier_free_guidance(score, uncond, guidance)
        return clip_denoised(score, sde) if clip else score


def clip_denoised(score_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, lo: float = -1.0,
                  hi: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Static thresholding (Ho et al. 2020's ``clip_denoised``; Saharia et al. 2022, sec. 2.3) as a score.

    Tweedie's ``x0_hat = (x + sigma^2 score) / alpha`` is clipped to the data range ``[lo, hi]`` and
    turned back into the score ``-(x - alpha clip(x0_hat)) / sigma^2``. At high noise ``alpha`` is
    tiny (``alpha(1) ~ 1e-3`` for the cosine schedule) and dividing by it turns small eps errors into
    huge ``x0_hat``; without the clip, large sampler steps there saturate the images.
    """
    to_x0, from_x0 = ScorePrediction().to_x0, X0Prediction().to_score

    def clipped(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma, _ = sde_coefficients(sde, x, t)
        x0 = torch.clamp(to_x0(score_fn(x, t), x, alpha, sigma), lo, hi)
        return from_x0(x0, x, alpha, sigma)

    return clipped


def _eps_model(net: Callable, schedule, labels: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> eps_hat``: the U-Net fed with ``log_snr(t)`` and ``labels`` (None = null label)."""
    return lambda x, t: net(x, schedule.log_snr(t).to(x.dtype), labels)


def default_unet_config(shape: tuple[int, int, int], num_classes: int) -> UNetConfig:
    """The U-Net used for a dataset of images of ``shape`` (C, H, W)."""
    c, h, _ = shape
    if h <= 16:
        return UNetConfig(in_channels=c, resolution=h, channels=32, channel_mult=(1, 2),
                          attention_resolutions=(4,), num_classes=num_classes, dropout=0.1)
    return UNetConfig(in_channels=c, resolution=h, channels=32, channel_mult=(1, 2, 2),
                      attention_resolutions=(7, 8), num_classes=num_classes, dropout=0.1)


def default_model_path() -> importlib.resources.abc.Traversable:
    """The shipped class-conditional digits model, as package data."""
    return importlib.resources.files("confdiff") / "weights" / "digits_unet.pt"


def image_loss(unet, batch, generator: torch.Generator, *, diffusion: ImageDiffusionConfig,
               num_levels: int, null_label: int | None) -> Tensor:
    """Per-image DSM loss ``(B,)``: dequantise, drop labels to ``null_label`` with probability
    ``label_dropout``, eps-prediction loss at ``t ~ U(t_min, 1)``."""
    levels, labels = batch
    x0 = dequantize(levels, num_levels, generator)
    if null_label is None:
        labels = None
    elif diffusion.label_dropout > 0:
        drop = torch.rand(labels.shape, generator=generator, device=generator.device).to(labels.device)
        labels = torch.where(drop < diffusion.label_dropout, torch.full_like(labels, null_label), labels)
    sde = diffusion.sde()
    return denoising_score_matching_loss(_eps_model(unet, sde.schedule, labels), x0, sde,
                                         parameterization="epsilon", weighting=diffusion.weighting,
                                         generator=generator, t_min=diffusion.t_min)


# ============================================================================ sampling
def _generators(seed: int, start: int, n: int) -> list[torch.Generator]:
    """One generator per image: image ``i`` of seed ``s`` does not depend on the batch."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(start, start + n)]


@torch.no_grad()
def sample_images(model: ImageModel, num: int, *, sampler: str = "heun", steps: int = 50,
                  labels: Tensor | None = None, guidance: float = 0.0, seed: int = 0,
                  time_grid_kind: str = "edm", clip: bool = True, sampler_options: dict | None = None,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> Tensor:
    """``num`` images ``(num, C, H, W)`` in ``[0, 1]`` from ``SAMPLERS[sampler]`` with ``steps`` steps.

    ``labels (num,)`` conditions on classes (None: unconditional); ``guidance`` is the
    classifier-free guidance weight ``w``; ``clip`` applies :func:`clip_denoised`;
    ``time_grid_kind`` and ``sampler_options`` go to :func:`~confdiff.diffusion.samplers.time_grid`
    and the sampler (e.g. ``rtol`` for ``rk45``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    if labels is not None and len(labels) != num:
        raise ValueError(f"got {len(labels)} labels for {num} images")
    model.unet.to(device).eval()
    sde = model.sde
    ts = time_grid(steps, t_min=model.diffusion.t_min, kind=time_grid_kind, schedule=sde.schedule).to(device)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        gens = _generators(seed, start, n)
        x = sde.prior_sample(torch.empty(n, *model.shape, device=device), gens)
        y = None if labels is None else labels[start : start + n].to(device)
        x = SAMPLERS[sampler](model.score_fn(y, guidance, clip), x, sde, ts, generator=gens, **(sampler_options or {}))
        out.append(to_unit(x).cpu())
    return torch.cat(out)


def save_grid(images: Tensor, path: str | os.PathLike, *, nrow: int = 10, scale: int = 1) -> None:
    """Tile images ``(N, H, W)`` (or ``(N, 1, H, W)``) in ``[0, 1]`` into a grey PNG, ``nrow`` per row."""
    import matplotlib.image

    imgs = images.reshape(len(images), *images.shape[-2:]).float()
    n, h, w = imgs.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(rows * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, img in enumerate(imgs):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    matplotlib.image.imsave(str(path), grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0)


# ============================================================================ likelihood
def _log_prob_gaussian_bin(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for standardised bounds ``lo < hi``, stable in both tails."""
    flip = lo > 0  # use the mirror image so both bounds sit in the left tail
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(torch.clamp(log_lo - log_hi, max=-1e-300)))


def _time_of_sigma(schedule, sigma: float, iters: int = 60) -> float:
    """The ``t`` in ``(0, 1)`` with ``schedule.sigma(t) = sigma`` (bisection; sigma increases)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(schedule.sigma(torch.tensor(mid, dtype=torch.float64))) < sigma else (lo, mid)
    return 0.5 * (lo + hi)


@torch.no_grad()
def variational_bound_bits_per_dim(model: ImageModel, levels: Tensor, *, steps: int = 1000,
                                   t_min: float | None = None, seed: int = 0, batch_size: int = 512) -> dict:
    """The DDPM variational bound (module docstring) in bits/dim, per image ``(N,)`` and its parts.

    Null label (unconditional model). Every one of the ``steps`` terms is evaluated with one
    ``eps`` per image and term. The bound holds for any ``t_min``; by default ``sigma(t_min) = 1/L``,
    half a bin, which minimised it on training digits (the model is trained on dequantised data,
    so below that noise level the decoder, not the diffusion, should account for the bins).
    Returns ``{"bpd": (N,), "prior", "diffusion", "decoder"}`` (bits/dim).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sched, L = model.sde.schedule, model.num_levels
    if t_min is None:
        t_min = _time_of_sigma(sched, 1.0 / L)
    model_fn = model.model_fn(None)
    ts = t_min + (1.0 - t_min) * torch.arange(steps + 1, dtype=torch.float64) / steps
    lam = sched.log_snr(ts)
    parts = {"prior": [], "diffusion": [], "decoder": []}
    for start in range(0, len(levels), batch_size):
        k = levels[start : start + batch_size].long()
        x = bin_centres(k, L)  # float64, (n, C, H, W)
        n, gen = len(x), torch.Generator().manual_seed(seed * 7919 + start)
        # prior: KL(N(alpha_1 x, sigma_1^2) || N(0, 1)), summed over pixels
        a1, s1 = sched.alpha(ts[-1:]).double(), sched.sigma(ts[-1:]).double()
        parts["prior"].append(0.5 * (a1**2 * x**2 + s1**2 - 1.0 - torch.log(s1**2)).flatten(1).sum(1))
        diffusion = torch.zeros(n, dtype=torch.float64)
        for i in range(1, steps + 1):
            t = ts[i].expand(n)
            eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            z = sched.alpha(t[:1]) * x + sched.sigma(t[:1]) * eps
            eps_hat = model_fn(z.float(), t.float()).double()
            w = torch.expm1(lam[i - 1] - lam[i])  # SNR(t_{i-1}) / SNR(t_i) - 1
            diffusion += 0.5 * w * (eps - eps_hat).pow(2).flatten(1).sum(1)
        parts["diffusion"].append(diffusion)
        # decoder: discretised Gaussian around x_hat(z_{t_0}) with std sigma(t_0)
        a0, s0 = sched.alpha(ts[:1]).double(), sched.sigma(ts[:1]).double()
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        z = a0 * x + s0 * eps
        eps_hat = model_fn(z.float(), ts[:1].expand(n).float()).double()
        x_hat = (z - s0 * eps_hat) / a0
        lo = torch.where(k == 0, -math.inf, 2.0 * k / L - 1.0)
        hi = torch.where(k == L - 1, math.inf, 2.0 * (k + 1) / L - 1.0)
        log_p = _log_prob_gaussian_bin((lo - x_hat) / s0, (hi - x_hat) / s0)
        parts["decoder"].append(-log_p.flatten(1).sum(1))
    dims = math.prod(model.shape) * math.log(2.0)
    out = {name: torch.cat(v) / dims for name, v in parts.items()}
    out["bpd"] = out["prior"] + out["diffusion"] + out["decoder"]
    return out


def pf_ode_bits_per_dim(model: ImageModel, levels: Tensor, *, seed: int = 0, batch_size: int = 512,
                        **likelihood_kwargs) -> Tensor:
    """Bits/dim ``(N,)`` of dequantised images under the probability-flow ODE (Hutchinson trace).

    ``bpd = -log p(y) / (D ln 2) + log2(L / 2)`` with ``y`` uniformly dequantised (module docstring).
    Null label (unconditional model). Extra keywords go to :func:`~confdiff.diffusion.likelihood.log_likelihood`.
    """
    likelihood_kwargs.setdefault("divergence", "hutchinson")
    likelihood_kwargs.setdefault("t_min", model.diffusion.t_min)
    score_fn = model.score_fn(None)
    dims, out = math.prod(model.shape), []
    for start in range(0, len(levels), batch_size):
        gen = torch.Generator().manual_seed(seed * 7919 + start)
        y = dequantize(levels[start : start + batch_size], model.num_levels, gen)
        logp, _ = log_likelihood(score_fn, y, model.sde, generator=gen, **likelihood_kwargs)
        out.append(bits_per_dim(logp.double(), dims, n_bins=model.num_levels, data_scale=2.0))
    return torch.cat(out)


# ============================================================================ training
def train_image_model(dataset: str, out_dir: str | os.PathLike, *, config: TrainConfig,
                      diffusion: ImageDiffusionConfig = ImageDiffusionConfig(),
                      unet_config: UNetConfig | None = None, num_train: int | None = None,
                      resume: bool = False, progress: bool = True) -> Trainer:
    """Train a U-Net on ``dataset`` (see :func:`load_dataset`) with the generic trainer.

    The test split serves as the validation set; ``num_train`` keeps the first images only.
    """
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if num_train is not None:
        train, test = train.subset(num_train), test.subset(num_train)
    unet_config = unet_config or default_unet_config(train.shape, train.num_classes)
    if unet_config.num_classes not in (0, train.num_classes):
        raise ValueError(f"unet num_classes={unet_config.num_classes} but the dataset has {train.num_classes}")
    model = ImageModel(UNet(unet_config), diffusion, train.num_levels, train.shape, dataset)
    null = unet_config.null_label if unet_config.num_classes else None
    loss_fn = partial(image_loss, diffusion=diffusion, num_levels=train.num_levels, null_label=null)
    trainer = Trainer(model.unet, loss_fn, train, val_dataset=test, config=config, out_dir=out_dir,
                      model_config=model.model_config(), kind=KIND, resume=resume, progress=progress)
    trainer.fit()
    return trainer


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, half: bool = True) -> Path:
    """Keep a checkpoint's EMA weights (fp16 when ``half``) and configs: the shippable model file."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != KIND:
        raise ValueError(f"{checkpoint} holds a {ckpt.get('kind')!r} checkpoint, not {KIND!r}")
    ema = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["ema"].items()}
    slim = {"kind": KIND, "model_config": ckpt["model_config"], "train_config": ckpt["train_config"],
            "step": ckpt["step"], "ema": ema}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(slim, tmp)
    os.replace(tmp, out)
    return out


# ============================================================================ CLI
def _parse_label(text: str) -> int | str:
    return text if text == "cycle" else int(text)


def _parse_option(text: str) -> tuple[str, float | int]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    number = float(value)
    return key, int(number) if number.is_integer() and "." not in value and "e" not in value else number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``confdiff image train | sample | nll | export``."""
    sub = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a U-Net on digits or IDX images")
    p.add_argument("--dataset", default="digits", help="'digits' or 'idx:DIR' (MNIST-format files)")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, train.log)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--channels", type=int, default=None, help="U-Net width (default by image size)")
    p.add_argument("--unconditional", action="store_true", help="ignore the labels")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")

    p = sub.add_parser("sample", help="sample images (PNG grid and npz)")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped digits model)")
    p.add_argument("--sampler", default="heun", help="a name in confdiff.diffusion.samplers.SAMPLERS")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--time-grid", default="edm", help="time_grid kind: uniform, quadratic, log, log_snr, edm")
    p.add_argument("--no-clip", dest="clip", action="store_false", help="do not clip x0_hat to [-1, 1]")
    p.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra sampler keyword, e.g. rtol=1e-3 (rk45), eta=1 (ddim); repeatable")
    p.add_argument("--label", type=_parse_label, default=None, help="class index, or 'cycle' for 0, 1, 2, ...")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w")
    p.add_argument("-n", "--num", type=int, default=100)
    p.add_argument("--out", required=True, help="npz with 'images' (N, H, W) in [0, 1] and 'labels'")
    p.add_argument("--grid", default=None, help="also write a PNG grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("nll", help="bits/dim on a split: probability-flow ODE and the DDPM bound")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped digits model)")
    p.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--method", default="both", choices=["both", "pf-ode", "elbo"])
    p.add_argument("--ode-tol", type=float, default=1e-5, help="rtol = atol of the PF-ODE solver")
    p.add_argument("--elbo-steps", type=int, default=1000)
    p.add_argument("--elbo-t-min", type=float, default=None, help="decoder time t_0 (default: sigma(t_0) = 1/L)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the numbers as JSON")

    p = sub.add_parser("export", help="slim a training checkpoint to a shippable model file")
    p.add_argument("checkpoint")
    p.add_argument("out")


def _run_train(args) -> int:
    train = load_dataset(args.dataset, "train")
    unet_config = default_unet_config(train.shape, 0 if args.unconditional else train.num_classes)
    if args.channels is not None:
        unet_config = dataclasses.replace(unet_config, channels=args.channels)
    config = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.steps, ema_decay=args.ema_decay,
                         warmup_steps=args.warmup_steps, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                         seed=args.seed, device=args.device)
    diffusion = ImageDiffusionConfig(label_dropout=args.label_dropout)
    train_image_model(args.dataset, args.out, config=config, diffusion=diffusion, unet_config=unet_config,
                      resume=args.resume)
    print(f"checkpoint: {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _run_sample(args) -> int:
    model = ImageModel.from_checkpoint(args.model)
    labels = None
    if args.label is not None and model.num_classes == 0:
        raise ValueError("--label given but the model is unconditional")
    if args.label == "cycle":
        labels = torch.arange(args.num) % max(model.num_classes, 1)
    elif args.label is not None:
        if not 0 <= args.label < model.num_classes:
            raise ValueError(f"--label {args.label} outside 0..{model.num_classes - 1}")
        labels = torch.full((args.num,), args.label)
    images = sample_images(model, args.num, sampler=args.sampler, steps=args.steps, labels=labels,
                           guidance=args.guidance, seed=args.seed, time_grid_kind=args.time_grid, clip=args.clip,
                           sampler_options=dict(args.option), device=args.device)
    images = images[:, 0]  # (N, H, W), single channel
    np.savez_compressed(args.out, images=images.numpy().astype(np.float32),
                        labels=(labels if labels is not None else torch.full((args.num,), -1)).numpy())
    if args.grid:
        save_grid(images, args.grid, nrow=10, scale=4)
    print(f"wrote {args.num} images to {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0


def _run_nll(args) -> int:
    model = ImageModel.from_checkpoint(args.model)
    data = load_dataset(args.dataset or model.dataset, args.split)
    levels = data.levels[: args.num_images]
    result: dict = {"dataset": data.name, "split": args.split, "num_images": len(levels), "levels": model.num_levels}
    if args.method in ("both", "pf-ode"):
        bpd = pf_ode_bits_per_dim(model, levels, seed=args.seed, rtol=args.ode_tol, atol=args.ode_tol)
        result["pf_ode_bpd"] = float(bpd.mean())
        result["pf_ode_bpd_stderr"] = float(bpd.std() / math.sqrt(len(bpd)))
    if args.method in ("both", "elbo"):
        vb = variational_bound_bits_per_dim(model, levels, steps=args.elbo_steps, t_min=args.elbo_t_min,
                                            seed=args.seed)
        result["elbo_bpd"] = float(vb["bpd"].mean())
        result["elbo_bpd_stderr"] = float(vb["bpd"].std() / math.sqrt(len(levels)))
        result.update({f"elbo_{k}_bpd": float(v.mean()) for k, v in vb.items() if k != "bpd"})
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def run(args) -> int:
    """Dispatch ``confdiff image ACTION``."""
    try:
        if args.image_command == "train":
            return _run_train(args)
        if args.image_command == "sample":
            return _run_sample(args)
        if args.image_command == "nll":
            return _run_nll(args)
        export_model(args.checkpoint, args.out)
        return 0
    except ValueError as err:
        print(f"confdiff image: error: {err}", file=sys.stderr)
        return 2
