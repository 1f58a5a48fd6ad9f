"""Tests for mi_ref.accel: every accelerated twin equals its model's own formula (values and gradients, to
~1e-12 relative) and every hand-written VJP matches central finite differences (gradcheck.check_grad).

Tolerances. Twin and formula do the same float64 operations, but BLAS may sum a product in another
order in the feature-major layout, and a few sums run in another order, so they differ by rounding only:
a few ulps per operation, ~1e-15 relative after a few layers. ``assert_close`` compares in the max norm
relative to the reference's largest entry with rtol 1e-12, which leaves three orders of magnitude of margin
and still catches any wrong term (O(1) relative).
"""

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad, value_and_grad

from gradcheck import assert_trees_equal, check_grad
from mi_ref import accel, bounds, critics, flows, nn, objectives, optim
from mi_ref.accel import activations, conv, primitives, twin
from mi_ref.tree import tree_flatten


def assert_close(actual, expected, rtol=1e-12):
    """Leaf by leaf: max |actual - expected| <= rtol * max |expected leaf| + 1e-14 * max |expected tree|.

    The absolute floor (relative to the largest entry of the whole tree) admits the rounding noise of
    entries that are zero in exact arithmetic, e.g. the gradient of I_NCE with respect to a critic's output
    bias (I_NCE is invariant to adding a constant to every score).
    """
    pairs = (list(zip(tree_flatten(actual), tree_flatten(expected)))
             if isinstance(expected, (dict, list, tuple)) else [(("", actual), ("", expected))])
    assert len(pairs) == len(tree_flatten(expected)) if isinstance(expected, (dict, list, tuple)) else True
    tree_scale = max(float(onp.max(onp.abs(e))) if onp.size(e) else 0.0 for (_, _), (_, e) in pairs)
    for (path, a), (_, e) in pairs:
        a, e = onp.asarray(a), onp.asarray(e)
        assert a.shape == e.shape, (path, a.shape, e.shape)
        if not e.size:
            continue
        scale, err = onp.max(onp.abs(e)), onp.max(onp.abs(a - e))
        assert err <= rtol * scale + 1e-14 * tree_scale, (
            f"{path or '<array>'}: max error {err:.3e} vs scale {scale:.3e}")


def with_biases(rng, params, scale=0.1):
    """Nonzero biases everywhere (init gives zeros), so bias gradients and ReLU patterns are generic."""

    def visit(tree):
        if isinstance(tree, dict):
            for k, v in tree.items():
                if k == "b" and isinstance(v, onp.ndarray):
                    tree[k] = scale * rng.standard_normal(v.shape)
                else:
                    visit(v)
        elif isinstance(tree, list):
            for v in tree:
                visit(v)
    visit(params)
    return params


# ---------------------------------------------------------------- MLP

MLP_CASES = [(False, "relu"), (True, "relu"), (False, "softplus"), (True, "softplus"), (False, "identity")]


@pytest.mark.parametrize("shortcuts,activation", MLP_CASES)
def test_mlp_equals_reference(shortcuts, activation):
    rng = onp.random.default_rng(0)
    dims = [6, 6, 6] if shortcuts else [7, 5, 3]
    model = nn.MLP(6, dims, shortcuts=shortcuts, activation=activation)
    p, x = with_biases(rng, model.init(rng)), rng.standard_normal((9, 6))
    w = rng.standard_normal((9, dims[-1]))
    assert_close(twin(model).apply(p, x), model.apply(p, x))
    f_fast = lambda p, x: anp.sum(anp.sin(primitives.mlp(p, x, activation, shortcuts)) * w)
    f_ref = lambda p, x: anp.sum(anp.sin(nn.MLP(6, dims, shortcuts=shortcuts, activation=activation).apply(p, x)) * w)
    for argnum in (0, 1):
        assert_close(grad(f_fast, argnum)(p, x), grad(f_ref, argnum)(p, x))


@pytest.mark.parametrize("shortcuts,activation", MLP_CASES)
def test_mlp_gradients(shortcuts, activation):
    rng = onp.random.default_rng(1)
    dims = [5, 5, 5] if shortcuts else [6, 4, 3]
    p = with_biases(rng, nn.MLP(5, dims, shortcuts=shortcuts).init(rng))
    x = rng.standard_normal((4, 5))
    check_grad(lambda p, x: anp.sum(anp.sin(primitives.mlp(p, x, activation, shortcuts))), [p, x])


def test_mlp_paper_shapes_equal_reference():
    """The conditioning encoder (residual, identity start) and the critics' MLP at the paper's widths."""
    rng = onp.random.default_rng(2)
    x = rng.uniform(size=(16, 392))
    for model in (nn.MLP(392, [392] * 5, shortcuts=True, kernel_init=nn.truncated_normal(1e-4)),
                  nn.MLP(392, [300, 300, 100])):
        p = with_biases(rng, model.init(rng), 1e-3)
        w = rng.standard_normal((16, model.out_dim))
        assert_close(twin(model).apply(p, x), model.apply(p, x))
        assert_close(grad(lambda p: anp.sum(twin(model).apply(p, x) * w))(p),
                     grad(lambda p: anp.sum(model.apply(p, x) * w))(p))


