"""Physics guidance: potentials, their torsion- and coordinate-space gradients, the tilted density,
equivariance of the guided score, and the generator / CLI / benchmark options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.conformers.evaluation import split_guidance
from confdiff.chem.stereo import StereoCheck
from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.conformers.generator import ConformerGenerator
from confdiff.diffusion import SDE, Euclidean, Product, ProductSDE, VEGeometric
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig
from confdiff.conformers.physics import (
    KT_298,
    SCREENED_DIELECTRIC,
    BatchPotential,
    GuidanceSchedule,
    MMFFPotential,
    RepulsionPotential,
    make_potential,
    physics_guidance,
)

SMILES = ["CC(C)Cc1ccc(C(C)C(=O)O)cc1", "CCCCCC", "c1ccccc1", "CCOC(=O)c1ccccc1NC(=O)CCN(C)C"]
ALWAYS = GuidanceSchedule(scale=1.0, t_start=2.0, t_full=1.0)  # lambda = 1 for every t in [0, 1]


def embedded(smiles: str, num_confs: int = 1, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert len(AllChem.EmbedMultipleConfs(mol, num_confs, params)) == num_confs
    return mol


def positions_of(mol: Chem.Mol) -> torch.Tensor:
    return torch.tensor(np.stack([c.GetPositions() for c in mol.GetConformers()]), dtype=torch.float64)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


@pytest.fixture(scope="module")
def mols():
    return [embedded(smi, num_confs=2, seed=i) for i, smi in enumerate(SMILES)]


@pytest.fixture(scope="module")
def setting(mols):
    """A refine-mode batch (two conformers per molecule), its SDE, a state y and the repulsion potential."""
    graphs = []
    for mol in mols:
        graph = featurize(mol)
        graph.x, graph.edge_attr = graph.x.double(), graph.edge_attr.double()
        graphs += [graph, graph]
    batch = Batch.from_data_list(graphs)
    pos_ref = torch.cat([positions_of(mol).reshape(-1, 3) for mol in mols])
    diffusion = ConformerDiffusion()
    sde = diffusion.sde(batch, "refine")
    gen = torch.Generator().manual_seed(0)
    d, e = sde.space.split(torch.zeros(sde.space.numel, dtype=torch.float64))
    y = sde.space.join([2.0 * torch.rand(d.shape, dtype=torch.float64, generator=gen) - 1.0,
                        sde.space.spaces[1].project(0.1 * torch.randn(e.shape, dtype=torch.float64, generator=gen))])
    potential = BatchPotential([(RepulsionPotential.from_mol(mol), 2) for mol in mols])
    return batch, pos_ref, diffusion, sde, y, potential


# --- the potentials ---------------------------------------------------------------------------------------

def test_repulsion_gradient_matches_autograd_and_is_invariant(mols):
    gen = torch.Generator().manual_seed(1)
    for mol in mols:
        potential = RepulsionPotential.from_mol(mol)
        pos = positions_of(mol) + 0.3 * torch.randn(2, mol.GetNumAtoms(), 3, dtype=torch.float64, generator=gen)
        energy, grad = potential.energy_and_grad(pos)
        assert energy.shape == (2,) and grad.shape == pos.shape and bool((energy > 0).all())
        probe = pos.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(potential.energy_and_grad(probe)[0].sum(), probe)
        torch.testing.assert_close(grad, auto, rtol=1e-10, atol=1e-10)
        rot = random_rotation(gen)
        moved_energy, moved_grad = potential.energy_and_grad(pos @ rot.T + torch.tensor([1.0, -2.0, 3.0]))
        torch.testing.assert_close(moved_energy, energy)
        torch.testing.assert_close(moved_grad, grad @ rot.T)


STEREO_SMILES = "C/C=C/[C@H](N)c1ccc[nH]1"  # a specified double bond and centre, an aromatic 5-ring


def only(mol: Chem.Mol, **k) -> RepulsionPotential:
    """The repulsion potential of ``mol`` with every force constant 0 except those given."""
    zero = dict(k_bond=0.0, k_angle=0.0, k_repulsion=0.0, k_plane=0.0, k_stereo=0.0)
    return RepulsionPotential.from_mol(mol, **{**zero, **k})


def swap(pos: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``pos (B, N, 3)`` with atoms ``a`` and ``b`` exchanged: around a centre or at a double bond's end
    bonded to both, their configuration inverted."""
    out = pos.clone()
    out[:, [a, b]] = pos[:, [b, a]]
    return out


