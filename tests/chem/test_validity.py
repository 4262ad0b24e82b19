"""Tests for confdiff.chem.validity: each check on exact cases at its threshold, and agreement with the
``posebusters`` package (``PoseBusters(config="mol")``) on a corpus of valid and broken conformers."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdDistGeom

from confdiff.chem.relax import relax_mmff
from confdiff.chem.torsions import moving_atoms, rotatable_bonds
from confdiff.chem.validity import (CHECKS, LOCAL_CHECKS, POSEBUSTERS_NAMES, ValidityChecker, ValidityError,
                                    flat_groups)


def _mol(smiles: str) -> Chem.Mol:
    return Chem.AddHs(Chem.MolFromSmiles(smiles))


def _etkdg(mol: Chem.Mol, n: int, seed: int = 0) -> np.ndarray:
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    mol = Chem.Mol(mol)
    AllChem.EmbedMultipleConfs(mol, n, params)
    assert mol.GetNumConformers() == n
    return np.stack([c.GetPositions() for c in mol.GetConformers()])


def _heavy_bounds(mol: Chem.Mol, i: int, j: int) -> tuple[float, float]:
    """PoseBusters' (lower, upper) bounds of atoms i < j: RDKit's DG bounds with the mol config's options."""
    bounds = rdDistGeom.GetMoleculeBoundsMatrix(mol, set15bounds=True, scaleVDW=True, doTriangleSmoothing=True,
                                                useMacrocycle14config=False)
    return bounds[j, i], bounds[i, j]