def test_relu_tie_rule_matches_the_formula():
    """A pre-activation of exactly 0 (zero input row, zero bias) gets relu'(0) = 0 in the twin as in the
    formula: the tied row's input gradient through the first layer is exactly 0, and b1's gradient holds
    only the other rows' contributions."""
    rng = onp.random.default_rng(3)
    model = nn.MLP(4, [5, 3])
    p = model.init(rng)
    x = rng.standard_normal((3, 4))
    x[1] = 0.0
    f_fast = lambda p, x: anp.sum(anp.sin(twin(model).apply(p, x)))
    f_ref = lambda p, x: anp.sum(anp.sin(model.apply(p, x)))
    for argnum in (0, 1):
        assert_close(grad(f_fast, argnum)(p, x), grad(f_ref, argnum)(p, x))
    onp.testing.assert_array_equal(grad(f_fast, 1)(p, x)[1], 0.0)
    without_tie = grad(lambda p: f_ref(p, x[[0, 2]]))(p)
    onp.testing.assert_allclose(grad(f_fast)(p, x)["layers"][0]["b"], without_tie["layers"][0]["b"], rtol=1e-13)


@pytest.mark.parametrize("name", sorted(activations.ACTIVATION_DERIVATIVES))
def test_declared_activation_derivatives_equal_the_formulas_gradient(name):
    """Every derivative the wing declares is autograd's gradient of the registered function (to rounding, ties
    included: relu'(0) = 0 exactly) and the central difference of the function away from kinks."""
    from autograd import elementwise_grad
    fn = nn.ACTIVATIONS.get(name).fn
    derivative = activations.derivative(name)
    u = onp.array([-800.0, -30.0, -2.5, -1e-300, -0.0, 0.0, 1e-300, 0.3, 2.0, 40.0, 800.0])
    onp.testing.assert_allclose(derivative(u), elementwise_grad(fn)(u), rtol=1e-15, atol=0)
    assert derivative(u).dtype == onp.float64 and derivative(u).shape == u.shape
    smooth = onp.array([-3.0, -0.7, 0.4, 1.9])                   # away from relu's kink at 0
    h = 1e-6
    onp.testing.assert_allclose(derivative(smooth), (fn(smooth + h) - fn(smooth - h)) / (2 * h), rtol=1e-8,
                                atol=1e-10)
    if name == "relu":
        onp.testing.assert_array_equal(derivative(onp.array([-0.0, 0.0, onp.nan])), [0.0, 0.0, 0.0])


def test_every_registered_activation_is_declared_and_an_undeclared_one_is_named(monkeypatch):
    """The table covers the registry; a new activation it does not mention is an error naming the activation and
    the table wherever the wing needs its derivative (the twin, the fast Jacobian), and one declared 'none'
    runs on the formulas."""
    from mi_ref.accel import jacobians as fast_jacobians
    from mi_ref.jacobian import batch_jacobian_reference
    from mi_ref.registry import NONE, MissingDeclaration
    assert set(nn.ACTIVATIONS.names()) <= set(activations.ACTIVATION_DERIVATIVES)
    name = "test-sin"
    nn.ACTIVATIONS.register(name, nn.Activation(name, anp.sin))
    try:
        rng = onp.random.default_rng(0)
        model = nn.MLP(3, [4, 2], activation=name)
        params, x = with_biases(rng, model.init(rng)), rng.standard_normal((5, 3))
        message = (r"activation 'test-sin' has no derivative: add an entry for 'test-sin' to "
                   r"ACTIVATION_DERIVATIVES in mi_ref/accel/activations.py \(or 'none' if it has none\)")
        for needs_it in (lambda: twin(model).apply(params, x), lambda: fast_jacobians.has_fast_jacobian(model),
                         lambda: fast_jacobians.batch_jacobian(model, params, x),
                         lambda: activations.derivative(name)):
            with pytest.raises(MissingDeclaration, match=message):
                needs_it()
        monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, name, NONE)
        assert not activations.has_derivative(name) and not fast_jacobians.has_fast_jacobian(model)
        with pytest.raises(ValueError, match=r"'test-sin' is declared without a derivative \('none' in "
                                             r"ACTIVATION_DERIVATIVES"):
            activations.derivative(name)
        onp.testing.assert_array_equal(twin(model).apply(params, x), model.apply(params, x))
        onp.testing.assert_array_equal(fast_jacobians.batch_jacobian(model, params, x),
                                       batch_jacobian_reference(model.apply, params, x))
        monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, name, anp.cos)   # declared: the fast paths run
        assert fast_jacobians.has_fast_jacobian(model)
        assert_close(twin(model).apply(params, x), model.apply(params, x))
        assert_close(grad(lambda p: anp.sum(twin(model).apply(p, x) ** 2))(params),
                     grad(lambda p: anp.sum(model.apply(p, x) ** 2))(params))
        assert_close(fast_jacobians.batch_jacobian(model, params, x), batch_jacobian_reference(model.apply, params, x))
    finally:
        nn.ACTIVATIONS.unregister(name)
    with pytest.raises(ValueError, match="unknown activation 'test-sin'"):
        activations.has_derivative(name)


