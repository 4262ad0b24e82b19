"""Training ensembles: one molecule's build, the resumable dataset build, loaders and the cache."""

import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from confdiff.chem.datasets import build_dataset, inchikey_block, load_ensembles, load_geom_pickle, read_exclusion_list
from confdiff.chem.ensembles import BOLTZMANN_KCAL, BuildConfig, EnsembleError, boltzmann_weights, build_ensemble
from confdiff.chem.embed import embed_etkdg
from confdiff.cli import COMMANDS
from confdiff.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
EXCLUSION = ROOT / "data" / "evaluation_exclusion.txt"
SMALL = BuildConfig(num_conformers=6, energy_window=10.0, prune_rms=0.3, seed=11)
# the 4th molecule is a GEOM-DRUGS test molecule: the exclusion list must drop it
SMILES = """CCOC(=O)C1CCN(C)CC1 ester
C1CC1 broken_ring_closure_is_fine
C1CC bad
C#CCNC(=O)C1=C[C@@H](c2ccc(Br)cc2)C[C@@H](OCc2ccc(CO)cc2)O1 geom_test
CC(O)CNC(C)=O chiral_unspecified
C[C@H](N)C(=O)NCC alanine_amide
CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC too_big
c1ccccc1CCO phenethyl
"""


def test_boltzmann_weights():
    w = boltzmann_weights([3.0, 2.0, 2.0 + BOLTZMANN_KCAL * 298.15])
    assert w.sum() == pytest.approx(1.0)
    assert w[1] / w[2] == pytest.approx(np.e)
    assert w[1] / w[0] == pytest.approx(np.exp(1 / (BOLTZMANN_KCAL * 298.15)))


def test_config_validates():
    with pytest.raises(ValueError, match="relax"):
        BuildConfig(relax="pm7")
    with pytest.raises(ValueError, match="num_conformers"):
        BuildConfig(num_conformers=0)
    with pytest.raises(ValueError, match="oversample"):
        BuildConfig(oversample=0)


def test_oversampling_keeps_the_lowest_num_conformers_of_more_seeds():
    mol = Chem.MolFromSmiles("CCOC(=O)CCCCN(C)CCO")
    plain = build_ensemble(mol, BuildConfig(num_conformers=4, prune_rms=0.25, seed=5))
    over = build_ensemble(mol, BuildConfig(num_conformers=4, oversample=5, prune_rms=0.25, seed=5))
    assert over.mol.GetNumConformers() == 4 >= plain.mol.GetNumConformers()
    # the 20 seeds include the 4 of the plain build, so the lowest kept energy cannot be higher
    assert over.energies[0] <= plain.energies[0] + 1e-6
    assert np.all(np.diff(over.energies) >= 0)


def test_build_ensemble_window_pruning_weights_and_stereo():
    mol = Chem.MolFromSmiles("C[C@@H](O)CCOCC(=O)NC")
    ens = build_ensemble(mol, BuildConfig(num_conformers=12, energy_window=4.0, prune_rms=0.5, seed=3))
    k = ens.mol.GetNumConformers()
    assert k >= 2 and [c.GetId() for c in ens.mol.GetConformers()] == list(range(k))
    assert np.all(np.diff(ens.energies) >= 0) and ens.energies[-1] - ens.energies[0] <= 4.0
    np.testing.assert_allclose(ens.weights, boltzmann_weights(ens.energies))
    heavy = Chem.RemoveHs(ens.mol)
    for i in range(k):
        m = Chem.Mol(ens.mol, confId=i)
        Chem.AssignStereochemistryFrom3D(m)
        assert Chem.MolToSmiles(Chem.RemoveHs(m)) == Chem.MolToSmiles(mol)
        for j in range(i):
            assert rdMolAlign.GetBestRMS(Chem.Mol(heavy), Chem.Mol(heavy), i, j) > 0.5 - 1e-6


def test_unspecified_stereo_fixed_to_an_embeddable_isomer():
    # half of this bridged amine's 8 stereoisomers have an impossible (inverted) bridgehead
    mol = Chem.MolFromSmiles("C1CC2CCC1C2C(C)N")
    for seed in range(3):
        ens = build_ensemble(mol, BuildConfig(num_conformers=2, prune_rms=0.0, seed=seed))
        graph = Chem.MolFromSmiles(ens.smiles)
        assert not [c for c in Chem.FindMolChiralCenters(graph, includeUnassigned=True) if c[1] == "?"]
        for cid in range(ens.mol.GetNumConformers()):
            m = Chem.Mol(ens.mol, confId=cid)
            Chem.AssignStereochemistryFrom3D(m)
            assert Chem.MolToSmiles(Chem.RemoveHs(m)) == ens.smiles


