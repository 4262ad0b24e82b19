"""``confdiff.seeding.derive_seed``: the one seed derivation."""

import numpy as np
import pytest
import torch

from confdiff.seeding import derive_seed


def test_derive_seed_is_the_seed_sequence_hash_and_fits_torch():
    for seed, keys in ((0, ()), (5, (3,)), (2**40, (7, 1)), (1, (0, 0, 2))):
        word = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
        value = derive_seed(seed, *keys)
        assert value == int(word) >> 1 and 0 <= value < 2**63
        torch.Generator().manual_seed(value)


def test_the_conformer_generators_already_use_it():
    """Conformer i's generator is seeded with derive_seed(seed, i): switching the conformer
    code to the helper changes no golden value (tests/test_shipped_weights.py)."""
    from confdiff.conformers.generator import conformer_generators

    for gen, i in zip(conformer_generators(11, [0, 1, 7]), [0, 1, 7]):
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(derive_seed(11, i)).get_state())


def test_no_collisions_of_a_linear_scheme():
    # seed * A + i collides (A, 0) with (0, A); the hash gives 10 000 distinct values here
    values = {derive_seed(seed, i) for seed in range(100) for i in range(100)}
    assert len(values) == 100 * 100
    assert derive_seed(7919, 0) != derive_seed(0, 1)


@pytest.mark.parametrize("args", [(-1,), (0, -2), (1.5,), (0, 0.5)])
def test_negative_or_fractional_seeds_are_rejected(args):
    with pytest.raises(ValueError, match="non-negative integer"):
        derive_seed(*args)
