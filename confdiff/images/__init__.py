"""Images on the domain-agnostic diffusion core: data, the U-Net model and sampling, likelihoods, training.

The public objects live in the submodules and are re-exported here.
"""

from .data import DIGITS_LEVELS, DIGITS_SPLIT, ImageDataset, bin_centres, dequantize, load_dataset, read_idx, to_levels, to_unit
from .likelihood import pf_ode_bits_per_dim, variational_bound_bits_per_dim
from .model import (
    KIND,
    ImageDiffusionConfig,
    ImageModel,
    clip_denoised,
    default_model_path,
    default_unet_config,
    sample_images,
    save_grid,
)
from .training import export_model, image_loss, train_image_model

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_SPLIT",
    "KIND",
    "ImageDataset",
    "ImageDiffusionConfig",
    "ImageModel",
    "bin_centres",
    "clip_denoised",
    "default_model_path",
    "default_unet_config",
    "dequantize",
    "export_model",
    "image_loss",
    "load_dataset",
    "pf_ode_bits_per_dim",
    "read_idx",
    "sample_images",
    "save_grid",
    "to_levels",
    "to_unit",
    "train_image_model",
    "variational_bound_bits_per_dim",
]
