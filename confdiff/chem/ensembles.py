"""Conformer ensembles: relaxation -> stereo check -> energy window -> pruning -> Boltzmann weights.

``select_conformers`` is the one implementation of that pipeline: ``build_ensemble`` (the training
ensembles of ``confdiff dataset build``) and the conformer generator's ``relax`` / ``prune_rms``
options both run it. ``prune_conformers`` is the one greedy RMSD pruning of the package, and
``farthest_point_conformers`` its one diversity selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from .embed import embed_etkdg
from .io import mol_name
from .metrics import rmsd_matrix
from .relax import relax_conformers
from .stereo import StereoCheck, fix_stereo

__all__ = [
    "BOLTZMANN_KCAL",
    "RELAX_METHODS",
    "SELECTION_MAX_MATCHES",
    "BuildConfig",
    "Ensemble",
    "EnsembleError",
    "Selection",
    "boltzmann_weights",
    "build_ensemble",
    "farthest_point_conformers",
    "farthest_points",
    "prune_conformers",
    "select_conformers",
    "subset_conformers",
]

BOLTZMANN_KCAL = 0.0019872042586  # kcal/(mol K): the molar gas constant R, the package's one k_B
RELAX_METHODS = ("mmff", "gfnff", "gfn2")
#: symmetry matches the diversity selection tries: the RMSD matrix among L conformers costs M L^2
#: alignments, and a ligand can have 10^6 matches; the GEOM-DRUGS test molecules have at most 24
SELECTION_MAX_MATCHES = 32


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
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
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


def boltzmann_weights(energies: Sequence[float], temperature: float = 298.15) -> np.ndarray:
    """Normalised ``exp(-(E - E_min) / kT)`` for energies in kcal/mol; shape (K,)."""
    e = np.asarray(energies, dtype=np.float64)
    w = np.exp(-(e - e.min()) / (BOLTZMANN_KCAL * temperature))
    return w / w.sum()


def subset_conformers(mol: Chem.Mol, conf_ids: Sequence[int]) -> Chem.Mol:
    """A copy of ``mol`` holding only ``conf_ids``, renumbered 0..K-1 in that order."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for k, cid in enumerate(conf_ids):
        conf = Chem.Conformer(mol.GetConformer(cid))
        conf.SetId(k)
        out.AddConformer(conf, assignId=False)
    return out


def _positions(mol: Chem.Mol, conf_ids: Sequence[int]) -> np.ndarray:
    return np.stack([mol.GetConformer(cid).GetPositions() for cid in conf_ids]).reshape(len(conf_ids), -1, 3)


def prune_conformers(mol: Chem.Mol, threshold: float, conf_ids: Sequence[int] | None = None, *,
                     energies: Sequence[float] | None = None, energy_tol: float = math.inf) -> list[int]:
    """Greedy RMSD pruning: the ids of ``conf_ids`` (all conformers when None) that are kept, in order.

    Conformers are visited in the given order (the callers pass increasing energy); one is kept when
    its heavy-atom symmetry-aware RMSD (``chem.metrics.rmsd_matrix``, equal to RDKit's
    ``GetBestRMS``) to every kept conformer is **greater than** ``threshold``, i.e. a conformer
    within ``threshold`` (equality included) of a kept one is dropped. With ``energies`` (kcal/mol),
    a conformer is only dropped for a kept one whose energy is also within ``energy_tol``.
    """
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    if len(ids) < 2 or threshold <= 0:
        return ids
    sub = subset_conformers(mol, ids)
    rms = rmsd_matrix(sub, sub)
    e = np.zeros(len(ids)) if energies is None else np.asarray(energies, dtype=np.float64)
    kept: list[int] = []
    for i in range(len(ids)):
        if not any(rms[j, i] <= threshold and abs(e[i] - e[j]) < energy_tol for j in kept):
            kept.append(i)
    return [ids[i] for i in kept]


def farthest_points(rmsd: np.ndarray, n: int) -> list[int]:
    """``n`` indices of the square distance matrix ``rmsd (L, L)`` by farthest-point selection, in
    selection order: index 0 first, then repeatedly the one farthest from its nearest selected
    (ties: the lower index)."""
    kept = [0]
    nearest = rmsd[0].copy()
    while len(kept) < min(n, len(rmsd)):
        k = int(np.argmax(nearest))
        kept.append(k)
        nearest = np.minimum(nearest, rmsd[k])
    return kept


