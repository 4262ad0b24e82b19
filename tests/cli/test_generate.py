"""``confdiff generate``: formats, stereo and atom order in the SDF, errors, resume after SIGKILL, shards."""

import argparse
import gzip
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from tests.conformers.test_generator import STEREO_SMILES, graph_of, save_tiny_model, stereo_from_3d

from confdiff.cli import generate as generate_command
from confdiff.cli import main
from confdiff.cli.generate import completed_records

REPO = Path(__file__).resolve().parents[2]
N = 4
STEPS = "3"
MOLECULES = {  # name -> SMILES, drug-like and quick
    "stereo": STEREO_SMILES,
    "anisole amide": "CCOc1ccccc1C(N)=O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "morpholine": "OCCN1CCOCC1",
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def molblock(smiles: str, name: str, seed: int = 0) -> str:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol) + "$$$$\n"


BROKEN = Chem.MolToMolBlock(Chem.MolFromSmiles("CC(C)(C)(C)(C)C", sanitize=False), kekulize=False)


def generate(model_path, *argv) -> int:
    return main(["generate", "--model", model_path, "--steps", STEPS, "-n", str(N), "--no-progress", *argv])


def read_sdf(path) -> list[Chem.Mol]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        return list(Chem.ForwardSDMolSupplier(fh, removeHs=False))


def by_record(mols) -> dict[int, list[Chem.Mol]]:
    out: dict[int, list[Chem.Mol]] = {}
    for mol in mols:
        out.setdefault(int(mol.GetProp("record")), []).append(mol)
    return out


