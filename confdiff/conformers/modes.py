"""The three processes of the conformer diffusion, one :class:`Mode` object each.

Torch-free, so that the command line can offer the names without loading a model. The string names
(``mode="refine"``) stay the public API; :meth:`Mode.of` turns one into its object once, at the edge,
and the diffusion reads the object's fields instead of comparing strings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MODE", "FULL", "MODES", "REFINE", "TORSIONS", "Mode"]


@dataclass(frozen=True)
class Mode:
    """What a mode diffuses.

    torsions : the state holds the torsion changes ``d`` (on the torus, ``sigma_tor`` schedule).
    coordinates : the state holds the coordinate displacements ``e`` (zero CoM).
    full : ``e`` runs on the ``sigma_full`` schedule from the isotropic prior (no seed conformer,
        ``x_ref = 0``) and the model sees ``sigma_tor_min``; needs a model trained with
        ``full_fraction > 0``.
    """

    name: str
    torsions: bool
    coordinates: bool
    full: bool = False

    def __post_init__(self):
        if not (self.torsions or self.coordinates):
            raise ValueError(f"mode {self.name!r} diffuses nothing")
        if self.full and self.torsions:
            raise ValueError(f"mode {self.name!r}: the full mode holds the torsions at their smallest level")

    @staticmethod
    def of(mode: Mode | str) -> Mode:
        """``mode`` itself, or the mode named ``mode`` (a ``ValueError`` for an unknown name)."""
        if isinstance(mode, Mode):
            return mode
        if mode not in _BY_NAME:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        return _BY_NAME[mode]

    def __str__(self) -> str:
        return self.name


REFINE = Mode("refine", torsions=True, coordinates=True)
TORSIONS = Mode("torsions", torsions=True, coordinates=False)
FULL = Mode("full", torsions=False, coordinates=True, full=True)
_BY_NAME = {m.name: m for m in (REFINE, TORSIONS, FULL)}
#: the names of the modes, the public string API (``mode="refine"``)
MODES = tuple(_BY_NAME)
#: the sampler's default: the torsions of MMFF94-minimised seeds (ahead of ``"refine"`` on the DRUGS and
#: Platinum sets; docs/benchmarks.md, session 11). ``confdiff score``'s density has its own default.
DEFAULT_MODE = "torsions"
