"""Scatter reductions: torch-scatter (when installed) and the pure-torch fallback agree."""

from __future__ import annotations

import pytest
import torch

from confdiff.nn.scatter import pure_torch_scatter, scatter_mean, scatter_sum, torch_scatter_available


def test_fallback_sums_and_means_per_index():
    src = torch.arange(12.0).view(6, 2)
    index = torch.tensor([0, 2, 2, 0, 2, 3])
    with pure_torch_scatter():
        assert not torch_scatter_available()
        total = scatter_sum(src, index, dim_size=5)
        mean = scatter_mean(src, index, dim_size=5)
    torch.testing.assert_close(total[0], src[0] + src[3])
    torch.testing.assert_close(mean[2], (src[1] + src[2] + src[4]) / 3)
    assert (total[1] == 0).all() and (mean[4] == 0).all()  # empty rows


@pytest.mark.skipif(not torch_scatter_available(), reason="torch-scatter is not installed")
def test_torch_scatter_matches_the_fallback():
    src = torch.randn(100, 3, dtype=torch.float64)
    index = torch.randint(0, 7, (100,))
    with pure_torch_scatter():
        expected = scatter_sum(src, index, 9), scatter_mean(src, index, 9)
    torch.testing.assert_close(scatter_sum(src, index, 9), expected[0])
    torch.testing.assert_close(scatter_mean(src, index, 9), expected[1])
