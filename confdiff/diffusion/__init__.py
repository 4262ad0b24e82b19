"""The domain-agnostic diffusion core: schedules, spaces, SDEs, losses, samplers.

Imports torch only (no rdkit, e3nn or torch_geometric). Every public name of the submodules (their
``__all__``) is re-exported here; the lists are kept once, in the submodules.
"""

from . import guidance, likelihood, losses, samplers, schedules, sde, spaces, torus
from .guidance import *  # noqa: F403
from .likelihood import *  # noqa: F403
from .losses import *  # noqa: F403
from .samplers import *  # noqa: F403
from .schedules import *  # noqa: F403
from .sde import *  # noqa: F403
from .spaces import *  # noqa: F403
from .torus import *  # noqa: F403

__all__ = [
    *schedules.__all__,
    *spaces.__all__,
    *sde.__all__,
    *torus.__all__,
    *losses.__all__,
    *samplers.__all__,
    *likelihood.__all__,
    *guidance.__all__,
]