def test_plane_and_stereo_terms_equal_finite_differences_and_are_invariant():
    mol = embedded(STEREO_SMILES, num_confs=2)
    potential = RepulsionPotential.from_mol(mol)
    assert sorted(g.shape for g in potential.planes) == [(1, 5), (1, 6)]  # the ring; C(*)(*)=C(*)(*)
    assert potential.num_centres == 1 and len(potential.stereo) == 2
    gen = torch.Generator().manual_seed(2)
    hydrogen = next(n.GetIdx() for n in mol.GetAtomWithIdx(1).GetNeighbors() if n.GetAtomicNum() == 1)
    pos = swap(positions_of(mol), 0, hydrogen)  # the double bond cis
    centre, neighbours = potential.stereo[0, 0], potential.stereo[0, 1:]
    pos[:, centre] = pos[:, neighbours].mean(1)  # the centre flat: both of its signs cost energy
    pos = pos + 0.1 * torch.randn(pos.shape, dtype=torch.float64, generator=gen)  # the rings puckered
    energy, grad = potential.energy_and_grad(pos)
    for k in ("k_plane", "k_stereo"):  # each term is active: a real test
        assert bool((only(mol, **{k: 10.0}).energy_and_grad(pos)[0] > 0.1).all())
    h = 1e-6
    fd = torch.empty_like(pos)
    for atom in range(pos.shape[1]):
        for axis in range(3):
            step = torch.zeros_like(pos)
            step[:, atom, axis] = h
            fd[:, atom, axis] = (potential.energy_and_grad(pos + step)[0]
                                 - potential.energy_and_grad(pos - step)[0]) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-5)
    rot = random_rotation(gen)
    moved_energy, moved_grad = potential.energy_and_grad(pos @ rot.T + torch.tensor([1.0, -2.0, 3.0]))
    torch.testing.assert_close(moved_energy, energy)
    torch.testing.assert_close(moved_grad, grad @ rot.T)
    mirrored_energy, mirrored_grad = potential.energy_and_grad(-pos)  # a reflection: E invariant
    torch.testing.assert_close(mirrored_energy, energy)
    torch.testing.assert_close(mirrored_grad, -grad)
    energy32, grad32 = potential.energy_and_grad(pos.float())
    torch.testing.assert_close(energy32, energy.float(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grad32, grad.float(), rtol=1e-4, atol=1e-3)


def test_plane_term_is_zero_for_a_flat_ring_and_the_least_squares_residual_of_a_puckered_one():
    mol = embedded("c1ccccc1")
    potential = only(mol, k_plane=50.0)
    pos = positions_of(mol)
    centred = pos[0] - pos[0].mean(0)
    normal = torch.linalg.svd(centred)[2][-1]
    flat = pos - (centred @ normal)[None, :, None] * normal  # every atom moved onto the best plane
    assert potential.energy_and_grad(flat)[0].item() == pytest.approx(0.0, abs=1e-12)
    puckered = flat.clone()
    puckered[0, [0, 2, 4]] += 0.2 * normal  # a chair: alternate ring atoms up and down
    puckered[0, [1, 3, 5]] -= 0.2 * normal
    ring = puckered[0, :6] - puckered[0, :6].mean(0)
    expected = 50.0 * torch.linalg.svdvals(ring)[-1] ** 2  # the sum of squared distances from the best plane
    energy = potential.energy_and_grad(puckered)[0].item()
    assert energy == pytest.approx(expected.item(), rel=1e-9) and energy == pytest.approx(50.0 * 6 * 0.2**2, rel=1e-3)


def test_stereo_term_penalises_an_inverted_centre_or_double_bond_but_not_the_mirror_image():
    mol = embedded("C[C@H](N)[C@@H](O)C/C=C/C", num_confs=3)
    potential = only(mol, k_stereo=10.0)
    check = StereoCheck.from_mol(mol)
    pos = positions_of(mol)
    assert check.matches_input(pos).all() and not check.matches_input(-pos).any()
    torch.testing.assert_close(potential.energy_and_grad(pos)[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(potential.energy_and_grad(-pos)[0], torch.zeros(3, dtype=torch.float64))
    centre = 1  # C[C@H](N): exchanging its N and H inverts it alone
    hydrogen = next(n.GetIdx() for n in mol.GetAtomWithIdx(centre).GetNeighbors() if n.GetAtomicNum() == 1)
    end = 7  # C=C/C: exchanging the methyl carbon and the hydrogen makes the double bond cis
    end_hydrogen = next(n.GetIdx() for n in mol.GetAtomWithIdx(end).GetNeighbors() if n.GetAtomicNum() == 1)
    for wrong in (swap(pos, 2, hydrogen), swap(pos, 8, end_hydrogen)):
        for conformer in (wrong, -wrong):  # inconsistent with the input and with its mirror image
            assert not check.matches_input(conformer.numpy()).any()
            assert bool((potential.energy_and_grad(conformer)[0] > 1.0).all())


def test_repulsion_is_small_for_etkdg_and_large_for_a_clash():
    mol = embedded("CCCCCCCC")
    potential = RepulsionPotential.from_mol(mol)
    pos = positions_of(mol)
    relaxed = potential.energy_and_grad(pos)[0].item()
    clashed = pos.clone()
    clashed[0, 7] = clashed[0, 0] + torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)  # C8 onto C1, 7 bonds apart
    assert relaxed < 1.0 < 10 * relaxed + 5 < potential.energy_and_grad(clashed)[0].item()


def test_mmff_matches_rdkit_and_finite_differences(mols):
    mol = mols[0]
    potential = MMFFPotential.from_mol(mol)
    pos = positions_of(mol)
    energy, grad = potential.energy_and_grad(pos)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    for c in range(2):
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=c)
        assert energy[c].item() == pytest.approx(ff.CalcEnergy(), rel=1e-9)
    h, atom = 1e-5, 5
    for axis in range(3):
        step = torch.zeros_like(pos)
        step[:, atom, axis] = h
        fd = (potential.energy_and_grad(pos + step)[0] - potential.energy_and_grad(pos - step)[0]) / (2 * h)
        torch.testing.assert_close(grad[:, atom, axis], fd, rtol=1e-4, atol=1e-4)


def test_screened_mmff_is_rdkits_distance_dependent_dielectric(mols):
    mol = mols[3]  # an ester and an amide: electrostatics matter
    pos = positions_of(mol)
    energy, grad = MMFFPotential.from_mol(mol, screened=True).energy_and_grad(pos)
    vacuum, _ = make_potential("mmff", mol).energy_and_grad(pos)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    props.SetMMFFDielectricModel(2)  # RDKit: 2 is distance-dependent
    props.SetMMFFDielectricConstant(SCREENED_DIELECTRIC)
    for c in range(2):
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=c)
        assert energy[c].item() == pytest.approx(ff.CalcEnergy(), rel=1e-9)
        np.testing.assert_allclose(grad[c].numpy().ravel(), ff.CalcGrad(), rtol=1e-9, atol=1e-9)
    assert (energy - vacuum).abs().min() > 1.0  # kcal/mol: the screening changes the electrostatics
    torch.testing.assert_close(make_potential("mmff-screened", mol).energy_and_grad(pos)[0], energy)


