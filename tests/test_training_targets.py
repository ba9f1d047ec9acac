"""Training targets: the exact VST expectation and the targets whose noise is independent."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch

from enhancer.vst import anscombe, expected_anscombe, inverse_anscombe_unbiased
from training.data import poisson_pair
from training.data.targets import expected_target, held_out_target, independent_target

DRAWS = 1_000_000


def _thinned(
    lam: float, dose_factor: float, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    standard, rapid = poisson_pair(
        np.full(DRAWS, lam), 1.0 / dose_factor, np.random.default_rng(seed)
    )
    return standard.astype(np.float64), rapid.astype(np.float64)


@pytest.mark.parametrize("mean", [0.0, 0.2, 1.0, 3.0, 20.0, 199.0, 400.0])
def test_expected_anscombe_is_the_mean_of_the_transformed_poisson_draws(mean: float) -> None:
    generator = torch.Generator().manual_seed(int(mean * 10))
    draws = anscombe(torch.poisson(torch.full((DRAWS,), mean, dtype=torch.float64), generator))
    standard_error = float(draws.std()) / math.sqrt(DRAWS) + 1e-12
    expected = float(expected_anscombe(torch.tensor([mean], dtype=torch.float64)))
    assert abs(float(draws.mean()) - expected) < 5.0 * standard_error + 1e-9
    # Above a few counts it is not the transform of the mean: that is what a truth target fixes.
    if 3.0 <= mean <= 200.0:
        assert float(anscombe(torch.tensor([mean]))) - expected > 10.0 * standard_error


def test_expected_anscombe_is_continuous_where_the_series_takes_over() -> None:
    means = torch.tensor([199.999, 200.0, 200.001], dtype=torch.float64)
    values = expected_anscombe(means)
    assert torch.all(values.diff() > 0)
    # The step across it is the slope (about 1 / sqrt(mean)) times the step in the mean.
    assert float(values[2] - values[0]) == pytest.approx(0.002 / math.sqrt(200.0), rel=0.01)
    assert expected_anscombe(means.float()).dtype == torch.float32


@pytest.mark.parametrize("mean", [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 300.0])
def test_the_unbiased_inverse_maps_the_expectation_back_to_the_mean(mean: float) -> None:
    value = expected_anscombe(torch.tensor([mean], dtype=torch.float64))
    # The closed form approximates the exact inverse to about 1% at one count and better above.
    assert float(inverse_anscombe_unbiased(value)) == pytest.approx(mean, rel=0.01, abs=0.01)


@pytest.mark.parametrize("dose_factor", [2.0, 3.0])
@pytest.mark.parametrize("lam", [2.0, 20.0, 100.0])
def test_held_out_target_is_independent_of_the_rapid_scan(dose_factor: float, lam: float) -> None:
    standard, rapid = _thinned(lam, dose_factor, seed=int(lam * dose_factor))
    held_out = held_out_target(standard, rapid, dose_factor).astype(np.float64)
    thinned_from = independent_target(standard).astype(np.float64)
    # The scan the rapid one came from shares its noise; the remainder does not.
    assert np.corrcoef(thinned_from, rapid)[0, 1] > 0.5
    assert abs(np.corrcoef(held_out, rapid)[0, 1]) < 5.0 / math.sqrt(DRAWS)
    expected = float(expected_target(np.array([lam]))[0])
    standard_error = held_out.std() / math.sqrt(DRAWS)
    bias = held_out.mean() - expected
    # Unbiased from 20 counts a pixel up; below, the second-order term leaves < 0.1 VST unit.
    assert abs(bias) < (5.0 * standard_error if lam >= 20 else 0.1)
    uncorrected = float(
        anscombe(torch.from_numpy(standard - rapid) * (dose_factor / (dose_factor - 1))).mean()
    )
    assert abs(bias) < abs(uncorrected - expected)


def test_a_truth_target_is_the_expectation_and_a_separate_scan_its_transform() -> None:
    truth = np.array([[0.0, 1.0], [5.0, 250.0]])
    assert np.array_equal(
        expected_target(truth),
        expected_anscombe(torch.from_numpy(truth)).numpy().astype(np.float32),
    )
    assert expected_target(truth).dtype == np.float32
    counts = np.array([[0.0, 3.0], [7.0, 40.0]])
    assert np.allclose(independent_target(counts), 2.0 * np.sqrt(counts + 0.375))


def test_held_out_target_names_impossible_pairs() -> None:
    standard = np.array([[4.0, 2.0]])
    with pytest.raises(ValueError, match=r"dose factor 1\.0 leaves no counts"):
        held_out_target(standard, standard, 1.0)
    with pytest.raises(ValueError, match="more counts than the scan"):
        held_out_target(standard, np.array([[5.0, 0.0]]), 2.0)
