"""``confdiff score``: the log-likelihood of every conformer of an SDF under the conformer model.

Consecutive records with the same name and the same atoms and bonds, in the same order, are the
conformers of one molecule and are scored together in one graph batch
(:func:`confdiff.conformers.likelihood.likelihood`, which says which density this is). Every record
is written with its input SD properties and ``log_likelihood`` (nats); ``--rank`` orders each
molecule's conformers from most to least likely and ``--top K`` keeps the ``K`` most likely.
The exit code is 0 when every record was scored, 1 when some failed (each named on stderr with
the reason), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import torch
from rdkit import Chem

from ..chem.io import MoleculeInputError, MolRecord, SDFWriter, read_molecules
from ..conformers.modes import MODES

__all__ = ["add_arguments", "molecules", "run"]

PROPERTY = "log_likelihood"
#: the density scored by default: the torsional one, exact divergence over ``m`` torsions only
#: (the refine density's ``m + 3N`` Jacobian columns cost minutes per conformer; docs/likelihood.md)
DEFAULT_DENSITY = "torsions"
#: fixed RK4 steps by default: within 0.05 nats of the adaptive solver at atol 1e-6 on ibuprofen
DEFAULT_STEPS = 20


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="SDF / SDF.GZ with 3D conformers")
    parser.add_argument("-o", "--output", required=True, help="output SDF (.sdf or .sdf.gz)")
    parser.add_argument("--model", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--mode", "--density", dest="mode", default=DEFAULT_DENSITY, choices=MODES,
                        help="which of the model's densities (docs/likelihood.md; default torsions: the torsion "
                             "density given the rest of the conformer, ~1 CPU s per conformer; refine: torsions "
                             "and coordinates, minutes per conformer)")
    parser.add_argument("--divergence", choices=["exact", "hutchinson"], default=None,
                        help="divergence of the ODE (default: exact for small molecules, else Hutchinson)")
    parser.add_argument("--rank", action="store_true", help="sort each molecule's conformers, most likely first")
    parser.add_argument("--top", type=_positive, default=None, metavar="K",
                        help="keep only the K most likely conformers of each molecule")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes")
    parser.add_argument("--steps", type=_positive, default=None,
                        help=f"fixed RK4 steps of the ODE (default {DEFAULT_STEPS})")
    parser.add_argument("--atol", type=float, default=None,
                        help="use the adaptive Dormand-Prince solver with this absolute tolerance instead")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")


def _topology(mol: Chem.Mol) -> tuple:
    atoms = tuple((a.GetAtomicNum(), a.GetFormalCharge()) for a in mol.GetAtoms())
    bonds = tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondType())) for b in mol.GetBonds()))
    return atoms, bonds


def molecules(records) -> Iterator[tuple[list[MolRecord], Chem.Mol | None]]:
    """Group consecutive records into molecules: ``(records, mol with one conformer per record)``.

    A record that failed to read, or has no 3D coordinates, is its own group with ``mol`` None.
    """
    group: list[MolRecord] = []
    key = None
    for record in records:
        ok = record.ok and record.mol.GetNumConformers() > 0
        this = (record.name, _topology(record.mol)) if ok else None
        if group and (this is None or this != key):
            yield group, _stack(group)
            group = []
        if this is None:
            yield [record], None
            continue
        group.append(record)
        key = this
    if group:
        yield group, _stack(group)


def _stack(group: list[MolRecord]) -> Chem.Mol:
    mol = Chem.Mol(group[0].mol)
    mol.RemoveAllConformers()
    for record in group:
        mol.AddConformer(Chem.Conformer(record.mol.GetConformer()), assignId=True)
    return mol


def _order(log_p: list[float], rank: bool, top: int | None) -> list[int]:
    """Indices of the conformers to write: most likely first with ``rank``, the ``top`` best kept."""
    best = sorted(range(len(log_p)), key=lambda i: -log_p[i])
    keep = best[:top] if top is not None else best
    return keep if rank else sorted(keep)


def run(args: argparse.Namespace) -> int:
    from ..chem.featurize import FeaturizationError
    from ..conformers.likelihood import likelihood
    from ..conformers.generator import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.steps is not None and args.atol is not None:
        print("confdiff score: give --steps (fixed RK4) or --atol (adaptive), not both", file=sys.stderr)
        return 2
    solver = {"atol": args.atol} if args.atol is not None else {"steps": args.steps or DEFAULT_STEPS}
    try:
        model = load_model(args.model, device=device, mode=args.mode)
        model[1].check_mode(args.mode)
    except (FileNotFoundError, ValueError) as err:
        print(f"confdiff score: {err}", file=sys.stderr)
        return 2
    failures = scored = written = 0
    start = time.perf_counter()
    try:
        records = read_molecules(args.input, fmt="sdf")
        with SDFWriter(args.output) as writer:
            for group, mol in molecules(records):
                label = f"record {group[0].index + 1}" + (f"-{group[-1].index + 1}" if len(group) > 1 else "")
                label += f" ({group[0].name})"
                if mol is None:
                    failures += 1
                    reason = group[0].error or "no 3D coordinates"
                    print(f"{label}\t{reason}", file=sys.stderr, flush=True)
                    continue
                try:
                    log_p = likelihood(mol, model, divergence=args.divergence, mode=args.mode,
                                       generator=torch.Generator().manual_seed(args.seed), **solver)
                except (FeaturizationError, torch.OutOfMemoryError) as err:  # anything else is a bug
                    failures += len(group)
                    print(f"{label}\t{type(err).__name__}: {err}", file=sys.stderr, flush=True)
                    continue
                order = _order(log_p, args.rank, args.top)
                ids = [c.GetId() for c in mol.GetConformers()]
                props = [{**group[i].mol.GetPropsAsDict(), PROPERTY: f"{log_p[i]:.6f}"} for i in order]
                written += writer.write(mol, [ids[i] for i in order], name=group[0].name, conf_props=props)
                scored += len(group)
    except MoleculeInputError as err:  # a missing or empty input
        print(f"confdiff score: {err}", file=sys.stderr)
        return 2
    print(f"confdiff score: {scored} conformers scored, {written} written, {failures} failed, "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 1 if failures else 0
