"""Tests for mi_ref.bounds: I_NCE, I_NWJ and TUBA against hand formulas, a case with known MI, gradients
and numerical stability."""

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad

from gradcheck import check_grad
from mi_ref import bounds

RHO, DIM = 0.5, 2
TRUE_MI = -0.5 * DIM * onp.log(1 - RHO ** 2)    # 0.2877 nats


def gaussian_batch(rng, k):
    """k pairs (x, y) with y = rho x + sqrt(1 - rho^2) noise, componentwise: MI = -d/2 log(1 - rho^2)."""
    x = rng.standard_normal((k, DIM))
    return x, RHO * x + onp.sqrt(1 - RHO ** 2) * rng.standard_normal((k, DIM))


def optimal_scores(x, y):
    """S[i, j] = log p(y_j | x_i) / p(y_j), the true log density ratio (the optimal critic up to constants)."""
    diff = y[None, :, :] - RHO * x[:, None, :]
    return onp.sum(-0.5 * onp.log(1 - RHO ** 2) - diff ** 2 / (2 * (1 - RHO ** 2)) + y[None] ** 2 / 2, axis=2)


def test_infonce_formula():
    s = onp.array([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]])
    expected = onp.log(3) + onp.mean([s[i, i] - onp.log(onp.exp(s[i]).sum()) for i in range(3)])
    assert bounds.infonce(s) == pytest.approx(expected, rel=1e-15)


def test_tuba_and_nwj_formulas():
    rng = onp.random.default_rng(0)
    s = rng.standard_normal((5, 5))
    off = s[~onp.eye(5, dtype=bool)]
    assert bounds.tuba(s) == pytest.approx(1 + onp.mean(onp.diag(s)) - onp.mean(onp.exp(off)), rel=1e-14)
    assert bounds.nwj(s) == pytest.approx(onp.mean(onp.diag(s)) - onp.mean(onp.exp(off)) / onp.e, rel=1e-14)
    la = rng.standard_normal(5)
    expected = (1 + onp.mean(onp.diag(s)) - onp.mean(onp.exp(s - la[None, :])[~onp.eye(5, dtype=bool)])
                - la.mean())
    assert bounds.tuba(s, la) == pytest.approx(expected, rel=1e-14)
    assert bounds.tuba(s, 1.0) == pytest.approx(bounds.nwj(s), rel=1e-14)   # a(y) = e gives I_NWJ


def test_infonce_at_most_log_k():
    rng = onp.random.default_rng(1)
    for k in (2, 7, 128):
        for scale in (0.1, 10.0, 1e3):
            assert bounds.infonce(scale * rng.standard_normal((k, k))) <= onp.log(k) + 1e-12
    # the supremum log K is approached when the diagonal dominates
    assert bounds.infonce(100 * onp.eye(8)) == pytest.approx(onp.log(8), abs=1e-12)


def test_bounds_recover_known_mi_with_optimal_critic():
    """Correlated Gaussians with the closed-form optimal critic: the estimates match the analytic MI.

    40 batches of K = 512 (seeded): the standard error of each mean is 0.0056 nats, and I_NCE's finite-K
    bias is below 0.01 here (MI << log K = 6.2); a tolerance of 0.03 nats (about 5 standard errors) cannot
    be met by a wrong formula (a missing log K or 1/e is off by > 0.3) yet does not flake.
    """
    rng = onp.random.default_rng(0)
    est = {"infonce": [], "nwj": [], "tuba": []}
    for _ in range(40):
        s = optimal_scores(*gaussian_batch(rng, 512))
        est["infonce"].append(bounds.infonce(s))
        est["nwj"].append(bounds.nwj(s + 1.0))     # NWJ's optimal critic is 1 + log ratio
        est["tuba"].append(bounds.tuba(s))
    for name, values in est.items():
        assert abs(onp.mean(values) - TRUE_MI) < 0.03, (name, onp.mean(values), TRUE_MI)


def test_suboptimal_critic_gives_lower_estimate():
    rng = onp.random.default_rng(2)
    for _ in range(5):
        s = optimal_scores(*gaussian_batch(rng, 512))
        assert bounds.nwj(0.5 * s + 1) < bounds.nwj(s + 1)
        assert bounds.infonce(0.3 * s) < bounds.infonce(s)


@pytest.mark.parametrize("name", ["infonce", "nwj", "tuba"])
def test_gradients(name):
    rng = onp.random.default_rng(3)
    s = rng.standard_normal((6, 6))
    check_grad(bounds.get_estimator(name), [s])


def test_tuba_baseline_gradient():
    rng = onp.random.default_rng(4)
    check_grad(bounds.tuba, [rng.standard_normal((5, 5)), rng.standard_normal(5)])


def test_stable_for_large_scores():
    rng = onp.random.default_rng(5)
    s = 1e3 * rng.uniform(-1, 1, size=(64, 64))
    value, g = bounds.infonce(s), grad(bounds.infonce)(s)
    assert onp.isfinite(value) and onp.all(onp.isfinite(g))
    # NWJ/TUBA: diagonal at +-1e3, off-diagonal down to -1e3 and up to 700 (exp(700) is still a float64)
    s = onp.where(onp.eye(64, dtype=bool), s, onp.minimum(s, 700.0))
    for f in (bounds.nwj, bounds.tuba):
        assert onp.isfinite(f(s)) and onp.all(onp.isfinite(grad(f)(s)))
    strongly_negative = -1e3 * onp.ones((16, 16)) + 2e3 * onp.eye(16)
    assert bounds.nwj(strongly_negative) == pytest.approx(1e3 - onp.exp(-1001.0), rel=1e-15)
    assert bounds.infonce(strongly_negative) == pytest.approx(onp.log(16), rel=1e-15)


def test_overflowing_tuba_is_minus_inf_not_nan():
    s = onp.full((4, 4), 1e3)   # the true value, 1 + 1e3 - e^1000, is below -1.8e308
    with onp.errstate(over="ignore"):
        assert bounds.tuba(s) == -onp.inf


@pytest.mark.parametrize("name", ["infonce", "nwj", "tuba"])
@pytest.mark.parametrize("shape", [(3, 4), (5,), (1, 1), (2, 2, 2)])
def test_non_square_scores_rejected(name, shape):
    with pytest.raises(ValueError, match="square"):
        bounds.get_estimator(name)(onp.zeros(shape))


def test_bad_baseline_and_unknown_estimator():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        bounds.tuba(onp.zeros((3, 3)), onp.zeros(4))
    with pytest.raises(ValueError, match="unknown estimator 'jsd'"):
        bounds.get_estimator("jsd")


def test_works_under_autograd_boxes():
    rng = onp.random.default_rng(6)
    w = rng.standard_normal((3, 3))
    x = rng.standard_normal((5, 3))
    loss = lambda w: -bounds.infonce(anp.dot(x, anp.dot(x, w).T))
    assert onp.all(onp.isfinite(grad(loss)(w)))