def test_make_potential_and_validation():
    mol = embedded("CCO")
    assert make_potential("none", mol) is None
    assert isinstance(make_potential("repulsion", mol), RepulsionPotential)
    assert isinstance(make_potential("mmff", mol), MMFFPotential)
    with pytest.raises(ValueError, match="unknown guidance 'uff'"):
        make_potential("uff", mol)
    with pytest.raises(ValueError, match="no parameters"):
        MMFFPotential(Chem.AddHs(Chem.MolFromSmiles("OB(O)c1ccccc1")))
    with pytest.raises(ValueError, match="scale must be >= 0"):
        GuidanceSchedule(scale=-1.0)
    with pytest.raises(ValueError, match="t_full < t_start"):
        GuidanceSchedule(t_start=0.3, t_full=0.5)


def test_schedule_is_zero_at_high_noise():
    schedule = GuidanceSchedule(scale=2.0, t_start=0.6, t_full=0.2)
    t = torch.tensor([1.0, 0.6, 0.4, 0.2, 0.0])
    torch.testing.assert_close(schedule(t), torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0]))


# --- gradients in the diffusion's spaces -------------------------------------------------------------------

def guidance_only(setting, potential=None, kT=1.0):
    """The guidance term alone (zero model score, lambda = 1, no cap) at the state of ``setting``."""
    batch, pos_ref, diffusion, sde, y, batch_potential = setting

    def positions(state):
        return diffusion.positions(sde, batch, pos_ref, state)

    guided = physics_guidance(lambda s, t: torch.zeros_like(s), sde, positions, potential or batch_potential,
                              ALWAYS, kT=kT, max_score=None)
    return guided(y, torch.full((batch.num_graphs,), 0.1, dtype=torch.float64)), positions


