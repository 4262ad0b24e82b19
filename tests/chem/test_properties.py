"""GFN2-xTB properties: the printout parser, single points, Boltzmann averages and median errors."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from confdiff.chem.ensembles import BOLTZMANN_KCAL
from confdiff.chem.properties import (
    EV_TO_KCAL,
    EnsembleProperties,
    XtbOutputError,
    XtbProperties,
    conformer_properties,
    ensemble_properties,
    parse_xtb_output,
    property_errors,
    xtb_single_point,
)
from confdiff.chem.relax import HARTREE_TO_KCAL, XtbNotFoundError

needs_xtb = pytest.mark.skipif(shutil.which("xtb") is None, reason="xtb binary not installed")

# `xtb ethanol.xyz --sp` (xtb 6.5.1, GFN2-xTB) on this ETKDG geometry of ethanol
FIXTURE = Path(__file__).parent / "data" / "xtb_gfn2_sp_ethanol.out"
ETHANOL_XYZ = """\
C      0.896716   -0.076803   -0.015051
C     -0.576461   -0.351290    0.059947
O     -1.316233    0.811445    0.204673
H      1.272374    0.145288    1.013042
H      1.047731    0.822598   -0.625478
H      1.447743   -0.965454   -0.344949
H     -0.799527   -0.956474    0.974358
H     -0.859499   -0.942984   -0.822353
H     -1.112844    1.513674   -0.444189
"""
FIXTURE_ENERGY_EH = -11.388604036704
FIXTURE_GAP_EV = 12.670133694249
FIXTURE_DIPOLE_D = 1.839


def _ethanol() -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))  # atom order C, C, O, then the hydrogens
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, line in enumerate(ETHANOL_XYZ.splitlines()):
        symbol, *xyz = line.split()
        assert mol.GetAtomWithIdx(i).GetSymbol() == symbol
        conf.SetAtomPosition(i, Point3D(*map(float, xyz)))
    mol.AddConformer(conf, assignId=True)
    return mol


def test_parser_reads_the_captured_printout():
    props = parse_xtb_output(FIXTURE.read_text())
    assert props.energy == pytest.approx(FIXTURE_ENERGY_EH * HARTREE_TO_KCAL, abs=1e-6)
    assert props.gap == pytest.approx(FIXTURE_GAP_EV * EV_TO_KCAL, abs=1e-6)
    assert props.dipole == pytest.approx(FIXTURE_DIPOLE_D)


def test_parser_takes_the_final_block_and_names_what_is_missing():
    text = FIXTURE.read_text()
    later = (text.replace("-11.388604036704", "-11.400000000000")
             .replace("12.670133694249", "10.000000000000")
             .replace("1.839", "2.500"))
    props = parse_xtb_output(text + later)  # an --opt printout holds the start geometry's block first
    assert props.energy == pytest.approx(-11.4 * HARTREE_TO_KCAL)
    assert props.gap == pytest.approx(10.0 * EV_TO_KCAL)
    assert props.dipole == pytest.approx(2.5)
    with pytest.raises(XtbOutputError, match="dipole"):
        parse_xtb_output(text.replace("molecular dipole:", "molecular multipoles:"))
    with pytest.raises(XtbOutputError, match="TOTAL ENERGY"):
        parse_xtb_output("")


def test_ensemble_average_is_boltzmann_weighted():
    kt = BOLTZMANN_KCAL * 298.15
    confs = [XtbProperties(-100.0, 1.0, 50.0), XtbProperties(-100.0 + kt, 3.0, 60.0)]
    w = np.array([1.0, math.exp(-1.0)]) / (1.0 + math.exp(-1.0))
    ens = ensemble_properties(confs)
    assert ens.energy == pytest.approx(w @ [-100.0, -100.0 + kt])
    assert ens.dipole == pytest.approx(w @ [1.0, 3.0])
    assert ens.gap == pytest.approx(w @ [50.0, 60.0])
    assert ens.min_energy == -100.0
    # a conformer 20 kcal/mol up contributes nothing; the order of conformers does not matter
    high = XtbProperties(-80.0, 9.0, 99.0)
    assert ensemble_properties([high, *confs]).dipole == pytest.approx(ens.dipole)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_properties([])


def test_property_errors_are_medians_over_matched_molecules():
    ref = {k: EnsembleProperties(0.0, 1.0, 10.0, -1.0) for k in "abcd"}
    gen = {
        "a": EnsembleProperties(1.0, 1.5, 10.0, -1.0),
        "b": EnsembleProperties(-2.0, 0.0, 13.0, -1.5),
        "c": EnsembleProperties(4.0, 1.2, 10.5, 0.0),
        "x": EnsembleProperties(100.0, 100.0, 100.0, 100.0),  # not a reference molecule
    }
    err = property_errors(gen, ref)
    assert err["energy"] == pytest.approx(2.0)  # median of 1, 2, 4
    assert err["dipole"] == pytest.approx(0.5)  # median of 0.5, 1.0, 0.2
    assert err["gap"] == pytest.approx(0.5)
    assert err["min_energy"] == pytest.approx(0.5)
    assert err["num_molecules"] == 3 and err["missing"] == 1
    assert math.isnan(property_errors({}, ref)["energy"])


def test_missing_binary_is_a_clear_error():
    with pytest.raises(XtbNotFoundError):
        xtb_single_point(_ethanol(), executable="xtb-not-installed-here")


@needs_xtb
def test_single_point_reproduces_the_fixture():
    props = xtb_single_point(_ethanol())
    assert props.energy == pytest.approx(FIXTURE_ENERGY_EH * HARTREE_TO_KCAL, abs=1e-3)
    assert props.gap == pytest.approx(FIXTURE_GAP_EV * EV_TO_KCAL, abs=1e-2)
    assert props.dipole == pytest.approx(FIXTURE_DIPOLE_D, abs=2e-3)


@needs_xtb
def test_relaxed_properties_lower_the_energy_and_match_a_single_point():
    mol = _ethanol()
    start = xtb_single_point(mol)
    relaxed = conformer_properties(mol, relax=True)
    assert list(relaxed) == [0]
    assert relaxed[0].energy < start.energy - 1.0  # the ETKDG geometry is ~3.6 kcal/mol above the minimum
    again = xtb_single_point(mol)  # the coordinates were updated in place
    assert again.energy == pytest.approx(relaxed[0].energy, abs=1e-4)


@needs_xtb
def test_charge_is_taken_from_the_formal_charges():
    ion = Chem.AddHs(Chem.MolFromSmiles("C[NH3+]"))
    AllChem.EmbedMolecule(ion, randomSeed=3)
    assert xtb_single_point(ion) == xtb_single_point(ion, charge=1, uhf=0)
