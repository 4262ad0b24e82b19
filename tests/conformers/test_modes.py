"""The conformer diffusion's modes: one ``Mode`` object each, chosen once from the public names."""

import pytest
import torch

from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.conformers.modes import FULL, MODES, REFINE, TORSIONS, Mode
from confdiff.diffusion import Torus, ZeroCoM
from tests.conformers.test_diffusion import SMILES, conformer_batch


def test_names_are_the_public_api_and_resolve_once():
    assert MODES == ("refine", "torsions", "full")
    assert [Mode.of(name) for name in MODES] == [REFINE, TORSIONS, FULL]
    assert Mode.of(FULL) is FULL and str(FULL) == "full"
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        Mode.of("fast")
    with pytest.raises(ValueError, match="diffuses nothing"):
        Mode("none", torsions=False, coordinates=False)


@pytest.mark.parametrize("mode", [REFINE, TORSIONS, FULL], ids=str)
def test_the_sde_of_a_mode_has_the_parts_the_mode_names(mode):
    batch = conformer_batch(SMILES[:2])
    diffusion = ConformerDiffusion(ConformerDiffusionConfig(full_fraction=0.5))
    sde = diffusion.sde(batch, mode)
    assert sde.mode is mode and diffusion.sde(batch, mode.name).mode is mode
    kinds = [type(space) for space in sde.space.spaces]
    assert kinds == [Torus] * mode.torsions + [ZeroCoM] * mode.coordinates
    assert diffusion.check_mode(mode.name) is mode
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    sigma_tor, sigma_pos = diffusion.sigmas(t, mode)
    # the model sees the pairs it was trained on: both levels at t, torsions at their smallest in full
    assert bool((sigma_tor > 1.01 * diffusion.config.sigma_tor_min).all()) == mode.torsions
    assert bool((sigma_pos > 1.01 * diffusion.config.sigma_pos_min).all())
    if not mode.full:
        assert torch.equal(sigma_pos, diffusion.sigmas(t, REFINE)[1])
