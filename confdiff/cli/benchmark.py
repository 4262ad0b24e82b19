"""``confdiff benchmark``: conformer generators side by side on reference ensembles or crystal poses.

The command line, the table, the JSON report and the plot; the methods, the jobs and the metrics
are :mod:`confdiff.conformers.evaluation` (its docstring describes the protocols).
Ensemble mode (``REFERENCE``): 2K conformers per molecule with K references, COV-R, MAT-R, COV-P,
MAT-P as mean and median over molecules, the validity shares, failures and conformers per CPU second.
Bioactive mode (``--bioactive``): N conformers per crystal ligand, and the share of ligands whose
smallest heavy-atom RMSD is within 0.5, 1.0 and 2.0 A, and the median smallest RMSD.
With ``--json OUT``, every finished job is journalled (:mod:`confdiff.conformers.journal`): rerun the
same command after an interruption and it resumes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from ..conformers.evaluation import (
    BIOACTIVE_THRESHOLDS,
    CONFDIFF_METHODS,
    DEFAULT_SEED,
    FILE_PREFIX,
    METHODS,
    Outcome,
    check_methods,
    group_by_molecule,
    make_jobs,
    read_records,
    run_jobs,
    select_molecules,
    summarise,
)
from ..conformers.journal import Journal

__all__ = ["add_arguments", "run"]


def _read(path: str) -> list[Chem.Mol]:
    """``read_records``, the unreadable records reported."""
    mols, bad = read_records(path)
    if bad:
        print(f"benchmark: {path}: {bad} unreadable record(s) skipped", file=sys.stderr)
    return mols


def _file_conformers(spec: str) -> dict[str, list[Chem.Mol]]:
    path = spec[len(FILE_PREFIX):]
    if not Path(path).is_file():
        raise FileNotFoundError(f"method {spec!r}: no such file {path!r}")
    return group_by_molecule(_read(path))


def _report_failures(outcomes: Sequence[Outcome]) -> None:
    failed: dict[tuple[str, str], list[str]] = {}
    for o in outcomes:
        if o.error:
            failed.setdefault((o.method, o.error), []).append(o.key)
    for (method, error), keys in failed.items():
        shown = ", ".join(sorted(keys)[:5]) + (", ..." if len(keys) > 5 else "")
        print(f"benchmark: {_display_name(method)}: {len(keys)} molecule(s) failed ({shown}): {error}", file=sys.stderr)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


_HEADERS = {"cov_r_mean": "COV-R", "mat_r_mean": "MAT-R", "cov_p_mean": "COV-P", "mat_p_mean": "MAT-P",
            "within_0_5": "<0.5A", "within_1_0": "<1.0A", "within_2_0": "<2.0A", "median_min_rmsd": "median",
            "valid": "valid", "pb_valid": "pb_valid", "failures": "fails", "confs_per_cpu_s": "conf/CPU-s"}


def _display_name(method: str) -> str:
    return FILE_PREFIX + Path(method[len(FILE_PREFIX):]).name if method.startswith(FILE_PREFIX) else method


def _print_table(methods: dict[str, dict], columns: Sequence[str]) -> None:
    """One row per method; a median column follows its mean as "(med)"."""
    names = {m: _display_name(m) for m in methods}
    width = max(len("method"), *(len(n) for n in names.values()))
    headers = [_HEADERS.get(c, "(med)") for c in columns]
    widths = [max(6, len(h)) for h in headers]
    print(f"{'method':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths)))
    for method, row in methods.items():
        cells = [str(row[c]) if isinstance(row[c], int) else _fmt(row[c], 1 if c == "confs_per_cpu_s" else 3)
                 for c in columns]
        print(f"{names[method]:<{width}}  " + "  ".join(f"{x:>{w}}" for x, w in zip(cells, widths)))


def _plot(path: str, thresholds: np.ndarray, curves: dict[str, np.ndarray], ylabel: str, marker: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        ax.plot(thresholds, curve, label=_display_name(name))
    if marker is not None:
        ax.axvline(marker, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("RMSD threshold (A)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", nargs="?", help="reference conformers, .sdf or .sdf.gz (ensemble mode)")
    parser.add_argument("--bioactive", metavar="LIGANDS", help="crystal ligand poses, .sdf or .sdf.gz (bioactive mode)")
    parser.add_argument("--method", action="append", required=True, metavar="NAME",
                        help=f"one of {', '.join([*METHODS, *CONFDIFF_METHODS])}, or {FILE_PREFIX}GENERATED.sdf[.gz]; "
                             "repeat for several; a confdiff method may name its physics guidance: "
                             "confdiff:none|repulsion|mmff[:SCALE]")
    parser.add_argument("-n", "--num-confs", type=int, default=50, help="conformers per ligand in bioactive mode (50)")
    parser.add_argument("--threshold", type=float, default=0.75, help="COV threshold in A (0.75)")
    parser.add_argument("--json", metavar="OUT.json",
                        help="write the results as JSON; finished jobs are journalled in OUT.json.partial.jsonl, "
                             "so that the same command resumes an interrupted run")
    parser.add_argument("--plot", metavar="OUT.png", help="draw coverage against threshold for every method")
    parser.add_argument("--num-workers", type=int, default=1, help="worker processes (1)")
    parser.add_argument("--max-molecules", type=int, default=None, help="only the first M molecules")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed ({DEFAULT_SEED:#x})")
    parser.add_argument("--model", default=None, help="checkpoint for the confdiff methods (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=None, help="reverse-diffusion steps of the confdiff methods")
    parser.add_argument("--pb-sample", type=int, default=10, metavar="K",
                        help="conformers per molecule and method judged by posebusters for pb_valid (10; 0: none)")


def _validate(args: argparse.Namespace) -> None:
    if (args.reference is None) == (args.bioactive is None):
        raise ValueError("give either a REFERENCE file or --bioactive LIGANDS, not both or neither")
    if args.num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {args.num_workers}")
    if args.max_molecules is not None and args.max_molecules < 1:
        raise ValueError(f"--max-molecules must be >= 1, got {args.max_molecules}")
    if args.num_confs < 1:
        raise ValueError(f"-n must be >= 1, got {args.num_confs}")
    if args.threshold <= 0:
        raise ValueError(f"--threshold must be > 0, got {args.threshold}")
    if args.pb_sample < 0:
        raise ValueError(f"--pb-sample must be >= 0, got {args.pb_sample}")
    source = args.bioactive if args.bioactive is not None else args.reference
    if not Path(source).is_file():
        raise FileNotFoundError(f"no such file {source!r}")
    check_methods(args.method)


def run(args: argparse.Namespace) -> int:
    try:
        _validate(args)
        files = {m: _file_conformers(m) for m in args.method if m.startswith(FILE_PREFIX)}
    except (ValueError, FileNotFoundError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter()
    bioactive = args.bioactive is not None
    source = args.bioactive if bioactive else args.reference
    molecules, files, missing = select_molecules(_read(source), files, bioactive=bioactive,
                                                 max_molecules=args.max_molecules)
    if missing:
        print(f"benchmark: {missing} molecule(s) are absent from a {FILE_PREFIX} file "
              "and are left out for every method", file=sys.stderr)
    if not molecules:
        print("benchmark: no molecules to evaluate", file=sys.stderr)
        return 1
    num_confs = (lambda k: args.num_confs) if bioactive else (lambda k: 2 * k)
    pb_sample = args.pb_sample
    if pb_sample and importlib.util.find_spec("posebusters") is None:
        print("benchmark: posebusters is not installed (pip install confdiff[validate]): no pb_valid", file=sys.stderr)
        pb_sample = 0
    jobs = make_jobs(molecules, args.method, files, num_confs, args.seed, args.model, pb_sample, args.steps)
    journal = Journal(f"{args.json}.partial.jsonl") if args.json else None
    outcomes = run_jobs(jobs, args.num_workers, journal=journal)
    _report_failures(outcomes)
    results, curves, thresholds = summarise(outcomes, args.method, list(molecules), bioactive=bioactive,
                                            threshold=args.threshold)

    wall = time.perf_counter() - wall
    setting = f"{args.num_confs} conformers per ligand" if bioactive else f"2K conformers, threshold {args.threshold} A"
    print(f"{len(molecules)} {'ligands' if bioactive else 'molecules'}, {setting}, wall time {wall:.1f} s")
    if bioactive:
        columns = [f"within_{t:.1f}".replace(".", "_") for t in BIOACTIVE_THRESHOLDS] + ["median_min_rmsd"]
    else:
        columns = [f"{m}_{s}" for m in ("cov_r", "mat_r", "cov_p", "mat_p") for s in ("mean", "median")]
    _print_table(results, columns + ["valid", "pb_valid", "failures", "confs_per_cpu_s"])

    if args.json:
        report = {
            "mode": "bioactive" if bioactive else "ensemble",
            "input": str(source),
            "num_molecules": len(molecules),
            "threshold": None if bioactive else args.threshold,
            "num_confs": args.num_confs if bioactive else "2K",
            "seed": args.seed,
            "pb_sample": pb_sample,
            "wall_s": wall,
            "methods": results,
            "curves": {"thresholds": thresholds.tolist(), **{m: c.tolist() for m, c in curves.items()}},
        }
        part = Path(f"{args.json}.part")
        part.write_text(json.dumps(report, indent=2) + "\n")
        part.replace(args.json)  # never a half-written report
        journal.remove()
    if args.plot:
        ylabel = "share of ligands within threshold" if bioactive else "COV-R (mean over molecules)"
        _plot(args.plot, thresholds, curves, ylabel, None if bioactive else args.threshold)
    return 0
