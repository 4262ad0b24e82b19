"""The featurised conformer dataset that training reads, cached on disk with ``torch.save``."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem

from ..chem import featurize as featurize_module
from ..chem import torsions
from ..chem.datasets import ensemble_files, load_ensemble_file
from ..chem.featurize import featurize

__all__ = ["ConformerDataset"]


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "confdiff" / "datasets"


_CACHE_FORMAT = "items/2"  # the fields of a cached molecule; bump when they change


def _cache_key(files: Sequence[Path]) -> str:
    """Hash of the cache format, the source files (path, size, mtime) and the featuriser's code."""
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    for module in (featurize_module, torsions):
        h.update(Path(module.__file__).read_bytes())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _topology(mol: Chem.Mol) -> bytes:
    """``mol`` without its conformers, pickled by RDKit (a few hundred bytes)."""
    bare = Chem.Mol(mol)
    bare.RemoveAllConformers()
    return bare.ToBinary()


def _in_validation(key: str, seed: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class ConformerDataset:
    """Per molecule ``(graph: MolGraph, pos_ensemble (K, N, 3) float32, weights (K,) float32)``.

    dirs : built datasets (``manifest.json``) or folders of SDF ensembles / GEOM pickles.
    The featurised molecules are cached in ``cache_dir`` (default ``~/.cache/confdiff/datasets``)
    under a key of the source files' paths, sizes and mtimes and the featuriser's code, so they are
    built once. The split is by molecule (its SMILES), deterministic in ``seed``.
    Molecules the featuriser refuses are skipped and counted in ``num_skipped``.
    Each of ``items`` also keeps ``smiles`` and ``mol``, the molecule without conformers as
    ``Chem.Mol.ToBinary()`` (atom order of ``pos``), to rebuild reference ensembles for RMSDs.
    """

    def __init__(
        self,
        dirs: str | os.PathLike | Sequence[str | os.PathLike],
        cache_dir: str | os.PathLike | None = None,
        split: str = "train",
        val_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
        files = [f for d in dirs for f in ensemble_files(Path(d))]
        if not files:
            raise ValueError(f"no ensembles found in {', '.join(map(str, dirs))}")
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"ensembles-{_cache_key(files)}.pt"
        if path.exists():
            items = torch.load(path, weights_only=False)
        else:
            items = self._featurise(files)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=cache)
            os.close(fd)
            torch.save(items, tmp)
            os.replace(tmp, path)
        self.cache_path = path
        self.num_skipped = items["skipped"]
        self.items = [
            it for it in items["molecules"]
            if split == "all" or _in_validation(it["smiles"], seed, val_fraction) == (split == "val")
        ]

    @staticmethod
    def _featurise(files: Sequence[Path]) -> dict[str, Any]:
        molecules, skipped = [], 0
        for f in files:
            for mol, weights in load_ensemble_file(f):
                try:
                    graph = featurize(mol)
                except (ValueError, KeyError, RuntimeError) as err:
                    print(f"skipping {mol.GetProp('smiles') if mol.HasProp('smiles') else f}: {err}", file=sys.stderr)
                    skipped += 1
                    continue
                pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
                smiles = mol.GetProp("smiles") if mol.HasProp("smiles") else Chem.MolToSmiles(Chem.RemoveHs(mol))
                molecules.append({
                    "graph": graph,
                    "pos": torch.as_tensor(pos, dtype=torch.float32),
                    "weights": torch.as_tensor(weights, dtype=torch.float32),
                    "smiles": smiles,
                    "mol": _topology(mol),
                })
        return {"molecules": molecules, "skipped": skipped}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        return item["graph"].clone(), item["pos"], item["weights"]
