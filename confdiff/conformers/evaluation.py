"""``confdiff benchmark``: conformer generators side by side on reference ensembles or crystal poses.

Ensemble mode (the GEOM protocol, Ganea et al. 2021; Jing et al. 2022): reference conformers are
grouped by molecule (the ``mol_id`` property, else the canonical SMILES); every method makes 2K
conformers for a molecule with K references (or reads them from a file), and COV-R, MAT-R, COV-P,
MAT-P are reported as mean and median over molecules, with failures and conformers per CPU second.
Next to them, the share of generated conformers that pass PoseBusters' ``mol`` checks: ``valid``
from :class:`confdiff.chem.validity.ValidityChecker` for every conformer (without the internal-energy
check, with the stereo check), and ``pb_valid`` from the ``posebusters`` package itself (the
``validate`` extra; slow, so on ``--pb-sample`` conformers per molecule and method).
Bioactive mode (``--bioactive``): N conformers per crystal ligand, and the share of ligands whose
smallest heavy-atom RMSD is within 0.5, 1.0 and 2.0 A, and the median smallest RMSD.

When a ``file:`` method is given, only the molecules present in every such file are compared (for
all methods alike): a file of published outputs often covers a subset of the references.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import json
import math
import multiprocessing
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from ..chem.metrics import coverage_curve, coverage_matching, rmsd_matrix

__all__ = [
    "DEFAULT_SEED",
    "FILE_PREFIX",
    "CONFDIFF_METHODS",
    "METHODS",
    "MethodUnavailable",
    "add_arguments",
    "generate_confdiff",
    "generate_etkdg",
    "generate_etkdg_gfn2",
    "generate_etkdg_mmff",
    "generate_teacher",
    "generate_method",
    "run",
]

DEFAULT_SEED = 0xF00D
FILE_PREFIX = "file:"
BIOACTIVE_THRESHOLDS = (0.5, 1.0, 2.0)
_CURVE_MAX, _CURVE_POINTS = 3.0, 61  # coverage curves on [0, 3] A


class MethodUnavailable(RuntimeError):
    """A method that cannot run here (e.g. no trained confdiff model); the reason is the message."""


Generator = Callable[[Chem.Mol, int, int], Chem.Mol]
"""(molecule with explicit Hs and no conformers, number of conformers, seed) -> molecule with conformers."""


def generate_etkdg(mol: Chem.Mol, num_confs: int, seed: int) -> Chem.Mol:
    """RDKit ETKDGv3 (Wang et al., J. Chem. Inf. Model. 60, 2044, 2020), one thread, no fallback.

    Plain RDKit on purpose (not ``confdiff.chem.embed``, whose random-coordinate fallback would
    hide ETKDG's failures): this is the baseline as users run it.
    """
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    AllChem.EmbedMultipleConfs(mol, num_confs, params)
    return mol


def _relax_gfn2(mol: Chem.Mol) -> Chem.Mol:
    """GFN2-xTB optimisation of every conformer (one thread); conformers xtb cannot optimise are dropped."""
    from ..chem.relax import RelaxationError, XtbNotFoundError, relax_xtb

    for cid in [c.GetId() for c in mol.GetConformers()]:
        try:
            relax_xtb(mol, cid, method="gfn2", threads=1)
        except XtbNotFoundError as exc:
            raise MethodUnavailable(str(exc)) from exc
        except RelaxationError:
            mol.RemoveConformer(cid)
    return mol


def generate_etkdg_gfn2(mol: Chem.Mol, num_confs: int, seed: int) -> Chem.Mol:
    """ETKDGv3, then GFN2-xTB optimisation of every conformer (``xtb --opt``, default convergence)."""
    return _relax_gfn2(generate_etkdg(mol, num_confs, seed))


def generate_etkdg_mmff(mol: Chem.Mol, num_confs: int, seed: int) -> Chem.Mol:
    """ETKDGv3, then MMFF94 minimisation of every conformer (RDKit defaults, 200 iterations, the
    setting of the reference table in shared/data/README.md)."""
    mol = generate_etkdg(mol, num_confs, seed)
    if mol.GetNumConformers():
        if not AllChem.MMFFHasAllMoleculeParams(mol):
            raise MethodUnavailable("MMFF94 has no parameters for this molecule")
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1)
    return mol


def generate_teacher(mol: Chem.Mol, num_confs: int, seed: int) -> Chem.Mol:
    """The training-set teacher of ``scripts/build_training_data.sh``: ETKDGv3 x5 oversampled,
    MMFF94, a 10 kcal/mol window, greedy 0.25 A heavy-atom pruning in energy order, the lowest
    ``num_confs`` kept (fewer when pruning leaves fewer)."""
    from ..chem.ensembles import BuildConfig, build_ensemble

    config = BuildConfig(num_conformers=num_confs, oversample=5, energy_window=10.0, prune_rms=0.25)
    return build_ensemble(mol, config, seed=seed).mol


@functools.cache
def _confdiff_generator(model: str | None, mode: str, relax: str | None, guidance: str | None = None,
                        guidance_scale: float | None = None, steps: int | None = None):
    try:
        from ..conformers.generator import ConformerGenerator
    except ImportError as exc:
        raise MethodUnavailable(f"confdiff.ConformerGenerator is not importable: {exc}") from exc
    try:
        return ConformerGenerator(model, mode=mode, relax=relax, guidance=guidance, guidance_scale=guidance_scale,
                                  steps=steps)
    except (FileNotFoundError, ValueError) as exc:
        raise MethodUnavailable(str(exc)) from exc


def generate_confdiff(mol: Chem.Mol, num_confs: int, seed: int, *, model: str | None = None,
                      mode: str = "refine", relax: str | None = None, guidance: str | None = None,
                      guidance_scale: float | None = None, steps: int | None = None) -> Chem.Mol:
    """The package's diffusion model (the shipped checkpoint when ``model`` is None, loaded once per
    process) in ``mode``; ``relax="mmff"`` / ``"gfn2"`` minimises every conformer afterwards (as
    torsional diffusion's "+ relaxation" rows); ``guidance`` / ``guidance_scale``: physics guidance
    (None: the mode's default); ``steps``: reverse-diffusion steps (None: the mode's default)."""
    if relax == "gfn2":
        return _relax_gfn2(generate_confdiff(mol, num_confs, seed, model=model, mode=mode, guidance=guidance,
                                             guidance_scale=guidance_scale, steps=steps))
    generator = _confdiff_generator(model, mode, relax, guidance, guidance_scale, steps)
    return generator.generate(mol, num_confs, seed=seed)


METHODS: dict[str, Generator] = {
    "etkdg": generate_etkdg,
    "etkdg-mmff": generate_etkdg_mmff,
    "etkdg-gfn2": generate_etkdg_gfn2,
    "teacher": generate_teacher,
}
#: the diffusion model's methods: name -> (mode, relaxation); they take ``--model``
CONFDIFF_METHODS: dict[str, tuple[str, str | None]] = {
    "confdiff": ("refine", None),
    "confdiff-mmff": ("refine", "mmff"),
    "confdiff-gfn2": ("refine", "gfn2"),
    "confdiff-torsions": ("torsions", None),
    "confdiff-full": ("full", None),
    "confdiff-full-mmff": ("full", "mmff"),
}


def _split_guidance(method: str) -> tuple[str, str | None, float | None]:
    """``"confdiff:repulsion:3"`` -> ``("confdiff", "repulsion", 3.0)``; no suffix: the mode's default guidance."""
    name, _, rest = method.partition(":")
    if name not in CONFDIFF_METHODS or not rest:
        return method, None, None
    guidance, _, scale = rest.partition(":")
    from ..conformers.physics import GUIDANCE_CHOICES

    if guidance not in GUIDANCE_CHOICES:
        raise ValueError(f"{method!r}: unknown guidance {guidance!r}; choose from {GUIDANCE_CHOICES}")
    try:
        return name, guidance, float(scale) if scale else None
    except ValueError:
        raise ValueError(f"{method!r}: the guidance scale {scale!r} is not a number") from None


def generate_method(method: str, mol: Chem.Mol, num_confs: int, seed: int, model: str | None = None,
                    steps: int | None = None) -> Chem.Mol:
    """Conformers of ``mol`` from the method named ``method`` (``model``: the confdiff methods' checkpoint).

    A confdiff method may name its physics guidance: ``confdiff:GUIDANCE[:SCALE]`` (``confdiff:none``,
    ``confdiff-full:repulsion:10``)."""
    name, guidance, scale = _split_guidance(method)
    if name in CONFDIFF_METHODS:
        mode, relax = CONFDIFF_METHODS[name]
        return generate_confdiff(mol, num_confs, seed, model=model, mode=mode, relax=relax, guidance=guidance,
                                 guidance_scale=scale, steps=steps)
    return METHODS[name](mol, num_confs, seed)


# --- reading ------------------------------------------------------------------------------------
# Reference files are read as they are (no salt stripping or other input policy of
# confdiff.chem.io.read_molecules): the metric must see exactly the published records.


def _read_records(path: str) -> list[Chem.Mol]:
    """All readable records of an SDF (``.sdf`` or ``.sdf.gz``), hydrogens kept; unreadable ones reported."""
    opener = gzip.open if str(path).endswith(".gz") else open
    mols, bad = [], 0
    with opener(path, "rb") as handle, rdBase.BlockLogs():
        for mol in Chem.ForwardSDMolSupplier(handle, removeHs=False):
            if mol is None:
                bad += 1
            else:
                mols.append(mol)
    if bad:
        print(f"benchmark: {path}: {bad} unreadable record(s) skipped", file=sys.stderr)
    return mols


def _molecule_key(mol: Chem.Mol) -> str:
    """The molecule a record belongs to: its ``mol_id`` property, else its canonical SMILES."""
    if mol.HasProp("mol_id"):
        return mol.GetProp("mol_id")
    return Chem.MolToSmiles(Chem.RemoveHs(mol))


def _group(records: Iterable[Chem.Mol]) -> dict[str, list[Chem.Mol]]:
    groups: dict[str, list[Chem.Mol]] = {}
    for mol in records:
        groups.setdefault(_molecule_key(mol), []).append(mol)
    return groups


def _template(records: Sequence[Chem.Mol]) -> Chem.Mol:
    """A conformer-free copy of the group's most common graph (a broken record never wins)."""
    graphs = [Chem.MolToSmiles(m) for m in records]
    common = Counter(graphs).most_common(1)[0][0]
    mol = Chem.Mol(records[graphs.index(common)])
    mol.RemoveAllConformers()
    for name in mol.GetPropNames():
        mol.ClearProp(name)
    return mol


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    method: str
    key: str
    template: Chem.Mol
    reference: tuple[Chem.Mol, ...]
    num_confs: int
    seed: int
    generated: tuple[Chem.Mol, ...] | None  # a file: method's conformers; None = generate
    model: str | None = None  # checkpoint of the confdiff methods (None: the shipped one)
    pb_sample: int = 0  # conformers judged by posebusters (0: none)
    steps: int | None = None  # reverse-diffusion steps of the confdiff methods (None: the mode's default)

    @property
    def cost(self) -> int:
        return len(self.reference) * self.num_confs


@dataclass(frozen=True)
class _Outcome:
    method: str
    key: str
    rmsd: np.ndarray | None  # (K, L), None on failure
    num_generated: int
    cpu_s: float | None  # generation CPU time; None for file: methods
    error: str | None
    validity: tuple[int, int, int, int] = (0, 0, 0, 0)  # valid, checked, posebusters-valid, posebusters-checked


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (xtb runs as one)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _validity(mols: Sequence[Chem.Mol], pb_sample: int) -> tuple[int, int, int, int]:
    """(passing, checked) conformers of ``mols`` by ``ValidityChecker`` (all of them), then by
    ``PoseBusters(config="mol")`` (``pb_sample`` of them, evenly spread; a conformer passes when
    every test does). A molecule the checker cannot be prepared for is not counted."""
    from ..chem.validity import ValidityChecker, ValidityError

    valid = checked = 0
    checkers: dict[tuple, ValidityChecker | None] = {}
    for mol in mols:  # a file: method has one record per conformer, possibly in other atom orders
        key = (Chem.MolToSmiles(mol, canonical=False), tuple(a.GetAtomicNum() for a in mol.GetAtoms()))
        if key not in checkers:
            try:
                checkers[key] = ValidityChecker.from_mol(mol)
            except ValidityError:
                checkers[key] = None
        if checkers[key] is not None and mol.GetNumConformers():
            pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
            valid += int(checkers[key].passes(pos).sum())
            checked += len(pos)
    conformers = [(m, c.GetId()) for m in mols for c in m.GetConformers()]
    if pb_sample <= 0 or not conformers:
        return valid, checked, 0, 0
    from posebusters import PoseBusters

    buster = PoseBusters(config="mol")
    picked = np.unique(np.linspace(0, len(conformers) - 1, min(pb_sample, len(conformers))).round().astype(int))
    rows = []
    for k in picked:
        mol, conf = Chem.Mol(conformers[k][0]), Chem.Conformer(conformers[k][0].GetConformer(conformers[k][1]))
        mol.RemoveAllConformers()
        conf.SetId(0)  # posebusters' energy check reads conformer 0 (another id: "Bad Conformer Id", NaN)
        mol.AddConformer(conf)
        with rdBase.BlockLogs():
            rows.append(buster.bust(mol).iloc[0])
    pb_valid = sum(all(v is True or v == True for v in row.values) for row in rows)  # noqa: E712 -- NaN fails
    return valid, checked, pb_valid, len(rows)


def _run_job(job: _Job) -> _Outcome:
    start = _cpu_seconds()
    cpu_s, num_generated = None, 0
    try:
        if job.generated is None:
            generated = generate_method(job.method, Chem.Mol(job.template), job.num_confs, job.seed, job.model,
                                        job.steps)
            cpu_s = _cpu_seconds() - start
            num_generated = generated.GetNumConformers()
        else:
            generated, num_generated = job.generated, sum(m.GetNumConformers() for m in job.generated)
        if num_generated == 0:
            return _Outcome(job.method, job.key, None, 0, cpu_s, "no conformers generated")
        rmsd = rmsd_matrix(list(job.reference), generated)
    except Exception as exc:  # noqa: BLE001 -- any failure of one molecule is recorded, the rest go on
        return _Outcome(job.method, job.key, None, num_generated, cpu_s, f"{type(exc).__name__}: {exc}")
    validity = _validity([generated] if isinstance(generated, Chem.Mol) else list(generated), job.pb_sample)
    if np.isnan(rmsd).all():
        return _Outcome(job.method, job.key, None, num_generated, cpu_s, "no generated conformer matches the reference",
                        validity)
    return _Outcome(job.method, job.key, rmsd, num_generated, cpu_s, None, validity)


def _one_thread() -> None:
    """Every method runs on one thread (ETKDG, MMFF and torch alike), so CPU times compare."""
    import torch

    torch.set_num_threads(1)


def _run_jobs(jobs: list[_Job], num_workers: int) -> list[_Outcome]:
    from tqdm import tqdm

    jobs = sorted(jobs, key=lambda j: -j.cost)  # largest first, for load balance
    bar = tqdm(total=len(jobs), unit="job", desc="benchmark", file=sys.stderr, dynamic_ncols=True)
    outcomes = []
    if num_workers <= 1:
        _one_thread()
        for job in jobs:
            outcomes.append(_run_job(job))
            bar.update(1)
    else:
        with multiprocessing.get_context().Pool(num_workers, initializer=_one_thread) as pool:
            for outcome in pool.imap_unordered(_run_job, jobs, chunksize=1):
                outcomes.append(outcome)
                bar.update(1)
    bar.close()
    failed: dict[tuple[str, str], list[str]] = {}
    for o in outcomes:
        if o.error:
            failed.setdefault((o.method, o.error), []).append(o.key)
    for (method, error), keys in failed.items():
        shown = ", ".join(sorted(keys)[:5]) + (", ..." if len(keys) > 5 else "")
        print(f"benchmark: {_display_name(method)}: {len(keys)} molecule(s) failed ({shown}): {error}", file=sys.stderr)
    return outcomes


def _file_conformers(spec: str) -> dict[str, list[Chem.Mol]]:
    path = spec[len(FILE_PREFIX):]
    if not Path(path).is_file():
        raise FileNotFoundError(f"method {spec!r}: no such file {path!r}")
    return _group(_read_records(path))


def _check_methods(methods: Sequence[str]) -> None:
    for name in methods:
        if not name.startswith(FILE_PREFIX):
            name = _split_guidance(name)[0]
        if not name.startswith(FILE_PREFIX) and name not in METHODS and name not in CONFDIFF_METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS) + sorted(CONFDIFF_METHODS)} "
                             f"or {FILE_PREFIX}PATH")
    duplicates = [name for name, count in Counter(methods).items() if count > 1]
    if duplicates:
        raise ValueError(f"method given more than once: {duplicates}")


