"""Neural networks: the e3nn conformer score model and its layers, and the image U-Net."""

from confdiff.nn.neighbors import AtomNeighbors, atom_neighbors, bond_neighbors
from confdiff.nn.scatter import pure_torch_scatter, scatter_mean, scatter_sum, torch_scatter_available
from confdiff.nn.score_model import ScoreModel, ScoreModelConfig, SigmaEmbedding
from confdiff.nn.tfn import (
    DepthwiseTensorProduct,
    EquivariantLayerNorm,
    GaussianRBF,
    IrrepsLinear,
    TensorFieldConv,
    cosine_cutoff,
)
from confdiff.nn.unet import UNet, UNetConfig, sinusoidal_embedding

__all__ = [
    "AtomNeighbors",
    "DepthwiseTensorProduct",
    "EquivariantLayerNorm",
    "GaussianRBF",
    "IrrepsLinear",
    "ScoreModel",
    "ScoreModelConfig",
    "SigmaEmbedding",
    "TensorFieldConv",
    "UNet",
    "UNetConfig",
    "atom_neighbors",
    "bond_neighbors",
    "cosine_cutoff",
    "pure_torch_scatter",
    "scatter_mean",
    "scatter_sum",
    "sinusoidal_embedding",
    "torch_scatter_available",
]
