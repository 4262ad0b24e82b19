"""ConformerGenerator and generate(): atom order, stereochemistry, seeds, batching, relaxation, bad input.

An untrained tiny ScoreModel is enough here: torsion moves are rigid rotations and the coordinate
noise is small, so the conformers are valid geometry whatever the weights (mechanics, not quality).
"""

import shutil
import warnings

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

import confdiff
from confdiff.chem.featurize import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
from confdiff.conformers.diffusion import ConformerDiffusion, ConformerDiffusionConfig
from confdiff.chem.embed import embed_etkdg
from confdiff.chem.ensembles import farthest_point_conformers
from confdiff.chem.relax import relax_mmff
from confdiff.conformers.generator import (
    DIVERSE_FRACTION,
    SEED_MMFF_ITERS,
    ConformerGenerator,
    GenerationError,
    load_model,
)
from confdiff.chem.stereo import StereoCheck, stereo_smiles
from confdiff.chem.validity import ValidityChecker
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig
from tests.conformers.oracles import GaussianConformer

STEREO_SMILES = "C[C@H](N)C(=O)N[C@@H](Cc1ccccc1)/C=C/CC"  # two stereocentres and an E double bond
STEPS = 3


def tiny_model() -> tuple[ScoreModel, ConformerDiffusion]:
    torch.manual_seed(0)
    config = ScoreModelConfig(node_feature_dim=ATOM_FEATURE_DIM, edge_feature_dim=BOND_FEATURE_DIM,
                              num_scalars=8, num_vectors=2, num_layers=2)
    # small coordinate noise: an untrained model then only moves atoms by hundredths of an Angstrom
    return ScoreModel(config).eval(), ConformerDiffusion(ConformerDiffusionConfig(sigma_pos_min=0.001, sigma_pos_max=0.01))


