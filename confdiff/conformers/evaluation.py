"""Conformer generators side by side on reference ensembles or crystal poses: the methods, the jobs
and their parallel runner, and the summaries behind ``confdiff benchmark`` (``cli/benchmark.py``).

Ensemble mode (the GEOM protocol, Ganea et al. 2021; Jing et al. 2022): reference conformers are
grouped by molecule (the ``mol_id`` property, else the canonical SMILES); every method makes 2K
conformers for a molecule with K references (or reads them from a file), and COV-R, MAT-R, COV-P,
MAT-P are summarised as mean and median over molecules, with failures and conformers per CPU second.
Next to them, the share of generated conformers that pass PoseBusters' ``mol`` checks: ``valid``
from :class:`confdiff.chem.validity.ValidityChecker` for every conformer (without the internal-energy
check, with the stereo check), and ``pb_valid`` from the ``posebusters`` package itself (the
``validate`` extra; slow, so on ``pb_sample`` conformers per molecule and method).
Bioactive mode: N conformers per crystal ligand, and the share of ligands whose smallest heavy-atom
RMSD is within 0.5, 1.0 and 2.0 A, and the median smallest RMSD.

When a ``file:`` method is given, only the molecules present in every such file are compared (for
all methods alike): a file of published outputs often covers a subset of the references.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from .. import __version__
from ..chem.metrics import coverage_curve, coverage_matching, rmsd_matrix

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "BIOACTIVE_THRESHOLDS",
    "CONFDIFF_METHODS",
    "CURVE_THRESHOLDS",
    "DEFAULT_SEED",
    "FILE_PREFIX",
    "METHODS",
    "Job",
    "MethodUnavailable",
    "Outcome",
    "bioactive_summary",
    "check_methods",
    "cpu_seconds",
    "ensemble_summary",
    "generate_confdiff",
    "generate_etkdg",
    "generate_etkdg_gfn2",
    "generate_etkdg_mmff",
    "generate_method",
    "generate_teacher",
    "group_by_molecule",
    "make_jobs",
    "molecule_key",
    "read_records",
    "run_jobs",
    "select_molecules",
    "split_guidance",
    "summarise",
    "validity_counts",
]

DEFAULT_SEED = 0xF00D
FILE_PREFIX = "file:"
BIOACTIVE_THRESHOLDS = (0.5, 1.0, 2.0)
CURVE_THRESHOLDS = (0.0, 3.0, 61)  # coverage curves on [0, 3] A: numpy.linspace's (start, stop, num)


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
def _confdiff_generator(model: str | None, options: tuple[tuple[str, object], ...]):
    try:
        from ..conformers.generator import ConformerGenerator
    except ImportError as exc:
        raise MethodUnavailable(f"confdiff.ConformerGenerator is not importable: {exc}") from exc
    try:
        return ConformerGenerator(model, **dict(options))
    except (FileNotFoundError, ValueError) as exc:
        raise MethodUnavailable(str(exc)) from exc


def generate_confdiff(mol: Chem.Mol, num_confs: int, seed: int, *, model: str | None = None, **options) -> Chem.Mol:
    """The package's diffusion model (the shipped checkpoint when ``model`` is None; one generator per
    process and options); ``options``: ``ConformerGenerator``'s keyword arguments (None: its default),
    e.g. ``mode``, ``guidance``, ``steps``, ``oversample``; ``relax="gfn2"`` minimises every
    conformer with GFN2-xTB afterwards (as torsional diffusion's "+ relaxation" rows)."""
    options = {key: value for key, value in options.items() if value is not None}
    if options.get("relax") == "gfn2":
        return _relax_gfn2(generate_confdiff(mol, num_confs, seed, model=model, **{**options, "relax": None}))
    generator = _confdiff_generator(model, tuple(sorted(options.items())))
    return generator.generate(mol, num_confs, seed=seed)


METHODS: dict[str, Generator] = {
    "etkdg": generate_etkdg,
    "etkdg-mmff": generate_etkdg_mmff,
    "etkdg-gfn2": generate_etkdg_gfn2,
    "teacher": generate_teacher,
}
#: the diffusion model's methods: name -> ``ConformerGenerator`` options; they take ``--model``.
#: ``confdiff-refine`` is the refine mode at its defaults (the package default of sessions 7-10); the
#: refine mode's earlier defaults: ``confdiff-etkdg-seeds`` diffuses from the ETKDG seeds as embedded
#: (before session 7); ``confdiff-first`` keeps the first usable draws, without oversampling (before
#: session 8); ``confdiff-lowest`` keeps the lowest in energy of 1.5 x draws, MMFF94 guidance at 1
#: (session 8's first rule). ``confdiff-polish`` adds the torsion polish (30 steps) and chooses among
#: the lowest 90 % (session 12's candidate default); ``confdiff-polish-both`` chooses from every draw as
#: drawn and as polished (session 13). ``confdiff-seeds10`` gives molecules with flexible rings one seed per
#: 10 draws, as every molecule had before session 14; ``confdiff-small-rings`` embeds the seeds with the
#: small-ring torsion terms of ETKDG (session 15).
CONFDIFF_METHODS: dict[str, dict[str, object]] = {
    "confdiff": {},
    "confdiff-mmff": {"relax": "mmff"},
    "confdiff-gfn2": {"relax": "gfn2"},
    "confdiff-first": {"mode": "refine", "oversample": 1, "guidance_scale": 1.0},
    "confdiff-lowest": {"mode": "refine", "oversample": 1.5, "selection": "energy", "guidance_scale": 1.0},
    "confdiff-etkdg-seeds": {"mode": "refine", "seed_relax": "none", "oversample": 1, "guidance_scale": 1.0},
    "confdiff-refine": {"mode": "refine"},
    "confdiff-polish": {"mode": "torsions", "polish_steps": 30, "diverse_fraction": 0.9},
    "confdiff-polish-both": {"mode": "torsions", "polish_steps": 30, "keep_unpolished": True},
    "confdiff-torsions": {"mode": "torsions"},
    "confdiff-seeds10": {"ring_conformers_per_seed": 10},
    "confdiff-small-rings": {"small_ring_torsions": True},
    "confdiff-full": {"mode": "full"},
    "confdiff-full-mmff": {"mode": "full", "relax": "mmff"},
}


def split_guidance(method: str) -> tuple[str, str | None, float | None]:
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
    name, guidance, scale = split_guidance(method)
    if name in CONFDIFF_METHODS:
        asked = {"guidance": guidance, "guidance_scale": scale, "steps": steps}  # None: the method's or the default
        options = {**CONFDIFF_METHODS[name], **{key: value for key, value in asked.items() if value is not None}}
        return generate_confdiff(mol, num_confs, seed, model=model, **options)
    return METHODS[name](mol, num_confs, seed)


# --- reading ------------------------------------------------------------------------------------
# Reference files are read as they are (no salt stripping or other input policy of
# confdiff.chem.io.read_molecules): the metric must see exactly the published records.


def read_records(path: str) -> tuple[list[Chem.Mol], int]:
    """All readable records of an SDF (``.sdf`` or ``.sdf.gz``), hydrogens kept, and the number of
    unreadable ones (skipped)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    mols, bad = [], 0
    with opener(path, "rb") as handle, rdBase.BlockLogs():
        for mol in Chem.ForwardSDMolSupplier(handle, removeHs=False):
            if mol is None:
                bad += 1
            else:
                mols.append(mol)
    return mols, bad


def molecule_key(mol: Chem.Mol) -> str:
    """The molecule a record belongs to: its ``mol_id`` property, else its canonical SMILES."""
    if mol.HasProp("mol_id"):
        return mol.GetProp("mol_id")
    return Chem.MolToSmiles(Chem.RemoveHs(mol))


def group_by_molecule(records: Iterable[Chem.Mol]) -> dict[str, list[Chem.Mol]]:
    """Records grouped by :func:`molecule_key`, in the order of first appearance."""
    groups: dict[str, list[Chem.Mol]] = {}
    for mol in records:
        groups.setdefault(molecule_key(mol), []).append(mol)
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


def select_molecules(records: Sequence[Chem.Mol], files: dict[str, dict[str, list[Chem.Mol]]], *, bioactive: bool,
                     max_molecules: int | None = None) -> tuple[dict[str, list[Chem.Mol]], dict[str, dict], int]:
    """The molecules to compare: ``(molecules, files, num_missing)``.

    ``molecules`` maps a key to its reference records (bioactive mode: one per ligand pose, keyed
    ``"i:molecule_key"``); those absent from a ``file:`` method's conformers (``files``: method ->
    :func:`group_by_molecule` of its file) are left out for every method (``num_missing`` of them),
    then only the first ``max_molecules`` are kept. The returned ``files`` are keyed like ``molecules``.
    """
    if bioactive:  # every record is one ligand pose
        molecules = {f"{i}:{molecule_key(m)}": [m] for i, m in enumerate(records)}
        lookup = {k: k.split(":", 1)[1] for k in molecules}
    else:
        molecules = group_by_molecule(records)
        lookup = {k: k for k in molecules}
    missing = {k for k in molecules if any(lookup[k] not in f for f in files.values())}
    molecules = {k: v for k, v in molecules.items() if k not in missing}
    if max_molecules is not None:
        molecules = dict(list(molecules.items())[:max_molecules])
    files = {m: {k: f[lookup[k]] for k in molecules} for m, f in files.items()}
    return molecules, files, len(missing)


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One method on one molecule: ``num_confs`` conformers of ``template`` against ``reference``."""

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

    @property
    def fingerprint(self) -> str:
        """What makes two jobs the same computation (a journal's key): the settings, the package version
        (a method's defaults may change between versions) and the size and modification time of a
        checkpoint file, so that a retrained model is not mistaken for the old one."""
        stamp = None
        if self.model is not None and os.path.isfile(self.model):
            stat = os.stat(self.model)
            stamp = [stat.st_size, stat.st_mtime_ns]
        return json.dumps([__version__, self.method, self.key, self.num_confs, self.seed, self.model, stamp,
                           self.pb_sample, self.steps])