def _rotate(x: np.ndarray, centre: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Points x (..., 3) rotated by ``angle`` about the line through ``centre`` along ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    v = x - centre
    return centre + v * np.cos(angle) + np.cross(k, v) * np.sin(angle) + np.outer(v @ k, k) * (1 - np.cos(angle))


# --- exact cases, no posebusters -----------------------------------------------------------------


def _chain(mol: Chem.Mol, heavy: np.ndarray) -> np.ndarray:
    """One conformer: the given heavy-atom positions, every hydrogen 1.09 A above its heavy atom (the
    distance-geometry checks ignore hydrogens)."""
    pos = np.zeros((mol.GetNumAtoms(), 3))
    pos[: len(heavy)] = heavy
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            parent = atom.GetNeighbors()[0].GetIdx()
            pos[atom.GetIdx()] = pos[parent] + [0.0, 0.0, 1.09]
    return pos


def test_bond_lengths_at_the_widened_bounds():
    mol = _mol("CC")
    checker = ValidityChecker.from_mol(mol)
    lb, ub = _heavy_bounds(mol, 0, 1)
    lengths = [0.75 * lb * 1.001, 0.75 * lb * 0.999, 1.25 * ub * 0.999, 1.25 * ub * 1.001]
    pos = np.stack([_chain(mol, np.array([[0.0, 0, 0], [d, 0, 0]])) for d in lengths])
    assert checker.check(pos)["bond_lengths"].tolist() == [True, False, True, False]


def test_bond_angles_at_the_widened_bounds():
    mol = _mol("CCC")
    checker = ValidityChecker.from_mol(mol)
    lb, ub = _heavy_bounds(mol, 0, 2)
    bond = 1.7  # long enough to reach every case (bond_lengths is not read here)
    pos = []
    for d13 in [0.75 * lb * 1.001, 0.75 * lb * 0.999, 1.25 * ub * 0.999, 1.25 * ub * 1.001]:
        half = np.arcsin(min(d13 / (2 * bond), 1.0))  # half the C-C-C angle that puts C0 and C2 d13 apart
        heavy = np.array([[0.0, 0, 0], [bond * np.sin(half), bond * np.cos(half), 0], [2 * bond * np.sin(half), 0, 0]])
        pos.append(_chain(mol, heavy))
    assert 1.25 * ub * 1.001 < 2 * bond  # every case reachable with straight bonds
    assert checker.check(np.stack(pos))["bond_angles"].tolist() == [True, False, True, False]


def test_internal_steric_clash_below_70_percent_of_the_lower_bound():
    mol = _mol("CCCC")
    checker = ValidityChecker.from_mol(mol)
    lb, _ = _heavy_bounds(mol, 0, 3)
    cases = []
    for d14 in [0.7 * lb * 1.001, 0.7 * lb * 0.999]:  # a flat U: C0 and C3 d14 apart, 1.53 A bonds
        cases.append(_chain(mol, np.array([[0.0, 0, 0], [0, 1.53, 0], [d14, 1.53, 0], [d14, 0, 0]])))
    assert checker.check(np.stack(cases))["internal_steric_clash"].tolist() == [True, False]


def test_heavy_atom_contact_at_2_2_angstrom():
    mol = _mol("CCCC")
    checker = ValidityChecker.from_mol(mol)
    cases = [_chain(mol, np.array([[0.0, 0, 0], [0, 1.53, 0], [d14, 1.53, 0], [d14, 0, 0]])) for d14 in (2.201, 2.199)]
    assert checker.check(np.stack(cases))["heavy_atom_contact"].tolist() == [True, False]
    # a P-O-P bridge: terminal oxygens of the two phosphorus atoms may come to their lower bound (< 2.2 A)
    mol = _mol("OP(=O)(O)OP(=O)(O)O")
    lb, _ = _heavy_bounds(mol, 0, 7)
    assert lb < 2.2
    bounds = rdDistGeom.GetMoleculeBoundsMatrix(mol)
    bounds[0, 7] = lb + 0.01  # upper bound (upper triangle): embed O0 and O7 within 0.01 A of lb
    params = AllChem.ETKDGv3()
    params.randomSeed = 1
    params.SetBoundsMat(bounds)
    assert AllChem.EmbedMolecule(mol, params) == 0
    pos = mol.GetConformer().GetPositions()
    assert np.linalg.norm(pos[0] - pos[7]) < 2.2
    assert ValidityChecker.from_mol(mol).check(pos[None])["heavy_atom_contact"][0]


def _puckered_hexagon(h: float) -> np.ndarray:
    """A regular hexagon (1.4 A sides) with atoms alternately h above and below its plane: every
    atom exactly h from the best plane."""
    angles = np.arange(6) * np.pi / 3
    return np.stack([1.4 * np.cos(angles), 1.4 * np.sin(angles), h * (-1.0) ** np.arange(6)], axis=1)


def _ring_conformer(mol: Chem.Mol, ring: np.ndarray) -> np.ndarray:
    """The six ring atoms (indices 0-5) at ``ring``, each hydrogen 1.09 A out along its atom's radius."""
    pos = np.zeros((mol.GetNumAtoms(), 3))
    pos[:6] = ring
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            parent = atom.GetNeighbors()[0].GetIdx()
            radial = ring[parent] * [1, 1, 0] / np.linalg.norm(ring[parent, :2])
            pos[atom.GetIdx()] = ring[parent] + 1.09 * radial + [0, 0, 0.5 * (atom.GetIdx() % 2)]
    return pos


def test_aromatic_ring_flatness_at_a_quarter_angstrom():
    mol = _mol("c1ccccc1")
    checker = ValidityChecker.from_mol(mol)
    pos = np.stack([_ring_conformer(mol, _puckered_hexagon(h)) for h in (0.0, 0.249, 0.251)])
    assert checker.check(pos)["aromatic_ring_flatness"].tolist() == [True, True, False]


def test_non_aromatic_six_ring_must_not_be_flat():
    mol = _mol("C1CCCCC1")
    checker = ValidityChecker.from_mol(mol)
    pos = np.stack([_ring_conformer(mol, _puckered_hexagon(h)) for h in (0.0, 0.049, 0.051, 0.25)])
    assert checker.check(pos)["non_aromatic_ring_non_flatness"].tolist() == [False, False, True, True]


def test_twisted_double_bond_is_not_flat():
    mol = _mol("CC(C)=C(C)C")  # tetramethylethylene: atoms 1=3 the double bond
    checker = ValidityChecker.from_mol(mol)
    pos = _etkdg(mol, 1)
    side = [3, 4, 5] + [a.GetIdx() for i in (4, 5) for a in mol.GetAtomWithIdx(i).GetNeighbors() if a.GetAtomicNum() == 1]
    twisted = pos.copy()
    twisted[0, side] = _rotate(pos[0, side], pos[0, 1], pos[0, 3] - pos[0, 1], np.pi / 2)
    assert checker.check(np.concatenate([pos, twisted]))["double_bond_flatness"].tolist() == [True, False]


def test_flat_groups_are_the_aromatic_rings_and_double_bonds_with_substituents():
    mol = _mol("C/C=C/c1ccccc1-c1ccc[nH]1")  # C=C, benzene, pyrrole; the C=C's neighbours are included
    groups = {len(g[0]): sorted(sorted(map(int, row)) for row in g) for g in flat_groups(mol)}
    double_bond = sorted([0, 1, 2, 3, *(n.GetIdx() for a in (1, 2) for n in mol.GetAtomWithIdx(a).GetNeighbors()
                                        if n.GetAtomicNum() == 1)])
    assert groups == {6: sorted([list(range(3, 9)), double_bond]), 5: [list(range(9, 14))]}


def test_stereochemistry_of_specified_elements_only():
    mirror = np.array([-1.0, 1.0, 1.0])
    specified = _mol("C[C@H](N)C(=O)O")
    pos = _etkdg(specified, 2)
    assert ValidityChecker.from_mol(specified).check(np.concatenate([pos, pos * mirror]))["stereochemistry"].tolist() == [
        True, True, False, False]
    open_centre = _mol("CC(N)C(=O)O")
    assert ValidityChecker.from_mol(open_centre).check(pos * mirror)["stereochemistry"].all()


def test_internal_energy_against_uff_and_the_ensemble():
    mol = _mol("CC(=O)NCCO")
    checker = ValidityChecker.from_mol(mol, energy=True)
    assert checker.checks == CHECKS
    pos = _etkdg(mol, 2)
    clash = pos[:1].copy()
    clash[0, 0] = pos[0, 5] + 0.3 * (pos[0, 0] - pos[0, 5]) / np.linalg.norm(pos[0, 0] - pos[0, 5])  # C0 onto O5
    stack = np.concatenate([pos, clash])
    probe = Chem.Mol(mol)
    for p in stack:
        conf = Chem.Conformer(len(p))
        for k, x in enumerate(p):
            conf.SetAtomPosition(k, x.tolist())
        probe.AddConformer(conf, assignId=True)
    uff = [AllChem.UFFGetMoleculeForceField(probe, confId=c.GetId()).CalcEnergy() for c in probe.GetConformers()]
    np.testing.assert_allclose(checker.energy(stack), uff, rtol=1e-12)
    assert checker.reference_energy > 0
    assert checker.check(stack)["internal_energy"].tolist() == [True, True, False]


def test_checks_passes_failures_and_batch_independence():
    mol = _mol("O[C@@H]1CCCC[C@H]1/C=C/c1ccccc1")
    checker = ValidityChecker.from_mol(mol)
    assert checker.checks == CHECKS[:-1]  # no internal_energy without energy=True
    pos = _etkdg(mol, 3)
    broken = pos[:1].copy()
    broken[0, 0] += [2.0, 0, 0]  # the hydroxyl O off its carbon
    nan = pos[:1].copy()
    nan[0, 3, 1] = np.nan
    stack = np.concatenate([pos, broken, nan])
    result = checker.check(stack)
    assert set(result) == set(checker.checks)
    assert all(v.shape == (5,) and v.dtype == bool for v in result.values())
    assert checker.passes(stack).tolist() == [True, True, True, False, False]
    failures = checker.failures(stack)
    assert failures[:3] == [[], [], []] and "bond_lengths" in failures[3]
    assert failures[4] == list(checker.checks)  # a non-finite conformer fails everything
    for k in range(len(stack)):  # a conformer's verdicts do not depend on the rest of the stack
        assert {n: v[k] for n, v in result.items()} == {n: v[0] for n, v in checker.check(stack[k:k + 1]).items()}


@pytest.mark.parametrize("smiles, minimise", [("O[C@@H]1CCCC[C@H]1/C=C/c1ccccc1", False),
                                             ("CC(O)(P(=O)([O-])[O-])P(=O)([O-])[O-]", True)])
def test_local_checks_do_not_see_torsion_rotations(smiles, minimise):
    # what the torsions mode cannot change; etidronate's MMFF94 minima fail bond_angles, and so does every rotation
    mol = _mol(smiles)
    checker = ValidityChecker.from_mol(mol)
    conformers = Chem.Mol(mol)
    AllChem.EmbedMultipleConfs(conformers, 3, randomSeed=0)
    if minimise:
        relax_mmff(conformers, [c.GetId() for c in conformers.GetConformers()], max_iters=500)
    pos = np.stack([c.GetPositions() for c in conformers.GetConformers()])
    torsions = rotatable_bonds(mol)
    assert torsions
    rng = np.random.default_rng(0)
    rotated = pos.copy()
    for x in rotated:
        for t, side in zip(torsions, moving_atoms(mol, torsions)):
            x[side] = _rotate(x[side], x[t.v], x[t.v] - x[t.u], rng.uniform(-np.pi, np.pi))
    assert np.abs(rotated - pos).max() > 0.5
    before, after = checker.check(pos), checker.check(rotated)
    assert all(before[name].tolist() == after[name].tolist() for name in LOCAL_CHECKS)
    assert before["bond_angles"].all() != minimise


def test_bad_input_is_refused():
    checker = ValidityChecker.from_mol(_mol("CCO"))
    with pytest.raises(ValueError, match=r"shape \(B, 9, 3\)"):
        checker.check(np.zeros((9, 3)))
    with pytest.raises(ValidityError, match="implicit hydrogens"):
        ValidityChecker.from_mol(Chem.MolFromSmiles("CCO"))
    with pytest.raises(RuntimeError, match="energy=True"):
        checker.energy(np.zeros((1, 9, 3)))


# --- agreement with posebusters ------------------------------------------------------------------


def _terminal(mol: Chem.Mol) -> tuple[int, int, list[int]]:
    """A heavy atom with one heavy neighbour: (atom, neighbour, the atom and its hydrogens)."""
    for atom in mol.GetAtoms():
        heavy = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() > 1]
        if atom.GetAtomicNum() == 6 and len(heavy) == 1:
            hydrogens = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1]
            return atom.GetIdx(), heavy[0], [atom.GetIdx(), *hydrogens]
    raise AssertionError("no terminal carbon")


