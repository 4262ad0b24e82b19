"""``confdiff dataset build``: conformer ensembles to train on, built shard by shard (resumable)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..chem.datasets import ERRORS, MANIFEST, build_dataset, read_exclusion_list
from ..chem.ensembles import RELAX_METHODS, BuildConfig
from ..chem.relax import XtbNotFoundError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``confdiff dataset build SMILES_FILE -o DIR [...]``."""
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build conformer ensembles from a SMILES / SDF file (resumable)")
    build.add_argument("source", help="molecules: .smi[.gz] (SMILES [name] per line), .sdf[.gz] or .mol2")
    build.add_argument("-o", "--out", required=True, help="output directory (shards, manifest.json, errors.tsv)")
    build.add_argument("--exclude", help="file of InChIKey first blocks to drop (data/evaluation_exclusion.txt)")
    build.add_argument("--max-molecules", type=int, help="use the first M usable molecules")
    build.add_argument("--num-conformers", type=int, default=30, help="most conformers kept per molecule")
    build.add_argument("--oversample", type=int, default=1,
                       help="embed oversample x num-conformers ETKDG seeds, keep the lowest num-conformers after pruning")
    build.add_argument("--relax", choices=RELAX_METHODS, default="mmff", help="relaxation method")
    build.add_argument("--energy-window", type=float, default=10.0, help="kcal/mol above the minimum")
    build.add_argument("--prune-rms", type=float, default=0.5, help="heavy-atom RMSD pruning threshold (A)")
    build.add_argument("--max-heavy-atoms", type=int, default=40)
    build.add_argument("--workers", type=int, default=1, help="processes over molecules")
    build.add_argument("--seed", type=int, default=0xF00D)
    build.add_argument("--shard-size", type=int, default=100, help="molecules per shard")
    build.add_argument("--resume", action="store_true",
                       help="require an existing build in --out to continue (resuming is automatic anyway)")


def run(args: argparse.Namespace) -> int:
    config = BuildConfig(
        num_conformers=args.num_conformers, oversample=args.oversample, relax=args.relax, energy_window=args.energy_window,
        prune_rms=args.prune_rms, max_heavy_atoms=args.max_heavy_atoms, seed=args.seed,
    )
    if args.resume and not (Path(args.out) / MANIFEST).exists():
        print(f"error: --resume given but {args.out} holds no {MANIFEST}", file=sys.stderr)
        return 2
    exclude = read_exclusion_list(args.exclude) if args.exclude else frozenset()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        manifest = build_dataset(
            args.source, args.out, config, exclude=exclude, max_molecules=args.max_molecules,
            workers=args.workers, shard_size=args.shard_size, log=log,
        )
    except (ValueError, XtbNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = manifest["shards"].values()
    log(f"done: {sum(s['molecules'] for s in done)} molecules, {sum(s['conformers'] for s in done)} conformers, "
        f"{sum(s['failed'] for s in done)} failed; {args.out}/{ERRORS} lists refusals")
    return 0
