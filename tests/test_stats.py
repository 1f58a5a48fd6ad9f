"""mi_ref.stats: the sample sd of the bands (ddof = 1) and the notebook's pooled order statistics."""

import numpy as np
import pytest

from mi_ref import stats


def test_sample_sd_is_ddof_1_written_out():
    x = np.array([1.0, 2.0, 4.0])
    mean = 7.0 / 3.0
    expected = np.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2.0)
    assert stats.sample_sd(x) == pytest.approx(expected, rel=1e-15)
    assert stats.sample_sd(x) > np.std(x)                          # ddof = 0 is narrower: sqrt(2/3) as wide
    assert np.std(x) / stats.sample_sd(x) == pytest.approx(np.sqrt(2.0 / 3.0), rel=1e-15)


def test_sample_sd_along_an_axis_and_of_one_run():
    values = np.array([[1.0, 5.0], [3.0, 5.0]])                  # 2 runs x 2 steps
    np.testing.assert_allclose(stats.sample_sd(values, axis=0), [np.sqrt(2.0), 0.0], rtol=1e-15)
    np.testing.assert_array_equal(stats.sample_sd(np.array([[0.3, 0.7]]), axis=0), [0.0, 0.0])   # one run
    assert stats.sample_sd([0.42]) == 0.0


def test_order_statistics_by_hand():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0, 7.0, 9.0, 8.0]     # sorted 0..9, n = 10
    # int(p * 9) for p = 0, .2, .4, .6, .8, 1 -> 0, 1, 3, 5, 7, 9
    np.testing.assert_array_equal(stats.order_statistics(values), [0.0, 1.0, 3.0, 5.0, 7.0, 9.0])
    assert stats.order_statistics([1.0, 2.0], (0.5,))[0] == 1.0       # int(0.5) = 0: the lower of the two


def test_pooled_order_statistics_concatenate_the_runs():
    """Two runs of 3 values: pooled, n = 6, int(p * 5) = 0, 1, 2, 3, 4, 5 of the merged sorted list; not
    the mean of each run's own order statistics."""
    run_a, run_b = [0.0, 10.0, 20.0], [1.0, 2.0, 3.0]
    pooled = stats.pooled_order_statistics([run_a, run_b])
    np.testing.assert_array_equal(pooled, [0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    averaged = (stats.order_statistics(run_a) + stats.order_statistics(run_b)) / 2
    assert not np.array_equal(pooled, averaged)


def test_order_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="empty"):
        stats.order_statistics([])
    with pytest.raises(ValueError, match="NaN"):
        stats.order_statistics([1.0, np.nan])
    with pytest.raises(ValueError, match="probability"):
        stats.order_statistics([1.0], (1.5,))
    with pytest.raises(ValueError, match="at least one run"):
        stats.pooled_order_statistics([])
