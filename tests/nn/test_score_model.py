"""The conformer score model: equivariance, parity, permutations, shapes, training signal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.nn.equivariance import assert_equivariant, transform_batch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.nn import ScoreModel, ScoreModelConfig
from confdiff.nn.neighbors import atom_neighbors, bond_neighbors, cap_weights

SMILES = ["CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)NCc1ccccc1", "CCCCOCC(N)C(=O)O"]
SMALL = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=8, num_vectors=2, num_layers=2,
                         edge_dim=8, num_rbf=8, sigma_embed_dim=4, max_neighbors=8)


def embedded(smiles: str, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return mol


def graph_of(mol: Chem.Mol, dtype: torch.dtype = torch.float64):
    graph = featurize(mol)
    graph.x, graph.edge_attr = graph.x.to(dtype), graph.edge_attr.to(dtype)
    graph.pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=dtype)
    return graph


def make_batch(mols: list[Chem.Mol], dtype: torch.dtype = torch.float64, seed: int = 0) -> Batch:
    batch = Batch.from_data_list([graph_of(m, dtype) for m in mols])
    generator = torch.Generator().manual_seed(seed)
    batch.sigma_tor = torch.exp(torch.empty(len(mols), dtype=dtype).uniform_(-3, 1, generator=generator))
    batch.sigma_pos = torch.exp(torch.empty(len(mols), dtype=dtype).uniform_(-4, -2, generator=generator))
    return batch



@pytest.fixture(scope="module")
def mols() -> list[Chem.Mol]:
    return [embedded(s, seed=i) for i, s in enumerate(SMILES)]


def model_of(config: ScoreModelConfig = SMALL, dtype: torch.dtype = torch.float64, seed: int = 0) -> ScoreModel:
    torch.manual_seed(seed)
    return ScoreModel(config).to(dtype)


@pytest.mark.parametrize("sh_lmax", [1, 2])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_rotation_translation_and_parity(mols, dtype, atol, sh_lmax):
    batch = make_batch(mols, dtype)
    model = model_of(dataclasses.replace(SMALL, sh_lmax=sh_lmax), dtype)

    def scores(b):  # position scores times sigma_pos: O(1) like the torsion scores
        torsion, pos = model(b)
        return torsion, pos * b.sigma_pos[b.batch, None]

    with torch.no_grad():
        torsion, pos = scores(batch)
        assert torsion.abs().max() > 100 * atol and pos.abs().max() > 100 * atol  # not trivially small
        errors = assert_equivariant(scores, batch, atol=atol)
    if dtype == torch.float64:
        assert max(errors.values()) < 1e-10


def test_the_centre_vector_read_out_is_equivariant_and_starts_at_zero(mols):
    batch = make_batch(mols)
    batch.sigma_pos = torch.tensor([0.01, 1.0, 8.0], dtype=torch.float64)  # up to full-mode noise
    model = model_of(dataclasses.replace(SMALL, centre_vector=True))
    assert model.pos_centre.weight.abs().sum() == 0 and model.pos_centre.bias.abs().sum() == 0
    with torch.no_grad():
        model.pos_centre.weight.normal_(generator=torch.Generator().manual_seed(1))
        model.pos_centre.bias.fill_(-1.0)
        errors = assert_equivariant(lambda b: model(b), batch, atol=1e-6)
    assert max(errors.values()) < 1e-10
    (model(batch)[1].square().sum()).backward()
    assert model.pos_centre.weight.grad.abs().sum() > 0


def test_torsion_scores_flip_sign_under_a_mirror(mols):
    batch = make_batch(mols)
    model = model_of()
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    with torch.no_grad():
        torsion, pos = model(batch)
        torsion_m, pos_m = model(transform_batch(batch, mirror, torch.zeros(3, dtype=torch.float64)))
    torch.testing.assert_close(torsion_m, -torsion, atol=1e-9, rtol=0)
    torch.testing.assert_close(pos_m, pos @ mirror, atol=1e-9, rtol=0)


def test_a_non_equivariant_control_model_fails_the_same_check(mols):
    batch = make_batch(mols)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()

    def raw_coordinates(b):  # coordinates straight into an MLP: neither invariant nor equivariant
        out = mlp(b.pos)
        return out[b.torsion_index[0], 0], out[:, 1:]

    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(raw_coordinates, batch, atol=1e-6)


def test_renumbering_atoms_permutes_the_scores(mols):
    mol = mols[1]
    perm = torch.randperm(mol.GetNumAtoms(), generator=torch.Generator().manual_seed(3)).tolist()
    renumbered = Chem.RenumberAtoms(mol, perm)  # new atom i is old atom perm[i]
    model = model_of()
    with torch.no_grad():
        tor_a, pos_a = model(make_batch([mol]))
        tor_b, pos_b = model(make_batch([renumbered]))
    torch.testing.assert_close(pos_b, pos_a[perm], atol=1e-9, rtol=0)
    graph_a, graph_b = featurize(mol), featurize(renumbered)
    bonds_a = {frozenset(pair): i for i, pair in enumerate(graph_a.torsion_index.t().tolist())}
    matched = [bonds_a[frozenset((perm[u], perm[v]))] for u, v in graph_b.torsion_index.t().tolist()]
    assert len(matched) == len(bonds_a) > 0
    torch.testing.assert_close(tor_b, tor_a[matched], atol=1e-9, rtol=0)


def test_shapes_zero_centre_of_mass_and_no_mutation(mols):
    batch = make_batch(mols)
    before = {key: value.clone() for key, value in batch.to_dict().items() if torch.is_tensor(value)}
    torsion, pos = model_of()(batch)
    assert torsion.shape == (batch.torsion_index.shape[1],)
    assert pos.shape == (batch.num_nodes, 3)
    means = torch.zeros(batch.num_graphs, 3, dtype=pos.dtype).index_add_(0, batch.batch, pos)
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-9, rtol=0)
    after = {key: value for key, value in batch.to_dict().items() if torch.is_tensor(value)}
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_a_molecule_without_torsions_and_a_single_atom():
    batch = make_batch([embedded("C"), embedded("[Cl-]")])
    torsion, pos = model_of()(batch)
    assert torsion.shape == (0,) and pos.shape == (6, 3)
    assert torch.isfinite(pos).all()


def test_gradients_reach_every_parameter_and_positions(mols):
    batch = make_batch(mols)
    batch.pos.requires_grad_(True)
    model = model_of()
    torsion, pos = model(batch)
    (torsion.square().sum() + pos.square().sum()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert torch.isfinite(batch.pos.grad).all()


def test_a_few_adam_steps_fit_fixed_targets(mols):
    batch = make_batch(mols, torch.float32)
    model = model_of(SMALL, torch.float32)
    generator = torch.Generator().manual_seed(1)
    tor_target = torch.randn(batch.torsion_index.shape[1], generator=generator)
    pos_target = torch.randn(batch.num_nodes, 3, generator=generator)
    pos_target -= pos_target.mean(0)
    scale = batch.sigma_pos[batch.batch, None]

    def loss() -> torch.Tensor:
        torsion, pos = model(batch)
        return (torsion - tor_target).square().mean() + (pos * scale - pos_target).square().mean()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = loss().item()
    for _ in range(40):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * initial


def test_config_round_trip_and_validation():
    config = dataclasses.replace(SMALL, cutoff=4.5)
    assert ScoreModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="num_layers"):
        ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_layers=1)
    with pytest.raises(ValueError, match="sigma_embed_dim"):
        ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, sigma_embed_dim=3)
    with pytest.raises(ValueError, match="unknown"):
        ScoreModelConfig.from_dict({**config.to_dict(), "dropout": 0.1})
    model = ScoreModel(config)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    restored = ScoreModel(ScoreModelConfig.from_dict(config.to_dict()))
    restored.load_state_dict(model.state_dict())


def test_neighbour_lists_stay_within_each_graph_and_keep_bonds(mols):
    batch = make_batch(mols)
    nbr = atom_neighbors(batch.pos, batch.batch, batch.num_graphs, batch.edge_index, cutoff=5.0, max_neighbors=6)
    num_slots = nbr.src.shape[0] // batch.num_nodes
    dst = torch.arange(batch.num_nodes).repeat(num_slots)
    assert torch.equal(batch.batch[nbr.src], batch.batch[dst])
    edges = {(s, d) for s, d, ok in zip(nbr.src.tolist(), dst.tolist(), nbr.valid.tolist()) if ok}
    assert {tuple(e) for e in batch.edge_index.t().tolist()} <= edges
    bonded = nbr.bond >= 0
    assert torch.equal(batch.edge_index[0, nbr.bond[bonded]], nbr.src[bonded])
    assert torch.equal(batch.edge_index[1, nbr.bond[bonded]], dst[bonded])
    dist = (batch.pos[nbr.src] - batch.pos[dst]).norm(dim=1)
    assert (dist[nbr.valid & ~bonded] <= 5.0).all() and not (dst[nbr.valid] == nbr.src[nbr.valid]).any()

    atoms, valid, _ = bond_neighbors(batch.pos, batch.batch, batch.num_graphs, batch.torsion_index, 5.0, 8)
    u, v = batch.torsion_index
    assert torch.equal(batch.batch[atoms], batch.batch[u].expand_as(atoms))
    assert ((atoms[:2] == u) & valid[:2]).any(0).all() and ((atoms[:2] == v) & valid[:2]).any(0).all()


def test_left_out_is_the_nearest_candidate_the_cap_dropped(mols):
    batch = make_batch(mols)
    pos, graph = batch.pos, batch.batch
    nbr = atom_neighbors(pos, graph, batch.num_graphs, batch.edge_index, cutoff=5.0, max_neighbors=6)
    num_slots = nbr.src.shape[0] // batch.num_nodes
    src, valid = nbr.src.view(num_slots, -1), nbr.valid.view(num_slots, -1)
    bonded = {tuple(e) for e in batch.edge_index.t().tolist()}
    assert (nbr.left_out >= 0).any()
    for i in range(batch.num_nodes):
        kept = set(src[valid[:, i], i].tolist())
        dist = {j: float((pos[j] - pos[i]).norm()) for j in range(batch.num_nodes)
                if graph[j] == graph[i] and j != i and j not in kept and (j, i) not in bonded}
        dist = {j: d for j, d in dist.items() if d <= 5.0}
        if not dist:
            assert nbr.left_out[i] == -1
            continue
        left = int(nbr.left_out[i])
        assert dist[left] == min(dist.values())
        assert all(float((pos[k] - pos[i]).norm()) <= dist[left] for k in kept if (k, i) not in bonded)

    atoms, valid, left_out = bond_neighbors(pos, graph, batch.num_graphs, batch.torsion_index, 5.0, 8)
    centre = 0.5 * (pos[batch.torsion_index[0]] + pos[batch.torsion_index[1]])
    assert (left_out >= 0).any()
    for t in torch.nonzero(left_out >= 0).flatten().tolist():
        kept = atoms[valid[:, t], t]
        assert (pos[kept] - centre[t]).norm(dim=1).max() <= (pos[left_out[t]] - centre[t]).norm()


def test_cap_weights_fade_a_neighbour_out_as_the_left_out_one_comes_as_close():
    dist = torch.tensor([[1.0, 2.5, 2.875, 3.0]], dtype=torch.float64).t()  # (K, 1)
    left_out_dist = torch.tensor([3.0], dtype=torch.float64)
    weights = cap_weights(dist, left_out_dist, 0.25)
    assert torch.allclose(weights.squeeze(1), torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(cap_weights(dist, left_out_dist, 0.0), torch.ones_like(dist))


def test_checkpoints_without_cap_width_keep_the_hard_cap():
    saved = {k: v for k, v in SMALL.to_dict().items() if k != "cap_width"}
    assert ScoreModelConfig.from_dict(saved).cap_width == 0.0
    assert ScoreModelConfig.from_dict(SMALL.to_dict()).cap_width == SMALL.cap_width > 0


@pytest.mark.parametrize("cap_width, continuous", [(0.25, True), (0.0, False)])
def test_scores_are_continuous_where_the_cap_changes_its_choice(mols, cap_width, continuous):
    """Move an atom's nearest left-out candidate to just nearer / just farther than its farthest kept
    non-bonded neighbour: the soft cap gives the same scores on both sides, the hard cap jumps."""
    config = dataclasses.replace(SMALL, max_neighbors=6, cap_width=cap_width)
    model = model_of(config)
    batch = make_batch(mols[:1])
    pos = batch.pos
    nbr = atom_neighbors(pos, batch.batch, 1, batch.edge_index, config.cutoff, config.max_neighbors)
    num_slots = nbr.src.shape[0] // batch.num_nodes
    src, valid, bond = (t.view(num_slots, -1) for t in (nbr.src, nbr.valid, nbr.bond))
    i = int(torch.nonzero(nbr.left_out >= 0)[0])
    farthest = max(float((pos[j] - pos[i]).norm()) for j, ok, b in zip(src[:, i], valid[:, i], bond[:, i])
                   if ok and b < 0)
    left = int(nbr.left_out[i])
    direction = (pos[left] - pos[i]) / (pos[left] - pos[i]).norm()
    scores = []
    for eps in (-1e-7, 1e-7):
        moved = batch.clone()
        moved.pos = pos.clone()
        moved.pos[left] = pos[i] + (farthest + eps) * direction
        with torch.no_grad():
            scores.append(torch.cat([s.flatten() for s in model(moved)]))
    gap = float((scores[0] - scores[1]).abs().max())
    assert (gap < 1e-4) if continuous else (gap > 1e-2)  # the hard cap jumps by about 5 here
