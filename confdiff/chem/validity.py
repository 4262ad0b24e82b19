"""PoseBusters-style validity checks of many conformers of one molecule at once.

The per-conformer checks of PoseBusters' ``mol`` configuration (Buttenschoen et al., Chem. Sci. 15,
3130, 2024; definitions and thresholds of ``posebusters`` 0.6.5, ``config/mol.yml``), vectorised over
a stack of conformers ``pos (B, N, 3)``, with everything that depends on the molecule alone (the
distance-geometry bounds, the pair lists, the SMARTS matches of flat systems, the stereo elements,
the force field and the energy reference) prepared once by :meth:`ValidityChecker.from_mol`:

- ``bond_lengths``: every heavy-atom bond within RDKit's distance-geometry bounds
  (``GetMoleculeBoundsMatrix``, 1-5 bounds, scaled vdW, triangle smoothing), widened by 25 %:
  ``(d - lb) / lb >= -0.25`` and ``(d - ub) / ub <= 0.25``;
- ``bond_angles``: the same for every heavy-atom 1-3 pair that is not a bond (an angle as a distance);
- ``internal_steric_clash``: every other heavy-atom pair at least 70 % of its lower bound apart;
- ``aromatic_ring_flatness``: every sp2 aromatic 5- and 6-ring within 0.25 A of its best plane;
- ``non_aromatic_ring_non_flatness``: every non-aromatic 6-ring (PoseBusters' five SMARTS) with an
  atom at least 0.05 A off its best plane;
- ``double_bond_flatness``: every ``C(*)(*)=C(*)(*)`` (sp2, three connections) within 0.25 A of a plane;
- ``heavy_atom_contact``: no two heavy atoms three or more bonds apart closer than 2.2 A, or than
  their distance-geometry lower bound where that is smaller (the two oxygens of a P-O-P bridge may
  come to 2.17 A); a contact that 70 % of a lower bound can still allow. Not a check of the ``mol``
  configuration;
- ``stereochemistry``: every tetrahedral centre and double bond that the input specifies has the
  input's configuration (signed volumes, :class:`confdiff.chem.stereo.StereoCheck`); not a check of
  the ``mol`` configuration, but the one that a conformer generator must not break;
- ``internal_energy`` (``energy=True`` only): UFF energy at most 100 times the mean UFF energy of 50
  UFF-minimised ETKDGv3 conformers (random seed 42) of the molecule made from its InChI.

"Distance to the plane" is PoseBusters' own: the largest *signed* distance along the normal that
``numpy.linalg.svd`` returns, reproduced with the same call so that the verdicts agree to the bit.
The molecule-level checks of the configuration (loading, sanitisation, InChI, connectivity,
radicals) do not depend on coordinates and are not repeated per conformer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers
from rdkit.Chem.inchi import MolFromInchi, MolToInchi

from .stereo import StereoCheck

__all__ = ["CHECKS", "LOCAL_CHECKS", "POSEBUSTERS_NAMES", "ValidityChecker", "ValidityError", "flat_groups"]

#: PoseBusters' ``mol`` thresholds (config/mol.yml of posebusters 0.6.5)
BOUNDS_PARAMS = {"set15bounds": True, "scaleVDW": True, "doTriangleSmoothing": True, "useMacrocycle14config": False}
BOND_TOLERANCE = 0.25  # relative widening of the bond-length bounds
ANGLE_TOLERANCE = 0.25  # relative widening of the 1-3 distance bounds
CLASH_TOLERANCE = 0.3  # relative shortening of the lower bound of the other pairs
CONTACT_DISTANCE = 2.2  # A, the closest heavy atoms 3 or more bonds apart may come (or their lower bound)
FLAT_TOLERANCE = 0.25  # A, aromatic rings and double bonds
NON_FLAT_TOLERANCE = 0.05  # A, non-aromatic 6-rings
ENERGY_RATIO = 100.0
ENERGY_CONFORMERS = 50
ENERGY_SEED = 42

_TERMINAL_GROUP = "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
_AROMATIC_RINGS = ("[ar5^2]1[ar5^2][ar5^2][ar5^2][ar5^2]1", "[ar6^2]1[ar6^2][ar6^2][ar6^2][ar6^2][ar6^2]1")
_NON_AROMATIC_RINGS = (
    "[C,O,S,N;R1]~1[C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1]1",
    "[C;R1]~1[C;R1][C,O,S,N;R1]~[C,O,S,N;R1][C;R1][C;R1]1",
    "[C;R1]~1[C;R1][C;R1]~[C;R1][C,O,S,N;R1][C;R1]1",
    "[C;R1]~1[C;R1][C;R1][C,O,S,N;R1]~[C,O,S,N;R1][C;R1]1",
    "[C;R1]~1[C;R1][C,O,S,N;R1][C;R1]~[C;R1][C;R1]1",
)
_DOUBLE_BONDS = ("[C;X3;^2](*)(*)=[C;X3;^2](*)(*)",)

CHECKS = (
    "bond_lengths",
    "bond_angles",
    "internal_steric_clash",
    "aromatic_ring_flatness",
    "non_aromatic_ring_non_flatness",
    "double_bond_flatness",
    "heavy_atom_contact",
    "stereochemistry",
    "internal_energy",
)
#: the checks of the local geometry: bond lengths, angles, rings, double bonds and configurations, which
#: a rotation about a rotatable (acyclic single) bond does not change
LOCAL_CHECKS = ("bond_lengths", "bond_angles", "aromatic_ring_flatness", "non_aromatic_ring_non_flatness",
                "double_bond_flatness", "stereochemistry")
#: our check name -> the column of ``PoseBusters(config="mol").bust(...)`` (stereochemistry has none)
POSEBUSTERS_NAMES = {
    "bond_lengths": "bond_lengths",
    "bond_angles": "bond_angles",
    "internal_steric_clash": "internal_steric_clash",
    "aromatic_ring_flatness": "aromatic_ring_flatness",
    "non_aromatic_ring_non_flatness": "non-aromatic_ring_non-flatness",
    "double_bond_flatness": "double_bond_flatness",
    "internal_energy": "internal_energy",
}


class ValidityError(ValueError):
    """A molecule the checks cannot be prepared for (it does not sanitise, has implicit hydrogens,
    has no UFF parameters, or ETKDG cannot embed its energy reference); the message says which."""


@dataclass(frozen=True)
class _Bounds:
    """Heavy-atom pairs ``(i, j)`` (i < j) with their bounds: ``lower``, ``upper`` (P,)."""

    i: np.ndarray
    j: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def distances(self, pos: np.ndarray) -> np.ndarray:
        """(B, P) distances in conformers ``pos (B, N, 3)``."""
        return np.linalg.norm(pos[:, self.i] - pos[:, self.j], axis=-1)


class ValidityChecker:
    """Per-molecule PoseBusters-style checks of many conformers at once.

    Build with :meth:`from_mol`; :meth:`check` returns one boolean per check and conformer.
    """

    CHECKS: tuple[str, ...] = CHECKS

    def __init__(self, *, num_atoms: int, bonds: _Bounds, angles: _Bounds, clashes: _Bounds,
                 flat: dict[str, list[np.ndarray]], stereo, force_field=None, reference_energy: float | None = None):
        self.num_atoms = num_atoms
        self._bonds, self._angles, self._clashes = bonds, angles, clashes
        self._flat = flat  # check name -> index arrays (G, k), one per match size k
        self._stereo = stereo
        self._force_field = force_field
        self.reference_energy = reference_energy
        self.checks = CHECKS if reference_energy is not None else CHECKS[:-1]

    @classmethod
    def from_mol(cls, mol: Chem.Mol, *, energy: bool = False) -> ValidityChecker:
        """The checks of ``mol`` (explicit hydrogens, the atom order of the conformers; conformers are
        not used). ``energy=True`` also prepares ``internal_energy``: a UFF force field and the mean
        energy of an ETKDG ensemble (about a second for a drug-like molecule, cached by InChI).
        """

        mol = Chem.Mol(mol)
        mol.RemoveAllConformers()
        try:
            with rdBase.BlockLogs():
                Chem.SanitizeMol(mol)
        except Chem.rdchem.MolSanitizeException as err:
            raise ValidityError(f"molecule does not sanitise: {err}") from None
        hidden = [a.GetIdx() for a in mol.GetAtoms() if a.GetTotalNumHs() > 0]
        if hidden:
            raise ValidityError(f"atoms {hidden} carry implicit hydrogens; the checks need explicit ones (Chem.AddHs)")
        bonds, angles, clashes = _pair_bounds(mol)
        flat = {
            "aromatic_ring_flatness": _matches(mol, _AROMATIC_RINGS),
            "non_aromatic_ring_non_flatness": _matches(mol, _NON_AROMATIC_RINGS),
            "double_bond_flatness": _matches(mol, _DOUBLE_BONDS),
        }
        force_field = reference = None
        if energy:
            force_field, reference = _uff(mol), _reference_energy(_inchi(mol))
        return cls(num_atoms=mol.GetNumAtoms(), bonds=bonds, angles=angles, clashes=clashes, flat=flat,
                   stereo=StereoCheck.from_mol(mol), force_field=force_field, reference_energy=reference)

    def check(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Every check of conformers ``pos (B, N, 3)``: ``{name: (B,) bool}``, True = passes.

        A conformer with a non-finite coordinate fails every check.
        """
        pos = np.asarray(pos, dtype=np.float64)
        if pos.ndim != 3 or pos.shape[1:] != (self.num_atoms, 3):
            raise ValueError(f"pos must have shape (B, {self.num_atoms}, 3), got {pos.shape}")
        finite = np.isfinite(pos).all(axis=(1, 2))
        pos = np.where(finite[:, None, None], pos, 0.0)  # keeps the linear algebra below finite
        result = {}
        for name, pairs, upper, tolerance in (("bond_lengths", self._bonds, self._bonds.upper, BOND_TOLERANCE),
                                              ("bond_angles", self._angles, self._angles.upper, ANGLE_TOLERANCE),
                                              ("internal_steric_clash", self._clashes, np.inf, CLASH_TOLERANCE)):
            error = _bound_error(pairs.distances(pos), pairs.lower, upper)  # (B, P)
            result[name] = ~(np.abs(error) > tolerance).any(axis=1)
        contact = np.minimum(CONTACT_DISTANCE, self._clashes.lower)  # (P,)
        result["heavy_atom_contact"] = (self._clashes.distances(pos) >= contact).all(axis=1)
        for name, groups in self._flat.items():
            if name == "non_aromatic_ring_non_flatness":
                ok = [(_plane_distance(pos, g) >= NON_FLAT_TOLERANCE).all(axis=1) for g in groups]
            else:
                ok = [(_plane_distance(pos, g) <= FLAT_TOLERANCE).all(axis=1) for g in groups]
            result[name] = np.logical_and.reduce(ok, axis=0) if ok else np.ones(len(pos), dtype=bool)
        result["stereochemistry"] = self._stereo.matches_input(pos)
        if self.reference_energy is not None:
            result["internal_energy"] = self.energy(pos) / self.reference_energy <= ENERGY_RATIO
        return {name: result[name] & finite for name in self.checks}

    def passes(self, pos: np.ndarray) -> np.ndarray:
        """Which conformers ``pos (B, N, 3)`` pass every check: (B,) bool."""
        return np.logical_and.reduce(list(self.check(pos).values()), axis=0)

    def failures(self, pos: np.ndarray) -> list[list[str]]:
        """The names of the checks each conformer of ``pos (B, N, 3)`` fails (empty: valid)."""
        result = self.check(pos)
        return [[name for name in self.checks if not result[name][b]] for b in range(len(next(iter(result.values()))))]

    def energy(self, pos: np.ndarray) -> np.ndarray:
        """UFF energies (kcal/mol) of conformers ``pos (B, N, 3)``: (B,); needs ``energy=True``."""
        if self._force_field is None:
            raise RuntimeError("this checker was built without energy=True")
        pos = np.asarray(pos, dtype=np.float64).reshape(len(pos), -1)
        return np.array([self._force_field.CalcEnergy(p.tolist()) for p in pos])


