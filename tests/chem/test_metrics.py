"""Tests for confdiff.chem.metrics: RMSD against RDKit GetBestRMS, COV / MAT conventions, the TD row."""

import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from confdiff.chem.metrics import best_rms, coverage_curve, coverage_matching, rmsd_matrices, rmsd_matrix

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MICRO = DATA / "geom_drugs_micro"


def _embedded(smiles, n, seed):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMultipleConfs(mol, n, params)
    assert mol.GetNumConformers() == n
    return mol


@pytest.fixture(scope="module")
def nitro_pair():
    # symmetric phenyl and a nitro group: GetBestRMS must try the ring flips and the O/O swap
    smiles = "[O-][N+](=O)c1ccc(cc1)OCCc1ccccc1"
    return _embedded(smiles, 4, 1), _embedded(smiles, 6, 2)


def test_rmsd_matrix_equals_get_best_rms(nitro_pair):
    ref, gen = nitro_pair
    matrix = rmsd_matrix(ref, gen)
    assert matrix.shape == (4, 6)
    for i in range(4):
        for j in range(6):
            probe = Chem.RemoveHs(Chem.Mol(gen, confId=gen.GetConformers()[j].GetId()))
            target = Chem.RemoveHs(Chem.Mol(ref, confId=ref.GetConformers()[i].GetId()))
            assert matrix[i, j] == pytest.approx(rdMolAlign.GetBestRMS(probe, target), abs=1e-6)
    assert best_rms(gen, ref, 1, 2) == pytest.approx(matrix[2, 1], abs=1e-6)
    # symmetry matters here: the plain (identity-map) alignment is never better
    plain = rdMolAlign.AlignMol(Chem.RemoveHs(Chem.Mol(gen, confId=0)), Chem.RemoveHs(Chem.Mol(ref, confId=0)))
    assert matrix[0, 0] <= plain + 1e-9


def test_self_rmsd_is_zero_and_list_input(nitro_pair):
    ref, _ = nitro_pair
    matrix = rmsd_matrix(ref, [Chem.Mol(ref, confId=c.GetId()) for c in ref.GetConformers()])
    np.testing.assert_allclose(np.diag(matrix), 0.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def test_fewer_symmetry_matches_can_only_raise_the_rmsd():
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(C)(C)c1ccc(cc1)C(F)(F)F"))  # 6 x 2 x 6 = 72 heavy-atom matches
    AllChem.EmbedMultipleConfs(mol, 2, randomSeed=0)
    swapped = mol.GetConformer(1).GetPositions()
    fluorines = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == "F"]
    swapped[fluorines] = swapped[fluorines[::-1]]  # the same geometry, two fluorines relabelled
    mol.GetConformer(1).SetPositions(swapped)
    full, capped, one = (rmsd_matrix(mol, mol, max_matches=m) for m in (10**6, 8, 1))
    assert full[0, 1] < 1e-3 < one[0, 1]  # only the symmetry matches see the relabelled copy
    assert (capped >= full - 1e-9).all() and (one >= capped - 1e-9).all()


def test_unmatched_graph_gives_nan(nitro_pair):
    ref, gen = nitro_pair
    broken = Chem.RWMol(Chem.Mol(ref, confId=0))
    bond = next(b for b in broken.GetBonds() if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()
                and b.GetBeginAtom().GetAtomicNum() > 1 and b.GetEndAtom().GetAtomicNum() > 1)
    broken.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    Chem.SanitizeMol(broken)
    matrix = rmsd_matrix([broken.GetMol(), Chem.Mol(ref, confId=1)], gen)
    assert np.isnan(matrix[0]).all() and not np.isnan(matrix[1]).any()
    assert np.isnan(best_rms(gen, broken.GetMol()))
    scores = coverage_matching(matrix, 10.0)
    assert scores["cov_r"] == 0.5 and scores["mat_r"] == pytest.approx(np.min(matrix[1]))


def test_coverage_matching_exact():
    nan = np.nan
    rmsd = np.array([[0.5, 1.0, 2.0], [nan, nan, nan], [0.8, 0.7, nan]])
    out = coverage_matching(rmsd, 0.75)
    # reference minima 0.5, NaN, 0.7; generated minima 0.5, 0.7, 2.0
    assert out["cov_r"] == pytest.approx(2 / 3)
    assert out["mat_r"] == pytest.approx(0.6)
    assert out["cov_p"] == pytest.approx(2 / 3)
    assert out["mat_p"] == pytest.approx((0.5 + 0.7 + 2.0) / 3)
    assert coverage_matching(rmsd, 0.5)["cov_r"] == 0.0  # strictly below the threshold
    empty = coverage_matching(np.zeros((3, 0)), 0.75)
    assert empty["cov_r"] == 0.0 and empty["cov_p"] == 0.0 and np.isnan(empty["mat_r"])
    with pytest.raises(ValueError, match="matrix"):
        coverage_matching(np.zeros(3), 0.75)


def test_coverage_curve_agrees_with_matching():
    rmsd = np.random.default_rng(0).uniform(0, 2, size=(7, 14))
    rmsd[2] = np.nan
    thresholds = np.linspace(0, 2.5, 11)
    curve = coverage_curve(rmsd, thresholds)
    for t, thr in enumerate(thresholds):
        point = coverage_matching(rmsd, thr)
        assert curve["cov_r"][t] == point["cov_r"] and curve["cov_p"][t] == point["cov_p"]
    assert np.all(np.diff(curve["cov_r"]) >= 0) and curve["cov_r"][-1] == 6 / 7


def _grouped(path):
    groups = defaultdict(list)
    with gzip.open(path) as handle:
        for mol in Chem.ForwardSDMolSupplier(handle, removeHs=False):
            groups[mol.GetProp("mol_id")].append(mol)
    return groups


def test_torsional_diffusion_row():
    """The README's fixed target: TD 20 steps on geom_drugs_micro, mean over mol_id 1-9, 0.75 A."""
    if not MICRO.is_dir():
        pytest.skip(f"reference data not found at {MICRO}")
    ref = _grouped(MICRO / "reference_crest.sdf.gz")
    gen = _grouped(MICRO / "torsional_diffusion_20steps.sdf.gz")
    keys = sorted(gen)
    assert keys == [str(i) for i in range(1, 10)]
    matrices = rmsd_matrices([(ref[k], gen[k]) for k in keys], num_workers=2)
    assert [m.shape for m in matrices] == [(len(ref[k]), len(gen[k])) for k in keys]
    rows = [coverage_matching(m, 0.75) for m in matrices]
    mean = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
    assert round(mean["cov_r"], 3) == 0.684
    assert round(mean["cov_p"], 3) == 0.398
    assert round(mean["mat_r"], 3) == 0.630
    assert round(mean["mat_p"], 3) == 0.901
    # the broken reference record of mol_id 7 cannot be aligned to anything
    assert np.isnan(matrices[keys.index("7")]).all(axis=1).sum() == 1


def test_bad_workers():
    with pytest.raises(ValueError, match="num_workers"):
        rmsd_matrices([], num_workers=0)
