"""confdiff: molecular conformer ensembles from an SE(3)-invariant diffusion model."""

__version__ = "0.1.0"

__all__ = ["__version__"]