def test_an_affine_flows_fast_jacobian_needs_the_declared_softplus_derivative(monkeypatch):
    """The forward-mode Jacobian of an affine coupling differentiates its scale 1e-7 + softplus(r) with the
    declared softplus derivative; declared 'none', the affine flow falls back to the reference, the shift-only
    flow (no scale) keeps its fast path."""
    from mi_ref.accel import jacobians as fast_jacobians
    from mi_ref.jacobian import batch_jacobian_reference
    from mi_ref.registry import NONE
    rng = onp.random.default_rng(0)
    affine = flows.realnvp(4, 2, [3], shift_only=False, rng=rng)
    shift = flows.realnvp(4, 2, [3], shift_only=True, rng=rng)
    assert fast_jacobians.has_fast_jacobian(affine) and fast_jacobians.has_fast_jacobian(shift)
    monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, "softplus", NONE)
    assert not fast_jacobians.has_fast_jacobian(affine) and fast_jacobians.has_fast_jacobian(shift)
    params, x = affine.init(rng), rng.standard_normal((3, 4))
    onp.testing.assert_array_equal(fast_jacobians.batch_jacobian(affine, params, x),
                                   batch_jacobian_reference(affine.apply, params, x))


def test_relu_tie_rule_in_the_concat_kernels():
    """The concat critic's fused kernels (one and several hidden layers) take relu'(0) = 0 at exact ties."""
    rng = onp.random.default_rng(4)
    for hidden in ([6], [6, 5]):
        model = critics.concat(3, 3, hidden=hidden)
        p = model.init(rng)
        for layer in p["layers"]:
            layer["b"] = onp.zeros_like(layer["b"])
        u, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
        u[1] = v[2] = 0.0                           # the pair (1, 2) has every first-layer pre-activation at 0
        w = rng.standard_normal((4, 4))
        f_fast = lambda p, u, v: anp.sum(twin(model).apply(p, u, v) * w)
        f_ref = lambda p, u, v: anp.sum(model.apply(p, u, v) * w)
        for argnum in (0, 1, 2):
            assert_close(grad(f_fast, argnum)(p, u, v), grad(f_ref, argnum)(p, u, v))


# ---------------------------------------------------------------- RealNVP chain

def make_flow(shift_only, dim=7, n_couplings=4, hidden=(6, 5), std=0.3, seed=0, batch=5):
    rng = onp.random.default_rng(seed)
    flow = flows.realnvp(dim, n_couplings, list(hidden), shift_only, rng=rng, kernel_init=nn.truncated_normal(std))
    params = with_biases(rng, flow.init(rng))
    return flow, params, rng.standard_normal((batch, dim)), rng


@pytest.mark.parametrize("shift_only", [True, False])
@pytest.mark.parametrize("dim", [7, 8])
def test_chain_equals_reference(shift_only, dim):
    flow, params, x, rng = make_flow(shift_only, dim)
    y, ld = twin(flow).forward(params, x)
    y_ref, ld_ref = flow.forward(params, x)
    assert_close(y, y_ref)
    assert_close(ld, ld_ref) if not shift_only else onp.testing.assert_array_equal(ld, onp.zeros(5))
    wy, wl = rng.standard_normal(y.shape), rng.standard_normal(ld.shape)

    def loss(forward):
        def f(p, x):
            y, ld = forward(p, x)
            return anp.sum(anp.sin(y) * wy) + anp.sum(anp.sin(ld) * wl)
        return f
    for argnum in (0, 1):
        assert_close(grad(loss(twin(flow).forward), argnum)(params, x),
                     grad(loss(flow.forward), argnum)(params, x))


@pytest.mark.parametrize("shift_only", [True, False])
def test_chain_gradients(shift_only):
    flow, params, x, rng = make_flow(shift_only, n_couplings=3)
    w = rng.standard_normal(x.shape)
    check_grad(lambda p, x: anp.sum(anp.sin(twin(flow).apply(p, x)) * w), [params, x])
    if not shift_only:
        check_grad(lambda p, x: anp.sum(anp.sin(twin(flow).log_det(p, x))), [params, x])
        check_grad(lambda p, x: anp.sum(anp.sin(twin(flow).apply(p, x)) * w) + anp.sum(twin(flow).log_det(p, x) ** 2),
                   [params, x])


