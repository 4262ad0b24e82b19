"""Conformer ensembles: ETKDG seeds, reverse diffusion with the score model, stereo checks, relaxation.

``ConformerGenerator`` keeps one loaded model for many molecules; ``generate()`` is the one-call
API. The conformers of a molecule, and of several consecutive molecules, share one graph batch,
split so that no batch holds more than ``max_atoms_per_batch`` atoms (the memory bound).

Conformer ``i`` of a molecule starts from ETKDG seed ``i // conformers_per_seed`` and draws all its
noise from one generator seeded with ``(seed, i)``, so it is the same whatever ``n``, the batch
size or the other molecules in the batch. Every conformer's stereochemistry is compared with its
seed's (a vectorised test of signed volumes and double-bond sides, :class:`StereoCheck`) and every
seed's with the input's; a conformer that breaks it is fixed by dropping its coordinate refinement
(the torsion changes alone are rigid rotations, which cannot change a configuration).

In the ``"full"`` mode (``conformer_diffusion.MODES``) there are no seeds: every coordinate comes
from the prior. ``FULL_MODE_DRAWS * n`` conformers are drawn; one whose specified configurations
are all inverted is mirrored (a reflection inverts every tetrahedral centre and keeps double
bonds), one with some, but not all, inverted is not used, and the first ``n`` usable ones are kept
(``conformer_index`` is the draw's index; fewer than ``n`` with a warning).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, rdBase
from rdkit.Chem import rdMolAlign
from torch_geometric.data import Batch

from .chem.embed import EmbeddingError, embed_etkdg
from .chem.featurize import FeaturizationError, MolGraph, featurize
from .chem.io import MoleculeRejected, check_molecule
from .chem.relax import RelaxationError, relax_mmff, relax_xtb
from .conformer_diffusion import MODES, ConformerDiffusion, ConformerDiffusionConfig
from .diffusion.samplers import SAMPLERS, time_grid
from .nn.score_model import ScoreModel, ScoreModelConfig
from .physics import DEFAULT_GUIDANCE, GUIDANCE_CHOICES, BatchPotential, guidance_schedule, make_potential, physics_guidance

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_MODEL",
    "DEFAULT_STEPS",
    "MODES",
    "RELAX_METHODS",
    "ConformerGenerator",
    "GenerationError",
    "GenerationResult",
    "StereoCheck",
    "conformer_generators",
    "default_model_path",
    "generate",
    "load_model",
]

DEFAULT_MODEL = "default"
DEFAULT_STEPS = {"refine": 20, "torsions": 20, "full": 50}  # reverse-diffusion steps per mode
RELAX_METHODS = ("none", "mmff", "gfnff", "gfn2")
_VOLUME_TOL = 0.1  # A^3 (A^2 for double bonds): smaller counts as flat, i.e. broken (RDKit's ZERO_VOLUME_TOL)
MAX_BOND_STRETCH = 0.3  # A: a conformer whose bond lengths differ more from its seed's is broken
FULL_MODE_DRAWS = 2  # the full mode draws this many conformers per one asked for, and keeps the first usable


class GenerationError(RuntimeError):
    """A molecule for which no ensemble could be generated; ``name`` and ``reason`` say why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class GenerationResult:
    """One input's outcome: ``mol`` with the conformers, or ``error`` (then ``mol`` is None).

    index : position of the input in the iterable given to ``generate_many``.
    warnings : what was changed or noticed (salt stripped, conformers fixed, stereoisomers mixed).
    """

    index: int
    name: str
    mol: Chem.Mol | None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mol is not None


# --- the model --------------------------------------------------------------------------------------

#: the shipped checkpoint of each mode (package data): the refine model was trained for the
#: refine path only; the full one was fine-tuned from it for all three modes (docs/benchmarks.md)
DEFAULT_MODEL_FILES = {"refine": "conformer_model.pt", "torsions": "conformer_model.pt",
                       "full": "conformer_model_full.pt"}


