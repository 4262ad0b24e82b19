"""The featurised, cached conformer dataset."""

import pytest

from confdiff.conformers.dataset import ConformerDataset
from tests.chem.test_datasets import _geom_pickle, built  # noqa: F401 -- the module-scoped build fixture


def test_conformer_dataset_featurises_once_and_splits(built, tmp_path, monkeypatch):
    _, out, _, _ = built
    geom = tmp_path / "geom"
    geom.mkdir()
    _geom_pickle(geom / "a.pickle")
    cache = tmp_path / "cache"
    full = ConformerDataset([out, geom], cache_dir=cache, split="all")
    assert len(full) == 6 and full.num_skipped == 0
    for graph, pos, weights in full:
        assert pos.ndim == 3 and pos.shape[1:] == (graph.num_nodes, 3)
        assert weights.shape == (pos.shape[0],) and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
        assert not hasattr(graph, "pos") or graph.pos is None
    assert full.cache_path.exists() and full.cache_path.parent == cache
    # a second dataset reads the cache: featurising again would fail here
    monkeypatch.setattr(ConformerDataset, "_featurise", staticmethod(lambda files: pytest.fail("re-featurised")))
    train = ConformerDataset([out, geom], cache_dir=cache, split="train", val_fraction=0.4, seed=1)
    val = ConformerDataset([out, geom], cache_dir=cache, split="val", val_fraction=0.4, seed=1)
    assert len(train) + len(val) == 6 and len(val) >= 1
    smiles = lambda ds: {it["smiles"] for it in ds.items}
    assert not smiles(train) & smiles(val)
