"""``confdiff train``: conformer draws, the loss falls, COV / MAT validation, release files, exact
resume after SIGKILL, DDP under torchrun, and overfitting one molecule's torsion modes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms

from confdiff.conformers.dataset import ConformerDataset
from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.chem.torsions import dihedral_angles
from confdiff.cli import main
from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.conformers.generator import ConformerGenerator, load_model
from confdiff.nn.score_model import MODEL_SIZES, ScoreModel, ScoreModelConfig
from confdiff.train import CHECKPOINT_NAME, LOG_NAME, TrainConfig, load_checkpoint
from confdiff.conformers.training import (
    ConformerTrainingData,
    collate_conformers,
    coverage_evaluator,
    draw_conformers,
    export_release,
    reference_ensemble,
    train_conformer_model,
    training_loss,
)
from tests.processes import sigkill_when

# two layers at least: one tensor-field layer makes no 1e features, hence no 0o torsion score
TINY = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=8, num_vectors=2, num_layers=2,
                        edge_dim=8, num_rbf=8, sigma_embed_dim=4, max_neighbors=8)
TINY_ARGS = ["--num-scalars", "8", "--num-vectors", "2", "--num-layers", "2", "--edge-dim", "8", "--num-rbf", "8",
             "--sigma-embed-dim", "4", "--max-neighbors", "8"]
# with val_fraction 0.3 (split by the SMILES hash, seed 0) naphthalene is the one validation molecule
FLEXIBLE = ["CCOC(C)=O", "CC(C)CC(=O)O", "OCCc1ccccc1", "COc1ccccc1"]
RIGID = "c1ccc2ccccc2c1"
VAL_FRACTION = 0.3


def write_ensemble(path: Path, mol: Chem.Mol, mol_id: str) -> None:
    """Every conformer of ``mol`` as one SDF record, grouped by ``mol_id`` as the loader reads them."""
    with Chem.SDWriter(str(path)) as writer:
        for conf in mol.GetConformers():
            record = Chem.Mol(mol, confId=conf.GetId())
            record.SetProp("mol_id", mol_id)
            writer.write(record)


def embedded(smiles: str, n: int, seed: int) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert len(AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed)) == n  # seed 0 would repeat one conformer
    return mol


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Four flexible training molecules and one rigid validation molecule, 3-5 conformers each, cached."""
    directory = tmp_path_factory.mktemp("ensembles")
    for i, smiles in enumerate([*FLEXIBLE, RIGID]):
        write_ensemble(directory / f"mol{i}.sdf", embedded(smiles, 3 + i % 3, seed=i + 1), str(i))
    val = ConformerDataset(directory, cache_dir=directory / "cache", split="val", val_fraction=VAL_FRACTION)
    assert [item["smiles"] for item in val.items] == [RIGID]
    return directory


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / LOG_NAME).read_text().splitlines()]


# --- drawing conformers ------------------------------------------------------------------------------

def test_each_step_draws_one_conformer_per_molecule_uniformly_from_the_generator(data_dir):
    data = ConformerTrainingData(ConformerDataset(data_dir, cache_dir=data_dir / "cache", split="all"))
    samples = [data[i] for i in range(len(data))]
    sizes = [ensemble.shape[0] for _, ensemble, _ in samples]
    assert sizes == [3, 4, 5, 3, 4]
    batch = collate_conformers(samples)
    assert batch.ensemble.shape == (batch.num_nodes, 5, 3) and batch.num_conformers.tolist() == sizes
    assert batch.pos is None

    counts = np.zeros((len(samples), 5), dtype=int)
    for seed in range(600):
        drawn = draw_conformers(batch, torch.Generator().manual_seed(seed))
        for g, (graph, ensemble, _) in enumerate(samples):
            pos = drawn.pos[batch.ptr[g] : batch.ptr[g + 1]]
            centred = ensemble - ensemble.mean(1, keepdim=True)
            k = int(torch.argmin((centred - pos).abs().amax(dim=(1, 2))))
            torch.testing.assert_close(pos, centred[k])
            counts[g, k] += 1
    assert batch.pos is None  # the batch itself is not touched
    assert counts.sum(1).tolist() == [600] * 5
    for g, k in enumerate(sizes):
        assert (counts[g, k:] == 0).all()  # padding is never drawn
        expected = 600 / k
        assert np.all(np.abs(counts[g, :k] - expected) < 4.5 * math.sqrt(expected))  # binomial, ~4.5 sd
    a = draw_conformers(batch, torch.Generator().manual_seed(7)).pos
    torch.testing.assert_close(draw_conformers(batch, torch.Generator().manual_seed(7)).pos, a, atol=0, rtol=0)


