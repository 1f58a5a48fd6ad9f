"""Tests for mi_ref.flows: invertibility, log-determinants and gradients of RealNVP chains."""

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import jacobian

from gradcheck import check_grad
from mi_ref import flows, nn
from mi_ref.accel import twin


def make_flow(shift_only, n_couplings=3, dim=5, std=0.3, seed=0):
    rng = onp.random.default_rng(seed)
    flow = flows.realnvp(dim, n_couplings, [7, 6], shift_only, rng=rng,
                         kernel_init=nn.truncated_normal(std))
    params = flow.init(rng)
    for block in params["blocks"]:
        for layer in block["net"]["layers"]:
            layer["b"] = 0.1 * rng.standard_normal(layer["b"].shape)
    return flow, params, rng.standard_normal((4, dim))


def numerical_log_det(flow, params, x):
    """log|det J| per example from autograd's full Jacobian and numpy's slogdet (independent of log_det)."""
    out = []
    for row in x:
        jac = jacobian(lambda r: flow.apply(params, r[None, :])[0])(row)
        out.append(onp.linalg.slogdet(jac)[1])
    return onp.array(out)


@pytest.mark.parametrize("shift_only", [True, False])
def test_inverse_of_30_block_chain(shift_only):
    flow, params, x = make_flow(shift_only, n_couplings=30, dim=8, std=0.1)
    y = flow.apply(params, x)
    assert onp.abs(y - x).max() > 0.1           # the chain really moves the points
    onp.testing.assert_allclose(flow.inverse(params, y), x, rtol=0, atol=1e-10)
    onp.testing.assert_allclose(flow.apply(params, flow.inverse(params, x)), x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [5, 6])
def test_affine_log_det_equals_slogdet_of_jacobian(dim):
    flow, params, x = make_flow(False, n_couplings=4, dim=dim)
    ld = flow.log_det(params, x)
    assert ld.shape == (4,) and onp.abs(ld).max() > 0.1
    onp.testing.assert_allclose(ld, numerical_log_det(flow, params, x), rtol=1e-10, atol=1e-12)


def test_shift_only_log_det_is_zero():
    flow, params, x = make_flow(True, n_couplings=4)
    onp.testing.assert_array_equal(flow.log_det(params, x), onp.zeros(4))
    onp.testing.assert_allclose(numerical_log_det(flow, params, x), 0, atol=1e-12)


def _hand_block(x, perm, net, shift_only):
    """One block written out with numpy: permute, then couple (the notebook's TFP Chain order)."""
    z = x[:, perm]
    h = x.shape[1] // 2
    out = z[:, :h]
    for layer in net[:-1]:
        out = onp.maximum(out @ layer["W"] + layer["b"], 0)
    out = out @ net[-1]["W"] + net[-1]["b"]
    n = x.shape[1] - h
    if shift_only:
        return onp.concatenate([z[:, :h], z[:, h:] + out], axis=1), onp.zeros(len(x))
    scale = 1e-7 + onp.log1p(onp.exp(out[:, n:]))                  # n shifts, then n raw scales
    return onp.concatenate([z[:, :h], z[:, h:] * scale + out[:, :n]], axis=1), onp.log(scale).sum(axis=1)


def test_block_formula_and_permutation_semantics():
    rng = onp.random.default_rng(3)
    flow = flows.realnvp(5, 1, [4], shift_only=False, rng=rng, kernel_init=nn.truncated_normal(0.5))
    params = flow.init(rng)
    x = rng.standard_normal((3, 5))
    y, log_det = _hand_block(x, flow.permutations[0], params["blocks"][0]["net"]["layers"], False)
    onp.testing.assert_allclose(flow.apply(params, x), y, rtol=1e-14)
    onp.testing.assert_allclose(flow.log_det(params, x), log_det, rtol=1e-14)