# --- one molecule's preparation ----------------------------------------------------------------------


def _pair_bounds(mol: Chem.Mol) -> tuple[_Bounds, _Bounds, _Bounds]:
    """Bond, 1-3 and other heavy-atom pairs with PoseBusters' bounds (``check_geometry``)."""
    n = mol.GetNumAtoms()
    try:
        bounds = rdDistGeom.GetMoleculeBoundsMatrix(mol, **BOUNDS_PARAMS)  # lower triangle: lower bounds
    except RuntimeError as err:
        raise ValidityError(f"RDKit's distance-geometry bounds failed: {err}") from None
    lower, upper = bounds.T.copy(), bounds.copy()  # [i, j] with i < j
    _symmetrise_terminal_groups(mol, lower, upper)
    bonded = Chem.GetAdjacencyMatrix(mol).astype(bool)
    one_three = (bonded.astype(np.int64) @ bonded.astype(np.int64)) > 0  # a shared neighbour (PoseBusters' angles)
    heavy = np.array([a.GetAtomicNum() != 1 for a in mol.GetAtoms()])
    i, j = np.triu_indices(n, k=1)
    keep = heavy[i] & heavy[j]
    i, j = i[keep], j[keep]
    is_bond, is_angle = bonded[i, j], one_three[i, j] & ~bonded[i, j]

    def pairs(mask):
        return _Bounds(i[mask], j[mask], lower[i[mask], j[mask]], upper[i[mask], j[mask]])

    return pairs(is_bond), pairs(is_angle), pairs(~is_bond & ~is_angle)


