"""Scatter reductions over dim 0: torch-scatter when it is installed, pure torch otherwise."""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["scatter_sum", "scatter_mean", "torch_scatter_available", "pure_torch_scatter"]

_disabled = False


@functools.cache
def _torch_scatter() -> ModuleType | None:
    """The ``torch_scatter`` module, or None when it is not installed or does not load (ABI mismatch)."""
    try:
        import torch_scatter
    except (ImportError, OSError):
        return None
    return torch_scatter


def torch_scatter_available() -> bool:
    """True when the optional ``torch_scatter`` package loads and is not disabled."""
    return not _disabled and _torch_scatter() is not None


@contextlib.contextmanager
def pure_torch_scatter() -> Iterator[None]:
    """Within this context, use the pure-torch fallback even if torch-scatter is installed."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src (E, ...)`` into ``dim_size`` rows by ``index (E,)``; shape ``(dim_size, ...)``."""
    if torch_scatter_available():
        return _torch_scatter().scatter_sum(src, index, dim=0, dim_size=dim_size)
    return src.new_zeros((dim_size, *src.shape[1:])).index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Mean of the rows of ``src (E, ...)`` per ``index (E,)``; empty rows give 0. Shape ``(dim_size, ...)``."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp_(min=1).to(src.dtype)
    return total / count.reshape(-1, *[1] * (src.dim() - 1))