def save_tiny_model(path) -> str:
    """The release format ``load_model`` reads, with a tiny random model."""
    model, diffusion = tiny_model()
    torch.save({"kind": "conformer_score_model",
                "model_config": {"model": model.config.to_dict(), "diffusion": diffusion.config.to_dict()},
                "ema": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def generator(model):
    return ConformerGenerator(model, device="cpu", steps=STEPS)


def stereo_from_3d(mol: Chem.Mol, conf_id: int) -> str:
    """Canonical isomeric SMILES with every configuration read from conformer ``conf_id``."""
    probe = Chem.Mol(mol, confId=conf_id)
    Chem.AssignStereochemistryFrom3D(probe, replaceExistingTags=True)
    return Chem.MolToSmiles(Chem.RemoveHs(probe))


def graph_of(mol: Chem.Mol) -> tuple[list[str], set[tuple[int, int, float]]]:
    return ([a.GetSymbol() for a in mol.GetAtoms()],
            {(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondTypeAsDouble()) for b in mol.GetBonds()})


def positions(mol: Chem.Mol) -> np.ndarray:
    return np.stack([c.GetPositions() for c in mol.GetConformers()])


def by_draw(mol: Chem.Mol) -> dict[int, np.ndarray]:
    """``{conformer_index: (N, 3)}``, in the conformers' order."""
    return {c.GetIntProp("conformer_index"): c.GetPositions() for c in mol.GetConformers()}


# --- stereochemistry -------------------------------------------------------------------------------

def test_every_conformer_keeps_the_input_stereochemistry(generator):
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(STEREO_SMILES))
    mol = generator.generate(STEREO_SMILES, n=30, seed=1)
    assert mol.GetNumConformers() == 30
    assert all(stereo_from_3d(mol, c.GetId()) == expected for c in mol.GetConformers())
    z_isomer = STEREO_SMILES.replace("/C=C/", "/C=C\\")
    mol = generator.generate(z_isomer, n=10, seed=1)
    assert {stereo_from_3d(mol, c.GetId()) for c in mol.GetConformers()} == {Chem.MolToSmiles(Chem.MolFromSmiles(z_isomer))}


@pytest.mark.parametrize("smiles", [STEREO_SMILES, "C[S@@](=O)CC[C@](F)(Cl)Br", "C[C@@H]1CC[C@H](O)CC1",
                                    "F/C=C\\C=C/C", "C1CCCCCC/C=C/CCC1"])
def test_stereo_check_agrees_with_rdkit(smiles):
    """Signs from tags equal the signs of ETKDG conformers; a mirror image flips every centre."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    check = StereoCheck.from_mol(mol)
    ids = AllChem.EmbedMultipleConfs(mol, 4, randomSeed=0)
    pos = np.stack([mol.GetConformer(c).GetPositions() for c in ids])
    assert check.num_specified == len(check.expected) > 0
    assert check.matches_input(pos).all()
    num_centres = len(check.centres)
    mirrored = check.signs(pos * np.array([-1.0, 1.0, 1.0]))
    assert (mirrored[:, :num_centres] == -check.expected[:num_centres]).all()
    assert (mirrored[:, num_centres:] == check.expected[num_centres:]).all()  # cis stays cis
    assert check.matches_input(pos * np.array([-1.0, 1.0, 1.0])).all() == (num_centres == 0)


def test_stereo_check_sees_a_swapped_double_bond():
    e_mol = Chem.AddHs(Chem.MolFromSmiles("F/C=C/Cl"))
    z_mol = Chem.AddHs(Chem.MolFromSmiles("F/C=C\\Cl"))
    AllChem.EmbedMolecule(z_mol, randomSeed=0)
    assert not StereoCheck.from_mol(e_mol).matches_input(z_mol.GetConformer().GetPositions()[None]).any()


def test_collapsed_atoms_count_as_flat_without_warnings():
    mol = Chem.AddHs(Chem.MolFromSmiles("F/C=C/[C@H](Cl)O"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    pos = mol.GetConformer().GetPositions()[None].copy()
    pos[0, 2] = pos[0, 1]  # the two double-bond carbons on top of each other
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signs = StereoCheck.from_mol(mol).signs(pos)
    assert signs[0, -1] == 0  # the double bond is flat, the centre still has a sign
    assert not StereoCheck.from_mol(mol).matches_input(pos).any()


class _ScramblingModel(torch.nn.Module):
    """Zero torsion scores and huge position scores: the coordinate part then scrambles the atoms."""

    def forward(self, batch):
        g = torch.Generator().manual_seed(0)
        pos_score = 1e4 * torch.randn(batch.pos.shape, generator=g)
        return batch.pos.new_zeros(batch.torsion_index.shape[1]), pos_score - pos_score.mean(0)


def test_a_conformer_that_breaks_the_stereochemistry_is_fixed():
    scrambler = ConformerGenerator((_ScramblingModel(), ConformerDiffusion()), device="cpu", steps=2)
    result = next(scrambler.generate_many([STEREO_SMILES], n=6, seed=0))
    assert result.ok and result.mol.GetNumConformers() == 6 and not result.warnings
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(STEREO_SMILES))
    assert all(stereo_from_3d(result.mol, c.GetId()) == expected for c in result.mol.GetConformers())


# --- atom order, properties, seeds, batching -------------------------------------------------------

def test_input_atom_order_is_kept(generator):
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(OCC)cc1Cl"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    order = list(np.random.default_rng(0).permutation(mol.GetNumAtoms()))
    shuffled = Chem.RenumberAtoms(mol, [int(i) for i in order])
    out = generator.generate(shuffled, n=3, seed=0)
    assert graph_of(out) == graph_of(shuffled)
    heavy = Chem.MolFromSmiles("OCc1ccncc1")  # no hydrogens: they are appended after the input's atoms
    out = generator.generate(heavy, n=2, seed=0)
    symbols, bonds = graph_of(out)
    assert symbols[: heavy.GetNumAtoms()] == graph_of(heavy)[0] and set(symbols[heavy.GetNumAtoms():]) == {"H"}
    assert graph_of(heavy)[1] <= bonds


def test_conformer_properties(generator):
    mol = generator.generate("CCOc1ccccc1C(N)=O", n=4, seed=7)
    indices = [c.GetIntProp("conformer_index") for c in mol.GetConformers()]
    assert len(indices) == 4 and indices == sorted(set(indices))  # the draws' indices; the gate may skip some
    assert {c.GetIntProp("seed") for c in mol.GetConformers()} == {7}
    assert mol.GetProp("_Name") == "CCOc1ccccc1C(N)=O"


def test_conformer_i_does_not_depend_on_batching_or_n(model):
    # without guidance, to 1e-4 A; guided runs amplify float32 rounding (tests/test_physics.py)
    small = ConformerGenerator(model, device="cpu", steps=STEPS, max_atoms_per_batch=60, guidance="none")
    large = ConformerGenerator(model, device="cpu", steps=STEPS, max_atoms_per_batch=100000, guidance="none")
    a = positions(small.generate(STEREO_SMILES, n=8, seed=3))
    b = by_draw(large.generate(STEREO_SMILES, n=8, seed=3))
    c = by_draw(large.generate(STEREO_SMILES, n=3, seed=3))
    d = positions(large.generate(STEREO_SMILES, n=3, seed=4))
    np.testing.assert_allclose(a, np.stack(list(b.values())), atol=1e-4)
    common = sorted(b.keys() & c.keys())  # oversampling selects different draws for another n
    assert common
    for i in common:
        np.testing.assert_allclose(b[i], c[i], atol=1e-4)
    b, c = np.stack(list(b.values())), np.stack(list(c.values()))
    assert np.abs(c - d).max() > 0.1
    assert np.abs(b[0] - b[1]).max() > 0.1  # conformers differ from each other


def test_several_molecules_share_one_batch(model, monkeypatch):
    smiles = ["CCOc1ccccc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "OCCN1CCOCC1"]
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, max_atoms_per_batch=100000)
    alone = [positions(gen.generate(s, n=4, seed=5)) for s in smiles]
    calls = []
    sample = gen._sample
    monkeypatch.setattr(gen, "_sample", lambda jobs, *a: calls.append(len(jobs)) or sample(jobs, *a))
    together = [r.mol for r in gen.generate_many(smiles, n=4, seed=5)]
    assert calls == [3]
    for pos, mol in zip(alone, together):
        np.testing.assert_allclose(pos, positions(mol), atol=1e-4)


# --- seed structures -------------------------------------------------------------------------------

def _bond_lengths(mol: Chem.Mol, conf_id: int) -> np.ndarray:
    x = mol.GetConformer(conf_id).GetPositions()
    return np.array([np.linalg.norm(x[b.GetBeginAtomIdx()] - x[b.GetEndAtomIdx()]) for b in mol.GetBonds()])


@pytest.mark.parametrize("seed_relax", ["mmff", "none"])
@pytest.mark.parametrize("small_ring_torsions", [False, True])
def test_seeds_are_mmff_minima_unless_asked_otherwise(model, seed_relax, small_ring_torsions):
    # the torsions mode keeps each seed's bond lengths exactly: conformer 0 shows seed 0's, embedded
    # with or without the small-ring torsion terms as asked (the cyclohexane's bonds tell them apart)
    smiles, seed = "CCCCOC(=O)NC1CCCCC1", 11
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, mode="torsions", seed_relax=seed_relax,
                             small_ring_torsions=small_ring_torsions)
    out = gen.generate(smiles, n=2, seed=seed)
    embedded = embed_etkdg(Chem.MolFromSmiles(smiles), 1, seed=seed, small_ring_torsions=small_ring_torsions)
    other = embed_etkdg(Chem.MolFromSmiles(smiles), 1, seed=seed, small_ring_torsions=not small_ring_torsions)
    other_lengths = _bond_lengths(other.mol, other.conf_ids[0])
    assert np.abs(other_lengths - _bond_lengths(embedded.mol, embedded.conf_ids[0])).max() > 1e-3
    raw = _bond_lengths(embedded.mol, embedded.conf_ids[0])
    relax_mmff(embedded.mol, list(embedded.conf_ids), max_iters=SEED_MMFF_ITERS)
    minimised = _bond_lengths(embedded.mol, embedded.conf_ids[0])
    assert np.abs(minimised - raw).max() > 1e-2
    expected = minimised if seed_relax == "mmff" else raw
    np.testing.assert_allclose(_bond_lengths(out, out.GetConformers()[0].GetId()), expected, atol=1e-4)


def _seed_groups(mol: Chem.Mol) -> dict[tuple, set[int]]:
    """Conformer indices by their bond lengths: in the torsions mode, the seed each conformer came from."""
    groups: dict[tuple, set[int]] = {}
    for conf in mol.GetConformers():
        key = tuple(np.round(_bond_lengths(mol, conf.GetId()), 4))
        groups.setdefault(key, set()).add(conf.GetIntProp("conformer_index"))
    return groups


def test_a_molecule_with_a_flexible_ring_gets_more_seeds(model):
    # its ring puckers come only from the seeds: one seed per ring_conformers_per_seed (5) draws, else 10
    def groups(smiles: str, **options) -> list[set[int]]:
        gen = ConformerGenerator(model, device="cpu", steps=STEPS, mode="torsions", oversample=1, **options)
        return sorted(_seed_groups(gen.generate(smiles, n=10, seed=5)).values(), key=min)

    ring = "CC(=O)NC1CCCCC1"  # a cyclohexane: 2 seeds for 10 draws, draws 0-4 and 5-9
    assert [sorted(i % 10 // 5 for i in g) for g in groups(ring)] == [[0] * 5, [1] * 5]
    assert len(groups(ring, ring_conformers_per_seed=None)) == 1  # as conformers_per_seed (10)
    assert len(groups(ring, conformers_per_seed=5, ring_conformers_per_seed=10)) == 1
    assert len(groups("CC(=O)NCc1ccccc1")) == 1  # an aromatic ring only: 10 draws per seed
    with pytest.raises(ValueError, match="ring_conformers_per_seed must be >= 1"):
        ConformerGenerator(model, device="cpu", ring_conformers_per_seed=0)


def test_a_molecule_without_mmff_parameters_keeps_its_embedded_seeds(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS)
    with pytest.warns(UserWarning, match="MMFF94 has no parameters.*seed structures are used as embedded"):
        mol = gen.generate("OB(O)c1ccccc1", n=2, seed=0)
    assert mol.GetNumConformers() == 2
    with pytest.raises(ValueError, match="seed_relax must be one of"):
        ConformerGenerator(model, device="cpu", seed_relax="uff")


def test_a_seed_whose_mmff_minimum_fails_a_local_check_keeps_its_embedded_structure(model):
    # etidronate: MMFF94 opens the P-C-P angle beyond the distance-geometry bounds, which the torsions
    # mode cannot change; the embedded seed passes, so the conformers keep its bond lengths and angles
    smiles, seed = "CC(O)(P(=O)([O-])[O-])P(=O)([O-])[O-]", 0
    checker = ValidityChecker.from_mol(Chem.AddHs(Chem.MolFromSmiles(smiles)))
    embedded = embed_etkdg(Chem.MolFromSmiles(smiles), 1, seed=seed)
    raw = embedded.mol.GetConformer(embedded.conf_ids[0]).GetPositions()[None]
    raw_bonds = _bond_lengths(embedded.mol, embedded.conf_ids[0])
    relax_mmff(embedded.mol, list(embedded.conf_ids), max_iters=SEED_MMFF_ITERS)
    minimised = embedded.mol.GetConformer(embedded.conf_ids[0]).GetPositions()[None]
    assert checker.check(raw)["bond_angles"].all() and not checker.check(minimised)["bond_angles"].any()
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, mode="torsions")
    result = next(gen.generate_many([smiles], 4, seed=seed))  # 8 draws from one seed
    assert result.ok and result.mol.GetNumConformers() == 4
    assert any("their embedded structures are used" in note for note in result.warnings)
    assert checker.passes(positions(result.mol)).all()
    for conf in result.mol.GetConformers():
        np.testing.assert_allclose(_bond_lengths(result.mol, conf.GetId()), raw_bonds, atol=1e-4)


# --- oversampling -----------------------------------------------------------------------------------

def _mmff_energies(mol: Chem.Mol) -> dict[int, float]:
    """MMFF94 energy of every conformer as it is, by ``conformer_index``."""
    props = AllChem.MMFFGetMoleculeProperties(mol)
    return {c.GetIntProp("conformer_index"): AllChem.MMFFGetMoleculeForceField(mol, props, confId=c.GetId()).CalcEnergy()
            for c in mol.GetConformers()}


def test_oversampling_keeps_the_draws_lowest_in_mmff_energy(model):
    smiles = "CCCCOc1ccccc1C(=O)NC"
    options = {"device": "cpu", "steps": STEPS, "validity_gate": False}  # every draw usable
    every = ConformerGenerator(model, oversample=1, **options).generate(smiles, n=9, seed=3)
    energies = _mmff_energies(every)
    assert sorted(energies) == list(range(9))
    ranked = ConformerGenerator(model, oversample=1.5, selection="energy", **options).generate(smiles, n=6, seed=3)
    lowest = sorted(sorted(energies, key=energies.get)[:6])
    assert [c.GetIntProp("conformer_index") for c in ranked.GetConformers()] == lowest  # in draw order
    for conf in ranked.GetConformers():  # the same draws, unchanged
        np.testing.assert_allclose(conf.GetPositions(),
                                   every.GetConformer(conf.GetIntProp("conformer_index")).GetPositions(), atol=1e-6)
    assert max(energies[i] for i in lowest) <= min(energies[i] for i in set(energies) - set(lowest))
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match="oversample must be >= 1"):
            ConformerGenerator(model, device="cpu", oversample=bad)
    with pytest.raises(ValueError, match="selection must be one of"):
        ConformerGenerator(model, device="cpu", selection="random")


def test_diverse_selection_is_farthest_point_among_the_lowest_in_energy(model):
    smiles = "CCCCOc1ccccc1C(=O)NC"
    options = {"device": "cpu", "steps": STEPS, "validity_gate": False}
    every = ConformerGenerator(model, oversample=1, **options).generate(smiles, n=12, seed=4)
    energies = _mmff_energies(every)
    chooser = ConformerGenerator(model, oversample=2, **options)  # selection="diverse"
    assert chooser.diverse_fraction == DIVERSE_FRACTION == 0.75
    candidates = sorted(energies, key=energies.get)[:9]  # the lowest 75 % of the 12 draws
    pool = Chem.Mol(every)
    pool.RemoveAllConformers()
    for i in candidates:
        pool.AddConformer(Chem.Conformer(every.GetConformer(i)), assignId=True)
    expected = sorted(candidates[k] for k in farthest_point_conformers(pool, 6))
    chosen = chooser.generate(smiles, n=6, seed=4)
    assert [c.GetIntProp("conformer_index") for c in chosen.GetConformers()] == expected
    assert candidates[0] in expected  # the lowest is always kept


def test_oversampling_ranks_a_molecule_without_mmff_parameters_by_the_repulsion_term(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, guidance="none", oversample=2)
    with pytest.warns(UserWarning, match="MMFF94 has no parameters.*the repulsion term stands in for it"):
        mol = gen.generate("OB(O)c1ccccc1", n=3, seed=0)
    assert mol.GetNumConformers() == 3


# --- relaxation and pruning ------------------------------------------------------------------------

def test_mmff_relaxation_energy_window_and_pruning(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, relax="mmff", energy_window=2.0, prune_rms=0.3)
    mol = gen.generate("CCCCOc1ccccc1C(=O)NC", n=10, seed=0)
    energies = [c.GetDoubleProp("energy") for c in mol.GetConformers()]
    assert 1 <= len(energies) <= 10 and max(energies) - min(energies) <= 2.0
    props = AllChem.MMFFGetMoleculeProperties(mol)
    for conf, energy in zip(mol.GetConformers(), energies):
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=conf.GetId())
        assert ff.CalcEnergy() == pytest.approx(energy, abs=1e-3)
        assert np.abs(ff.CalcGrad()).max() < 0.5  # a minimum
    heavy = Chem.RemoveHs(mol)
    ids = [c.GetId() for c in mol.GetConformers()]
    assert all(rdMolAlign.GetBestRMS(heavy, heavy, i, j) >= 0.3 for k, i in enumerate(ids) for j in ids[k + 1:])


@pytest.mark.skipif(shutil.which("xtb") is None, reason="needs the xtb executable")
def test_gfnff_energies(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, relax="gfnff")
    mol = gen.generate("CCO", n=2, seed=0)
    energies = [c.GetDoubleProp("energy") for c in mol.GetConformers()]
    assert len(energies) == 2 and all(-5000 < e < 0 for e in energies)  # kcal/mol, GFN-FF total energy


# --- bad input -------------------------------------------------------------------------------------

def test_bad_input_is_named_and_the_others_go_on(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS, max_atoms_per_batch=150)
    big = Chem.MolFromSequence("ACDEFGHIKLMN")  # 95 heavy atoms, 180 with hydrogens
    big.SetProp("_Name", "peptide")
    twin_a, twin_b = Chem.MolFromSmiles("CCO"), Chem.MolFromSmiles("CCN")
    twin_a.SetProp("_Name", "twin")
    twin_b.SetProp("_Name", "twin")
    inputs = {
        "invalid": "C1CC(",
        "bad valence": "C(C)(C)(C)(C)C",
        "empty": "",
        "no rotatable bond": "c1ccccc1",
        "macrocycle": "O=C1CCCCCCCCCCCCCCO1",
        "charged": "C[N+](C)(C)CC(=O)[O-]",
        "cation": "CC[NH3+]",
        "salt": "CC(=O)[O-].[Na+]",
        "metal complex": "N.N.Cl[Pt]Cl",
        "unknown element": "[Xe]",
        "dummy atom": "*CC",
        "very large": Chem.AddHs(big),
        "twin a": twin_a,
        "twin b": twin_b,
    }
    results = list(gen.generate_many(inputs.values(), n=3, seed=0))
    assert [r.index for r in results] == list(range(len(inputs)))
    by = dict(zip(inputs, results))
    for key in ("no rotatable bond", "macrocycle", "charged", "cation", "salt", "twin a", "twin b"):
        assert by[key].ok and by[key].mol.GetNumConformers() == 3, (key, by[key].error)
    assert by["invalid"].error.startswith("invalid SMILES") and by["invalid"].name == "C1CC("
    assert "valence" in by["bad valence"].error
    assert not by["empty"].ok and "no atoms" in by["empty"].error
    assert "Pt" in by["metal complex"].error and "Xe" in by["unknown element"].error
    assert "*" in by["dummy atom"].error
    assert by["very large"].name == "peptide" and "exceed max_atoms_per_batch=150" in by["very large"].error
    assert any("dropped [Na+]" in w for w in by["salt"].warnings)
    assert Chem.MolToSmiles(Chem.RemoveHs(by["salt"].mol)) == "CC(=O)[O-]"
    assert Chem.GetFormalCharge(by["charged"].mol) == 0 and Chem.GetFormalCharge(by["cation"].mol) == 1
    assert [by[k].mol.GetNumAtoms() for k in ("twin a", "twin b")] == [9, 10]  # same name, both kept


# --- the full-coordinate mode ---------------------------------------------------------------------

CHIRAL = "C[C@H](N)[C@@H](C)O"


def gaussian_oracle(smiles: str, s: float = 0.05) -> tuple[GaussianConformer, ConformerDiffusion]:
    """Data = one conformer of ``smiles`` (same atom order as CHIRAL) with ``s`` A of noise."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=3) == 0
    mu = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    return GaussianConformer(mu, s), ConformerDiffusion(ConformerDiffusionConfig(full_fraction=1.0, sigma_full_max=5.0))


def full_generator(model, **options) -> ConformerGenerator:
    """A full-mode generator of an oracle, without physics guidance (the oracle's own samples)."""
    return ConformerGenerator(model, **{"device": "cpu", "mode": "full", "steps": 50, "guidance": "none", "oversample": 1,
                                        **options})


def test_full_mode_samples_the_data_and_keeps_the_input_stereochemistry():
    oracle, diffusion = gaussian_oracle(CHIRAL)
    result = next(full_generator((oracle, diffusion)).generate_many(
        [CHIRAL], n=6, seed=0))
    assert result.ok and result.mol.GetNumConformers() == 6 and not result.warnings
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(CHIRAL))
    target = Chem.Mol(result.mol, confId=0)
    target.GetConformer().SetPositions(oracle.mu.double().numpy())
    for conf in result.mol.GetConformers():
        assert stereo_from_3d(result.mol, conf.GetId()) == expected
        assert rdMolAlign.AlignMol(Chem.Mol(result.mol), target, prbCid=conf.GetId()) < 0.3


