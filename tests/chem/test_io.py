"""Reading molecules (every bad-input case of the policy) and writing multi-conformer SDF files."""

import gzip
import io
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from confdiff.chem.embed import embed_etkdg
from confdiff.chem.io import MoleculeInputError, SDFWriter, detect_format, read_molecules


def _molblock(smiles, name, three_d=True, seed=0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles)) if three_d else Chem.MolFromSmiles(smiles)
    if three_d:
        AllChem.EmbedMolecule(mol, randomSeed=seed)
    else:
        AllChem.Compute2DCoords(mol)
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol) + "$$$$\n"


def _mol2(smiles, name):
    """A minimal Tripos MOL2 record (sp3 / aromatic types are enough for these molecules)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    pos = mol.GetConformer().GetPositions()
    atoms = []
    for a, (x, y, z) in zip(mol.GetAtoms(), pos):
        kind = a.GetSymbol() if a.GetSymbol() == "H" else f"{a.GetSymbol()}.{'ar' if a.GetIsAromatic() else '3'}"
        atoms.append(f"{a.GetIdx() + 1} {a.GetSymbol()}{a.GetIdx() + 1} {x:.4f} {y:.4f} {z:.4f} {kind} 1 MOL 0.0")
    bonds = []
    for b in mol.GetBonds():
        kind = "ar" if b.GetIsAromatic() else str(int(b.GetBondTypeAsDouble()))
        bonds.append(f"{b.GetIdx() + 1} {b.GetBeginAtomIdx() + 1} {b.GetEndAtomIdx() + 1} {kind}")
    return "\n".join(
        ["@<TRIPOS>MOLECULE", name, f"{len(atoms)} {len(bonds)} 0 0 0", "SMALL", "NO_CHARGES", "",
         "@<TRIPOS>ATOM", *atoms, "@<TRIPOS>BOND", *bonds, ""]
    )


def test_smiles_string_and_file_with_names(tmp_path):
    [rec] = read_molecules("CCO ethanol")
    assert rec.ok and rec.name == "ethanol" and Chem.MolToSmiles(rec.mol) == "CCO"
    path = tmp_path / "in.smi"
    path.write_text("# a comment\nCCO ethanol\n\nc1ccccc1\tbenzene ring\nCC(C)=O\n")
    records = list(read_molecules(path))
    assert [r.name for r in records] == ["ethanol", "benzene ring", "CC(C)=O"]
    assert [r.index for r in records] == [0, 1, 2]
    assert all(r.ok and r.error is None and not r.warnings for r in records)


def test_double_bond_directions_are_smiles_not_paths(tmp_path):
    [rec] = read_molecules("C/C=C/C trans-butene")
    assert rec.ok and rec.name == "trans-butene" and Chem.MolToSmiles(rec.mol) == "C/C=C/C"
    with pytest.raises(MoleculeInputError, match="no such file"):
        list(read_molecules(str(tmp_path / "missing" / "input")))


def test_invalid_smiles_is_reported_and_reading_goes_on(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("CCO good1\nC1CC broken\nc1cccc1 notkekule\nCCN good2\n")
    records = list(read_molecules(path))
    assert [r.ok for r in records] == [True, False, False, True]
    assert "invalid SMILES" in records[1].error
    assert records[1].describe().startswith("record 2 (broken): invalid SMILES")
    assert "kekulize" in records[2].error


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_empty_file_raises(tmp_path, content):
    path = tmp_path / "empty.smi"
    path.write_text(content)
    with pytest.raises(MoleculeInputError, match="empty"):
        list(read_molecules(path))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(MoleculeInputError, match="no such file"):
        list(read_molecules(tmp_path / "missing.sdf"))
    (tmp_path / "x.xyz").write_text("1\n\nC 0 0 0\n")
    with pytest.raises(MoleculeInputError, match="unknown molecule format"):
        list(read_molecules(tmp_path / "x.xyz"))
    assert detect_format("a/b.SDF.gz") == "sdf" and detect_format("m.mol2") == "mol2"


def test_record_with_no_atoms(tmp_path):
    empty = "nothing\n  RDKit          2D\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n"
    path = tmp_path / "in.sdf"
    path.write_text(_molblock("CCO", "first") + empty + _molblock("CCN", "third"))
    records = list(read_molecules(path))
    assert [r.ok for r in records] == [True, False, True]
    assert records[1].error == "the record has no atoms" and records[1].name == "nothing"


def test_unembeddable_element(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("CCO a\nCC[Fe]CC ferrous\n*CC dummy\nCCN b\n")
    records = list(read_molecules(path))
    assert [r.ok for r in records] == [True, False, False, True]
    assert "Fe cannot be embedded" in records[1].error
    assert "* cannot be embedded" in records[2].error


def test_salt_keeps_largest_organic_fragment_with_warning():
    [rec] = read_molecules("CC(=O)[O-].[Na+] sodium_acetate")
    assert rec.ok and Chem.MolToSmiles(rec.mol) == "CC(=O)[O-]"
    assert rec.mol.GetProp("_Name") == "sodium_acetate"
    assert rec.warnings and "dropped [Na+]" in rec.warnings[0]
    [mix] = read_molecules("O.O.c1ccccc1CCN")
    assert Chem.MolToSmiles(mix.mol) == "NCCc1ccccc1" and "dropped O.O" in mix.warnings[0]


def test_radical_is_refused():
    [rec] = read_molecules("C[CH2] ethyl")
    assert not rec.ok and "radical" in rec.error and "closed-shell" in rec.error


def test_2d_sdf_record_accepted_without_coordinates(tmp_path):
    path = tmp_path / "in.sdf"
    path.write_text(_molblock("C[C@H](N)C(=O)O", "flat", three_d=False) + _molblock("C[C@H](N)C(=O)O", "solid"))
    flat, solid = read_molecules(path)
    assert flat.ok and flat.mol.GetNumConformers() == 0 and flat.warnings == ("2D coordinates ignored",)
    assert Chem.MolToSmiles(flat.mol) == "C[C@H](N)C(=O)O"  # wedge stereo read from the 2D record
    assert solid.ok and solid.mol.GetNumConformers() == 1 and not solid.warnings
    assert solid.mol.GetNumAtoms() == 13  # explicit hydrogens kept


def test_truncated_gzip_reads_records_before_the_break(tmp_path):
    text = "".join(_molblock("CCCCCCCCCC(=O)O", f"m{i}", seed=i) for i in range(40))
    data = gzip.compress(text.encode())
    path = tmp_path / "cut.sdf.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    records = list(read_molecules(path))
    good, last = records[:-1], records[-1]
    assert 5 <= len(good) < 40 and all(r.ok for r in good)
    assert [r.name for r in good] == [f"m{i}" for i in range(len(good))]
    assert not last.ok and "truncated or corrupt gzip" in last.error


def test_mol2_single_and_multi(tmp_path):
    path = tmp_path / "two.mol2"
    path.write_text(_mol2("CCO", "ethanol") + _mol2("c1ccccc1O", "phenol"))
    records = list(read_molecules(path))
    assert [r.name for r in records] == ["ethanol", "phenol"]
    assert [Chem.MolToSmiles(Chem.RemoveHs(r.mol)) for r in records] == ["CCO", "Oc1ccccc1"]
    assert records[0].mol.GetNumConformers() == 1


def test_stdin_with_sniffed_format(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(_molblock("CCO", "piped")))
    [rec] = read_molecules("-")
    assert rec.ok and rec.name == "piped" and rec.mol.GetNumConformers() == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("CCO one\nCCN two\n"))
    assert [r.name for r in read_molecules("-")] == ["one", "two"]


def _read_records(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        return [m for m in Chem.ForwardSDMolSupplier(fh, removeHs=False)]


@pytest.mark.parametrize("suffix", [".sdf", ".sdf.gz"])
def test_sdf_writer_atomic_multi_conformer_records(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    a = embed_etkdg(Chem.MolFromSmiles("CCCO"), 3, seed=1).mol
    b = embed_etkdg(Chem.MolFromSmiles("CCN"), 2, seed=1).mol
    with SDFWriter(path) as writer:
        writer.write(a, name="propanol", props={"generator": "etkdg", "seed": 1},
                     conf_props=[{"energy": e} for e in (1.5, 2.5, 3.5)])
        writer.write(b, conf_ids=[1], name="ethylamine")
        assert not path.exists()  # only the temporary file exists until close
    records = _read_records(path)
    assert [m.GetProp("_Name") for m in records] == ["propanol"] * 3 + ["ethylamine"]
    assert [int(m.GetProp("conformer_index")) for m in records] == [0, 1, 2, 0]
    assert [m.GetProp("energy") for m in records[:3]] == ["1.5", "2.5", "3.5"]
    assert records[0].GetProp("generator") == "etkdg"
    np.testing.assert_allclose(records[1].GetConformer().GetPositions(), a.GetConformer(1).GetPositions(), atol=1e-4)
    np.testing.assert_allclose(records[3].GetConformer().GetPositions(), b.GetConformer(1).GetPositions(), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_sdf_writer_atomic_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.sdf"
    path.write_text("old\n")
    mol = embed_etkdg(Chem.MolFromSmiles("CCO"), 1).mol
    with pytest.raises(RuntimeError):
        with SDFWriter(path) as writer:
            writer.write(mol)
            raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.sdf"]
    with pytest.raises(ValueError, match="conf_props"):
        with SDFWriter(tmp_path / "x.sdf") as writer:
            writer.write(mol, conf_props=[{}, {}])


@pytest.mark.parametrize("suffix", [".sdf", ".sdf.gz"])
def test_sdf_writer_stream_survives_sigkill(tmp_path, suffix):
    path = tmp_path / f"stream{suffix}"
    script = textwrap.dedent(f"""
        import sys, time
        from rdkit import Chem
        from confdiff.chem.embed import embed_etkdg
        from confdiff.chem.io import SDFWriter
        writer = SDFWriter({str(path)!r}, mode="stream")
        for i, smi in enumerate(["CCO", "CCCN", "c1ccccc1C"]):
            writer.write(embed_etkdg(Chem.MolFromSmiles(smi), 2, seed=i).mol, name=f"mol{{i}}")
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    records = list(read_molecules(path))
    assert [r.name for r in records] == ["mol0"] * 2 + ["mol1"] * 2 + ["mol2"] * 2
    assert all(r.ok and r.mol.GetNumConformers() == 1 for r in records)