def test_chain_paper_shapes_equal_reference():
    """RealNVP(392, 30 blocks, [512, 512]) as in the invertible experiment (batch 8), both variants."""
    for shift_only in (True, False):
        rng = onp.random.default_rng(4)
        flow = flows.realnvp(392, 30, [512, 512], shift_only, rng=rng, kernel_init=nn.truncated_normal(1e-2))
        params = with_biases(rng, flow.init(rng), 1e-2)
        x = rng.uniform(size=(8, 392))
        y, ld = twin(flow).forward(params, x)
        y_ref, ld_ref = flow.forward(params, x)
        assert_close(y, y_ref)
        w = rng.standard_normal(y.shape)
        f = lambda fwd: (lambda p: anp.sum(fwd(p, x)[0] * w) + anp.sum(fwd(p, x)[1]))
        assert_close(grad(f(twin(flow).forward))(params), grad(f(flow.forward))(params))
        if not shift_only:
            assert_close(ld, ld_ref)


def test_chain_forward_returns_a_tuple_and_inverse_still_holds():
    flow, params, x, _ = make_flow(False)
    out = twin(flow).forward(params, x)
    assert isinstance(out, tuple) and len(out) == 2
    onp.testing.assert_allclose(flow.inverse(params, twin(flow).apply(params, x)), x, atol=1e-12)


# ---------------------------------------------------------------- concat critic

@pytest.mark.parametrize("dims", [(3, 4), (100, 100)])
def test_concat_equals_reference(dims):
    rng = onp.random.default_rng(5)
    du, dv = dims
    c = critics.concat(du, dv, hidden=(13,))
    p = with_biases(rng, c.init(rng))
    u, v = rng.standard_normal((9, du)), rng.standard_normal((9, dv))
    w = rng.standard_normal((9, 9))
    assert_close(twin(c).apply(p, u, v), c.apply(p, u, v))
    for argnum in (0, 1, 2):
        assert_close(grad(lambda p, u, v: anp.sum(anp.sin(twin(c).apply(p, u, v)) * w), argnum)(p, u, v),
                     grad(lambda p, u, v: anp.sum(anp.sin(c.apply(p, u, v)) * w), argnum)(p, u, v))


def test_concat_gradients_and_tie_rule():
    rng = onp.random.default_rng(6)
    c = critics.concat(3, 2, hidden=(7,))
    p = with_biases(rng, c.init(rng))
    u, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    check_grad(lambda p, u, v: anp.sum(anp.sin(twin(c).apply(p, u, v))), [p, u, v])
    # exact zeros in the hidden pre-activations: u_0 = 0, v_0 = 0 and a zero bias
    p["layers"][0]["b"][:] = 0.0
    u[0], v[0] = 0.0, 0.0
    f = lambda apply: (lambda p, u, v: anp.sum(anp.sin(apply(p, u, v))))
    for argnum in (0, 1, 2):
        assert_close(grad(f(twin(c).apply), argnum)(p, u, v), grad(f(c.apply), argnum)(p, u, v))


@pytest.mark.parametrize("hidden,dims", [((10, 10, 10, 10, 10), (1, 1)), ((7, 5), (3, 2))])
def test_deeper_concat_equals_reference(hidden, dims):
    """The sampling experiment's critic (5 hidden layers of 10 on 1 + 1 values) and a two-layer one: the deep
    primitive against the broadcast formula, values and gradients, and against finite differences."""
    rng = onp.random.default_rng(7)
    c = critics.concat(*dims, hidden=hidden)
    p = with_biases(rng, c.init(rng))
    u, v = rng.standard_normal((6, dims[0])), rng.standard_normal((6, dims[1]))
    assert_close(twin(c).apply(p, u, v), c.apply(p, u, v))
    w = rng.standard_normal((6, 6))
    f = lambda apply: (lambda p, u, v: anp.sum(anp.sin(apply(p, u, v)) * w))  # noqa: E731
    for argnum in (0, 1, 2):
        assert_close(grad(f(twin(c).apply), argnum)(p, u, v), grad(f(c.apply), argnum)(p, u, v))
    check_grad(lambda p, u, v: anp.sum(anp.sin(primitives.concat_scores_deep(p, u, v, dims[0])) * w), [p, u, v])


# ---------------------------------------------------------------- the convolution kernels and the ConvNet

# (H, W, kernel, stride, C): the ConvNet's layers on 14 x 28 and 4 x 8 images, odd and even sizes, windows
# wider than the image on both sides (3 x 3 under 5 x 5), strides above 2 and a 1 x 1 window skipping pixels
CONV_GEOMETRIES = [(7, 9, 5, 2, 3), (14, 28, 5, 2, 1), (7, 14, 5, 2, 6), (6, 5, 3, 1, 2), (5, 6, 4, 3, 2),
                   (3, 3, 5, 1, 2), (4, 8, 5, 2, 3), (8, 6, 5, 2, 2), (1, 2, 5, 1, 1), (5, 4, 1, 2, 3)]


