"""Conformer ensembles: ETKDG seeds, reverse diffusion with the score model, stereo checks, relaxation.

``ConformerGenerator`` keeps one loaded model for many molecules; ``generate()`` is the one-call
API. All conformers of a molecule (and of several molecules) share one graph batch, split so that a
batch never holds more than ``max_atoms_per_batch`` atoms.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdMolAlign
from torch_geometric.data import Batch

from .chem.embed import embed_etkdg
from .chem.featurize import featurize
from .chem.relax import relax_mmff, relax_xtb
from .conformer_diffusion import ConformerDiffusion, ConformerDiffusionConfig
from .diffusion.samplers import SAMPLERS, time_grid
from .nn.score_model import ScoreModel, ScoreModelConfig

__all__ = [
    "DEFAULT_MODEL",
    "ConformerGenerator",
    "GenerationError",
    "GenerationResult",
    "generate",
    "load_model",
]

RELAX_METHODS = ("none", "mmff", "gfnff", "gfn2")


def default_model_path() -> Path:
    """The shipped default checkpoint (package data)."""
    return Path(str(resources.files("confdiff") / "weights" / "conformer_model.pt"))


DEFAULT_MODEL = "default"


class GenerationError(RuntimeError):
    """A molecule for which no ensemble could be generated; ``name`` and ``reason`` say why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class GenerationResult:
    """One molecule's outcome: ``mol`` with the conformers (None on failure) or ``error``."""

    index: int
    name: str
    mol: Chem.Mol | None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mol is not None


def load_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu"):
    """``(ScoreModel, ConformerDiffusion)`` from a checkpoint (the shipped default when ``path`` is None).

    Reads a trainer checkpoint or the slim release file of ``confdiff.train_conformers.export_release``;
    both hold ``model_config = {"model": ..., "diffusion": ...}`` and the EMA weights.
    """
    path = default_model_path() if path in (None, DEFAULT_MODEL) else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("kind") != "conformer_score_model":
        raise ValueError(f"{path} holds {ckpt.get('kind')!r}, not a conformer score model")
    model_config, diffusion_config = ckpt["model_config"]["model"], ckpt["model_config"]["diffusion"]
    state = ckpt["ema"]
    model = ScoreModel(ScoreModelConfig.from_dict(model_config))
    model.load_state_dict(state)
    model.eval().to(device)
    return model, ConformerDiffusion(ConformerDiffusionConfig(**diffusion_config))


def _as_mol(mol_or_smiles: Chem.Mol | str) -> Chem.Mol:
    if isinstance(mol_or_smiles, Chem.Mol):
        return Chem.Mol(mol_or_smiles)
    mol = Chem.MolFromSmiles(mol_or_smiles)
    if mol is None:
        raise GenerationError(str(mol_or_smiles), "invalid SMILES")
    mol.SetProp("_Name", mol_or_smiles)
    return mol


def mol_name(mol: Chem.Mol) -> str:
    if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
        return mol.GetProp("_Name").strip()
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


def _with_hydrogens(mol: Chem.Mol) -> Chem.Mol:
    """Explicit hydrogens, keeping the input's atom order (new hydrogens are appended)."""
    has_3d = mol.GetNumConformers() > 0 and mol.GetConformer().Is3D()
    out = Chem.AddHs(mol, addCoords=has_3d)
    if mol.HasProp("_Name"):
        out.SetProp("_Name", mol.GetProp("_Name"))
    return out


def stereo_signature(mol: Chem.Mol, conf_id: int) -> str:
    """Isomeric SMILES with the stereo read from conformer ``conf_id``'s 3D coordinates."""
    probe = Chem.Mol(mol, confId=conf_id)
    Chem.AssignStereochemistryFrom3D(probe, replaceExistingTags=True)
    return Chem.MolToSmiles(Chem.RemoveHs(probe))


