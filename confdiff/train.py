"""One trainer for both domains: device, AMP, EMA, atomic checkpoints, resume, DDP, logs.

The trainer knows nothing about diffusion. It minimises the mean of ``loss_fn(model, batch,
generator) -> Tensor (B,)`` (unreduced per-sample losses, EDM style) with Adam, keeps an
exponential moving average (EMA) of the weights, and writes ``checkpoint.pt`` and ``train.log``
(JSON lines) into ``out_dir``.

Reproducibility: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``
(``DistributedSampler``), and every step ``s`` reseeds the global RNG (dropout) and the
``generator`` passed to ``loss_fn`` (diffusion times and noise) from ``(seed, s, rank)``.
A checkpoint therefore only needs ``(step, epoch, batch_in_epoch)`` to continue a run exactly:
a run killed at any point and resumed from its last checkpoint ends with the same weights as an
uninterrupted run.

Distributed data parallel starts when the process was launched by ``torchrun`` (``WORLD_SIZE`` >
1 in the environment): backend ``nccl`` on CUDA, ``gloo`` on the CPU; only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .seeding import derive_seed

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "TrainConfig",
    "Trainer",
    "ema_decay_at",
    "ema_update",
    "load_checkpoint",
    "load_ema_weights",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train.log"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, saved in every checkpoint.

    ``max_steps > 0`` trains for that many optimiser steps (cycling through epochs);
    ``max_steps == 0`` trains for ``epochs`` epochs. ``eval_every == 0`` validates at the end of
    each epoch. ``grad_clip == 0`` disables clipping. ``amp`` applies on CUDA only.
    ``batch_size`` is per process under DDP.
    """

    lr: float = 2e-4
    batch_size: int = 64
    max_steps: int = 0
    epochs: int = 1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    warmup_steps: int = 0
    lr_decay_start: int | None = None
    lr_final_ratio: float = 0.05
    weight_decay: float = 0.0
    amp: str = "bf16"
    log_every: int = 50
    checkpoint_every: int = 500
    eval_every: int = 0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_steps == 0 and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 when max_steps is 0, got {self.epochs}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.amp not in _AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(_AMP_DTYPES)}, got {self.amp!r}")
        if self.lr_decay_start is not None and not 0 <= self.lr_decay_start < self.max_steps:
            raise ValueError(f"lr_decay_start must be in [0, max_steps), got {self.lr_decay_start}")
        if not 0 < self.lr_final_ratio <= 1:
            raise ValueError(f"lr_final_ratio must be in (0, 1], got {self.lr_final_ratio}")
        for name in ("warmup_steps", "eval_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device != "auto":
            torch.device(self.device)  # raises on a malformed device string


def ema_decay_at(decay: float, num_updates: int) -> float:
    """EMA decay after ``num_updates`` updates: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up (as in TensorFlow's ``ExponentialMovingAverage``) keeps the EMA from being
    dominated by the random initial weights in short runs.
    """
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for floating parameters; buffers copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a trainer checkpoint (a dict with ``model``, ``ema``, ``model_config``, ``kind``, ...)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def load_ema_weights(model: torch.nn.Module, checkpoint: dict | str | os.PathLike) -> torch.nn.Module:
    """Load a checkpoint's EMA weights (its ``model`` weights when it has no EMA) into ``model``."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    state = ckpt.get("ema") or ckpt["model"]
    model.load_state_dict(state)
    return model


def _step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed per (run seed, step, rank)."""
    return derive_seed(seed, step, rank)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, a PyG ``Batch`` (anything with ``.to``) or a tuple / list / dict of them."""
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


class _EpochSampler(Sampler):
    """The indices of a ``DistributedSampler`` epoch from position ``start`` on (resume mid-epoch).

    ``set_epoch`` before each pass: one sampler serves a loader whose worker processes persist
    across epochs (the indices are drawn in the main process when the pass starts).
    """

    def __init__(self, base: DistributedSampler):
        self.base, self.start = base, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(self.base)[self.start :])

    def __len__(self) -> int:
        return max(len(self.base) - self.start, 0)


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch, generator).mean()``.

    Parameters
    ----------
    model : the network (moved to the device; wrapped in DDP under ``torchrun``).
    loss_fn : ``(model, batch, generator) -> Tensor (B,)`` unreduced per-sample losses.
    train_dataset, val_dataset : map-style datasets; ``collate_fn`` builds batches
        (e.g. ``torch_geometric.data.Batch.from_data_list`` for graphs).
    config : :class:`TrainConfig`.
    out_dir : where ``checkpoint.pt`` and ``train.log`` go.
    eval_fn : optional ``(ema_model) -> dict`` of metrics, run with validation.
    model_config : the model's configuration (a plain dict), saved so the model can be rebuilt.
    kind : what the checkpoint holds (e.g. ``"image_unet"``, ``"conformer_score_model"``).
    resume : continue from ``out_dir/checkpoint.pt``; without it an existing checkpoint is an error.
    progress : show a tqdm progress bar (rank 0).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor],
        train_dataset: Dataset,
        *,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        model_config: dict,
        kind: str,
        collate_fn: Callable | None = None,
        val_dataset: Dataset | None = None,
        eval_fn: Callable[[torch.nn.Module], dict] | None = None,
        resume: bool = False,
        progress: bool = True,
    ):
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty")
        self.config = config
        self.loss_fn = loss_fn
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.collate_fn, self.eval_fn = collate_fn, eval_fn
        self.model_config, self.kind = dict(model_config), kind
        self.out_dir = Path(out_dir)
        self.progress = progress

        self._init_distributed()
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ddp_model = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.world_size > 1
            else self.model
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        amp_dtype = _AMP_DTYPES[config.amp] if self.device.type == "cuda" else None
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

        ckpt_path = self.out_dir / CHECKPOINT_NAME
        if resume and ckpt_path.exists():
            self._restore(load_checkpoint(ckpt_path, map_location=self.device))
        elif ckpt_path.exists() and not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass resume=True or choose another out_dir")

    # ------------------------------------------------------------------ setup
    def _init_distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = self.config.device == "auto" and torch.cuda.is_available()
        if want_cuda:
            self.device = torch.device("cuda", local_rank if self.world_size > 1 else 0)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu" if self.config.device == "auto" else self.config.device)
        self._owns_process_group = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _loader(self, dataset: Dataset, *, shuffle: bool) -> DataLoader:
        """This rank's batches; ``loader.sampler.set_epoch(epoch, start)`` picks the pass."""
        sampler = DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=self.config.seed
        )
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=_EpochSampler(sampler),
            collate_fn=self.collate_fn,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def _batches_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.train_dataset) / self.world_size)
        return math.ceil(per_rank / self.config.batch_size)

    def _total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return self.config.epochs * self._batches_per_epoch()

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Everything needed to continue the run (and to rebuild the model)."""
        return {
            "kind": self.kind,
            "model_config": self.model_config,
            "train_config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            # the data order is a function of (seed, epoch); the per-step RNGs of (seed, step, rank)
            "data_order": {"seed": self.config.seed, "world_size": self.world_size,
                           "batch_size": self.config.batch_size},
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint.pt`` atomically (temp file + rename); rank 0 only."""
        if not self.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CHECKPOINT_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def _restore(self, ckpt: dict) -> None:
        if ckpt["kind"] != self.kind:
            raise ValueError(f"checkpoint kind {ckpt['kind']!r} != trainer kind {self.kind!r}")
        if ckpt["model_config"] != self.model_config:
            raise ValueError(f"checkpoint model_config {ckpt['model_config']} != {self.model_config}")
        saved = ckpt["data_order"]
        now = {"seed": self.config.seed, "world_size": self.world_size, "batch_size": self.config.batch_size}
        if saved != now:
            raise ValueError(f"resuming with a different data order: checkpoint {saved}, now {now}")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]

    # ---------------------------------------------------------------- logging
    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _mean_across_ranks(self, total: float, count: int) -> float:
        if self.world_size > 1:
            t = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total, count = t.tolist()
        return total / max(count, 1)

    # ------------------------------------------------------------------- loop
    def _lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then (from ``lr_decay_start``) a cosine down to
        ``lr * lr_final_ratio`` at ``max_steps``."""
        cfg = self.config
        lr = cfg.lr if cfg.warmup_steps == 0 else cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        if cfg.lr_decay_start is not None and step >= cfg.lr_decay_start:
            progress = (step - cfg.lr_decay_start) / max(cfg.max_steps - cfg.lr_decay_start, 1)
            lr *= cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return lr

    def _train_step(self, batch: Any) -> torch.Tensor:
        cfg = self.config
        seed = _step_seed(cfg.seed, self.step, self.rank)
        torch.manual_seed(seed)  # dropout and any other global randomness of this step
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.loss_fn(self.ddp_model, batch, generator)
        if losses.ndim != 1:
            raise ValueError(f"loss_fn must return per-sample losses of shape (B,), got {tuple(losses.shape)}")
        loss = losses.float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.ema, self.model, ema_decay_at(cfg.ema_decay, self.step))
        self.step += 1
        return losses.detach()

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean validation loss of the EMA model (fixed noise seed) and ``eval_fn(ema)`` metrics."""
        metrics: dict = {}
        if self.val_dataset is not None and len(self.val_dataset) > 0:
            total, count = 0.0, 0
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 12345)
            fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(self.config.seed + 12345)
                for batch in self._loader(self.val_dataset, shuffle=False):
                    losses = self.loss_fn(self.ema, _to_device(batch, self.device), generator)
                    total += losses.float().sum().item()
                    count += losses.numel()
            metrics["val_loss"] = self._mean_across_ranks(total, count)
        if self.eval_fn is not None and self.is_main:
            metrics.update(self.eval_fn(self.ema))
        return metrics

    def fit(self) -> dict:
        """Train to ``max_steps`` (or ``epochs``); returns the last logged record."""
        cfg = self.config
        total_steps = self._total_steps()
        per_epoch = self._batches_per_epoch()
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=min(self.step, total_steps), desc="train", dynamic_ncols=True)
        self._log({"event": "start", "step": self.step, "epoch": self.epoch, "world_size": self.world_size,
                   "device": str(self.device), "train_config": dataclasses.asdict(cfg)})
        record: dict = {}
        run_total, run_count, t0 = 0.0, 0, time.time()
        finished = False
        loader = self._loader(self.train_dataset, shuffle=True)
        try:
            while self.step < total_steps:
                if self.batch_in_epoch >= per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                loader.sampler.set_epoch(self.epoch, self.batch_in_epoch * cfg.batch_size)
                for batch in loader:
                    losses = self._train_step(_to_device(batch, self.device))
                    self.batch_in_epoch += 1
                    run_total += losses.float().sum().item()
                    run_count += losses.numel()
                    end_of_epoch = self.batch_in_epoch >= per_epoch
                    done = self.step >= total_steps
                    if self.step % cfg.log_every == 0 or done:
                        record = {"step": self.step, "epoch": self.epoch,
                                  "loss": self._mean_across_ranks(run_total, run_count),
                                  "lr": self._lr_at(self.step - 1), "seconds": round(time.time() - t0, 3)}
                        self._log(record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.4g}")
                        run_total, run_count = 0.0, 0
                    if (cfg.eval_every and self.step % cfg.eval_every == 0) or (
                        not cfg.eval_every and end_of_epoch
                    ) or done:
                        metrics = self.validate()
                        if metrics:
                            record = {**record, **metrics, "step": self.step, "epoch": self.epoch}
                            self._log({"event": "eval", "step": self.step, "epoch": self.epoch, **metrics})
                    if self.step % cfg.checkpoint_every == 0 or done:
                        self.save_checkpoint()
                    if bar is not None:
                        bar.update(1)
                    if done:
                        break
            finished = True
        finally:
            if bar is not None:
                bar.close()
            if self._owns_process_group and dist.is_initialized():
                if finished:  # no rank leaves while another still validates or saves
                    dist.barrier()
                self.ddp_model = self.model  # the DDP wrapper's hooks must not outlive the group
                dist.destroy_process_group()
        self._log({"event": "end", "step": self.step, "epoch": self.epoch})
        return record
