"""``confdiff train``: fit the conformer score model on built ensembles (CPU, CUDA, or ``torchrun``).

Each step draws one conformer of every molecule in the batch (uniformly from its ensemble, so
every low-energy minimum counts, as coverage does) and minimises
:meth:`ConformerDiffusion.loss`. Validation runs the loss on held-out molecules and, every
``--eval-every`` steps, a small COV-R / MAT-R check that generates conformers for a few of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch
from torch_geometric.data import Batch

from .chem.data import ConformerDataset
from .chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
from .conformer_diffusion import ConformerDiffusion, ConformerDiffusionConfig
from .nn.score_model import ScoreModel, ScoreModelConfig
from .train import CHECKPOINT_NAME, TrainConfig, Trainer, load_checkpoint

__all__ = ["ConformerTrainingData", "collate_conformers", "export_release", "train_conformer_model",
           "add_arguments", "run"]

KIND = "conformer_score_model"


class ConformerTrainingData(torch.utils.data.Dataset):
    """Per molecule ``(MolGraph, pos_ensemble (K, N, 3))`` from a :class:`ConformerDataset`."""

    def __init__(self, dataset: ConformerDataset, max_atoms: int | None = None):
        self.items = [it for it in dataset.items if max_atoms is None or it["graph"].num_nodes <= max_atoms]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        return item["graph"], item["pos"]


def collate_conformers(samples) -> Batch:
    """One uniformly drawn conformer per molecule, centred, as ``pos`` of a PyG ``Batch``."""
    graphs = []
    for graph, ensemble in samples:
        g = graph.clone()
        pos = ensemble[int(torch.randint(ensemble.shape[0], ()))]
        g.pos = pos - pos.mean(0)
        graphs.append(g)
    return Batch.from_data_list(graphs)


def train_conformer_model(
    data_dirs: list[str],
    out_dir: str | os.PathLike,
    *,
    model_config: ScoreModelConfig | None = None,
    diffusion_config: ConformerDiffusionConfig = ConformerDiffusionConfig(),
    train_config: TrainConfig = TrainConfig(),
    resume: bool = False,
    cache_dir: str | None = None,
    max_atoms: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) a conformer score model; returns the trainer's final metrics."""
    model_config = model_config or ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM,
                                                    edge_feature_dim=BOND_FEATURE_DIM)
    ckpt = Path(out_dir) / CHECKPOINT_NAME
    if resume and ckpt.exists():  # the saved configuration wins over the command line
        saved = load_checkpoint(ckpt)["model_config"]
        model_config = ScoreModelConfig.from_dict(saved["model"])
        diffusion_config = ConformerDiffusionConfig(**saved["diffusion"])
    diffusion = ConformerDiffusion(diffusion_config)
    train = ConformerTrainingData(ConformerDataset(data_dirs, cache_dir=cache_dir, split="train"), max_atoms)
    val = ConformerTrainingData(ConformerDataset(data_dirs, cache_dir=cache_dir, split="val"), max_atoms)
    trainer = Trainer(
        ScoreModel(model_config),
        lambda model, batch, generator: diffusion.loss(model, batch, generator),
        train,
        config=train_config,
        out_dir=out_dir,
        model_config={"model": model_config.to_dict(), "diffusion": diffusion_config.to_dict()},
        kind=KIND,
        collate_fn=collate_conformers,
        val_dataset=val if len(val) else None,
        resume=resume,
        progress=progress,
    )
    return trainer.fit()


def export_release(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the slim release file (configs + EMA weights) that ``confdiff.load_model`` reads."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != KIND:
        raise ValueError(f"{checkpoint} holds {ckpt.get('kind')!r}, not a conformer score model")
    release = {"kind": KIND, "model_config": ckpt["model_config"], "ema": ckpt["ema"],
               "step": ckpt["step"], "train_config": ckpt["train_config"]}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(release, tmp)
    os.replace(tmp, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="a dataset built by `confdiff dataset build` (repeatable)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints and train.log go here")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--steps", type=int, default=20000, help="optimiser steps (default 20000)")
    parser.add_argument("--batch-size", type=int, default=32, help="molecules per step and process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="mixed precision on CUDA")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=1000, help="validation every N steps")
    parser.add_argument("--max-atoms", type=int, default=None, help="skip molecules with more atoms")
    parser.add_argument("--cache-dir", default=None, help="featurised-dataset cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", metavar="PATH", help="also write the release file (EMA weights) here")
    parser.add_argument("--no-progress", action="store_true")
    fields = {f.name: f for f in dataclasses.fields(ScoreModelConfig)}
    for name in ("num_layers", "ns", "nv", "radius", "max_neighbors"):
        if name in fields:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(fields[name].default), default=None,
                                help=f"score model {name} (default {fields[name].default})")


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("num_layers", "ns", "nv", "radius", "max_neighbors")
                 if getattr(args, k, None) is not None}
    model_config = ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM,
                                    **overrides)
    train_config = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.steps,
                               ema_decay=args.ema_decay, amp=args.amp, device=args.device,
                               checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                               num_workers=args.num_workers, seed=args.seed)
    train_conformer_model(args.data, args.out, model_config=model_config, train_config=train_config,
                          resume=args.resume, cache_dir=args.cache_dir, max_atoms=args.max_atoms,
                          progress=not args.no_progress)
    if args.export and int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {export_release(Path(args.out) / CHECKPOINT_NAME, args.export)}")
    return 0