def test_boltzmann_power_draws_conformers_in_proportion_to_their_weights():
    graph = featurize(embedded("CCO", 1, seed=1))
    ensemble = torch.randn(3, graph.num_nodes, 3)
    weights = torch.tensor([0.7, 0.2, 0.1])
    batch = collate_conformers([(graph, ensemble, weights)] * 4000)
    centred = ensemble - ensemble.mean(1, keepdim=True)
    for power, expected in [(1.0, weights), (0.5, weights.sqrt() / weights.sqrt().sum()), (0.0, torch.ones(3) / 3)]:
        drawn = draw_conformers(batch, torch.Generator().manual_seed(3), power).pos.view(4000, -1, 3)
        k = torch.cdist(drawn.flatten(1), centred.flatten(1)).argmin(1)
        share = torch.bincount(k, minlength=3) / 4000.0
        torch.testing.assert_close(share, expected, atol=4 * math.sqrt(0.25 / 4000), rtol=0)


class _TwoPointMixture(torch.nn.Module):
    """Exact coordinate score of data ``x0 = a`` with probability ``p`` else ``b`` (centred),
    noised by ``N(0, sigma_pos^2)`` on the zero-CoM subspace; torsion scores are zero."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, p: float):
        super().__init__()
        self.a, self.b, self.p = a, b, p

    def forward(self, batch):
        var = batch.sigma_pos[:, None] ** 2  # (G, 1)
        x = batch.pos.view(batch.num_graphs, -1)
        a, b = self.a.flatten()[None], self.b.flatten()[None]
        logit = math.log(self.p / (1 - self.p)) - ((x - a) ** 2).sum(1, keepdim=True) / (2 * var) \
            + ((x - b) ** 2).sum(1, keepdim=True) / (2 * var)
        post = torch.sigmoid(logit)  # P(x0 = a | x_t)
        score = (post * (a - x) + (1 - post) * (b - x)) / var
        return batch.pos.new_zeros(batch.torsion_index.shape[1]), score.view(-1, 3)


def test_weighted_two_conformer_ensemble_is_learned_in_its_proportion():
    """The loss's minimiser is the score of the weighted mixture: with Boltzmann draws the exact score
    of the 0.8 / 0.2 mixture has the lower loss, with uniform draws the exact 0.5 / 0.5 one does."""
    graph = featurize(embedded("CC(C)(C)C", 1, seed=1))  # no rotatable bond: coordinates only
    a = torch.randn(graph.num_nodes, 3, generator=torch.Generator().manual_seed(0))
    b = a + 0.8 * torch.randn(graph.num_nodes, 3, generator=torch.Generator().manual_seed(1))
    a, b = a - a.mean(0), b - b.mean(0)
    batch = collate_conformers([(graph, torch.stack([a, b]), torch.tensor([0.8, 0.2]))] * 3000)
    for power, better, worse in [(1.0, 0.8, 0.5), (0.0, 0.5, 0.8)]:
        diffusion = ConformerDiffusion(ConformerDiffusionConfig(sigma_pos_max=3.0, boltzmann_power=power))
        losses = [training_loss(diffusion, _TwoPointMixture(a, b, p), batch, torch.Generator().manual_seed(5)).mean()
                  for p in (better, worse)]
        assert losses[0] < losses[1]


def test_reference_ensemble_rebuilds_the_written_molecule(data_dir):
    dataset = ConformerDataset(data_dir, cache_dir=data_dir / "cache", split="all")
    for i, item in enumerate(dataset.items):
        written = list(Chem.SDMolSupplier(str(data_dir / f"mol{i}.sdf"), removeHs=False))
        ref = reference_ensemble(item)
        assert [a.GetSymbol() for a in ref.GetAtoms()] == [a.GetSymbol() for a in written[0].GetAtoms()]
        assert Chem.MolToSmiles(ref) == Chem.MolToSmiles(written[0])
        assert ref.GetNumConformers() == len(written)
        for conf, record in zip(ref.GetConformers(), written):
            np.testing.assert_allclose(conf.GetPositions(), record.GetConformer().GetPositions(), atol=1e-4)


def test_every_parameter_gets_a_gradient_from_a_batch_without_rotatable_bonds(data_dir):
    """DDP needs a gradient for each parameter on each rank, even where the torsion head is unused."""
    data = ConformerTrainingData(ConformerDataset(data_dir, cache_dir=data_dir / "cache", split="val",
                                                  val_fraction=VAL_FRACTION))
    batch = collate_conformers([data[0]])
    assert batch.torsion_index.shape[1] == 0
    torch.manual_seed(0)
    model = ScoreModel(TINY)
    generator = torch.Generator().manual_seed(0)
    losses = training_loss(ConformerDiffusion(), model, batch, generator)
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(losses, ConformerDiffusion().loss(model, draw_conformers(batch, generator), generator))
    losses.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# --- the COV / MAT check -----------------------------------------------------------------------------

def test_coverage_evaluator_scores_generated_molecules_and_counts_failures():
    torch.manual_seed(0)
    model = ScoreModel(TINY).eval()
    rigid = embedded(RIGID, 1, seed=3)  # every ETKDG structure of naphthalene lies within 0.75 A of it
    radical = embedded("C[CH2]", 1, seed=3)  # refused by the generator's input policy
    metrics = coverage_evaluator([rigid, radical], ConformerDiffusion(), steps=3)(model)
    assert metrics["cov_r"] == 1.0 and 0 <= metrics["mat_r"] < 0.3
    assert metrics["eval_failed"] == 1
    failed = coverage_evaluator([radical], ConformerDiffusion(), steps=3)(model)
    assert math.isnan(failed["cov_r"]) and math.isnan(failed["mat_r"]) and failed["eval_failed"] == 1


# --- a short training run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(lr=1e-2, batch_size=4, max_steps=100, ema_decay=0.9, log_every=1, checkpoint_every=50,
                         eval_every=50)
    train_conformer_model([str(data_dir)], out, model_config=TINY, train_config=config,
                          cache_dir=str(data_dir / "cache"), val_fraction=VAL_FRACTION, eval_molecules=4,
                          eval_steps=3, progress=False)
    return out


def fixed_noise_loss(model: ScoreModel, data_dir: Path) -> float:
    """Mean loss over the training molecules x 8 with one fixed draw of conformers, times and noise."""
    data = ConformerTrainingData(ConformerDataset(data_dir, cache_dir=data_dir / "cache", split="train",
                                                  val_fraction=VAL_FRACTION))
    batch = collate_conformers([data[i] for i in range(len(data))] * 8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return ConformerDiffusion().loss(model, draw_conformers(batch, generator), generator).mean().item()


def test_training_loss_falls_on_a_tiny_set(trained, data_dir):
    losses = [r["loss"] for r in records(trained) if "loss" in r]
    assert len(losses) == 100
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20])
    torch.manual_seed(0)  # the run's initial weights depend on its seed only
    initial = ScoreModel(TINY)
    final = ScoreModel(TINY)
    final.load_state_dict(load_checkpoint(trained / CHECKPOINT_NAME)["model"])
    assert fixed_noise_loss(final, data_dir) < 0.85 * fixed_noise_loss(initial, data_dir)


def test_validation_reports_loss_and_coverage_of_held_out_molecules(trained):
    evals = [r for r in records(trained) if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [50, 100]
    for r in evals:
        assert math.isfinite(r["val_loss"]) and r["eval_failed"] == 0
        assert r["cov_r"] == 1.0 and r["mat_r"] < 0.3  # the rigid naphthalene


def test_export_release_is_read_by_load_model_and_generates(trained, tmp_path):
    release = export_release(trained / CHECKPOINT_NAME, tmp_path / "model.pt")
    ckpt = load_checkpoint(trained / CHECKPOINT_NAME)
    assert set(torch.load(release, weights_only=False)) == {"kind", "model_config", "ema", "step", "train_config"}
    model, diffusion = load_model(release)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][key]), key
    assert model.config == TINY
    mol = ConformerGenerator((model, diffusion), device="cpu", steps=3).generate(FLEXIBLE[0], n=4, seed=1)
    assert mol.GetNumConformers() == 4 and mol.GetNumAtoms() == Chem.AddHs(Chem.MolFromSmiles(FLEXIBLE[0])).GetNumAtoms()
    torch.save({"kind": "image_unet"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="image_unet"):
        export_release(tmp_path / "other.pt", tmp_path / "x.pt")


def test_fine_tuning_starts_from_the_initial_weights_and_can_switch_on_the_full_mode(trained, data_dir, tmp_path):
    release = export_release(trained / CHECKPOINT_NAME, tmp_path / "model.pt")
    config = dataclasses.replace(TINY, centre_vector=True)
    full = ConformerDiffusionConfig(full_fraction=0.5)
    out = tmp_path / "tuned"
    train_conformer_model([str(data_dir)], out, model_config=config, diffusion_config=full,
                          train_config=TrainConfig(lr=1e-9, batch_size=4, max_steps=2, checkpoint_every=2),
                          init_from=release, cache_dir=str(data_dir / "cache"), val_fraction=0.0, eval_molecules=0, progress=False)
    tuned = load_checkpoint(out / CHECKPOINT_NAME)
    initial = torch.load(release, weights_only=False)["ema"]
    for key, value in initial.items():
        torch.testing.assert_close(tuned["model"][key], value, atol=1e-6, rtol=0)
    assert tuned["model"]["pos_centre.weight"].abs().max() < 1e-6
    model, diffusion = load_model(out / CHECKPOINT_NAME)
    assert model.config.centre_vector and diffusion.config.full_fraction == 0.5
    generator = ConformerGenerator((model, diffusion), device="cpu", mode="full", steps=3, validity_gate=False)
    result = next(generator.generate_many([FLEXIBLE[0]], n=3, seed=0))  # an untrained model's raw draws
    assert result.ok or "stereochemistry" in result.error


# --- the command: SIGKILL and resume, torchrun -------------------------------------------------------

def train_args(data_dir: Path, out: Path, steps: int) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--lr", "1e-2", "--checkpoint-every", "3", "--val-fraction", "0", "--eval-molecules", "0",
            "--cache-dir", str(data_dir / "cache"), "--no-progress", *TINY_ARGS]


def test_size_names_an_architecture_and_explicit_options_override_it(data_dir, tmp_path):
    base = ["train", "--data", str(data_dir), "--steps", "1", "--batch-size", "2", "--val-fraction", "0",
            "--eval-molecules", "0", "--cache-dir", str(data_dir / "cache"), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "tiny"), "--size", "tiny"]) == 0
    saved = load_checkpoint(tmp_path / "tiny" / CHECKPOINT_NAME)["model_config"]["model"]
    assert {k: saved[k] for k in MODEL_SIZES["tiny"]} == MODEL_SIZES["tiny"]
    assert main([*base, "--out", str(tmp_path / "three"), "--size", "tiny", "--num-layers", "3"]) == 0
    saved = load_checkpoint(tmp_path / "three" / CHECKPOINT_NAME)["model_config"]["model"]
    assert saved["num_layers"] == 3 and saved["num_scalars"] == MODEL_SIZES["tiny"]["num_scalars"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "confdiff", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_killed_run_resumes_at_its_checkpoint_and_ends_as_an_uninterrupted_one(data_dir, tmp_path):
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    proc = subprocess.Popen(command(*train_args(data_dir, killed, 100_000)), env=ENV)
    checkpoint = killed / CHECKPOINT_NAME
    sigkill_when(proc, lambda: checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= 6,
                 120, "the training subprocess saved no checkpoint at step 6")
    saved = load_checkpoint(killed / CHECKPOINT_NAME)["step"]
    assert saved >= 6 and saved % 3 == 0
    target = saved + 5  # 3 batches per epoch: the resumed run crosses an epoch boundary

    assert main([*train_args(data_dir, killed, target), "--resume"]) == 0  # in this process: faster
    assert main(train_args(data_dir, fresh, target)) == 0

    log = records(killed)
    starts = [i for i, r in enumerate(log) if r.get("event") == "start"]
    assert len(starts) == 2 and log[starts[1]]["step"] == saved
    resumed, uninterrupted = load_checkpoint(killed / CHECKPOINT_NAME), load_checkpoint(fresh / CHECKPOINT_NAME)
    assert resumed["step"] == uninterrupted["step"] == target
    for part in ("model", "ema"):
        for key, value in uninterrupted[part].items():
            assert torch.equal(resumed[part][key], value), (part, key)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_with_gloo(data_dir, tmp_path):
    out, release = tmp_path / "ddp", tmp_path / "release.pt"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "confdiff", *train_args(data_dir, out, 4), "--export", str(release)],
                   env=ENV, check=True, timeout=180)
    log = records(out)
    assert [r.get("event") for r in log].count("start") == 1 and log[0]["world_size"] == 2  # rank 0 writes
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 4
    for path in (out / CHECKPOINT_NAME, release):
        model, diffusion = load_model(path)
        assert model.config == TINY
    mol = ConformerGenerator((model, diffusion), device="cpu", steps=3).generate(FLEXIBLE[1], n=2, seed=1)
    assert mol.GetNumConformers() == 2


# --- overfitting one molecule ------------------------------------------------------------------------

@pytest.mark.slow
def test_overfitting_one_molecule_recovers_its_torsion_modes(tmp_path):
    """Butane's one torsion at -60 and +60 degrees only (no anti conformer).

    The modes come as a mirror pair because an E(3)-equivariant model gives an achiral molecule a
    reflection-symmetric density. Uniform torsions would put 1/3 of the samples within 30 degrees.
    """
    modes = np.array([-60.0, 60.0])
    mol = embedded("CCCC", 1, seed=1)
    AllChem.MMFFOptimizeMolecule(mol)
    a, u, v, b = featurize(mol).dihedral_index[:, 0].tolist()
    ensemble = Chem.Mol(mol)
    ensemble.RemoveAllConformers()
    for k, phi in enumerate(modes):
        rdMolTransforms.SetDihedralDeg(mol.GetConformer(), a, u, v, b, float(phi))
        conf = Chem.Conformer(mol.GetConformer())
        conf.SetId(k)
        ensemble.AddConformer(conf, assignId=False)
    for copy in range(16):  # 16 molecules per batch
        write_ensemble(tmp_path / f"butane{copy}.sdf", ensemble, str(copy))
    config = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=16, num_vectors=4, num_layers=2,
                              edge_dim=16, num_rbf=8, sigma_embed_dim=8)
    out = tmp_path / "run"
    train_conformer_model([str(tmp_path)], out, model_config=config,
                          train_config=TrainConfig(lr=1e-2, batch_size=16, max_steps=300, ema_decay=0.99,
                                                   checkpoint_every=300),
                          cache_dir=str(tmp_path / "cache"), val_fraction=0.0, progress=False)

    generator = ConformerGenerator(load_model(out / CHECKPOINT_NAME), device="cpu", steps=20)
    sampled = generator.generate("CCCC", n=200, seed=1)
    index = featurize(sampled).dihedral_index
    phi = np.degrees([dihedral_angles(torch.tensor(c.GetPositions()), index).item() for c in sampled.GetConformers()])
    distance = np.min(np.abs((phi[:, None] - modes[None, :] + 180.0) % 360.0 - 180.0), axis=1)
    assert np.mean(distance < 30.0) >= 0.7, np.histogram(phi, bins=12, range=(-180, 180))[0]
