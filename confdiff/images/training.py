"""Training an image model: the per-image denoising score-matching loss, the training run, the export."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ..diffusion.losses import denoising_score_matching_loss
from ..nn.unet import UNet, UNetConfig
from ..train import TrainConfig, Trainer, load_checkpoint
from .data import dequantize, load_dataset
from .model import KIND, ImageDiffusionConfig, ImageModel, _eps_model, default_unet_config

__all__ = ["export_model", "image_loss", "train_image_model"]


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