@pytest.mark.parametrize("h,w,k,stride,c", CONV_GEOMETRIES)
def test_patches_equal_the_formula_bit_for_bit(h, w, k, stride, c):
    """conv.patches copies the values mi_ref.nn.im2col copies (zeros where the window leaves the image): the
    tolerance is 0."""
    x = onp.random.default_rng(8).standard_normal((3, h, w, c))
    fast = conv.patches(x, k, k, stride)
    assert fast.shape == nn.im2col(x, k, k, stride).shape
    onp.testing.assert_array_equal(fast, nn.im2col(x, k, k, stride))


@pytest.mark.parametrize("h,w,k,stride,c", CONV_GEOMETRIES)
def test_unpatch_equals_the_formula_bit_for_bit(h, w, k, stride, c):
    """conv.unpatch and mi_ref.nn.col2im add the same patch entries into each pixel, starting from 0, in the
    same order (by output position: the kernel offsets from the last to the first), and numba keeps IEEE
    addition in program order (no fastmath): the same bits, so the tolerance is 0. Any other order would be
    within 2 n u sum |terms| of it (n <= ceil(k / stride)^2 terms per pixel, u = 2^-53)."""
    rng = onp.random.default_rng(9)
    x_shape = (3, h, w, c)
    dcols = rng.standard_normal(nn.im2col(onp.zeros(x_shape), k, k, stride).shape)
    fast = conv.unpatch(dcols, x_shape, k, k, stride)
    assert fast.shape == x_shape
    onp.testing.assert_array_equal(fast, nn.col2im(dcols, x_shape, k, k, stride))


@pytest.mark.parametrize("height,width,channels", [(14, 28, (64, 128)), (4, 8, (3, 4)), (7, 9, (2, 5))])
def test_convnet_equals_reference(height, width, channels):
    """The whole-ConvNet primitive against the layer-by-layer network (nn.conv2d, layer_norm, pooling)."""
    rng = onp.random.default_rng(10)
    model = nn.ConvNet(height, width, out_dim=7, channels=channels)
    p = with_biases(rng, model.init(rng), 0.05)
    p["norm"]["scale"] = 1 + 0.1 * rng.standard_normal(channels[1])
    x = rng.uniform(size=(4, height * width))
    assert_close(twin(model).apply(p, x), model.apply(p, x))
    w = rng.standard_normal((4, 7))
    for argnum in (0, 1):
        assert_close(grad(lambda p, x: anp.sum(anp.sin(twin(model).apply(p, x)) * w), argnum)(p, x),
                     grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x)) * w), argnum)(p, x))


def test_convnet_equals_reference_where_an_example_has_zero_std():
    """An all-zero image with zero biases leaves every ReLU of conv2 at 0: sigma = 0 in the layer norm. The
    fast path takes the same finite derivative there as the reference (not NaN)."""
    rng = onp.random.default_rng(19)
    model = nn.ConvNet(4, 8, out_dim=5, channels=(3, 4))
    p = model.init(rng)
    p["norm"]["scale"] = 1 + 0.1 * rng.standard_normal(4)
    x = rng.uniform(size=(3, 32))
    x[1] = 0.0
    w = rng.standard_normal((3, 5))
    assert_close(twin(model).apply(p, x), model.apply(p, x))
    for argnum in (0, 1):
        g_fast = grad(lambda p, x: anp.sum(anp.sin(twin(model).apply(p, x)) * w), argnum)(p, x)
        g_ref = grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x)) * w), argnum)(p, x)
        assert all(onp.all(onp.isfinite(leaf)) for _, leaf in tree_flatten(g_fast))
        assert_close(g_fast, g_ref)


@pytest.mark.parametrize("kernel_size,stride", [(5, 2), (3, 1), (4, 3)])
def test_convnet_gradients(kernel_size, stride):
    """Central finite differences through the ConvNet primitive (the patch kernels, both convolutions' VJPs,
    the input gradient included), for the paper's 5x5 stride 2 and other windows."""
    rng = onp.random.default_rng(16)
    model = nn.ConvNet(5, 7, out_dim=3, channels=(2, 3), kernel_size=kernel_size, stride=stride)
    p = with_biases(rng, model.init(rng), 0.1)
    p["norm"]["scale"] = 1 + 0.1 * rng.standard_normal(3)
    x = rng.uniform(size=(3, 35))
    check_grad(lambda p, x: anp.sum(anp.sin(conv.convnet(model, p, x))), [p, x])


