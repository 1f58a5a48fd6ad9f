"""Tests for mi_ref.synthetic: covariances of both batch kinds, the shared Z, the closed-form MI."""

import numpy as np
import pytest

from mi_ref import synthetic


def test_closed_form_mi():
    sigma = np.add(synthetic.SIGMA_Z, synthetic.SIGMA_EPS)            # [[2, 0.4], [0.4, 2]]: rho^2 = 0.04
    assert synthetic.gaussian_mi(sigma) == pytest.approx(-0.5 * np.log(0.96), rel=1e-14)
    assert synthetic.gaussian_mi(np.eye(2)) == 0.0
    # MI of a correlation-rho pair from the entropy formula: h(X) + h(Y) - h(X, Y)
    rho = 0.7
    s = np.array([[1, rho], [rho, 1]])
    entropy = lambda c: 0.5 * np.log((2 * np.pi * np.e) ** len(c) * np.linalg.det(c))  # noqa: E731
    assert synthetic.gaussian_mi(s) == pytest.approx(2 * entropy(np.eye(1)) - entropy(s), rel=1e-12)


def test_iid_batches_have_the_summed_covariance():
    """200 batches of 128 (25600 pairs): the standard error of each covariance entry is < 0.02."""
    rng = np.random.default_rng(0)
    xy = np.concatenate([np.hstack(synthetic.gaussian_pairs(128, True, rng)) for _ in range(200)])
    np.testing.assert_allclose(np.cov(xy.T), np.add(synthetic.SIGMA_Z, synthetic.SIGMA_EPS), atol=0.06)


def test_non_iid_batch_shares_z():
    rng = np.random.default_rng(1)
    # within a batch the pairs scatter around one shared Z with covariance Sigma_eps ...
    x, y = synthetic.gaussian_pairs(20000, False, rng)
    np.testing.assert_allclose(np.cov(np.hstack([x, y]).T), synthetic.SIGMA_EPS, atol=0.05)
    # ... and the batch means over many batches have covariance Sigma_z (+ Sigma_eps / k)
    means = np.array([np.hstack(synthetic.gaussian_pairs(64, False, rng)).mean(axis=0) for _ in range(4000)])
    np.testing.assert_allclose(np.cov(means.T), np.add(synthetic.SIGMA_Z, np.divide(synthetic.SIGMA_EPS, 64)),
                               atol=0.08)
    # and every single pair still has the marginal law N(0, Sigma_z + Sigma_eps)
    firsts = np.array([np.hstack(synthetic.gaussian_pairs(8, False, rng))[0] for _ in range(20000)])
    np.testing.assert_allclose(np.cov(firsts.T), np.add(synthetic.SIGMA_Z, synthetic.SIGMA_EPS), atol=0.08)


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="positive-definite"):
        synthetic.gaussian_pairs(8, True, rng, sigma_z=[[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="k >= 2"):
        synthetic.gaussian_pairs(1, True, rng)
