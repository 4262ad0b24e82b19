"""The conformer diffusion: the product state (d, e), x(y), the score function and the training loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.chem.torsions import apply_torsion_changes, dihedral_angles
from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.diffusion.torus import wrap, wrapped_normal_log_prob
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig

# 3 chained torsions, none, 1, and a branched molecule; the torsion-free one sits inside the batch
SMILES = ["CCCCCC", "c1ccccc1", "CCCC", "CC(C)Cc1ccc(C(C)C(=O)O)cc1"]


def conformer_graph(smiles: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A ``MolGraph`` with one ETKDG conformer as ``pos``, centred."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    graph = featurize(mol)
    pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=dtype)
    graph.pos = pos - pos.mean(0)
    graph.x, graph.edge_attr = graph.x.to(dtype), graph.edge_attr.to(dtype)
    return graph


def conformer_batch(smiles: list[str], dtype: torch.dtype = torch.float64) -> Batch:
    return Batch.from_data_list([conformer_graph(smi, dtype, seed=i) for i, smi in enumerate(smiles)])


@pytest.fixture(scope="module")
def batch() -> Batch:
    return conformer_batch(SMILES)


def graph_means(x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-graph mean of rows ``x (N, 3)``: (G, 3)."""
    total = torch.zeros(batch.num_graphs, 3, dtype=x.dtype).index_add_(0, batch.batch, x)
    return total / torch.bincount(batch.batch).to(x.dtype)[:, None]


# --- the state space --------------------------------------------------------------------------------