@pytest.mark.parametrize("min_patch", [1, 10 ** 9])
def test_convnet_channel_and_position_major_layouts(min_patch, monkeypatch):
    """Every convolution channel-major (min_patch 1) or every one position-major (10^9): the same formula
    (values and gradients, zero-std and tied examples included: relu'(0) = 0) and the finite differences."""
    monkeypatch.setattr(conv, "CHANNEL_MAJOR_MIN_PATCH", min_patch)
    rng = onp.random.default_rng(21)
    model = nn.ConvNet(5, 7, out_dim=3, channels=(6, 4))
    p = with_biases(rng, model.init(rng), 0.1)
    p["norm"]["scale"] = 1 + 0.1 * rng.standard_normal(4)
    x = rng.uniform(size=(3, 35))
    check_grad(lambda p, x: anp.sum(anp.sin(conv.convnet(model, p, x))), [p, x])
    p0 = model.init(rng)                                   # zero biases: a blank image ties every ReLU at 0
    x[1] = 0.0
    w = rng.standard_normal((3, 3))
    assert_close(twin(model).apply(p0, x), model.apply(p0, x))
    for argnum in (0, 1):
        assert_close(grad(lambda p, x: anp.sum(anp.sin(twin(model).apply(p, x)) * w), argnum)(p0, x),
                     grad(lambda p, x: anp.sum(anp.sin(model.apply(p, x)) * w), argnum)(p0, x))


def test_convnet_untraced_calls_run_in_slices(monkeypatch):
    """Untraced ConvNet calls on many examples run slice by slice (bounded patches), with the formula's
    numbers; a traced call runs whole."""
    rng = onp.random.default_rng(22)
    model = nn.ConvNet(4, 8, out_dim=5, channels=(6, 4))
    p = with_biases(rng, model.init(rng), 0.1)
    x = rng.uniform(size=(7, 32))
    whole = twin(model).apply(p, x)
    monkeypatch.setattr(conv, "CONVNET_SLICE", 3)
    sliced = twin(model).apply(p, x)
    assert sliced.shape == (7, 5) and type(sliced) is onp.ndarray
    assert_close(sliced, model.apply(p, x))
    assert_close(sliced, whole)
    g = grad(lambda p: anp.sum(anp.sin(twin(model).apply(p, x))))(p)
    assert_close(g, grad(lambda p: anp.sum(anp.sin(model.apply(p, x))))(p))


def test_a_lone_conv_layer_runs_its_formula():
    """The convolution's hand-written gradient is mi_ref.nn.conv2d's alone: a Conv2D layer has no twin."""
    layer = nn.Conv2D(3, 4, 5, 2)
    assert twin(layer) is layer


# ---------------------------------------------------------------- Adam

def test_adam_fused_equals_the_formula_bit_for_bit():
    rng = onp.random.default_rng(11)
    params = {"a": rng.standard_normal((300, 70)), "b": [rng.standard_normal(5), rng.standard_normal((2, 3))]}
    adam = optim.Adam(lr=1e-3)
    p1 = p2 = params
    s1 = s2 = adam.init(params)
    for _ in range(4):
        g = {"a": rng.standard_normal((300, 70)), "b": [rng.standard_normal(5), rng.standard_normal((2, 3))]}
        p1, s1 = accel.adam_update(adam, p1, g, s1)
        p2, s2 = adam.update(p2, g, s2)
        assert_trees_equal([p1, s1["m"], s1["v"]], [p2, s2["m"], s2["v"]])
        assert s1["step"] == s2["step"]
    # non-contiguous gradients and inputs are not modified
    g = {"a": onp.asfortranarray(rng.standard_normal((300, 70))), "b": [rng.standard_normal(10)[::2],
                                                                          rng.standard_normal((2, 3))]}
    before = [onp.copy(v) for _, v in tree_flatten([p1, s1["m"], s1["v"]])]
    q1, _ = accel.adam_update(adam, p1, g, s1)
    q2, _ = adam.update(p1, g, s1)
    assert_trees_equal(q1, q2)
    for a, (_, b) in zip(before, tree_flatten([p1, s1["m"], s1["v"]])):
        onp.testing.assert_array_equal(a, b)


def test_adam_in_place_equals_functional():
    """inplace=True gives the same bits, in the very arrays it was given (except leaves it cannot overwrite)."""
    rng = onp.random.default_rng(18)
    adam = optim.Adam(lr=1e-3)
    params = {"a": rng.standard_normal((30, 7)), "b": [rng.standard_normal(5), onp.asfortranarray(
        rng.standard_normal((4, 3)))]}
    state = adam.init(params)
    fortran_leaf = params["b"][1]
    fortran_copy = fortran_leaf.copy()
    for _ in range(3):
        grads = {"a": rng.standard_normal((30, 7)), "b": [rng.standard_normal(5), rng.standard_normal((4, 3))]}
        expected_p, expected_s = adam.update(params, grads, state)
        a_in, m_in = params["a"], state["m"]["a"]
        params, state = accel.adam_update(adam, params, grads, state, inplace=True)
        assert params["a"] is a_in and state["m"]["a"] is m_in          # overwritten, not reallocated
        assert_trees_equal([params, state["m"], state["v"]], [expected_p, expected_s["m"], expected_s["v"]])
        assert state["step"] == expected_s["step"]
    # the Fortran-order leaf cannot be overwritten in place: it got new (C-order) arrays, and is unchanged
    assert params["b"][1] is not fortran_leaf and params["b"][1].flags.c_contiguous
    onp.testing.assert_array_equal(fortran_leaf, fortran_copy)


