"""Tests for mi_ref.jacobian and its fast twins in the speed wing (mi_ref.accel.jacobians, mi_ref.accel.linalg):
fast Jacobians against autograd, singular values (both) against numpy and the truth, conditioning.

Tolerances and why:

* the reference differentiates the models' formulas written op by op (``plain_apply``: the MLP and the
  coupling formula), so that the ground truth is autograd alone, independent of any hand-written VJP that
  ``model.apply`` may use; ``test_plain_formulas_are_the_models`` ties them to the models;
* reference vs finite differences: central differences with h = 1e-6 (error ~1e-10 relative), 1e-6;
* fast vs reference: both compute the same sums of products in different orders, so they differ by
  rounding only (measured <= 2e-12 relative per entry, with cancellation). Required: 1e-9 relative per
  entry, |fast - ref| <= 1e-9 max(|ref|, 1e-6 max|ref[b]|); the floor keeps entries below 1e-6 of their
  matrix's largest entry (e.g. ~1e-25 in near-identity flows) to the absolute rounding level of the products;
* singular values: LAPACK's dgesdd is backward stable (absolute error ~ n eps sigma_max), so on matrices
  with condition number <= ~1e3 every value is accurate to ~1e-12 relative: 1e-10 required; on rank-deficient
  matrices the zero singular values are checked absolutely, against 1e-13 sigma_max.
"""

import warnings

import autograd.numpy as anp
import numpy as onp
import pytest

from mi_ref import accel, flows, jacobian, nn
from mi_ref.accel import jacobians as fast_jacobians
from mi_ref.accel import linalg as fast_linalg

# the reference (numpy's dgesdd, one matrix after another) and the speed wing's (the same routine per numba thread)
SINGULAR_VALUES = pytest.mark.parametrize("singular_values", [jacobian.singular_values, fast_linalg.singular_values],
                                          ids=["reference", "fast"])
# the formula (autograd through model.apply) and the speed wing's (forward mode where it has a fast path)
BATCH_JACOBIANS = pytest.mark.parametrize("batch_jacobian", [jacobian.batch_jacobian, fast_jacobians.batch_jacobian],
                                          ids=["reference", "fast"])


def entrywise_close(fast, ref, rtol=1e-9, floor=1e-6):
    fast, ref = onp.asarray(fast), onp.asarray(ref)
    assert fast.shape == ref.shape
    scale = onp.abs(ref).max(axis=(1, 2), keepdims=True)
    err = onp.abs(fast - ref)
    bound = rtol * onp.maximum(onp.abs(ref), floor * scale)
    worst = onp.unravel_index(onp.argmax(err / bound), err.shape)
    assert onp.all(err <= bound), (f"fast and reference Jacobians differ at {worst}: "
                                   f"{fast[worst]!r} vs {ref[worst]!r}")


def random_biases(params_layers, rng, std=0.1):
    for layer in params_layers:
        layer["b"] = std * rng.standard_normal(layer["b"].shape)


# -------------------------------------------------------------------------------------------- models

ACTIVATIONS = {"relu": nn.relu, "softplus": nn.softplus, "identity": nn.identity}


def mlp_formula(params, x, activation=nn.relu, shortcuts=False):
    """The MLP written out here: a dense layer per entry, the activation after all but the last, shortcuts."""
    layers = params["layers"]
    for i, layer in enumerate(layers):
        out = anp.dot(x, layer["W"]) + layer["b"]
        if i < len(layers) - 1:
            out = activation(out)
        x = out + x if shortcuts else out
    return x


def plain_apply(model):
    """The model's formula op by op in autograd.numpy: (params, x) -> y (see the flows module docstring)."""
    if isinstance(model, nn.MLP):
        return lambda params, x: mlp_formula(params, x, ACTIVATIONS[model.activation_name], model.shortcuts)
    blocks = model.blocks if isinstance(model, flows.RealNVP) else [model]

    def apply(params, x):
        for block, p in zip(blocks, params["blocks"] if isinstance(model, flows.RealNVP) else [params]):
            h, n = block.split, block.n_out
            x = x[:, block.perm]                      # every block: permute, then couple
            out = mlp_formula(p["net"], x[:, :h])
            x_b = x[:, h:]
            if block.shift_only:
                y_b = x_b + out
            else:
                y_b = x_b * (flows.SCALE_FLOOR + nn.softplus(out[:, n:])) + out[:, :n]
            x = anp.concatenate([x[:, :h], y_b], axis=1)
        return x
    return apply


