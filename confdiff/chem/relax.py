"""Conformer relaxation: MMFF94 in RDKit, GFN-FF / GFN2-xTB through the ``xtb`` binary.

Both relax the conformers of ``mol`` in place and return energies in kcal/mol.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from .io import mol_name

__all__ = [
    "HARTREE_TO_KCAL",
    "XTB_TIMEOUT",
    "RelaxationError",
    "XtbError",
    "XtbNotFoundError",
    "XtbRun",
    "relax_conformers",
    "relax_mmff",
    "relax_xtb",
    "run_xtb",
]

HARTREE_TO_KCAL = 627.509474063  # kcal/mol per Hartree (CODATA 2018)
XTB_METHODS = {"gfnff": ["--gfnff"], "gfn2": ["--gfn", "2"]}
XTB_TIMEOUT = 600.0  # seconds one xtb run may take before it is killed (a hung xtb must not hang a run)


class RelaxationError(RuntimeError):
    """A molecule that a force field or xtb could not relax, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot relax {name}: {reason}")
        self.name = name
        self.reason = reason


class XtbError(RuntimeError):
    """An xtb run that failed for a molecule (non-zero exit, a timeout, output it did not write), with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"xtb failed for {name}: {reason}")
        self.name = name
        self.reason = reason


class XtbNotFoundError(FileNotFoundError):
    """The ``xtb`` executable is not on PATH (Debian/Ubuntu: ``apt install xtb``; or conda-forge)."""

    def __init__(self, executable: str = "xtb") -> None:
        super().__init__(
            f"the '{executable}' executable was not found on PATH; install it "
            "(Debian/Ubuntu: apt install xtb, conda: conda install -c conda-forge xtb) or use --relax mmff"
        )


def relax_mmff(mol: Chem.Mol, conf_ids: list[int] | None = None, max_iters: int = 2000) -> list[float]:
    """MMFF94 minimisation of the given conformers (all when None), in place.

    Returns the final MMFF94 energy of each conformer in kcal/mol, in the order of ``conf_ids``.
    Raises ``RelaxationError`` when MMFF94 has no parameters for the molecule.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is None:
        raise RelaxationError(mol_name(mol), "MMFF94 has no parameters for some atom types")
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    energies = []
    for cid in ids:
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid)
        if ff is None:
            raise RelaxationError(mol_name(mol), f"MMFF94 force field setup failed for conformer {cid}")
        ff.Minimize(maxIts=max_iters)
        energies.append(float(ff.CalcEnergy()))
    return energies


def _write_xyz(path: Path, mol: Chem.Mol, conf_id: int) -> None:
    pos = mol.GetConformer(conf_id).GetPositions()
    lines = [str(mol.GetNumAtoms()), mol_name(mol)]
    lines += [f"{a.GetSymbol()} {x:.8f} {y:.8f} {z:.8f}" for a, (x, y, z) in zip(mol.GetAtoms(), pos)]
    path.write_text("\n".join(lines) + "\n")


def _read_xyz(path: Path, n_atoms: int) -> tuple[np.ndarray, float]:
    """Coordinates (n_atoms, 3) and the energy (Hartree) from xtb's ``xtbopt.xyz``."""
    lines = path.read_text().splitlines()
    fields = lines[1].split()
    energy = float(fields[fields.index("energy:") + 1])
    pos = np.array([[float(v) for v in line.split()[1:4]] for line in lines[2 : 2 + n_atoms]])
    if pos.shape != (n_atoms, 3):
        raise ValueError(f"{path} holds {len(pos)} atoms, expected {n_atoms}")
    return pos, energy


@dataclass(frozen=True)
class XtbRun:
    """What one xtb run left: its printout and, after ``--opt``, the optimised coordinates
    ``(N, 3)`` (Angstrom) and energy (Hartree) of ``xtbopt.xyz``."""

    stdout: str
    optimised: tuple[np.ndarray, float] | None


def run_xtb(
    mol: Chem.Mol,
    conf_id: int = -1,
    flags: Sequence[str] = (),
    *,
    charge: int | None = None,
    uhf: int | None = None,
    threads: int = 1,
    executable: str = "xtb",
    timeout: float | None = XTB_TIMEOUT,
) -> XtbRun:
    """Run ``xtb input.xyz FLAGS --chrg C --uhf U`` on one conformer in a temporary directory.

    The one xtb runner of the package. charge : total charge, default the sum of formal charges;
    uhf : unpaired electrons, default the molecule's radical electrons; timeout : seconds before
    xtb is killed (None: no limit). Raises ``XtbNotFoundError`` when the binary is missing and
    ``XtbError`` when xtb exits non-zero or runs past ``timeout``.
    """
    binary = shutil.which(executable)
    if binary is None:
        raise XtbNotFoundError(executable)
    charge = Chem.GetFormalCharge(mol) if charge is None else charge
    uhf = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms()) if uhf is None else uhf
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_STACKSIZE="1G")
    with tempfile.TemporaryDirectory(prefix="confdiff-xtb-") as tmp:
        work = Path(tmp)
        _write_xyz(work / "input.xyz", mol, mol.GetConformer(conf_id).GetId())
        cmd = [binary, "input.xyz", *flags, "--chrg", str(charge), "--uhf", str(uhf)]
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise XtbError(mol_name(mol), f"xtb {' '.join(flags)} ran past the {timeout:g} s timeout and was killed") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise XtbError(mol_name(mol), f"xtb {' '.join(flags)} exited with {proc.returncode}: {' | '.join(tail)}")
        out = work / "xtbopt.xyz"
        optimised = _read_xyz(out, mol.GetNumAtoms()) if out.exists() else None
    return XtbRun(proc.stdout, optimised)


def relax_xtb(
    mol: Chem.Mol,
    conf_id: int = -1,
    *,
    method: str = "gfnff",
    charge: int | None = None,
    uhf: int | None = None,
    threads: int = 1,
    executable: str = "xtb",
    timeout: float | None = XTB_TIMEOUT,
) -> float:
    """Optimise one conformer with ``xtb --opt`` (GFN-FF or GFN2-xTB), in place.

    charge : total charge, default the sum of formal charges.
    uhf : number of unpaired electrons, default the molecule's radical electrons.
    Returns the optimised total energy in kcal/mol. Raises ``XtbNotFoundError`` when the binary is
    missing and ``RelaxationError`` when xtb fails or runs past ``timeout`` seconds.
    """
    if method not in XTB_METHODS:
        raise ValueError(f"method must be one of {sorted(XTB_METHODS)}, got {method!r}")
    conf = mol.GetConformer(conf_id)
    try:
        run = run_xtb(mol, conf.GetId(), ["--opt", *XTB_METHODS[method]], charge=charge, uhf=uhf, threads=threads,
                      executable=executable, timeout=timeout)
    except XtbError as err:
        raise RelaxationError(mol_name(mol), f"xtb {method}: {err.reason}") from None
    if run.optimised is None:
        raise RelaxationError(mol_name(mol), f"xtb {method} wrote no optimised geometry")
    pos, energy = run.optimised
    for i, (x, y, z) in enumerate(pos):
        conf.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
    return energy * HARTREE_TO_KCAL


def relax_conformers(mol: Chem.Mol, method: str, conf_ids: Sequence[int] | None = None, *, threads: int = 1) -> list[float]:
    """Relax the given conformers (all when None) in place with ``"mmff"``, ``"gfnff"`` or ``"gfn2"``;
    energies in kcal/mol in the order of ``conf_ids``."""
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    if method == "mmff":
        return relax_mmff(mol, ids)
    return [relax_xtb(mol, cid, method=method, threads=threads) for cid in ids]
