"""ETKDGv3 seeds: count, hydrogens, stereochemistry, reproducibility, small-ring torsions, pruning and the
fallback path."""

import time

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdMolAlign

from confdiff.chem import embed as embed_module
from confdiff.chem.embed import EmbeddingError, embed_etkdg

CHIRAL = "C[C@H](N)C(=O)N[C@@H](CC(C)C)C(=O)OCC"


def _stereo_from_3d(mol, cid):
    m = Chem.Mol(mol, confId=cid)
    Chem.AssignStereochemistryFrom3D(m)
    return Chem.MolToSmiles(Chem.RemoveHs(m))


def test_embeds_n_conformers_with_hydrogens_and_keeps_input():
    mol = Chem.MolFromSmiles(CHIRAL)
    result = embed_etkdg(mol, 6, seed=1)
    assert result.method == "etkdg"
    assert len(result.conf_ids) == 6 == result.mol.GetNumConformers()
    assert result.mol.GetNumAtoms() == Chem.AddHs(mol).GetNumAtoms()
    assert mol.GetNumConformers() == 0 and mol.GetNumAtoms() == Chem.MolFromSmiles(CHIRAL).GetNumAtoms()
    reference = Chem.MolToSmiles(mol)
    for cid in result.conf_ids:
        assert _stereo_from_3d(result.mol, cid) == reference
        pos = result.mol.GetConformer(cid).GetPositions()
        bonds = [np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in result.mol.GetBonds()]
        assert 0.9 < min(bonds) and max(bonds) < 1.7


def test_seed_reproducible_and_seed_dependent():
    mol = Chem.MolFromSmiles("CCCCOc1ccccc1CCN")
    a = embed_etkdg(mol, 3, seed=7)
    b = embed_etkdg(mol, 3, seed=7)
    c = embed_etkdg(mol, 3, seed=8)
    pa, pb, pc = (r.mol.GetConformer(r.conf_ids[0]).GetPositions() for r in (a, b, c))
    np.testing.assert_allclose(pa, pb)
    assert np.abs(pa - pc).max() > 1e-3


def test_small_ring_torsions_change_the_embeddings_of_small_rings_only():
    def positions(smiles: str, small_ring_torsions: bool) -> np.ndarray:
        result = embed_etkdg(Chem.MolFromSmiles(smiles), 3, seed=4, small_ring_torsions=small_ring_torsions)
        return np.stack([result.mol.GetConformer(c).GetPositions() for c in result.conf_ids])

    ring = "CC(=O)NC1CCCCC1"  # a cyclohexane: ETKDG's small-ring torsion terms apply
    assert np.abs(positions(ring, True) - positions(ring, False)).max() > 1e-2
    chain = "CCCCOCCN"  # no ring: nothing to apply them to
    np.testing.assert_array_equal(positions(chain, True), positions(chain, False))


def test_prune_rms_removes_close_conformers():
    mol = Chem.MolFromSmiles("CCCCCC(=O)NCCO")
    result = embed_etkdg(mol, 20, seed=3, prune_rms=1.0)
    assert 1 <= len(result.conf_ids) < 20
    heavy = Chem.RemoveHs(result.mol)
    ids = list(result.conf_ids)
    for i in range(len(ids)):
        for j in range(i):
            assert rdMolAlign.GetBestRMS(Chem.Mol(heavy), Chem.Mol(heavy), ids[i], ids[j]) > 0.99


def test_fallback_to_random_coordinates_when_etkdg_fails(monkeypatch):
    real = rdDistGeom.EmbedMultipleConfs

    def etkdg_fails(mol, n, params):
        return [] if not params.useRandomCoords else real(mol, n, params)

    monkeypatch.setattr(embed_module.rdDistGeom, "EmbedMultipleConfs", etkdg_fails)
    result = embed_etkdg(Chem.MolFromSmiles("OCC(=O)Nc1ccccc1"), 3, seed=5)
    assert result.method == "random-coords+mmff"
    assert len(result.conf_ids) == 3
    pos = result.mol.GetConformer(result.conf_ids[0]).GetPositions()
    bonds = [np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in result.mol.GetBonds()]
    assert 0.9 < min(bonds) and max(bonds) < 1.6


def test_uff_fallback_for_molecules_without_mmff_parameters(monkeypatch):
    real = rdDistGeom.EmbedMultipleConfs
    monkeypatch.setattr(
        embed_module.rdDistGeom, "EmbedMultipleConfs",
        lambda mol, n, params: [] if not params.useRandomCoords else real(mol, n, params),
    )
    assert embed_etkdg(Chem.MolFromSmiles("CB(C)C"), 2).method == "random-coords+uff"


def test_typed_error_when_everything_fails(monkeypatch):
    monkeypatch.setattr(embed_module.rdDistGeom, "EmbedMultipleConfs", lambda mol, n, params: [])
    mol = Chem.MolFromSmiles("CCO")
    mol.SetProp("_Name", "ethanol")
    with pytest.raises(EmbeddingError, match="ethanol"):
        embed_etkdg(mol, 2)


def test_a_timed_out_embedding_is_a_failure_not_a_conformer(monkeypatch):
    # on a timeout RDKit returns [-1] and adds no conformer (seen under CPU starvation in a dataset build)
    real = rdDistGeom.EmbedMultipleConfs
    monkeypatch.setattr(embed_module.rdDistGeom, "EmbedMultipleConfs",
                        lambda mol, n, params: [-1] if not params.useRandomCoords else real(mol, n, params))
    result = embed_etkdg(Chem.MolFromSmiles("OCC(=O)Nc1ccccc1"), 2, seed=5)
    assert result.method == "random-coords+mmff" and len(result.conf_ids) == 2
    monkeypatch.setattr(embed_module.rdDistGeom, "EmbedMultipleConfs", lambda mol, n, params: [-1])
    with pytest.raises(EmbeddingError, match="both failed"):
        embed_etkdg(Chem.MolFromSmiles("CCO"), 2)


def test_timeout_bounds_hard_molecules():
    # an inverted bridgehead: ETKDG retries for a long time without the timeout
    strained = Chem.MolFromSmiles("C[C@H](N)[C@H]1[C@@H]2CC[C@@H]1CC2")
    start = time.perf_counter()
    try:
        embed_etkdg(strained, 10, seed=1, timeout=1)
    except EmbeddingError:
        pass
    assert time.perf_counter() - start < 8


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        embed_etkdg(Chem.MolFromSmiles("C"), 0)
    with pytest.raises(ValueError, match="timeout"):
        embed_etkdg(Chem.MolFromSmiles("C"), 1, timeout=0)
    with pytest.raises(EmbeddingError, match="no atoms"):
        embed_etkdg(Chem.Mol(), 1)


def test_seed_zero_gives_distinct_conformers():
    """RDKit derives conformer i's seed from a multiple of randomSeed: seed 0 must not collapse them."""
    result = embed_etkdg(Chem.MolFromSmiles("CCCCOc1ccccc1CCN"), 4, seed=0)
    heavy = Chem.RemoveHs(result.mol)
    ids = list(result.conf_ids)
    assert max(rdMolAlign.GetBestRMS(heavy, heavy, ids[0], i) for i in ids[1:]) > 0.1