@dataclass(frozen=True)
class Outcome:
    """What a :class:`Job` gave: the RMSD matrix to the references, or the error that stopped it."""

    method: str
    key: str
    rmsd: np.ndarray | None  # (K, L), None on failure
    num_generated: int
    cpu_s: float | None  # generation CPU time; None for file: methods
    error: str | None
    validity: tuple[int, int, int, int] = (0, 0, 0, 0)  # valid, checked, posebusters-valid, posebusters-checked


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (xtb runs as one)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def validity_counts(mols: Sequence[Chem.Mol], pb_sample: int) -> tuple[int, int, int, int]:
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


def _run_job(job: Job) -> Outcome:
    start = cpu_seconds()
    cpu_s, num_generated = None, 0
    try:
        if job.generated is None:
            generated = generate_method(job.method, Chem.Mol(job.template), job.num_confs, job.seed, job.model,
                                        job.steps)
            cpu_s = cpu_seconds() - start
            num_generated = generated.GetNumConformers()
        else:
            generated, num_generated = job.generated, sum(m.GetNumConformers() for m in job.generated)
        if num_generated == 0:
            return Outcome(job.method, job.key, None, 0, cpu_s, "no conformers generated")
        rmsd = rmsd_matrix(list(job.reference), generated)
    except Exception as exc:  # noqa: BLE001 -- any failure of one molecule is recorded, the rest go on
        return Outcome(job.method, job.key, None, num_generated, cpu_s, f"{type(exc).__name__}: {exc}")
    validity = validity_counts([generated] if isinstance(generated, Chem.Mol) else list(generated), job.pb_sample)
    if np.isnan(rmsd).all():
        return Outcome(job.method, job.key, None, num_generated, cpu_s, "no generated conformer matches the reference",
                        validity)
    return Outcome(job.method, job.key, rmsd, num_generated, cpu_s, None, validity)


