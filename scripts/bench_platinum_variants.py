"""Bioactive recovery of sampler variants on the first N Platinum dev ligands, paired with the default.

    for V in default polish75 frac90 polish90_eps4r; do
        python scripts/bench_platinum_variants.py 100 $V >> out.jsonl
    done

The same ligands, seed (0xf00d) and 50 conformers per ligand as ``confdiff benchmark --bioactive``,
one thread, the shipped model. A variant is a set of ``ConformerGenerator`` options; the ``_eps4r``
variants guide, polish and rank with ``guidance="mmff-screened"`` (MMFF94 with a distance-dependent
dielectric 4 r; the seeds are minimised in vacuum as usual): a screened potential damps the vacuum
collapse of polar groups that pulls conformers away from crystal poses. Prints one JSON line per
variant: the share of ligands within 0.5 / 1 / 2 A, the median smallest RMSD, the CPU seconds and
each ligand's smallest RMSD.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from rdkit import Chem

from confdiff.chem.metrics import rmsd_matrix
from confdiff.conformers import evaluation
from confdiff.conformers.generator import ConformerGenerator

PLATINUM = "../shared/data/platinum/platinum_diverse_dev.sdf.gz"
VARIANTS = {
    "default": {},
    "polish75": {"polish_steps": 30},
    "frac90": {"diverse_fraction": 0.9},
    "polish90": {"polish_steps": 30, "diverse_fraction": 0.9},
    "both": {"polish_steps": 30, "keep_unpolished": True},
    "eps4r": {"guidance": "mmff-screened"},
    "polish75_eps4r": {"guidance": "mmff-screened", "polish_steps": 30},
    "polish90_eps4r": {"guidance": "mmff-screened", "polish_steps": 30, "diverse_fraction": 0.9},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("num_ligands", type=int)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--source", default=PLATINUM)
    args = parser.parse_args()
    torch.set_num_threads(1)
    records, _ = evaluation.read_records(args.source)
    molecules, _, _ = evaluation.select_molecules(records, {}, bioactive=True)
    molecules = dict(list(molecules.items())[: args.num_ligands])
    jobs = evaluation.make_jobs(molecules, ["confdiff"], {}, lambda k: 50, 0xF00D)
    generator = ConformerGenerator(**VARIANTS[args.variant])
    best = []
    start = time.process_time()
    for job in jobs:
        try:
            out = generator.generate(Chem.Mol(job.template), job.num_confs, seed=job.seed)
            best.append(float(np.nanmin(rmsd_matrix(list(job.reference), out))))
        except Exception:  # noqa: BLE001 -- a ligand without conformers counts as not recovered
            best.append(float("inf"))
    best = np.array(best)
    print(json.dumps({"variant": args.variant, "n": args.num_ligands,
                      **{f"within_{t}".replace(".", "_"): float(np.mean(best <= t)) for t in (0.5, 1.0, 2.0)},
                      "median": float(np.median(best)), "cpu_s": time.process_time() - start,
                      "best": best.round(4).tolist()}), flush=True)


if __name__ == "__main__":
    main()
