"""The one seed derivation of the package: ``derive_seed(seed, *keys)``.

A random stream that must not depend on the batch, the number of workers or the order of the work
(conformer ``i`` of a molecule, image ``i`` of a sampling run, training step ``s`` on rank ``r``,
the molecule at input index ``k`` of a dataset build) is seeded from the run's seed and its own
indices, hashed by NumPy's ``SeedSequence`` (O'Neill's seed_seq mixing). Unlike ``seed * A + i``,
distinct ``(seed, keys)`` do not collide (``seed = A`` at ``i = 0`` is not ``seed = 0`` at ``i = 1``)
and neighbouring seeds give unrelated streams.

Keys of one purpose always have the same length: ``SeedSequence`` pads its entropy with zeros, so
``(seed,)`` and ``(seed, 0)`` give the same value.

Imports NumPy only, so ``chem`` (no torch) and the torch side can both use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from the non-negative integers ``(seed, *keys)``.

    The first 64-bit word of ``SeedSequence([seed, *keys])`` shifted right by one, so that it fits
    ``torch.Generator.manual_seed`` and ``torch.manual_seed``; take it modulo ``2**31 - 1`` for RDKit.
    """
    for name, value in (("seed", seed), *((f"key {k}", v) for k, v in enumerate(keys))):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> 1)
