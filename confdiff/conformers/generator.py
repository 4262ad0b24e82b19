"""Conformer ensembles: ETKDG seeds, reverse diffusion with the score model, stereo checks, relaxation.

``ConformerGenerator`` keeps one loaded model for many molecules; ``generate()`` is the one-call
API. The conformers of a molecule, and of several consecutive molecules, share one graph batch,
split so that no batch holds more than ``max_atoms_per_batch`` atoms (the memory bound).

Conformer ``i`` of a molecule starts from ETKDG seed ``i // conformers_per_seed`` (``ring_conformers_per_seed``,
5 by default, for a molecule with a flexible ring: its puckers come from the seeds) and draws all its
noise from one generator seeded with ``(seed, i)``, so it is the same whatever ``n``, the batch
size or the other molecules in the batch. Every conformer's stereochemistry is compared with its
seed's (a vectorised test of signed volumes and double-bond sides, :class:`StereoCheck`) and every
seed's with the input's; a conformer that breaks it is fixed by dropping its coordinate refinement
(the torsion changes alone are rigid rotations, which cannot change a configuration).

In the ``"full"`` mode (``confdiff.conformers.diffusion.MODES``) there are no seeds: every coordinate comes
from the prior. ``FULL_MODE_DRAWS * n`` conformers are drawn; one whose specified configurations
are all inverted is mirrored (a reflection inverts every tetrahedral centre and keeps double
bonds), one with some, but not all, inverted is not used.

Oversampling (``oversample``, default ``DEFAULT_OVERSAMPLE``): the first round makes
``ceil(oversample * n)`` draws (from as many more seeds), and ``n`` of the usable ones are kept, in
draw order, chosen by their MMFF94 energy as sampled (no full minimisation; screened as the
guidance is with ``guidance="mmff-screened"``; the repulsion term for a molecule without MMFF94
parameters): ``selection="diverse"`` (default) keeps the lowest
``diverse_fraction`` in energy (default ``DIVERSE_FRACTION``) and selects ``n`` of them by
farthest-point selection in heavy-atom RMSD, from the lowest
(``chem.ensembles.farthest_point_conformers``); ``"energy"`` keeps the ``n`` lowest. This is the
teacher's energy window and pruning at the sampler's level: the draws that the model placed in
strained regions go, and near-duplicates give way to distinct conformers (``docs/benchmarks.md``,
"Oversampling ranked by MMFF94 energy").

The torsion polish (``polish_steps``, the torsions mode only, off by default): after the reverse
diffusion, each draw descends its own energy well over its torsions alone
(:mod:`confdiff.conformers.polish`, on the guidance potential), before the checks and the ranking.
With ``keep_unpolished=True`` the selection chooses from both versions of every draw, as drawn and
polished (each checked by the gate; a draw counts as usable when its polished version passes), so an
ensemble keeps the draws whose polish collapsed them as well as their minima; each conformer carries
``polished`` (1 or 0).

The validity gate (``validity_gate=True``, the default): every conformer is checked by
:class:`confdiff.chem.validity.ValidityChecker` (PoseBusters' geometry checks and the input's
stereochemistry); a draw that fails is not used, and more draws are made in rounds until ``n``
pass or ``GATE_MAX_DRAWS * n`` were drawn (``conformer_index`` is the draw's index); a molecule
with fewer gets a warning that names the checks that failed. ``GenerationResult.rejected_draws``
counts the draws that failed (draws ranked out by oversampling are not counted).
"""

from __future__ import annotations

import contextlib
import functools
import math
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
from torch_geometric.data import Batch

from ..chem.embed import EmbeddingError, embed_etkdg
from ..chem.featurize import FeaturizationError, MolGraph, featurize
from ..chem.io import MoleculeRejected, check_molecule, mol_name
from ..chem.ensembles import EnsembleError, farthest_point_conformers, select_conformers
from ..chem.relax import RelaxationError, relax_mmff
from ..chem.stereo import StereoCheck, stereo_smiles
from ..chem.torsions import flexible_rings
from ..chem.validity import LOCAL_CHECKS, ValidityChecker, ValidityError
from .diffusion import MODES, ConformerDiffusion, ConformerDiffusionConfig
from .modes import DEFAULT_MODE
from .physics import (DEFAULT_GUIDANCE, GUIDANCE_CHOICES, BatchPotential, Potential, guidance_schedule, make_potential,
                      physics_guidance)
from .polish import torsion_descent
from ..diffusion.samplers import SAMPLERS, time_grid
from ..nn.score_model import ScoreModel, ScoreModelConfig

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_MODE",
    "DEFAULT_MODEL",
    "DEFAULT_OVERSAMPLE",
    "DEFAULT_STEPS",
    "MODES",
    "RELAX_METHODS",
    "ConformerGenerator",
    "GenerationError",
    "GenerationResult",
    "conformer_generators",
    "default_model_path",
    "generate",
    "load_model",
]