def _side(mol: Chem.Mol, bond: Chem.Bond) -> list[int]:
    """The atoms on the end-atom side of an acyclic bond."""
    split = Chem.FragmentOnBonds(mol, [bond.GetIdx()], addDummies=False)
    return [f for f in Chem.GetMolFrags(split) if bond.GetEndAtomIdx() in f][0]


def _broken(mol: Chem.Mol, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Broken copies of conformer ``pos (N, 3)``, by what was done to it."""
    out = {}
    a, parent, group = _terminal(mol)
    distance = Chem.GetDistanceMatrix(mol)
    far = [k for k in range(mol.GetNumAtoms()) if distance[a, k] >= 4 and mol.GetAtomWithIdx(k).GetAtomicNum() > 1]
    if far:  # two atoms pushed together: the terminal group moved to 1.6 A of a distant heavy atom
        x = pos.copy()
        shift = pos[far[0]] + 1.6 * (pos[a] - pos[far[0]]) / np.linalg.norm(pos[a] - pos[far[0]]) - pos[a]
        x[group] += shift
        out["clash"] = x
    x = pos.copy()  # a stretched bond: the terminal group 0.6 A further out
    x[group] += 0.6 * (pos[a] - pos[parent]) / np.linalg.norm(pos[a] - pos[parent])
    out["stretched bond"] = x
    grand = next(n.GetIdx() for n in mol.GetAtomWithIdx(parent).GetNeighbors()
                 if n.GetIdx() != a and n.GetAtomicNum() > 1)
    x = pos.copy()  # a bent angle: the terminal group rotated 45 degrees in the angle's plane
    axis = np.cross(pos[a] - pos[parent], pos[grand] - pos[parent])
    x[group] = _rotate(pos[group], pos[parent], axis, np.radians(45))
    out["bent angle"] = x
    aromatic = [r for r in mol.GetRingInfo().AtomRings() if mol.GetAtomWithIdx(r[0]).GetIsAromatic()]
    if aromatic:  # a puckered aromatic ring: its atoms (and their hydrogens) alternately 0.35 A up and down
        # (a chair, not one atom moved: PoseBusters takes the largest *signed* distance to the plane, so
        # an atom moved one way passes whenever the SVD normal happens to point the other way)
        ring, x = aromatic[0], pos.copy()
        centred = pos[list(ring)] - pos[list(ring)].mean(axis=0)
        normal = np.linalg.svd(centred)[2][-1]
        for k, atom in enumerate(ring):
            moved = [atom] + [n.GetIdx() for n in mol.GetAtomWithIdx(atom).GetNeighbors() if n.GetAtomicNum() == 1]
            x[moved] += (-1.0) ** k * 0.35 * normal
        out["puckered ring"] = x
    double = [b for b in mol.GetBonds() if b.GetBondType() == Chem.BondType.DOUBLE and not b.IsInRing()
              and b.GetBeginAtom().GetAtomicNum() == 6 and b.GetEndAtom().GetAtomicNum() == 6]
    if double:  # a twisted double bond: one side rotated 90 degrees about it
        b, c = double[0].GetBeginAtomIdx(), double[0].GetEndAtomIdx()
        side = list(_side(mol, double[0]))
        x = pos.copy()
        x[side] = _rotate(pos[side], pos[b], pos[c] - pos[b], np.pi / 2)
        out["twisted double bond"] = x
    rings = [r for r in mol.GetRingInfo().AtomRings() if len(r) == 6 and not mol.GetAtomWithIdx(r[0]).GetIsAromatic()]
    if rings:  # a flattened cyclohexane: ring atoms projected onto their best plane
        r = list(rings[0])
        centre = pos[r].mean(axis=0)
        normal = np.linalg.svd(pos[r] - centre)[2][-1]
        x = pos.copy()
        x[r] -= np.outer((pos[r] - centre) @ normal, normal)
        out["flat cyclohexane"] = x
    out["inverted centres"] = pos * [-1.0, 1.0, 1.0]  # the mirror image
    out["noise"] = pos + np.random.default_rng(0).normal(scale=0.2, size=pos.shape)
    return out


CORPUS = (  # small molecules: PoseBusters' energy reference (50 ETKDG conformers, UFF) is the slow part
    "Cc1cc(ccc1[N+](=O)[O-])C(=O)[O-]",  # aromatic ring, nitro and carboxylate: the symmetrised terminal bonds
    "C/C=C/[C@@H]1CCCCO1",  # trans double bond, a saturated 6-ring, a stereo centre
)


def _one_conformer(mol: Chem.Mol, pos: np.ndarray) -> Chem.Mol:
    out = Chem.Mol(mol)
    conf = Chem.Conformer(len(pos))
    for k, x in enumerate(pos):
        conf.SetAtomPosition(k, x.tolist())
    out.AddConformer(conf, assignId=True)
    return out


@pytest.mark.parametrize("smiles", CORPUS)
def test_agrees_with_posebusters(smiles):
    posebusters = pytest.importorskip("posebusters")
    mol = _mol(smiles)
    valid = _etkdg(mol, 1)
    broken = _broken(mol, valid[0])
    names = ["etkdg", *broken]
    pos = np.concatenate([valid, np.stack(list(broken.values()))])
    ours = ValidityChecker.from_mol(mol, energy=True).check(pos)
    buster = posebusters.PoseBusters(config="mol")
    theirs = [buster.bust(_one_conformer(mol, p)).iloc[0] for p in pos]
    for check, column in POSEBUSTERS_NAMES.items():
        expected = [r[column] is True or r[column] == True for r in theirs]  # noqa: E712 -- numpy bools
        assert ours[check].tolist() == expected, (check, dict(zip(names, expected)))
    assert all(r["sanitization"] and r["all_atoms_connected"] for r in theirs)
    assert ours["stereochemistry"][0]
    if any(a.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED for a in mol.GetAtoms()):
        assert not ours["stereochemistry"][names.index("inverted centres")]


def test_corpus_exercises_every_check():
    """Between them the corpus molecules fail, and pass, every check (else the agreement means little)."""
    failed = set()
    for smiles in CORPUS:
        mol = _mol(smiles)
        valid = _etkdg(mol, 1)
        checker = ValidityChecker.from_mol(mol)
        assert checker.passes(valid).all()
        for name in checker.failures(np.stack(list(_broken(mol, valid[0]).values()))):
            failed.update(name)
    assert failed == set(CHECKS[:-1])