def test_conformers_name_their_stereoisomer_when_the_input_leaves_it_open(model):
    gen = ConformerGenerator(model, device="cpu", steps=STEPS)
    mixed = gen.generate_many(["CC(O)C(N)C(C)Cl", "NC12CC3CC(CC(C3)C1)C2", "CCCO"], 10, seed=3)
    chiral, amantadine, plain = (result.mol for result in mixed)
    # three open centres: the seeds take several configurations, each conformer names its own
    names = [conf.GetProp("stereoisomer") for conf in chiral.GetConformers()]
    assert names == [stereo_smiles(chiral, conf.GetId()) for conf in chiral.GetConformers()]
    assert len(set(names)) > 1 and all("@" in name for name in names)
    with pytest.warns(UserWarning, match=f"3 stereo element.*10 conformers are {len(set(names))} stereoisomers"):
        gen.generate("CC(O)C(N)C(C)Cl", n=10, seed=3)
    # amantadine's four bridgeheads are open in the SMILES, but only one configuration exists: no warning
    assert StereoCheck.from_mol(Chem.AddHs(Chem.MolFromSmiles("NC12CC3CC(CC(C3)C1)C2"))).num_open == 4
    assert len({conf.GetProp("stereoisomer") for conf in amantadine.GetConformers()}) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen.generate("NC12CC3CC(CC(C3)C1)C2", n=10, seed=3)
    assert not any(conf.HasProp("stereoisomer") for conf in plain.GetConformers())  # nothing left open