def _one_thread() -> None:
    """Every method runs on one thread (ETKDG, MMFF and torch alike), so CPU times compare."""
    import torch

    torch.set_num_threads(1)


def run_jobs(jobs: list[Job], num_workers: int, *, progress: bool = True, journal: Journal | None = None
             ) -> list[Outcome]:
    """Every job, largest first, in ``num_workers`` processes (1: in this one), each pinned to one
    thread; a molecule that fails is an :class:`Outcome` with its ``error``. ``progress``: a tqdm bar
    on stderr. ``journal``: outcomes found there are reused, new ones appended as they finish."""
    from tqdm import tqdm

    done = journal.done(jobs) if journal is not None else {}
    by_name = {(job.method, job.key): job for job in jobs}
    prints = [job.fingerprint for job in jobs] if done else []
    outcomes = [done[fp] for fp in prints if fp in done]
    todo = [job for job, fp in zip(jobs, prints) if fp not in done] if done else list(jobs)
    todo.sort(key=lambda j: -j.cost)  # largest first, for load balance
    if outcomes:
        print(f"benchmark: {len(outcomes)} of {len(jobs)} jobs taken from {journal.path}", file=sys.stderr)
    bar = tqdm(total=len(todo), unit="job", desc="benchmark", file=sys.stderr, dynamic_ncols=True,
               disable=not progress)

    def finished(outcome: Outcome) -> None:
        if journal is not None:
            journal.record(by_name[outcome.method, outcome.key], outcome)
        outcomes.append(outcome)
        bar.update(1)

    if num_workers <= 1:
        _one_thread()
        for job in todo:
            finished(_run_job(job))
    else:
        with multiprocessing.get_context().Pool(num_workers, initializer=_one_thread) as pool:
            for outcome in pool.imap_unordered(_run_job, todo, chunksize=1):
                finished(outcome)
    bar.close()
    return outcomes


