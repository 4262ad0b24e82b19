"""Build GFN2-xTB reference conformer ensembles for GEOM test molecules.

GEOM's reference ensembles come from CREST metadynamics with GFN2-xTB (Axelrod and Gomez-Bombarelli,
Sci. Data 9, 185, 2022). CREST is out of reach here, so each molecule's ensemble is built as:

1. its ``corrected_smiles`` (stereochemistry kept; unspecified centres fixed to one embeddable
   stereoisomer), ``num_seeds`` ETKDGv3 conformers;
2. GFN-FF optimisation of all of them; conformers whose 3D stereochemistry no longer matches the
   graph are dropped (here and after step 3);
3. those within ``ff_window`` kcal/mol of the GFN-FF minimum, duplicates removed (below), at most
   ``max_gfn2`` of them (the lowest), optimised with GFN2-xTB (``--chrg`` from the formal charges);
4. an ``energy_window`` kcal/mol window above the GFN2 minimum, and duplicates removed again;
5. Boltzmann weights at 298.15 K, and a GFN2 single point for each conformer's dipole and gap.

A duplicate, as in CREST: a conformer within ``rmsd`` A heavy-atom RMSD *and* ``energy_tol``
kcal/mol of a lower one kept (greedy in order of energy); so rotamers of OH / NH groups, equal in
heavy-atom RMSD but not in energy, stay distinct.

Molecules run in parallel (``--workers``), each finished one is written to its own file in
``OUT/{set}_gfn2.work/``, so a killed run continues where it stopped when the same command is
run again; ``--num-molecules`` may grow between runs (the draw is a fixed permutation). When every
drawn molecule is done, ``OUT/{set}_gfn2.sdf.gz`` is assembled atomically. In the background::

    nohup python scripts/build_reference.py --set drugs --workers 2 --nice 19 >> data/reference/drugs_gfn2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

from confdiff.chem.ensembles import EnsembleError, boltzmann_weights, prune_conformers, subset_conformers
from confdiff.chem.stereo import fix_stereo, stereo_smiles
from confdiff.chem.embed import DEFAULT_SEED, EmbeddingError, embed_etkdg
from confdiff.chem.io import SDFWriter
from confdiff.chem.properties import XtbError, xtb_single_point
from confdiff.chem.relax import RelaxationError, XtbNotFoundError, relax_xtb

ROOT = Path(__file__).resolve().parents[1]
TEST_SETS = ROOT.parent / "shared" / "data" / "geom_test_sets"
SETS = {"drugs": {"num_molecules": 50, "num_seeds": 300}, "qm9": {"num_molecules": 100, "num_seeds": 50}}


@dataclass(frozen=True)
class ReferenceConfig:
    """How one molecule's ensemble is built (saved beside the results; a resumed build must match)."""

    num_seeds: int = 300  # ETKDGv3 conformers per molecule
    ff_window: float = 10.0  # kcal/mol above the GFN-FF minimum that go on to GFN2
    max_gfn2: int = 150  # GFN2 optimisations per molecule at most (the lowest GFN-FF ones)
    energy_window: float = 6.0  # kcal/mol above the GFN2 minimum
    rmsd: float = 0.125  # A, heavy-atom RMSD of a duplicate (with energy_tol)
    energy_tol: float = 0.05  # kcal/mol, energy difference of a duplicate (with rmsd)
    temperature: float = 298.15  # K
    embed_timeout: int = 300  # s of ETKDG per molecule

    def __post_init__(self) -> None:
        for name in ("num_seeds", "max_gfn2", "embed_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ff_window", "energy_window", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("rmsd", "energy_tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Target:
    """A drawn test molecule: ``mol_id`` is its 0-based row in the test-set CSV."""

    mol_id: int
    smiles: str
    geom_conformers: int  # K of GEOM's CREST ensemble


@dataclass(frozen=True)
class ReferenceEnsemble:
    """K conformers (ids 0..K-1, increasing energy) with energies and gaps (kcal/mol), dipoles (D),
    Boltzmann weights (K,), the stereo-fixed canonical SMILES and counts of each stage."""

    mol: Chem.Mol
    smiles: str
    energies: np.ndarray
    weights: np.ndarray
    dipoles: np.ndarray
    gaps: np.ndarray
    counts: dict[str, int]


# -- one molecule ------------------------------------------------------------------------------------

def _optimise(mol: Chem.Mol, conf_ids: Sequence[int], method: str, stereo: str) -> tuple[list[tuple[float, int]], int]:
    """xtb optimisation in place: ([(energy, conformer id)] sorted by energy, number dropped), leaving
    out conformers that xtb could not optimise or whose 3D stereochemistry differs from ``stereo``."""
    done = []
    for cid in conf_ids:
        try:
            energy = relax_xtb(mol, cid, method=method)
        except RelaxationError:
            continue
        if stereo_smiles(mol, cid) == stereo:
            done.append((energy, cid))
    return sorted(done), len(conf_ids) - len(done)


def build_reference_ensemble(smiles: str, config: ReferenceConfig, *, seed: int, name: str = "") -> ReferenceEnsemble:
    """Steps 1-5 of the module docstring for one molecule.

    Raises ``EnsembleError`` (or ``EmbeddingError``, ``XtbError``) with the reason when no ensemble
    can be built.
    """
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    name = name or smiles
    if mol is None:
        raise EnsembleError(name, "RDKit cannot parse the SMILES")
    mol.SetProp("_Name", name)
    mol = fix_stereo(mol, seed)
    embedded = embed_etkdg(mol, config.num_seeds, seed=seed, timeout=config.embed_timeout)
    work, stereo = embedded.mol, stereo_smiles(embedded.mol)

    ff, ff_dropped = _optimise(work, embedded.conf_ids, "gfnff", stereo)
    if not ff:
        raise EnsembleError(name, f"none of {len(embedded.conf_ids)} conformers survived GFN-FF")
    ff = [(e, cid) for e, cid in ff if e - ff[0][0] <= config.ff_window]
    ff_ids = [cid for _, cid in ff]
    candidates = prune_conformers(work, config.rmsd, ff_ids, energies=[e for e, _ in ff],
                                  energy_tol=config.energy_tol)[: config.max_gfn2]

    gfn2, gfn2_dropped = _optimise(work, candidates, "gfn2", stereo)
    if not gfn2:
        raise EnsembleError(name, f"none of {len(candidates)} conformers survived GFN2-xTB")
    window = [(e, cid) for e, cid in gfn2 if e - gfn2[0][0] <= config.energy_window]
    ids = [cid for _, cid in window]
    energies = np.array([e for e, _ in window])
    kept = prune_conformers(work, config.rmsd, ids, energies=energies, energy_tol=config.energy_tol)
    keep = [ids.index(cid) for cid in kept]
    final = subset_conformers(work, [ids[i] for i in keep])
    props = [xtb_single_point(final, k) for k in range(final.GetNumConformers())]
    energies = energies[keep]
    counts = {"num_seeds": len(embedded.conf_ids), "ff_dropped": ff_dropped, "num_gfn2": len(candidates),
              "gfn2_dropped": gfn2_dropped, "num_conformers": len(keep)}
    return ReferenceEnsemble(
        mol=final,
        smiles=Chem.MolToSmiles(mol),
        energies=energies,
        weights=boltzmann_weights(energies, config.temperature),
        dipoles=np.array([p.dipole for p in props]),
        gaps=np.array([p.gap for p in props]),
        counts=counts,
    )


# -- drawing the molecules ---------------------------------------------------------------------------

def draw_targets(path: str | os.PathLike, num: int, seed: int, max_heavy_atoms: int = 40) -> list[Target]:
    """The first ``num`` usable rows of a GEOM test-set CSV in a permutation fixed by ``seed``.

    Usable: ``corrected_smiles`` parses, is one fragment and has at most ``max_heavy_atoms`` heavy
    atoms. A larger ``num`` extends the same list.
    """
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: list[Target] = []
    for i in np.random.default_rng(seed).permutation(len(rows)):
        if len(out) == num:
            break
        row = rows[int(i)]
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(row["corrected_smiles"])
        if mol is None or len(Chem.GetMolFrags(mol)) > 1 or mol.GetNumHeavyAtoms() > max_heavy_atoms:
            continue
        out.append(Target(int(i), row["corrected_smiles"], int(row["n_conformers"])))
    return out


# -- the resumable build -----------------------------------------------------------------------------

def _part(work: Path, mol_id: int) -> Path:
    return work / f"{mol_id:04d}.sdf.gz"


def _failure(work: Path, mol_id: int) -> Path:
    return work / f"{mol_id:04d}.failed"


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the xtb runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _molecule_seed(seed: int, mol_id: int) -> int:
    return (seed + 7919 * mol_id) % (2**31 - 1)


def _build_target(job: tuple[Target, ReferenceConfig, int, Path, str]) -> str:
    """Worker: build one molecule and write its part (or failure) file; returns a log line."""
    target, config, seed, work, set_name = job
    start = _cpu_seconds()
    name = f"{set_name}-{target.mol_id}"
    try:
        ens = build_reference_ensemble(target.smiles, config, seed=_molecule_seed(seed, target.mol_id), name=name)
    except (EnsembleError, EmbeddingError, XtbError) as err:
        reason = err.reason
    except (RuntimeError, ValueError) as err:  # RDKit raises these for molecules it cannot handle
        reason = f"{type(err).__name__}: {err}"
    else:
        cpu = _cpu_seconds() - start
        with SDFWriter(_part(work, target.mol_id)) as writer:
            writer.write(
                ens.mol,
                name=name,
                props={"mol_id": target.mol_id, "smiles": ens.smiles, "geom_n_conformers": target.geom_conformers,
                       **ens.counts, "cpu_s": f"{cpu:.1f}"},
                conf_props=[
                    {"energy": f"{e:.6f}", "relative_energy": f"{e - ens.energies[0]:.6f}",
                     "boltzmann_weight": f"{w:.8g}", "dipole": f"{d:.4f}", "homo_lumo_gap": f"{g:.4f}"}
                    for e, w, d, g in zip(ens.energies, ens.weights, ens.dipoles, ens.gaps)
                ],
            )
        return (f"{name}: {len(ens.energies)} conformers (GEOM {target.geom_conformers}), "
                f"{ens.counts['num_gfn2']} GFN2 runs, {cpu:.0f} CPU s")
    _failure(work, target.mol_id).write_text(reason + "\n")
    return f"{name}: FAILED ({reason}), {_cpu_seconds() - start:.0f} CPU s"


def _run_config(source: Path, set_name: str, seed: int, max_heavy_atoms: int, config: ReferenceConfig) -> dict:
    return {"set": set_name, "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "seed": seed,
            "max_heavy_atoms": max_heavy_atoms, "config": asdict(config)}


def _check_config(work: Path, run: dict) -> None:
    path = work / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != run:
            raise ValueError(f"{work} holds a build with {saved}; this run asks for {run}. Use another --out.")
    else:
        path.write_text(json.dumps(run, indent=1) + "\n")


def assemble(targets: Sequence[Target], work: Path, out: Path) -> tuple[int, int]:
    """Concatenate the finished parts in draw order into ``out`` (atomically) and list the failures
    beside it as ``*.failed.tsv``; returns (molecules written, failures)."""
    tmp = out.with_name(f".{out.name}.tmp")
    failures = []
    written = 0
    with open(tmp, "wb") as dst:
        for t in targets:
            part = _part(work, t.mol_id)
            if part.exists():
                with open(part, "rb") as src:  # gzip members concatenate into a valid gzip file
                    shutil.copyfileobj(src, dst)
                written += 1
            else:
                failures.append(f"{t.mol_id}\t{t.smiles}\t{_failure(work, t.mol_id).read_text().strip()}\n")
    failed_tsv = out.with_name(out.name.replace(".sdf.gz", ".failed.tsv"))
    tmp_tsv = failed_tsv.with_name(f".{failed_tsv.name}.tmp")
    tmp_tsv.write_text("mol_id\tsmiles\treason\n" + "".join(failures))
    os.replace(tmp, out)
    os.replace(tmp_tsv, failed_tsv)
    return written, len(failures)


def build_set(
    targets: Sequence[Target],
    out: Path,
    set_name: str,
    config: ReferenceConfig,
    *,
    seed: int,
    workers: int = 1,
    run_config: dict,
    log=print,
) -> Path | None:
    """Build the missing molecules of ``targets`` into ``out/{set}_gfn2.work/`` and, when all are
    done, assemble ``out/{set}_gfn2.sdf.gz``; returns its path (None when molecules are missing)."""
    work = out / f"{set_name}_gfn2.work"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another build is running in {work}") from None
        _check_config(work, run_config)
        for stale in work.glob(".*.tmp"):  # left by a killed run
            stale.unlink()
        todo = [t for t in targets if not _part(work, t.mol_id).exists() and not _failure(work, t.mol_id).exists()]
        log(f"{set_name}: {len(targets)} molecules, {len(targets) - len(todo)} done, {len(todo)} to build")
        jobs = [(t, config, seed, work, set_name) for t in todo]
        pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 1 else None
        try:
            results = pool.imap_unordered(_build_target, jobs) if pool else map(_build_target, jobs)
            for k, line in enumerate(results, 1):
                log(f"[{k}/{len(jobs)}] {line}")
        finally:
            if pool is not None:
                pool.terminate()
        missing = [t for t in targets if not _part(work, t.mol_id).exists() and not _failure(work, t.mol_id).exists()]
        if missing:
            log(f"{len(missing)} molecules unfinished; not assembling")
            return None
        path = out / f"{set_name}_gfn2.sdf.gz"
        written, failed = assemble(targets, work, path)
        log(f"wrote {path}: {written} molecules, {failed} failed")
        return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", required=True, choices=sorted(SETS), help="GEOM test set")
    parser.add_argument("--num-molecules", type=int, help="molecules to draw (drugs 50, qm9 100)")
    parser.add_argument("--num-seeds", type=int, help="ETKDG conformers per molecule (drugs 300, qm9 50)")
    parser.add_argument("--max-gfn2", type=int, default=ReferenceConfig.max_gfn2,
                        help=f"GFN2 optimisations per molecule at most ({ReferenceConfig.max_gfn2})")
    parser.add_argument("--max-heavy-atoms", type=int, default=40, help="skip larger molecules (40)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"draw and embedding seed ({DEFAULT_SEED:#x})")
    parser.add_argument("--csv", type=Path,
                        help="test-set CSV (default ../shared/data/geom_test_sets/SET_test_smiles.csv)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "reference", help="output folder (data/reference)")
    parser.add_argument("--workers", type=int, default=1, help="molecules built in parallel, one xtb thread each (1)")
    parser.add_argument("--nice", type=int, default=0,
                        help="raise the niceness of this process, its workers and xtb by N (0)")
    args = parser.parse_args(argv)
    defaults = SETS[args.set]
    source = args.csv or TEST_SETS / f"{args.set}_test_smiles.csv"
    num = args.num_molecules or defaults["num_molecules"]
    try:
        if num < 1 or args.workers < 1:
            raise ValueError(f"--num-molecules and --workers must be >= 1, got {num} and {args.workers}")
        config = ReferenceConfig(num_seeds=args.num_seeds or defaults["num_seeds"], max_gfn2=args.max_gfn2)
        if shutil.which("xtb") is None:
            raise XtbNotFoundError()
        if not source.is_file():
            raise FileNotFoundError(f"no test-set CSV at {source}")
    except (ValueError, FileNotFoundError) as err:
        print(f"build_reference: {err}", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(args.nice)
    targets = draw_targets(source, num, args.seed, args.max_heavy_atoms)
    run_config = _run_config(source, args.set, args.seed, args.max_heavy_atoms, config)

    def log(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    try:
        path = build_set(targets, args.out, args.set, config, seed=args.seed, workers=args.workers,
                         run_config=run_config, log=log)
    except (RuntimeError, ValueError) as err:
        print(f"build_reference: {err}", file=sys.stderr)
        return 1
    return 0 if path is not None else 1


if __name__ == "__main__":
    sys.exit(main())