def default_model_path(mode: str = "refine") -> Path:
    """The shipped default checkpoint for ``mode`` (package data)."""
    if mode not in DEFAULT_MODEL_FILES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return Path(str(resources.files("confdiff") / "weights" / DEFAULT_MODEL_FILES[mode]))


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu", mode: str = "refine"):
    """``(ScoreModel, ConformerDiffusion)`` from a checkpoint (the shipped default for ``mode`` when
    ``path`` is None).

    Reads a trainer checkpoint or the release file of ``confdiff.train_conformers.export_release``;
    both hold ``kind``, ``model_config = {"model": ..., "diffusion": ...}`` and the EMA weights.
    """
    path = default_model_path(mode) if path in (None, DEFAULT_MODEL) else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "conformer_score_model":
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} holds {kind!r}, not a conformer score model")
    configs = ckpt["model_config"]
    model = ScoreModel(ScoreModelConfig.from_dict(configs["model"]))
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit this version's ScoreModel: {err}") from None
    model.eval().to(device)
    return model, ConformerDiffusion(ConformerDiffusionConfig(**configs["diffusion"]))


@functools.lru_cache(maxsize=2)
def _cached_model(path: str | None, device: str, mode: str):
    """``load_model`` once per (path, device, mode) for the one-call ``generate()``."""
    return load_model(path, device=device, mode=mode)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


# --- seeds and stereochemistry ---------------------------------------------------------------------

def conformer_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per conformer, seeded from ``(seed, index)`` only (not from the batch)."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0]
        gens.append(torch.Generator().manual_seed(int(state >> 1)))
    return gens


def _bond_sides(mol: Chem.Mol, bond: Chem.Bond) -> tuple[int, int, bool] | None:
    """``(a, d, trans)`` for a bond with specified stereo: reference neighbours and whether they are trans.

    STEREOCIS / STEREOTRANS refer to the bond's stereo atoms; STEREOE / STEREOZ (CIP labels) to the
    highest-ranked neighbour on each side (legacy ``_CIPRank``).
    """
    stereo = bond.GetStereo()
    if stereo in (Chem.BondStereo.STEREOCIS, Chem.BondStereo.STEREOTRANS):
        a, d = bond.GetStereoAtoms()
        return a, d, stereo == Chem.BondStereo.STEREOTRANS
    if stereo in (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOZ):
        ends = (bond.GetBeginAtom(), bond.GetEndAtom())
        ref = []
        for atom, other in (ends, ends[::-1]):
            ranked = [(int(n.GetProp("_CIPRank")), n.GetIdx()) for n in atom.GetNeighbors()
                      if n.GetIdx() != other.GetIdx()]
            ref.append(max(ranked)[1])
        return ref[0], ref[1], stereo == Chem.BondStereo.STEREOE
    return None


