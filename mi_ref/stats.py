"""The statistics mi-ref reports over runs, computed as the paper's notebook computes them.

* :func:`sample_sd` - the band of every "mean +- sd" curve and table: the sample standard deviation
  (ddof = 1; seaborn's ``ci="sd"``, which the paper's figures use). One run gives a band of width 0.
* :func:`order_statistics` - the bands of Fig. 2c: the values sorted, and the entry at index
  ``int(p * (n - 1))`` for every probability p (no interpolation between entries).
* :func:`pooled_order_statistics` - the same over the values of several runs concatenated, which is how
  the notebook draws Fig. 2c over its runs (it does not average the runs' own percentiles).
"""

import numpy as np

FIG2C_PROBABILITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)      # min, 20th, 40th, 60th, 80th percentile, max


def sample_sd(values, axis=0):
    """sqrt(sum_i (x_i - mean)^2 / (n - 1)) along ``axis``: the sample standard deviation (ddof = 1).

    With n = 1 the result is 0 (a band of width zero, as seaborn draws a single run), not NaN. An empty
    axis gives NaN.
    """
    values = np.asarray(values, dtype=float)
    n = values.shape[axis] if values.ndim else 1
    if n == 0:
        return np.full(np.delete(values.shape, axis) if values.ndim > 1 else (), np.nan)
    if n == 1:
        return np.zeros_like(np.take(values, 0, axis=axis) if values.ndim else values)
    return values.std(axis=axis, ddof=1)


def order_statistic_index(p, n):
    """``int(p * (n - 1))``: the index into n sorted values that the notebook takes for probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {p!r}")
    return int(p * (n - 1))


def order_statistics(values, probabilities=FIG2C_PROBABILITIES):
    """``sorted(values)[int(p * (n - 1))]`` for each p: an array ``(len(probabilities),)``.

    ``values`` may hold +inf (a singular Jacobian: sigma_min = 0); NaN is an error. For p = 0 and 1 this is
    the minimum and the maximum; in between it is an entry of the data, never an interpolation.
    """
    values = np.sort(np.ravel(np.asarray(values, dtype=float)))
    if values.size == 0:
        raise ValueError("order_statistics needs at least one value, got an empty array")
    if np.isnan(values).any():
        raise ValueError("order_statistics got NaN among the values; they must be numbers (or +inf)")
    return np.array([values[order_statistic_index(p, values.size)] for p in probabilities])


def pooled_order_statistics(per_run_values, probabilities=FIG2C_PROBABILITIES):
    """:func:`order_statistics` of the values of every run concatenated (Fig. 2c over several runs)."""
    arrays = [np.ravel(np.asarray(v, dtype=float)) for v in per_run_values]
    if not arrays:
        raise ValueError("pooled_order_statistics needs the values of at least one run")
    return order_statistics(np.concatenate(arrays), probabilities)
