"""confdiff: molecular conformer ensembles from an SE(3)-invariant diffusion model.

>>> import confdiff
>>> mol = confdiff.generate("CC(=O)Nc1ccc(O)cc1", n=50, seed=0)   # an RDKit Mol with 50 conformers

The public objects live in submodules and are imported on first use, so ``import confdiff`` (and the
command line) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.1"

# public name -> module that defines it
_EXPORTS = {
    "generate": "confdiff.conformers.generator",
    "ConformerGenerator": "confdiff.conformers.generator",
    "GenerationError": "confdiff.conformers.generator",
    "load_model": "confdiff.conformers.generator",
    "likelihood": "confdiff.conformers.likelihood",
    "boltzmann_importance_weights": "confdiff.conformers.likelihood",
}

__all__ = ["ConformerGenerator", "GenerationError", "__version__", "boltzmann_importance_weights", "generate",
           "likelihood", "load_model"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'confdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
