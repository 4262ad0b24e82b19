"""State spaces for the diffusion core.

A state is one tensor; a :class:`Space` knows how its elements group into samples, so that
per-sample quantities (times ``t``, log-densities, losses) are 1-D tensors of shape ``(B,)`` and
broadcast through the space, never through image-shaped indexing in generic code.

* :class:`Euclidean` -- ``x (B, ...)``, dim 0 indexes samples (images, vectors).
* :class:`ZeroCoM` -- coordinates ``x (N, 3)`` of a batch of graphs with zero centre of mass each.
* :class:`Torus` -- angles, either ``(B, m)`` or ``(M,)`` with a ``batch (M,)`` vector.
* :class:`Product` -- a flat 1-D concatenation of parts in other spaces.

Per-graph reductions use ``index_add_`` (torch only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Union

import torch
from torch import Tensor

from .torus import wrap, wrapped_normal_log_prob

__all__ = ["Space", "Euclidean", "ZeroCoM", "Torus", "Product", "GeneratorLike"]

GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator]]

_LOG_2PI = math.log(2.0 * math.pi)


def _draw(kind: str, shape, generator, like: Tensor) -> Tensor:
    """``randn`` / ``rand`` of ``shape`` in ``like``'s dtype and device.

    A generator draws on its own device and the result is moved, so a CPU generator gives the
    same numbers whatever device the state lives on.
    """
    fn = torch.randn if kind == "normal" else torch.rand
    if generator is None:
        return fn(shape, dtype=like.dtype, device=like.device)
    return fn(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


class Space:
    """Base class. Without a ``batch`` vector dim 0 of ``x`` indexes samples; with one,
    ``batch[i]`` is the sample of row ``i`` of ``x`` (rows of one sample need not be contiguous).

    Subclasses override :meth:`project`, :meth:`difference`, :meth:`noise` (to project onto the
    tangent space) and the prior hooks :meth:`prior_sample` / :meth:`prior_log_prob`.
    """

    #: True for spaces where only ``alpha = 1`` (variance-exploding) schedules make sense.
    periodic: bool = False

    def __init__(self, batch: Tensor | None = None, num_samples: int | None = None):
        if batch is not None:
            if not isinstance(batch, Tensor) or batch.ndim != 1 or batch.is_floating_point():
                raise ValueError(f"batch must be a 1-D integer tensor, got {batch!r}")
            if num_samples is None:
                num_samples = int(batch.max()) + 1 if batch.numel() else 0
            if int(num_samples) != num_samples or num_samples < 0:
                raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
            if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= num_samples):
                raise ValueError(f"batch values must lie in [0, {num_samples}), got range "
                                 f"[{int(batch.min())}, {int(batch.max())}]")
            batch = batch.long()
            num_samples = int(num_samples)
        elif num_samples is not None:
            raise ValueError("num_samples is only meaningful together with batch")
        self.batch = batch
        self._num_samples = num_samples

    # --- sample layout -------------------------------------------------------------------
    def num_samples(self, x: Tensor) -> int:
        """Number of samples ``B`` in state ``x``."""
        return x.shape[0] if self.batch is None else self._num_samples

    def _batch(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.batch.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but batch has {self.batch.shape[0]}")
        return self.batch.to(x.device)

    def broadcast(self, v: Tensor, x: Tensor) -> Tensor:
        """Per-sample ``v (B,)`` reshaped / gathered so that it broadcasts against ``x``."""
        v = torch.as_tensor(v, device=x.device)
        if v.ndim == 0:
            return v
        if self.batch is None:
            return v.reshape(-1, *[1] * (x.ndim - 1))
        return v[self._batch(x)].reshape(-1, *[1] * (x.ndim - 1))

    def sum(self, x: Tensor) -> Tensor:
        """Per-sample sum of all elements, shape ``(B,)``."""
        if self.batch is None:
            return x.reshape(x.shape[0], math.prod(x.shape[1:])).sum(1)
        rows = x.reshape(x.shape[0], math.prod(x.shape[1:])).sum(1)
        out = torch.zeros(self._num_samples, dtype=x.dtype, device=x.device)
        return out.index_add_(0, self._batch(x), rows)

    def _counts(self, x: Tensor) -> Tensor:
        """Rows per sample, shape ``(B,)``, in ``x``'s dtype."""
        if self.batch is None:
            return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.bincount(self._batch(x), minlength=self._num_samples).to(x.dtype)

    def dim(self, x: Tensor) -> Tensor:
        """Degrees of freedom per sample, shape ``(B,)`` (floating, ``x``'s dtype)."""
        per_row = math.prod(x.shape[1:])
        return self._counts(x) * per_row

    # --- geometry ------------------------------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Map ``x`` onto the space."""
        return x

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        """``a - b`` in the tangent space."""
        return a - b

    def _sample(self, kind: str, x: Tensor, generator: GeneratorLike) -> Tensor:
        """Standard normal / uniform draws like ``x``; with a list of generators, sample ``i``
        uses only ``generator[i]`` so its draws do not depend on the rest of the batch."""
        if generator is None or isinstance(generator, torch.Generator):
            return _draw(kind, x.shape, generator, x)
        generators = list(generator)
        num = self.num_samples(x)
        if len(generators) != num:
            raise ValueError(f"got {len(generators)} generators for {num} samples")
        if self.batch is None:
            if num == 0:
                return torch.empty_like(x)
            return torch.stack([_draw(kind, x.shape[1:], g, x) for g in generators])
        batch = self._batch(x)
        counts = torch.bincount(batch, minlength=num).tolist()
        order = torch.argsort(batch, stable=True)  # rows grouped by sample, in row order
        draws = [_draw(kind, (n, *x.shape[1:]), g, x) for g, n in zip(generators, counts)]
        out = torch.empty_like(x)
        out[order] = torch.cat(draws) if draws else out[order]
        return out

    def noise(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        """Standard Gaussian noise like ``x`` in the tangent space.

        ``generator`` is ``None``, one ``torch.Generator``, or a list of ``B`` generators (one
        per sample: sample ``i``'s noise then does not depend on the batch).
        """
        return self._sample("normal", x, generator)

    # --- prior hooks used by the SDE ------------------------------------------------------
    def prior_sample(self, like: Tensor, std: float, generator: GeneratorLike = None) -> Tensor:
        """A sample of the isotropic Gaussian ``N(0, std^2 I)`` on the space, like ``like``."""
        return std * self.noise(like, generator)

    def prior_log_prob(self, x: Tensor, std: float) -> Tensor:
        """Log-density of ``N(0, std^2 I)`` on the space (``dim`` degrees of freedom), ``(B,)``."""
        return -0.5 * self.sum(x**2) / std**2 - 0.5 * self.dim(x) * (_LOG_2PI + 2.0 * math.log(std))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euclidean(Space):
    """``R^n`` per sample; ``x (B, ...)`` with dim 0 indexing samples."""

    def __init__(self):
        super().__init__()


class ZeroCoM(Space):
    """Coordinates ``x (N, 3)`` of ``num_graphs`` graphs, each with zero centre of mass.

    ``batch (N,)`` gives each row's graph. The space is the ``3 n_i - 3`` dimensional subspace
    of ``R^{3 n_i}`` with zero mean per graph; noise is projected onto it.
    """

    def __init__(self, batch: Tensor, num_graphs: int):
        if batch is None:
            raise ValueError("ZeroCoM needs a batch vector")
        super().__init__(batch, num_graphs)

    @property
    def num_graphs(self) -> int:
        return self._num_samples

    def mean(self, x: Tensor) -> Tensor:
        """Per-graph mean of the rows of ``x``, shape ``(G, *x.shape[1:])``."""
        batch = self._batch(x)
        total = torch.zeros((self._num_samples, *x.shape[1:]), dtype=x.dtype, device=x.device)
        total.index_add_(0, batch, x)
        counts = self._counts(x).clamp(min=1.0)
        return total / counts.reshape(-1, *[1] * (x.ndim - 1))

    def project(self, x: Tensor) -> Tensor:
        """Subtract each graph's mean."""
        return x - self.mean(x)[self._batch(x)]

    def noise(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        return self.project(super().noise(x, generator))

    def dim(self, x: Tensor) -> Tensor:
        """``(n_i - 1) * prod(x.shape[1:])`` per graph (``3 n_i - 3`` for coordinates)."""
        per_row = math.prod(x.shape[1:])
        return (self._counts(x) - 1.0).clamp(min=0.0) * per_row

    def __repr__(self) -> str:
        return f"ZeroCoM(num_graphs={self._num_samples})"


class Torus(Space):
    """Angles on ``T^m``, wrapped to ``[-pi, pi)``.

    ``x (B, m)`` (dim 0 indexes samples) when ``batch`` is None, else ``x (M,)`` with
    ``batch (M,)`` giving each angle's sample (pass ``num_samples`` so that samples without
    angles at the end of the batch are counted). Tangent vectors live in ``R^m``.

    The prior of a VE diffusion is a wrapped normal with the final std, taken as uniform when
    that std is at least ``uniform_prior_sigma`` (default pi, where the wrapped normal is within
    1.5% of uniform, as in torsional diffusion).
    """

    periodic = True

    def __init__(self, batch: Tensor | None = None, num_samples: int | None = None,
                 *, uniform_prior_sigma: float = math.pi):
        super().__init__(batch, num_samples)
        if not uniform_prior_sigma > 0:
            raise ValueError(f"uniform_prior_sigma must be > 0, got {uniform_prior_sigma!r}")
        self.uniform_prior_sigma = float(uniform_prior_sigma)

    def project(self, x: Tensor) -> Tensor:
        return wrap(x)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        return wrap(a - b)

    def prior_sample(self, like: Tensor, std: float, generator: GeneratorLike = None) -> Tensor:
        if std >= self.uniform_prior_sigma:
            return (self._sample("uniform", like, generator) * 2.0 - 1.0) * math.pi
        return wrap(std * self.noise(like, generator))

    def prior_log_prob(self, x: Tensor, std: float) -> Tensor:
        if std >= self.uniform_prior_sigma:
            return -self.dim(x) * _LOG_2PI
        return self.sum(wrapped_normal_log_prob(x, torch.full_like(x, std)))

    def __repr__(self) -> str:
        if self.batch is None:
            return "Torus()"
        return f"Torus(num_samples={self._num_samples})"


class Product(Space):
    """Product of spaces over a **flat** 1-D concatenation of the parts.

    ``shapes[k]`` is the shape of part ``k`` (in ``spaces[k]``); ``split(x)`` returns the parts,
    ``join(parts)`` flattens and concatenates them. All parts must hold the same number of samples.
    """

    def __init__(self, spaces: Sequence[Space], shapes: Sequence[Sequence[int]]):
        super().__init__()
        spaces = list(spaces)
        shapes = [torch.Size(s) for s in shapes]
        if not spaces:
            raise ValueError("Product needs at least one space")
        if len(spaces) != len(shapes):
            raise ValueError(f"got {len(spaces)} spaces but {len(shapes)} shapes")
        for s in spaces:
            if not isinstance(s, Space):
                raise ValueError(f"not a Space: {s!r}")
        self.spaces = spaces
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.numel = sum(self.sizes)
        self.periodic = any(s.periodic for s in spaces)

    def split(self, x: Tensor) -> list[Tensor]:
        """Parts of flat ``x (numel,)``, each reshaped to its shape (views)."""
        if x.ndim != 1 or x.shape[0] != self.numel:
            raise ValueError(f"expected a flat tensor of {self.numel} elements, got shape {tuple(x.shape)}")
        return [p.reshape(shape) for p, shape in zip(torch.split(x, self.sizes), self.shapes)]

    def join(self, parts: Sequence[Tensor]) -> Tensor:
        """Flatten and concatenate the parts."""
        if len(parts) != len(self.spaces):
            raise ValueError(f"expected {len(self.spaces)} parts, got {len(parts)}")
        for p, shape in zip(parts, self.shapes):
            if p.shape != shape:
                raise ValueError(f"part of shape {tuple(p.shape)} where {tuple(shape)} was expected")
        return torch.cat([p.reshape(-1) for p in parts])

    def _map(self, fn: Callable, *xs: Tensor) -> Tensor:
        split = [self.split(x) for x in xs]
        return self.join([fn(s, *ps) for s, *ps in zip(self.spaces, *split)])

    def num_samples(self, x: Tensor) -> int:
        return self.spaces[0].num_samples(self.split(x)[0])

    def broadcast(self, v: Tensor, x: Tensor) -> Tensor:
        """Per-element values of ``v (B,)``: a flat tensor like ``x``."""
        v = torch.as_tensor(v, device=x.device)
        if v.ndim == 0:
            return v
        return self._map(lambda s, p: s.broadcast(v, p).expand_as(p).to(p.dtype), x)

    def sum(self, x: Tensor) -> Tensor:
        return sum(s.sum(p) for s, p in zip(self.spaces, self.split(x)))

    def dim(self, x: Tensor) -> Tensor:
        return sum(s.dim(p) for s, p in zip(self.spaces, self.split(x)))

    def project(self, x: Tensor) -> Tensor:
        return self._map(lambda s, p: s.project(p), x)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        return self._map(lambda s, p, q: s.difference(p, q), a, b)

    def noise(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        # parts draw in order from the same generator(s): sample i still uses only generator[i]
        return self._map(lambda s, p: s.noise(p, generator), x)

    def prior_sample(self, like: Tensor, std, generator: GeneratorLike = None) -> Tensor:
        """``std`` is one float or one per part."""
        stds = list(std) if isinstance(std, Sequence) else [std] * len(self.spaces)
        it = iter(stds)
        return self._map(lambda s, p: s.prior_sample(p, next(it), generator), like)

    def prior_log_prob(self, x: Tensor, std) -> Tensor:
        stds = list(std) if isinstance(std, Sequence) else [std] * len(self.spaces)
        return sum(s.prior_log_prob(p, sd) for s, p, sd in zip(self.spaces, self.split(x), stds))

    def __repr__(self) -> str:
        return f"Product({self.spaces!r}, shapes={[tuple(s) for s in self.shapes]})"
