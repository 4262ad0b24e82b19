"""ETKDGv3 seed structures, with a random-coordinates fallback for molecules ETKDG cannot embed."""

from __future__ import annotations

from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem import AllChem, rdDistGeom

from .io import mol_name

__all__ = ["EmbedResult", "EmbeddingError", "embed_etkdg"]

DEFAULT_SEED = 0xF00D


class EmbeddingError(RuntimeError):
    """A molecule for which no 3D structure could be generated, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot embed {name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class EmbedResult:
    """Embedded conformers.

    mol : a copy of the input with explicit hydrogens and only the new conformers.
    conf_ids : the conformer ids on ``mol``, in generation order.
    method : ``"etkdg"`` (ETKDGv3), ``"random-coords+mmff"`` or ``"random-coords+uff"``
        (random initial coordinates, then force-field relaxation), or ``"random-coords"`` when
        neither force field has parameters for the molecule.
    """

    mol: Chem.Mol
    conf_ids: tuple[int, ...]
    method: str


def _params(
    seed: int, threads: int, prune_rms: float | None, random_coords: bool, timeout: int | None,
    small_ring_torsions: bool,
) -> rdDistGeom.EmbedParameters:
    params = rdDistGeom.ETKDGv3()
    params.useSmallRingTorsions = small_ring_torsions
    if timeout is not None:
        params.timeout = timeout
    # RDKit seeds conformer i from a multiple of randomSeed, so 0 would give n identical conformers
    params.randomSeed = seed % (2**31 - 1) + 1
    params.numThreads = threads
    params.useRandomCoords = random_coords
    params.pruneRmsThresh = -1.0 if prune_rms is None else prune_rms
    params.onlyHeavyAtomsForRMS = True
    return params


def _relax_random(mol: Chem.Mol, threads: int) -> str:
    """Relax random-coordinate embeddings with MMFF94 when typed, else UFF; returns the method name."""
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=threads, maxIters=2000)
        return "random-coords+mmff"
    if AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=threads, maxIters=2000)
        return "random-coords+uff"
    return "random-coords"


def _embedded(mol: Chem.Mol, ids) -> tuple[int, ...]:
    """The ids that ``EmbedMultipleConfs`` returned and ``mol`` holds: on a timeout RDKit returns ``[-1]``
    and no conformer."""
    held = {conf.GetId() for conf in mol.GetConformers()}
    return tuple(i for i in ids if i in held)


def embed_etkdg(
    mol: Chem.Mol,
    n: int,
    *,
    seed: int = DEFAULT_SEED,
    threads: int = 1,
    prune_rms: float | None = None,
    timeout: int | None = None,
    small_ring_torsions: bool = False,
) -> EmbedResult:
    """Embed ``n`` conformers with ETKDGv3 (fewer when ``prune_rms`` removes near-duplicates).

    When ETKDG yields no conformer, embeds from random coordinates and relaxes them with MMFF94
    (UFF when MMFF has no parameters). Raises ``EmbeddingError`` when both paths fail.
    The input is not modified; hydrogens are added to the returned copy where missing.
    timeout : whole seconds per embedding call (RDKit's ``EmbedParameters.timeout``); the conformers
        finished by then are returned, so hard molecules (strained bridged rings) cannot hang a run.
    small_ring_torsions : ETKDGv3 with the torsion preferences of small rings (RDKit's
        ``useSmallRingTorsions``, as in srETKDGv3, which keeps the macrocycle terms of ETKDGv3): after
        MMFF94 minimisation more of the ring puckers that GFN2 ensembles hold (``docs/benchmarks.md``,
        session 15).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = all cores), got {threads}")
    name = mol_name(mol)
    if mol.GetNumAtoms() == 0:
        raise EmbeddingError(name, "the molecule has no atoms")
    work = Chem.AddHs(mol)
    work.RemoveAllConformers()
    options = dict(seed=seed, threads=threads, prune_rms=prune_rms, timeout=timeout,
                   small_ring_torsions=small_ring_torsions)
    conf_ids = _embedded(work, rdDistGeom.EmbedMultipleConfs(work, n, _params(random_coords=False, **options)))
    if conf_ids:
        return EmbedResult(work, conf_ids, "etkdg")
    conf_ids = _embedded(work, rdDistGeom.EmbedMultipleConfs(work, n, _params(random_coords=True, **options)))
    if not conf_ids:
        raise EmbeddingError(name, "ETKDGv3 and random-coordinate embedding both failed")
    return EmbedResult(work, conf_ids, _relax_random(work, threads))
