"""SE(3) invariance of conformer log-likelihoods, exactness against an oracle, Boltzmann reweighting.

All in float64. The oracle is a ``ConformerDiffusion`` whose score function is the exact score of a
known data distribution in the chart (torsion ~ wrapped-normal mixture, e = 0), run through the
same ``likelihood`` code as the network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.ensembles import BOLTZMANN_KCAL
from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, featurize
from confdiff.chem.torsions import apply_torsion_changes, dihedral_angles
from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.conformers.likelihood import (
    boltzmann_importance_weights,
    canonical_frame,
    likelihood,
)
from confdiff.diffusion import (
    SAMPLERS,
    time_grid,
    wrapped_normal_log_prob,
    wrapped_normal_score,
)
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig
from tests.conformers.oracles import GaussianConformer

# the invariance tests only need the same computation on moved inputs, not a tight ODE solve; they
# score the input frame (align=False), so that the chart, the ODE and the model are what is tested
LOOSE = {"rtol": 0.0, "atol": 1e-2}
INPUT_FRAME = {"align": False}


def tiny_model(seed: int = 0) -> ScoreModel:
    """A small random float64 model, read-outs rescaled to the range of a trained one: coordinate
    drifts of ~0.3 A (random ones collide atoms) and torsion drifts of ~0.1 rad."""
    torch.manual_seed(seed)
    config = ScoreModelConfig(ATOM_FEATURE_DIM, BOND_FEATURE_DIM, num_scalars=4, num_vectors=2, num_layers=2,
                              edge_dim=4, num_rbf=4, sigma_embed_dim=4)
    model = ScoreModel(config).double()
    with torch.no_grad():
        for layer, scale in ((model.pos_edge_out, 0.1), (model.pos_linear, 0.1), (model.tor_out, 10.0)):
            for p in layer.parameters():
                p.mul_(scale)
    return model


def embedded(smiles: str, n: int, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed)
    assert mol.GetNumConformers() == n
    return mol


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def with_moved_copies(mol: Chem.Mol, generator: torch.Generator) -> Chem.Mol:
    """``mol`` plus, for every conformer, a randomly rotated and translated copy appended."""
    out = Chem.Mol(mol)
    for conf in list(mol.GetConformers()):
        pos = torch.as_tensor(conf.GetPositions())
        moved = pos @ random_rotation(generator).T + 5.0 * torch.randn(3, generator=generator, dtype=torch.float64)
        copy = Chem.Conformer(mol.GetNumAtoms())
        copy.SetPositions(moved.numpy())
        out.AddConformer(copy, assignId=True)
    return out


class AbsoluteCoordinateScore(torch.nn.Module):
    """Control: the network's scores plus ``0.1 sin(x) / sigma_pos`` (zero-CoM), not rotation-equivariant."""

    def __init__(self, inner: ScoreModel):
        super().__init__()
        self.inner = inner

    def forward(self, batch):
        tor, pos = self.inner(batch)
        extra = 0.1 * torch.sin(batch.pos) / batch.sigma_pos[batch.batch, None]
        counts = torch.bincount(batch.batch).to(extra.dtype)[:, None]
        mean = torch.zeros(batch.num_graphs, 3, dtype=extra.dtype).index_add_(0, batch.batch, extra) / counts
        return tor, pos + extra - mean[batch.batch]


