"""COV-R / MAT-R of one checkpoint on the GEOM-DRUGS micro set for a sampling setting.

    python scripts/compare_sampling_modes.py CKPT full|torsion|stepsK [--seed 1]

``full``: torsions and coordinates diffuse (the default); ``torsion``: ``refine_coordinates=False``;
``stepsK``: the default mode with K steps. 2K conformers per molecule of K references, 0.75 A,
mean over mol_id 1-9 (the molecules of shared/data/README.md's table).
"""

import argparse
import gzip
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from confdiff.chem.metrics import coverage_matching, rmsd_matrix
from confdiff.conformers import ConformerGenerator, load_model

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "geom_drugs_micro" / "reference_crest.sdf.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("mode")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    refs = defaultdict(list)
    for mol in Chem.ForwardSDMolSupplier(gzip.open(REFERENCE), removeHs=False):
        if mol is not None:
            refs[int(mol.GetProp("mol_id"))].append(mol)
    options = {}
    if args.mode == "torsion":
        options["refine_coordinates"] = False
    elif args.mode.startswith("steps"):
        options["steps"] = int(args.mode[len("steps"):])
    elif args.mode != "full":
        parser.error(f"unknown mode {args.mode!r}")
    generator = ConformerGenerator(load_model(args.checkpoint), **options)
    covs, mats, count, start = [], [], 0, time.process_time()
    for mol_id in range(1, 10):
        ref = refs[mol_id]
        generated = generator.generate(Chem.Mol(ref[0]), 2 * len(ref), seed=args.seed)
        count += generated.GetNumConformers()
        result = coverage_matching(rmsd_matrix(ref, generated), 0.75)
        covs.append(result["cov_r"])
        mats.append(result["mat_r"])
    print(f"{args.mode}: COV-R {np.mean(covs):.3f} MAT-R {np.nanmean(mats):.3f} "
          f"CPU {time.process_time() - start:.1f} s for {count} conformers")


if __name__ == "__main__":
    main()