def conformer_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One generator per conformer, seeded from ``(seed, index)`` only (not from the batch)."""
    gens = []
    for i in indices:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1))
        gens.append(g)
    return gens


class ConformerGenerator:
    """Generate conformer ensembles with a loaded score model.

    Parameters
    ----------
    model : path to a checkpoint, ``"default"`` / None for the shipped model, or ``(ScoreModel,
        ConformerDiffusion)`` already built.
    device : ``"cpu"``, ``"cuda"`` or None (CUDA when available).
    steps : reverse-diffusion steps; sampler : a name in ``confdiff.diffusion.SAMPLERS``.
    conformers_per_seed : how many conformers share one ETKDG seed structure (their torsions are
        resampled by the diffusion; the seed only provides bond lengths, angles and ring puckers).
    max_atoms_per_batch : memory bound of one graph batch (atoms of all conformers together).
    relax, prune_rms, energy_window : post-processing (``"mmff"``, ``"gfnff"``, ``"gfn2"``; Angstrom;
        kcal/mol). embed_threads : threads for the ETKDG seeds.
    """

    def __init__(
        self,
        model=None,
        *,
        device: str | torch.device | None = None,
        steps: int = 20,
        sampler: str = "euler_maruyama",
        conformers_per_seed: int = 5,
        max_atoms_per_batch: int = 20000,
        relax: str | None = None,
        prune_rms: float | None = None,
        energy_window: float | None = None,
        embed_threads: int = 1,
    ):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        if conformers_per_seed < 1:
            raise ValueError(f"conformers_per_seed must be >= 1, got {conformers_per_seed}")
        if relax not in (None, *RELAX_METHODS):
            raise ValueError(f"relax must be one of {RELAX_METHODS}, got {relax!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, tuple):
            self.model, self.diffusion = model
            self.model.to(self.device).eval()
        else:
            self.model, self.diffusion = load_model(model, device=self.device)
        self.steps = steps
        self.sampler = sampler
        self.conformers_per_seed = conformers_per_seed
        self.max_atoms_per_batch = max_atoms_per_batch
        self.relax = None if relax == "none" else relax
        self.prune_rms = prune_rms
        self.energy_window = energy_window
        self.embed_threads = embed_threads

    # --- public API -----------------------------------------------------------------------------
    def generate(self, mol_or_smiles: Chem.Mol | str, n: int = 50, *, seed: int | None = None) -> Chem.Mol:
        """``n`` conformers of one molecule as an RDKit ``Mol`` (explicit hydrogens, input atom order).

        Each conformer carries the properties ``conformer_index``, ``seed`` and, when relaxed,
        ``energy`` (kcal/mol). Raises ``GenerationError`` naming the molecule and the reason.
        """
        mol = _as_mol(mol_or_smiles)
        result = next(self.generate_many([mol], n, seed=seed))
        if not result.ok:
            raise GenerationError(result.name, result.error)
        return result.mol

    def generate_many(
        self, mols: Iterable[Chem.Mol | str], n: int = 50, *, seed: int | None = None
    ) -> Iterator[GenerationResult]:
        """Yield one ``GenerationResult`` per input, in order, as each molecule is finished.

        A molecule that fails yields a result with ``error`` set; the others go on.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        base_seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        for index, item in enumerate(mols):
            name = item if isinstance(item, str) else mol_name(item)
            try:
                mol = _as_mol(item)
                name = mol_name(mol)
                out, warnings = self._one(mol, n, base_seed)
                yield GenerationResult(index, name, out, None, warnings)
            except GenerationError as err:
                yield GenerationResult(index, name, None, err.reason)
            except (ValueError, RuntimeError) as err:
                yield GenerationResult(index, name, None, f"{type(err).__name__}: {err}")

    # --- one molecule -----------------------------------------------------------------------------
    def _one(self, mol: Chem.Mol, n: int, seed: int) -> tuple[Chem.Mol, list[str]]:
        name = mol_name(mol)
        mol = _with_hydrogens(mol)
        num_seeds = max(1, math.ceil(n / self.conformers_per_seed))
        embedded = embed_etkdg(mol, num_seeds, seed=seed % (2**31), threads=self.embed_threads)
        seeds_mol = embedded.mol
        warnings = [] if embedded.method == "etkdg" else [f"seed structures from {embedded.method}"]
        graph = featurize(seeds_mol)
        seed_pos = [torch.tensor(seeds_mol.GetConformer(c).GetPositions(), dtype=torch.float32)
                    for c in embedded.conf_ids]
        reference = {stereo_signature(seeds_mol, c) for c in embedded.conf_ids}

        out = Chem.Mol(seeds_mol)
        out.RemoveAllConformers()
        accepted: list[tuple[int, np.ndarray]] = []
        todo = list(range(n))
        rejected = 0
        for attempt in range(3):
            if not todo:
                break
            ids = [i + attempt * n for i in todo]
            positions = self._sample(graph, [seed_pos[i % len(seed_pos)] for i in todo], seed, ids)
            still = []
            for i, pos in zip(todo, positions):
                probe = Chem.Mol(out)
                conf = Chem.Conformer(out.GetNumAtoms())
                conf.SetPositions(pos.astype(np.float64))
                probe.AddConformer(conf, assignId=True)
                if stereo_signature(probe, probe.GetConformers()[-1].GetId()) in reference:
                    accepted.append((i, pos))
                else:
                    still.append(i)
            rejected += len(still)
            todo = still
        if todo:
            warnings.append(f"{len(todo)} of {n} conformers kept breaking the stereochemistry and were dropped")
        elif rejected:
            warnings.append(f"{rejected} conformers with broken stereochemistry were resampled")
        if not accepted:
            raise GenerationError(name, "no conformer preserved the molecule's stereochemistry")
        accepted.sort(key=lambda item: item[0])
        for i, pos in accepted:
            conf = Chem.Conformer(out.GetNumAtoms())
            conf.SetPositions(pos.astype(np.float64))
            cid = out.AddConformer(conf, assignId=True)
            out.GetConformer(cid).SetIntProp("seed", seed)
        self._finish(out)
        out.SetProp("_Name", name)
        return out, warnings

    @torch.no_grad()
    def _sample(self, graph, seed_pos: Sequence[torch.Tensor], seed: int, ids: Sequence[int]) -> list[np.ndarray]:
        """Reverse diffusion for conformers ``ids`` starting from ``seed_pos``; positions (N, 3) each."""
        per_batch = max(1, self.max_atoms_per_batch // max(graph.num_nodes, 1))
        out: list[np.ndarray] = []
        for start in range(0, len(ids), per_batch):
            chunk = list(range(start, min(start + per_batch, len(ids))))
            batch = Batch.from_data_list([graph] * len(chunk)).to(self.device)
            pos_ref = torch.cat([seed_pos[k] - seed_pos[k].mean(0) for k in chunk]).to(self.device)
            generators = conformer_generators(seed, [ids[k] for k in chunk])
            sde = self.diffusion.sde(batch)
            like = torch.zeros(sde.space.numel, device=self.device)
            y = sde.prior_sample(like, generators)
            score_fn = self.diffusion.score_fn(self.model, batch, pos_ref, sde)
            ts = time_grid(self.steps).to(self.device)
            y = SAMPLERS[self.sampler](score_fn, y, sde, ts, generator=generators)
            pos = self.diffusion.positions(sde, batch, pos_ref, y).cpu().numpy()
            out.extend(np.split(pos, len(chunk)))
        return out

    def _finish(self, mol: Chem.Mol) -> None:
        """Relaxation, energy window and RMSD pruning, in place; energies as conformer props."""
        if self.relax is not None:
            ids = [c.GetId() for c in mol.GetConformers()]
            if self.relax == "mmff":
                energies = relax_mmff(mol, ids)
            else:
                energies = [relax_xtb(mol, cid, method=self.relax) for cid in ids]
            for cid, energy in zip(ids, energies):
                mol.GetConformer(cid).SetDoubleProp("energy", float(energy))
            if self.energy_window is not None:
                low = min(energies)
                for cid, energy in zip(ids, energies):
                    if energy - low > self.energy_window:
                        mol.RemoveConformer(cid)
        if self.prune_rms is not None:
            _prune(mol, self.prune_rms)


def _prune(mol: Chem.Mol, threshold: float) -> None:
    """Greedy heavy-atom RMSD pruning (symmetry-aware), keeping the earlier (or lower-energy) one."""
    heavy = Chem.RemoveHs(mol)
    confs = list(mol.GetConformers())
    if confs and confs[0].HasProp("energy"):
        confs.sort(key=lambda c: c.GetDoubleProp("energy"))
    kept: list[int] = []
    for conf in confs:
        cid = conf.GetId()
        if all(rdMolAlign.GetBestRMS(heavy, heavy, k, cid) >= threshold for k in kept):
            kept.append(cid)
    for conf in list(mol.GetConformers()):
        if conf.GetId() not in kept:
            mol.RemoveConformer(conf.GetId())


def generate(
    mol_or_smiles: Chem.Mol | str,
    n: int = 50,
    *,
    seed: int | None = None,
    steps: int | None = None,
    relax: str | None = None,
    prune_rms: float | None = None,
    device: str | None = None,
    model: str | None = None,
) -> Chem.Mol:
    """``n`` conformers of a molecule (an RDKit ``Mol`` or a SMILES string) with the default model.

    >>> mol = confdiff.generate("CCOc1ccccc1C(=O)N", n=10, seed=0)
    >>> mol.GetNumConformers()
    10
    """
    generator = ConformerGenerator(model, device=device, steps=steps or 20, relax=relax, prune_rms=prune_rms)
    return generator.generate(mol_or_smiles, n, seed=seed)