@pytest.fixture(autouse=True)
def one_thread():
    """Small graphs: intra-op threads only contend (6x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- invariance
RIGID = "OC1CC1"


@pytest.mark.parametrize("smiles", ["OCCO", pytest.param("CC(=O)NC", marks=pytest.mark.slow),
                                    pytest.param("CCOc1ccccc1C(=O)N", marks=pytest.mark.slow), RIGID])
def test_log_likelihood_is_invariant_under_rotations_and_translations(smiles):
    mol = with_moved_copies(embedded(smiles, 2), torch.Generator().manual_seed(1))
    log_p = likelihood(mol, (tiny_model(), ConformerDiffusion()), divergence="exact", **LOOSE, **INPUT_FRAME)
    original, moved = np.array(log_p[:2]), np.array(log_p[2:])
    assert np.all(np.isfinite(original))
    assert abs(original[0] - original[1]) > 1e-2  # different conformers, different values
    np.testing.assert_allclose(moved, original, rtol=0, atol=1e-4)


def test_invariance_check_fails_for_a_non_equivariant_score():
    mol = with_moved_copies(embedded("OCCO", 2), torch.Generator().manual_seed(1))
    log_p = likelihood(mol, (AbsoluteCoordinateScore(tiny_model()), ConformerDiffusion()), divergence="exact",
                       **LOOSE, **INPUT_FRAME)
    assert np.max(np.abs(np.array(log_p[2:]) - np.array(log_p[:2]))) > 1e-2


def test_canonical_frame_is_the_same_for_moved_copies_and_keeps_the_geometry():
    mol = with_moved_copies(embedded("CC(C)Cc1ccc(C(C)C(=O)O)cc1", 2), torch.Generator().manual_seed(3))
    frames = [canonical_frame(c.GetPositions()) for c in mol.GetConformers()]
    for original, moved in zip(frames[:2], frames[2:]):
        np.testing.assert_allclose(moved, original, atol=1e-9)
    pos = mol.GetConformer(0).GetPositions()
    dist = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(frames[0]), dist(pos), atol=1e-12)
    np.testing.assert_allclose(frames[0].mean(0), 0.0, atol=1e-12)
    assert np.linalg.det(np.linalg.lstsq(pos - pos.mean(0), frames[0], rcond=None)[0]) > 0  # no reflection


def test_aligned_fixed_step_float32_is_invariant_and_matches_float64():
    """The settings of ``confdiff score`` (RK4, model dtype) on moved copies, float32 and float64."""
    mol = with_moved_copies(embedded("OCCO", 2), torch.Generator().manual_seed(1))
    values = {}
    for dtype in (torch.float32, torch.float64):
        log_p = np.array(likelihood(mol, (tiny_model(), ConformerDiffusion()), mode="torsions", steps=5, dtype=dtype))
        np.testing.assert_allclose(log_p[2:], log_p[:2], rtol=0, atol={torch.float32: 1e-4, torch.float64: 1e-9}[dtype])
        values[dtype] = log_p
    np.testing.assert_allclose(values[torch.float32], values[torch.float64], rtol=0, atol=1e-3)


def test_a_molecule_without_rotatable_bonds_has_torsion_log_density_zero():
    assert likelihood(embedded("c1ccccc1", 2), (tiny_model(), ConformerDiffusion()), mode="torsions", steps=2) == [0.0, 0.0]


# ---------------------------------------------------------------------------------------- prior, samplers
def conformer_batch(smiles: str, copies: int):
    mol = embedded(smiles, 1)
    batch = Batch.from_data_list([featurize(mol)] * copies)
    batch = batch.apply(lambda v: v.double() if v.is_floating_point() else v)
    pos = torch.as_tensor(mol.GetConformer().GetPositions()).repeat(copies, 1)
    return batch, pos


def com(sde, y: torch.Tensor) -> torch.Tensor:
    """Per-graph centre of mass of the coordinate part of ``y``, shape (G, 3)."""
    pos_space = sde.space.spaces[1]
    return pos_space.mean(sde.space.split(y)[1])


def test_prior_is_se3_invariant():
    diffusion = ConformerDiffusion()
    batch, _ = conformer_batch("OCCO", 4000)
    sde = diffusion.sde(batch)
    like = torch.zeros(sde.space.numel, dtype=torch.float64)
    y = sde.prior_sample(like, torch.Generator().manual_seed(0))
    d, e = sde.space.split(y)
    assert com(sde, y).abs().max() < 1e-12

    # the density: unchanged when every conformer's e is rotated and translated (then re-centred)
    gen = torch.Generator().manual_seed(2)
    rot = torch.stack([random_rotation(gen) for _ in range(batch.num_graphs)])  # (G, 3, 3)
    moved = torch.einsum("nij,nj->ni", rot[batch.batch], e) + torch.randn(batch.num_graphs, 3, generator=gen,
                                                                            dtype=torch.float64)[batch.batch]
    y_moved = sde.space.join([d, sde.space.spaces[1].project(moved)])
    torch.testing.assert_close(sde.prior_log_prob(y_moved), sde.prior_log_prob(y), rtol=1e-12, atol=1e-9)
    m = int(batch.num_torsions[0])
    uniform = torch.full((batch.num_graphs,), -m * math.log(2 * math.pi), dtype=torch.float64)
    torch.testing.assert_close(sde.sdes[0].prior_log_prob(d), uniform)

    # the samples: covariance sigma^2 (I - 11^T / n) x I_3, invariant under rotations acting on each atom
    n = batch.num_nodes // batch.num_graphs
    sigma = diffusion.config.sigma_pos_max
    flat = e.reshape(batch.num_graphs, 3 * n)
    cov = flat.T @ flat / batch.num_graphs
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    expected = sigma**2 * torch.kron(centring, torch.eye(3, dtype=torch.float64))
    assert (cov - expected).abs().max() < 5 * sigma**2 / math.sqrt(batch.num_graphs)
    assert torch.stack([torch.cos(d).mean(), torch.sin(d).mean()]).abs().max() < 5 / math.sqrt(d.numel())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_keeps_coordinates_on_the_zero_com_subspace(name):
    diffusion = ConformerDiffusion()
    batch, pos_ref = conformer_batch("CC(=O)NC", 3)
    sde = diffusion.sde(batch)
    network = diffusion.score_fn(tiny_model(), batch, pos_ref, sde)
    offset = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def score_fn(y, t):  # a coordinate score with a centre-of-mass component: the sampler must remove it
        d_score, e_score = sde.space.split(network(y, t))
        return sde.space.join([d_score, e_score + offset])

    generators = [torch.Generator().manual_seed(i) for i in range(batch.num_graphs)]
    y = sde.prior_sample(torch.zeros(sde.space.numel, dtype=torch.float64), generators)
    seen = []

    def check(info):
        seen.append(float(com(sde, info["x"].detach()).abs().max()))

    options = LOOSE if name == "rk45" else {}
    out = SAMPLERS[name](score_fn, y, sde, time_grid(4).double(), generator=generators, callback=check, **options)
    assert seen and max(seen) < 1e-12
    assert com(sde, out).abs().max() < 1e-12
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------- oracle
class MixtureOracle(ConformerDiffusion):
    """Exact chart scores for data with dihedral ``tau ~ sum_k w_k WN(mu_k, s_k)`` and ``e = 0``.

    ``p_t(tau) = sum_k w_k WN(tau - mu_k; (s_k^2 + sigma_tor(t)^2)^(1/2))`` (weights unnormalised),
    ``p_t(e) = N(0, sigma_pos(t)^2 I)`` on the zero-CoM subspace, so the chart score at
    ``y = (d, e)`` is ``(d/dtau log p_t(tau_ref + d), -e / sigma_pos(t)^2)``.
    """

    def __init__(self, weights, means, stds):
        super().__init__()
        self.log_w = torch.log(torch.tensor(weights, dtype=torch.float64))
        self.mu = torch.tensor(means, dtype=torch.float64)
        self.s = torch.tensor(stds, dtype=torch.float64)

    def _components(self, tau, sigma):
        return tau[:, None] - self.mu, torch.sqrt(self.s**2 + sigma[:, None] ** 2)

    def unnormalised_log_density(self, tau, t: float) -> torch.Tensor:
        sigma = self.tor_schedule.sigma(torch.full_like(tau, t))
        x, std = self._components(tau, sigma)
        return torch.logsumexp(self.log_w + wrapped_normal_log_prob(x, std), -1)

    def sample(self, n: int, t: float, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        std = torch.sqrt(self.s[k] ** 2 + self.tor_schedule.sigma(torch.tensor(t, dtype=torch.float64)) ** 2)
        return self.mu[k] + std * torch.randn(n, generator=generator, dtype=torch.float64)

    def score_fn(self, model, batch, pos_ref, sde):
        tau_ref = dihedral_angles(pos_ref, batch.dihedral_index)
        tor_graph = batch.batch[batch.torsion_index[0]]

        def score(y, t):
            d, e = sde.space.split(y)
            x, std = self._components(tau_ref + d, self.tor_schedule.sigma(t)[tor_graph])
            resp = torch.softmax(self.log_w + wrapped_normal_log_prob(x, std), -1)
            tor = (resp * wrapped_normal_score(x, std)).sum(-1)
            pos = -e / self.pos_schedule.sigma(t)[batch.batch, None] ** 2
            return sde.space.join([tor, pos])

        return score


T_MIN = 1e-5  # the likelihood's data time (the core's default)


def butane_at(taus: torch.Tensor) -> Chem.Mol:
    """Butane with one conformer per central dihedral angle in ``taus``, local structure shared."""
    mol = embedded("CCCC", 1)
    graph = featurize(mol)
    assert graph.num_torsions == 1
    pos = torch.as_tensor(mol.GetConformer().GetPositions())
    tau0 = dihedral_angles(pos, graph.dihedral_index)
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for tau in taus.tolist():
        conf = Chem.Conformer(mol.GetNumAtoms())
        conf.SetPositions(apply_torsion_changes(pos, graph, torch.tensor([tau]) - tau0).numpy())
        out.AddConformer(conf, assignId=True)
    return out


def coordinate_log_density(oracle: ConformerDiffusion, num_atoms: int) -> float:
    """``log N(0; 0, sigma_pos(t_min)^2 I)`` on the ``3N - 3`` dimensional zero-CoM subspace."""
    sigma = float(oracle.pos_schedule.sigma(torch.tensor(T_MIN, dtype=torch.float64)))
    return -0.5 * (3 * num_atoms - 3) * math.log(2 * math.pi * sigma**2)


def oracle():
    return MixtureOracle([3.0, 1.0, 1.5], [math.pi, -1.1, 1.0], [0.35, 0.3, 0.5])


def test_likelihood_matches_the_exact_torsion_density_on_a_grid():
    truth = oracle()
    grid = torch.linspace(-math.pi, math.pi, 4097, dtype=torch.float64)[:-1]
    log_z = torch.logsumexp(truth.unnormalised_log_density(grid, T_MIN), 0) + math.log(2 * math.pi / grid.numel())
    taus = torch.linspace(-math.pi, math.pi, 13, dtype=torch.float64)[:-1] + 0.1
    mol = butane_at(taus)
    log_p = torch.tensor(likelihood(mol, (None, truth), divergence="exact"), dtype=torch.float64)
    torsion_part = log_p - coordinate_log_density(truth, mol.GetNumAtoms())
    exact = truth.unnormalised_log_density(taus, T_MIN) - log_z
    assert exact.max() - exact.min() > 3.0  # a density that varies, not a flat one
    torch.testing.assert_close(torsion_part, exact, rtol=0, atol=0.05)


def test_hutchinson_probes_are_shared_so_differences_match_exact():
    truth = oracle()
    mol = butane_at(torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64))
    exact = np.array(likelihood(mol, (None, truth), divergence="exact", atol=1e-4))
    hutch = np.array(likelihood(mol, (None, truth), divergence="hutchinson", atol=1e-4,
                                generator=torch.Generator().manual_seed(3)))
    # the coordinate Jacobian is isotropic: one shared probe error, the same for every conformer, so
    # differences agree to the ODE error (independent probes would differ by ~9 nats / sqrt(8) each)
    assert abs(hutch[0] - exact[0]) > 0.1
    np.testing.assert_allclose(hutch - hutch[0], exact - exact[0], rtol=0, atol=1e-2)
    # and a conformer's value does not depend on the rest of the batch
    alone = likelihood(mol, (None, truth), divergence="exact", atol=1e-4, conf_ids=[1])
    assert alone[0] == pytest.approx(exact[1], abs=1e-6)


# ---------------------------------------------------------------------------------------- full mode
def test_full_mode_log_likelihood_is_invariant_and_the_control_is_not():
    """A random network's coordinate field can pull two atoms onto each other (a singular attractor
    that stalls the solver, unlike a trained one's); its read-outs are scaled down tenfold more."""
    diffusion = ConformerDiffusion(ConformerDiffusionConfig(full_fraction=1.0))
    mol = with_moved_copies(embedded("OCCO", 2), torch.Generator().manual_seed(1))
    network = tiny_model()
    with torch.no_grad():
        for layer in (network.pos_edge_out, network.pos_linear):
            for p in layer.parameters():
                p.mul_(0.1)
    log_p = np.array(likelihood(mol, (network, diffusion), mode="full", divergence="exact", **LOOSE,
                                **INPUT_FRAME))
    assert np.all(np.isfinite(log_p)) and abs(log_p[0] - log_p[1]) > 1e-2
    np.testing.assert_allclose(log_p[2:], log_p[:2], rtol=0, atol=1e-4)
    control = np.array(likelihood(mol, (AbsoluteCoordinateScore(network), diffusion), mode="full",
                                  divergence="exact", **LOOSE, **INPUT_FRAME))
    assert np.max(np.abs(control[2:] - control[:2])) > 1e-2


