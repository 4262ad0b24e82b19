"""Conformer ensembles to train on: the resumable dataset build and the readers.

* ``build_dataset`` (the ``confdiff dataset build`` command): ``chem.ensembles.build_ensemble`` for
  every molecule of a SMILES / SDF file, over worker processes, written shard by shard as
  ``shard-NNNNN.sdf.gz`` with a ``manifest.json`` so that a killed build resumes where it stopped.
* ``load_ensembles(dir)``: the built ensembles back as (molecule with K conformers, weights (K,)).
* ``load_geom_pickle(path)``: one GEOM ``rdkit_folder`` pickle as (molecule, weights).

The featurised, cached dataset that training reads is ``confdiff.conformers.dataset.ConformerDataset``.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rdkit import Chem, rdBase

from ..seeding import derive_seed
from .embed import EmbeddingError
from .ensembles import BuildConfig, Ensemble, EnsembleError, build_ensemble
from .io import SDFWriter, read_molecules
from .relax import HARTREE_TO_KCAL, RelaxationError, XtbNotFoundError
from .stereo import StereoError

__all__ = [
    "ERRORS",
    "MANIFEST",
    "build_dataset",
    "ensemble_files",
    "inchikey_block",
    "load_ensemble_file",
    "load_ensembles",
    "load_geom_pickle",
    "read_exclusion_list",
]

MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
FORMAT = "confdiff-ensembles/1"


# -- one molecule ------------------------------------------------------------------------------------

def inchikey_block(mol: Chem.Mol) -> str:
    """The first (connectivity) block of the standard InChIKey; '' when RDKit cannot make one."""
    with rdBase.BlockLogs():
        key = Chem.MolToInchiKey(mol)
    return key.split("-")[0] if key else ""


# -- the dataset build -------------------------------------------------------------------------------

def read_exclusion_list(path: str | os.PathLike) -> frozenset[str]:
    """InChIKey first blocks, one per line (full keys are cut to their first block; ``#`` comments)."""
    keys = set()
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.add(line.split("-")[0].upper())
    return frozenset(keys)


@dataclass(frozen=True)
class _Candidate:
    index: int  # record number in the input
    name: str
    smiles: str  # canonical SMILES as read (stereochemistry may be unspecified)


def _candidates(
    source: str,
    config: BuildConfig,
    exclude: frozenset[str],
    limit: int | None,
    rejected: list[tuple[int, str, str, str]],
) -> list[_Candidate]:
    """The first ``limit`` usable molecules of ``source`` (read cleanly, small enough, not excluded),
    refusals are appended to ``rejected`` as (index, name, stage, reason)."""
    out: list[_Candidate] = []
    for record in read_molecules(source):
        if limit is not None and len(out) >= limit:
            break
        if record.mol is None:
            rejected.append((record.index, record.name, "read", record.error or ""))
            continue
        mol = record.mol
        if mol.GetNumHeavyAtoms() > config.max_heavy_atoms:
            rejected.append((record.index, record.name, "filter",
                             f"{mol.GetNumHeavyAtoms()} heavy atoms > {config.max_heavy_atoms}"))
            continue
        if exclude and inchikey_block(mol) in exclude:
            rejected.append((record.index, record.name, "filter", "in the exclusion list"))
            continue
        out.append(_Candidate(record.index, record.name, Chem.MolToSmiles(mol)))
    return out


def _molecule_seed(config: BuildConfig, index: int) -> int:
    """The seed of the molecule at input index ``index``, in RDKit's range (not the shard's or the worker's)."""
    return derive_seed(config.seed, index) % (2**31 - 1)


def _build_one(args: tuple[_Candidate, BuildConfig]) -> tuple[_Candidate, Ensemble | None, str | None]:
    """Worker: (candidate, ensemble or None, error)."""
    candidate, config = args
    mol = Chem.MolFromSmiles(candidate.smiles)
    mol.SetProp("_Name", candidate.name)
    try:
        return candidate, build_ensemble(mol, config, seed=_molecule_seed(config, candidate.index)), None
    except (EnsembleError, StereoError, EmbeddingError, RelaxationError) as err:
        return candidate, None, err.reason
    except (RuntimeError, ValueError) as err:  # RDKit raises these for molecules it cannot handle
        return candidate, None, f"{type(err).__name__}: {err}"


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_errors(path: Path, rows: Iterable[Sequence[Any]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write("index\tname\tstage\treason\n")
        for row in rows:
            fh.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in row) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.sdf.gz"


def _load_manifest(out: Path, source: str, config: BuildConfig) -> dict[str, Any]:
    path = out / MANIFEST
    fresh = {"format": FORMAT, "source": source, "config": asdict(config), "shards": {}}
    if not path.exists():
        return fresh
    manifest = json.loads(path.read_text())
    if manifest.get("config") != asdict(config) or manifest.get("source") != source:
        raise ValueError(
            f"{out} holds a build of {manifest.get('source')} with config {manifest.get('config')}; "
            f"this run asks for {source} with {asdict(config)}. Use another output directory."
        )
    return manifest


def build_dataset(
    source: str,
    out: str | os.PathLike,
    config: BuildConfig,
    *,
    exclude: frozenset[str] = frozenset(),
    max_molecules: int | None = None,
    workers: int = 1,
    shard_size: int = 100,
    log=print,
) -> dict[str, Any]:
    """Build ensembles for the molecules of ``source`` into ``out``; returns the manifest.

    Shard k holds candidates k*shard_size .. (k+1)*shard_size - 1 (candidates: the input records
    that read cleanly, fit ``max_heavy_atoms`` and are not excluded). Shards already listed in
    ``out/manifest.json`` are skipped, so rerunning the same command resumes a killed build (whose
    temporary files it removes), and raising ``max_molecules`` extends a finished one.
    """
    if workers < 1 or shard_size < 1:
        raise ValueError(f"workers and shard_size must be >= 1, got {workers} and {shard_size}")
    if config.relax in ("gfnff", "gfn2") and shutil.which("xtb") is None:
        raise XtbNotFoundError()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_id = str(Path(source).resolve()) if os.path.exists(source) else source
    manifest = _load_manifest(out, source_id, config)
    for stale in out.glob(".*.tmp"):  # a killed build's half-written shard or manifest
        stale.unlink()
    rejected: list[tuple[int, str, str, str]] = []
    candidates = _candidates(source, config, exclude, max_molecules, rejected)
    shards = [candidates[i : i + shard_size] for i in range(0, len(candidates), shard_size)]

    def done(k: int) -> bool:
        entry = manifest["shards"].get(_shard_name(k))
        return entry is not None and entry["first_index"] == shards[k][0].index and entry["candidates"] == len(shards[k])

    todo = [k for k in range(len(shards)) if not done(k)]
    for k in todo:  # a partial last shard of an earlier, smaller build is rebuilt
        manifest["shards"].pop(_shard_name(k), None)
    log(f"{len(candidates)} molecules in {len(shards)} shards ({len(rejected)} input records refused); "
        f"{len(shards) - len(todo)} shards done, {len(todo)} to build")

    def shard_errors() -> list[Sequence[Any]]:
        rows = list(rejected)
        for entry in manifest["shards"].values():
            rows.extend(entry["errors"])
        return sorted(rows, key=lambda r: int(r[0]))

    _write_errors(out / ERRORS, shard_errors())
    jobs = ((c, config) for k in todo for c in shards[k])
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(_build_one, jobs) if pool else map(_build_one, jobs)
    try:
        for k in todo:
            start = time.time()
            stats = {"first_index": shards[k][0].index, "candidates": len(shards[k]),
                     "molecules": 0, "conformers": 0, "failed": 0, "errors": []}
            with SDFWriter(out / _shard_name(k)) as writer:
                for _ in shards[k]:
                    candidate, ensemble, error = next(results)
                    if ensemble is None:
                        stats["failed"] += 1
                        stats["errors"].append([candidate.index, candidate.name, "build", error])
                        continue
                    writer.write(
                        ensemble.mol,
                        name=candidate.name,
                        props={"mol_id": candidate.index, "smiles": ensemble.smiles, "embed_method": ensemble.method},
                        conf_props=[
                            {"energy": f"{e:.6f}", "relative_energy": f"{e - ensemble.energies[0]:.6f}",
                             "boltzmann_weight": f"{w:.8g}"}
                            for e, w in zip(ensemble.energies, ensemble.weights)
                        ],
                    )
                    stats["molecules"] += 1
                    stats["conformers"] += len(ensemble.energies)
            stats["seconds"] = round(time.time() - start, 2)
            manifest["shards"][_shard_name(k)] = stats
            _write_json_atomic(out / MANIFEST, manifest)
            _write_errors(out / ERRORS, shard_errors())
            rate = len(shards[k]) / max(stats["seconds"], 1e-9) * 60
            log(f"{_shard_name(k)}: {stats['molecules']} molecules, {stats['conformers']} conformers, "
                f"{stats['failed']} failed, {stats['seconds']:.0f} s ({rate:.1f} molecules/min)")
    finally:
        if pool is not None:
            pool.terminate()
    return manifest


# -- reading ensembles back --------------------------------------------------------------------------

def _read_sdf_records(path: Path) -> Iterator[Chem.Mol]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for mol in Chem.ForwardSDMolSupplier(fh, removeHs=False):
            if mol is not None:
                yield mol


def _group_records(records: Iterable[Chem.Mol], where: str) -> Iterator[tuple[Chem.Mol, np.ndarray]]:
    """Consecutive records sharing ``mol_id`` (else canonical SMILES) become one multi-conformer mol."""
    def key(m: Chem.Mol) -> str:
        return m.GetProp("mol_id") if m.HasProp("mol_id") else Chem.MolToSmiles(Chem.RemoveHs(m))

    def finish(group: list[Chem.Mol]) -> tuple[Chem.Mol, np.ndarray]:
        mol = Chem.Mol(group[0])
        mol.RemoveAllConformers()
        weights = []
        for k, record in enumerate(group):
            if [a.GetAtomicNum() for a in record.GetAtoms()] != [a.GetAtomicNum() for a in mol.GetAtoms()]:
                raise ValueError(f"{where}: conformer {k} of {key(group[0])} has a different atom order")
            conf = Chem.Conformer(record.GetConformer())
            conf.SetId(k)
            if record.HasProp("energy"):
                conf.SetDoubleProp("energy", float(record.GetProp("energy")))
            mol.AddConformer(conf, assignId=False)
            weights.append(float(record.GetProp("boltzmann_weight")) if record.HasProp("boltzmann_weight") else 1.0)
        w = np.asarray(weights, dtype=np.float64)
        return mol, w / w.sum()

    group: list[Chem.Mol] = []
    for record in records:
        if group and key(record) != key(group[0]):
            yield finish(group)
            group = []
        group.append(record)
    if group:
        yield finish(group)


def ensemble_files(directory: Path) -> list[Path]:
    """The files holding a directory's ensembles: the manifest's completed shards, else every
    ``*.sdf`` / ``*.sdf.gz`` (grouped by ``mol_id``) and GEOM ``*.pickle`` file, sorted."""
    manifest = directory / MANIFEST
    if manifest.exists():
        return [directory / name for name in sorted(json.loads(manifest.read_text())["shards"])]
    files = [p for p in directory.iterdir() if p.name.endswith((".sdf", ".sdf.gz", ".pickle", ".pkl"))]
    return sorted(files)


def load_ensemble_file(path: Path) -> Iterator[tuple[Chem.Mol, np.ndarray]]:
    if path.name.endswith((".pickle", ".pkl")):
        yield load_geom_pickle(path)
    else:
        yield from _group_records(_read_sdf_records(path), str(path))


def load_ensembles(directory: str | os.PathLike) -> Iterator[tuple[Chem.Mol, np.ndarray]]:
    """Yield ``(mol with K conformers, weights (K,))`` for every molecule of a built dataset
    (or a folder of multi-conformer SDF files / GEOM pickles). Conformers carry their ``energy``
    as a double property when known; ``mol`` keeps the records' ``mol_id`` and ``smiles`` props."""
    for path in ensemble_files(Path(directory)):
        yield from load_ensemble_file(path)


def load_geom_pickle(path: str | os.PathLike) -> tuple[Chem.Mol, np.ndarray]:
    """One GEOM ``rdkit_folder`` pickle (``{"smiles", "conformers": [{"rd_mol", "boltzmannweight",
    "totalenergy"}]}``) as ``(mol with K conformers, weights (K,))``; energies (Hartree, GEOM's
    ``totalenergy``) kept as the conformers' ``energy`` property in kcal/mol."""
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    confs = data.get("conformers") or []
    if not confs:
        raise EnsembleError(str(path), "the pickle holds no conformers")
    mol = Chem.Mol(confs[0]["rd_mol"])
    mol.RemoveAllConformers()
    elements = [a.GetAtomicNum() for a in mol.GetAtoms()]
    weights = []
    for k, entry in enumerate(confs):
        rd = entry["rd_mol"]
        if [a.GetAtomicNum() for a in rd.GetAtoms()] != elements:
            raise EnsembleError(str(path), f"conformer {k} has a different atom order")
        conf = Chem.Conformer(rd.GetConformer())
        conf.SetId(k)
        if "totalenergy" in entry:
            conf.SetDoubleProp("energy", float(entry["totalenergy"]) * HARTREE_TO_KCAL)
        mol.AddConformer(conf, assignId=False)
        weights.append(float(entry.get("boltzmannweight", 1.0)))
    mol.SetProp("smiles", data.get("smiles", Chem.MolToSmiles(Chem.RemoveHs(mol))))
    mol.SetProp("mol_id", mol.GetProp("smiles"))
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or w.sum() <= 0:
        w = np.ones(len(confs))
    return mol, w / w.sum()
