"""Exact score functions of known conformer distributions, run through the package's code paths."""

from __future__ import annotations

import torch


class GaussianConformer(torch.nn.Module):
    """Exact full-mode score for centred data ``x ~ N(mu, s^2 I)`` on the zero-CoM subspace:
    ``p_t = N(mu, (s^2 + sigma_full(t)^2) I)``, score ``-(x - mu) / (s^2 + sigma^2)``.

    Not equivariant: ``mu (N, 3)`` is one fixed orientation. Torsion scores are zero.
    """

    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.mu, self.s = mu - mu.mean(0), s

    def forward(self, batch):
        var = self.s**2 + batch.sigma_pos[batch.batch, None] ** 2
        mu = self.mu.to(batch.pos.dtype).repeat(batch.num_graphs, 1)
        return batch.pos.new_zeros(batch.torsion_index.shape[1]), -(batch.pos - mu) / var
