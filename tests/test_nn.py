"""Tests for mi_ref.nn: layers, MLPs, conv2d, layer norm, the ConvNet and the initializers."""

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad

from gradcheck import check_grad
from mi_ref import nn


@pytest.fixture
def rng():
    return onp.random.default_rng(0)


def conv2d_loop(x, kernel, stride):
    """Direct, loop-by-loop cross-correlation with TensorFlow's 'same' padding (the test's reference)."""
    b, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    ho, top, _ = nn.same_padding(h, kh, stride)
    wo, left, _ = nn.same_padding(w, kw, stride)
    y = onp.zeros((b, ho, wo, o))
    for p in range(ho):
        for q in range(wo):
            for i in range(kh):
                for j in range(kw):
                    r, s = p * stride + i - top, q * stride + j - left
                    if 0 <= r < h and 0 <= s < w:
                        y[:, p, q, :] += x[:, r, s, :] @ kernel[i, j]
    return y


# ---------------------------------------------------------------- initializers

def test_truncated_normal_range_and_std(rng):
    w = nn.truncated_normal(1e-4)(rng, (200, 300))
    assert w.dtype == onp.float64
    assert onp.abs(w).max() <= 2e-4
    # std of N(0,1) truncated at +-2 is 0.8796; 60000 draws give ~0.3% standard error
    assert abs(w.std() / 1e-4 - 0.8796) < 0.01


def test_glorot_uniform_limit(rng):
    w = nn.glorot_uniform(rng, (30, 70))
    limit = onp.sqrt(6 / 100)
    assert onp.abs(w).max() <= limit and onp.abs(w).max() > 0.9 * limit
    k = nn.glorot_uniform(rng, (5, 5, 3, 8))  # fans include the receptive field: 75 and 200
    assert onp.abs(k).max() <= onp.sqrt(6 / 275)


def test_truncated_normal_rejects_bad_std():
    with pytest.raises(ValueError, match="std > 0"):
        nn.truncated_normal(0.0)


# ---------------------------------------------------------------- activations, dense, MLP

def test_activations():
    x = onp.array([-1000.0, -1.0, 0.0, 2.0, 1000.0])
    onp.testing.assert_array_equal(nn.relu(x), [0, 0, 0, 2, 1000])
    sp = nn.softplus(x)
    assert onp.all(onp.isfinite(sp))
    onp.testing.assert_allclose(sp, [0.0, onp.log1p(onp.exp(-1)), onp.log(2), onp.log1p(onp.exp(2)), 1000],
                                rtol=1e-15, atol=1e-300)


def test_relu_derivative_is_zero_at_the_tie():
    """relu'(0) = 0 (TensorFlow's ReluGrad, torch.relu, jax.nn.relu), in reverse and forward mode; elsewhere 0
    or 1. (The derivative the speed wing declares is checked against this gradient in tests/test_accel.py.)"""
    from autograd import elementwise_grad
    from autograd.differential_operators import make_jvp
    x = onp.array([-2.0, -0.0, 0.0, 1e-300, 3.0])
    expected = [0.0, 0.0, 0.0, 1.0, 1.0]
    onp.testing.assert_array_equal(elementwise_grad(nn.relu)(x), expected)
    onp.testing.assert_array_equal(make_jvp(nn.relu)(x)(onp.ones(5))[1], expected)
    assert onp.isnan(nn.relu(onp.array([onp.nan]))[0])


def test_relu_gradient_of_a_blank_conv_window_is_zero():
    """A zero bias on an all-zero 5x5 window gives a pre-activation of exactly 0 and no gradient through it:
    the first layer's bias gradient counts only the windows that see ink."""
    from autograd import grad
    rng = onp.random.default_rng(0)
    model = nn.convnet(6, 8, out_dim=3, channels=(2, 3))
    p = model.init(rng)
    x = onp.zeros((2, 48))
    x[0, 20:23] = rng.random(3)                  # a little ink in one image; the other is blank
    g = grad(lambda p: anp.sum(model.apply(p, x) ** 2))(p)
    blank_only = grad(lambda p: anp.sum(model.apply(p, x[1:]) ** 2))(p)
    onp.testing.assert_array_equal(blank_only["conv1"]["b"], 0.0)
    onp.testing.assert_array_equal(blank_only["conv2"]["b"], 0.0)
    assert onp.any(g["conv1"]["b"] != 0.0)


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        nn.MLP(3, [4], activation="tanhh")