DEFAULT_MODEL = "default"
DEFAULT_STEPS = {"refine": 20, "torsions": 20, "full": 50}  # reverse-diffusion steps per mode
RELAX_METHODS = ("none", "mmff", "gfnff", "gfn2")
SEED_RELAX_METHODS = ("none", "mmff")
SMALL_RING_TORSIONS = False  # the seeds' ETKDG uses the torsion preferences of small rings
SEED_MMFF_ITERS = 500  # MMFF94 iterations per seed structure (converged for drug-like molecules)
MAX_BOND_STRETCH = 0.3  # A: a conformer whose bond lengths differ more from its seed's is broken
FULL_MODE_DRAWS = 2  # the full mode's first round draws this many conformers per one asked for
GATE_MAX_DRAWS = 4  # the validity gate draws at most this many conformers per one asked for
RING_CONFORMERS_PER_SEED = 5  # conformers per seed of a molecule with a flexible ring (its puckers come from the seeds)
DEFAULT_OVERSAMPLE = 2.0  # first-round draws per conformer asked for
SELECTIONS = ("diverse", "energy")  # how n of the oversampled draws are chosen
DIVERSE_FRACTION = 0.75  # "diverse" selects among this share of the usable draws, the lowest in energy


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
    warnings : what was changed or noticed (salt stripped, fewer conformers than asked, stereoisomers mixed).
    rejected_draws : draws not used (a wrong configuration in the full mode, a failed validity
        check), of ``num_draws`` drawn.
    """

    index: int
    name: str
    mol: Chem.Mol | None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    rejected_draws: int = 0
    num_draws: int = 0

    @property
    def ok(self) -> bool:
        return self.mol is not None


# --- the model --------------------------------------------------------------------------------------

#: the shipped checkpoint of each mode (package data): the refine model was trained for the
#: refine path only; the full one was fine-tuned from it for all three modes (docs/benchmarks.md)
DEFAULT_MODEL_FILES = {"refine": "conformer_model.pt", "torsions": "conformer_model.pt",
                       "full": "conformer_model_full.pt"}


def default_model_path(mode: str = DEFAULT_MODE) -> Path:
    """The shipped default checkpoint for ``mode`` (package data)."""
    if mode not in DEFAULT_MODEL_FILES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return Path(str(resources.files("confdiff") / "weights" / DEFAULT_MODEL_FILES[mode]))


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu", mode: str = DEFAULT_MODE):
    """``(ScoreModel, ConformerDiffusion)`` from a checkpoint (the shipped default for ``mode`` when
    ``path`` is None).

    Reads a trainer checkpoint or the release file of ``confdiff.conformers.training.export_release``;
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


# --- seeds ---------------------------------------------------------------------

def conformer_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per conformer, seeded from ``(seed, index)`` only (not from the batch)."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0]
        gens.append(torch.Generator().manual_seed(int(state >> 1)))
    return gens


# --- one molecule's preparation ----------------------------------------------------------------------

