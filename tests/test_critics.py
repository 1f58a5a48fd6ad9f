"""Tests for mi_ref.critics: score-matrix formulas, gradients and input validation."""

import autograd.numpy as anp
import numpy as onp
import pytest

from gradcheck import check_grad
from mi_ref import critics, nn


@pytest.fixture
def data():
    rng = onp.random.default_rng(0)
    return rng, rng.standard_normal((5, 3)), rng.standard_normal((5, 4))


def test_inner_product(data):
    rng, u, _ = data
    v = rng.standard_normal((5, 3))
    c = critics.inner_product()
    onp.testing.assert_allclose(c.apply(c.init(rng), u, v), u @ v.T, rtol=1e-14)


def test_bilinear_formula(data):
    rng, u, v = data
    c = critics.bilinear(3, 4)
    p = c.init(rng)
    s = c.apply(p, u, v)
    assert s.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            assert s[i, j] == pytest.approx(u[i] @ (v[j] @ p["W"]), rel=1e-13)


def test_separable_formula(data):
    rng, u, v = data
    c = critics.separable(3, 4, hidden=(6,), out_dim=2)
    p = c.init(rng)
    f = c.f.apply(p["f"], u)
    h = c.h.apply(p["h"], v)
    assert f.shape == (5, 2)
    onp.testing.assert_allclose(c.apply(p, u, v), f @ h.T, rtol=1e-13)


@pytest.mark.parametrize("hidden", [(6,), (10, 10, 10, 10, 10)])
def test_concat_equals_mlp_on_every_concatenated_pair(data, hidden):
    rng, u, v = data
    c = critics.concat(3, 4, hidden=hidden)
    p = c.init(rng)
    for layer in p["layers"]:
        layer["b"] = 0.1 * rng.standard_normal(layer["b"].shape)
    s = c.apply(p, u, v)
    pairs = onp.concatenate([onp.repeat(u, 5, axis=0), onp.tile(v, (5, 1))], axis=1)  # row i*5+j = [u_i; v_j]
    expected = nn.MLP(7, list(hidden) + [1]).apply(p, pairs).reshape(5, 5)
    onp.testing.assert_allclose(s, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["bilinear", "separable", "concat"])
def test_gradients(data, name):
    rng, u, v = data
    c = critics.build(name, 3, 4, **({"hidden": (6,)} if name != "bilinear" else {}))
    p = c.init(rng)
    target = rng.standard_normal((5, 5))
    check_grad(lambda p, u, v: anp.sum(anp.sin(c.apply(p, u, v)) * target), [p, u, v])


def test_inner_product_gradient(data):
    rng, u, _ = data
    v = rng.standard_normal((5, 3))
    c = critics.inner_product()
    check_grad(lambda u, v: anp.sum(anp.sin(c.apply({}, u, v))), [u, v])


def test_mismatched_batch_sizes(data):
    rng, u, v = data
    for c in (critics.bilinear(3, 4), critics.separable(3, 4), critics.concat(3, 4)):
        with pytest.raises(ValueError, match="same batch size"):
            c.apply(c.init(rng), u, v[:4])


def test_wrong_widths_and_ranks(data):
    rng, u, v = data
    c = critics.bilinear(3, 4)
    with pytest.raises(ValueError, match=r"v must have shape \(batch, 4\), got \(5, 3\)"):
        c.apply(c.init(rng), u, u)
    with pytest.raises(ValueError, match="must be 2-D"):
        c.apply(c.init(rng), u[0], v)
    with pytest.raises(ValueError, match="equal width"):
        critics.inner_product().apply({}, u, v)
    with pytest.raises(ValueError, match="positive integer"):
        critics.concat(0)
