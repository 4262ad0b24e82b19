r"""Conformer log-likelihoods through the probability-flow ODE, and Boltzmann importance weights.

The conformer diffusion (``conformers/diffusion.py``) describes a conformer relative to a reference
``x_ref`` by ``y = (d, e)`` in ``T^m x V`` (``V`` the ``3N - 3`` dimensional zero-CoM subspace of
``R^{3N}``), ``x(y) = T(x_ref, d) + e``. Scoring a conformer ``x`` takes the chart centred on it
(``x_ref = x``, so ``x = x(0)``) and integrates the PF-ODE of the product SDE forward from ``y = 0``
(Song et al. 2021, eq. 39):

.. math::  \log p_{t_{min}}(0) = \log \pi(y_1) + \int_{t_{min}}^1 \nabla_y \cdot F(y_t, t)\, dt,
           \qquad \pi = \mathcal{U}(T^m) \times \mathcal{N}(0, \sigma_{pos,max}^2 I_V).

Rotating or translating ``x`` moves the whole chart rigidly; with torsion scores invariant, the
coordinate score equivariant, the divergence a trace and the prior isotropic on ``V``, ``log p`` is
unchanged (tested in ``tests/conformers/test_likelihood.py``).

In the ``"full"`` mode the state is the centred conformer itself (``x_ref = 0``, ``y = x - CoM``),
so ``log p`` is the model's density of the conformer on ``V``, with no chart.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from rdkit import Chem
from torch_geometric.data import Batch

from ..chem.ensembles import BOLTZMANN_KCAL
from ..chem.featurize import featurize
from ..diffusion.likelihood import log_likelihood
from .generator import load_model

__all__ = [
    "EXACT_DIVERGENCE_MAX_SIZE",
    "HUTCHINSON_PROBES",
    "boltzmann_importance_weights",
    "likelihood",
]

#: exact divergence while ``m + 3N`` (the elements of one conformer's state) is at most this: at
#: 103 it cost 4x Hutchinson's, whose 8 probes erred by 1-10 nats (docs/likelihood.md)
EXACT_DIVERGENCE_MAX_SIZE = 300
#: Rademacher probes of the Hutchinson estimator, shared by all conformers of a molecule
HUTCHINSON_PROBES = 8
#: the gas constant in kcal / (mol K)


def _dtype_device(model) -> tuple[torch.dtype, torch.device]:
    """The model's parameter dtype and device; float64 on the CPU for a parameter-free score."""
    tensor = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return (tensor.dtype, tensor.device) if tensor is not None else (torch.float64, torch.device("cpu"))


def canonical_frame(pos: np.ndarray) -> np.ndarray:
    """``pos (N, 3)`` moved to its centroid and rotated onto its principal axes, shape (N, 3).

    A proper rotation (no reflection): the first two axes point where the third moment of the
    coordinates along them is positive, the third is their cross product. Rigidly moved copies of a
    conformer come out the same up to rounding (for a degenerate or symmetric set of axes, within a
    symmetry of the ensemble), so the ODE sees the same numbers whatever the input frame.
    """
    pos = np.asarray(pos, dtype=np.float64)
    centred = pos - pos.mean(0)
    _, axes = np.linalg.eigh(centred.T @ centred)  # columns, ascending eigenvalues
    axes = axes[:, ::-1].copy()
    for k in range(2):
        if np.sum((centred @ axes[:, k]) ** 3) < 0:
            axes[:, k] = -axes[:, k]
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    return centred @ axes


def _shared_probes(generator: torch.Generator | None, num: int) -> list[torch.Generator]:
    """``num`` generators in one state, so every conformer of a molecule gets the same probes."""
    state = generator.get_state() if generator is not None else torch.Generator().manual_seed(0).get_state()
    generators = []
    for _ in range(num):
        g = torch.Generator()
        g.set_state(state)
        generators.append(g)
    return generators