def test_state_layout_split_join_project_and_prior(batch):
    sde = ConformerDiffusion().sde(batch)
    num_torsions, num_atoms = batch.torsion_index.shape[1], batch.num_nodes
    assert batch.num_torsions.tolist() == [3, 0, 1, 4]
    assert sde.space.numel == num_torsions + 3 * num_atoms
    y = 10 * torch.randn(sde.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d, e = sde.space.split(y)
    assert d.shape == (num_torsions,) and e.shape == (num_atoms, 3)
    assert torch.equal(d, y[:num_torsions]) and torch.equal(e.reshape(-1), y[num_torsions:])
    assert torch.equal(sde.space.join([d, e]), y)

    d_proj, e_proj = sde.space.split(sde.space.project(y))
    assert torch.all(d_proj >= -math.pi) and torch.all(d_proj < math.pi)
    torch.testing.assert_close(wrap(d_proj - d + 1.0) - 1.0, torch.zeros_like(d), atol=1e-9, rtol=0)  # mod 2 pi
    torch.testing.assert_close(graph_means(e_proj, batch), torch.zeros(batch.num_graphs, 3, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(e_proj, e - graph_means(e, batch)[batch.batch])

    # elements group into graphs: torsions by their bond's graph, coordinates by their atom's graph
    counts = batch.num_torsions + 3 * torch.bincount(batch.batch)
    assert sde.space.sum(torch.ones_like(y)).tolist() == counts.tolist()
    assert sde.space.dim(y).tolist() == (counts - 3).tolist()

    d0, e0 = sde.space.split(sde.prior_sample(torch.zeros_like(y), torch.Generator().manual_seed(1)))
    assert torch.all(d0 >= -math.pi) and torch.all(d0 < math.pi)
    torch.testing.assert_close(graph_means(e0, batch), torch.zeros(batch.num_graphs, 3, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_positions_at_zero_is_the_reference(batch):
    diffusion = ConformerDiffusion()
    sde = diffusion.sde(batch)
    pos = diffusion.positions(sde, batch, batch.pos, torch.zeros(sde.space.numel, dtype=torch.float64))
    torch.testing.assert_close(pos, batch.pos, atol=1e-12, rtol=0)  # (p - v) + v rounds


def test_torsion_part_changes_each_dihedral_by_exactly_d(batch):
    diffusion = ConformerDiffusion()
    sde = diffusion.sde(batch)
    g = torch.Generator().manual_seed(2)
    d = (2 * torch.rand(batch.torsion_index.shape[1], dtype=torch.float64, generator=g) - 1) * math.pi
    e = torch.zeros(batch.num_nodes, 3, dtype=torch.float64)
    pos = diffusion.positions(sde, batch, batch.pos, sde.space.join([d, e]))
    change = dihedral_angles(pos, batch.dihedral_index) - dihedral_angles(batch.pos, batch.dihedral_index)
    torch.testing.assert_close(wrap(change - d + 1.0) - 1.0, torch.zeros_like(d), atol=1e-9, rtol=0)
    # rigid moves keep every bond length; the coordinate part adds on top
    i, j = batch.edge_index
    torch.testing.assert_close((pos[i] - pos[j]).norm(dim=1), (batch.pos[i] - batch.pos[j]).norm(dim=1))
    e = 0.1 * torch.randn(batch.num_nodes, 3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(diffusion.positions(sde, batch, batch.pos, sde.space.join([d, e])), pos + e)


def test_score_fn_runs_the_model_at_x_y_and_joins_its_outputs(batch):
    diffusion = ConformerDiffusion()
    sde = diffusion.sde(batch)
    y = sde.prior_sample(torch.zeros(sde.space.numel, dtype=torch.float64), torch.Generator().manual_seed(3))
    t = torch.linspace(0.1, 0.9, batch.num_graphs, dtype=torch.float64)
    seen = {}

    def model(noisy):
        seen.update(pos=noisy.pos, sigma_tor=noisy.sigma_tor, sigma_pos=noisy.sigma_pos)
        return noisy.pos.new_full((noisy.torsion_index.shape[1],), 2.0), -noisy.pos

    score = diffusion.score_fn(model, batch, batch.pos, sde)(y, t)
    expected_pos = diffusion.positions(sde, batch, batch.pos, y)
    torch.testing.assert_close(seen["pos"], expected_pos)
    torch.testing.assert_close(seen["sigma_tor"], diffusion.tor_schedule.sigma(t))
    torch.testing.assert_close(seen["sigma_pos"], diffusion.pos_schedule.sigma(t))
    s_tor, s_pos = sde.space.split(score)
    assert torch.all(s_tor == 2.0)
    torch.testing.assert_close(s_pos, -expected_pos)
    assert not hasattr(batch, "sigma_tor") and batch.pos is not expected_pos


# --- the three modes --------------------------------------------------------------------------------

FULL = ConformerDiffusionConfig(full_fraction=0.5, sigma_full_max=8.0)


def test_torsion_and_full_modes_hold_one_part_each(batch):
    diffusion = ConformerDiffusion(FULL)
    tor, full = diffusion.sde(batch, "torsions"), diffusion.sde(batch, "full")
    assert tor.space.numel == batch.torsion_index.shape[1]
    assert full.space.numel == 3 * batch.num_nodes
    # full: x = pos_ref + e, with a zero-CoM isotropic prior of scale sigma_full_max
    e = full.space.project(torch.randn(full.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(diffusion.positions(full, batch, batch.pos, e), batch.pos + e.view(-1, 3))
    atoms = torch.bincount(batch.batch).to(torch.float64)
    sq = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch, (e.view(-1, 3) ** 2).sum(1))
    expected = -(3 * atoms - 3) / 2 * math.log(2 * math.pi * 8.0**2) - sq / (2 * 8.0**2)
    torch.testing.assert_close(full.prior_log_prob(e), expected)
    # torsions: rigid moves of the reference only
    d = torch.full((tor.space.numel,), 0.3, dtype=torch.float64)
    both = diffusion.sde(batch)
    expected = diffusion.positions(both, batch, batch.pos, both.space.join([d, torch.zeros_like(batch.pos)]))
    torch.testing.assert_close(diffusion.positions(tor, batch, batch.pos, d), expected)
    with pytest.raises(ValueError, match="unknown mode"):
        diffusion.sde(batch, "coordinates")


@pytest.mark.parametrize("mode", ["torsions", "full"])
def test_score_fn_gives_the_model_each_modes_noise_levels_and_parts(batch, mode):
    diffusion = ConformerDiffusion(FULL)
    sde = diffusion.sde(batch, mode)
    y = sde.prior_sample(torch.zeros(sde.space.numel, dtype=torch.float64), torch.Generator().manual_seed(3))
    t = torch.linspace(0.1, 0.9, batch.num_graphs, dtype=torch.float64)
    seen = {}

    def model(noisy):
        seen.update(sigma_tor=noisy.sigma_tor, sigma_pos=noisy.sigma_pos)
        return noisy.pos.new_full((noisy.torsion_index.shape[1],), 2.0), -noisy.pos

    pos_ref = torch.zeros_like(batch.pos) if mode == "full" else batch.pos
    score = diffusion.score_fn(model, batch, pos_ref, sde)(y, t)
    zero = torch.zeros_like(t)
    if mode == "full":
        torch.testing.assert_close(seen["sigma_tor"], diffusion.tor_schedule.sigma(zero))
        torch.testing.assert_close(seen["sigma_pos"], diffusion.full_schedule.sigma(t))
        torch.testing.assert_close(score, -y)
    else:
        torch.testing.assert_close(seen["sigma_tor"], diffusion.tor_schedule.sigma(t))
        # the coordinates stay fixed, but the model sees the level of t it was trained with
        torch.testing.assert_close(seen["sigma_pos"], diffusion.pos_schedule.sigma(t))
        assert torch.all(score == 2.0)


def test_the_full_mode_needs_a_model_trained_for_it():
    ConformerDiffusion(FULL).check_mode("full")
    with pytest.raises(ValueError, match="not trained for the full-coordinate mode"):
        ConformerDiffusion().check_mode("full")
    with pytest.raises(ValueError, match="unknown mode"):
        ConformerDiffusion().check_mode("fast")
    with pytest.raises(ValueError, match="full_fraction"):
        ConformerDiffusionConfig(full_fraction=1.5)


# --- the loss ---------------------------------------------------------------------------------------

def conditional_scores(d, sigma_tor, e, sigma_pos):
    """``grad log p(d, e | 0)`` of the perturbation kernel WN(d; sigma_tor) x N(e; sigma_pos^2), by autograd."""
    d, e = d.detach().requires_grad_(), e.detach().requires_grad_()
    log_p = wrapped_normal_log_prob(d, sigma_tor).sum() - 0.5 * (e**2 / sigma_pos[:, None] ** 2).sum()
    return torch.autograd.grad(log_p, (d, e))


@pytest.mark.parametrize("full_fraction", [0.0, 0.5])
def test_an_oracle_that_knows_the_noise_has_zero_loss(batch, full_fraction):
    """The oracle replays the loss's documented draws (t, then the full-path flags when
    ``full_fraction > 0``, then d, then e, from one generator), checks that the model sees
    x = T(pos, d) + e at the noise levels of each graph's path (flagged graphs: sigma_tor_min and
    sigma_full(t)), and returns the kernel's score."""
    diffusion = ConformerDiffusion(dataclasses.replace(FULL, full_fraction=full_fraction))
    tor_space, pos_space = diffusion.sde(batch).space.spaces
    flags = []

    def oracle(noisy):
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(batch.num_graphs, generator=g, dtype=torch.float64)
        full = (torch.rand(batch.num_graphs, generator=g) < full_fraction if full_fraction
                else torch.zeros(batch.num_graphs, dtype=torch.bool))
        flags.append(full)
        sigma_tor = torch.where(full, diffusion.tor_schedule.sigma(torch.zeros_like(t)), diffusion.tor_schedule.sigma(t))
        sigma_pos = torch.where(full, diffusion.full_schedule.sigma(t), diffusion.pos_schedule.sigma(t))
        torch.testing.assert_close(noisy.sigma_tor, sigma_tor)
        torch.testing.assert_close(noisy.sigma_pos, sigma_pos)
        sigma_tor = sigma_tor[tor_space.batch]
        d = wrap(sigma_tor * torch.randn(sigma_tor.shape, generator=g, dtype=torch.float64))
        e = pos_space.noise(batch.pos, g) * sigma_pos[batch.batch][:, None]
        torch.testing.assert_close(noisy.pos, apply_torsion_changes(batch.pos, batch, d) + e)
        return conditional_scores(d, sigma_tor, e, sigma_pos[batch.batch])

    for seed in range(4, 11):
        loss = diffusion.loss(oracle, batch, torch.Generator().manual_seed(seed))
        assert loss.shape == (batch.num_graphs,)
        torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-12, rtol=0)
    seen = torch.stack(flags)
    assert (seen.any() and not seen.all()) if full_fraction else not seen.any()


def test_each_part_is_normalised_so_the_zero_model_scores_one():
    """E[s_tor^2] / E[s^2] = 1 per torsion and E[|eps_proj|^2] / (3n - 3) = 1 per coordinate."""
    batch = Batch.from_data_list([conformer_graph("CCCC")] * 2000)

    def zero(noisy):
        return torch.zeros(noisy.torsion_index.shape[1], dtype=noisy.pos.dtype), torch.zeros_like(noisy.pos)

    tor_only = ConformerDiffusion(ConformerDiffusionConfig(pos_loss_weight=0.0))
    both = ConformerDiffusion(ConformerDiffusionConfig(pos_loss_weight=1.0))
    loss_tor = tor_only.loss(zero, batch, torch.Generator().manual_seed(0))
    loss_both = both.loss(zero, batch, torch.Generator().manual_seed(0))
    assert loss_tor.mean().item() == pytest.approx(1.0, abs=0.1)  # std of the mean ~0.03
    assert (loss_both - loss_tor).mean().item() == pytest.approx(1.0, abs=0.02)  # std ~0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_of_the_score_model_is_per_graph_finite_differentiable_and_leaves_the_batch(dtype):
    batch = conformer_batch(SMILES, dtype)
    before = {key: value.clone() for key, value in batch.to_dict().items() if torch.is_tensor(value)}
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=8, num_vectors=2,
                                        num_layers=2)).to(dtype)
    loss = ConformerDiffusion().loss(model, batch, torch.Generator().manual_seed(0))
    assert loss.shape == (batch.num_graphs,) and loss.dtype == dtype
    assert torch.isfinite(loss).all() and (loss > 0).all()
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    after = {key: value for key, value in batch.to_dict().items() if torch.is_tensor(value)}
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # the same generator state gives the same loss
    again = ConformerDiffusion().loss(model, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, loss.detach(), atol=0, rtol=0)


def test_a_batch_without_torsions_has_only_the_coordinate_loss():
    batch = conformer_batch(["c1ccccc1", "c1ccc2ccccc2c1"])
    assert batch.torsion_index.shape[1] == 0

    def zero(noisy):
        return torch.zeros(0, dtype=noisy.pos.dtype), torch.zeros_like(noisy.pos)

    tor_only = ConformerDiffusion(ConformerDiffusionConfig(pos_loss_weight=0.0))
    assert torch.equal(tor_only.loss(zero, batch, torch.Generator().manual_seed(0)), torch.zeros(2, dtype=torch.float64))
    loss = ConformerDiffusion().loss(zero, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss).all() and (loss > 0).all()


# --- the loss is the core's denoising score matching loss --------------------------------------------

def _reference_loss(diffusion: ConformerDiffusion, model, batch, generator) -> torch.Tensor:
    """``ConformerDiffusion.loss`` as it was written by hand before it became a call of the core's
    ``denoising_score_matching_loss`` (frozen here: the numbers must not change)."""
    import copy

    from confdiff.diffusion.torus import sample_wrapped_normal, wrapped_normal_score, wrapped_normal_score_norm

    tor_space, pos_space = diffusion.sde(batch).space.spaces
    device, dtype = batch.pos.device, batch.pos.dtype
    t = torch.rand(batch.num_graphs, generator=generator, device=device, dtype=dtype)
    zero = torch.zeros_like(t)
    graph_sigma_tor, sigma_pos = diffusion.tor_schedule.sigma(t), diffusion.pos_schedule.sigma(t)
    if diffusion.config.full_fraction > 0:
        full = torch.rand(batch.num_graphs, generator=generator, device=device) < diffusion.config.full_fraction
        graph_sigma_tor = torch.where(full, diffusion.tor_schedule.sigma(zero), graph_sigma_tor)
        sigma_pos = torch.where(full, diffusion.full_schedule.sigma(t), sigma_pos)
    sigma_tor = tor_space.broadcast(graph_sigma_tor, batch.torsion_index[0].to(dtype))
    d = sample_wrapped_normal(sigma_tor.shape, sigma_tor, generator=generator)
    e = pos_space.noise(batch.pos, generator) * pos_space.broadcast(sigma_pos, batch.pos)
    noisy = copy.copy(batch)
    noisy.pos = apply_torsion_changes(batch.pos, batch, d) + e
    noisy.sigma_tor, noisy.sigma_pos = graph_sigma_tor, sigma_pos
    tor_pred, pos_pred = model(noisy)
    tor_err = (tor_pred - wrapped_normal_score(d, sigma_tor)) ** 2 / wrapped_normal_score_norm(sigma_tor)
    n_tor = torch.bincount(tor_space.batch, minlength=batch.num_graphs).to(tor_err.dtype)
    tor_loss = torch.zeros(batch.num_graphs, dtype=tor_err.dtype).index_add_(0, tor_space.batch, tor_err)
    tor_loss = tor_loss / n_tor.clamp(min=1.0)
    pos_target = -e / pos_space.broadcast(sigma_pos**2, e)
    pos_err = ((pos_pred - pos_target) * pos_space.broadcast(sigma_pos, e)) ** 2
    pos_loss = pos_space.sum(pos_err) / pos_space.dim(e).clamp(min=1.0)
    return tor_loss + diffusion.config.pos_loss_weight * pos_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", [ConformerDiffusionConfig(),
                                    ConformerDiffusionConfig(full_fraction=0.5, pos_loss_weight=0.7),
                                    ConformerDiffusionConfig(full_fraction=1.0, sigma_pos_max=0.3)])
def test_loss_keeps_the_numbers_of_the_hand_written_loss(dtype, config):
    batch = conformer_batch(SMILES, dtype)
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=8, num_vectors=2,
                                        num_layers=2)).to(dtype)
    diffusion = ConformerDiffusion(config)
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    for seed in range(3):
        with torch.no_grad():
            loss = diffusion.loss(model, batch, torch.Generator().manual_seed(seed))
            expected = _reference_loss(diffusion, model, batch, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(loss, expected, atol=tol, rtol=tol)