def test_full_mode_mirrors_enantiomers_and_drops_other_stereoisomers():
    expected = Chem.MolToSmiles(Chem.MolFromSmiles(CHIRAL))
    enantiomer = full_generator(gaussian_oracle("C[C@@H](N)[C@H](C)O"))
    result = next(enantiomer.generate_many([CHIRAL], n=4, seed=0))
    assert result.ok and result.mol.GetNumConformers() == 4 and result.rejected_draws == 0
    assert all(stereo_from_3d(result.mol, c.GetId()) == expected for c in result.mol.GetConformers())
    diastereomer = full_generator(gaussian_oracle("C[C@@H](N)[C@@H](C)O"))
    result = next(diastereomer.generate_many([CHIRAL], n=4, seed=0))
    assert not result.ok and "none of 16 draws was usable (failed: stereochemistry 16)" in result.error


class _AlternatingOracle(torch.nn.Module):
    """Even graphs of a batch (draws 0, 2, ...) sample CHIRAL's conformer, odd ones a diastereomer's."""

    def __init__(self, good: GaussianConformer, bad: GaussianConformer):
        super().__init__()
        self.good, self.bad = good, bad

    def forward(self, batch):
        tor, good = self.good(batch)
        _, bad = self.bad(batch)
        odd = (batch.batch % 2 == 1)[:, None]
        return tor, torch.where(odd, bad, good)