def likelihood(
    mol: Chem.Mol,
    model=None,
    *,
    divergence: str | None = None,
    conf_ids: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    rtol: float = 0.0,
    atol: float = 1e-5,
    mode: str = "refine",
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    align: bool = True,
) -> list[float]:
    r"""Log-likelihood in nats of each conformer of ``mol`` under the conformer diffusion model.

    **Which density.** For conformer ``x_i`` (``N`` atoms, ``m`` rotatable torsions) this is
    ``log p_{t_min}(y = 0)``: the density of the model's state ``y = (d, e)`` on ``T^m x V``, in
    the chart ``x = T(x_i, d) + e`` centred on ``x_i`` itself, with respect to ``dd de``
    (Lebesgue measure on the torus and on the ``3N - 3`` dimensional zero-CoM subspace ``V``;
    units ``rad^-m A^-(3N-3)``), at ``t_min = 1e-5`` (the data smoothed by ``sigma_tor(t_min) ~
    0.031 rad`` and ``sigma_pos(t_min) ~ 0.005 A``). At ``e = 0``, ``d`` is the change of the
    dihedral angles, so the torsion factor is also a density in absolute dihedral angles.

    **What the ODE accounts for**: the volume change of the flow in ``y`` (the divergence is the
    trace over ``T^m`` and the ``3N - 3`` tangent directions of ``V``, not over ``R^{3N}``) and the
    prior ``log pi(y_1) = -m log 2 pi - (3N-3)/2 log(2 pi sigma_max^2) - |e_1|^2 / 2 sigma_max^2``.
    **What it does not**: the Jacobian from this chart to Cartesian space. The chart is redundant
    (``m + 3N - 3`` parameters for the ``3N - 6`` internal degrees of freedom), so this is not a
    density of ``x`` in ``R^{3N}`` and no metric factor of the torsion map is included. Rigid-body
    degrees of freedom are removed, not integrated: translations by the zero-CoM subspace (and the
    model's translation invariance), rotations by invariance (the value is the same for every
    orientation, with no ``8 pi^2`` orbit volume). Values compare conformers of one molecule; the
    uniform prior stands in for ``p_1`` (within 0.015 nats per torsion at ``sigma_tor,max = pi``).

    Parameters
    ----------
    mol : molecule with 3D conformers; implicit hydrogens are placed by RDKit (``addCoords``).
    model : ``(ScoreModel, ConformerDiffusion)``, a checkpoint path, or None for the shipped model
        of ``mode``.
        The ODE runs in the model's dtype and on its device.
    divergence : ``"exact"``, ``"hutchinson"`` (``HUTCHINSON_PROBES`` Rademacher probes, the same
        for every conformer, so the error from the isotropic part of the Jacobian cancels between
        conformers; the rest does not), or None: exact when one conformer's state (``m + 3N`` in the
        refine mode) has at most ``EXACT_DIVERGENCE_MAX_SIZE`` elements.
    conf_ids : conformers to score (all when None), batched in one graph batch.
    generator : draws the Hutchinson probes (seed 0 when None).
    rtol, atol : tolerances of the adaptive Dormand-Prince solver. With ``rtol = 0`` its error norm
        is an RMS over the state, which rotates with the input, so the step sizes (and hence
        ``log p``) do not depend on the orientation; an elementwise relative tolerance does.
    steps : None for the adaptive solver, else the number of fixed RK4 steps (equal in ``t``, so in
        ``log sigma``; ``4 steps`` evaluations). The score network's neighbour lists change
        discontinuously along the trajectory, which costs the adaptive solver hundreds of
        evaluations; 20 RK4 steps were within 0.05 nats of it in the torsion mode (docs/likelihood.md).
    dtype : the ODE's dtype (None: the model's); the model is run in it (a converted copy).
    align : move every conformer to its centroid and principal axes first (:func:`canonical_frame`),
        so rigidly moved copies give the same value up to rounding whatever the solver and dtype.
        The density is invariant without it (tested with ``align=False``); aligning removes the
        rounding and step-size noise, which with float32 and the adaptive solver reached 0.085 nats.
    mode : ``"refine"`` (above), ``"torsions"`` (the density of the torsion changes ``d`` alone on
        ``T^m``, the rest of the conformer held fixed; 0 for a molecule without rotatable bonds) or ``"full"``: the density of the centred
        conformer on ``V`` (units ``A^-(3N-3)``), ``log pi = -(3N-3)/2 log(2 pi sigma_full,max^2)
        - |x_1|^2 / 2 sigma_full,max^2``; needs a model trained for it.

    Returns one ``log p`` per conformer, in the order of ``conf_ids``.
    """
    if divergence not in (None, "exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact', 'hutchinson' or None, got {divergence!r}")
    score_model, diffusion = model if isinstance(model, tuple) else load_model(model, mode=str(mode))
    mode = diffusion.check_mode(mode)  # the Mode object from here on
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else [int(c) for c in conf_ids]
    if not ids:
        raise ValueError("the molecule has no conformers to score")
    if any(a.GetNumImplicitHs() for a in mol.GetAtoms()):
        mol = Chem.AddHs(mol, addCoords=True)
    model_dtype, device = _dtype_device(score_model)
    if dtype is not None and dtype != model_dtype:
        score_model = copy.deepcopy(score_model).to(dtype)
    dtype = dtype or model_dtype

    graph = featurize(mol)
    batch = Batch.from_data_list([graph] * len(ids))
    batch = batch.apply(lambda v: v.to(dtype) if v.is_floating_point() else v).to(device)
    frame = canonical_frame if align else (lambda pos: pos)
    pos_ref = torch.cat([torch.as_tensor(frame(mol.GetConformer(c).GetPositions()), dtype=dtype)
                         for c in ids]).to(device)
    sde = diffusion.sde(batch, mode)
    if sde.space.numel == 0:  # the torsion density of a rigid molecule: one point, log p = 0
        return [0.0] * len(ids)
    if divergence is None:
        size = sde.space.numel // len(ids)
        divergence = "exact" if size <= EXACT_DIVERGENCE_MAX_SIZE else "hutchinson"

    if mode.full:  # the state is the centred conformer itself (projecting onto V removes the CoM)
        y = sde.space.project(pos_ref.flatten())
        pos_ref = torch.zeros_like(pos_ref)
    else:  # x(0) = x_ref: every conformer at its own chart's origin
        y = pos_ref.new_zeros(sde.space.numel)
    score_fn = diffusion.score_fn(score_model, batch, pos_ref, sde)
    log_p, _ = log_likelihood(score_fn, y, sde, divergence=divergence, probe="rademacher",
                              num_probes=HUTCHINSON_PROBES, generator=_shared_probes(generator, len(ids)),
                              rtol=rtol, atol=atol, steps=steps)
    return log_p.tolist()


