"""Ring conformations against a reference ensemble: does a method put the flexible rings in the puckers
of the reference (session 14)?

In the torsions mode every conformer keeps the ring puckers of its ETKDG seed (MMFF94-minimised), so
the seeds decide which chairs, boats and envelopes an ensemble holds. For every reference molecule
with a non-aromatic ring of 5 or more atoms, each method makes 2K conformers (as ``confdiff benchmark``)
and a conformer's rings *match* a reference conformer when every endocyclic torsion of those rings is
within ``--tolerance`` degrees (default 30) of it. Reported per method, pooled over the molecules:

- ``refs``: the share of reference conformers whose ring conformation some generated conformer matches;
- ``generated``: the share of generated conformers whose ring conformation matches some reference.

    python scripts/bench_ring_conformers.py data/reference/drugs_gfn2.sdf.gz --method confdiff --method etkdg-mmff
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from confdiff.chem.torsions import flexible_rings
from confdiff.conformers import evaluation


def ring_torsions(mol: Chem.Mol) -> list[tuple[int, int, int, int]]:
    """The endocyclic torsions (atom quadruples) of every flexible ring (``chem.torsions.flexible_rings``),
    ring by ring."""
    return [(ring[i], ring[(i + 1) % len(ring)], ring[(i + 2) % len(ring)], ring[(i + 3) % len(ring)])
            for ring in flexible_rings(mol) for i in range(len(ring))]


def torsion_angles(mols: list[Chem.Mol], quads: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Degrees, shape (conformers, torsions), over every conformer of ``mols`` in order."""
    return np.array([[rdMolTransforms.GetDihedralDeg(conf, *q) for q in quads]
                     for mol in mols for conf in mol.GetConformers()]).reshape(-1, len(quads))


def ring_matches(reference: np.ndarray, generated: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Which references (R,) some generated conformer matches and which generated (G,) match some reference,
    from the ring torsions ``reference (R, T)`` and ``generated (G, T)`` in degrees: a match has every
    torsion within ``tolerance`` (periodic differences)."""
    diff = np.abs((reference[:, None, :] - generated[None, :, :] + 180.0) % 360.0 - 180.0).max(-1)
    return (diff <= tolerance).any(1), (diff <= tolerance).any(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference")
    parser.add_argument("--method", action="append", required=True, help="a `confdiff benchmark` method")
    parser.add_argument("--seed", type=int, default=evaluation.DEFAULT_SEED)
    parser.add_argument("--tolerance", type=float, default=30.0, help="degrees (30)")
    parser.add_argument("--jsonl", default=None, help="append one line per method")
    args = parser.parse_args()
    molecules = evaluation.group_by_molecule(evaluation.read_records(args.reference)[0])
    counts = {method: np.zeros(4, dtype=int) for method in args.method}
    used = 0
    for key, refs in molecules.items():
        quads = ring_torsions(refs[0])
        if not quads:
            continue
        used += 1
        reference = torsion_angles(list(refs), quads)
        template = Chem.Mol(refs[0])
        template.RemoveAllConformers()
        line = f"{key[:24]:24s} {len(refs):4d} references"
        for method in args.method:
            generated = evaluation.generate_method(method, Chem.Mol(template), 2 * len(refs), args.seed)
            refs_ok, gen_ok = ring_matches(reference, torsion_angles([generated], quads), args.tolerance)
            counts[method] += [refs_ok.sum(), len(refs_ok), gen_ok.sum(), len(gen_ok)]
            line += f" | {method}: refs {refs_ok.mean():.2f} generated {gen_ok.mean():.2f}"
        print(line, flush=True)
    for method, (refs_ok, refs_all, gen_ok, gen_all) in counts.items():
        result = {"method": method, "reference": args.reference, "seed": args.seed, "tolerance": args.tolerance,
                  "molecules": used, "refs": refs_ok / refs_all, "generated": gen_ok / gen_all}
        print(f"{method}: {used} molecules with flexible rings; reference ring conformations reproduced "
              f"{result['refs']:.3f}, generated with a reference ring conformation {result['generated']:.3f}")
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