def test_torsion_components_equal_finite_differences_of_the_energy(setting):
    batch, _, _, sde, y, potential = setting
    score, positions = guidance_only(setting)
    num_torsions = batch.torsion_index.shape[1]
    h = 1e-6
    fd = torch.empty(num_torsions, dtype=torch.float64)
    graph_of_torsion = batch.batch[batch.torsion_index[0]]
    for k in range(num_torsions):
        step = torch.zeros_like(y)
        step[k] = h
        e_plus, e_minus = potential(positions(y + step))[0], potential(positions(y - step))[0]
        fd[k] = -(e_plus - e_minus)[graph_of_torsion[k]] / (2 * h)  # -dE/d(tau_k), kT = 1
    d_score = sde.space.split(score)[0]
    assert fd.abs().max() > 1.0  # the random torsions make clashes: a real test
    torch.testing.assert_close(d_score, fd, rtol=1e-5, atol=1e-5)


def test_coordinate_components_are_the_projected_force(setting):
    batch, _, _, sde, y, potential = setting
    score, positions = guidance_only(setting, kT=KT_298)
    force = -potential(positions(y))[1] / KT_298
    mean = torch.zeros(batch.num_graphs, 3, dtype=torch.float64).index_add_(0, batch.batch, force)
    expected = force - (mean / torch.bincount(batch.batch)[:, None].double())[batch.batch]
    torch.testing.assert_close(sde.space.split(score)[1], expected)


def test_mmff_torsion_components_equal_finite_differences(setting, mols):
    batch, _, _, sde, y, _ = setting
    potential = BatchPotential([(MMFFPotential.from_mol(mol), 2) for mol in mols])
    score, positions = guidance_only(setting, potential)
    graph_of_torsion = batch.batch[batch.torsion_index[0]]
    h = 1e-5
    for k in range(0, batch.torsion_index.shape[1], 3):
        step = torch.zeros_like(y)
        step[k] = h
        fd = -(potential(positions(y + step))[0] - potential(positions(y - step))[0])[graph_of_torsion[k]] / (2 * h)
        assert sde.space.split(score)[0][k].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-3)


def test_cap_bounds_each_atom_and_torsion(setting):
    batch, pos_ref, diffusion, sde, y, potential = setting
    t = torch.full((batch.num_graphs,), 0.5, dtype=torch.float64)
    guided = physics_guidance(lambda s, tt: torch.zeros_like(s), sde,
                              lambda s: diffusion.positions(sde, batch, pos_ref, s), potential, ALWAYS, max_score=1.0)
    d, e = sde.space.split(guided(y, t))
    sigma_tor, sigma_pos = diffusion.sigmas(t[:1])
    assert d.abs().max() <= 1.0 / sigma_tor.item() + 1e-9
    # capped, then projected to zero CoM: the projection can add at most the cap once more
    assert e.norm(dim=-1).max() <= 2.0 / sigma_pos.item() + 1e-9
    assert d.abs().max() > 0.5 / sigma_tor.item()  # the cap is reached: a real test


# --- the tilted density -------------------------------------------------------------------------------------

