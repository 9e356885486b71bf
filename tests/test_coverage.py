import math

import pytest
import torch

from selmatch.selection.coverage import coverage_fraction, mean_nn_radius, nearest_distances


def test_nearest_distances_by_hand() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    queries = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    assert nearest_distances(queries, points).tolist() == [1.0, 3.0]
    # among themselves: 0→1 is 3, 1→0 is 3, 2→0 is 4
    assert nearest_distances(points, points, exclude_self=True).tolist() == [3.0, 3.0, 4.0]
    assert mean_nn_radius(points) == pytest.approx((3.0 + 3.0 + 4.0) / 3)


def test_coverage_fraction_by_hand() -> None:
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    synthetic = torch.tensor([[0.5, 0.0], [10.0, 1.5]])
    # distances to the nearest synthetic point: 0.5, 0.5, ~6.96, 1.5
    assert coverage_fraction(real, synthetic, radius=1.0) == 0.5
    assert coverage_fraction(real, synthetic, radius=1.5) == 0.75  # the boundary counts
    assert coverage_fraction(real, synthetic, radius=7.0) == 1.0
    assert math.isnan(coverage_fraction(real[:0], synthetic, radius=1.0))


def test_chunking_does_not_change_the_answer() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(50, 3, generator=generator)
    whole = nearest_distances(points, points, exclude_self=True, chunk=1000)
    chunked = nearest_distances(points, points, exclude_self=True, chunk=7)
    assert torch.equal(whole, chunked)