def test_full_mode_likelihood_is_the_exact_gaussian_density():
    """log p of the centred conformer on V against the closed form. For Gaussian data the PF-ODE is
    linear, ``x_1 = mu + (x - mu) r`` with ``r = ((s^2 + sigma_max^2) / (s^2 + sigma_min^2))^(1/2)``, so
    the value is exactly ``log p_min(x) - log p_1(x_1) + log pi(x_1)`` (the prior stands in for p_1)."""
    diffusion = ConformerDiffusion(ConformerDiffusionConfig(full_fraction=1.0, sigma_full_max=10.0))
    mol = embedded("OCCO", 1)
    mu, s = torch.as_tensor(mol.GetConformer().GetPositions()), 0.3
    mu = mu - mu.mean(0)
    gen = torch.Generator().manual_seed(0)
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    shift = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)  # translations are removed
    for scale in (0.0, 0.2, 0.5):
        conf = Chem.Conformer(mol.GetNumAtoms())
        conf.SetPositions((mu + shift + scale * torch.randn(mu.shape, generator=gen, dtype=torch.float64)).numpy())
        out.AddConformer(conf, assignId=True)
    # the oracle's density is not rotation-invariant (a fixed mean mu): score the input frame
    log_p = torch.tensor(likelihood(out, (GaussianConformer(mu, s), diffusion), mode="full", divergence="exact",
                                    align=False), dtype=torch.float64)

    def log_normal(x, mean, var):  # on the (3N - 3)-dimensional zero-CoM subspace
        return -0.5 * (3 * len(x) - 3) * math.log(2 * math.pi * var) - 0.5 * float(((x - mean) ** 2).sum()) / var

    sigma_min, sigma_max = (float(diffusion.full_schedule.sigma(torch.tensor(t, dtype=torch.float64)))
                            for t in (T_MIN, 1.0))
    var_min, var_max = s**2 + sigma_min**2, s**2 + sigma_max**2
    exact = []
    for conf in out.GetConformers():
        x = torch.as_tensor(conf.GetPositions())
        x = x - x.mean(0)
        x_1 = mu + (x - mu) * math.sqrt(var_max / var_min)
        exact.append(log_normal(x, mu, var_min) - log_normal(x_1, mu, var_max) + log_normal(x_1, 0.0, sigma_max**2))
    assert exact[0] - exact[2] > 10.0
    torch.testing.assert_close(log_p, torch.tensor(exact, dtype=torch.float64), rtol=0, atol=0.01)