def farthest_point_conformers(mol: Chem.Mol, n: int, conf_ids: Sequence[int] | None = None) -> list[int]:
    """``n`` of ``conf_ids`` (all conformers when None) by ``farthest_points`` on their heavy-atom
    symmetry-aware RMSD (``chem.metrics.rmsd_matrix`` with at most ``SELECTION_MAX_MATCHES`` symmetry
    matches, which bounds the cost for very symmetric molecules), in selection order. Callers pass
    the conformers in increasing energy, so the selection starts at the lowest."""
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    if n >= len(ids):
        return ids
    sub = subset_conformers(mol, ids)
    return [ids[k] for k in farthest_points(rmsd_matrix(sub, sub, max_matches=SELECTION_MAX_MATCHES), n)]


@dataclass(frozen=True)
class Selection:
    """What ``select_conformers`` kept: conformer ids (increasing energy when relaxed, else in the
    given order), their energies (kcal/mol; None without relaxation), and how many conformers were
    dropped because the relaxation changed a configuration."""

    conf_ids: list[int]
    energies: list[float] | None
    num_broken: int


def select_conformers(
    mol: Chem.Mol,
    conf_ids: Sequence[int] | None = None,
    *,
    relax: str | None = None,
    energy_window: float | None = None,
    prune_rms: float | None = None,
    max_conformers: int | None = None,
    threads: int = 1,
) -> Selection:
    """The ensemble pipeline on the conformers of ``mol`` (coordinates relaxed in place).

    1. ``relax`` (``"mmff"``, ``"gfnff"``, ``"gfn2"`` or None) every conformer;
    2. drop a conformer whose configuration the relaxation changed, or that lacks a configuration the
       molecule specifies (signed volumes and double-bond sides, :class:`~confdiff.chem.stereo.StereoCheck`;
       an element left open keeps each conformer's own configuration);
    3. sort by energy and keep those within ``energy_window`` kcal/mol of the lowest;
    4. greedy ``prune_conformers`` at ``prune_rms`` in that order;
    5. keep the first ``max_conformers``.

    Raises ``EnsembleError`` when the relaxation broke every conformer, ``RelaxationError`` when
    the relaxation fails. Without ``relax`` only steps 4-5 run, in the given order.
    """
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    energies: list[float] | None = None
    num_broken = 0
    if relax is not None:
        check = StereoCheck.from_mol(mol)
        before = check.signs(_positions(mol, ids))
        relaxed = relax_conformers(mol, relax, ids, threads=threads)
        pos = _positions(mol, ids)
        broken = ((check.signs(pos) != before) & (before != 0)).any(axis=1) | ~check.matches_input(pos)
        num_broken = int(broken.sum())
        ranked = sorted((e, k) for k, (e, bad) in enumerate(zip(relaxed, broken)) if not bad)
        if not ranked:
            raise EnsembleError(mol_name(mol), f"all {len(ids)} conformers changed a configuration during relaxation")
        if energy_window is not None:
            ranked = [(e, k) for e, k in ranked if e - ranked[0][0] <= energy_window]
        ids = [ids[k] for _, k in ranked]
        energies = [e for e, _ in ranked]
    if prune_rms is not None:
        kept = set(prune_conformers(mol, prune_rms, ids))
        energies = None if energies is None else [e for e, cid in zip(energies, ids) if cid in kept]
        ids = [cid for cid in ids if cid in kept]
    if max_conformers is not None:
        ids = ids[:max_conformers]
        energies = None if energies is None else energies[:max_conformers]
    return Selection(ids, energies, num_broken)


def build_ensemble(mol: Chem.Mol, config: BuildConfig, *, seed: int | None = None) -> Ensemble:
    """Seeds, relaxation, stereo check, energy window, pruning and weights for one molecule.

    ``oversample * num_conformers`` ETKDG seeds are relaxed; those within the energy window are
    pruned in energy order and the lowest ``num_conformers`` survivors kept (``select_conformers``).
    Unspecified stereocentres / double bonds are first fixed to one embeddable stereoisomer (the
    ensemble's ``mol`` carries it), so every configuration is specified and a conformer whose
    configuration differs from the graph's after relaxation is dropped.
    Raises ``EnsembleError`` (or ``EmbeddingError`` / ``RelaxationError``) with the reason.
    """
    seed = config.seed if seed is None else seed
    mol = fix_stereo(mol, seed)
    embedded = embed_etkdg(mol, config.oversample * config.num_conformers, seed=seed, timeout=config.embed_timeout)
    work = embedded.mol
    selection = select_conformers(work, list(embedded.conf_ids), relax=config.relax, energy_window=config.energy_window,
                                  prune_rms=config.prune_rms, max_conformers=config.num_conformers)
    energies = np.array(selection.energies)
    weights = boltzmann_weights(energies, config.temperature)
    return Ensemble(subset_conformers(work, selection.conf_ids), energies, weights, embedded.method, Chem.MolToSmiles(mol))
