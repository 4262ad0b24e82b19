"""Physical validity of raw conformers: PoseBusters' molecule checks, clashes and CPU time per method.

For the first ``--max-molecules`` records of an SDF / SMILES file, every method makes ``-n``
conformers per molecule (``confdiff.conformers.evaluation``'s method names, ``confdiff`` options through
``--confdiff-option KEY=VALUE``); each conformer is checked by ``posebusters`` (config ``mol``, one
conformer per call, its conformer id 0 so the energy check runs on it) and the heavy-atom pairs 3 or
more bonds apart closer than 2.2 A are counted. Prints a table and writes ``--json``.

    python scripts/bench_validity.py data/examples/molecules.sdf -n 50 --method etkdg --method confdiff
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

CLASH_DISTANCE = 2.2  # A, heavy atoms 3 or more bonds apart


def _records(path: str, limit: int) -> list[tuple[str, Chem.Mol]]:
    from confdiff.chem.io import read_molecules

    out = []
    for record in read_molecules(path):
        if len(out) >= limit:
            break
        if record.mol is not None:
            out.append((record.name, record.mol))
    return out


def _clashes(mol: Chem.Mol) -> np.ndarray:
    """Per conformer, the heavy-atom pairs 3+ bonds apart closer than ``CLASH_DISTANCE``."""
    topo = Chem.GetDistanceMatrix(mol)
    heavy = np.array([a.GetAtomicNum() > 1 for a in mol.GetAtoms()])
    pairs = np.triu(topo >= 3, 1) & heavy[:, None] & heavy[None, :]
    i, j = np.nonzero(pairs)
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    d = np.linalg.norm(pos[:, i] - pos[:, j], axis=-1)
    return (d < CLASH_DISTANCE).sum(1)


def _single(mol: Chem.Mol, conf_id: int) -> Chem.Mol:
    """A copy of ``mol`` holding conformer ``conf_id`` alone, renumbered 0."""
    out = Chem.Mol(mol, confId=conf_id)
    out.GetConformer().SetId(0)
    return out


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="SDF / SMILES file")
    parser.add_argument("--method", action="append", required=True, help="a confdiff.conformers.evaluation method (repeatable)")
    parser.add_argument("-n", type=int, default=50, help="conformers per molecule")
    parser.add_argument("--max-molecules", type=int, default=10**9)
    parser.add_argument("--seed", type=int, default=0xF00D)
    parser.add_argument("--confdiff-option", action="append", default=[], metavar="KEY=VALUE",
                        help="ConformerGenerator option for the confdiff methods (repeatable, JSON values)")
    parser.add_argument("--no-posebusters", action="store_true", help="clashes and CPU time only")
    parser.add_argument("--pb-per-molecule", type=int, default=None, metavar="K",
                        help="posebusters on K conformers per molecule, evenly spaced (default: every one)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch
    from confdiff.conformers import evaluation

    torch.set_num_threads(1)
    options = _parse_options(args.confdiff_option)
    bust = None
    if not args.no_posebusters:
        from posebusters import PoseBusters

        bust = PoseBusters(config="mol").bust
    molecules = _records(args.source, args.max_molecules)
    report = {"source": args.source, "n": args.n, "seed": args.seed, "molecules": len(molecules),
              "confdiff_options": options, "date": time.strftime("%Y-%m-%d"), "methods": {}}
    for method in args.method:
        cpu, conformers, clash_pairs, clashing, failed, busted = 0.0, 0, 0, 0, [], 0
        checks: dict[str, int] = {}
        passed = 0
        for name, mol in molecules:
            template = Chem.AddHs(mol)
            template.RemoveAllConformers()
            start = time.process_time()
            try:
                if method in evaluation.CONFDIFF_METHODS and options:
                    out = evaluation.generate_confdiff(template, args.n, args.seed,
                                                       **{**evaluation.CONFDIFF_METHODS[method], **options})
                else:
                    out = evaluation.generate_method(method, template, args.n, args.seed)
            except Exception as exc:  # noqa: BLE001 -- a failed molecule is reported, the others go on
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            cpu += time.process_time() - start
            if out.GetNumConformers() == 0:
                failed.append(f"{name}: no conformers")
                continue
            counts = _clashes(out)
            conformers += len(counts)
            clash_pairs += int(counts.sum())
            clashing += int((counts > 0).sum())
            if bust is not None:
                with rdBase.BlockLogs():
                    ids = [c.GetId() for c in out.GetConformers()]
                    if args.pb_per_molecule is not None and len(ids) > args.pb_per_molecule:
                        ids = [ids[k] for k in np.linspace(0, len(ids) - 1, args.pb_per_molecule).round().astype(int)]
                    table = bust([_single(out, cid) for cid in ids], None, None)
                ok = table.all(axis=1)
                passed += int(ok.sum())
                busted += len(ok)
                for column in table.columns:
                    checks[column] = checks.get(column, 0) + int((~table[column].astype(bool)).sum())
        row = {"conformers": conformers, "failed_molecules": failed,
               "cpu_ms_per_conformer": 1000 * cpu / max(conformers, 1),
               "clash_pairs": clash_pairs, "clashing_conformers": clashing}
        if bust is not None:
            row["pb_valid"] = passed / max(busted, 1)
            row["pb_checked"] = busted
            row["pb_failures_by_check"] = {k: v for k, v in checks.items() if v}
        report["methods"][method] = row
        pb = f"  pb_valid {row['pb_valid']:.3f} {row.get('pb_failures_by_check')}" if bust is not None else ""
        print(f"{method:22s} conformers {conformers:6d}  cpu/conf {row['cpu_ms_per_conformer']:6.1f} ms  "
              f"clash pairs {clash_pairs:5d} in {clashing:4d} conformers{pb}  failed {len(failed)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