def make_model(kind, near_identity, seed=0):
    """(model, params, x) for one of the fast paths, random (std ~0.3-0.5, nonzero biases) or near identity."""
    rng = onp.random.default_rng(seed)
    init = nn.truncated_normal(1e-4) if near_identity else nn.truncated_normal(0.4)
    if kind == "mlp":
        model = nn.MLP(7, [9, 8, 5], kernel_init=init)
    elif kind == "residual_mlp":
        model = nn.MLP(8, [8] * 4, shortcuts=True, kernel_init=init)
    elif kind == "softplus_mlp":
        model = nn.MLP(6, [7, 4], activation="softplus", kernel_init=init)
    elif kind == "identity_mlp":
        model = nn.MLP(6, [5, 7], activation="identity", kernel_init=init)
    elif kind == "narrowing_mlp":                                 # like the critics' MLP(392, [300, 300, 100])
        model = nn.MLP(12, [10, 10, 3], kernel_init=init)
    elif kind == "widening_mlp":
        model = nn.MLP(3, [10, 10, 12], activation="softplus", kernel_init=init)
    elif kind in ("shift_realnvp", "affine_realnvp"):
        model = flows.RealNVP(9, 5, [8, 7], shift_only=kind == "shift_realnvp", rng=rng, kernel_init=init)
    elif kind == "affine_coupling":
        model = flows.AffineCoupling(7, [6], shift_only=False, perm=rng.permutation(7), kernel_init=init)
    else:
        raise AssertionError(kind)
    params = model.init(rng)
    if not near_identity:
        if isinstance(model, nn.MLP):
            random_biases(params["layers"], rng)
        else:
            blocks = params["blocks"] if isinstance(model, flows.RealNVP) else [params]
            for block in blocks:
                random_biases(block["net"]["layers"], rng)
    x = rng.standard_normal((5, model.dim if kind == "affine_coupling" else model.in_dim))
    return model, params, x


FAST_KINDS = ["mlp", "residual_mlp", "softplus_mlp", "identity_mlp", "shift_realnvp", "affine_realnvp",
              "affine_coupling"]