def test_gaussian_model_times_quadratic_potential_is_the_tilted_gaussian():
    """Data N(m0, s0^2), VE marginal N(m0, s0^2 + sigma^2), E = k/2 |x - c|^2: the guided score is the
    score of N(m*, v*), 1/v* = 1/(s0^2 + sigma^2) + lambda k / kT, at every t, and Langevin dynamics
    with it at t_min samples that Gaussian."""
    num, dim, m0, s0, k, c, lam, kT = 4000, 3, 1.0, 0.5, 2.0, -1.0, 1.5, 0.6
    schedule = VEGeometric(0.01, 5.0)
    space = Product([Euclidean()], [(num, dim)])
    sde = ProductSDE([SDE(schedule, Euclidean())], space)

    def model_score(y, t):
        var = s0**2 + schedule.sigma(t[0]) ** 2
        return -(y - m0) / var

    class Quadratic:
        def __call__(self, x):
            return 0.5 * k * ((x - c) ** 2).sum(-1), k * (x - c)

    guided = physics_guidance(model_score, sde, lambda y: y.reshape(num, dim), Quadratic(),
                              GuidanceSchedule(lam, 2.0, 1.0), kT=kT, max_score=None)

    def tilted(t):
        var = s0**2 + schedule.sigma(torch.tensor(t, dtype=torch.float64)) ** 2
        v_star = 1.0 / (1.0 / var + lam * k / kT)
        return v_star * (m0 / var + lam * k * c / kT), v_star

    gen = torch.Generator().manual_seed(0)
    y = torch.randn(num * dim, dtype=torch.float64, generator=gen)
    for t in (0.9, 0.5, 0.0):
        m_star, v_star = tilted(t)
        tt = torch.full((num,), t, dtype=torch.float64)
        torch.testing.assert_close(guided(y, tt), -(y - m_star) / v_star)

    m_star, v_star = tilted(0.0)
    eps = 0.01 * float(v_star)
    t0 = torch.zeros(num, dtype=torch.float64)
    for _ in range(600):  # unadjusted Langevin: stationary variance v* / (1 - eps / (2 v*)), 0.5% above v*
        y = y + eps * guided(y, t0) + math.sqrt(2 * eps) * torch.randn(y.shape, dtype=torch.float64, generator=gen)
    se_mean = math.sqrt(float(v_star) / y.numel())
    assert abs(y.mean().item() - float(m_star)) < 4 * se_mean
    assert y.var().item() == pytest.approx(float(v_star), rel=0.05)


# --- equivariance -------------------------------------------------------------------------------------------

def test_guided_score_is_equivariant(setting):
    """Rotating the chart (pos_ref and e) rotates the coordinate part of the guided score and leaves the
    torsion part unchanged; a potential in absolute coordinates fails the same check."""
    batch, pos_ref, diffusion, sde, y, potential = setting
    torch.manual_seed(0)
    config = ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM,
                              num_scalars=8, num_vectors=2, num_layers=2)
    model = ScoreModel(config).double().eval()
    gen = torch.Generator().manual_seed(3)
    rot, shift = random_rotation(gen), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    t = torch.full((batch.num_graphs,), 0.3, dtype=torch.float64)
    d, e = sde.space.split(y)
    y_rot = sde.space.join([d, e @ rot.T])

    class Field:  # E = 5 * sum of x coordinates: not rotation invariant
        def __call__(self, x):
            return 5 * x[:, 0].sum().expand(batch.num_graphs), torch.zeros_like(x) + torch.tensor([5.0, 0, 0]).to(x)

    for pot, equivariant in ((potential, True), (Field(), False)):
        scores = []
        for ref, state in ((pos_ref, y), (pos_ref @ rot.T + shift, y_rot)):
            score_fn = diffusion.score_fn(model, batch, ref, sde)
            guided = physics_guidance(score_fn, sde, lambda s, ref=ref: diffusion.positions(sde, batch, ref, s),
                                      pot, ALWAYS)
            scores.append(sde.space.split(guided(state, t)))
        (d0, e0), (d1, e1) = scores
        close = torch.allclose(d1, d0, atol=1e-8) and torch.allclose(e1, e0 @ rot.T, atol=1e-8)
        assert close == equivariant


# --- the generator, the CLI and the benchmark ----------------------------------------------------------------

def tiny_model():
    torch.manual_seed(0)
    config = ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM,
                              num_scalars=8, num_vectors=2, num_layers=2)
    return ScoreModel(config).eval(), ConformerDiffusion(ConformerDiffusionConfig(sigma_pos_min=0.001,
                                                                                 sigma_pos_max=0.01))