def test_full_mode_keeps_the_first_n_usable_draws(monkeypatch):
    (good, diffusion), (bad, _) = gaussian_oracle(CHIRAL), gaussian_oracle("C[C@@H](N)[C@@H](C)O")
    gen = full_generator((_AlternatingOracle(good, bad), diffusion))
    result = next(gen.generate_many([CHIRAL], n=3, seed=0))
    assert result.ok and not result.warnings
    assert [c.GetIntProp("conformer_index") for c in result.mol.GetConformers()] == [0, 2, 4]
    result = next(gen.generate_many([CHIRAL], n=4, seed=0))
    assert result.mol.GetNumConformers() == 4  # draws 0..7: four usable
    monkeypatch.setattr(confdiff.conformers.generator, "FULL_MODE_DRAWS", 1)
    ungated = full_generator((_AlternatingOracle(good, bad), diffusion), validity_gate=False)
    result = next(ungated.generate_many([CHIRAL], n=4, seed=0))
    assert result.mol.GetNumConformers() == 2 and any("2 conformers instead of 4" in w for w in result.warnings)
    result = next(gen.generate_many([CHIRAL], n=4, seed=0))  # draws 0..3, then 4..7 from the pass rate 1/2
    assert [c.GetIntProp("conformer_index") for c in result.mol.GetConformers()] == [0, 2, 4, 6]
    assert result.rejected_draws == 4 and not result.warnings


