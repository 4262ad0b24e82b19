"""scripts/bench_oversample.py: the selection rules on a pool of draws."""

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from tests.scripts import load_script

bench = load_script("bench_oversample")


def test_selections_rank_the_first_factor_times_n_draws():
    energy = np.array([5.0, 1.0, 3.0, 0.0, 2.0, -1.0])
    pool = {name: energy for name in bench.ENERGIES}
    pool["rmsd"] = np.abs(np.arange(6.0)[:, None] - np.arange(6.0)[None])
    kept = bench.selections(pool, n=2, factor=2.0)  # the first 4 draws
    assert kept["first"] == [0, 1]
    assert sorted(kept["lowest:mmff"]) == [1, 3]  # draw 5 (-1.0) lies outside the first 4
    assert kept["diverse:1.0"] == [3, 0]  # from the lowest, then the farthest
    assert sorted(bench.selections(pool, n=2, factor=3.0)["lowest:mmff"]) == [3, 5]


def test_energies_are_single_points_of_each_variant():
    mol = Chem.AddHs(Chem.MolFromSmiles("OCCO"))
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    full, no_electrostatics = bench.energies(mol, "mmff"), bench.energies(mol, "mmff-noele")
    props = AllChem.MMFFGetMoleculeProperties(mol)
    expected = [AllChem.MMFFGetMoleculeForceField(mol, props, confId=c.GetId()).CalcEnergy() for c in mol.GetConformers()]
    np.testing.assert_allclose(full, expected)
    assert full.shape == (3,) and not np.allclose(full, no_electrostatics)
    boronic = Chem.AddHs(Chem.MolFromSmiles("OB(O)c1ccccc1"))  # no MMFF94 parameters
    AllChem.EmbedMultipleConfs(boronic, 2, randomSeed=0)
    assert np.isnan(bench.energies(boronic, "mmff")).tolist() == [True, True]


def test_medoid_points_represent_the_dense_regions():
    # two clusters on a line, {0, 0.1, 0.2} and {5, 5.1}, and an outlier at 20
    x = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 20.0])
    rmsd = np.abs(x[:, None] - x[None])
    assert bench.medoid_points(rmsd, 1) == [3]  # the least summed distance
    assert bench.medoid_points(rmsd, 3) == [3, 5, 1]  # then the outlier (it alone saves 14.9), then cluster 1
    assert bench.farthest_points(rmsd, 3)[:2] == [0, 5]
    assert sorted(bench.medoid_points(rmsd, 6)) == list(range(6))