def heavy_clashes(mol: Chem.Mol, cutoff: float = 2.2) -> int:
    topo = Chem.GetDistanceMatrix(mol)
    heavy = np.array([a.GetAtomicNum() > 1 for a in mol.GetAtoms()])
    mask = np.triu((topo >= 3) & heavy[:, None] & heavy[None, :], 1)
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    return int(((np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1) < cutoff) & mask).sum())


def test_generator_guidance_removes_clashes_and_keeps_seeds_reproducible():
    model = tiny_model()
    smiles = "CCCCCCCCCCCCCCCC(=O)OCC(O)CO"  # long and flexible: random torsions clash
    # the sampler's own draws: without the validity gate, which would replace the clashing ones, and
    # without oversampling, whose choice of draws depends on n
    plain = ConformerGenerator(model, device="cpu", steps=8, guidance="none", validity_gate=False,
                               oversample=1).generate(smiles, n=10, seed=0)
    gen = ConformerGenerator(model, device="cpu", steps=8, guidance="repulsion", guidance_scale=3.0,
                             validity_gate=False, oversample=1)
    guided = gen.generate(smiles, n=10, seed=0)
    assert guided.GetNumConformers() == 10
    assert heavy_clashes(guided) < heavy_clashes(plain)
    # conformer i does not depend on n or the batching, up to float32 rounding of the batched model
    # (1e-5 A without guidance), which the stiff guidance steps amplify: measured up to 3e-2 A
    again = gen.generate(smiles, n=4, seed=0)
    small = ConformerGenerator(model, device="cpu", steps=8, guidance="repulsion", guidance_scale=3.0,
                               max_atoms_per_batch=150, validity_gate=False, oversample=1).generate(smiles, n=4, seed=0)
    for other in (again, small):
        for i in range(4):
            np.testing.assert_allclose(other.GetConformer(i).GetPositions(), guided.GetConformer(i).GetPositions(),
                                       atol=0.1)


def test_generator_mmff_falls_back_for_missing_parameters_and_validates():
    model = tiny_model()
    gen = ConformerGenerator(model, device="cpu", steps=3, guidance="mmff")
    with pytest.warns(UserWarning, match="MMFF94 has no parameters.*repulsion"):
        mol = gen.generate("OB(O)c1ccccc1CCC", n=3, seed=0)
    assert mol.GetNumConformers() == 3
    with pytest.raises(ValueError, match="guidance must be one of"):
        ConformerGenerator(model, device="cpu", guidance="uff")
    with pytest.raises(ValueError, match="scale must be >= 0"):
        ConformerGenerator(model, device="cpu", guidance="repulsion", guidance_scale=-1.0)


def test_screened_guidance_also_ranks_the_draws():
    model = tiny_model()
    mol = embedded("OCCOCCO")
    screened = make_potential("mmff-screened", mol)
    pos = positions_of(mol)
    for guidance, scale in (("mmff-screened", 1.0), ("mmff-screened", 0.0)):
        gen = ConformerGenerator(model, device="cpu", steps=3, guidance=guidance, guidance_scale=scale, oversample=2)
        potential, ranking = gen._potentials(Chem.Mol(mol), [])
        torch.testing.assert_close(ranking.energy_and_grad(pos)[0], screened.energy_and_grad(pos)[0])
        assert (potential is ranking) == (scale > 0)
    gen = ConformerGenerator(model, device="cpu", steps=3, guidance="repulsion", oversample=2)
    _, ranking = gen._potentials(Chem.Mol(mol), [])  # other guidance: the draws are ranked in vacuum
    torch.testing.assert_close(ranking.energy_and_grad(pos)[0], make_potential("mmff", mol).energy_and_grad(pos)[0])
    assert gen.generate("OCCOCCO", n=3, seed=0).GetNumConformers() == 3


def test_benchmark_method_names_carry_guidance():
    assert split_guidance("confdiff") == ("confdiff", None, None)
    assert split_guidance("confdiff:none") == ("confdiff", "none", None)
    assert split_guidance("confdiff-full:repulsion:10") == ("confdiff-full", "repulsion", 10.0)
    assert split_guidance("etkdg") == ("etkdg", None, None)
    with pytest.raises(ValueError, match="unknown guidance"):
        split_guidance("confdiff:uff")