# ---------------------------------------------------------------------------------------- Boltzmann
def torsion_energy(tau: torch.Tensor) -> torch.Tensor:
    """A butane-like torsional potential in kcal/mol: anti minimum at pi, gauche at +-pi/3."""
    return 1.4 * (1 + torch.cos(3 * tau)) + 0.9 * (1 + torch.cos(tau))


def test_boltzmann_reweighting_recovers_the_grid_expectation():
    truth = oracle()
    kt = BOLTZMANN_KCAL * 298.15
    grid = torch.linspace(-math.pi, math.pi, 3601, dtype=torch.float64)[:-1]
    boltzmann = torch.softmax(-torsion_energy(grid) / kt, 0)
    expected = float((boltzmann * torch.cos(grid)).sum())

    taus = truth.sample(300, T_MIN, torch.Generator().manual_seed(5))
    mol = butane_at(taus)
    # Hutchinson: here its probe error is the same for every conformer and cancels in the weights
    log_p = likelihood(mol, (None, truth), divergence="hutchinson")
    tau_conf = torch.tensor([float(dihedral_angles(torch.as_tensor(c.GetPositions()),
                                                   featurize(mol).dihedral_index)[0]) for c in mol.GetConformers()])
    w = boltzmann_importance_weights(log_p, torsion_energy(tau_conf).tolist())
    f = torch.cos(tau_conf).numpy()
    estimate = float(w @ f)
    stderr = math.sqrt(float(np.sum(w**2 * (f - estimate) ** 2)))
    assert abs(estimate - expected) < 3 * stderr
    assert abs(f.mean() - expected) > 10 * stderr  # without the weights the estimate is far off
    # the ODE's likelihoods give the weights of the exact density
    exact = boltzmann_importance_weights(truth.unnormalised_log_density(tau_conf.double(), T_MIN).tolist(),
                                         torsion_energy(tau_conf).tolist())
    np.testing.assert_allclose(w, exact, rtol=0.05, atol=0)


def test_boltzmann_weights_are_normalised_boltzmann_over_model_density():
    w = boltzmann_importance_weights([-1.0, -1.0, math.log(2.0)], [0.0, 1.0, 0.0], temperature=300.0)
    kt = BOLTZMANN_KCAL * 300.0
    raw = np.array([math.e, math.e * math.exp(-1.0 / kt), 0.5])
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        boltzmann_importance_weights([0.0], [0.0], temperature=0.0)
    with pytest.raises(ValueError, match="shapes"):
        boltzmann_importance_weights([0.0, 1.0], [0.0])
