"""The domain-agnostic diffusion core: schedules, spaces, SDEs, losses, samplers.

Imports torch only (no rdkit, e3nn or torch_geometric).
"""

from .schedules import LearnableMonotone, Schedule, SubVP, VEGeometric, VPCosine, VPLinear
from .sde import SDE, ProductSDE, ReverseSDE
from .spaces import Euclidean, Product, Space, Torus, ZeroCoM
from .torus import (
    WrappedNormalTable,
    fast_wrapped_normal_score,
    sample_wrapped_normal,
    wrap,
    wrapped_normal_log_prob,
    wrapped_normal_score,
    wrapped_normal_score_derivative,
    wrapped_normal_score_norm,
)

__all__ = [
    # schedules
    "Schedule",
    "VPLinear",
    "VPCosine",
    "VEGeometric",
    "SubVP",
    "LearnableMonotone",
    # spaces
    "Space",
    "Euclidean",
    "ZeroCoM",
    "Torus",
    "Product",
    # sde
    "SDE",
    "ProductSDE",
    "ReverseSDE",
    # torus
    "wrap",
    "wrapped_normal_log_prob",
    "wrapped_normal_score",
    "wrapped_normal_score_derivative",
    "sample_wrapped_normal",
    "WrappedNormalTable",
    "fast_wrapped_normal_score",
    "wrapped_normal_score_norm",
]

from .guidance import classifier_free_guidance, classifier_guidance
from .likelihood import bits_per_dim, log_likelihood
from .losses import (
    PARAMETERIZATIONS,
    WEIGHTINGS,
    EpsilonPrediction,
    LikelihoodWeighting,
    MinSNRWeighting,
    Parameterization,
    ScorePrediction,
    SimpleWeighting,
    VPrediction,
    WrappedScorePrediction,
    X0Prediction,
    denoising_score_matching_loss,
    score_fn_from_model,
)
from .samplers import (
    SAMPLERS,
    sample_annealed_langevin,
    sample_ddim,
    sample_ddpm,
    sample_euler_maruyama,
    sample_heun,
    sample_predictor_corrector,
    sample_rk45,
    time_grid,
)

__all__ += [
    # losses
    "Parameterization",
    "EpsilonPrediction",
    "X0Prediction",
    "VPrediction",
    "ScorePrediction",
    "WrappedScorePrediction",
    "SimpleWeighting",
    "LikelihoodWeighting",
    "MinSNRWeighting",
    "PARAMETERIZATIONS",
    "WEIGHTINGS",
    "denoising_score_matching_loss",
    "score_fn_from_model",
    # samplers
    "time_grid",
    "sample_euler_maruyama",
    "sample_predictor_corrector",
    "sample_ddpm",
    "sample_ddim",
    "sample_heun",
    "sample_rk45",
    "sample_annealed_langevin",
    "SAMPLERS",
    # likelihood
    "log_likelihood",
    "bits_per_dim",
    # guidance
    "classifier_guidance",
    "classifier_free_guidance",
]
