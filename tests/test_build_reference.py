"""scripts/build_reference.py: deduplication, the seeded draw, one molecule's ensemble, resuming."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from confdiff.chem.metrics import rmsd_matrix
from confdiff.chem.properties import xtb_single_point
from tests.scripts import load_script

needs_xtb = pytest.mark.skipif(shutil.which("xtb") is None, reason="xtb binary not installed")


br = load_script("build_reference")
TINY = br.ReferenceConfig(num_seeds=6)
CSV_ROWS = [  # smiles, GEOM K
    ("CCCC", 3),
    ("C[C@@H](O)CC", 9),
    ("CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", 1),  # 44 heavy atoms: never drawn
    ("C[NH3+]", 1),
    ("CC.O", 1),  # two fragments: never drawn
]


def _write_csv(path: Path, rows=CSV_ROWS) -> Path:
    lines = ["smiles,n_conformers,corrected_smiles"] + [f"{s},{k},{s}" for s, k in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(path: Path) -> list[Chem.Mol]:
    with gzip.open(path, "rb") as fh:
        return [m for m in Chem.ForwardSDMolSupplier(fh, removeHs=False)]


def test_config_validates():
    with pytest.raises(ValueError, match="num_seeds"):
        br.ReferenceConfig(num_seeds=0)
    with pytest.raises(ValueError, match="energy_window"):
        br.ReferenceConfig(energy_window=0.0)


def test_draw_is_seeded_filtered_and_extends_as_a_prefix(tmp_path):
    csv = _write_csv(tmp_path / "set.csv")
    three = br.draw_targets(csv, 3, seed=5)
    assert sorted(t.mol_id for t in three) == [0, 1, 3]  # row indices; too big and two-fragment rows skipped
    assert br.draw_targets(csv, 3, seed=5) == three
    assert br.draw_targets(csv, 2, seed=5) == three[:2]
    assert {t.smiles: t.geom_conformers for t in three} == {"CCCC": 3, "C[C@@H](O)CC": 9, "C[NH3+]": 1}
    assert len(br.draw_targets(csv, 3, seed=5, max_heavy_atoms=2)) == 1  # only methylammonium fits


@needs_xtb
def test_one_molecule_ensemble_is_windowed_distinct_and_keeps_stereo():
    ens = br.build_reference_ensemble("C[C@@H](O)CC", TINY, seed=3, name="butan-2-ol")
    k = ens.mol.GetNumConformers()
    assert k >= 2 and ens.counts["num_conformers"] == k
    assert ens.weights.sum() == pytest.approx(1.0)
    assert np.all(np.diff(ens.energies) >= 0)
    assert ens.energies[-1] - ens.energies[0] <= TINY.energy_window
    assert np.all(ens.dipoles > 0) and np.all(ens.gaps > 0)
    rmsd = rmsd_matrix(ens.mol, ens.mol)
    for i in range(k):
        for j in range(i):
            assert rmsd[i, j] >= TINY.rmsd or abs(ens.energies[i] - ens.energies[j]) >= TINY.energy_tol
    for conf in ens.mol.GetConformers():  # every conformer has the input's configuration
        copy = Chem.Mol(ens.mol, confId=conf.GetId())
        Chem.AssignStereochemistryFrom3D(copy)
        assert Chem.MolToSmiles(Chem.RemoveHs(copy)) == Chem.CanonSmiles("C[C@@H](O)CC")


@needs_xtb
def test_build_writes_the_set_and_resumes(tmp_path, monkeypatch):
    csv = _write_csv(tmp_path / "set.csv")
    out = tmp_path / "out"
    args = ["--set", "qm9", "--csv", str(csv), "--out", str(out), "--num-seeds", "6", "--seed", "5"]
    assert br.main([*args, "--num-molecules", "2"]) == 0
    first = br.draw_targets(csv, 2, seed=5)
    records = _records(out / "qm9_gfn2.sdf.gz")
    assert [int(r.GetProp("mol_id")) for r in records][0] == first[0].mol_id
    by_id: dict[int, list[Chem.Mol]] = {}
    for r in records:
        for prop in ("mol_id", "smiles", "energy", "boltzmann_weight"):
            assert r.HasProp(prop)
        by_id.setdefault(int(r.GetProp("mol_id")), []).append(r)
    assert sorted(by_id) == sorted(t.mol_id for t in first)
    for confs in by_id.values():
        assert sum(float(r.GetProp("boltzmann_weight")) for r in confs) == pytest.approx(1.0, abs=1e-6)
        energies = [float(r.GetProp("energy")) for r in confs]
        assert max(energies) - min(energies) <= br.ReferenceConfig.energy_window
    parts = {p.name: p.stat().st_mtime_ns for p in (out / "qm9_gfn2.work").glob("*.sdf.gz")}
    assert len(parts) == 2

    # a rerun builds only what is missing: the third molecule, never the finished two
    built = []
    real = br.build_reference_ensemble

    def counting(smiles, *a, **kw):
        built.append(smiles)
        return real(smiles, *a, **kw)

    monkeypatch.setattr(br, "build_reference_ensemble", counting)
    assert br.main([*args, "--num-molecules", "3"]) == 0
    third = br.draw_targets(csv, 3, seed=5)[2]
    assert built == [third.smiles]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "qm9_gfn2.work").glob("*.sdf.gz") if p.name in parts} == parts
    charged = [r for r in _records(out / "qm9_gfn2.sdf.gz") if r.GetProp("smiles") == "C[NH3+]"]
    assert len(charged) == 1
    cation = xtb_single_point(charged[0], charge=1, uhf=0)  # the stored energy is that of the cation
    assert float(charged[0].GetProp("energy")) == pytest.approx(cation.energy, abs=1e-3)

    # a different protocol in the same folder is refused rather than mixed in
    assert br.main([*args, "--num-molecules", "3", "--max-gfn2", "7"]) == 1