@pytest.mark.parametrize("shift_only", [True, False])
def test_forward_is_a_permute_then_couple_chain(shift_only):
    """The notebook's Chain([c_1, p_1, ..., c_n, p_n]) runs p_n, c_n, ..., p_1, c_1: every block starts with
    its permutation and the flow ends with a coupling. The old couple-then-permute order fails here."""
    flow, params, x = make_flow(shift_only, n_couplings=4, dim=7)
    y, log_det = x, onp.zeros(len(x))
    for perm, p in zip(flow.permutations, params["blocks"]):
        y, ld = _hand_block(y, perm, p["net"]["layers"], shift_only)
        log_det = log_det + ld
    onp.testing.assert_allclose(flow.apply(params, x), y, rtol=1e-13, atol=1e-14)
    onp.testing.assert_allclose(twin(flow).forward(params, x)[0], y, rtol=1e-13, atol=1e-14)   # fused twin
    onp.testing.assert_allclose(flow.log_det(params, x), log_det, rtol=1e-13, atol=1e-14)


def test_first_operation_is_the_permutation():
    """With a zero conditioner the block is its permutation alone; the coupling comes after it: feeding a
    point whose first half is 0 after the permutation gives no shift at all."""
    rng = onp.random.default_rng(5)
    flow = flows.realnvp(6, 1, [3], shift_only=True, rng=rng, kernel_init=nn.truncated_normal(0.5))
    params = flow.init(rng)
    params["blocks"][0]["net"]["layers"][-1]["b"] = onp.ones(3)      # shift = net(z_a) != 0 in general
    perm = flow.permutations[0]
    x = onp.zeros((1, 6))
    x[0, perm[3:]] = [1.0, 2.0, 3.0]         # z = x[:, perm] has z_a = 0: the net sees zeros only
    t = flow.blocks[0].shift_and_scale(params["blocks"][0], onp.zeros((1, 3)))[0]
    onp.testing.assert_allclose(flow.apply(params, x), onp.concatenate([onp.zeros((1, 3)), [[1.0, 2.0, 3.0]] + t],
                                                                       axis=1), rtol=1e-14)
    assert not onp.array_equal(perm, onp.arange(6))


def test_shift_only_chain_starts_near_identity_with_paper_init():
    rng = onp.random.default_rng(0)
    flow = flows.realnvp(12, 5, [16, 16], shift_only=True, rng=rng)     # truncated_normal(1e-4) kernels
    params = flow.init(rng)
    x = rng.standard_normal((3, 12))
    perm = onp.arange(12)
    for p in flow.permutations:
        perm = perm[p]
    onp.testing.assert_allclose(flow.apply(params, x), x[:, perm], atol=1e-9)


def test_permutations_fixed_by_rng():
    a = flows.realnvp(6, 3, [4], rng=onp.random.default_rng(7)).permutations
    b = flows.realnvp(6, 3, [4], rng=onp.random.default_rng(7)).permutations
    onp.testing.assert_array_equal(a, b)
    assert sorted(a[0]) == list(range(6))


@pytest.mark.parametrize("shift_only", [True, False])
def test_gradients_of_apply_inverse_and_log_det(shift_only):
    flow, params, x = make_flow(shift_only)
    target = onp.random.default_rng(1).standard_normal(x.shape)
    check_grad(lambda p, x: anp.sum(anp.sin(flow.apply(p, x)) * target), [params, x])
    check_grad(lambda p, y: anp.sum(anp.sin(flow.inverse(p, y)) * target), [params, x])
    if not shift_only:
        check_grad(lambda p, x: anp.sum(anp.sin(flow.log_det(p, x))), [params, x])


def test_bad_input():
    rng = onp.random.default_rng(0)
    with pytest.raises(ValueError, match="dim >= 2"):
        flows.realnvp(1, 2, [4], rng=rng)
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        flows.realnvp(4, 2, [4], rng=0)
    with pytest.raises(ValueError, match="positive integer"):
        flows.realnvp(4, 0, [4], rng=rng)
    flow = flows.realnvp(4, 2, [4], rng=rng)
    with pytest.raises(ValueError, match=r"\(batch, 4\), got \(2, 3\)"):
        flow.apply(flow.init(rng), onp.zeros((2, 3)))
    with pytest.raises(ValueError, match="permutation of range"):
        flows.AffineCoupling(4, [3], True, [0, 1, 1, 2])