def test_mlp_semantics(rng):
    model = nn.MLP(4, [5, 3])
    p = model.init(rng)
    x = rng.standard_normal((6, 4))
    h = onp.maximum(x @ p["layers"][0]["W"] + p["layers"][0]["b"], 0)
    onp.testing.assert_allclose(model.apply(p, x), h @ p["layers"][1]["W"] + p["layers"][1]["b"], rtol=1e-14)


def test_residual_mlp_semantics_and_identity_start(rng):
    model = nn.MLP(4, [4, 4], shortcuts=True, kernel_init=nn.truncated_normal(1e-4))
    p = model.init(rng)
    x = rng.standard_normal((6, 4))
    h = onp.maximum(x @ p["layers"][0]["W"] + p["layers"][0]["b"], 0) + x
    expected = h @ p["layers"][1]["W"] + p["layers"][1]["b"] + h     # the last layer is residual too
    onp.testing.assert_allclose(model.apply(p, x), expected, rtol=1e-14)
    onp.testing.assert_allclose(model.apply(p, x), x, atol=1e-2)      # near identity at init


def test_residual_mlp_needs_equal_widths():
    with pytest.raises(ValueError, match="shortcuts needs every layer width equal to in_dim=4"):
        nn.MLP(4, [4, 5], shortcuts=True)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_dimension(bad):
    with pytest.raises(ValueError, match="positive integer"):
        nn.Dense(bad, 3)
    with pytest.raises(ValueError, match="positive integer"):
        nn.MLP(3, [4, bad])


def test_wrong_input_width(rng):
    model = nn.MLP(4, [3])
    with pytest.raises(ValueError, match=r"shape \(batch, 4\), got \(2, 5\)"):
        model.apply(model.init(rng), onp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"shape \(batch, 4\), got \(4,\)"):
        model.apply(model.init(rng), onp.zeros(4))


def test_dense_gradients(rng):
    model = nn.Dense(4, 3)
    p, x = model.init(rng), rng.standard_normal((5, 4))
    p["b"] = rng.standard_normal(3)
    check_grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x))), [p, x])


@pytest.mark.parametrize("shortcuts", [False, True])
def test_mlp_gradients(rng, shortcuts):
    model = nn.MLP(4, [4, 4, 4], shortcuts=shortcuts)
    p, x = model.init(rng), rng.standard_normal((5, 4))
    for layer in p["layers"]:
        layer["b"] = 0.1 * rng.standard_normal(layer["b"].shape)
    check_grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x))), [p, x])


def test_softplus_gradient(rng):
    check_grad(lambda x: anp.sum(nn.softplus(x) ** 2), [rng.standard_normal(7) * 3])


# ---------------------------------------------------------------- conv2d

@pytest.mark.parametrize("h,w,k,stride", [(7, 9, 5, 2), (8, 8, 5, 2), (14, 28, 5, 2), (4, 8, 5, 2),
                                          (6, 5, 3, 1), (5, 6, 4, 3), (3, 3, 5, 1)])
