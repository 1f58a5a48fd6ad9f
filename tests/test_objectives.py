"""Tests for mi_ref.objectives: the composed loss equals its parts, and its gradient is right."""

import numpy as onp
import pytest

from gradcheck import check_grad
from mi_ref import bounds, critics, nn, objectives


@pytest.fixture
def setup():
    rng = onp.random.default_rng(0)
    g1, g2 = nn.MLP(6, [5, 4]), nn.MLP(6, [5, 4])
    critic = critics.bilinear(4)
    params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
    x1, x2 = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    return params, g1, g2, critic, x1, x2


@pytest.mark.parametrize("estimator", ["infonce", "nwj"])
def test_loss_is_minus_bound_of_composed_scores(setup, estimator):
    params, g1, g2, critic, x1, x2 = setup
    s = critic.apply(params["critic"], g1.apply(params["g1"], x1), g2.apply(params["g2"], x2))
    bound = bounds.get_estimator(estimator)(s)
    assert objectives.mi_loss(params, g1, g2, critic, estimator, x1, x2) == pytest.approx(-bound, rel=1e-15)
    assert objectives.mi_loss(params, g1, g2, critic, estimator, x1, x2, target=2.0) == pytest.approx(
        abs(bound - 2.0), rel=1e-15)


@pytest.mark.parametrize("target", [None, 4.0])
def test_loss_gradient(setup, target):
    params, g1, g2, critic, x1, x2 = setup
    check_grad(lambda p: objectives.mi_loss(p, g1, g2, critic, "infonce", x1, x2, target), [params])