def _make_jobs(molecules: dict[str, list[Chem.Mol]], methods: Sequence[str], files: dict[str, dict],
               num_confs: Callable[[int], int], seed: int, model: str | None = None, pb_sample: int = 0,
               steps: int | None = None) -> list[_Job]:
    jobs = []
    for key, records in molecules.items():
        template = _template(records)
        for method in methods:
            generated = tuple(files[method][key]) if method in files else None
            jobs.append(_Job(method, key, template, tuple(records), num_confs(len(records)), seed, generated, model,
                             pb_sample, steps))
    return jobs


# --- summaries ----------------------------------------------------------------------------------


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_stat(values: list[float], fn) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return _finite_or_none(float(fn(kept))) if kept else None


def _speed(outcomes: list[_Outcome]) -> float | None:
    cpu = [o.cpu_s for o in outcomes if o.cpu_s is not None]
    if not cpu or sum(cpu) <= 0:
        return None
    return sum(o.num_generated for o in outcomes) / sum(cpu)


def _validity_summary(outcomes: list[_Outcome]) -> dict:
    """Shares of the conformers (of all molecules together) that pass our checks and posebusters'."""
    valid, checked, pb_valid, pb_checked = (sum(o.validity[k] for o in outcomes) for k in range(4))
    return {"valid": valid / checked if checked else None, "pb_valid": pb_valid / pb_checked if pb_checked else None,
            "pb_checked": pb_checked}


