"""The torsion polish: descent on exact quadratics, monotone energies, conformers independent of their
batch, MMFF94 energies lowered with bond lengths and angles kept, and the generator's option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch_geometric.data import Batch

from confdiff.chem.featurize import featurize
from confdiff.conformers.diffusion import ConformerDiffusion
from confdiff.conformers.generator import ConformerGenerator
from confdiff.conformers.physics import BatchPotential, MMFFPotential
from confdiff.conformers.polish import torsion_descent

from .test_physics import tiny_model


def quadratic_problem(num_graphs: int = 3, per_graph: int = 4, seed: int = 0):
    """Torsions mapped one to one onto atoms' x coordinates, ``E_g = sum_i k_i (x_i - c_i)^2 / 2`` per graph
    with stiffnesses spanning two decades (an ill-conditioned bowl)."""
    gen = torch.Generator().manual_seed(seed)
    graph = torch.arange(num_graphs).repeat_interleave(per_graph)
    k = 10 ** (2 * torch.rand(graph.numel(), generator=gen, dtype=torch.float64))  # 1 .. 100 kcal/mol/rad^2
    centre = torch.randn(graph.numel(), generator=gen, dtype=torch.float64)

    def positions(d):
        return torch.stack([d, torch.zeros_like(d), torch.zeros_like(d)], dim=1)

    def potential(x):
        dx = x[:, 0] - centre
        energy = torch.zeros(num_graphs, dtype=x.dtype).index_add_(0, graph, 0.5 * k * dx**2)
        grad = torch.zeros_like(x)
        grad[:, 0] = k * dx
        return energy, grad

    return graph, centre, positions, potential


def test_descent_reaches_the_minimum_of_an_ill_conditioned_quadratic():
    graph, centre, positions, potential = quadratic_problem()
    d0 = torch.zeros_like(centre)
    d, energy = torsion_descent(d0, positions, potential, graph, 3, steps=200, max_step=10.0)
    np.testing.assert_allclose(d.numpy(), centre.numpy(), atol=1e-4)
    assert energy.max().item() < 1e-6
    torch.testing.assert_close(energy, potential(positions(d))[0])  # the energies returned are those at d


def test_energies_never_rise_and_zero_steps_change_nothing():
    graph, centre, positions, potential = quadratic_problem(seed=1)
    d0 = 3 * torch.randn(centre.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    previous = potential(positions(d0))[0]
    d, energy = torsion_descent(d0, positions, potential, graph, 3, steps=0)
    assert torch.equal(d, d0) and torch.equal(energy, previous)
    for steps in range(1, 15):
        _, energy = torsion_descent(d0, positions, potential, graph, 3, steps=steps, max_step=0.3)
        assert (energy <= previous).all()
        previous = energy
    d, _ = torsion_descent(d0, positions, potential, graph, 3, steps=5, max_step=0.3)
    assert (d - d0).abs().max().item() <= 5 * 0.3 + 1e-12  # every step moves a torsion by at most max_step


def test_each_conformer_descends_as_it_would_alone():
    graph, centre, positions, potential = quadratic_problem(num_graphs=3, per_graph=4, seed=3)
    d0 = torch.randn(centre.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    together, _ = torsion_descent(d0, positions, potential, graph, 3, steps=7)
    mask = graph == 1

    def potential_alone(x):  # graph 1's bowl only
        energy, grad = potential(torch.zeros(graph.numel(), 3, dtype=x.dtype).index_copy(0, mask.nonzero()[:, 0], x))
        return energy[1:2], grad[mask]

    alone, _ = torsion_descent(d0[mask], positions, potential_alone, torch.zeros(4, dtype=torch.long), 1, steps=7)
    torch.testing.assert_close(together[mask], alone)


def test_mmff_energies_fall_and_bonds_and_angles_stay():
    smiles = ["CCOC(=O)c1ccccc1NC(=O)CCN(C)C", "CC(C)Cc1ccc(C(C)C(=O)O)cc1"]
    mols, graphs, seeds = [], [], []
    for i, smi in enumerate(smiles):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        params = AllChem.ETKDGv3()
        params.randomSeed = i
        AllChem.EmbedMolecule(mol, params)
        AllChem.MMFFOptimizeMolecule(mol)
        mols.append(mol)
        graphs += [featurize(mol)] * 3
        seeds += [torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)] * 3
    batch = Batch.from_data_list(graphs)
    pos_ref = torch.cat(seeds)
    diffusion = ConformerDiffusion()
    sde = diffusion.sde(batch, "torsions")
    d0 = 2 * torch.pi * torch.rand(sde.space.numel, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def positions(d):
        return diffusion.positions(sde, batch, pos_ref, d)

    potential = BatchPotential([(MMFFPotential.from_mol(mol), 3) for mol in mols])
    before = potential(positions(d0))[0]
    d, energy = torsion_descent(d0, positions, potential, batch.batch[batch.torsion_index[0]], batch.num_graphs, 30)
    assert (energy <= before).all() and (energy < before - 1.0).sum() >= 4  # random torsions: strained
    after = positions(d)
    # torsion changes only: every distance of bonded and 1-3 pairs is the seed's
    for start, mol in zip(batch.ptr[:-1:3].tolist(), mols):
        dist = Chem.GetDistanceMatrix(mol)
        pairs = torch.tensor(np.argwhere((dist > 0) & (dist <= 2)))
        for k in range(3):
            rows = start + k * mol.GetNumAtoms() + pairs
            torch.testing.assert_close((after[rows[:, 0]] - after[rows[:, 1]]).norm(dim=1),
                                       (pos_ref[rows[:, 0]] - pos_ref[rows[:, 1]]).norm(dim=1))


def test_generator_polishes_the_torsions_mode_only():
    model = tiny_model()
    smiles = "CCOC(=O)c1ccccc1NC(=O)CCN(C)C"
    options = dict(device="cpu", steps=6, mode="torsions", guidance="mmff", oversample=1, validity_gate=False)
    plain = ConformerGenerator(model, **options).generate(smiles, n=6, seed=0)  # off by default
    polished = ConformerGenerator(model, polish_steps=30, **options).generate(smiles, n=6, seed=0)
    potential = MMFFPotential.from_mol(plain)

    def energies(mol):
        pos = torch.tensor(np.stack([c.GetPositions() for c in mol.GetConformers()]))
        return potential.energy_and_grad(pos)[0]

    assert (energies(polished) <= energies(plain) + 1e-3).all()  # float32 coordinates
    assert energies(polished).sum() < energies(plain).sum() - 1.0
    with pytest.raises(ValueError, match="needs mode='torsions'"):
        ConformerGenerator(model, device="cpu", mode="refine", polish_steps=5)
    with pytest.raises(ValueError, match="polish_steps must be >= 0"):
        ConformerGenerator(model, device="cpu", polish_steps=-1)
    assert ConformerGenerator(model, device="cpu").polish_steps == 0


def test_keep_unpolished_chooses_from_both_versions_of_every_draw():
    model = tiny_model()
    smiles = "CCOC(=O)c1ccccc1NC(=O)CCN(C)C"
    options = dict(device="cpu", steps=6, mode="torsions", guidance="mmff", validity_gate=False)
    # the same 12 draws (the noise of draw i depends on (seed, i) only), as drawn and as polished
    drawn = ConformerGenerator(model, oversample=1, **options).generate(smiles, n=12, seed=0)
    polished = ConformerGenerator(model, oversample=1, polish_steps=30, **options).generate(smiles, n=12, seed=0)
    lowest = ConformerGenerator(model, oversample=2, selection="energy", polish_steps=30, keep_unpolished=True,
                                **options).generate(smiles, n=6, seed=0)
    potential = MMFFPotential.from_mol(drawn)
    pool = {(c.GetIntProp("conformer_index"), flag): c.GetPositions()
            for flag, mol in ((0, drawn), (1, polished)) for c in mol.GetConformers()}
    energy = dict(zip(pool, potential.energy_and_grad(torch.tensor(np.stack(list(pool.values()))))[0].tolist()))
    chosen = [(c.GetIntProp("conformer_index"), c.GetIntProp("polished")) for c in lowest.GetConformers()]
    assert chosen == sorted(sorted(pool, key=energy.get)[:6])  # the 6 lowest of the 24 versions
    for c, key in zip(lowest.GetConformers(), chosen):
        np.testing.assert_allclose(c.GetPositions(), pool[key], atol=1e-4)
    # without the polish the option changes nothing
    plain = ConformerGenerator(model, oversample=2, **options).generate(smiles, n=6, seed=0)
    kept = ConformerGenerator(model, oversample=2, keep_unpolished=True, **options).generate(smiles, n=6, seed=0)
    assert not kept.GetConformer(0).HasProp("polished")
    for a, b in zip(plain.GetConformers(), kept.GetConformers()):
        np.testing.assert_array_equal(a.GetPositions(), b.GetPositions())


def test_a_batch_without_torsions_keeps_its_energies():
    def positions(d):
        return torch.ones(2, 3, dtype=torch.float64)

    def potential(x):
        return torch.tensor([1.5]), torch.zeros_like(x)

    d, energy = torsion_descent(torch.zeros(0, dtype=torch.float64), positions, potential,
                                torch.zeros(0, dtype=torch.long), 1, steps=5)
    assert d.numel() == 0 and energy.tolist() == [1.5]