@pytest.mark.parametrize("form", ["tf", "textbook"])
@pytest.mark.parametrize("parallel_min_size", [0, 1])
def test_adam_kernels_equal_the_formula_in_both_forms_serial_and_split(form, parallel_min_size, monkeypatch):
    """Both forms (the TF form runs the kernel without the divisions by 1), one thread or the leaves split
    over numba's threads, and the textbook form late in training where 1 - b1^t rounds to 1: the same bits."""
    from mi_ref.accel import adam as adam_module
    monkeypatch.setattr(adam_module, "PARALLEL_MIN_SIZE", parallel_min_size)
    rng = onp.random.default_rng(19)
    adam = optim.Adam(lr=1e-3, form=form)
    params = {"a": rng.standard_normal((257, 13)), "b": rng.standard_normal(3)}
    for start in (0, 10 ** 6):
        state = dict(adam.init(params), step=start)
        p_fast, s_fast = accel.owned(params, state)
        p_ref, s_ref = params, state
        for _ in range(3):
            grads = {"a": rng.standard_normal((257, 13)), "b": rng.standard_normal(3)}
            p_ref, s_ref = adam.update(p_ref, grads, s_ref)
            p_fast, s_fast = accel.adam_update(adam, p_fast, grads, s_fast, inplace=True)
            assert_trees_equal([p_fast, s_fast["m"], s_fast["v"]], [p_ref, s_ref["m"], s_ref["v"]])


# ---------------------------------------------------------------- integration and plumbing

def small_config(config, rng):
    """(g1, g2, critic, params, x1, x2): a paper configuration at small widths, nonzero biases."""
    if config == "invertible":
        g1, g2 = (flows.realnvp(10, 3, [8, 8], rng=rng, kernel_init=nn.truncated_normal(0.1)) for _ in range(2))
        critic, d = critics.bilinear(10), 10
    elif config == "conditioning":
        g1, g2 = (nn.MLP(10, [10] * 5, shortcuts=True, kernel_init=nn.truncated_normal(0.1)) for _ in range(2))
        critic, d = critics.bilinear(10), 10
    elif config == "critics":
        g1, g2 = nn.MLP(10, [9, 9, 4]), nn.MLP(10, [9, 9, 4])
        critic, d = critics.concat(4, hidden=(12,)), 10
    else:
        g1, g2 = nn.ConvNet(4, 8, out_dim=5, channels=(3, 4)), nn.ConvNet(4, 8, out_dim=5, channels=(3, 4))
        critic, d = critics.bilinear(5), 32
    params = with_biases(rng, {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)})
    x1, x2 = rng.uniform(size=(6, d)), rng.uniform(size=(6, d))
    return g1, g2, critic, params, x1, x2


CONFIGS = ["invertible", "conditioning", "critics", "encoders"]


@pytest.mark.parametrize("config", CONFIGS)
def test_training_loss_and_gradient_equal_reference(config):
    """mi_loss and its gradient in each paper configuration (smaller widths), fast vs reference models."""
    g1, g2, critic, params, x1, x2 = small_config(config, onp.random.default_rng(12))
    for estimator in ("infonce", "nwj"):
        fast_vg = value_and_grad(objectives.mi_loss)(params, g1, g2, critic, estimator, x1, x2)
        refs = [(m) for m in (g1, g2, critic)]
        ref_vg = value_and_grad(objectives.mi_loss)(params, *refs, estimator, x1, x2)
        assert_close(fast_vg[0], ref_vg[0])
        assert_close(fast_vg[1], ref_vg[1])
    check_grad(lambda p: objectives.mi_loss(p, g1, g2, critic, "infonce", x1, x2), [params], n_dirs=1)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("models", ["fast", "reference"])
def test_value_and_grad_by_key_equals_autograd(config, models):
    """One root per entry gives autograd's values exactly (array_equal), through the fast primitives (one node per
    sub-model) and through the reference formulations (which index deep into each entry)."""
    g1, g2, critic, params, x1, x2 = small_config(config, onp.random.default_rng(16))
    if models == "reference":
        g1, g2, critic = ((m) for m in (g1, g2, critic))
    for target in (None, 0.5):
        args = (g1, g2, critic, "infonce", x1, x2, target)
        value, grads = accel.value_and_grad_by_key(objectives.mi_loss)(params, *args)
        ref_value, ref_grads = value_and_grad(objectives.mi_loss)(params, *args)
        assert value == ref_value
        assert list(grads) == ["critic", "g1", "g2"]
        assert_trees_equal(grads, ref_grads)