# ----------------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("kind", FAST_KINDS)
def test_plain_formulas_are_the_models(kind):
    model, params, x = make_model(kind, near_identity=False)
    onp.testing.assert_allclose(plain_apply(model)(params, x), model.apply(params, x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["residual_mlp", "softplus_mlp", "affine_realnvp"])
def test_reference_matches_finite_differences(kind):
    """The reference through ``model.apply`` (as batch_jacobian's fallback calls it) vs central differences."""
    model, params, x = make_model(kind, near_identity=False)
    J = jacobian.batch_jacobian_reference(model.apply, params, x)
    assert J.shape == (x.shape[0], model.apply(params, x).shape[1], x.shape[1]) and J.flags.c_contiguous
    h = 1e-6
    for b in range(x.shape[0]):
        for j in range(x.shape[1]):
            step = onp.zeros_like(x[b:b + 1])
            step[0, j] = h
            row = x[b:b + 1]
            column = (model.apply(params, row + step) - model.apply(params, row - step))[0] / (2 * h)
            onp.testing.assert_allclose(J[b, :, j], column, rtol=1e-6, atol=1e-8)


def test_reference_of_a_plain_function():
    W = onp.arange(6.0).reshape(3, 2)
    J = jacobian.batch_jacobian_reference(lambda p, x: x @ p, W, onp.ones((4, 3)))
    onp.testing.assert_array_equal(J, onp.broadcast_to(W.T, (4, 2, 3)))


def test_reference_rejects_outputs_that_are_not_a_batch():
    with pytest.raises(ValueError, match=r"must return a batch \(batch, out\) with batch = 4"):
        jacobian.batch_jacobian_reference(lambda p, x: x.sum(axis=0), None, onp.ones((4, 3)))


@pytest.mark.parametrize("kind", ["residual_mlp", "affine_realnvp", "affine_coupling"])
def test_the_formulas_batch_jacobian_is_the_reference_through_apply(kind):
    """mi_ref.jacobian.batch_jacobian(model, ...) is the reference of model.apply, bit for bit, C-ordered; a
    twin passed to it is differentiated through its own apply (the fused primitive), equal to rounding."""
    model, params, x = make_model(kind, near_identity=False)
    J = jacobian.batch_jacobian(model, params, x)
    assert J.flags.c_contiguous
    onp.testing.assert_array_equal(J, jacobian.batch_jacobian_reference(model.apply, params, x))
    fast_model = accel.twin(model)
    if fast_model is not model:
        entrywise_close(jacobian.batch_jacobian(fast_model, params, x), J, rtol=1e-12)


# ----------------------------------------------------------------------------- fast == reference

@pytest.mark.parametrize("near_identity", [False, True], ids=["random", "near_identity"])
@pytest.mark.parametrize("kind", FAST_KINDS)
def test_fast_jacobian_equals_reference(kind, near_identity):
    model, params, x = make_model(kind, near_identity)
    assert fast_jacobians.has_fast_jacobian(model)
    fast = fast_jacobians.batch_jacobian(model, params, x)
    ref = jacobian.batch_jacobian_reference(plain_apply(model), params, x)
    entrywise_close(fast, ref)
    if near_identity and kind in ("residual_mlp", "shift_realnvp"):
        # std 1e-4 kernels: these encoders start as the identity (or a permutation of it), up to ~1e-3
        permutation = onp.abs(onp.asarray(fast)).round()
        assert onp.all(permutation.sum(axis=1) == 1) and onp.all(permutation.sum(axis=2) == 1)
        assert onp.abs(fast - permutation).max() < 1e-2


MLP_KINDS = ["mlp", "residual_mlp", "softplus_mlp", "identity_mlp", "narrowing_mlp", "widening_mlp"]


@pytest.mark.parametrize("near_identity", [False, True], ids=["random", "near_identity"])
@pytest.mark.parametrize("kind", MLP_KINDS)
def test_forward_and_reverse_mode_both_equal_reference(kind, near_identity):
    """Both fast modes for MLPs, forced, whatever ``mode="auto"`` would pick."""
    model, params, x = make_model(kind, near_identity)
    ref = jacobian.batch_jacobian_reference(plain_apply(model), params, x)
    for mode in ("forward", "reverse", "auto"):
        J = fast_jacobians.batch_jacobian(model, params, x, mode=mode)
        entrywise_close(J, ref)
        if mode == "reverse":
            assert J.flags.c_contiguous


def test_auto_mode_takes_the_cheaper_product_chain():
    assert fast_jacobians.mlp_jacobian_flops([392, 300, 300, 100], batch=128) == {
        "forward": 2 * 128 * 392 * (300 * 300 + 300 * 100), "reverse": 2 * 128 * 100 * (392 * 300 + 300 * 300)}
    assert fast_jacobians.mlp_jacobian_flops([4, 4, 4]) == {"forward": 128, "reverse": 128}    # a tie: forward
    rng = onp.random.default_rng(3)
    tie = nn.MLP(4, [4, 4])
    assert not fast_jacobians.batch_jacobian(tie, tie.init(rng), rng.standard_normal((2, 4))).flags.c_contiguous
    narrow, wide = nn.MLP(40, [30, 30, 5]), nn.MLP(5, [30, 30, 40])
    x_narrow, x_wide = rng.standard_normal((2, 40)), rng.standard_normal((2, 5))
    # reverse mode returns C-ordered matrices, forward mode transposed views of its tangents
    assert fast_jacobians.batch_jacobian(narrow, narrow.init(rng), x_narrow).flags.c_contiguous
    assert not fast_jacobians.batch_jacobian(wide, wide.init(rng), x_wide).flags.c_contiguous


def test_mode_errors():
    flow, flow_params, x = make_model("affine_realnvp", near_identity=False)
    with pytest.raises(ValueError, match="MLP only"):
        fast_jacobians.batch_jacobian(flow, flow_params, x, mode="reverse")
    model, params, x = make_model("mlp", near_identity=False)
    with pytest.raises(ValueError, match="mode must be"):
        fast_jacobians.batch_jacobian(model, params, x, mode="backward")
    dense = nn.Dense(3, 2)
    with pytest.raises(ValueError, match="no forward-mode fast path"):
        fast_jacobians.batch_jacobian(dense, dense.init(onp.random.default_rng(0)), onp.ones((1, 3)), mode="forward")


def test_fast_jacobian_at_the_paper_architecture():
    """MLP(392, [392] * 5, shortcuts) with std 1e-4 kernels, on a reduced batch of noisy [0, 1] inputs."""
    rng = onp.random.default_rng(0)
    model = nn.MLP(392, [392] * 5, shortcuts=True, kernel_init=nn.truncated_normal(1e-4))
    params = model.init(rng)
    x = rng.random((3, 392)) + 0.05 * rng.standard_normal((3, 392))
    fast = fast_jacobians.batch_jacobian(model, params, x)
    entrywise_close(fast, jacobian.batch_jacobian_reference(plain_apply(model), params, x))
    svals = fast_linalg.singular_values(fast)
    onp.testing.assert_allclose(svals, jacobian.singular_values(fast), rtol=1e-12, atol=0)
    log_cond = jacobian.log_condition_numbers(svals)
    assert onp.all((log_cond > 0) & (log_cond < 0.1))       # the near-identity start: condition number ~ 1


def test_relu_kink_follows_the_formulas_convention():
    """A zero input row with zero biases puts every pre-activation of a residual MLP at the kink u = 0, where
    the formula takes relu'(0) = 0: through the hidden layers that row's Jacobian is the identity, so the
    whole is the last (linear, residual) layer's I + W^T (with 1/2 the hidden layers would add factors
    I + W^T / 2); the fast Jacobian agrees with the reference on every row."""
    rng = onp.random.default_rng(0)
    model = nn.MLP(4, [4, 4, 4], shortcuts=True)
    params = model.init(rng)
    for layer in params["layers"]:
        layer["W"] = rng.standard_normal((4, 4))
    x = rng.standard_normal((3, 4))
    x[1] = 0.0
    fast = fast_jacobians.batch_jacobian(model, params, x)
    entrywise_close(fast, jacobian.batch_jacobian_reference(plain_apply(model), params, x))
    onp.testing.assert_allclose(fast[1], onp.eye(4) + params["layers"][-1]["W"].T, rtol=1e-15, atol=0)


def test_mlp_jacobian_formula_for_one_hidden_layer():
    """J[b] = W2^T diag(relu'(x_b W1 + b1)) W1^T, written out."""
    rng = onp.random.default_rng(2)
    model = nn.MLP(3, [4, 2])
    params = model.init(rng)
    random_biases(params["layers"], rng)
    x = rng.standard_normal((6, 3))
    (W1, b1), (W2, _) = [(layer["W"], layer["b"]) for layer in params["layers"]]
    expected = onp.stack([W2.T @ onp.diag((row @ W1 + b1 > 0).astype(float)) @ W1.T for row in x])
    onp.testing.assert_allclose(fast_jacobians.batch_jacobian(model, params, x), expected, rtol=1e-14, atol=1e-15)


def test_dispatch_and_fallback():
    rng = onp.random.default_rng(0)
    dense = nn.Dense(3, 2)
    params = dense.init(rng)
    x = rng.standard_normal((4, 3))
    assert not fast_jacobians.has_fast_jacobian(dense)
    onp.testing.assert_allclose(fast_jacobians.batch_jacobian(dense, params, x),
                                onp.broadcast_to(params["W"].T, (4, 2, 3)), rtol=0, atol=1e-15)

    class ScaledMLP(nn.MLP):                    # a subclass may change apply: no fast path
        def apply(self, params, x):
            return 2.0 * super().apply(params, x)

    model = ScaledMLP(3, [3])
    params = model.init(rng)
    assert not fast_jacobians.has_fast_jacobian(model) and fast_jacobians.has_fast_jacobian(nn.MLP(3, [3]))
    onp.testing.assert_allclose(fast_jacobians.batch_jacobian(model, params, x),
                                onp.broadcast_to(2.0 * params["layers"][0]["W"].T, (4, 3, 3)), rtol=1e-15)


@pytest.mark.parametrize("kind", ["residual_mlp", "affine_realnvp"])
def test_a_twin_takes_its_models_fast_path(kind):
    """The loops hold twins (mi_ref.accel.twin); the fast Jacobian of a twin is its model's, bit for bit."""
    model, params, x = make_model(kind, near_identity=False)
    fast_model = accel.twin(model)
    assert fast_model is not model and fast_jacobians.has_fast_jacobian(fast_model)
    assert fast_jacobians.fast_path(fast_model) is fast_jacobians.fast_path(model) is not None
    onp.testing.assert_array_equal(fast_jacobians.batch_jacobian(fast_model, params, x),
                                   fast_jacobians.batch_jacobian(model, params, x))


@pytest.mark.parametrize("bad_x, message", [
    (onp.ones(7), r"shape \(batch, 7\)"),
    (onp.ones((2, 6)), r"shape \(batch, 7\)"),
    (onp.ones((0, 7)), r"batch >= 1"),
    (onp.ones((2, 7, 1)), r"shape \(batch, 7\)"),
    (onp.full((2, 7), onp.nan), r"non-finite entries \(nan or inf\), first at index \(0, 0\)"),
])
@BATCH_JACOBIANS
def test_batch_jacobian_rejects_bad_inputs(batch_jacobian, bad_x, message):
    model, params, _ = make_model("mlp", near_identity=False)
    with pytest.raises(ValueError, match=message):
        batch_jacobian(model, params, bad_x)
    flow, flow_params, _ = make_model("affine_realnvp", near_identity=False)
    with pytest.raises(ValueError):
        batch_jacobian(flow, flow_params, onp.ones((2, 7)))
    with pytest.raises(ValueError, match="apply"):
        batch_jacobian(object(), params, onp.ones((2, 7)))


# ------------------------------------------------------------------------------- singular values

def with_singular_values(rng, s, rows, cols):
    """U diag(s) V^T with Haar-random orthonormal U (rows x k), V (cols x k), k = len(s)."""
    k = len(s)
    U = onp.linalg.qr(rng.standard_normal((rows, k)))[0]
    V = onp.linalg.qr(rng.standard_normal((cols, k)))[0]
    return (U * s) @ V.T


@pytest.mark.parametrize("rows, cols", [(12, 12), (20, 7), (7, 20), (1, 5), (5, 1)])
@SINGULAR_VALUES
def test_singular_values_equal_numpy_and_the_truth(singular_values, rows, cols):
    rng = onp.random.default_rng(rows * 100 + cols)
    k = min(rows, cols)
    truth = onp.sort(rng.uniform(1.0, 10.0, size=(9, k)), axis=1)[:, ::-1]
    J = onp.stack([with_singular_values(rng, s, rows, cols) for s in truth])
    s = singular_values(J)
    assert s.shape == (9, k) and s.dtype == onp.float64
    onp.testing.assert_allclose(s, onp.linalg.svd(J, compute_uv=False), rtol=1e-10, atol=0)
    onp.testing.assert_allclose(s, truth, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", FAST_KINDS)
def test_fast_singular_values_equal_the_reference_on_encoder_jacobians(kind):
    """The speed wing's kernel against mi_ref.jacobian.singular_values (numpy's dgesdd, one matrix at a time),
    on the Jacobians the conditioning experiment feeds it (forward-mode views and C-ordered arrays)."""
    for near_identity in (False, True):
        model, params, x = make_model(kind, near_identity)
        J = fast_jacobians.batch_jacobian(model, params, x)
        fast, ref = fast_linalg.singular_values(J), jacobian.singular_values(J)
        assert fast.shape == ref.shape == (x.shape[0], min(J.shape[1:]))
        onp.testing.assert_allclose(fast, ref, rtol=0, atol=1e-13 * ref.max())


@SINGULAR_VALUES
def test_singular_values_of_gaussian_matrices_equal_numpy(singular_values):
    rng = onp.random.default_rng(1)
    for shape in [(33, 40, 40), (5, 60, 25), (3, 25, 60)]:
        J = rng.standard_normal(shape)
        reference = onp.linalg.svd(J, compute_uv=False)
        assert reference[:, 0].max() / reference[:, -1].min() < 1e4
        onp.testing.assert_allclose(singular_values(J), reference, rtol=1e-10, atol=0)


@SINGULAR_VALUES
def test_singular_values_of_known_matrices(singular_values):
    rng = onp.random.default_rng(0)
    diagonal = onp.diag([3.0, -7.0, 0.5, 2.0])
    onp.testing.assert_allclose(singular_values(diagonal[None]), [[7.0, 3.0, 2.0, 0.5]],
                                rtol=1e-15)
    orthogonal = onp.linalg.qr(rng.standard_normal((3, 30, 30)))[0]
    onp.testing.assert_allclose(singular_values(orthogonal), onp.ones((3, 30)), rtol=1e-14)
    onp.testing.assert_allclose(singular_values(onp.array([[[-2.5]]])), [[2.5]], rtol=0)
    onp.testing.assert_array_equal(singular_values(onp.zeros((2, 3, 4))), onp.zeros((2, 3)))
    # rank 3 in 10 x 8: five zero singular values, at the rounding level of sigma_max
    low_rank = rng.standard_normal((4, 10, 3)) @ rng.standard_normal((4, 3, 8))
    s = singular_values(low_rank)
    reference = onp.linalg.svd(low_rank, compute_uv=False)
    onp.testing.assert_allclose(s[:, :3], reference[:, :3], rtol=1e-10)
    assert onp.all(s[:, 3:] <= 1e-13 * s[:, :1])
    assert onp.all(onp.diff(s, axis=1) <= 0)


@SINGULAR_VALUES
def test_singular_values_read_any_layout_and_dtype(singular_values):
    rng = onp.random.default_rng(3)
    J = rng.standard_normal((6, 9, 5))
    expected = onp.linalg.svd(J, compute_uv=False)
    fortran_stack = J.transpose(0, 2, 1).copy().transpose(0, 2, 1)     # each J[b] Fortran-ordered
    strided = onp.repeat(J, 2, axis=1)[:, ::2, :]                       # neither: copied once
    for variant in (J, fortran_stack, strided, onp.asfortranarray(J)):
        onp.testing.assert_allclose(singular_values(variant), expected, rtol=1e-12)
    onp.testing.assert_allclose(singular_values(J.astype(onp.float32)),
                                onp.linalg.svd(J.astype(onp.float32).astype(float), compute_uv=False), rtol=1e-12)
    onp.testing.assert_allclose(singular_values(onp.eye(3, dtype=int)[None]), [[1, 1, 1]], rtol=0)
    # more matrices than threads and a single one
    many = rng.standard_normal((37, 4, 3))
    onp.testing.assert_allclose(singular_values(many), onp.linalg.svd(many, compute_uv=False),
                                rtol=1e-12)
    onp.testing.assert_allclose(singular_values(many[:1]), onp.linalg.svd(many[:1], compute_uv=False),
                                rtol=1e-12)


@pytest.mark.parametrize("near_identity", [False, True], ids=["random", "near_identity"])
@SINGULAR_VALUES
def test_realnvp_log_det_from_singular_values(singular_values, near_identity):
    """sum_i log sigma_i(J) = log|det J| = flows' log_det (affine); 0 for shift-only."""
    for kind in ("affine_realnvp", "shift_realnvp"):
        flow, params, x = make_model(kind, near_identity)
        logdet = onp.log(singular_values(fast_jacobians.batch_jacobian(flow, params, x))).sum(axis=1)
        expected = flow.log_det(params, x)
        if kind == "affine_realnvp":
            assert onp.abs(expected).max() > (0.1 if not near_identity else 1.0)    # softplus(0) = log 2 < 1
        onp.testing.assert_allclose(logdet, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (onp.ones((3, 3)), r"shape \(batch, out, in\), got shape \(3, 3\) \(2-D\)"),
    (onp.ones((2, 3, 3, 1)), r"\(4-D\)"),
    (onp.ones((0, 3, 3)), "at least one matrix"),
    (onp.ones((2, 0, 3)), "at least one matrix"),
    (onp.ones((2, 3, 3), dtype=complex), "real numbers"),
    (onp.array([[["a"]]]), "real numbers"),
])
@SINGULAR_VALUES
def test_singular_values_reject_bad_shapes_and_types(singular_values, bad, message):
    with pytest.raises(ValueError, match=message):
        singular_values(bad)


@pytest.mark.parametrize("value", [onp.nan, onp.inf, -onp.inf])
@SINGULAR_VALUES
def test_singular_values_reject_non_finite_entries(singular_values, value):
    J = onp.ones((5, 4, 3))
    J[3, 2, 1] = value
    J[4, 0, 0] = value
    with pytest.raises(ValueError, match=r"non-finite entries \(nan or inf\) in 2 of 5 matrices, first J\[3\]"):
        singular_values(J)


# ---------------------------------------------------------------------- condition numbers and bands

def test_log_condition_numbers():
    s = onp.array([[10.0, 2.0, 1.0], [1.0, 3.0, 1.0], [5.0, 5.0, 5.0]])
    onp.testing.assert_allclose(jacobian.log_condition_numbers(s), [onp.log(10), onp.log(3), 0.0], rtol=1e-15)
    assert jacobian.log_condition_numbers(onp.array([4.0, 2.0])) == pytest.approx(onp.log(2), rel=1e-15)
    # a difference of logs: no overflow of sigma_max / sigma_min
    assert jacobian.log_condition_numbers([1e300, 1e-300]) == pytest.approx(600 * onp.log(10), rel=1e-14)
    assert jacobian.log_condition_numbers(onp.ones((2, 3, 4))).shape == (2, 3)


def test_log_condition_number_of_singular_matrices_is_inf_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = jacobian.log_condition_numbers(onp.array([[3.0, 0.0], [0.0, 0.0], [2.0, 1.0]]))
    assert out[0] == onp.inf and out[1] == onp.inf and out[2] == pytest.approx(onp.log(2))
    assert not onp.isnan(out).any()


@BATCH_JACOBIANS
@SINGULAR_VALUES
def test_singular_encoder_end_to_end(batch_jacobian, singular_values):
    """A ReLU MLP whose last layer is zero has J = 0: log condition number +inf, bands +inf, no nan."""
    rng = onp.random.default_rng(0)
    model = nn.MLP(4, [5, 3])
    params = model.init(rng)
    params["layers"][1]["W"][:] = 0.0
    x = rng.standard_normal((6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svals = singular_values(batch_jacobian(model, params, x))
        log_cond = jacobian.log_condition_numbers(svals)
        bands = jacobian.condition_percentiles(log_cond)
    assert onp.all(log_cond == onp.inf)
    assert list(bands) == [onp.inf] * 6


@pytest.mark.parametrize("bad", [[[1.0, -1.0]], [[1.0, onp.nan]], [[onp.inf, 1.0]], onp.ones((2, 0)), 3.0])
def test_log_condition_numbers_reject_invalid_singular_values(bad):
    with pytest.raises(ValueError):
        jacobian.log_condition_numbers(bad)


def test_condition_percentiles_are_the_notebooks_order_statistics():
    """sorted(v)[int(p (n - 1))] for p = 0, .2, ..., 1, written out by hand for n = 6 and n = 128; never an
    interpolation (numpy's default 'linear' percentile differs in general)."""
    values = onp.array([3.0, 0.5, 2.0, 9.0, 1.0, 4.0])          # sorted: .5 1 2 3 4 9
    # indices int(p * 5): 0, 1, 2, 3, 4, 5
    assert list(jacobian.condition_percentiles(values)) == [0.5, 1.0, 2.0, 3.0, 4.0, 9.0]
    rng = onp.random.default_rng(0)
    values = rng.gamma(2.0, size=128)
    s = onp.sort(values)
    # int(p * 127) for p = 0, .2, .4, .6, .8, 1: 0, 25, 50, 76, 101, 127 (0.6 * 127 = 76.2, 0.8 * 127 = 101.6)
    expected = s[[0, 25, 50, 76, 101, 127]]
    bands = jacobian.condition_percentiles(values)
    assert bands.shape == (6,) and bands.dtype == onp.float64
    assert jacobian.PERCENTILE_KEYS == ("min", "p20", "p40", "p60", "p80", "max")
    onp.testing.assert_array_equal(bands, expected)
    assert onp.abs(bands - onp.percentile(values, jacobian.PERCENTILES)).max() > 1e-6
    assert jacobian.condition_percentiles([2.5])[3] == 2.5


def test_condition_percentiles_with_infinite_values_never_nan():
    values = onp.array([0.5, onp.inf, 1.0, onp.inf, onp.inf, 2.0])   # sorted: .5 1 2 inf inf inf
    bands = jacobian.condition_percentiles(values)
    assert list(bands) == [0.5, 1.0, 2.0, onp.inf, onp.inf, onp.inf]
    assert jacobian.condition_percentiles([onp.inf] * 3)[2] == onp.inf


@pytest.mark.parametrize("bad", [[], [1.0, onp.nan], [-onp.inf, 1.0], ["x"]])
def test_condition_percentiles_reject_bad_values(bad):
    with pytest.raises(ValueError):
        jacobian.condition_percentiles(onp.array(bad))