@dataclass(frozen=True)
class StereoCheck:
    """The stereo elements of a molecule as signs of 3D quantities, tested on many conformers at once.

    Tetrahedral centre ``c`` (row ``(c, n1, n2, n3)``): RDKit's chiral volume
    ``v1 . (v2 x v3)``, ``v_k = p[n_k] - p[c]`` over the first three neighbours in bond order,
    positive for ``CHI_TETRAHEDRAL_CCW``. Double bond ``a - b = c - d`` (row ``(a, b, c, d)``): the
    dot product of ``a``'s and ``d``'s offsets perpendicular to the bond, positive when cis.
    Elements come from ``Chem.FindPotentialStereo``; ``expected`` is +1 / -1 where the molecule
    specifies the configuration and 0 where it leaves it open.
    """

    centres: np.ndarray  # (C, 4) int
    bonds: np.ndarray  # (D, 4) int
    expected: np.ndarray  # (C + D,) int8

    @classmethod
    def from_mol(cls, mol: Chem.Mol) -> StereoCheck:
        """The check for ``mol`` (hydrogens explicit, stereo as read from the input)."""
        ranked = Chem.Mol(mol)
        Chem.AssignStereochemistry(ranked, cleanIt=True, force=True)  # sets _CIPRank for E/Z
        centres, bonds, expected_c, expected_d = [], [], [], []
        for element in Chem.FindPotentialStereo(Chem.Mol(mol)):
            specified = element.specified == Chem.StereoSpecified.Specified
            if element.type == Chem.StereoType.Atom_Tetrahedral:
                atom = mol.GetAtomWithIdx(element.centeredOn)
                neighbours = [n.GetIdx() for n in atom.GetNeighbors()][:3]
                tag = atom.GetChiralTag()
                centres.append([atom.GetIdx(), *neighbours])
                expected_c.append(0 if not specified else 1 if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW else -1)
            elif element.type == Chem.StereoType.Bond_Double:
                bond = ranked.GetBondWithIdx(element.centeredOn)
                b, c = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
                sides = _bond_sides(ranked, bond) if specified else None
                if sides is None:
                    a = next(n.GetIdx() for n in bond.GetBeginAtom().GetNeighbors() if n.GetIdx() != c)
                    d = next(n.GetIdx() for n in bond.GetEndAtom().GetNeighbors() if n.GetIdx() != b)
                    expected_d.append(0)
                else:
                    a, d, trans = sides
                    expected_d.append(-1 if trans else 1)
                bonds.append([a, b, c, d])
        return cls(np.array(centres, dtype=np.int64).reshape(-1, 4), np.array(bonds, dtype=np.int64).reshape(-1, 4),
                   np.array(expected_c + expected_d, dtype=np.int8))

    @property
    def num_specified(self) -> int:
        return int(np.count_nonzero(self.expected))

    @property
    def num_open(self) -> int:
        return int(self.expected.size - self.num_specified)

    def signs(self, pos: np.ndarray) -> np.ndarray:
        """Signs (+1, -1, 0 when flat) of every element in conformers ``pos (K, N, 3)``: shape (K, C + D)."""
        c = self.centres
        v = pos[:, c[:, 1:]] - pos[:, c[:, :1]]  # (K, C, 3, 3)
        volume = np.einsum("kci,kci->kc", v[:, :, 0], np.cross(v[:, :, 1], v[:, :, 2]))
        a, b, cc, d = (pos[:, self.bonds[:, k]] for k in range(4))  # (K, D, 3) each
        axis = cc - b
        length = np.linalg.norm(axis, axis=-1, keepdims=True)
        axis = axis / np.maximum(length, 1e-12)
        side_a, side_d = a - b, d - cc
        side_a = side_a - (side_a * axis).sum(-1, keepdims=True) * axis
        side_d = side_d - (side_d * axis).sum(-1, keepdims=True) * axis
        sides = (side_a * side_d).sum(-1) * (length[..., 0] > 1e-6)  # coincident double-bond atoms: flat
        values = np.concatenate([volume, sides], axis=1)
        return (np.sign(values) * (np.abs(values) > _VOLUME_TOL)).astype(np.int8)

    def matches_input(self, pos: np.ndarray) -> np.ndarray:
        """Which conformers ``pos (K, N, 3)`` have every specified configuration of the input: (K,) bool."""
        specified = self.expected != 0
        return (self.signs(pos)[:, specified] == self.expected[specified]).all(axis=1)


# --- one molecule's preparation ----------------------------------------------------------------------

def _bond_lengths(pos: np.ndarray, graph: MolGraph) -> np.ndarray:
    """Lengths of the bonds of ``graph`` in conformers ``pos (K, N, 3)``: shape (K, B)."""
    i, j = graph.edge_index[:, ::2].numpy()  # each bond once (edges come in both directions)
    return np.linalg.norm(pos[:, i] - pos[:, j], axis=-1)


def mol_name(mol: Chem.Mol) -> str:
    """The molecule's ``_Name``, else its SMILES."""
    if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
        return mol.GetProp("_Name").strip()
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


def _parse(item: Chem.Mol | str) -> tuple[Chem.Mol, list[str]]:
    """A copy of the input molecule (a SMILES string is parsed) after the input policy of ``chem.io``."""
    if isinstance(item, Chem.Mol):
        mol = Chem.Mol(item)
    else:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(item)
            raw = Chem.MolFromSmiles(item, sanitize=False) if mol is None else None
        if mol is None:
            reason = "SMILES syntax error"
            if raw is not None:
                try:
                    with rdBase.BlockLogs():
                        Chem.SanitizeMol(raw)
                except Chem.rdchem.MolSanitizeException as err:
                    reason = f"sanitisation failed: {err}"
            raise GenerationError(item, f"invalid SMILES: {reason}")
        mol.SetProp("_Name", item)
    try:
        kept, notes = check_molecule(mol)
    except MoleculeRejected as err:
        raise GenerationError(mol_name(mol), str(err)) from None
    return kept, list(notes)