def _symmetrise_terminal_groups(mol: Chem.Mol, lower: np.ndarray, upper: np.ndarray) -> None:
    """PoseBusters' ``symmetrize_conjugated_terminal_bonds``: the bonds to the terminal O / N of
    nitro, carboxylate, amidine... groups, grouped by element pair, all get the group's smallest
    lower and largest upper bound (in place)."""
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for match in mol.GetSubstructMatches(Chem.MolFromSmarts(_TERMINAL_GROUP)):
        a, b = sorted(match)
        elements = tuple(sorted((mol.GetAtomWithIdx(a).GetSymbol(), mol.GetAtomWithIdx(b).GetSymbol())))
        groups.setdefault(elements, []).append((a, b))
    for pairs in groups.values():
        a, b = np.array(pairs).T
        lower[a, b], upper[a, b] = lower[a, b].min(), upper[a, b].max()


def _matches(mol: Chem.Mol, smarts: tuple[str, ...]) -> list[np.ndarray]:
    """Atom indices (G, k) of the matches of the patterns, one array per match size k.

    Every match is kept, a ring matched by two patterns too: its atom order may differ, and with
    it the sign of the SVD normal that PoseBusters' signed distance depends on.
    """
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for pattern in smarts:
        for match in mol.GetSubstructMatches(Chem.MolFromSmarts(pattern)):
            by_size.setdefault(len(match), []).append(match)
    return [np.array(m, dtype=np.int64) for m in by_size.values()]


