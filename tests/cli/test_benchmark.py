"""Tests for ``confdiff benchmark``: the CLI end to end on a tiny reference set written here."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.cli import benchmark
from confdiff.conformers import evaluation

ENSEMBLE_KEYS = {
    "cov_r_mean", "cov_r_median", "mat_r_mean", "mat_r_median", "cov_p_mean", "cov_p_median",
    "mat_p_mean", "mat_p_median", "failures", "confs_per_cpu_s", "valid", "pb_valid", "pb_checked",
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two small molecules, three ETKDG conformers each, grouped by canonical SMILES (no mol_id)."""
    path = tmp_path_factory.mktemp("bench") / "reference.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for seed, smiles in enumerate(["CCCCO", "NCCc1ccccc1"]):
            mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
            params = AllChem.ETKDGv3()
            params.randomSeed = seed
            assert len(AllChem.EmbedMultipleConfs(mol, 3, params)) == 3
            for conf in mol.GetConformers():
                writer.write(mol, confId=conf.GetId())
    return path


def _args(argv):
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_cli_ensemble_mode(reference, tmp_path):
    out, plot = tmp_path / "out.json", tmp_path / "cov.png"
    cmd = [sys.executable, "-m", "confdiff", "benchmark", reference, "--method", "etkdg",
           "--method", f"file:{reference}", "--threshold", "0.75", "--json", out, "--plot", plot, "--seed", "7",
           "--pb-sample", "1"]
    done = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["num_molecules"] == 2
    methods = report["methods"]
    assert list(methods) == ["etkdg", f"file:{reference}"]
    for row in methods.values():
        assert set(row) == ENSEMBLE_KEYS
        assert row["failures"] == 0
        assert 0.0 <= row["cov_r_mean"] <= 1.0 and 0.0 <= row["cov_p_mean"] <= 1.0
    own = methods[f"file:{reference}"]
    assert own["cov_r_mean"] == own["cov_p_mean"] == own["cov_r_median"] == own["cov_p_median"] == 1.0
    for key in ("mat_r_mean", "mat_r_median", "mat_p_mean", "mat_p_median"):
        assert own[key] == pytest.approx(0.0, abs=1e-4)
    assert own["confs_per_cpu_s"] is None  # read, not generated
    for row in methods.values():  # ETKDG conformers pass PoseBusters' checks
        assert row["valid"] == 1.0
        if _has_posebusters():
            assert row["pb_checked"] == 2 and row["pb_valid"] == 1.0
        else:
            assert row["pb_checked"] == 0 and row["pb_valid"] is None
    assert methods["etkdg"]["confs_per_cpu_s"] > 0
    assert plot.stat().st_size > 0
    assert "etkdg" in done.stdout and "COV-R" in done.stdout


def test_bioactive_mode(reference, tmp_path, capsys):
    out = tmp_path / "bio.json"
    argv = ["--bioactive", reference, "-n", "4", "--method", "etkdg", "--method", f"file:{reference}",
            "--json", out, "--max-molecules", "3", "--pb-sample", "0"]
    assert benchmark.run(_args(argv)) == 0
    report = json.loads(out.read_text())
    assert report["num_molecules"] == 3
    own = report["methods"][f"file:{reference}"]
    assert own["within_0_5"] == own["within_1_0"] == own["within_2_0"] == 1.0
    assert own["median_min_rmsd"] == pytest.approx(0.0, abs=1e-4)
    etkdg = report["methods"]["etkdg"]
    assert {"within_0_5", "within_1_0", "within_2_0", "median_min_rmsd"} <= set(etkdg)
    assert etkdg["within_0_5"] <= etkdg["within_1_0"] <= etkdg["within_2_0"]
    assert etkdg["valid"] == 1.0 and etkdg["pb_valid"] is None and etkdg["pb_checked"] == 0


def test_failed_molecules_count_zero(reference, tmp_path, monkeypatch, capsys):
    def broken(mol, num_confs, seed):
        if mol.GetNumAtoms() > 16:  # fails on the larger molecule only
            raise evaluation.MethodUnavailable("deliberately broken")
        return evaluation.generate_etkdg(mol, num_confs, seed)

    monkeypatch.setitem(evaluation.METHODS, "broken", broken)
    out = tmp_path / "out.json"
    argv = [reference, "--method", "broken", "--method", f"file:{reference}", "--json", out, "--pb-sample", "0"]
    assert benchmark.run(_args(argv)) == 0
    row = json.loads(out.read_text())["methods"]["broken"]
    assert row["failures"] == 1
    assert row["cov_r_mean"] <= 0.5 and row["cov_p_mean"] <= 0.5  # one molecule contributes COV 0
    assert "deliberately broken" in capsys.readouterr().err


def _has_posebusters() -> bool:
    import importlib.util

    return importlib.util.find_spec("posebusters") is not None


def test_bad_arguments(reference, capsys):
    assert benchmark.run(_args([reference, "--method", "nonsense"])) == 2
    assert "unknown method" in capsys.readouterr().err
    assert benchmark.run(_args([reference, "--method", "etkdg", "--pb-sample", "-1"])) == 2
    assert benchmark.run(_args(["--method", "etkdg"])) == 2
    assert benchmark.run(_args([reference, "--method", "file:/does/not/exist.sdf"])) == 2


def test_confdiff_methods_take_a_model_and_name_an_unusable_mode(reference, tmp_path, capsys):
    from tests.conformers.test_generator import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "out.json"
    argv = [reference, "--method", "confdiff-torsions", "--method", "confdiff-full", "--model", model, "--json", out,
            "--pb-sample", "0"]
    assert benchmark.run(_args(argv)) == 0
    methods = json.loads(out.read_text())["methods"]
    assert methods["confdiff-torsions"]["failures"] == 0 and methods["confdiff-torsions"]["cov_r_mean"] > 0
    assert methods["confdiff-full"]["failures"] == 2
    assert "not trained for the full-coordinate mode" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_journal(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "resume.json"
    argv = [reference, "--method", "etkdg", "--method", "etkdg-mmff", "--json", out, "--pb-sample", "0"]
    real_run_job = evaluation._run_job
    calls = []

    def interrupted(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job)
        return real_run_job(job)

    monkeypatch.setattr(evaluation, "_run_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run(_args(argv))
    journal = Path(f"{out}.partial.jsonl")
    assert not out.exists() and len(journal.read_text().splitlines()) == 2
    with journal.open("a") as handle:
        handle.write('{"job": "cut short')  # an interruption in the middle of a line

    resumed = []
    monkeypatch.setattr(evaluation, "_run_job", lambda job: resumed.append(job) or real_run_job(job))
    assert benchmark.run(_args(argv)) == 0
    assert len(resumed) == 2 and {(j.method, j.key) for j in resumed}.isdisjoint({(j.method, j.key) for j in calls})
    assert "2 of 4 jobs taken from" in capsys.readouterr().err
    assert not journal.exists()

    # the resumed report equals a report of one uninterrupted run
    monkeypatch.setattr(evaluation, "_run_job", real_run_job)
    whole = tmp_path / "whole.json"
    assert benchmark.run(_args([*argv[:-4], "--json", whole, "--pb-sample", "0"])) == 0
    resumed_report, whole_report = json.loads(out.read_text()), json.loads(whole.read_text())
    for method in ("etkdg", "etkdg-mmff"):
        for key in ("cov_r_mean", "mat_r_mean", "cov_p_mean", "mat_p_mean"):
            assert resumed_report["methods"][method][key] == pytest.approx(whole_report["methods"][method][key])