def boltzmann_importance_weights(
    log_likelihoods: Sequence[float], energies_kcal: Sequence[float], temperature: float = 298.15
) -> np.ndarray:
    r"""Self-normalised importance weights of model samples for the Boltzmann distribution.

    ``w_i = exp(-E_i / k T) / p_model(x_i) / sum_j (...)`` (the torsional Boltzmann generator of
    Jing et al. 2022), so ``sum_i w_i f(x_i)`` estimates ``E_Boltzmann[f]`` from conformers
    ``x_i ~ p_model``; ``kT = R T`` in kcal/mol, ``log_likelihoods`` in nats (:func:`likelihood`).
    Both densities must be on the same space (the torsions, plus the zero-CoM chart of
    :func:`likelihood`); factors common to all conformers cancel in the normalisation.
    Returns shape (n,).
    """
    log_p = np.asarray(log_likelihoods, dtype=np.float64)
    energies = np.asarray(energies_kcal, dtype=np.float64)
    if log_p.shape != energies.shape or log_p.ndim != 1 or log_p.size == 0:
        raise ValueError(f"need two equal non-empty 1-D sequences, got shapes {log_p.shape} and {energies.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature!r}")
    log_w = -energies / (BOLTZMANN_KCAL * temperature) - log_p
    log_w -= log_w.max()
    w = np.exp(log_w)
    return w / w.sum()