def flat_groups(mol: Chem.Mol) -> list[np.ndarray]:
    """The atom groups that ``aromatic_ring_flatness`` and ``double_bond_flatness`` require flat (sp2
    aromatic 5- and 6-rings, ``C(*)(*)=C(*)(*)`` with its substituents): (G, k) arrays, one per size k.
    ``mol`` must be sanitised (the patterns read hybridisation and aromaticity)."""
    return _matches(mol, _AROMATIC_RINGS + _DOUBLE_BONDS)


def _bound_error(d: np.ndarray, lower: np.ndarray, upper: np.ndarray | float) -> np.ndarray:
    """PoseBusters' bound percent error (``tools.stats.bpe``): ``(d - lb) / lb`` below the bounds,
    ``(d - ub) / ub`` above them, 0 within; a clash has no upper bound (``upper = inf``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d < lower, (d - lower) / lower, np.where(d > upper, (d - upper) / upper, 0.0))


def _plane_distance(pos: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """PoseBusters' ``_get_distances_to_plane(X).max()`` for atom groups (G, k) in ``pos (B, N, 3)``: (B, G).

    The largest signed distance along the normal that ``np.linalg.svd`` gives (its sign included).
    """
    x = pos[:, groups]  # (B, G, k, 3)
    x = x - x.mean(axis=2, keepdims=True)
    normal = np.linalg.svd(x)[2][..., -1, :]  # (B, G, 3): the last right-singular vector
    return np.einsum("bgki,bgi->bgk", x, normal).max(axis=2)


def _uff(mol: Chem.Mol):
    """A UFF force field of ``mol`` that takes any positions (``CalcEnergy(list)``).

    Built on all-zero coordinates so that every non-bonded pair is within RDKit's distance cut-off
    (``vdwThresh``) and kept: the energy is then that of a force field built on the conformer itself.
    """
    if not rdForceFieldHelpers.UFFHasAllMoleculeParams(mol):
        raise ValidityError("UFF has no parameters for this molecule; internal_energy cannot be checked")
    probe = Chem.Mol(mol)
    probe.AddConformer(Chem.Conformer(mol.GetNumAtoms()), assignId=True)
    return rdForceFieldHelpers.UFFGetMoleculeForceField(probe)


def _inchi(mol: Chem.Mol) -> str:
    with rdBase.BlockLogs():
        inchi = MolToInchi(mol)
    if not inchi:
        raise ValidityError("no InChI for this molecule; internal_energy cannot be checked")
    return inchi


@functools.lru_cache(maxsize=256)
def _reference_energy(inchi: str) -> float:
    """PoseBusters' ensemble energy (``energy_ratio.get_energies``): the mean UFF energy of
    ``ENERGY_CONFORMERS`` UFF-minimised ETKDGv3 conformers of the molecule read from ``inchi``."""
    with rdBase.BlockLogs():
        mol = Chem.AddHs(MolFromInchi(inchi), addCoords=True)
        Chem.AssignStereochemistryFrom3D(mol, replaceExistingTags=True)
        mol.RemoveAllConformers()
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = ENERGY_SEED
        params.useRandomCoords = True
        params.numThreads = 1
        ids = rdDistGeom.EmbedMultipleConfs(mol, ENERGY_CONFORMERS, params)
        if len(ids) != ENERGY_CONFORMERS:
            raise ValidityError(f"ETKDG embedded {len(ids)} of {ENERGY_CONFORMERS} reference conformers")
        energies = [e for _, e in rdForceFieldHelpers.UFFOptimizeMoleculeConfs(mol, numThreads=1)]
    mean = sum(energies) / len(energies)
    return mean if mean != 0 else 1e-10  # PoseBusters' clipping
