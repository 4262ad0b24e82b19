"""Image datasets: digits and MNIST-format IDX files, quantised pixels and their dequantisation.

Data. A pixel with integer level ``k`` in ``{0, ..., L-1}`` (``L = 17`` for scikit-learn's 8x8
digits, 256 for MNIST-format IDX files) lives in the bin ``[e_k, e_{k+1})`` of ``[-1, 1]`` with
edges ``e_k = 2 k / L - 1``. Training uses *uniform dequantisation* (Theis et al. 2016; Ho et al.
2019): ``y = 2 (k + u) / L - 1`` with ``u ~ U[0, 1)``, so ``y`` covers ``[-1, 1)`` and
``floor((y + 1) L / 2) = k``.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DIGITS_LEVELS", "DIGITS_SPLIT", "ImageDataset", "bin_centres", "dequantize", "load_dataset", "read_idx",
           "to_levels", "to_unit"]

DIGITS_LEVELS = 17  # sklearn digits: integers 0..16
DIGITS_SPLIT = (1500, 297)  # fixed seeded train / test split of the 1797 digits
_SPLIT_SEED = 0


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
