"""scripts/bench_polish_pool.py: the candidates each rule offers the farthest-point selection."""

from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.chem.metrics import best_rms
from tests.scripts import load_script

bench = load_script("bench_polish_pool")


def test_rules_order_and_cut_the_pool():
    # four draws; draw 3 lost its polished version to the gate; a polished version is never higher
    drawn = {0: None, 1: None, 2: None, 3: None}
    polished = {0: None, 1: None, 2: None}
    energy = {(0, False): 9.0, (0, True): 1.0, (1, False): 3.0, (1, True): 2.5, (2, False): 8.0, (2, True): 7.0,
              (3, False): 4.0}
    assert bench.candidates("drawn75", drawn, polished, energy) == [(1, False), (3, False), (2, False)]
    assert bench.candidates("drawn75_polished", drawn, polished, energy) == [(1, False), (3, False), (2, False)]
    assert bench.candidates("polished90", drawn, polished, energy) == [(0, True), (1, True)]
    assert bench.candidates("both75", drawn, polished, energy) == [(0, True), (1, True), (1, False), (3, False),
                                                                    (2, True)]
    # wells 1.0, 2.5, 7.0 and 4.0 (draw 3 as drawn): the lowest three draws, both versions each, polished first
    assert bench.candidates("both75_by_well", drawn, polished, energy) == [(0, True), (0, False), (1, True),
                                                                            (1, False), (3, False)]


def test_the_polish_after_the_selection_writes_the_polished_versions_where_there_are_any():
    pool = {(0, False): None, (0, True): None, (3, False): None}
    moved = {0: 0.4}
    assert bench.written("drawn75_polished", [(0, False), (3, False)], pool, moved) == [(0, True), (3, False)]
    assert bench.written("drawn75", [(0, False), (3, False)], pool, moved) == [(0, False), (3, False)]
    # a polish that moved the draw by more than the limit is not written
    assert bench.written("drawn75_polished_near50", [(0, False), (3, False)], pool, moved) == [(0, True), (3, False)]
    assert bench.written("drawn75_polished_near25", [(0, False), (3, False)], pool, moved) == [(0, False), (3, False)]


def test_polish_moves_are_heavy_atom_rmsds_of_each_draw_against_its_polish():
    mol = Chem.AddHs(Chem.MolFromSmiles("OCCCCCCN"))
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=42)  # RDKit: seed 0 gives identical conformers
    positions = [c.GetPositions() for c in mol.GetConformers()]
    moved = bench.polish_moves(mol, {0: positions[0], 1: positions[1], 2: positions[2]},
                               {0: positions[0], 1: positions[3]})
    assert set(moved) == {0, 1}  # draw 2 has no polished version
    assert moved[0] < 1e-6
    expected = best_rms(mol, mol, 1, 3)
    assert expected > 0.1
    assert abs(moved[1] - expected) < 1e-4
