"""Golden values of the shipped checkpoints (``confdiff/weights/*.pt``).

A random checkpoint of the right shape passes every other test; these pin what the shipped
weights produce. The values were recorded before the package was restructured (issue #16), with
``torch.set_num_threads(1)`` on CPU: a fixed seed's conformers from each mode's checkpoint, a
log-likelihood from each conformer checkpoint and the PF-ODE bits/dim of two test digits under the
shipped U-Net. A deliberate change of the weights or of the numerics must record them again
(``python scripts/record_golden_values.py``, into ``tests/shipped_weights_golden.json``) and say why
in the commit. The slow likelihood tests run with ``-m slow``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from confdiff.conformers.generator import ConformerGenerator
from confdiff.conformers.likelihood import likelihood
from confdiff.images import ImageModel, load_dataset, pf_ode_bits_per_dim

GOLDEN = json.loads((Path(__file__).with_name("shipped_weights_golden.json")).read_text())
POS_ATOL = 1e-4  # Angstrom: float32 noise across BLAS builds stays far below it


@pytest.mark.parametrize("mode", ["refine", "torsions", "full"])
def test_a_fixed_seed_gives_the_recorded_conformers(mode):
    # the model's own samples: no validity gate (it replaces failing draws), no physics guidance, no ranking
    generator = ConformerGenerator(None, device="cpu", mode=mode, validity_gate=False, guidance="none", oversample=1)
    mol = generator.generate(GOLDEN["smiles"], GOLDEN["n"], seed=GOLDEN["seed"])
    expected = GOLDEN[f"generate_{mode}"]
    assert [c.GetIntProp("conformer_index") for c in mol.GetConformers()] == expected["conformer_index"]
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    np.testing.assert_allclose(pos, np.array(expected["pos"]), rtol=0, atol=POS_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refine", "full"])
def test_the_log_likelihood_of_a_fixed_conformer_is_the_recorded_one(mode):
    mol = Chem.MolFromMolBlock(GOLDEN["likelihood_molblock"], removeHs=False)
    log_p = likelihood(mol, None, mode=mode, divergence="exact")
    np.testing.assert_allclose(log_p, GOLDEN[f"likelihood_{mode}"], rtol=0, atol=1e-3)


def test_the_shipped_unet_gives_the_recorded_bits_per_dim():
    levels = load_dataset("digits", "test").levels[: len(GOLDEN["digits_bpd"])]
    bpd = pf_ode_bits_per_dim(ImageModel.from_checkpoint(), levels, seed=0)
    np.testing.assert_allclose(bpd.numpy(), GOLDEN["digits_bpd"], rtol=0, atol=1e-4)
