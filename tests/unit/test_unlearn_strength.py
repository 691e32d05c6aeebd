"""Strength search of ``bbzo.unlearn`` on the shared engine, against the grid baseline."""

import numpy as np
import pytest

from bbzo.errors import InputError
from bbzo.unlearn.strength import grid_strength, search_strength


def _bowl(optimum):
    optimum = np.asarray(optimum, dtype=float)

    def objective(points):  # log10 strengths (n, d) -> (n,)
        return np.abs(np.asarray(points) - optimum).sum(axis=1)

    return objective


def test_scalar_search_finds_a_known_optimum():
    result = search_strength(_bowl([2.3]), evaluations=40, start=0.0, lr=0.25, mu=0.2)
    assert abs(np.log10(result.strength[0]) - 2.3) <= 0.25
    assert result.evaluations <= 40 and result.method == "zo"
    assert len(result.history) == result.evaluations


def test_vector_search_finds_each_dimension():
    optimum = [1.0, -1.0, 3.0]
    result = search_strength(_bowl(optimum), dims=3, evaluations=120, lr=0.2, mu=0.2, seed=1)
    assert np.allclose(np.log10(result.strength), optimum, atol=0.45)


def test_grid_at_equal_evaluations_and_bad_ranges():
    grid = grid_strength(_bowl([2.3]), evaluations=11, low=-3, high=7)
    assert grid.evaluations == 11 and np.isclose(np.log10(grid.strength[0]), 2.0)
    with pytest.raises(InputError, match="low < high"):
        grid_strength(_bowl([0]), low=2, high=1)
    with pytest.raises(InputError, match="evaluations"):
        search_strength(_bowl([0]), evaluations=1)