def test_value_and_grad_by_key_entries_used_twice_or_not_at_all():
    rng = onp.random.default_rng(17)
    params = {"b": rng.standard_normal(3), "a": rng.standard_normal((2, 3)), "unused": {"w": onp.ones(4)},
              "nested": {"u": [rng.standard_normal(3), 2.0]}}

    def loss(p, scale=1.0):
        first = anp.sum(anp.tanh(p["a"] * p["b"]))
        second = anp.sum(p["b"] ** 3) * p["nested"]["u"][1] + anp.sum(anp.sin(p["nested"]["u"][0]))
        return scale * (first + second)
    value, grads = accel.value_and_grad_by_key(loss)(params, scale=2.0)
    ref_value, ref_grads = value_and_grad(loss)(params, scale=2.0)
    assert value == ref_value
    assert_trees_equal(grads, ref_grads)
    assert onp.array_equal(grads["unused"]["w"], onp.zeros(4))
    check_grad(lambda p: loss(p, 2.0), [params], n_dirs=2)      # and both are the true derivative


def test_value_and_grad_by_key_constant_and_bad_input():
    value, grads = accel.value_and_grad_by_key(lambda p: 3.0)({"a": onp.ones(2)})
    assert value == 3.0 and onp.array_equal(grads["a"], onp.zeros(2))
    vg = accel.value_and_grad_by_key(lambda p: p["a"] * 2.0)
    with pytest.raises(ValueError, match="real floating-point scalar"):
        vg({"a": onp.ones(2)})
    with pytest.raises(ValueError, match="dict of parameters"):
        vg([onp.ones(2)])
    value, grads = vg({"a": onp.ones(1)})                  # a one-element array is a scalar loss
    assert onp.array_equal(grads["a"], [2.0])
    with pytest.raises(ValueError, match="floating-point scalar"):
        accel.value_and_grad_by_key(lambda p: 3)({"a": onp.ones(2)})


def test_value_and_grad_by_key_inside_another_derivative():
    """Nested use: the derivative of a function that itself takes gradients by key (second order through
    plain autograd.numpy operations) equals autograd's."""
    def inner(p, x):
        return anp.sum(anp.sin(p["w"] * x) * p["c"])

    def outer(x):
        _, grads = accel.value_and_grad_by_key(inner)({"w": anp.array([0.3, -1.2]), "c": 0.7}, x)
        return anp.sum(grads["w"] ** 2) + grads["c"]

    def outer_ref(x):
        grads = grad(inner)({"w": anp.array([0.3, -1.2]), "c": 0.7}, x)
        return anp.sum(grads["w"] ** 2) + grads["c"]
    x = onp.array([0.5, 2.0])
    onp.testing.assert_allclose(grad(outer)(x), grad(outer_ref)(x), rtol=1e-14)
    check_grad(outer, [x], n_dirs=2)


def test_inner_boxes_fall_back_to_reference():
    """Params rebuilt by hand from boxed leaves: the fast path steps aside and the gradient is still right."""
    rng = onp.random.default_rng(13)
    model = nn.MLP(4, [5, 3])
    p = with_biases(rng, model.init(rng))
    x = rng.standard_normal((3, 4))
    ws = [layer["W"] for layer in p["layers"]]
    bs = [layer["b"] for layer in p["layers"]]

    def f(ws):
        rebuilt = {"layers": [{"W": w, "b": b} for w, b in zip(ws, bs)]}
        assert not primitives.supports(rebuilt)
        return anp.sum(anp.sin(twin(model).apply(rebuilt, x)))
    g = grad(f)(ws)
    g_ref = grad(lambda p: anp.sum(anp.sin(model.apply(p, x))))(p)
    assert_close(g, [layer["W"] for layer in g_ref["layers"]])
    assert primitives.supports(p) and not primitives.supports(p, "tanh")


def test_second_order_raises():
    rng = onp.random.default_rng(14)
    model = nn.MLP(3, [4, 2])
    p, x = model.init(rng), rng.standard_normal((2, 3))
    g = lambda x: anp.sum(grad(lambda x: anp.sum(twin(model).apply(p, x) ** 2))(x))
    with pytest.raises(NotImplementedError, match="first order"):
        grad(g)(x)


def test_vjp_can_run_twice_for_jacobians():
    """autograd.jacobian runs one backward pass per output; the cached forward must survive them all."""
    from autograd import jacobian
    flow, params, x, _ = make_flow(False, batch=1)
    jac = jacobian(lambda r: twin(flow).apply(params, r[None, :])[0])(x[0])
    jac_ref = jacobian(lambda r: flow.forward(params, r[None, :])[0][0])(x[0])
    assert_close(jac, jac_ref)


def test_untraced_calls_keep_no_cache():
    """Without autograd boxes the primitives run plain numpy and return plain arrays."""
    rng = onp.random.default_rng(15)
    flow = flows.realnvp(6, 2, [4], rng=rng)
    y, ld = twin(flow).forward(flow.init(rng), rng.standard_normal((3, 6)))
    assert type(y) is onp.ndarray and type(ld) is onp.ndarray
    assert y.flags.c_contiguous
    assert bounds.infonce(onp.eye(3)) > 0
