"""Training the conformer score model on built ensembles (CPU, CUDA, or ``torchrun``).

Each step draws one conformer of every molecule in the batch (uniformly from its ensemble by
default, so every low-energy minimum counts, as coverage does; by a power of the Boltzmann weights
with ``--boltzmann-power``) with the step's generator, so that a resumed run
draws what an uninterrupted one would, and minimises :meth:`ConformerDiffusion.loss`. Every
``--eval-every`` steps, validation runs the loss on held-out molecules and a small COV-R / MAT-R check
(Ganea et al. 2021) that generates ``2K`` conformers for a few of them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from torch_geometric.data import Batch

from .dataset import ConformerDataset
from ..chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
from ..chem.metrics import coverage_matching, rmsd_matrix
from ..diffusion import ZeroCoM
from ..nn.score_model import ScoreModel, ScoreModelConfig
from ..train import CHECKPOINT_NAME, TrainConfig, Trainer, load_checkpoint
from .diffusion import ConformerDiffusion, ConformerDiffusionConfig
from .generator import ConformerGenerator

__all__ = [
    "ConformerTrainingData",
    "collate_conformers",
    "coverage_evaluator",
    "draw_conformers",
    "export_release",
    "reference_ensemble",
    "train_conformer_model",
    "training_loss",
]

KIND = "conformer_score_model"
EVAL_THRESHOLD = 0.75  # Angstrom, the GEOM-DRUGS COV threshold


class ConformerTrainingData(torch.utils.data.Dataset):
    """Per molecule ``(MolGraph, pos_ensemble (K, N, 3), weights (K,))`` from a :class:`ConformerDataset`."""

    def __init__(self, dataset: ConformerDataset, max_atoms: int | None = None):
        self.items = [it for it in dataset.items if max_atoms is None or it["graph"].num_nodes <= max_atoms]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        return item["graph"], item["pos"], item["weights"]


def collate_conformers(samples) -> Batch:
    """The molecules' graphs with their whole ensembles, for :func:`draw_conformers`.

    ``ensemble (N_total, K_max, 3)``: each atom's position in every conformer of its molecule
    (zero-padded to the batch's largest ensemble); ``num_conformers (G,)`` long;
    ``conformer_weights (G, K_max)``: the Boltzmann weights (zero-padded).
    """
    k_max = max(ensemble.shape[0] for _, ensemble, _ in samples)
    graphs = []
    for graph, ensemble, weights in samples:
        g = graph.clone()
        k, n = ensemble.shape[:2]
        g.ensemble = torch.cat([ensemble, ensemble.new_zeros(k_max - k, n, 3)]).transpose(0, 1)
        g.num_conformers = torch.tensor([k])
        g.conformer_weights = torch.cat([weights, weights.new_zeros(k_max - k)])[None]
        graphs.append(g)
    return Batch.from_data_list(graphs)


def draw_conformers(batch: Batch, generator: torch.Generator | None = None, boltzmann_power: float = 0.0) -> Batch:
    """A shallow copy of ``batch`` whose ``pos (N_total, 3)`` is one conformer per molecule, drawn
    with ``generator`` from its ensemble with probabilities ``w_k ** boltzmann_power`` (normalised;
    0: uniformly) and centred; ``batch`` is not modified."""
    u = torch.rand(batch.num_graphs, generator=generator,
                   device=generator.device if generator is not None else "cpu").to(batch.ensemble.device)
    if boltzmann_power == 0:
        k = (u * batch.num_conformers).long()  # (G,), k < num_conformers as u < 1
    else:  # inverse CDF of each row of p (G, K_max); padded conformers have weight 0
        p = batch.conformer_weights.double() ** boltzmann_power
        cdf = p.cumsum(1) / p.sum(1, keepdim=True)
        k = torch.searchsorted(cdf, u.double()[:, None], right=True)[:, 0]
        k = torch.minimum(k, batch.num_conformers - 1)  # u within rounding of 1
    pos = batch.ensemble[torch.arange(batch.num_nodes, device=k.device), k[batch.batch]]
    drawn = copy.copy(batch)
    drawn.pos = ZeroCoM(batch.batch, batch.num_graphs).project(pos)
    return drawn


def training_loss(diffusion: ConformerDiffusion, model, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Per-molecule loss ``(G,)`` of one drawn conformer each (the ``loss_fn`` of :class:`Trainer`).

    ``0 * sum(parameters)`` is added so that every parameter gets a (zero) gradient: DDP requires it
    on every rank, and a batch without rotatable bonds leaves the torsion head unused.
    """
    drawn = draw_conformers(batch, generator, diffusion.config.boltzmann_power)
    losses = diffusion.loss(model, drawn, generator)
    return losses + 0.0 * sum(p.sum() for p in model.parameters())


def reference_ensemble(item: dict) -> Chem.Mol:
    """A cached :class:`ConformerDataset` item as an RDKit molecule with its ``K`` conformers."""
    mol = Chem.Mol(item["mol"])
    for k, xyz in enumerate(item["pos"].double().numpy()):
        conf = Chem.Conformer(mol.GetNumAtoms())
        conf.SetPositions(xyz)
        conf.SetId(k)
        mol.AddConformer(conf, assignId=False)
    return mol


def coverage_evaluator(references: list[Chem.Mol], diffusion: ConformerDiffusion, *, steps: int = 10,
                       threshold: float = EVAL_THRESHOLD, seed: int = 1):
    """``eval_fn(model) -> {"cov_r", "mat_r", "eval_failed"}`` for :class:`Trainer`.

    For each reference molecule with ``K`` conformers, ``2K`` are generated (``steps`` reverse
    steps, fixed ``seed``) and scored with heavy-atom RMSDs at ``threshold``; COV-R and MAT-R are
    averaged over the molecules that could be generated (NaN when none), ``eval_failed`` counts the rest.
    """
    if not references:
        raise ValueError("coverage_evaluator needs at least one reference molecule")

    def eval_fn(model: ScoreModel) -> dict:
        device = next(model.parameters()).device
        generator = ConformerGenerator((model, diffusion), device=device, steps=steps)
        scores = []  # (COV-R, MAT-R) per generated molecule
        for ref in references:
            result = next(generator.generate_many([ref], 2 * ref.GetNumConformers(), seed=seed))
            if result.ok:
                m = coverage_matching(rmsd_matrix(ref, result.mol), threshold)
                scores.append((m["cov_r"], m["mat_r"]))
        cov_r, mat_r = np.mean(scores, axis=0) if scores else (float("nan"), float("nan"))
        return {"cov_r": float(cov_r), "mat_r": float(mat_r), "eval_failed": len(references) - len(scores)}

    return eval_fn


def train_conformer_model(
    data_dirs: list[str],
    out_dir: str | os.PathLike,
    *,
    model_config: ScoreModelConfig | None = None,
    model_overrides: dict | None = None,
    diffusion_config: ConformerDiffusionConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    cache_dir: str | None = None,
    max_atoms: int | None = None,
    val_fraction: float = 0.05,
    eval_molecules: int = 4,
    eval_steps: int = 10,
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
) -> dict:
    """Train (or resume) a conformer score model; returns the trainer's final metrics.

    ``init_from``: start a new run from the (EMA) weights of a checkpoint or release file
    (fine-tuning, e.g. for another ``diffusion_config``), with its model configuration unless
    ``model_config`` is given; parameters that only the new configuration has (an option switched
    on, such as ``centre_vector``) keep their initial values. Ignored when resuming.
    ``model_overrides``: fields changed in the base configuration (the initial model's, else the
    default) when ``model_config`` is not given.

    ``val_fraction`` of the molecules (by SMILES) are held out for the validation loss; the first
    ``eval_molecules`` of them also get the COV-R / MAT-R check (:func:`coverage_evaluator`,
    ``eval_steps`` reverse steps); 0 disables it.
    """
    if eval_molecules < 0 or eval_steps < 1:
        raise ValueError(f"need eval_molecules >= 0 and eval_steps >= 1, got {eval_molecules}, {eval_steps}")
    ckpt = Path(out_dir) / CHECKPOINT_NAME
    base = ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM)
    init_weights = None
    if init_from is not None and not (resume and ckpt.exists()):
        init = load_checkpoint(init_from)
        if init.get("kind") != KIND:
            raise ValueError(f"{init_from} holds {init.get('kind')!r}, not a conformer score model")
        base, init_weights = ScoreModelConfig.from_dict(init["model_config"]["model"]), init["ema"]
    model_config = model_config or dataclasses.replace(base, **(model_overrides or {}))
    diffusion_config = diffusion_config or ConformerDiffusionConfig()
    train_config = train_config or TrainConfig()
    if resume and ckpt.exists():  # the saved configuration wins over the command line
        saved = load_checkpoint(ckpt)["model_config"]
        model_config = ScoreModelConfig.from_dict(saved["model"])
        diffusion_config = ConformerDiffusionConfig(**saved["diffusion"])
    diffusion = ConformerDiffusion(diffusion_config)
    train, val = (ConformerTrainingData(ConformerDataset(data_dirs, cache_dir=cache_dir, split=split,
                                                         val_fraction=val_fraction), max_atoms)
                  for split in ("train", "val"))
    references = [reference_ensemble(item) for item in val.items[:eval_molecules]]
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(train_config.seed)
        model = ScoreModel(model_config)
    if init_weights is not None:
        unexpected = model.load_state_dict(init_weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{init_from} has weights this model configuration lacks: {unexpected}")
    trainer = Trainer(
        model,
        functools.partial(training_loss, diffusion),
        train,
        config=train_config,
        out_dir=out_dir,
        model_config={"model": model_config.to_dict(), "diffusion": diffusion_config.to_dict()},
        kind=KIND,
        collate_fn=collate_conformers,
        val_dataset=val if len(val) else None,
        eval_fn=coverage_evaluator(references, diffusion, steps=eval_steps) if references else None,
        resume=resume,
        progress=progress,
    )
    return trainer.fit()


def export_release(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the slim release file (configs + EMA weights) that ``confdiff.load_model`` reads."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != KIND:
        raise ValueError(f"{checkpoint} holds {ckpt.get('kind')!r}, not a conformer score model")
    release = {"kind": KIND, "model_config": ckpt["model_config"], "ema": ckpt["ema"],
               "step": ckpt["step"], "train_config": ckpt["train_config"]}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(release, tmp)
    os.replace(tmp, out)
    return out
