"""A tiny regression problem for the trainer tests (imported in-process and by their subprocesses)."""

import torch
from torch.utils.data import TensorDataset


def make_problem():
    """A 4 -> 16 -> 1 MLP with dropout (so the per-step global seed matters) and 40 samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
    return model, TensorDataset(x, y)


def loss_fn(model, batch, generator):
    """Squared error per sample, inputs jittered with the step's generator."""
    x, y = batch
    x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
    return (model(x).squeeze(-1) - y) ** 2