def _bond_lengths(pos: np.ndarray, graph: MolGraph) -> np.ndarray:
    """Lengths of the bonds of ``graph`` in conformers ``pos (K, N, 3)``: shape (K, B)."""
    i, j = graph.edge_index[:, ::2].numpy()  # each bond once (edges come in both directions)
    return np.linalg.norm(pos[:, i] - pos[:, j], axis=-1)


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
    validity: ValidityChecker | None  # None without the validity gate
    warnings: list[str]
    conformers_per_seed: int = 1  # draws that share one seed structure
    potential: Potential | None = None  # the guidance potential, None without guidance
    ranking: Potential | None = None  # the energy that ranks oversampled draws, None without oversampling

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
    ring_conformers_per_seed : the same for a molecule with a flexible ring (non-aromatic, 5 or more
        atoms; None: ``conformers_per_seed``): its ring puckers come only from the seeds, so it gets more
        of them (default ``RING_CONFORMERS_PER_SEED``).
    seed_relax : ``"mmff"`` (default) minimises every ETKDG seed with MMFF94 (``SEED_MMFF_ITERS``
        iterations) before the diffusion, so that the seeds' bond lengths, angles and ring puckers
        look like the force-field minima the model was trained on; ``"none"`` uses them as
        embedded. A molecule without MMFF94 parameters keeps its embedded seeds (with a note), and so
        does a seed whose minimum fails a check of its local geometry that the embedded structure
        passes (with the gate on; ``chem.validity.LOCAL_CHECKS``).
    small_ring_torsions : embed the seeds with the torsion preferences of small rings
        (``chem.embed.embed_etkdg``): more of their puckers are the reference ensembles' ones.
    max_atoms_per_batch : most atoms (all conformers of all molecules together) in one graph batch;
        bounds memory. A molecule with more atoms than this is refused.
    relax : None / ``"none"``, ``"mmff"``, ``"gfnff"`` or ``"gfn2"`` (xtb); energies in kcal/mol.
    prune_rms : drop conformers within this heavy-atom RMSD (Angstrom) of a kept one.
    energy_window : after relaxation, keep conformers within this many kcal/mol of the lowest.
    num_workers : threads for the ETKDG seeds and for xtb.
    num_threads : torch's intra-op threads while sampling on the CPU, set for the sampling and
        restored after it (None: torch's own setting). One by default: the score model is small, so
        more threads gain little, and processes that generate side by side would oversubscribe the cores.
    validity_gate : only conformers that pass the validity checks are returned; failing draws are
        replaced by new ones (see the module docstring).
    oversample : draws per conformer asked for (>= 1; None: ``DEFAULT_OVERSAMPLE``); ``n`` of the
        usable draws are returned, chosen by ``selection`` (see the module docstring). 1 returns the
        first ``n`` usable draws.
    selection : ``"diverse"`` (default: farthest-point in RMSD among the lowest ``diverse_fraction``
        in MMFF94 energy) or ``"energy"`` (the ``n`` lowest). diverse_fraction : in (0, 1]; lower
        keeps fewer high-energy draws (precision), higher more distinct ones (recall).
    mode : ``"torsions"`` (``DEFAULT_MODE``: the torsions of the seeds, whose bond lengths, angles and
        ring puckers are kept exactly), ``"refine"`` (torsions and a coordinate refinement of the seeds)
        or ``"full"`` (all coordinates from the prior, no seeds; needs a model trained with
        ``full_fraction > 0``).
    guidance : physics guidance in the last part of the reverse diffusion (``confdiff.conformers.physics``):
        ``"repulsion"`` (bonded geometry + soft repulsion), ``"mmff"`` (MMFF94; a molecule without
        MMFF94 parameters falls back to ``"repulsion"`` with a warning), ``"mmff-screened"`` (MMFF94 with a
        distance-dependent dielectric ``4 r``; it also ranks the oversampled draws), ``"none"``; None: the
        mode's default (``DEFAULT_GUIDANCE``). guidance_scale : ``lambda`` at the end of the
        trajectory (None: the mode's default); samples tend to ``p_model(x) exp(-lambda E(x) / kT)``.
    polish_steps : steps of energy descent over the torsions alone after the reverse diffusion, on the
        guidance potential (``confdiff.conformers.polish``; none without guidance); the torsions mode
        only; 0 (the default) turns it off. keep_unpolished : the oversampled selection chooses from every
        draw as drawn and as polished (see the module docstring); without the polish or oversampling it
        changes nothing.
    """

    def __init__(
        self,
        model=None,
        *,
        device: str | torch.device | None = None,
        steps: int | None = None,
        sampler: str = "euler_maruyama",
        conformers_per_seed: int = 10,
        ring_conformers_per_seed: int | None = RING_CONFORMERS_PER_SEED,
        seed_relax: str = "mmff",
        small_ring_torsions: bool = SMALL_RING_TORSIONS,
        max_atoms_per_batch: int = 20000,
        relax: str | None = None,
        prune_rms: float | None = None,
        energy_window: float | None = None,
        num_workers: int = 1,
        num_threads: int | None = 1,
        validity_gate: bool = True,
        oversample: float | None = None,
        selection: str = "diverse",
        mode: str = DEFAULT_MODE,
        guidance: str | None = None,
        guidance_scale: float | None = None,
        polish_steps: int = 0,
        diverse_fraction: float = DIVERSE_FRACTION,
        keep_unpolished: bool = False,
    ):
        steps = DEFAULT_STEPS.get(mode, 1) if steps is None else steps
        oversample = DEFAULT_OVERSAMPLE if oversample is None else oversample
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
        if ring_conformers_per_seed is not None and ring_conformers_per_seed < 1:
            raise ValueError(f"ring_conformers_per_seed must be >= 1, got {ring_conformers_per_seed}")
        if seed_relax not in SEED_RELAX_METHODS:
            raise ValueError(f"seed_relax must be one of {SEED_RELAX_METHODS}, got {seed_relax!r}")
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
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        if not oversample >= 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if not 0 < diverse_fraction <= 1:
            raise ValueError(f"diverse_fraction must be in (0, 1], got {diverse_fraction}")
        if polish_steps < 0:
            raise ValueError(f"polish_steps must be >= 0, got {polish_steps}")
        self.device = _resolve_device(device)
        if isinstance(model, tuple):
            self.model, self.diffusion = model
            self.model.to(self.device).eval()
        else:
            self.model, self.diffusion = load_model(model, device=self.device, mode=mode)
        self.mode = self.diffusion.check_mode(mode)  # the Mode object, resolved once
        if polish_steps and (self.mode.coordinates or not self.mode.torsions):
            raise ValueError(f"polish_steps={polish_steps}: the torsion polish needs mode='torsions', got {mode!r}")
        self.polish_steps = polish_steps
        self.keep_unpolished = keep_unpolished
        self.steps = steps
        self.sampler = sampler
        self.conformers_per_seed = conformers_per_seed
        self.ring_conformers_per_seed = conformers_per_seed if ring_conformers_per_seed is None else ring_conformers_per_seed
        self.seed_relax = seed_relax
        self.small_ring_torsions = small_ring_torsions
        self.max_atoms_per_batch = max_atoms_per_batch
        self.relax = None if relax == "none" else relax
        self.prune_rms = prune_rms
        self.energy_window = energy_window
        self.num_workers = num_workers
        self.num_threads = num_threads
        self.validity_gate = validity_gate
        self.oversample = oversample
        self.selection = selection
        self.diverse_fraction = diverse_fraction
        self.guidance = guidance
        # lambda(t), zero at high noise (raises ValueError for a negative scale)
        scale = default_scale if guidance_scale is None else guidance_scale
        self.guidance_schedule = guidance_schedule(self.mode.name, scale)

    # --- public API -------------------------------------------------------------------------------
    def generate(self, mol_or_smiles: Chem.Mol | str, n: int = 50, *, seed: int | None = None) -> Chem.Mol:
        """``n`` conformers of one molecule as an RDKit ``Mol`` (explicit hydrogens, input atom order).

        Each conformer carries the properties ``conformer_index`` (its index ``i``), ``seed``, when
        relaxed, ``energy`` (kcal/mol) and, when the input leaves stereo elements open, ``stereoisomer``
        (the canonical isomeric SMILES of its configuration); fewer than ``n`` remain after pruning or an energy
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
            atoms += job.num_atoms * self._first_draws(n)
            if atoms >= self.max_atoms_per_batch:
                yield from self._run(pack, n, seed)
                pack, atoms = [], 0
        yield from self._run(pack, n, seed)

    # --- stages -------------------------------------------------------------------------------------
    @property
    def _polishes(self) -> bool:
        """Whether the draws are polished: polish steps asked for, and a guidance potential to descend."""
        return self.polish_steps > 0 and self.guidance != "none" and self.guidance_schedule.scale != 0

    def _first_draws(self, n: int) -> int:
        """Draws of the first round for ``n`` conformers."""
        return math.ceil(self.oversample * n - 1e-9) * (FULL_MODE_DRAWS if self.mode.full else 1)  # 1.1 * 10 -> 11

    def _prepare(self, index: int, item: Chem.Mol | str, n: int, seed: int) -> _Job:
        """Parse, check, embed the ETKDG seeds of the first round's draws and featurise one molecule."""
        mol, notes = _parse(item)
        name = mol_name(mol)
        mol = Chem.AddHs(mol)  # hydrogens appended: the input's atoms keep their indices
        mol.RemoveAllConformers()
        if mol.GetNumAtoms() > self.max_atoms_per_batch:
            raise GenerationError(name, f"{mol.GetNumAtoms()} atoms (with hydrogens) exceed max_atoms_per_batch="
                                        f"{self.max_atoms_per_batch}; raise it (--batch-size) if memory allows")
        check = StereoCheck.from_mol(mol)
        graph = featurize(mol)
        validity = None
        if self.validity_gate:
            try:
                validity = ValidityChecker.from_mol(mol)
            except ValidityError as err:
                raise GenerationError(name, f"the validity checks cannot be prepared: {err}") from None
        potential, ranking = self._potentials(mol, notes)
        if self.mode.full:
            zero = np.zeros((1, mol.GetNumAtoms(), 3))
            return _Job(index, name, mol, graph, torch.zeros(zero.shape), check.signs(zero),
                        _bond_lengths(zero, graph), check, validity, notes, potential=potential, ranking=ranking)
        per_seed = self.ring_conformers_per_seed if flexible_rings(mol) else self.conformers_per_seed
        num_seeds = -(-self._first_draws(n) // per_seed)
        embedded = embed_etkdg(mol, num_seeds, seed=seed % 2**31, threads=self.num_workers,
                               small_ring_torsions=self.small_ring_torsions)
        if embedded.method != "etkdg":
            notes.append(f"ETKDG failed; seed structures from {embedded.method}")
        seeds = np.stack([embedded.mol.GetConformer(c).GetPositions() for c in embedded.conf_ids])
        if self.seed_relax == "mmff" and embedded.method == "etkdg":
            try:
                relax_mmff(embedded.mol, list(embedded.conf_ids), max_iters=SEED_MMFF_ITERS)
            except RelaxationError as err:
                notes.append(f"{err.reason}: the seed structures are used as embedded")
            else:
                minimised = np.stack([embedded.mol.GetConformer(c).GetPositions() for c in embedded.conf_ids])
                seeds = _minimised_seeds(seeds, minimised, validity, notes)
        good = check.matches_input(seeds)
        if not good.any():
            raise GenerationError(name, "no seed structure has the input's stereochemistry")
        if not good.all():
            notes.append(f"{int((~good).sum())} of {len(good)} seed structures broke the stereochemistry and were skipped")
        seeds = seeds[good] - seeds[good].mean(axis=1, keepdims=True)
        return _Job(index, name, mol, graph, torch.tensor(seeds, dtype=torch.float32), check.signs(seeds),
                    _bond_lengths(seeds, graph), check, validity, notes, conformers_per_seed=per_seed,
                    potential=potential, ranking=ranking)

    def _potentials(self, mol: Chem.Mol, notes: list[str]) -> tuple[Potential | None, Potential | None]:
        """The guidance potential of ``mol`` (None without guidance) and the energy that ranks
        oversampled draws (None without oversampling). MMFF94 falls back to the repulsion term."""
        guided = self.guidance != "none" and self.guidance_schedule.scale != 0
        mmff_kind = self.guidance if self.guidance.startswith("mmff") else "mmff"  # a screened guidance ranks screened
        mmff = None
        if (guided and self.guidance == mmff_kind) or self.oversample > 1:
            try:
                mmff = make_potential(mmff_kind, mol)
            except ValueError as err:
                notes.append(f"{err}: the repulsion term stands in for it")
                mmff = make_potential("repulsion", mol)
        potential = None if not guided else mmff if self.guidance == mmff_kind else make_potential(self.guidance, mol)
        return potential, mmff if self.oversample > 1 else None

    def _run(self, pack: list, n: int, seed: int) -> Iterator[GenerationResult]:
        """Sample the jobs of ``pack`` together, in rounds until each has ``n`` usable draws or its
        ``GATE_MAX_DRAWS * n`` draws are spent, and yield every result of the pack in order."""
        jobs = [item for item in pack if isinstance(item, _Job)]
        first = self._first_draws(n)
        draws = {id(job): first for job in jobs}
        usable: dict[int, dict[int, np.ndarray]] = {id(job): {} for job in jobs}  # {draw index: (N, 3)}
        unpolished: dict[int, dict[int, np.ndarray]] = {id(job): {} for job in jobs}  # the same, as drawn
        failed: dict[int, dict[str, int]] = {id(job): {} for job in jobs}  # {check: draws failing it}
        errors: dict[int, Exception] = {}
        tasks = {id(job): (job, range(first)) for job in jobs}
        while tasks:
            for key, outcome in self._sample_all(tasks, seed).items():
                if isinstance(outcome, Exception):
                    errors[key] = outcome
                else:
                    passed, passed_unpolished = self._usable(*outcome, failed[key])
                    usable[key].update(passed)
                    unpolished[key].update(passed_unpolished)
            tasks = {}
            for job in jobs if self.validity_gate else ():
                key = id(job)
                missing, room = n - len(usable[key]), GATE_MAX_DRAWS * n - draws[key]
                if key in errors or missing <= 0 or room <= 0:
                    continue
                rate = max(len(usable[key]) / draws[key], 0.1)  # the pass rate so far, at least 1 in 10
                more = min(room, math.ceil(missing / rate))
                tasks[key] = (job, range(draws[key], draws[key] + more))
                draws[key] += more
        for item in pack:
            if isinstance(item, GenerationResult):
                yield item
                continue
            try:
                if id(item) in errors:
                    raise errors[id(item)]
                yield self._finish(item, usable[id(item)], unpolished[id(item)], draws[id(item)], failed[id(item)],
                                   seed, n)
            except _MOLECULE_ERRORS as err:
                yield _failure(item.index, item.name, err)

    def _sample_all(self, tasks: dict[int, tuple[_Job, range]], seed: int) -> dict[int, tuple | Exception]:
        """``id(job) -> (job, indices, pos, rigid, unpolished)`` for ``tasks: id(job) -> (job, draw indices)``,
        sampled in shared batches (on ``num_threads`` threads on the CPU); when that runs out of
        memory, every job is sampled alone so that only the culprit gets the error."""
        try:
            with _intra_op_threads(self.num_threads if self.device.type == "cpu" else None):
                return self._sample(list(tasks.values()), seed)
        except torch.OutOfMemoryError as err:
            if len(tasks) == 1:
                return {key: err for key in tasks}
        return {key: self._sample_all({key: task}, seed)[key] for key, task in tasks.items()}

    @torch.no_grad()
    def _sample(self, tasks: list[tuple[_Job, range]], seed: int) -> dict[int, tuple]:
        """Reverse diffusion for the given draws of every job, in batches of at most
        ``max_atoms_per_batch`` atoms. Per job ``(job, indices, pos, rigid, unpolished)``, each of the
        last three (D, N, 3): the conformers, their torsion-only part ``T(seed, d)`` without the
        coordinate refinement ``e``, and the conformers before the polish (None unless
        ``keep_unpolished`` and polished)."""
        keep = self.keep_unpolished and self._polishes

        def empty(job: _Job, indices: range) -> np.ndarray:
            return np.empty((len(indices), job.num_atoms, 3), np.float32)

        out = {id(job): (job, np.asarray(indices), empty(job, indices), empty(job, indices),
                         empty(job, indices) if keep else None) for job, indices in tasks}
        draws = [(job, i, k) for job, indices in tasks for k, i in enumerate(indices)]
        ts = time_grid(self.steps).to(self.device)
        for chunk in self._chunks(draws):
            batch = Batch.from_data_list([job.graph for job, _, _ in chunk]).to(self.device)
            pos_ref = torch.cat([job.seeds[self._seed_of(job, i)] for job, i, _ in chunk]).to(self.device)
            generators = conformer_generators(seed, [i for _, i, _ in chunk])
            sde = self.diffusion.sde(batch, self.mode)
            y = sde.prior_sample(torch.zeros(sde.space.numel, device=self.device), generators)
            score_fn = self.diffusion.score_fn(self.model, batch, pos_ref, sde)
            positions = functools.partial(self.diffusion.positions, sde, batch, pos_ref)
            potential = _batch_potential(chunk) if chunk[0][0].potential is not None else None
            if potential is not None:
                score_fn = physics_guidance(score_fn, sde, positions, potential, self.guidance_schedule)
            y = SAMPLERS[self.sampler](score_fn, y, sde, ts, generator=generators)
            drawn = self.diffusion.positions(sde, batch, pos_ref, y) if keep else None
            if potential is not None and self.polish_steps:
                y, _ = torsion_descent(y, positions, potential, batch.batch[batch.torsion_index[0]], batch.num_graphs,
                                       self.polish_steps)
            pos = self.diffusion.positions(sde, batch, pos_ref, y)
            # the rigid part T(seed, d), without the coordinate refinement e (the fallback of a broken conformer)
            rigid = pos - sde.space.split(y)[-1] if self.mode.torsions and self.mode.coordinates else pos
            sizes = batch.ptr.diff().tolist()
            for (job, _, k), full_k, rigid_k in zip(chunk, pos.cpu().split(sizes), rigid.cpu().split(sizes)):
                out[id(job)][2][k] = full_k.numpy()
                out[id(job)][3][k] = rigid_k.numpy()
            if drawn is not None:
                for (job, _, k), drawn_k in zip(chunk, drawn.cpu().split(sizes)):
                    out[id(job)][4][k] = drawn_k.numpy()
        return out

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
        return (i // job.conformers_per_seed) % len(job.seeds)

    def _usable(self, job: _Job, indices: np.ndarray, pos: np.ndarray, rigid: np.ndarray, unpolished: np.ndarray | None,
                failed: dict[str, int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """The usable draws ``{draw index: (N, 3)}`` of ``pos (D, N, 3)``: the configuration fixed (refine:
        a conformer that changed its seed's configuration or stretched a bond by over
        ``MAX_BOND_STRETCH`` takes its torsion-only part ``rigid``; full: a mirror image is
        reflected, any other wrong configuration is not used), then the validity gate. Counts
        each check's failures in ``failed``. Second: the usable draws' versions before the polish
        (``unpolished (D, N, 3)``, torsions mode; None: none) that pass the gate too."""
        if self.mode.full:
            good = job.check.matches_input(pos)
            mirrored = ~good & job.check.matches_input(-pos)
            pos = np.where(mirrored[:, None, None], -pos, pos)
            keep = good | mirrored
            if (~keep).any():
                failed["stereochemistry"] = failed.get("stereochemistry", 0) + int((~keep).sum())
        else:
            seed_of = np.array([self._seed_of(job, i) for i in indices])
            stretch = np.abs(_bond_lengths(pos, job.graph) - job.seed_lengths[seed_of])
            broken = (job.check.signs(pos) != job.seed_signs[seed_of]).any(axis=1)
            broken |= (stretch > MAX_BOND_STRETCH).any(axis=1)
            pos = np.where(broken[:, None, None], rigid, pos)
            keep = np.ones(len(pos), dtype=bool)
        if job.validity is not None:
            verdicts = job.validity.check(pos)
            for name, ok in verdicts.items():
                if (keep & ~ok).any():
                    failed[name] = failed.get(name, 0) + int((keep & ~ok).sum())
                keep &= ok
        usable = {int(i): p for i, p, k in zip(indices, pos, keep) if k}
        if unpolished is None:
            return usable, {}
        if job.validity is not None:  # the torsion changes keep every configuration: only the gate decides
            keep = keep & np.logical_and.reduce(list(job.validity.check(unpolished).values()))
        return usable, {int(i): p for i, p, k in zip(indices, unpolished, keep) if k}

    def _finish(self, job: _Job, usable: dict[int, np.ndarray], unpolished: dict[int, np.ndarray], draws: int,
                failed: dict[str, int], seed: int, n: int) -> GenerationResult:
        """``n`` usable draws (chosen by ``selection`` when oversampling, from ``usable`` and, with
        ``keep_unpolished``, their versions before the polish; else the first), relaxed, windowed and
        pruned as asked, as one ``Mol``."""
        notes = list(job.warnings)
        if not usable:
            raise GenerationError(job.name, f"none of {draws} draws was usable ({_failed_checks(failed)})")
        pool = {(i, True): p for i, p in usable.items()} | {(i, False): p for i, p in unpolished.items()}
        used = sorted(usable)
        if job.ranking is not None and len(pool) > n:
            chosen = self._choose(job, pool, n)
        else:
            chosen = [(i, True) for i in used[:n]]
        if len(used) < n:
            notes.append(f"only {len(used)} of {draws} draws were usable ({_failed_checks(failed)}): "
                         f"{len(used)} conformers instead of {n}")
        out = Chem.Mol(job.mol)
        for i, polished in chosen:
            conf = Chem.Conformer(out.GetNumAtoms())
            conf.SetPositions(pool[i, polished].astype(np.float64))
            conf.SetIntProp("conformer_index", i)
            conf.SetIntProp("seed", seed)
            if self._polishes:
                conf.SetIntProp("polished", int(polished))
            out.AddConformer(conf, assignId=True)
        if self.relax is not None or self.prune_rms is not None:
            self._select(out, notes)
        if job.check.num_open:
            _label_stereoisomers(out, job.check.num_open, notes)
        out.SetProp("_Name", job.name)
        return GenerationResult(job.index, job.name, out, None, notes, rejected_draws=draws - len(usable),
                                num_draws=draws)

    def _choose(self, job: _Job, pool: dict[tuple[int, bool], np.ndarray], n: int) -> list[tuple[int, bool]]:
        """``n`` of the candidates ``pool`` (``{(draw index, polished): (N, 3)}``), chosen by ``selection`` from
        their energies; sorted."""
        used = sorted(pool)
        pos = np.stack([pool[key] for key in used])
        order = np.argsort(job.ranking.energy_and_grad(torch.from_numpy(pos).double())[0].numpy(), kind="stable")
        if self.selection == "energy":
            return sorted(used[k] for k in order[:n])
        candidates = order[: max(n, int(self.diverse_fraction * len(order)))]
        mol = Chem.Mol(job.mol)
        for k in candidates:
            conf = Chem.Conformer(mol.GetNumAtoms())
            conf.SetPositions(pos[k].astype(np.float64))
            mol.AddConformer(conf, assignId=True)  # ids 0, 1, ... in increasing energy
        return sorted(used[candidates[c]] for c in farthest_point_conformers(mol, n))

    def _select(self, mol: Chem.Mol, notes: list[str]) -> None:
        """Relaxation, stereo check, energy window and pruning (``chem.ensembles.select_conformers``), in
        place: relaxed conformers carry ``energy``, the others are removed; the conformer order is kept."""
        selection = select_conformers(mol, relax=self.relax, energy_window=self.energy_window,
                                      prune_rms=self.prune_rms, threads=self.num_workers)
        if selection.num_broken:
            notes.append(f"{selection.num_broken} conformers changed a configuration during relaxation and were dropped")
        for cid, energy in zip(selection.conf_ids, selection.energies or ()):
            mol.GetConformer(cid).SetDoubleProp("energy", float(energy))
        for cid in {c.GetId() for c in mol.GetConformers()} - set(selection.conf_ids):
            mol.RemoveConformer(cid)


# what fails one molecule without stopping the others: the typed errors of reading, embedding,
# featurising, relaxing and generating, and running out of memory. Anything else (a shape error in
# the score model, a CUDA error) is a bug and propagates with its traceback.
_MOLECULE_ERRORS = (GenerationError, MoleculeRejected, EmbeddingError, FeaturizationError, RelaxationError,
                    EnsembleError, torch.OutOfMemoryError)


@contextlib.contextmanager
def _intra_op_threads(threads: int | None):
    """torch's intra-op thread count set to ``threads`` inside the block and restored after it."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _minimised_seeds(embedded: np.ndarray, minimised: np.ndarray, validity: ValidityChecker | None,
                     notes: list[str]) -> np.ndarray:
    """The seeds ``(S, N, 3)``: each MMFF94 minimum, or its embedded structure where the minimum fails a
    check of the local geometry (``LOCAL_CHECKS``) that the embedded structure passes. MMFF94's minimum
    can lie outside the distance-geometry bounds (the P-C-P angle of a bisphosphonate); no draw of the
    torsions mode, which keeps the seed's bond lengths and angles, could then pass the gate."""
    if validity is None:
        return minimised

    def local(pos: np.ndarray) -> np.ndarray:
        verdicts = validity.check(pos)
        return np.logical_and.reduce([verdicts[name] for name in LOCAL_CHECKS])

    take = ~local(minimised)
    if take.any():  # the embedded structures are checked only where the minima fail
        take[take] = local(embedded[take])
    if take.any():
        notes.append(f"{int(take.sum())} of {len(take)} MMFF94-minimised seed structures failed a check of their "
                     "bond lengths, angles or rings: their embedded structures are used")
    return np.where(take[:, None, None], embedded, minimised)


def _label_stereoisomers(mol: Chem.Mol, num_open: int, notes: list[str]) -> None:
    """Give every conformer of ``mol`` its stereoisomer, the canonical isomeric SMILES perceived from its
    3D structure, as the property ``stereoisomer``; note when the ensemble holds more than one. Elements
    that the input leaves open but only one configuration can take (bridgeheads) give one isomer, no note."""
    counts: dict[str, int] = {}
    for conf in mol.GetConformers():
        smiles = stereo_smiles(mol, conf.GetId())
        conf.SetProp("stereoisomer", smiles)
        counts[smiles] = counts.get(smiles, 0) + 1
    if len(counts) > 1:
        notes.append(f"{num_open} stereo element(s) unspecified: each conformer keeps its seed's configuration, "
                     f"and the {mol.GetNumConformers()} conformers are {len(counts)} stereoisomers "
                     "(property `stereoisomer`)")


def _failed_checks(failed: dict[str, int]) -> str:
    """``"failed: internal_steric_clash 12, bond_lengths 3"``, most frequent first."""
    ranked = sorted(failed.items(), key=lambda kv: -kv[1])
    return "failed: " + ", ".join(f"{name} {count}" for name, count in ranked) if ranked else "no check failed"


def _item_name(item: Chem.Mol | str) -> str:
    return item if isinstance(item, str) else mol_name(item)


def _failure(index: int, name: str, err: Exception) -> GenerationResult:
    """A failed result naming the molecule and the reason."""
    if isinstance(err, (GenerationError, EmbeddingError, RelaxationError, EnsembleError)):
        reason = err.reason
    elif isinstance(err, torch.OutOfMemoryError):
        reason = "out of memory while sampling; lower max_atoms_per_batch (--batch-size)"
    elif isinstance(err, (MoleculeRejected, FeaturizationError)):
        reason = str(err)
    else:
        reason = f"{type(err).__name__}: {err}"
    return GenerationResult(index, name, None, reason)


def _batch_potential(chunk: list) -> BatchPotential:
    """The guidance potentials of a chunk of ``(job, draw index, row)`` tasks (each job's conformers are consecutive)."""
    segments: list[list] = []
    for job, *_ in chunk:
        if segments and segments[-1][0] is job.potential:
            segments[-1][1] += 1
        else:
            segments.append([job.potential, 1])
    return BatchPotential([(potential, count) for potential, count in segments])


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
    mode: str = DEFAULT_MODE,
    validity_gate: bool = True,
    guidance: str | None = None,
    guidance_scale: float | None = None,
    num_threads: int | None = 1,
    seed_relax: str = "mmff",
    small_ring_torsions: bool = SMALL_RING_TORSIONS,
    oversample: float | None = None,
    selection: str = "diverse",
    polish_steps: int = 0,
    diverse_fraction: float = DIVERSE_FRACTION,
    keep_unpolished: bool = False,
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
                                   validity_gate=validity_gate, guidance=guidance, guidance_scale=guidance_scale,
                                   num_threads=num_threads, seed_relax=seed_relax, oversample=oversample,
                                   small_ring_torsions=small_ring_torsions, selection=selection,
                                   polish_steps=polish_steps, diverse_fraction=diverse_fraction,
                                   keep_unpolished=keep_unpolished)
    return generator.generate(mol_or_smiles, n, seed=seed)
