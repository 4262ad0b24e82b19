"""GFN2-xTB properties of conformers and ensembles, and the ensemble-property errors of the GEOM protocol.

Per conformer (``xtb --sp`` with GFN2-xTB): total energy E and HOMO-LUMO gap (kcal/mol), dipole
moment norm mu (Debye). Per ensemble: Boltzmann averages <E>, <mu>, <gap> at 298.15 K with weights
from the GFN2 energies, and the lowest energy Emin. Between generated and reference ensembles: the
median over molecules of the absolute differences, as torsional diffusion reports them (Jing et al.,
NeurIPS 2022, Sec. 5.2 and Table 3, where generated conformers are first relaxed with GFN2-xTB).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from .ensembles import boltzmann_weights
from .io import mol_name
from .relax import HARTREE_TO_KCAL, XTB_TIMEOUT, RelaxationError, XtbError, relax_xtb, run_xtb

__all__ = [
    "EV_TO_KCAL",
    "PROPERTY_NAMES",
    "EnsembleProperties",
    "XtbError",
    "XtbOutputError",
    "XtbProperties",
    "conformer_properties",
    "ensemble_properties",
    "parse_xtb_output",
    "property_errors",
    "xtb_single_point",
]

EV_TO_KCAL = 23.060547830619  # kcal/mol per eV (CODATA 2018)
PROPERTY_NAMES = ("energy", "dipole", "gap", "min_energy")

_TOTAL_ENERGY = re.compile(r"\|\s*TOTAL ENERGY\s+(-?\d+\.\d+)\s+Eh")
_GAP = re.compile(r"\|\s*HOMO-LUMO GAP\s+(-?\d+\.\d+)\s+eV")
_DIPOLE_HEADER = "molecular dipole:"


class XtbOutputError(ValueError):
    """An xtb printout that lacks a property (truncated output, a failed run)."""


@dataclass(frozen=True)
class XtbProperties:
    """One conformer: GFN2 total energy (kcal/mol), dipole norm (Debye), HOMO-LUMO gap (kcal/mol)."""

    energy: float
    dipole: float
    gap: float


@dataclass(frozen=True)
class EnsembleProperties:
    """One ensemble: Boltzmann-averaged energy, dipole and gap, and the lowest energy (Table 3's E, mu, gap, Emin)."""

    energy: float
    dipole: float
    gap: float
    min_energy: float


def _last(pattern: re.Pattern, text: str, what: str) -> float:
    found = pattern.findall(text)
    if not found:
        raise XtbOutputError(f"no {what} in the xtb output")
    return float(found[-1])


def _dipole(text: str) -> float:
    """The ``full:`` total (Debye) of the last ``molecular dipole:`` block."""
    start = text.rfind(_DIPOLE_HEADER)
    if start < 0:
        raise XtbOutputError("no molecular dipole in the xtb output")
    for line in text[start:].splitlines()[1:4]:
        fields = line.split()
        if fields and fields[0] == "full:" and len(fields) == 5:
            return float(fields[4])
    raise XtbOutputError("the molecular dipole block of the xtb output has no 'full:' line")


def parse_xtb_output(text: str) -> XtbProperties:
    """Energy, dipole norm and HOMO-LUMO gap from the printout of an xtb GFN2 run.

    Reads the final property block (an ``--opt`` run prints the starting geometry's first); raises
    ``XtbOutputError`` naming what is missing.
    """
    energy = _last(_TOTAL_ENERGY, text, "TOTAL ENERGY")
    gap = _last(_GAP, text, "HOMO-LUMO GAP")
    return XtbProperties(energy=energy * HARTREE_TO_KCAL, dipole=_dipole(text), gap=gap * EV_TO_KCAL)


def xtb_single_point(
    mol: Chem.Mol,
    conf_id: int = -1,
    *,
    charge: int | None = None,
    uhf: int | None = None,
    threads: int = 1,
    executable: str = "xtb",
    timeout: float | None = XTB_TIMEOUT,
) -> XtbProperties:
    """GFN2-xTB single point (``xtb --sp --gfn 2``) of one conformer.

    charge : total charge, default the sum of formal charges; uhf : unpaired electrons, default the
    molecule's radical electrons. Raises ``XtbNotFoundError`` when the binary is missing and
    ``XtbError`` when xtb fails, runs past ``timeout`` seconds or prints no properties.
    """
    run = run_xtb(mol, conf_id, ["--sp", "--gfn", "2"], charge=charge, uhf=uhf, threads=threads,
                  executable=executable, timeout=timeout)
    try:
        return parse_xtb_output(run.stdout)
    except XtbOutputError as err:
        raise XtbError(mol_name(mol), str(err)) from err


def conformer_properties(
    mol: Chem.Mol,
    conf_ids: Sequence[int] | None = None,
    *,
    relax: bool = False,
    charge: int | None = None,
    threads: int = 1,
) -> dict[int, XtbProperties]:
    """GFN2 properties of the given conformers (all when None): {conformer id: properties}.

    relax : first optimise each conformer with GFN2-xTB, in place (the protocol for generated
    ensembles). Conformers whose optimisation or single point fails are left out of the result.
    """
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    out = {}
    for cid in ids:
        try:
            if relax:
                relax_xtb(mol, cid, method="gfn2", charge=charge, threads=threads)
            out[cid] = xtb_single_point(mol, cid, charge=charge, threads=threads)
        except (RelaxationError, XtbError):
            continue
    return out


def ensemble_properties(conformers: Sequence[XtbProperties], temperature: float = 298.15) -> EnsembleProperties:
    """Boltzmann averages <E>, <mu>, <gap> with weights exp(-(E - Emin) / kT) from the conformers'
    own GFN2 energies, and Emin."""
    if not conformers:
        raise ValueError("an ensemble needs at least one conformer")
    energies = np.array([c.energy for c in conformers])
    w = boltzmann_weights(energies, temperature)
    return EnsembleProperties(
        energy=float(w @ energies),
        dipole=float(w @ np.array([c.dipole for c in conformers])),
        gap=float(w @ np.array([c.gap for c in conformers])),
        min_energy=float(energies.min()),
    )


def property_errors(
    generated: Mapping[str, EnsembleProperties], reference: Mapping[str, EnsembleProperties]
) -> dict[str, float]:
    """Median over molecules of |generated - reference| for E, mu, gap and Emin, keyed as ``PROPERTY_NAMES``.

    Molecules are matched by key; a reference molecule absent from ``generated`` (the method failed
    on it) is left out and counted in ``"missing"``. ``"num_molecules"`` is how many were compared.
    """
    keys = [k for k in reference if k in generated]
    out: dict[str, float] = {}
    for name in PROPERTY_NAMES:
        diffs = [abs(getattr(generated[k], name) - getattr(reference[k], name)) for k in keys]
        out[name] = float(np.median(diffs)) if diffs else math.nan
    out["num_molecules"] = len(keys)
    out["missing"] = len(reference) - len(keys)
    return out