class _SquashedOracle(torch.nn.Module):
    """Graphs 1, 4, 7, ... of a batch sample the conformer shrunk to half its size (bonds far too
    short, atoms clashing; every configuration kept), the others the conformer itself."""

    def __init__(self, good: GaussianConformer):
        super().__init__()
        self.good, self.small = good, GaussianConformer(good.mu * 0.5, good.s)

    def forward(self, batch):
        tor, good = self.good(batch)
        _, small = self.small(batch)
        return tor, torch.where((batch.batch % 3 == 1)[:, None], small, good)


def test_the_validity_gate_redraws_failing_conformers_and_never_returns_one(monkeypatch):
    good, diffusion = gaussian_oracle(CHIRAL, s=0.02)
    monkeypatch.setattr(confdiff.conformers.generator, "FULL_MODE_DRAWS", 1)
    gen = full_generator((_SquashedOracle(good), diffusion))
    result = next(gen.generate_many([CHIRAL], n=5, seed=0))
    # round 1: draws 0-4, 1 and 4 fail; round 2: ceil(2 / (3/5)) = 4 more, 5-8, of which 6 fails
    assert [c.GetIntProp("conformer_index") for c in result.mol.GetConformers()] == [0, 2, 3, 5, 7]
    assert result.rejected_draws == 3 and not result.warnings
    checker = ValidityChecker.from_mol(result.mol)
    assert checker.passes(np.stack([c.GetPositions() for c in result.mol.GetConformers()])).all()
    ungated = full_generator((_SquashedOracle(good), diffusion), validity_gate=False)
    raw = next(ungated.generate_many([CHIRAL], n=5, seed=0)).mol
    assert checker.passes(np.stack([c.GetPositions() for c in raw.GetConformers()])).tolist() == [
        True, False, True, True, False]