@pytest.mark.skipif(shutil.which("xtb") is None, reason="xtb binary not installed")
def test_build_ensemble_with_gfnff():
    ens = build_ensemble(Chem.MolFromSmiles("OCCOC"), BuildConfig(num_conformers=3, relax="gfnff", prune_rms=0.1))
    assert ens.mol.GetNumConformers() >= 1 and np.all(ens.energies < 0)
    assert ens.weights.sum() == pytest.approx(1.0)


def test_exclusion_list_covers_the_evaluation_sets():
    keys = read_exclusion_list(EXCLUSION)
    assert len(keys) > 3000
    drug = "C#CCNC(=O)C1=C[C@@H](c2ccc(Br)cc2)C[C@@H](OCc2ccc(CO)cc2)O1"  # first GEOM-DRUGS test molecule
    assert inchikey_block(Chem.MolFromSmiles(drug)) in keys
    assert inchikey_block(Chem.MolFromSmiles("CCCCCCCCCCCCCCCCCCCCO")) not in keys
    shared = ROOT.parent / "shared" / "data" / "platinum" / "platinum_diverse_dev.sdf.gz"
    if shared.exists():
        with gzip.open(shared) as fh:
            first = next(Chem.ForwardSDMolSupplier(fh))
        assert inchikey_block(first) in keys


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "in.smi"
    source.write_text(SMILES)
    out = tmp / "ds"
    exclude = read_exclusion_list(EXCLUSION)
    manifest = build_dataset(str(source), out, SMALL, exclude=exclude, shard_size=2, log=lambda m: None)
    return source, out, manifest, exclude


def test_build_writes_shards_manifest_and_errors(built):
    source, out, manifest, _ = built
    assert sorted(manifest["shards"]) == ["shard-00000.sdf.gz", "shard-00001.sdf.gz", "shard-00002.sdf.gz"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    rows = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()[1:]]
    reasons = {row[1]: row[3] for row in rows}
    assert set(reasons) == {"bad", "geom_test", "too_big"}
    assert "invalid SMILES" in reasons["bad"] and "exclusion" in reasons["geom_test"]
    assert "heavy atoms" in reasons["too_big"]
    ensembles = list(load_ensembles(out))
    names = [m.GetProp("_Name") for m, _ in ensembles]
    assert names == ["ester", "broken_ring_closure_is_fine", "chiral_unspecified", "alanine_amide", "phenethyl"]
    for mol, weights in ensembles:
        k = mol.GetNumConformers()
        assert k >= 1 and weights.shape == (k,) and weights.sum() == pytest.approx(1.0)
        assert mol.GetNumAtoms() == Chem.AddHs(Chem.MolFromSmiles(mol.GetProp("smiles"))).GetNumAtoms()
        energies = [c.GetDoubleProp("energy") for c in mol.GetConformers()]
        np.testing.assert_allclose(weights, boltzmann_weights(energies), rtol=1e-5)
    # an unspecified stereocentre is fixed to one isomer, identical in every conformer
    chiral = ensembles[2][0]
    assert "@" in chiral.GetProp("smiles")
    for conf in chiral.GetConformers():
        m = Chem.Mol(chiral, confId=conf.GetId())
        Chem.AssignStereochemistryFrom3D(m)
        assert Chem.MolToSmiles(Chem.RemoveHs(m)) == chiral.GetProp("smiles")