def check_methods(methods: Sequence[str]) -> None:
    """A ``ValueError`` naming an unknown or repeated method (``file:PATH`` methods are not opened here)."""
    for name in methods:
        if not name.startswith(FILE_PREFIX):
            name = split_guidance(name)[0]
        if not name.startswith(FILE_PREFIX) and name not in METHODS and name not in CONFDIFF_METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS) + sorted(CONFDIFF_METHODS)} "
                             f"or {FILE_PREFIX}PATH")
    duplicates = [name for name, count in Counter(methods).items() if count > 1]
    if duplicates:
        raise ValueError(f"method given more than once: {duplicates}")


def make_jobs(molecules: dict[str, list[Chem.Mol]], methods: Sequence[str], files: dict[str, dict],
               num_confs: Callable[[int], int], seed: int, model: str | None = None, pb_sample: int = 0,
               steps: int | None = None) -> list[Job]:
    """One job per molecule and method; ``files``: a ``file:`` method's conformers by molecule key;
    ``num_confs(K)``: conformers to make for a molecule with K references."""
    jobs = []
    for key, records in molecules.items():
        template = _template(records)
        for method in methods:
            generated = tuple(files[method][key]) if method in files else None
            jobs.append(Job(method, key, template, tuple(records), num_confs(len(records)), seed, generated, model,
                             pb_sample, steps))
    return jobs


# --- summaries ----------------------------------------------------------------------------------


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan_stat(values: list[float], fn) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return _finite_or_none(float(fn(kept))) if kept else None


def _speed(outcomes: list[Outcome]) -> float | None:
    cpu = [o.cpu_s for o in outcomes if o.cpu_s is not None]
    if not cpu or sum(cpu) <= 0:
        return None
    return sum(o.num_generated for o in outcomes) / sum(cpu)


def _validity_summary(outcomes: list[Outcome]) -> dict:
    """Shares of the conformers (of all molecules together) that pass our checks and posebusters'."""
    valid, checked, pb_valid, pb_checked = (sum(o.validity[k] for o in outcomes) for k in range(4))
    return {"valid": valid / checked if checked else None, "pb_valid": pb_valid / pb_checked if pb_checked else None,
            "pb_checked": pb_checked}


def ensemble_summary(outcomes: list[Outcome], threshold: float, thresholds: np.ndarray) -> tuple[dict, np.ndarray]:
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


def bioactive_summary(outcomes: list[Outcome], thresholds: np.ndarray) -> tuple[dict, np.ndarray]:
    best = np.array([np.nanmin(o.rmsd) if o.rmsd is not None else math.inf for o in outcomes])
    summary = {f"within_{t:.1f}".replace(".", "_"): float(np.mean(best <= t)) for t in BIOACTIVE_THRESHOLDS}
    summary["median_min_rmsd"] = _finite_or_none(float(np.median(best))) if len(best) else None
    summary["failures"] = int(np.sum(~np.isfinite(best)))
    summary["confs_per_cpu_s"] = _finite_or_none(_speed(outcomes))
    return summary | _validity_summary(outcomes), np.mean(best[None, :] <= thresholds[:, None], axis=1)


def summarise(outcomes: Sequence[Outcome], methods: Sequence[str], molecules: Sequence[str], *, bioactive: bool,
              threshold: float) -> tuple[dict[str, dict], dict[str, np.ndarray], np.ndarray]:
    """``(results, curves, thresholds)``: per method, its summary row (:func:`ensemble_summary` at
    ``threshold``, or :func:`bioactive_summary`) and its curve on ``thresholds`` (``CURVE_THRESHOLDS``),
    the outcomes taken in the order of ``molecules``."""
    thresholds = np.linspace(*CURVE_THRESHOLDS)
    order = {k: i for i, k in enumerate(molecules)}
    results, curves = {}, {}
    for method in methods:
        mine = sorted((o for o in outcomes if o.method == method), key=lambda o: order[o.key])
        if bioactive:
            results[method], curves[method] = bioactive_summary(mine, thresholds)
        else:
            results[method], curves[method] = ensemble_summary(mine, threshold, thresholds)
    return results, curves, thresholds
