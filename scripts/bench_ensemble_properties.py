"""Ensemble properties of generated conformers against a GFN2-xTB reference set (the GEOM energy protocol).

For each reference molecule (records grouped by ``mol_id``, K conformers with ``energy``, ``dipole``
and ``homo_lumo_gap``), every method generates 2K conformers; each is optimised with GFN2-xTB and
gets a GFN2 single point; Boltzmann-averaged energy, dipole and HOMO-LUMO gap and the lowest energy
of the generated ensemble are compared with the reference's, and the median absolute errors over
molecules are reported (torsional diffusion, Jing et al. 2022, Table 3; energies in kcal/mol,
dipoles in Debye). Needs ``xtb``. One molecule per worker process, one thread each::

    python scripts/bench_ensemble_properties.py data/reference/qm9_gfn2.sdf.gz \
        --method etkdg --method confdiff --json docs/bench/qm9_properties.json --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import sys
import time
from pathlib import Path

from rdkit import Chem

from confdiff.conformers import evaluation
from confdiff.chem.properties import (
    PROPERTY_NAMES,
    XtbProperties,
    conformer_properties,
    ensemble_properties,
    property_errors,
)


def read_reference(path: str) -> dict[str, list[Chem.Mol]]:
    """Records grouped by ``mol_id``, in file order."""
    groups: dict[str, list[Chem.Mol]] = {}
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as handle:
        for mol in Chem.ForwardSDMolSupplier(handle, removeHs=False):
            if mol is not None:
                groups.setdefault(mol.GetProp("mol_id"), []).append(mol)
    return groups


def reference_properties(records: list[Chem.Mol]):
    return ensemble_properties([XtbProperties(r.GetDoubleProp("energy"), r.GetDoubleProp("dipole"),
                                              r.GetDoubleProp("homo_lumo_gap")) for r in records])


def run_one(job: tuple) -> tuple:
    """(method, mol_id, EnsembleProperties or None, error) for one molecule and method."""
    import torch

    torch.set_num_threads(1)
    method, mol_id, molblock, num, seed, model = job
    try:
        mol = evaluation.generate_method(method, Chem.MolFromMolBlock(molblock, removeHs=False), num, seed, model)
        props = conformer_properties(mol, relax=True)
        if not props:
            return method, mol_id, None, "no conformer could be optimised"
        return method, mol_id, ensemble_properties(list(props.values())), None
    except Exception as exc:  # noqa: BLE001 -- one molecule's failure is recorded, the rest go on
        return method, mol_id, None, f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="reference SDF(.gz) built by scripts/build_reference.py")
    parser.add_argument("--method", action="append", required=True,
                        help=f"one of {', '.join([*evaluation.METHODS, *evaluation.CONFDIFF_METHODS])}")
    parser.add_argument("--model", default=None, help="checkpoint for the confdiff methods")
    parser.add_argument("--max-molecules", type=int, default=None, help="only the first M molecules")
    parser.add_argument("--seed", type=int, default=evaluation.DEFAULT_SEED)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    unknown = [m for m in args.method if m not in evaluation.METHODS and m not in evaluation.CONFDIFF_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    groups = read_reference(args.reference)
    keys = list(groups)[: args.max_molecules]
    reference = {k: reference_properties(groups[k]) for k in keys}
    jobs = []
    for key in keys:
        template = Chem.Mol(groups[key][0])
        template.RemoveAllConformers()
        for method in args.method:
            jobs.append((method, key, Chem.MolToMolBlock(template), 2 * len(groups[key]), args.seed, args.model))
    wall = time.perf_counter()
    with multiprocessing.get_context().Pool(args.workers) as pool:
        outcomes = list(pool.imap_unordered(run_one, jobs, chunksize=1))
    results = {}
    for method in args.method:
        mine = [o for o in outcomes if o[0] == method]
        for _, key, _, error in mine:
            if error:
                print(f"{method}: {key}: {error}", file=sys.stderr)
        generated = {key: props for _, key, props, _ in mine if props is not None}
        results[method] = property_errors(generated, reference)
    print(f"{len(keys)} molecules of {args.reference}, wall {time.perf_counter() - wall:.0f} s; "
          "median |generated - reference|: E, Emin, gap in kcal/mol, dipole in D")
    print(f"{'method':<22}" + "".join(f"{n:>12}" for n in (*PROPERTY_NAMES, "molecules")))
    for method, row in results.items():
        print(f"{method:<22}" + "".join(f"{row[n]:12.3f}" for n in PROPERTY_NAMES)
              + f"{row['num_molecules']:12d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": args.reference, "num_molecules": len(keys),
                                               "seed": args.seed, "methods": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