def test_conv2d_equals_direct_loop(rng, h, w, k, stride):
    x = rng.standard_normal((2, h, w, 3))
    kern = rng.standard_normal((k, k, 3, 4))
    y = nn.conv2d(x, kern, stride)
    assert y.shape == (2, -(-h // stride), -(-w // stride), 4)
    onp.testing.assert_allclose(y, conv2d_loop(x, kern, stride), rtol=1e-12, atol=1e-12)


def test_same_padding_matches_tensorflow_rule():
    # TF: out = ceil(n / s); pad_total = max((out - 1) s + k - n, 0); the odd pixel goes after
    assert nn.same_padding(28, 5, 2) == (14, 1, 2)
    assert nn.same_padding(14, 5, 2) == (7, 1, 2)
    assert nn.same_padding(7, 5, 2) == (4, 2, 2)
    assert nn.same_padding(4, 5, 2) == (2, 1, 2)
    assert nn.same_padding(9, 3, 3) == (3, 0, 0)


@pytest.mark.parametrize("h,w,stride", [(7, 9, 2), (8, 8, 2), (5, 6, 1)])
def test_conv2d_gradients(rng, h, w, stride):
    x = rng.standard_normal((2, h, w, 2))
    kern = rng.standard_normal((5, 5, 2, 3))
    target = rng.standard_normal((2, -(-h // stride), -(-w // stride), 3))
    check_grad(lambda x, k: anp.sum(anp.sin(nn.conv2d(x, k, stride)) * target), [x, kern])


@pytest.mark.parametrize("h,w,k,stride", [(7, 9, 5, 2), (8, 6, 5, 2), (5, 6, 4, 3), (3, 3, 5, 1)])
def test_col2im_is_the_adjoint_of_im2col(rng, h, w, k, stride):
    """<dcols, im2col(x)> = <col2im(dcols), x>: conv2d's input gradient scatters every patch entry back to the
    pixel it was copied from, and drops the padding's."""
    x = rng.standard_normal((2, h, w, 3))
    cols = nn.im2col(x, k, k, stride)
    dcols = rng.standard_normal(cols.shape)
    dx = nn.col2im(dcols, x.shape, k, k, stride)
    assert dx.shape == x.shape
    onp.testing.assert_allclose(onp.sum(dcols * cols), onp.sum(dx * x), rtol=1e-12)


def test_conv2d_layer_rejects_bad_input(rng):
    layer = nn.Conv2D(1, 4, 5, 2)
    with pytest.raises(ValueError, match="NHWC"):
        layer.apply(layer.init(rng), onp.zeros((2, 8, 8, 3)))


# ---------------------------------------------------------------- layer norm, pooling, ConvNet

def test_layer_norm_zero_mean_unit_std(rng):
    x = 5 + 3 * rng.standard_normal((4, 3, 5, 6))
    y = nn.layer_norm(x, onp.ones(6), onp.zeros(6))
    onp.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    # std is sigma / (sigma + eps) with sigma ~ 3: 1 - 3.3e-7
    sigma = x.std(axis=(1, 2, 3))
    onp.testing.assert_allclose(y.std(axis=(1, 2, 3)), sigma / (sigma + 1e-6), rtol=1e-14)
    scale, bias = rng.standard_normal(6), rng.standard_normal(6)
    onp.testing.assert_allclose(nn.layer_norm(x, scale, bias), y * scale + bias, rtol=1e-13)


def test_layer_norm_is_the_notebook_formula_not_sqrt_var_plus_eps(rng):
    """(x - mean) / (std + 1e-6) with the population std over (h, w, c): equal to 1e-15; the common
    (x - mean) / sqrt(var + 1e-6) differs by far more (about 1e-6 / 2 / std relative here)."""
    x = 0.5 + 0.2 * rng.standard_normal((3, 2, 4, 5))               # std ~ 0.2: the forms differ by ~2e-6
    scale, bias = 1 + 0.1 * rng.standard_normal(5), 0.1 * rng.standard_normal(5)
    mu = x.mean(axis=(1, 2, 3), keepdims=True)
    std = onp.sqrt(((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True))
    formula = (x - mu) / (std + 1e-6) * scale + bias
    y = nn.layer_norm(x, scale, bias)
    onp.testing.assert_allclose(y, formula, rtol=0, atol=1e-15)
    textbook = (x - mu) / onp.sqrt(std ** 2 + 1e-6) * scale + bias
    assert onp.max(onp.abs(y - textbook)) > 1e-7


def test_layer_norm_gradients(rng):
    x = rng.standard_normal((3, 2, 4, 5))
    scale, bias = rng.standard_normal(5), rng.standard_normal(5)
    target = rng.standard_normal(x.shape)
    check_grad(lambda x, s, b: anp.sum(nn.layer_norm(x, s, b) * target), [x, scale, bias])
    check_grad(lambda c: anp.sum(nn.population_std(c) * onp.arange(1.0, 4.0)[:, None, None, None]),
               [x - x.mean(axis=(1, 2, 3), keepdims=True)])


def test_layer_norm_derivative_where_all_values_are_equal(rng):
    """sigma = 0 (e.g. every ReLU off): the derivative is (g - mean(g)) / eps, which finite differences
    with steps far below eps confirm; a chain rule through sqrt would give NaN."""
    x = onp.zeros((2, 1, 2, 3))                     # sigma exactly 0 (and steps below eps stay exact)
    x[1] = rng.standard_normal((1, 2, 3))                           # the second example is ordinary
    target = rng.standard_normal(x.shape)
    f = lambda x_: anp.sum(nn.layer_norm(x_, onp.ones(3), onp.zeros(3)) * target)   # noqa: E731
    g = grad(f)(x)
    assert onp.all(onp.isfinite(g))
    onp.testing.assert_allclose(g[0], (target[0] - target[0].mean()) / 1e-6, rtol=1e-12)
    h = 1e-13
    for idx in [(0, 0, 0, 0), (0, 0, 1, 2)]:
        step = onp.zeros_like(x)
        step[idx] = h
        onp.testing.assert_allclose((f(x + step) - f(x - step)) / (2 * h), g[idx], rtol=1e-5)


def test_global_avg_pool(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    onp.testing.assert_allclose(nn.global_avg_pool(x), x.reshape(2, 12, 5).mean(axis=1))


@pytest.mark.parametrize("height,width", [(14, 28), (4, 8)])
def test_convnet_shapes(rng, height, width):
    model = nn.convnet(height, width)
    p = model.init(rng)
    assert p["conv1"]["W"].shape == (5, 5, 1, 64) and p["conv2"]["W"].shape == (5, 5, 64, 128)
    assert model.apply(p, rng.uniform(size=(3, height * width))).shape == (3, 100)
    with pytest.raises(ValueError, match=f"got \\(3, {height * width + 1}\\)"):
        model.apply(p, onp.zeros((3, height * width + 1)))


def test_convnet_matches_layer_by_layer(rng):
    model = nn.ConvNet(6, 8, out_dim=5, channels=(3, 4))
    p = model.init(rng)
    x = rng.uniform(size=(2, 48))
    h = onp.maximum(conv2d_loop(x.reshape(2, 6, 8, 1), p["conv1"]["W"], 2) + p["conv1"]["b"], 0)
    h = onp.maximum(conv2d_loop(h, p["conv2"]["W"], 2) + p["conv2"]["b"], 0)
    mu = h.mean(axis=(1, 2, 3), keepdims=True)
    sd = onp.sqrt(((h - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)) + 1e-6
    h = ((h - mu) / sd * p["norm"]["scale"] + p["norm"]["bias"]).mean(axis=(1, 2))
    onp.testing.assert_allclose(model.apply(p, x), h @ p["out"]["W"] + p["out"]["b"], rtol=1e-12)


def test_convnet_gradients(rng):
    model = nn.ConvNet(6, 8, out_dim=5, channels=(3, 4))
    p = model.init(rng)
    p["conv1"]["b"] = 0.1 * rng.standard_normal(3)
    p["conv2"]["b"] = 0.1 * rng.standard_normal(4)
    p["norm"]["scale"] = 1 + 0.1 * rng.standard_normal(4)
    x = rng.uniform(size=(3, 48))
    check_grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x))), [p, x])