def test_build_resumes_after_a_kill_and_extends(built, tmp_path):
    source, out, manifest, exclude = built
    work = tmp_path / "ds"
    work.mkdir()
    for p in out.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    # as if killed while writing shard 1: not in the manifest, a stale temp file around
    state = json.loads((work / "manifest.json").read_text())
    del state["shards"]["shard-00001.sdf.gz"]
    (work / "manifest.json").write_text(json.dumps(state))
    (work / "shard-00001.sdf.gz").unlink()
    stale = work / ".shard-00001.sdf.gz.x1y2z3.tmp"
    stale.write_bytes(b"half a shard")
    kept = (work / "shard-00000.sdf.gz").stat().st_mtime_ns
    logs = []
    again = build_dataset(str(source), work, SMALL, exclude=exclude, shard_size=2, log=logs.append)
    assert "2 shards done, 1 to build" in logs[0]
    assert (work / "shard-00000.sdf.gz").stat().st_mtime_ns == kept
    assert again == manifest | {"shards": again["shards"]}
    assert (work / "shard-00001.sdf.gz").read_bytes() != b"" and not stale.exists()
    assert [m.GetNumConformers() for m, _ in load_ensembles(work)] == [m.GetNumConformers() for m, _ in load_ensembles(out)]
    with pytest.raises(ValueError, match="another output directory"):
        build_dataset(str(source), work, BuildConfig(num_conformers=7), shard_size=2, log=logs.append)


def test_build_with_two_workers_matches_one(built, tmp_path):
    source, out, _, exclude = built
    build_dataset(str(source), tmp_path / "w2", SMALL, exclude=exclude, shard_size=2, workers=2, log=lambda m: None)
    one = [(m.GetProp("smiles"), m.GetConformer(0).GetPositions()) for m, _ in load_ensembles(out)]
    two = [(m.GetProp("smiles"), m.GetConformer(0).GetPositions()) for m, _ in load_ensembles(tmp_path / "w2")]
    assert [s for s, _ in one] == [s for s, _ in two]
    for (_, a), (_, b) in zip(one, two):
        np.testing.assert_allclose(a, b, atol=1e-4)


def main(argv):
    """``confdiff dataset ...`` through the command line."""
    assert argv[0] == "dataset" and COMMANDS["dataset"][0] == "confdiff.cli.dataset"
    return cli_main(argv)


def test_cli_dataset_build(tmp_path):
    source = tmp_path / "in.smi.gz"
    with gzip.open(source, "wt") as fh:
        fh.write("CCO ethanol\nCC[CH2] radical\nCCN ethylamine\n")
    out = tmp_path / "cli"
    assert main(["dataset", "build", str(source), "-o", str(out), "--num-conformers", "3", "--max-molecules", "1"]) == 0
    [(mol, weights)] = list(load_ensembles(out))
    assert mol.GetProp("_Name") == "ethanol"
    assert main(["dataset", "build", str(source), "-o", str(out), "--num-conformers", "3"]) == 0
    assert [m.GetProp("_Name") for m, _ in load_ensembles(out)] == ["ethanol", "ethylamine"]
    assert "radical" in (out / "errors.tsv").read_text()
    assert main(["dataset", "build", str(source), "-o", str(tmp_path / "new"), "--resume"]) == 2


def _geom_pickle(path):
    mol = embed_etkdg(Chem.MolFromSmiles("CCOc1ccccc1"), 3, seed=2).mol
    confs = []
    for k, (w, e) in enumerate(zip([0.5, 0.3, 0.2], [-30.1, -30.099, -30.098])):
        rd = Chem.Mol(mol, confId=k)
        confs.append({"rd_mol": rd, "boltzmannweight": w, "totalenergy": e})
    with open(path, "wb") as fh:
        pickle.dump({"smiles": "CCOc1ccccc1", "conformers": confs}, fh)
    return mol


def test_load_geom_pickle(tmp_path):
    ref = _geom_pickle(tmp_path / "mol.pickle")
    mol, weights = load_geom_pickle(tmp_path / "mol.pickle")
    assert mol.GetNumConformers() == 3 and mol.GetProp("smiles") == "CCOc1ccccc1"
    np.testing.assert_allclose(weights, [0.5, 0.3, 0.2])
    np.testing.assert_allclose(mol.GetConformer(2).GetPositions(), ref.GetConformer(2).GetPositions())
    energies = [c.GetDoubleProp("energy") for c in mol.GetConformers()]
    assert energies[1] - energies[0] == pytest.approx(0.001 * 627.509474, rel=1e-6)
    with open(tmp_path / "empty.pickle", "wb") as fh:
        pickle.dump({"smiles": "C", "conformers": []}, fh)
    with pytest.raises(EnsembleError, match="no conformers"):
        load_geom_pickle(tmp_path / "empty.pickle")
