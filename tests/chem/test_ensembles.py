"""The one ensemble pipeline and the one greedy RMSD pruning."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.chem.ensembles import (EnsembleError, farthest_point_conformers, farthest_points, prune_conformers,
                                     select_conformers)
from confdiff.chem.metrics import rmsd_matrix


def _conformers(smiles: str, n: int, seed: int = 3) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed)
    return mol


def _with_copies(mol: Chem.Mol, copies: dict[int, int]) -> Chem.Mol:
    """``mol`` plus, for each ``new id: source id``, a copy of the source conformer shifted by 1 A."""
    out = Chem.Mol(mol)
    for new, src in copies.items():
        conf = Chem.Conformer(mol.GetConformer(src))
        conf.SetPositions(conf.GetPositions() + 1.0)
        conf.SetId(new)
        out.AddConformer(conf, assignId=False)
    return out


def test_pruning_is_greedy_in_the_given_order_and_drops_within_the_threshold():
    mol = _with_copies(_conformers("CCCCCC(=O)NCCO", 4), {10: 1})  # 10 is a translated copy of 1
    ids = [c.GetId() for c in mol.GetConformers()]
    assert prune_conformers(mol, 1e-3, ids) == [0, 1, 2, 3]  # the copy (RMSD 0) goes
    assert prune_conformers(mol, 1e-3, [10, 0, 1, 2, 3]) == [10, 0, 2, 3]  # order decides which copy stays
    rms = rmsd_matrix(mol, mol)
    tie = float(rms[0, 1])
    kept = prune_conformers(mol, tie, [0, 1])
    assert kept == [0]  # RMSD equal to the threshold counts as a duplicate
    assert prune_conformers(mol, 0.0, ids) == ids


def test_farthest_points_start_at_the_first_and_spread():
    x = np.array([0.0, 0.25, 1.0, 1.5, 5.0])  # points on a line: the distance is the RMSD
    rmsd = np.abs(x[:, None] - x[None])
    assert farthest_points(rmsd, 3) == [0, 4, 3]
    assert farthest_points(rmsd, 9) == [0, 4, 3, 2, 1]  # at most every point, each once


def test_farthest_point_conformers_skip_copies_and_keep_the_given_first():
    mol = _with_copies(_conformers("CCCCCC(=O)NCCO", 4), {10: 1})  # 10 is a translated copy of 1
    rms = rmsd_matrix(mol, mol)
    ids = [10, 0, 1, 2, 3]
    chosen = farthest_point_conformers(mol, 4, ids)
    assert chosen[0] == 10 and 1 not in chosen  # the copy of the first is never farther than the others
    expected = [ids[k] for k in farthest_points(rms[np.ix_([4, 0, 1, 2, 3], [4, 0, 1, 2, 3])], 4)]
    assert chosen == expected
    assert farthest_point_conformers(mol, 9, ids) == ids


def test_energy_tolerance_keeps_a_geometric_duplicate_of_another_energy():
    mol = _with_copies(_conformers("CCCCO", 1), {1: 0})
    assert prune_conformers(mol, 0.1, [0, 1], energies=[0.0, 0.01], energy_tol=0.05) == [0]
    assert prune_conformers(mol, 0.1, [0, 1], energies=[0.0, 0.2], energy_tol=0.05) == [0, 1]


def test_select_relaxes_windows_prunes_in_energy_order_and_caps():
    mol = _conformers("CCCCCC(=O)NCCO", 12)
    sel = select_conformers(mol, relax="mmff", energy_window=5.0, prune_rms=0.5, max_conformers=4)
    assert 1 <= len(sel.conf_ids) <= 4 and sel.num_broken == 0
    assert sel.energies == sorted(sel.energies) and sel.energies[-1] - sel.energies[0] <= 5.0
    rms = rmsd_matrix(mol, mol)
    for i, a in enumerate(sel.conf_ids):
        for b in sel.conf_ids[:i]:
            assert rms[a, b] > 0.5


def test_select_drops_conformers_whose_configuration_the_relaxation_changed(monkeypatch):
    mol = _conformers("C[C@H](N)C(=O)O", 3)

    def mirror_all(mol, method, ids, threads=1):  # a "relaxation" that inverts every centre
        for cid in ids:
            conf = mol.GetConformer(cid)
            conf.SetPositions(-conf.GetPositions())
        return [0.0] * len(ids)

    monkeypatch.setattr("confdiff.chem.ensembles.relax_conformers", mirror_all)
    with pytest.raises(EnsembleError, match="changed a configuration"):
        select_conformers(mol, relax="mmff")


def test_without_relaxation_only_pruning_runs_in_the_given_order():
    mol = _conformers("CCCCCC(=O)NCCO", 5)
    sel = select_conformers(mol, prune_rms=None)
    assert sel.conf_ids == [0, 1, 2, 3, 4] and sel.energies is None
    assert np.isfinite(rmsd_matrix(mol, mol)).all()
