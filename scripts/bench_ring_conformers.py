"""Ring conformations against a reference ensemble: does a method put the flexible rings in the puckers
of the reference (session 14)?

In the torsions mode every conformer keeps the ring puckers of its ETKDG seed (MMFF94-minimised), so
the seeds decide which chairs, boats and envelopes an ensemble holds. For every reference molecule
with a non-aromatic ring of 5 or more atoms, each method makes 2K conformers (as ``confdiff benchmark``)
and a conformer's rings *match* a reference conformer when every endocyclic torsion of those rings is
within ``--tolerance`` degrees (default 30) of it. Reported per method, pooled over the molecules:

- ``refs``: the share of reference conformers whose ring conformation some generated conformer matches;
- ``generated``: the share of generated conformers whose ring conformation matches some reference.

``--embedder NAME`` adds a seed embedding as a method: 2K embeddings of an RDKit distance-geometry
variant (``EMBEDDERS``), each minimised with MMFF94 as the generator minimises its seeds (session 15).

    python scripts/bench_ring_conformers.py data/reference/drugs_gfn2.sdf.gz --method confdiff --method etkdg-mmff
    python scripts/bench_ring_conformers.py data/reference/drugs_gfn2.sdf.gz --embedder etkdgv3 --embedder srETKDGv3
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers, rdMolTransforms

from confdiff.chem.torsions import flexible_rings
from confdiff.conformers import evaluation
from confdiff.conformers.generator import SEED_MMFF_ITERS

#: name -> RDKit embedding parameters (ETKDGv3 with its macrocycle terms and small-ring torsions is
#: the generator's ``small_ring_torsions=True``; srETKDGv3 turns the macrocycle terms off)
EMBEDDERS = {
    "etkdgv3": rdDistGeom.ETKDGv3,
    "etkdgv3-small-rings": lambda: _with(rdDistGeom.ETKDGv3(), useSmallRingTorsions=True),
    "srETKDGv3": rdDistGeom.srETKDGv3,
    "etkdgv3-random-coords": lambda: _with(rdDistGeom.ETKDGv3(), useRandomCoords=True),
    "etkdgv2": rdDistGeom.ETKDGv2,
    "kdg": rdDistGeom.KDG,
}


def _with(params: rdDistGeom.EmbedParameters, **values) -> rdDistGeom.EmbedParameters:
    for key, value in values.items():
        setattr(params, key, value)
    return params


def embed_and_minimise(embedder: str, template: Chem.Mol, n: int, seed: int) -> Chem.Mol:
    """``n`` embeddings of ``template`` (hydrogens explicit) by ``EMBEDDERS[embedder]``, MMFF94-minimised."""
    params = EMBEDDERS[embedder]()
    params.randomSeed = seed % (2**31 - 1) + 1
    mol = Chem.Mol(template)
    rdDistGeom.EmbedMultipleConfs(mol, n, params)
    rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=SEED_MMFF_ITERS)
    return mol


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
    parser.add_argument("--method", action="append", default=[], help="a `confdiff benchmark` method")
    parser.add_argument("--embedder", action="append", default=[], choices=sorted(EMBEDDERS),
                        help="a seed embedding, MMFF94-minimised (reported as embedder:NAME)")
    parser.add_argument("--seed", type=int, default=evaluation.DEFAULT_SEED)
    parser.add_argument("--tolerance", type=float, default=30.0, help="degrees (30)")
    parser.add_argument("--jsonl", default=None, help="append one line per method")
    args = parser.parse_args()
    if not args.method and not args.embedder:
        parser.error("give at least one --method or --embedder")
    makers = {method: (lambda template, n, method=method: evaluation.generate_method(method, template, n, args.seed))
              for method in args.method}
    makers.update({f"embedder:{name}": (lambda template, n, name=name: embed_and_minimise(name, template, n, args.seed))
                   for name in args.embedder})
    molecules = evaluation.group_by_molecule(evaluation.read_records(args.reference)[0])
    counts = {method: np.zeros(4, dtype=int) for method in makers}
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
        for method, make in makers.items():
            generated = make(Chem.Mol(template), 2 * len(refs))
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