def test_a_molecule_without_enough_valid_draws_is_named_with_the_failed_checks():
    good, diffusion = gaussian_oracle(CHIRAL, s=0.02)
    squashed = GaussianConformer(good.mu * 0.5, good.s)  # every draw fails
    result = next(full_generator((squashed, diffusion), steps=30)
                  .generate_many([CHIRAL], n=3, seed=0))
    assert not result.ok and result.error.startswith("none of 12 draws was usable (failed: ")
    assert "bond_lengths 12" in result.error


def test_full_mode_needs_a_model_trained_for_it(model):
    with pytest.raises(ValueError, match="not trained for the full-coordinate mode"):
        ConformerGenerator(model, device="cpu", mode="full")
    with pytest.raises(ValueError, match="unknown mode"):
        ConformerGenerator(model, device="cpu", mode="fast")


def test_the_shipped_models_serve_every_mode():
    refine, full = load_model(), load_model(mode="full")
    assert refine[1].config.full_fraction == 0 and full[1].config.full_fraction > 0
    assert full[0].config.centre_vector
    mol = confdiff.generate("CC(=O)Nc1ccc(O)cc1", n=3, seed=0, steps=5, mode="full", device="cpu", validity_gate=False)
    assert 1 <= mol.GetNumConformers() <= 3


