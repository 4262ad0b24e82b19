r"""An optional last stage of the torsions mode: a few steps of energy descent over the torsions alone.

Physics guidance (:mod:`confdiff.conformers.physics`) samples the tilted density
``p_model(x) exp(-lambda E(x) / kT)``: at 298 K each torsion still fluctuates by tenths of a radian
about its minimum, and a reference ensemble (CREST, GFN2-xTB) holds minima. The polish moves each
draw of the torsions mode down its own energy well, keeping the seed's bond lengths, angles and ring
puckers exactly (only the torsions move, as everywhere in this mode): ``steps`` iterations of
gradient descent on ``E(x(d))`` over the torsion changes ``d``, with

* the gradient ``(dT/dd)^T dE/dx`` through the torsion map by autograd, as the guidance takes it;
* a Barzilai-Borwein step length per conformer (``<s, s> / <s, r>`` of the last step ``s`` and gradient
  change ``r``; Barzilai & Borwein 1988), each torsion's move capped at ``max_step`` radians;
* a step that would raise a conformer's energy refused and its step length cut, so that no
  conformer's energy ever rises.

It is a local descent, not a search: a draw stays in the well the model and the guidance put it in,
so the ensemble's spread is the model's. ``confdiff score``'s density is the model's own; the
polish changes sampling only. It is off by default (``ConformerGenerator(polish_steps=...)``): it
raises recall against gas-phase reference ensembles and lowers it against crystal (bioactive)
poses, which are seldom vacuum minima (docs/benchmarks.md, "The torsion polish").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["torsion_descent"]

INITIAL_STEP = 1e-3  # rad^2 per kcal/mol: the first step moves a torsion by 1e-3 rad per kcal/mol/rad of slope
REFUSED_STEP_FACTOR = 0.3  # a refused step's length is multiplied by this
STEP_LENGTH_BOUNDS = (1e-5, 1.0)  # rad^2 per kcal/mol


def torsion_descent(
    d: Tensor,
    positions: Callable[[Tensor], Tensor],
    potential: Callable[[Tensor], tuple[Tensor, Tensor]],
    torsion_graph: Tensor,
    num_graphs: int,
    steps: int,
    *,
    max_step: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Lower each conformer's energy by ``steps`` descent steps over its torsion changes.

    d : (T,) torsion changes of a batch of ``num_graphs`` conformers; torsion_graph : (T,) the
    conformer of each torsion; positions : ``d -> x (N, 3)``, differentiable
    (``ConformerDiffusion.positions``); potential : ``x -> (E (G,), dE/dx (N, 3))``
    (``physics.BatchPotential``), kcal/mol and kcal/mol/A; max_step : radians per torsion and step.
    Returns the new ``d (T,)`` and the energies ``E (G,)`` at it; ``steps + 1`` evaluations of
    ``potential``. A conformer without torsions keeps its energy.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")

    def energy_and_grad(d: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            dg = d.detach().requires_grad_(True)
            pos = positions(dg)
            energy, grad_x = potential(pos.detach())
            (grad_d,) = torch.autograd.grad(pos, dg, grad_outputs=grad_x.to(pos.dtype))
        return energy.to(d.dtype), grad_d

    def per_graph(v: Tensor) -> Tensor:
        return torch.zeros(num_graphs, dtype=v.dtype, device=v.device).index_add_(0, torsion_graph, v)

    if d.numel() == 0:  # rigid molecules: nothing to turn
        return d, potential(positions(d))[0].to(d.dtype)
    energy, grad = energy_and_grad(d)
    length = torch.full((num_graphs,), INITIAL_STEP, dtype=d.dtype, device=d.device)
    for _ in range(steps):
        trial = d - (length[torsion_graph] * grad).clamp(-max_step, max_step)
        trial_energy, trial_grad = energy_and_grad(trial)
        lower = trial_energy <= energy  # (G,)
        s, r = trial - d, trial_grad - grad
        curvature = per_graph(s * r)
        barzilai_borwein = torch.where(curvature > 0, per_graph(s * s) / curvature.clamp_min(1e-30), 2 * length)
        length = torch.where(lower, barzilai_borwein.clamp(*STEP_LENGTH_BOUNDS), REFUSED_STEP_FACTOR * length)
        take = lower[torsion_graph]
        d = torch.where(take, trial, d)
        grad = torch.where(take, trial_grad, grad)
        energy = torch.where(lower, trial_energy, energy)
    return d, energy
