"""Synthetic Gaussian pairs for the negative-sampling experiment (paper Section 4, Fig. 4c).

A pair (X, Y) in R x R is the sum of a shared part Z ~ N(0, Sigma_z) and a private part eps ~ N(0, Sigma_eps):

    i.i.d. batch:      (X_i, Y_i) ~ N(0, Sigma_z + Sigma_eps) independently for every i;
    non-i.i.d. batch:  Z ~ N(0, Sigma_z) drawn ONCE per batch, eps_i ~ N(0, Sigma_eps) i.i.d.,
                       (X_i, Y_i) = Z + eps_i.

Every single pair of either batch has the marginal law N(0, Sigma) with Sigma = Sigma_z + Sigma_eps, whose
mutual information is

    I(X; Y) = -1/2 log(1 - rho^2),   rho^2 = Sigma_12 Sigma_21 / (Sigma_11 Sigma_22).

In the non-i.i.d. batch, however, X_i and Y_j (j != i) share Z, so the "negatives" are not samples of
p(x) p(y); the bounds' guarantees no longer hold and the estimates can exceed I(X; Y).
"""

import numpy as np

SIGMA_Z = ((1.0, -0.5), (-0.5, 1.0))
SIGMA_EPS = ((1.0, 0.9), (0.9, 1.0))


def _cov(sigma, name):
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (2, 2) or not np.allclose(sigma, sigma.T) or np.any(np.linalg.eigvalsh(sigma) <= 0):
        raise ValueError(f"{name} must be a symmetric positive-definite 2 x 2 matrix, got {sigma.tolist()}")
    return sigma


def gaussian_mi(sigma):
    """I(X; Y) = -1/2 log(1 - Sigma_12 Sigma_21 / (Sigma_11 Sigma_22)) for (X, Y) ~ N(0, Sigma), in nats."""
    s = _cov(sigma, "sigma")
    return float(-0.5 * np.log1p(-s[0, 1] * s[1, 0] / (s[0, 0] * s[1, 1])))


def gaussian_pairs(k, iid, rng, sigma_z=SIGMA_Z, sigma_eps=SIGMA_EPS):
    """A batch of k pairs: ``(x, y)``, each ``(k, 1)``; i.i.d. or sharing one Z (see the module docstring)."""
    sz, se = _cov(sigma_z, "sigma_z"), _cov(sigma_eps, "sigma_eps")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"the batch needs k >= 2 pairs, got {k!r}")
    if iid:
        xy = rng.standard_normal((k, 2)) @ np.linalg.cholesky(sz + se).T
    else:
        z = rng.standard_normal(2) @ np.linalg.cholesky(sz).T
        xy = z + rng.standard_normal((k, 2)) @ np.linalg.cholesky(se).T
    return xy[:, :1], xy[:, 1:]


def smoothed(trace, sigma):
    """The paper's smoothing of per-step estimates (Fig. 4c): ``scipy.ndimage.gaussian_filter1d(trace,
    sigma)``, a Gaussian kernel of std ``sigma`` steps truncated at 4 sigma, with the ends reflected."""
    from scipy.ndimage import gaussian_filter1d
    return gaussian_filter1d(np.asarray(trace, dtype=float), sigma)
