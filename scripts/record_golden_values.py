"""Record the golden values of the shipped checkpoints (``tests/shipped_weights_golden.json``).

    OMP_NUM_THREADS=1 python scripts/record_golden_values.py            # every key
    OMP_NUM_THREADS=1 python scripts/record_golden_values.py --only refine torsions

Computes exactly what ``tests/test_shipped_weights.py`` checks, with the molecule, ``n`` and seed
already in the file: a fixed seed's conformers per mode (no gate, no guidance, no ranking), the exact
log-likelihood of the recorded conformer in the refine and full modes, and the U-Net's bits/dim of
two test digits. ``--only`` rewrites the keys of the named parts (``refine``, ``torsions``, ``full``,
``digits``) and keeps the rest. Run it after a deliberate change of the weights or the numerics and
say why in the commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from confdiff.conformers.generator import ConformerGenerator
from confdiff.conformers.likelihood import likelihood
from confdiff.images import ImageModel, load_dataset, pf_ode_bits_per_dim

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "shipped_weights_golden.json"
PARTS = ("refine", "torsions", "full", "digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    golden = json.loads(GOLDEN.read_text())
    for part in args.only:
        if part == "digits":
            levels = load_dataset("digits", "test").levels[: len(golden["digits_bpd"])]
            golden["digits_bpd"] = pf_ode_bits_per_dim(ImageModel.from_checkpoint(), levels, seed=0).tolist()
            continue
        generator = ConformerGenerator(None, device="cpu", mode=part, validity_gate=False, guidance="none",
                                       oversample=1)
        mol = generator.generate(golden["smiles"], golden["n"], seed=golden["seed"])
        golden[f"generate_{part}"] = {
            "conformer_index": [c.GetIntProp("conformer_index") for c in mol.GetConformers()],
            "pos": np.round(np.stack([c.GetPositions() for c in mol.GetConformers()]), 5).tolist(),
        }
        if part in ("refine", "full"):
            scored = Chem.MolFromMolBlock(golden["likelihood_molblock"], removeHs=False)
            golden[f"likelihood_{part}"] = likelihood(scored, None, mode=part, divergence="exact")
    GOLDEN.write_text(json.dumps(golden, indent=1))
    print(f"wrote {', '.join(args.only)} to {GOLDEN}")


if __name__ == "__main__":
    main()