@dataclass
class _Job:
    """A molecule ready for sampling: ETKDG seeds (S, N, 3), centred (one all-zero seed in the
    ``"full"`` mode), and its stereo check."""

    index: int
    name: str
    mol: Chem.Mol  # explicit hydrogens, input atom order, no conformers
    graph: MolGraph
    seeds: torch.Tensor
    seed_signs: np.ndarray  # (S, C + D)
    seed_lengths: np.ndarray  # (S, B) bond lengths
    check: StereoCheck
    warnings: list[str]
    potential: object = None  # the guidance potential (confdiff.physics), None without guidance

    @property
    def num_atoms(self) -> int:
        return self.mol.GetNumAtoms()


# --- the generator -----------------------------------------------------------------------------------

class ConformerGenerator:
    """Generate conformer ensembles with one loaded score model.

    model : path to a checkpoint, ``"default"`` / None for the shipped model of ``mode``, or an
        already built ``(ScoreModel, ConformerDiffusion)`` pair.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None (CUDA when available).
    steps : reverse-diffusion steps (None: ``DEFAULT_STEPS[mode]``); sampler : a name in
        ``confdiff.diffusion.samplers.SAMPLERS``.
    conformers_per_seed : conformers that share one ETKDG seed structure (the diffusion resamples
        their torsions; the seed provides bond lengths, angles and ring puckers).
    max_atoms_per_batch : most atoms (all conformers of all molecules together) in one graph batch;
        bounds memory. A molecule with more atoms than this is refused.
    relax : None / ``"none"``, ``"mmff"``, ``"gfnff"`` or ``"gfn2"`` (xtb); energies in kcal/mol.
    prune_rms : drop conformers within this heavy-atom RMSD (Angstrom) of a kept one.
    energy_window : after relaxation, keep conformers within this many kcal/mol of the lowest.
    num_workers : threads for the ETKDG seeds and for xtb.
    mode : ``"refine"`` (default: torsions and a coordinate refinement of ETKDG seeds),
        ``"torsions"`` (the seeds' bond lengths, angles and ring puckers kept exactly) or ``"full"``
        (all coordinates from the prior, no seeds; needs a model trained with ``full_fraction > 0``).
    guidance : physics guidance in the last part of the reverse diffusion (``confdiff.physics``):
        ``"repulsion"`` (bonded geometry + soft repulsion), ``"mmff"`` (MMFF94; a molecule without
        MMFF94 parameters falls back to ``"repulsion"`` with a warning), ``"none"``; None: the
        mode's default (``DEFAULT_GUIDANCE``). guidance_scale : ``lambda`` at the end of the
        trajectory (None: the mode's default); samples tend to ``p_model(x) exp(-lambda E(x) / kT)``.
    """

    def __init__(
        self,
        model=None,
        *,
        device: str | torch.device | None = None,
        steps: int | None = None,
        sampler: str = "euler_maruyama",
        conformers_per_seed: int = 5,
        max_atoms_per_batch: int = 20000,
        relax: str | None = None,
        prune_rms: float | None = None,
        energy_window: float | None = None,
        num_workers: int = 1,
        mode: str = "refine",
        guidance: str | None = None,
        guidance_scale: float | None = None,
    ):
        steps = DEFAULT_STEPS.get(mode, 1) if steps is None else steps
        default_guidance, default_scale = DEFAULT_GUIDANCE.get(mode, ("none", 0.0))
        guidance = default_guidance if guidance is None else guidance
        if guidance not in GUIDANCE_CHOICES:
            raise ValueError(f"guidance must be one of {GUIDANCE_CHOICES}, got {guidance!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        if conformers_per_seed < 1:
            raise ValueError(f"conformers_per_seed must be >= 1, got {conformers_per_seed}")
        if max_atoms_per_batch < 1:
            raise ValueError(f"max_atoms_per_batch must be >= 1, got {max_atoms_per_batch}")
        if relax not in (None, *RELAX_METHODS):
            raise ValueError(f"relax must be one of {RELAX_METHODS}, got {relax!r}")
        if relax in ("gfnff", "gfn2") and shutil.which("xtb") is None:
            raise FileNotFoundError(f"relax={relax!r} needs the xtb executable on PATH (or use relax='mmff')")
        if prune_rms is not None and prune_rms <= 0:
            raise ValueError(f"prune_rms must be positive, got {prune_rms}")
        if energy_window is not None and (relax in (None, "none") or energy_window < 0):
            raise ValueError(f"energy_window={energy_window} needs relax and a value >= 0")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.device = _resolve_device(device)
        if isinstance(model, tuple):
            self.model, self.diffusion = model
            self.model.to(self.device).eval()
        else:
            self.model, self.diffusion = load_model(model, device=self.device, mode=mode)
        self.diffusion.check_mode(mode)
        self.steps = steps
        self.sampler = sampler
        self.conformers_per_seed = conformers_per_seed
        self.max_atoms_per_batch = max_atoms_per_batch
        self.relax = None if relax == "none" else relax
        self.prune_rms = prune_rms
        self.energy_window = energy_window
        self.num_workers = num_workers
        self.mode = mode
        self.guidance = guidance
        # lambda(t), zero at high noise (raises ValueError for a negative scale)
        self.guidance_schedule = guidance_schedule(mode, default_scale if guidance_scale is None else guidance_scale)

    # --- public API -------------------------------------------------------------------------------
    def generate(self, mol_or_smiles: Chem.Mol | str, n: int = 50, *, seed: int | None = None) -> Chem.Mol:
        """``n`` conformers of one molecule as an RDKit ``Mol`` (explicit hydrogens, input atom order).

        Each conformer carries the properties ``conformer_index`` (its index ``i``), ``seed`` and,
        when relaxed, ``energy`` (kcal/mol); fewer than ``n`` remain after pruning or an energy
        window. Raises ``GenerationError`` naming the molecule and the reason; the result's warnings
        are issued as Python warnings.
        """
        result = next(self.generate_many([mol_or_smiles], n, seed=seed))
        for note in result.warnings:
            warnings.warn(f"{result.name}: {note}", stacklevel=2)
        if not result.ok:
            raise GenerationError(result.name, result.error)
        return result.mol

    def generate_many(
        self, mols: Iterable[Chem.Mol | str], n: int = 50, *, seed: int | None = None
    ) -> Iterator[GenerationResult]:
        """Yield one ``GenerationResult`` per input, in input order, as each molecule is finished.

        Consecutive molecules are sampled together while their conformers fit in one batch, so the
        input is read a few molecules ahead. A molecule that fails yields a result with ``error``
        set and the others go on.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        pack: list[_Job | GenerationResult] = []
        atoms = 0
        for index, item in enumerate(mols):
            try:
                job = self._prepare(index, item, n, seed)
            except _MOLECULE_ERRORS as err:
                name = err.name if isinstance(err, GenerationError) else _item_name(item)
                pack.append(_failure(index, name, err))
                continue
            pack.append(job)
            atoms += job.num_atoms * n
            if atoms >= self.max_atoms_per_batch:
                yield from self._run(pack, n, seed)
                pack, atoms = [], 0
        yield from self._run(pack, n, seed)

    # --- stages -------------------------------------------------------------------------------------
    def _prepare(self, index: int, item: Chem.Mol | str, n: int, seed: int) -> _Job:
        """Parse, check, embed the ETKDG seeds of conformers ``0..n-1`` and featurise one molecule."""
        mol, notes = _parse(item)
        name = mol_name(mol)
        mol = Chem.AddHs(mol)  # hydrogens appended: the input's atoms keep their indices
        mol.RemoveAllConformers()
        if mol.GetNumAtoms() > self.max_atoms_per_batch:
            raise GenerationError(name, f"{mol.GetNumAtoms()} atoms (with hydrogens) exceed max_atoms_per_batch="
                                        f"{self.max_atoms_per_batch}; raise it (--batch-size) if memory allows")
        check = StereoCheck.from_mol(mol)
        graph = featurize(mol)
        potential = self._potential(mol, notes)
        if self.mode == "full":
            zero = np.zeros((1, mol.GetNumAtoms(), 3))
            return _Job(index, name, mol, graph, torch.zeros(zero.shape), check.signs(zero),
                        _bond_lengths(zero, graph), check, notes, potential)
        num_seeds = -(-n // self.conformers_per_seed)
        embedded = embed_etkdg(mol, num_seeds, seed=seed % 2**31, threads=self.num_workers)
        if embedded.method != "etkdg":
            notes.append(f"ETKDG failed; seed structures from {embedded.method}")
        seeds = np.stack([embedded.mol.GetConformer(c).GetPositions() for c in embedded.conf_ids])
        good = check.matches_input(seeds)
        if not good.any():
            raise GenerationError(name, "no seed structure has the input's stereochemistry")
        if not good.all():
            notes.append(f"{int((~good).sum())} of {len(good)} seed structures broke the stereochemistry and were skipped")
        seeds = seeds[good] - seeds[good].mean(axis=1, keepdims=True)
        if check.num_open:
            notes.append(f"{check.num_open} stereo element(s) unspecified: each conformer keeps its seed's "
                         "configuration, so the ensemble mixes stereoisomers")
        return _Job(index, name, mol, graph, torch.tensor(seeds, dtype=torch.float32), check.signs(seeds),
                    _bond_lengths(seeds, graph), check, notes, potential)

    def _potential(self, mol: Chem.Mol, notes: list[str]):
        """The guidance potential of ``mol`` (None without guidance); MMFF94 falls back to the repulsion term."""
        if self.guidance == "none" or self.guidance_schedule.scale == 0:
            return None
        try:
            return make_potential(self.guidance, mol)
        except ValueError as err:
            notes.append(f"{err}: guided by the repulsion term instead")
            return make_potential("repulsion", mol)

    def _run(self, pack: list, n: int, seed: int) -> Iterator[GenerationResult]:
        """Sample the jobs of ``pack`` together and yield every result of the pack in order."""
        draws = FULL_MODE_DRAWS * n if self.mode == "full" else n
        samples = self._sample_all([item for item in pack if isinstance(item, _Job)], draws, seed)
        for item in pack:
            if isinstance(item, GenerationResult):
                yield item
                continue
            try:
                outcome = samples[id(item)]
                if isinstance(outcome, Exception):
                    raise outcome
                yield self._finish(item, *outcome, seed, n)
            except _MOLECULE_ERRORS as err:
                yield _failure(item.index, item.name, err)

    def _sample_all(self, jobs: list[_Job], n: int, seed: int) -> dict[int, tuple | Exception]:
        """``id(job) -> (pos, rigid)`` sampled in shared batches; when that fails, every job is
        sampled alone so that only the culprit gets its exception."""
        if not jobs:
            return {}
        try:
            return dict(zip(map(id, jobs), self._sample(jobs, n, seed)))
        except _MOLECULE_ERRORS as err:
            if len(jobs) == 1:
                return {id(jobs[0]): err}
        return {id(job): self._sample_all([job], n, seed)[id(job)] for job in jobs}

    @torch.no_grad()
    def _sample(self, jobs: list[_Job], n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Reverse diffusion for conformers ``0..n-1`` of every job, in batches of at most
        ``max_atoms_per_batch`` atoms. Per job ``(pos, rigid)``, each (n, N, 3): the conformers and
        their torsion-only part ``T(seed, d)`` without the coordinate refinement ``e``."""
        tasks = [(job, i) for job in jobs for i in range(n)]
        out = {id(job): (np.empty((n, job.num_atoms, 3), np.float32), np.empty((n, job.num_atoms, 3), np.float32))
               for job in jobs}
        ts = time_grid(self.steps).to(self.device)
        for chunk in self._chunks(tasks):
            batch = Batch.from_data_list([job.graph for job, _ in chunk]).to(self.device)
            pos_ref = torch.cat([job.seeds[self._seed_of(job, i)] for job, i in chunk]).to(self.device)
            generators = conformer_generators(seed, [i for _, i in chunk])
            sde = self.diffusion.sde(batch, self.mode)
            y = sde.prior_sample(torch.zeros(sde.space.numel, device=self.device), generators)
            score_fn = self.diffusion.score_fn(self.model, batch, pos_ref, sde)
            if chunk[0][0].potential is not None:
                score_fn = physics_guidance(score_fn, sde, functools.partial(self.diffusion.positions, sde, batch, pos_ref),
                                            _batch_potential(chunk), self.guidance_schedule)
            y = SAMPLERS[self.sampler](score_fn, y, sde, ts, generator=generators)
            pos = self.diffusion.positions(sde, batch, pos_ref, y)
            # the rigid part T(seed, d), without the coordinate refinement e (the fallback of a broken conformer)
            rigid = pos - sde.space.split(y)[-1] if self.mode == "refine" else pos
            sizes = batch.ptr.diff().tolist()
            for (job, i), full_i, rigid_i in zip(chunk, pos.cpu().split(sizes), rigid.cpu().split(sizes)):
                out[id(job)][0][i] = full_i.numpy()
                out[id(job)][1][i] = rigid_i.numpy()
        return [out[id(job)] for job in jobs]

    def _chunks(self, tasks: list) -> Iterator[list]:
        """Consecutive runs of ``(job, i)`` tasks with at most ``max_atoms_per_batch`` atoms each."""
        chunk, atoms = [], 0
        for task in tasks:
            size = task[0].num_atoms
            if chunk and atoms + size > self.max_atoms_per_batch:
                yield chunk
                chunk, atoms = [], 0
            chunk.append(task)
            atoms += size
        if chunk:
            yield chunk

    def _seed_of(self, job: _Job, i: int) -> int:
        return (i // self.conformers_per_seed) % len(job.seeds)

    def _finish(self, job: _Job, pos: np.ndarray, rigid: np.ndarray, seed: int, n: int) -> GenerationResult:
        """Stereo fix, then relaxation, energy window and pruning; the conformers as one ``Mol``."""
        notes = list(job.warnings)
        if self.mode == "full":
            pos = self._fix_full(job, pos, notes, n)
        else:
            pos = self._fix_refined(job, pos, rigid, notes)
        out = Chem.Mol(job.mol)
        for i, xyz in pos.items():
            conf = Chem.Conformer(out.GetNumAtoms())
            conf.SetPositions(xyz.astype(np.float64))
            conf.SetIntProp("conformer_index", i)
            conf.SetIntProp("seed", seed)
            out.AddConformer(conf, assignId=True)
        if self.relax is not None:
            self._relax(out, job, notes)
        if self.prune_rms is not None:
            _prune(out, self.prune_rms)
        out.SetProp("_Name", job.name)
        return GenerationResult(job.index, job.name, out, None, notes)

    def _fix_refined(self, job: _Job, pos: np.ndarray, rigid: np.ndarray, notes: list[str]) -> dict[int, np.ndarray]:
        """Conformers ``pos (n, N, 3)`` that changed their seed's configuration or stretched a bond take
        their rigid torsion-only part instead; returns ``{conformer index: (N, 3)}``."""
        seed_of = np.array([self._seed_of(job, i) for i in range(len(pos))])
        stretch = np.abs(_bond_lengths(pos, job.graph) - job.seed_lengths[seed_of])
        broken = (job.check.signs(pos) != job.seed_signs[seed_of]).any(axis=1)
        broken |= (stretch > MAX_BOND_STRETCH).any(axis=1)
        if broken.any():
            pos = np.where(broken[:, None, None], rigid, pos)
            notes.append(f"{int(broken.sum())} of {len(pos)} conformers changed a configuration or stretched a bond "
                         f"by over {MAX_BOND_STRETCH} A; their coordinate refinement was dropped (torsion changes kept)")
        return dict(enumerate(pos))

    def _fix_full(self, job: _Job, pos: np.ndarray, notes: list[str], n: int) -> dict[int, np.ndarray]:
        """The first ``n`` usable of the full-coordinate draws ``pos (D, N, 3)`` (zero CoM): a draw
        with every specified configuration inverted is mirrored; one with some inverted, or a
        specified centre flat, is not used."""
        good = job.check.matches_input(pos)
        mirrored = ~good & job.check.matches_input(-pos)
        pos = np.where(mirrored[:, None, None], -pos, pos)
        if mirrored.any():
            notes.append(f"{int(mirrored.sum())} of {len(pos)} draws came out as the mirror image and were reflected")
        kept = good | mirrored
        if not kept.any():
            raise GenerationError(job.name, "no full-coordinate conformer has the input's stereochemistry")
        used = np.flatnonzero(kept)[:n]
        if len(used) < n:
            notes.append(f"only {len(used)} of {len(pos)} draws had the input's configurations (or their mirror "
                         f"image): {len(used)} conformers instead of {n}")
        return {int(i): pos[i] for i in used}

    def _relax(self, mol: Chem.Mol, job: _Job, notes: list[str]) -> None:
        """Relax every conformer in place, store ``energy``; drop conformers whose configuration the
        relaxation changed, and those outside the energy window."""
        ids = [c.GetId() for c in mol.GetConformers()]
        before = job.check.signs(np.stack([mol.GetConformer(cid).GetPositions() for cid in ids]))
        if self.relax == "mmff":
            energies = relax_mmff(mol, ids)
        else:
            energies = [relax_xtb(mol, cid, method=self.relax, threads=self.num_workers) for cid in ids]
        pos = np.stack([mol.GetConformer(cid).GetPositions() for cid in ids])
        broken = ((job.check.signs(pos) != before) & (before != 0)).any(axis=1)
        for cid, energy, bad in zip(ids, energies, broken):
            mol.GetConformer(cid).SetDoubleProp("energy", float(energy))
            if bad:
                mol.RemoveConformer(cid)
        if broken.any():
            notes.append(f"{int(broken.sum())} conformers changed a configuration during relaxation and were dropped")
        if mol.GetNumConformers() == 0:
            raise GenerationError(job.name, "every conformer changed a configuration during relaxation")
        if self.energy_window is not None:
            low = min(c.GetDoubleProp("energy") for c in mol.GetConformers())
            for conf in list(mol.GetConformers()):
                if conf.GetDoubleProp("energy") - low > self.energy_window:
                    mol.RemoveConformer(conf.GetId())


# what fails one molecule without stopping the others: our typed errors and RDKit / torch errors
# (ValueError or RuntimeError subclasses, CUDA out-of-memory among them)
_MOLECULE_ERRORS = (ValueError, RuntimeError)


def _item_name(item: Chem.Mol | str) -> str:
    return item if isinstance(item, str) else mol_name(item)


def _failure(index: int, name: str, err: Exception) -> GenerationResult:
    """A failed result naming the molecule and the reason."""
    if isinstance(err, (GenerationError, EmbeddingError, RelaxationError)):
        reason = err.reason
    elif isinstance(err, torch.OutOfMemoryError):
        reason = "out of memory while sampling; lower max_atoms_per_batch (--batch-size)"
    elif isinstance(err, (MoleculeRejected, FeaturizationError)):
        reason = str(err)
    else:
        reason = f"{type(err).__name__}: {err}"
    return GenerationResult(index, name, None, reason)


def _batch_potential(chunk: list) -> BatchPotential:
    """The guidance potentials of a chunk of ``(job, i)`` tasks (each job's conformers are consecutive)."""
    segments: list[list] = []
    for job, _ in chunk:
        if segments and segments[-1][0] is job.potential:
            segments[-1][1] += 1
        else:
            segments.append([job.potential, 1])
    return BatchPotential([(potential, count) for potential, count in segments])


def _prune(mol: Chem.Mol, threshold: float) -> None:
    """Greedy heavy-atom RMSD pruning (symmetry-aware): a conformer within ``threshold`` of a kept one
    is dropped; conformers are visited by energy when relaxed, else in order."""
    heavy = Chem.RemoveHs(mol)
    confs = list(mol.GetConformers())
    if confs[0].HasProp("energy"):
        confs.sort(key=lambda c: c.GetDoubleProp("energy"))
    kept: list[int] = []
    for conf in confs:
        cid = conf.GetId()
        if all(rdMolAlign.GetBestRMS(heavy, heavy, k, cid) >= threshold for k in kept):
            kept.append(cid)
    for cid in {c.GetId() for c in confs} - set(kept):
        mol.RemoveConformer(cid)


def generate(
    mol_or_smiles: Chem.Mol | str,
    n: int = 50,
    *,
    seed: int | None = None,
    steps: int | None = None,
    relax: str | None = None,
    prune_rms: float | None = None,
    device: str | None = None,
    model: str | os.PathLike | None = None,
    mode: str = "refine",
    guidance: str | None = None,
    guidance_scale: float | None = None,
) -> Chem.Mol:
    """``n`` conformers of a molecule (an RDKit ``Mol`` or a SMILES string), shipped model by default.

    >>> mol = confdiff.generate("CCOc1ccccc1C(=O)N", n=10, seed=0)
    >>> mol.GetNumConformers()
    10

    The model is loaded once per (model, device) and kept; see ``ConformerGenerator`` for the options.
    """
    device = _resolve_device(device)
    loaded = _cached_model(None if model is None else str(model), str(device), mode)
    generator = ConformerGenerator(loaded, device=device, steps=steps, relax=relax, prune_rms=prune_rms, mode=mode,
                                   guidance=guidance, guidance_scale=guidance_scale)
    return generator.generate(mol_or_smiles, n, seed=seed)