def _ensemble_summary(outcomes: list[_Outcome], threshold: float, thresholds: np.ndarray) -> tuple[dict, np.ndarray]:
    rows, curves = [], []
    for o in outcomes:
        if o.rmsd is None:  # a failed molecule counts COV 0, and has no MAT
            rows.append({"cov_r": 0.0, "mat_r": math.nan, "cov_p": 0.0, "mat_p": math.nan})
            curves.append(np.zeros(len(thresholds)))
        else:
            rows.append(coverage_matching(o.rmsd, threshold))
            curves.append(coverage_curve(o.rmsd, thresholds)["cov_r"])
    summary = {}
    for name in ("cov_r", "mat_r", "cov_p", "mat_p"):
        values = [r[name] for r in rows]
        summary[f"{name}_mean"] = _nan_stat(values, np.mean)
        summary[f"{name}_median"] = _nan_stat(values, np.median)
    summary["failures"] = sum(o.rmsd is None for o in outcomes)
    summary["confs_per_cpu_s"] = _finite_or_none(_speed(outcomes))
    return summary | _validity_summary(outcomes), np.mean(curves, axis=0)


def _bioactive_summary(outcomes: list[_Outcome], thresholds: np.ndarray) -> tuple[dict, np.ndarray]:
    best = np.array([np.nanmin(o.rmsd) if o.rmsd is not None else math.inf for o in outcomes])
    summary = {f"within_{t:.1f}".replace(".", "_"): float(np.mean(best <= t)) for t in BIOACTIVE_THRESHOLDS}
    summary["median_min_rmsd"] = _finite_or_none(float(np.median(best))) if len(best) else None
    summary["failures"] = int(np.sum(~np.isfinite(best)))
    summary["confs_per_cpu_s"] = _finite_or_none(_speed(outcomes))
    return summary | _validity_summary(outcomes), np.mean(best[None, :] <= thresholds[:, None], axis=1)


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
    parser.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
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
    _check_methods(args.method)


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
    records = _read_records(source)
    if bioactive:  # every record is one ligand pose
        molecules = {f"{i}:{_molecule_key(m)}": [m] for i, m in enumerate(records)}
        lookup = {k: k.split(":", 1)[1] for k in molecules}
    else:
        molecules = _group(records)
        lookup = {k: k for k in molecules}
    missing = {k for k in molecules if any(lookup[k] not in f for f in files.values())}
    if missing:
        print(f"benchmark: {len(missing)} of {len(molecules)} molecules are absent from a {FILE_PREFIX} file "
              "and are left out for every method", file=sys.stderr)
    molecules = {k: v for k, v in molecules.items() if k not in missing}
    if args.max_molecules is not None:
        molecules = dict(list(molecules.items())[: args.max_molecules])
    if not molecules:
        print("benchmark: no molecules to evaluate", file=sys.stderr)
        return 1
    files = {m: {k: f[lookup[k]] for k in molecules} for m, f in files.items()}
    num_confs = (lambda k: args.num_confs) if bioactive else (lambda k: 2 * k)
    pb_sample = args.pb_sample
    if pb_sample and importlib.util.find_spec("posebusters") is None:
        print("benchmark: posebusters is not installed (pip install confdiff[validate]): no pb_valid", file=sys.stderr)
        pb_sample = 0
    jobs = _make_jobs(molecules, args.method, files, num_confs, args.seed, args.model, pb_sample, args.steps)
    outcomes = _run_jobs(jobs, args.num_workers)

    thresholds = np.linspace(0.0, _CURVE_MAX, _CURVE_POINTS)
    order = {k: i for i, k in enumerate(molecules)}
    results, curves = {}, {}
    for method in args.method:
        mine = sorted((o for o in outcomes if o.method == method), key=lambda o: order[o.key])
        if bioactive:
            results[method], curves[method] = _bioactive_summary(mine, thresholds)
        else:
            results[method], curves[method] = _ensemble_summary(mine, args.threshold, thresholds)

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
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        ylabel = "share of ligands within threshold" if bioactive else "COV-R (mean over molecules)"
        _plot(args.plot, thresholds, curves, ylabel, None if bioactive else args.threshold)
    return 0