def test_cli_on_a_multi_molecule_sdf_with_a_broken_record(tmp_path, model_path):
    """A subprocess run: counts, names, atom order, stereo, properties and the error report."""
    names = list(MOLECULES)
    blocks = [molblock(MOLECULES[names[0]], names[0]), "broken\n" + BROKEN.split("\n", 1)[1] + "$$$$\n",
              *(molblock(MOLECULES[k], k, seed=3) for k in names[1:])]
    (tmp_path / "in.sdf").write_text("".join(blocks))
    inputs = [m for m in Chem.SDMolSupplier(str(tmp_path / "in.sdf"), removeHs=False)]
    proc = subprocess.run(
        [sys.executable, "-m", "confdiff", "generate", "in.sdf", "-n", str(N), "-o", "out.sdf", "--seed", "11",
         "--model", model_path, "--steps", STEPS, "--errors", "errors.tsv"],
        cwd=tmp_path, capture_output=True, text=True, check=False, env=child_env(), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "4 molecules, 16 conformers, 1 failed" in proc.stderr
    out = read_sdf(tmp_path / "out.sdf")
    assert all(m is not None for m in out) and len(out) == 4 * N
    groups = by_record(out)
    assert sorted(groups) == [1, 3, 4, 5]
    for record, confs in groups.items():
        source = inputs[record - 1]
        name = source.GetProp("_Name")
        assert [m.GetProp("_Name") for m in confs] == [name] * N
        indices = [int(m.GetProp("conformer_index")) for m in confs]  # draws; failing ones were replaced
        assert len(indices) == N and indices == sorted(set(indices))
        assert {m.GetProp("seed") for m in confs} == {"11"} and {m.GetProp("ensemble_size") for m in confs} == {str(N)}
        assert all(graph_of(m) == graph_of(source) for m in confs)  # the input's atom order
        expected = Chem.MolToSmiles(Chem.MolFromSmiles(MOLECULES[name]))
        assert all(stereo_from_3d(m, -1) == expected for m in confs)
    errors = (tmp_path / "errors.tsv").read_text().splitlines()
    assert errors[0] == "record\tname\treason" and len(errors) == 2
    record, name, reason = errors[1].split("\t")
    assert (record, name) == ("2", "broken") and "valence" in reason


# Runs `confdiff generate` with SDFWriter.write held at the start of the second molecule: that
# molecule is sampled but not written when the marker file appears, and stays so until the parent's
# SIGKILL, whatever the machine's speed.
HOLD_BEFORE_SECOND_MOLECULE = """
import sys, time
from confdiff.chem.io import SDFWriter
from confdiff.cli import main

marker, argv = sys.argv[1], sys.argv[2:]
write = SDFWriter.write

def write_or_hold(self, *args, **kwargs):
    if self.num_molecules == 1:
        open(marker, "w").close()
        time.sleep(3600)
    return write(self, *args, **kwargs)

SDFWriter.write = write_or_hold
sys.exit(main(argv))
"""


def child_env() -> dict:
    """The environment of a `confdiff` subprocess: one thread, this checkout's package first."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def test_sigkill_leaves_a_valid_sdf_and_resume_completes_it(tmp_path, model_path):
    smiles = ["CCOc1ccccc1C(N)=O", "CC(=O)Nc1ccc(O)cc1", "OCCN1CCOCC1", "CC(C)Cc1ccccc1", "COc1ccc(CCN)cc1",
              "CCN(CC)C(=O)c1ccccc1", "OC(=O)CCc1ccccc1", "CC(C)NCC(O)c1ccccc1"]
    (tmp_path / "lib.smi").write_text("".join(f"{s} mol{k}\n" for k, s in enumerate(smiles)))
    # --batch-size 80: every molecule is sampled, and written, on its own
    common = ["-n", str(N), "--seed", "5", "--model", model_path, "--steps", STEPS, "--batch-size", "80"]
    out, marker = tmp_path / "out.sdf.gz", tmp_path / "holding"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_BEFORE_SECOND_MOLECULE, str(marker), "generate",
                                 "lib.smi", *common, "-o", out.name], cwd=tmp_path, stderr=stderr, env=child_env())
    try:
        deadline = time.monotonic() + 300  # a guard against a hung child only: the kill waits for the marker
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        held = marker.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert held, f"the run never reached its second molecule:\n{(tmp_path / 'stderr.txt').read_text()}"
    assert proc.returncode == -signal.SIGKILL
    partial = by_record(read_sdf(out))
    assert sorted(partial) == [1] and len(partial[1]) == N and all(m is not None for m in partial[1])

    assert main(["generate", str(tmp_path / "lib.smi"), *common, "-o", str(out), "--resume", "--no-progress"]) == 0
    final = by_record(read_sdf(out))
    assert sorted(final) == list(range(1, len(smiles) + 1)) and all(len(c) == N for c in final.values())
    assert [confs[0].GetProp("_Name") for _, confs in sorted(final.items())] == [f"mol{k}" for k in range(len(smiles))]
    # the resumed records are those of an uninterrupted run (conformer i depends on the seed and i only)
    assert main(["generate", "--smiles", smiles[-1], *common, "-o", str(tmp_path / "ref.sdf"), "--no-progress"]) == 0
    np.testing.assert_allclose(np.stack([m.GetConformer().GetPositions() for m in final[len(smiles)]]),
                               np.stack([m.GetConformer().GetPositions() for m in read_sdf(tmp_path / "ref.sdf")]),
                               atol=2e-4)


@pytest.mark.parametrize("suffix", [".sdf", ".sdf.gz"])
def test_completed_records_cuts_a_half_written_tail(tmp_path, suffix):
    def records(record, size, k):
        mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        return Chem.MolToMolBlock(mol) + f">  <record>\n{record}\n\n>  <ensemble_size>\n{size}\n\n$$$$\n"

    whole = records(1, 2, 0) + records(1, 2, 1) + records(2, 1, 2)
    torn = records(3, 2, 3) + records(3, 2, 4)[:200]  # molecule 3: one record and a half
    path = tmp_path / f"out{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(whole.encode()) + gzip.compress(torn.encode())[:-30])
    else:
        path.write_text(whole + torn)
    assert completed_records(path) == {1, 2}
    text = gzip.decompress(path.read_bytes()).decode() if suffix.endswith(".gz") else path.read_text()
    assert text == whole
    (tmp_path / "foreign.sdf").write_text(records(1, 1, 0).replace("record", "id"))
    with pytest.raises(ValueError, match="not an output of confdiff generate"):
        completed_records(tmp_path / "foreign.sdf")


MOL2 = """@<TRIPOS>MOLECULE
ethanol
 9 8 0 0 0
SMALL
NO_CHARGES

@<TRIPOS>ATOM
1 C1 -0.8883 0.1670 -0.0273 C.3 1 MOL 0.0
2 C2 0.4658 -0.5116 -0.0368 C.3 1 MOL 0.0
3 O1 1.4311 0.3229 0.5867 O.3 1 MOL 0.0
4 H1 -0.8487 1.1175 -0.5695 H 1 MOL 0.0
5 H2 -1.6471 -0.4704 -0.5054 H 1 MOL 0.0
6 H3 -1.1985 0.3948 1.0049 H 1 MOL 0.0
7 H4 0.7961 -0.7191 -1.0635 H 1 MOL 0.0
8 H5 0.4064 -1.4631 0.5090 H 1 MOL 0.0
9 H6 1.4832 1.1624 0.1022 H 1 MOL 0.0
@<TRIPOS>BOND
1 1 2 1
2 2 3 1
3 1 4 1
4 1 5 1
5 1 6 1
6 2 7 1
7 2 8 1
8 3 9 1
"""


def test_input_formats_stdin_stdout_and_smiles(tmp_path, model_path, monkeypatch, capsys):
    (tmp_path / "a.smi").write_text("CC(=O)Nc1ccc(O)cc1 paracetamol\n")
    (tmp_path / "b.mol2").write_text(MOL2)
    (tmp_path / "c.sdf.gz").write_bytes(gzip.compress(molblock("OCCN1CCOCC1", "morpholine").encode()))
    for source, name in (("a.smi", "paracetamol"), ("b.mol2", "ethanol"), ("c.sdf.gz", "morpholine")):
        out = tmp_path / f"{source}.out.sdf.gz"
        assert generate(model_path, str(tmp_path / source), "-o", str(out)) == 0
        mols = read_sdf(out)
        assert len(mols) == N and {m.GetProp("_Name") for m in mols} == {name}
        assert all(a.GetNumImplicitHs() == 0 for m in mols for a in m.GetAtoms())  # hydrogens explicit
    # SMILES on the command line (E/Z slashes included), then stdin, to stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO("CCO ethanol\n"))
    capsys.readouterr()
    assert generate(model_path, "--smiles", "F/C=C/CCl", "--smiles", "CCN", "-", "--relax", "mmff") == 0
    supplier = Chem.SDMolSupplier()
    supplier.SetData(capsys.readouterr().out, removeHs=False)
    mols = list(supplier)
    assert [m.GetProp("_Name") for m in mols[::N]] == ["F/C=C/CCl", "CCN", "ethanol"]
    assert [m.GetProp("record") for m in mols[::N]] == ["1", "2", "3"]
    assert all(float(m.GetProp("energy")) < 100 for m in mols)
    assert all(stereo_from_3d(m, -1) == "F/C=C/CCl" for m in mols[:N])


def test_each_conformer_of_an_open_stereocentre_names_its_stereoisomer(tmp_path, model_path):
    out = tmp_path / "out.sdf"
    assert generate(model_path, "--smiles", "CCC(C)O", "--smiles", "CCO", "-o", str(out)) == 0
    mols = read_sdf(out)
    assert all(m.GetProp("stereoisomer") == stereo_from_3d(m, -1) for m in mols[:N])  # read from each 3D structure
    assert not any(m.HasProp("stereoisomer") for m in mols[N:])  # ethanol leaves nothing open


def test_batch_size_does_not_change_the_conformers(tmp_path, model_path):
    (tmp_path / "in.smi").write_text(f"{STEREO_SMILES} a\nCCOc1ccccc1C(N)=O b\n")
    coords = []
    for size in ("60", "100000"):
        out = tmp_path / f"out{size}.sdf"
        assert generate(model_path, str(tmp_path / "in.smi"), "-o", str(out), "--seed", "2", "--batch-size", size) == 0
        coords.append(np.concatenate([m.GetConformer().GetPositions() for m in read_sdf(out)]))
    # float32 rounding of the batched model, amplified by the MMFF94 guidance steps (scale 3): 4e-4 A seen
    np.testing.assert_allclose(coords[0], coords[1], atol=2e-3)


def test_shards_split_a_library(tmp_path, model_path, monkeypatch):
    (tmp_path / "lib.smi").write_text("".join(f"{s} {k}\n" for k, s in enumerate(MOLECULES.values())))
    for shard in (0, 1):
        assert generate(model_path, str(tmp_path / "lib.smi"), "--shard", f"{shard}/2",
                        "-o", str(tmp_path / f"part{shard}.sdf")) == 0
    parts = [sorted(by_record(read_sdf(tmp_path / f"part{k}.sdf"))) for k in (0, 1)]
    assert parts == [[1, 3], [2, 4]]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert generate(model_path, str(tmp_path / "lib.smi"), "--shard", "auto", "-o", str(tmp_path / "auto-{shard}.sdf")) == 0
    assert sorted(by_record(read_sdf(tmp_path / "auto-1.sdf"))) == [2, 4]


def test_usage_and_input_errors(tmp_path, model_path, capsys):
    (tmp_path / "empty.sdf").write_text("")
    assert generate(model_path, str(tmp_path / "empty.sdf"), "-o", str(tmp_path / "o.sdf")) == 1
    assert "empty input" in capsys.readouterr().err
    assert generate(model_path, str(tmp_path / "missing.sdf")) == 2
    (tmp_path / "in.smi").write_text("CCO\n")
    (tmp_path / "exists.sdf").write_text("x")
    assert generate(model_path, str(tmp_path / "in.smi"), "-o", str(tmp_path / "exists.sdf")) == 2
    assert "--resume" in capsys.readouterr().err
    assert generate(model_path, str(tmp_path / "in.smi"), "--energy-window", "3") == 2
    assert generate(model_path, str(tmp_path / "in.smi"), "--mode", "refine", "--polish-steps", "5") == 2
    assert "needs mode='torsions'" in capsys.readouterr().err
    assert generate(model_path, str(tmp_path / "in.smi"), "--diverse-fraction", "0") == 2
    assert "diverse_fraction must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "in.smi"), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "no model checkpoint" in capsys.readouterr().err


def test_mode_option(tmp_path, model_path, capsys):
    (tmp_path / "in.smi").write_text(f"{STEREO_SMILES} a\n")
    out = tmp_path / "torsions.sdf"
    assert generate(model_path, str(tmp_path / "in.smi"), "-o", str(out), "--mode", "torsions", "--seed", "1") == 0
    mols = read_sdf(out)
    assert len(mols) == N
    assert all(stereo_from_3d(m, -1) == Chem.MolToSmiles(Chem.MolFromSmiles(STEREO_SMILES)) for m in mols)
    # the tiny model was not trained for the full mode: a usage error naming the reason
    assert generate(model_path, str(tmp_path / "in.smi"), "-o", str(tmp_path / "full.sdf"), "--mode", "full") == 2
    assert "not trained for the full-coordinate mode" in capsys.readouterr().err
    assert not (tmp_path / "full.sdf").exists()


BUGGY_SCORE_MODEL = """
import sys
from confdiff.cli import main
from confdiff.nn.score_model import ScoreModel

def forward(self, batch):
    raise RuntimeError("deliberate bug in the score model")

ScoreModel.forward = forward
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_in_the_score_model_is_a_traceback_and_a_failed_run_not_per_molecule_failures(tmp_path, model_path):
    (tmp_path / "lib.smi").write_text("CCO ethanol\nCC(=O)Nc1ccc(O)cc1 paracetamol\n")
    cmd = [sys.executable, "-c", BUGGY_SCORE_MODEL, "generate", "lib.smi", "-o", "out.sdf", "--model", model_path,
           "--steps", STEPS, "-n", str(N), "--no-progress", "--errors", "errors.tsv"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "RuntimeError: deliberate bug in the score model" in proc.stderr
    assert proc.stderr.count("deliberate bug") <= 2  # once in the traceback, not once per molecule
    errors = tmp_path / "errors.tsv"
    assert not errors.exists() or len(errors.read_text().splitlines()) <= 1  # no molecule blamed


def test_guidance_and_validity_options_reach_the_generator(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    generate_command.add_arguments(parser)
    args = parser.parse_args(["--smiles", "CCO", "--guidance", "repulsion", "--guidance-scale", "2",
                              "--no-validity-gate", "--threads", "3", "--polish-steps", "7",
                              "--diverse-fraction", "0.6", "--keep-unpolished", "--small-ring-torsions"])
    assert (args.guidance, args.guidance_scale) == ("repulsion", 2.0)
    seen = {}

    class Recorder:
        def __init__(self, model, **kwargs):
            seen.update(kwargs)

        def generate_many(self, mols, n, seed=None):
            return iter(())

    monkeypatch.setattr("confdiff.conformers.generator.ConformerGenerator", Recorder)
    args.output = str(tmp_path / "out.sdf")
    assert generate_command.run(args) == 0
    assert (seen["guidance"], seen["guidance_scale"]) == ("repulsion", 2.0)
    assert seen["validity_gate"] is False and seen["num_threads"] == 3
    assert (seen["polish_steps"], seen["diverse_fraction"], seen["keep_unpolished"]) == (7, 0.6, True)
    assert seen["small_ring_torsions"] is True


def test_the_seed_options_default_to_the_generators():
    from confdiff.conformers.generator import SMALL_RING_TORSIONS

    parser = argparse.ArgumentParser()
    generate_command.add_arguments(parser)
    assert parser.parse_args(["--smiles", "CCO"]).small_ring_torsions is SMALL_RING_TORSIONS


def test_guidance_choices_are_the_generators():
    from confdiff.conformers.physics import GUIDANCE_CHOICES

    assert generate_command.GUIDANCE_CHOICES == GUIDANCE_CHOICES
    parser = argparse.ArgumentParser()
    generate_command.add_arguments(parser)
    assert parser.parse_args(["--smiles", "CCO", "--guidance", "mmff-screened"]).guidance == "mmff-screened"
