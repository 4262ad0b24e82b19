"""The CUDA paths give what the CPU paths give: score model, sampling, likelihood, training with AMP,
images. Skipped where no GPU is visible (CI has none); on a GPU machine run
``python -m pytest tests/test_cuda.py`` (``scripts/gpu_check.sh`` does, with the GPU benchmarks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.nn.equivariance import assert_equivariant
from rdkit import Chem
from rdkit.Chem import AllChem
from tests.conformers.test_training import TINY, embedded, write_ensemble
from torch_geometric.data import Batch

from confdiff.chem.featurize import featurize
from confdiff.conformers.likelihood import likelihood
from confdiff.conformers.generator import ConformerGenerator, load_model
from confdiff.images import ImageModel, load_dataset, pf_ode_bits_per_dim, sample_images, train_image_model
from confdiff.nn.unet import UNetConfig
from confdiff.train import CHECKPOINT_NAME, LOG_NAME, TrainConfig, load_checkpoint
from confdiff.conformers.training import train_conformer_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMILES = ["CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)NCc1ccccc1", "CCCCOCC(N)C(=O)O"]


def conformer_batch(device: str) -> Batch:
    graphs = []
    for i, smiles in enumerate(SMILES):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        assert AllChem.EmbedMolecule(mol, randomSeed=i) == 0
        graph = featurize(mol)
        graph.pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
        graphs.append(graph)
    batch = Batch.from_data_list(graphs)
    batch.sigma_tor = torch.tensor([0.1, 0.5, 2.0])
    batch.sigma_pos = torch.tensor([0.01, 0.05, 0.2])
    return batch.to(device)


def test_shipped_score_model_on_cuda_matches_the_cpu_and_is_equivariant():
    cpu_model, _ = load_model(device="cpu")
    cuda_model, _ = load_model(device="cuda")

    def scores(model):  # position scores times sigma_pos: O(1) like the torsion scores
        def fn(b):
            torsion, pos = model(b)
            return torsion, pos * b.sigma_pos[b.batch, None]
        return fn

    with torch.no_grad():
        tor_cpu, pos_cpu = scores(cpu_model)(conformer_batch("cpu"))
        tor_gpu, pos_gpu = scores(cuda_model)(conformer_batch("cuda"))
        torch.testing.assert_close(tor_gpu.cpu(), tor_cpu, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pos_gpu.cpu(), pos_cpu, atol=1e-4, rtol=1e-4)
        assert_equivariant(scores(cuda_model), conformer_batch("cuda"), atol=1e-4)


@pytest.mark.parametrize("mode", ["refine", "full"])
def test_sampling_on_cuda_reproduces_the_cpu_conformers(mode):
    """Each conformer's noise comes from its own CPU generator, so the devices differ by rounding only."""
    mols = {}
    for device in ("cpu", "cuda"):
        generator = ConformerGenerator(device=device, mode=mode, sampler="heun")
        mols[device] = [generator.generate(s, n=6, seed=3) for s in SMILES]
    for smiles, cpu, gpu in zip(SMILES, mols["cpu"], mols["cuda"]):
        assert cpu.GetNumConformers() == gpu.GetNumConformers() > 0, smiles
        for a, b in zip(cpu.GetConformers(), gpu.GetConformers()):
            diff = np.abs(a.GetPositions() - b.GetPositions()).max()
            assert diff < 0.05, (smiles, mode, diff)


def test_likelihood_on_cuda_matches_the_cpu():
    mol = Chem.AddHs(Chem.MolFromSmiles("OCCO"))  # small: an adaptive ODE solve per conformer and device
    AllChem.EmbedMultipleConfs(mol, 2, randomSeed=1)
    cpu = likelihood(mol, load_model(device="cpu"))
    gpu = likelihood(mol, load_model(device="cuda"))
    np.testing.assert_allclose(gpu, cpu, atol=0.05)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_conformer_training_on_cuda_lowers_the_loss_and_resumes(tmp_path, amp):
    data = tmp_path / "data"
    data.mkdir()
    for i, smiles in enumerate(SMILES + ["CCOC(C)=O", "OCCc1ccccc1"]):
        write_ensemble(data / f"mol{i}.sdf", embedded(smiles, 4, seed=i + 1), str(i))

    def run(out, steps, resume=False):
        config = TrainConfig(lr=1e-2, batch_size=5, max_steps=steps, ema_decay=0.9, log_every=1,
                             checkpoint_every=20, eval_every=20, device="cuda", amp=amp)
        return train_conformer_model([str(data)], out, model_config=TINY, train_config=config,
                                     cache_dir=str(data / "cache"), val_fraction=0.0, eval_molecules=0,
                                     progress=False, resume=resume)

    out = tmp_path / "run"
    run(out, 20)
    first = load_checkpoint(out / CHECKPOINT_NAME)
    assert first["step"] == 20 and first["train_config"]["amp"] == amp
    run(out, 80, resume=True)
    final = load_checkpoint(out / CHECKPOINT_NAME)
    assert final["step"] == 80
    for value in final["model"].values():
        assert torch.isfinite(value).all()
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 80 and np.mean(losses[-20:]) < np.mean(losses[:20])


def test_image_training_sampling_and_bits_per_dim_on_cuda(tmp_path):
    unet = UNetConfig(resolution=8, channels=16, channel_mult=(1, 2), attention_resolutions=(), num_classes=10,
                      dropout=0.0)
    config = TrainConfig(lr=2e-3, batch_size=32, max_steps=30, ema_decay=0.9, log_every=10, checkpoint_every=30,
                         eval_every=30, seed=0, device="cuda")
    train_image_model("digits", tmp_path, config=config, unet_config=unet, num_train=64, progress=False)
    model = ImageModel.from_checkpoint(tmp_path / CHECKPOINT_NAME, map_location="cuda")
    images = sample_images(model, 8, steps=10, seed=0, device="cuda")
    assert images.shape == (8, 1, 8, 8) and torch.isfinite(images).all()
    levels = load_dataset("digits", "test").subset(4).levels
    bpd = pf_ode_bits_per_dim(model, levels.cuda())
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()
