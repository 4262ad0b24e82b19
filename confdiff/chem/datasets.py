"""Conformer ensembles to train on: building them, reading them back, and a cached dataset.

* ``build_ensemble`` / ``build_dataset`` (the ``confdiff dataset build`` command): ETKDGv3 seeds,
  relaxation (MMFF94, GFN-FF or GFN2-xTB), an energy window, heavy-atom symmetry-aware RMSD pruning
  and Boltzmann weights at 298.15 K, written shard by shard as ``shard-NNNNN.sdf.gz`` with a
  ``manifest.json`` so that a killed build resumes where it stopped.
* ``load_ensembles(dir)``: the built ensembles back as (molecule with K conformers, weights (K,)).
* ``load_geom_pickle(path)``: one GEOM ``rdkit_folder`` pickle as (molecule, weights).
* ``ConformerDataset``: ``(MolGraph, pos_ensemble (K, N, 3), weights (K,))`` per molecule,
  featurised once and cached on disk with ``torch.save``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom, rdMolAlign
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

from .embed import EmbeddingError, embed_etkdg
from .io import SDFWriter, read_molecules
from .relax import RelaxationError, XtbNotFoundError, relax_mmff, relax_xtb

__all__ = [
    "BOLTZMANN_KCAL",
    "BuildConfig",
    "ConformerDataset",
    "Ensemble",
    "EnsembleError",
    "add_arguments",
    "boltzmann_weights",
    "build_dataset",
    "build_ensemble",
    "inchikey_block",
    "load_ensembles",
    "load_geom_pickle",
    "read_exclusion_list",
    "run",
]

BOLTZMANN_KCAL = 0.0019872042586  # kcal/(mol K)
MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
FORMAT = "confdiff-ensembles/1"
RELAX_METHODS = ("mmff", "gfnff", "gfn2")


class EnsembleError(RuntimeError):
    """A molecule for which no ensemble could be built, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot build an ensemble for {name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class BuildConfig:
    """How each molecule's ensemble is built (saved in the manifest; a resumed build must match)."""

    num_conformers: int = 30  # at most this many kept per molecule
    oversample: int = 1  # ETKDG seeds embedded per kept conformer: oversample * num_conformers in all
    relax: str = "mmff"
    energy_window: float = 10.0  # kcal/mol above the lowest conformer
    prune_rms: float = 0.5  # heavy-atom symmetry-aware RMSD, Angstrom
    max_heavy_atoms: int = 40
    temperature: float = 298.15  # K, for the Boltzmann weights
    seed: int = 0xF00D
    embed_timeout: int = 120  # seconds of ETKDG per molecule

    def __post_init__(self) -> None:
        if self.num_conformers < 1:
            raise ValueError(f"num_conformers must be >= 1, got {self.num_conformers}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.relax not in RELAX_METHODS:
            raise ValueError(f"relax must be one of {RELAX_METHODS}, got {self.relax!r}")
        if self.energy_window <= 0:
            raise ValueError(f"energy_window must be positive, got {self.energy_window}")
        if self.prune_rms < 0:
            raise ValueError(f"prune_rms must be >= 0, got {self.prune_rms}")
        if self.max_heavy_atoms < 1:
            raise ValueError(f"max_heavy_atoms must be >= 1, got {self.max_heavy_atoms}")
        if self.embed_timeout <= 0:
            raise ValueError(f"embed_timeout must be positive, got {self.embed_timeout}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class Ensemble:
    """A built ensemble: ``mol`` holds the K kept conformers (ids 0..K-1) in increasing energy.

    energies : (K,) kcal/mol; weights : (K,) Boltzmann weights summing to 1; method : embedding
    path; smiles : canonical isomeric SMILES of the graph (stereochemistry fixed).
    """

    mol: Chem.Mol
    energies: np.ndarray
    weights: np.ndarray
    method: str
    smiles: str


# -- one molecule ------------------------------------------------------------------------------------

def inchikey_block(mol: Chem.Mol) -> str:
    """The first (connectivity) block of the standard InChIKey; '' when RDKit cannot make one."""
    with rdBase.BlockLogs():
        key = Chem.MolToInchiKey(mol)
    return key.split("-")[0] if key else ""


def boltzmann_weights(energies: Sequence[float], temperature: float = 298.15) -> np.ndarray:
    """Normalised ``exp(-(E - E_min) / kT)`` for energies in kcal/mol; shape (K,)."""
    e = np.asarray(energies, dtype=np.float64)
    w = np.exp(-(e - e.min()) / (BOLTZMANN_KCAL * temperature))
    return w / w.sum()


def _name(mol: Chem.Mol) -> str:
    return mol.GetProp("_Name") if mol.HasProp("_Name") else Chem.MolToSmiles(mol)


def _embeds(mol: Chem.Mol, seed: int) -> bool:
    """Whether ETKDGv3 places one conformer within 20 attempts: geometrically impossible
    stereoisomers (an inverted bridgehead) fail this quickly and deterministically."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.maxIterations = 20
    params.timeout = 10
    return len(rdDistGeom.EmbedMultipleConfs(Chem.AddHs(mol), 1, params)) == 1


def _fix_stereo(mol: Chem.Mol, seed: int) -> Chem.Mol:
    """Pick one embeddable stereoisomer (seeded order) for unspecified centres and double bonds,
    so that every conformer of the ensemble has the stereochemistry of the graph it trains."""
    options = StereoEnumerationOptions(onlyUnassigned=True, unique=True, maxIsomers=64)
    isomers = list(EnumerateStereoisomers(mol, options=options))
    if len(isomers) <= 1:
        return Chem.Mol(isomers[0]) if isomers else mol
    random.Random(seed).shuffle(isomers)
    for isomer in isomers:
        if _embeds(isomer, seed):
            return Chem.Mol(isomer)
    raise EnsembleError(_name(mol), f"none of its {len(isomers)} stereoisomers embeds")


def _stereo_smiles(mol: Chem.Mol, conf_id: int | None = None) -> str:
    """Canonical isomeric SMILES; with ``conf_id``, the stereochemistry perceived from that conformer."""
    work = Chem.Mol(mol) if conf_id is None else Chem.Mol(mol, confId=conf_id)
    if conf_id is not None:
        Chem.AssignStereochemistryFrom3D(work)
    return Chem.MolToSmiles(Chem.RemoveHs(work))


def _relax(mol: Chem.Mol, conf_ids: Sequence[int], method: str) -> list[float]:
    if method == "mmff":
        return relax_mmff(mol, list(conf_ids))
    return [relax_xtb(mol, cid, method=method) for cid in conf_ids]


def _subset(mol: Chem.Mol, conf_ids: Sequence[int]) -> Chem.Mol:
    """A copy of ``mol`` holding only ``conf_ids``, renumbered 0..K-1 in that order."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for k, cid in enumerate(conf_ids):
        conf = Chem.Conformer(mol.GetConformer(cid))
        conf.SetId(k)
        out.AddConformer(conf, assignId=False)
    return out


def _prune(mol: Chem.Mol, threshold: float) -> list[int]:
    """Greedy RMSD pruning over conformers 0..K-1 (sorted by energy): keep a conformer when its
    heavy-atom symmetry-aware RMSD to every kept one exceeds ``threshold``; returns kept ids."""
    k = mol.GetNumConformers()
    if k < 2 or threshold <= 0:
        return list(range(k))
    heavy = Chem.RemoveHs(mol)
    flat = rdMolAlign.GetAllConformerBestRMS(heavy, maxMatches=10000)
    rms = np.zeros((k, k))
    rms[np.tril_indices(k, -1)] = flat  # order (1,0), (2,0), (2,1), (3,0), ...
    rms = rms + rms.T
    kept: list[int] = []
    for i in range(k):
        if all(rms[i, j] > threshold for j in kept):
            kept.append(i)
    return kept


def build_ensemble(mol: Chem.Mol, config: BuildConfig, *, seed: int | None = None) -> Ensemble:
    """Seeds, relaxation, stereo check, energy window, pruning and weights for one molecule.

    ``oversample * num_conformers`` ETKDG seeds are relaxed; those within the energy window are
    pruned in energy order and the lowest ``num_conformers`` survivors kept. Unspecified stereocentres / double bonds are first fixed to one embeddable stereoisomer (the
    ensemble's ``mol`` carries it); conformers whose 3D stereochemistry differs from the graph's
    after relaxation are dropped.
    Raises ``EnsembleError`` (or ``EmbeddingError`` / ``RelaxationError``) with the reason.
    """
    name = _name(mol)
    seed = config.seed if seed is None else seed
    mol = _fix_stereo(mol, seed)
    embedded = embed_etkdg(mol, config.oversample * config.num_conformers, seed=seed, timeout=config.embed_timeout)
    work, ids = embedded.mol, list(embedded.conf_ids)
    energies = _relax(work, ids, config.relax)
    reference = _stereo_smiles(work)
    good = [(e, cid) for e, cid in zip(energies, ids) if _stereo_smiles(work, cid) == reference]
    if not good:
        raise EnsembleError(name, f"all {len(ids)} conformers changed stereochemistry")
    good.sort()
    e_min = good[0][0]
    window = [(e, cid) for e, cid in good if e - e_min <= config.energy_window]
    ordered = _subset(work, [cid for _, cid in window])
    kept = _prune(ordered, config.prune_rms)[: config.num_conformers]
    final = _subset(ordered, kept)
    energies_kept = np.array([window[i][0] for i in kept])
    weights = boltzmann_weights(energies_kept, config.temperature)
    return Ensemble(final, energies_kept, weights, embedded.method, Chem.MolToSmiles(mol))


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
    return (config.seed + 7919 * index) % (2**31 - 1)


def _build_one(args: tuple[_Candidate, BuildConfig]) -> tuple[_Candidate, Ensemble | None, str | None]:
    """Worker: (candidate, ensemble or None, error)."""
    candidate, config = args
    mol = Chem.MolFromSmiles(candidate.smiles)
    mol.SetProp("_Name", candidate.name)
    try:
        return candidate, build_ensemble(mol, config, seed=_molecule_seed(config, candidate.index)), None
    except (EnsembleError, EmbeddingError, RelaxationError) as err:
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
    ``out/manifest.json`` are skipped, so rerunning the same command resumes a killed build, and
    raising ``max_molecules`` extends a finished one.
    """
    if workers < 1 or shard_size < 1:
        raise ValueError(f"workers and shard_size must be >= 1, got {workers} and {shard_size}")
    if config.relax in ("gfnff", "gfn2") and shutil.which("xtb") is None:
        raise XtbNotFoundError()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_id = str(Path(source).resolve()) if os.path.exists(source) else source
    manifest = _load_manifest(out, source_id, config)
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


def _ensemble_files(directory: Path) -> list[Path]:
    """The files holding a directory's ensembles: the manifest's completed shards, else every
    ``*.sdf`` / ``*.sdf.gz`` (grouped by ``mol_id``) and GEOM ``*.pickle`` file, sorted."""
    manifest = directory / MANIFEST
    if manifest.exists():
        return [directory / name for name in sorted(json.loads(manifest.read_text())["shards"])]
    files = [p for p in directory.iterdir() if p.name.endswith((".sdf", ".sdf.gz", ".pickle", ".pkl"))]
    return sorted(files)


def _load_file(path: Path) -> Iterator[tuple[Chem.Mol, np.ndarray]]:
    if path.name.endswith((".pickle", ".pkl")):
        yield load_geom_pickle(path)
    else:
        yield from _group_records(_read_sdf_records(path), str(path))


def load_ensembles(directory: str | os.PathLike) -> Iterator[tuple[Chem.Mol, np.ndarray]]:
    """Yield ``(mol with K conformers, weights (K,))`` for every molecule of a built dataset
    (or a folder of multi-conformer SDF files / GEOM pickles). Conformers carry their ``energy``
    as a double property when known; ``mol`` keeps the records' ``mol_id`` and ``smiles`` props."""
    for path in _ensemble_files(Path(directory)):
        yield from _load_file(path)


def load_geom_pickle(path: str | os.PathLike) -> tuple[Chem.Mol, np.ndarray]:
    """One GEOM ``rdkit_folder`` pickle (``{"smiles", "conformers": [{"rd_mol", "boltzmannweight",
    "totalenergy"}]}``) as ``(mol with K conformers, weights (K,))``; energies (Hartree, GEOM's
    ``totalenergy``) kept as the conformers' ``energy`` property in kcal/mol."""
    from .relax import HARTREE_TO_KCAL

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


# -- the cached, featurised dataset -------------------------------------------------------------------

def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "confdiff" / "datasets"


_CACHE_FORMAT = "items/2"  # the fields of a cached molecule; bump when they change


def _cache_key(files: Sequence[Path]) -> str:
    """Hash of the cache format, the source files (path, size, mtime) and the featuriser's code."""
    from . import featurize, torsions

    h = hashlib.sha256(_CACHE_FORMAT.encode())
    for module in (featurize, torsions):
        h.update(Path(module.__file__).read_bytes())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _topology(mol: Chem.Mol) -> bytes:
    """``mol`` without its conformers, pickled by RDKit (a few hundred bytes)."""
    bare = Chem.Mol(mol)
    bare.RemoveAllConformers()
    return bare.ToBinary()


def _in_validation(key: str, seed: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class ConformerDataset:
    """Per molecule ``(graph: MolGraph, pos_ensemble (K, N, 3) float32, weights (K,) float32)``.

    dirs : built datasets (``manifest.json``) or folders of SDF ensembles / GEOM pickles.
    The featurised molecules are cached in ``cache_dir`` (default ``~/.cache/confdiff/datasets``)
    under a key of the source files' paths, sizes and mtimes and the featuriser's code, so they are
    built once. The split is by molecule (its SMILES), deterministic in ``seed``.
    Molecules the featuriser refuses are skipped and counted in ``num_skipped``.
    Each of ``items`` also keeps ``smiles`` and ``mol``, the molecule without conformers as
    ``Chem.Mol.ToBinary()`` (atom order of ``pos``), to rebuild reference ensembles for RMSDs.
    """

    def __init__(
        self,
        dirs: str | os.PathLike | Sequence[str | os.PathLike],
        cache_dir: str | os.PathLike | None = None,
        split: str = "train",
        val_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        import torch

        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
        files = [f for d in dirs for f in _ensemble_files(Path(d))]
        if not files:
            raise ValueError(f"no ensembles found in {', '.join(map(str, dirs))}")
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"ensembles-{_cache_key(files)}.pt"
        if path.exists():
            items = torch.load(path, weights_only=False)
        else:
            items = self._featurise(files)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=cache)
            os.close(fd)
            torch.save(items, tmp)
            os.replace(tmp, path)
        self.cache_path = path
        self.num_skipped = items["skipped"]
        self.items = [
            it for it in items["molecules"]
            if split == "all" or _in_validation(it["smiles"], seed, val_fraction) == (split == "val")
        ]

    @staticmethod
    def _featurise(files: Sequence[Path]) -> dict[str, Any]:
        import torch

        from .featurize import featurize

        molecules, skipped = [], 0
        for f in files:
            for mol, weights in _load_file(f):
                try:
                    graph = featurize(mol)
                except (ValueError, KeyError, RuntimeError) as err:
                    print(f"skipping {mol.GetProp('smiles') if mol.HasProp('smiles') else f}: {err}", file=sys.stderr)
                    skipped += 1
                    continue
                pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
                smiles = mol.GetProp("smiles") if mol.HasProp("smiles") else Chem.MolToSmiles(Chem.RemoveHs(mol))
                molecules.append({
                    "graph": graph,
                    "pos": torch.as_tensor(pos, dtype=torch.float32),
                    "weights": torch.as_tensor(weights, dtype=torch.float32),
                    "smiles": smiles,
                    "mol": _topology(mol),
                })
        return {"molecules": molecules, "skipped": skipped}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        return item["graph"].clone(), item["pos"], item["weights"]


# -- the command ---------------------------------------------------------------------------------------

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
