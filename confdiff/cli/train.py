"""``confdiff train``: fit the conformer score model on built ensembles (CPU, CUDA, or ``torchrun``).

The training itself is :func:`confdiff.conformers.training.train_conformer_model`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..conformers.diffusion import ConformerDiffusionConfig
from ..conformers.training import export_release, train_conformer_model
from ..nn.score_model import MODEL_SIZES, ScoreModelConfig
from ..train import CHECKPOINT_NAME, TrainConfig

__all__ = ["add_arguments", "run"]

# ScoreModelConfig fields set from the data, not from the command line
_DATA_FIELDS = ("node_feature_dim", "edge_feature_dim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="a dataset built by `confdiff dataset build` (repeatable)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints and train.log go here")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--steps", type=int, default=20000, help="optimiser steps (default 20000)")
    parser.add_argument("--batch-size", type=int, default=32, help="molecules per step and process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay-start", type=int, default=None, metavar="STEP",
                        help="cosine decay of the learning rate from STEP to 5%% at --steps (default: constant)")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start from the weights and model configuration of this checkpoint (fine-tuning)")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="mixed precision on CUDA")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=1000, help="validation every N steps")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="molecules held out for validation")
    parser.add_argument("--eval-molecules", type=int, default=4,
                        help="validation molecules for the COV-R / MAT-R check (0 disables it)")
    parser.add_argument("--eval-steps", type=int, default=10, help="reverse-diffusion steps of that check")
    parser.add_argument("--max-atoms", type=int, default=None, help="skip molecules with more atoms")
    parser.add_argument("--cache-dir", default=None, help="featurised-dataset cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", metavar="PATH", help="also write the release file (EMA weights) here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--size", choices=list(MODEL_SIZES), default=None,
                        help="a named architecture (default: small, the shipped one); the score model "
                             "options below override its fields")
    for f in dataclasses.fields(ScoreModelConfig):
        if f.name in _DATA_FIELDS:
            continue
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=None, help=f"score model {f.name} (default {f.default})",
                            **kind)
    for f in dataclasses.fields(ConformerDiffusionConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            help=f"diffusion {f.name} (default {f.default:g})")


def run(args: argparse.Namespace) -> int:
    overrides = {**MODEL_SIZES.get(args.size, {}),
                 **{f.name: getattr(args, f.name) for f in dataclasses.fields(ScoreModelConfig)
                    if f.name not in _DATA_FIELDS and getattr(args, f.name) is not None}}
    diffusion_config = ConformerDiffusionConfig(**{
        f.name: getattr(args, f.name) for f in dataclasses.fields(ConformerDiffusionConfig)
        if getattr(args, f.name) is not None})
    train_config = TrainConfig(lr=args.lr, lr_decay_start=args.lr_decay_start, batch_size=args.batch_size,
                               max_steps=args.steps, ema_decay=args.ema_decay, amp=args.amp, device=args.device,
                               checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                               num_workers=args.num_workers, seed=args.seed)
    train_conformer_model(args.data, args.out, model_overrides=overrides, diffusion_config=diffusion_config,
                          train_config=train_config, init_from=args.init_from, resume=args.resume,
                          cache_dir=args.cache_dir, max_atoms=args.max_atoms,
                          val_fraction=args.val_fraction, eval_molecules=args.eval_molecules,
                          eval_steps=args.eval_steps, progress=not args.no_progress)
    if args.export and int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {export_release(Path(args.out) / CHECKPOINT_NAME, args.export)}")
    return 0