@pytest.mark.parametrize("mode", ["refine", "torsions"])
def test_rigid_molecules_alone_in_a_batch_get_their_conformers_in_every_guided_mode(model, mode):
    """No rotatable bond: the torsions mode's state is empty, and the guidance has nothing to move."""
    generator = ConformerGenerator(model, mode=mode, guidance="mmff", guidance_scale=1.0)
    for smiles in ("CCO", "c1ccccc1"):
        assert generator.generate(smiles, 3, seed=0).GetNumConformers() == 3


def test_generate_api(tmp_path):
    path = save_tiny_model(tmp_path / "tiny.pt")
    assert {"generate", "ConformerGenerator", "GenerationError", "load_model"} <= set(confdiff.__all__)
    mol = confdiff.generate("CC(=O)Nc1ccc(O)cc1", n=5, seed=0, steps=2, model=path, device="cpu")
    again = confdiff.generate("CC(=O)Nc1ccc(O)cc1", n=5, seed=0, steps=2, model=path, device="cpu")
    assert mol.GetNumConformers() == 5 and np.array_equal(positions(mol), positions(again))
    with pytest.raises(GenerationError, match="invalid SMILES"):
        confdiff.generate("C1CC(", n=2, model=path, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        confdiff.generate("CC(=O)[O-].[Na+]", n=2, seed=0, steps=2, model=path, device="cpu")
    assert any("dropped [Na+]" in str(w.message) for w in caught)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        load_model(tmp_path / "missing.pt")
    torch.save({"kind": "image_model"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a conformer score model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="needs relax"):
        ConformerGenerator(tiny_model(), energy_window=3.0)


def test_sampling_runs_on_num_threads_and_restores_torch_setting(model, monkeypatch):
    seen = []
    real = ConformerGenerator._sample

    def spy(self, tasks, seed):
        seen.append(torch.get_num_threads())
        return real(self, tasks, seed)

    monkeypatch.setattr(ConformerGenerator, "_sample", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads, expected in [(1, 1), (None, 2)]:
            generator = ConformerGenerator(model, device="cpu", steps=2, num_threads=threads, guidance="none")
            generator.generate("CCO", n=2, seed=0)
            assert seen[-1] == expected and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads"):
        ConformerGenerator(model, device="cpu", num_threads=0)
