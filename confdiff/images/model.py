"""The image model on the domain-agnostic diffusion core: a U-Net, its SDE, and sampling.

Model. An eps-predicting :class:`~confdiff.nn.unet.UNet` fed with the log-SNR of a cosine VP
schedule (Nichol & Dhariwal 2021), trained with :func:`~confdiff.diffusion.losses.denoising_score_matching_loss`
(simple weighting) and label dropout for classifier-free guidance (Ho & Salimans 2022). Sampling is
any sampler of :data:`~confdiff.diffusion.samplers.SAMPLERS`, one random generator per image.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.guidance import classifier_free_guidance
from ..diffusion.losses import ScorePrediction, X0Prediction, score_fn_from_model, sde_coefficients
from ..diffusion.samplers import SAMPLERS, time_grid
from ..diffusion.schedules import VPCosine
from ..diffusion.sde import SDE
from ..diffusion.spaces import Euclidean
from ..nn.unet import UNet, UNetConfig
from ..seeding import derive_seed
from ..train import load_checkpoint
from .data import to_unit

__all__ = ["KIND", "ImageDiffusionConfig", "ImageModel", "clip_denoised", "default_model_path", "default_unet_config",
           "sample_images", "save_grid"]

KIND = "image_unet"


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


# ============================================================================ sampling
def _generators(seed: int, start: int, n: int) -> list[torch.Generator]:
    """One generator per image, seeded from ``(seed, i)``: image ``i`` does not depend on the batch."""
    return [torch.Generator().manual_seed(derive_seed(seed, i)) for i in range(start, start + n)]


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
