"""Tests for mi_ref.metric_learning: the K-pair identity, triplet losses by hand, gradients."""

import numpy as onp
import pytest

from gradcheck import check_grad
from mi_ref import bounds, critics, metric_learning as ml


def test_kpair_identity_with_inner_product_and_separable_critics():
    rng = onp.random.default_rng(0)
    a, p = rng.standard_normal((16, 5)), rng.standard_normal((16, 5))
    s = critics.inner_product().apply({}, a, p)
    assert abs(ml.kpair_loss(a, p) - (onp.log(16) - bounds.infonce(s))) < 1e-12
    sep = critics.separable(5, hidden=(7,), out_dim=4)
    params = sep.init(rng)
    fu, hv = sep.embed(params, a, p)
    assert abs(ml.kpair_loss(fu, hv) - (onp.log(16) - bounds.infonce(sep.apply(params, a, p)))) < 1e-12


def test_kpair_matches_sohn_form():
    rng = onp.random.default_rng(1)
    a, p = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    expected = onp.mean([onp.log1p(sum(onp.exp(a[i] @ p[j] - a[i] @ p[i]) for j in range(6) if j != i))
                         for i in range(6)])
    assert ml.kpair_loss(a, p) == pytest.approx(expected, rel=1e-13)


def test_triplet_losses_by_hand():
    s = onp.array([[3.0, 1.0, 2.5],
                   [0.0, 1.0, 0.5],
                   [4.0, -1.0, 2.0]])
    # hinges max(0, 1 + S_ij - S_ii): row 0: (0, 0.5); row 1: (0, 0.5); row 2: (3, 0)
    assert ml.triplet_loss(s, margin=1.0) == pytest.approx((0.5 + 0.5 + 3.0) / 6)
    # hardest negatives: row 0: 2.5 -> 0.5; row 1: 0.5 -> 0.5; row 2: 4 -> 3
    assert ml.triplet_loss_hardest(s, margin=1.0) == pytest.approx((0.5 + 0.5 + 3.0) / 3)
    assert ml.triplet_loss(s, margin=0.0) == pytest.approx(2.0 / 6)
    assert ml.triplet_loss(10 * onp.eye(3)) == 0.0 and ml.triplet_loss_hardest(10 * onp.eye(3)) == 0.0


@pytest.mark.parametrize("loss", [ml.kpair_loss_from_scores, ml.triplet_loss, ml.triplet_loss_hardest])
def test_gradients_away_from_kinks(loss):
    """Random scores: no hinge sits within h = 1e-6 of 0 and no two negatives tie (probability ~ 0)."""
    rng = onp.random.default_rng(2)
    check_grad(loss, [rng.standard_normal((6, 6))])


def test_kpair_gradient_on_embeddings():
    rng = onp.random.default_rng(3)
    check_grad(ml.kpair_loss, [rng.standard_normal((5, 3)), rng.standard_normal((5, 3))])


def test_bad_input():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ml.triplet_loss(onp.zeros((3, 3)), margin=-1)
    with pytest.raises(ValueError, match="square"):
        ml.triplet_loss_hardest(onp.zeros((3, 2)))
    with pytest.raises(ValueError, match="same batch size"):
        ml.kpair_loss(onp.zeros((3, 2)), onp.zeros((4, 2)))
    with pytest.raises(ValueError, match="same width"):
        ml.kpair_loss(onp.zeros((3, 2)), onp.zeros((3, 4)))
