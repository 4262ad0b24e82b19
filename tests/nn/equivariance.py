"""``assert_equivariant`` for functions of a conformer batch (in the manner of ``e3nn.util.test``).

The function maps a PyG batch with ``pos (N, 3)`` to ``(torsion (T,), vectors (N, 3))``: parity-odd
scalars (0o) and 1o vectors. Under ``pos -> pos Q^T + t`` with ``Q`` orthogonal they must become
``(det(Q) torsion, vectors Q^T)``: invariant under rotations and translations, the torsion scalars
flipping sign under reflections.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["random_orthogonal", "transform_batch", "equivariance_errors", "assert_equivariant"]

GraphFn = Callable[[object], tuple[Tensor, Tensor]]


def random_orthogonal(generator: torch.Generator, dtype: torch.dtype, improper: bool = False) -> Tensor:
    """A Haar-random rotation (QR of a Gaussian matrix), times -1 when ``improper``; shape (3, 3)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    q = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    return (-q if improper else q).to(dtype)


def transform_batch(batch, rotation: Tensor, translation: Tensor):
    """A copy of ``batch`` with ``pos -> pos rotation^T + translation``; ``batch`` is not touched."""
    out = batch.clone()
    out.pos = batch.pos @ rotation.t() + translation
    return out


def equivariance_errors(fn: GraphFn, batch, rotation: Tensor, translation: Tensor) -> tuple[float, float]:
    """Largest absolute errors ``(torsion, vectors)`` of ``fn`` against the transformed input."""
    torsion, vectors = fn(batch)
    torsion_t, vectors_t = fn(transform_batch(batch, rotation, translation))
    det = torch.linalg.det(rotation.double()).round().to(torsion.dtype)
    torsion_error = (torsion_t - det * torsion).abs().max().item() if torsion.numel() else 0.0
    vector_error = (vectors_t - vectors @ rotation.t()).abs().max().item()
    return torsion_error, vector_error


def assert_equivariant(
    fn: GraphFn, batch, *, atol: float, trials: int = 3, parity: bool = True, seed: int = 0
) -> dict[str, float]:
    """Check ``fn`` under ``trials`` random rotations + translations (and rotation-reflections when
    ``parity``); raise ``AssertionError`` naming the worst case if any error exceeds ``atol``.

    Returns the largest errors, keyed ``"torsion"`` / ``"vectors"`` for proper rotations and
    ``"torsion, improper"`` / ``"vectors, improper"`` for reflections.
    """
    generator = torch.Generator().manual_seed(seed)
    dtype = batch.pos.dtype
    errors: dict[str, float] = {}
    for _ in range(trials):
        for improper in (False, True) if parity else (False,):
            rotation = random_orthogonal(generator, dtype, improper).to(batch.pos.device)
            translation = (10 * torch.randn(3, generator=generator, dtype=torch.float64)).to(batch.pos)
            suffix = ", improper" if improper else ""
            for key, value in zip(("torsion", "vectors"), equivariance_errors(fn, batch, rotation, translation)):
                errors[key + suffix] = max(errors.get(key + suffix, 0.0), value)
    worst = max(errors, key=errors.get)
    if errors[worst] > atol:
        raise AssertionError(f"not equivariant: {worst} error {errors[worst]:.3g} > atol {atol:.3g} ({errors})")
    return errors
