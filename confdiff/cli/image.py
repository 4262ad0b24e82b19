"""``confdiff image train | sample | nll | export``: the command line of the image pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..images import (
    ImageDiffusionConfig,
    ImageModel,
    default_unet_config,
    export_model,
    load_dataset,
    pf_ode_bits_per_dim,
    sample_images,
    save_grid,
    train_image_model,
    variational_bound_bits_per_dim,
)
from ..train import TrainConfig

__all__ = ["add_arguments", "run"]


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
