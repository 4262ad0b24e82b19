"""scripts/bench_polish_pool.py: the candidates each rule offers the farthest-point selection."""

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
    assert bench.written("drawn75_polished", [(0, False), (3, False)], pool) == [(0, True), (3, False)]
    assert bench.written("drawn75", [(0, False), (3, False)], pool) == [(0, False), (3, False)]
