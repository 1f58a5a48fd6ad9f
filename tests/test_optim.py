"""Tests for mi_ref.optim: Adam against a hand computation, and exact save/restore."""

import numpy as onp
import pytest

from gradcheck import assert_trees_equal
from mi_ref import accel, optim, tree


def test_adam_matches_hand_computation_on_quadratic():
    # f(theta) = 0.5 * sum(a * theta^2): gradient a * theta
    a = onp.array([1.0, 10.0, 0.1])
    theta = onp.array([1.0, -2.0, 3.0])
    adam = optim.Adam(lr=0.1)
    params, state = {"theta": theta.copy()}, adam.init({"theta": theta})
    m = v = onp.zeros(3)
    for t in range(1, 6):
        g = a * theta
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - 0.1 * (m / (1 - 0.9 ** t)) / (onp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        params, state = adam.update(params, {"theta": a * params["theta"]}, state)
        # equal up to a few ulps (the two computations round in a different order)
        onp.testing.assert_allclose(params["theta"], theta, rtol=1e-14, atol=0)
    assert state["step"] == 5
    # the first step moves each coordinate by lr in the direction of -sign(g) (bias correction)
    first, _ = adam.update({"theta": onp.ones(3)}, {"theta": a}, adam.init({"theta": onp.ones(3)}))
    onp.testing.assert_allclose(first["theta"], 1 - 0.1, rtol=1e-7)


def test_tf_form_matches_hand_computation_over_three_steps():
    """TensorFlow 1's AdamOptimizer: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), theta -= lr_t m / (sqrt(v) + eps)."""
    rng = onp.random.default_rng(4)
    theta0 = rng.standard_normal(5)
    grads = [1e-7 * rng.standard_normal(5) for _ in range(3)]        # small, as the paper's flows have
    adam = optim.Adam(lr=1e-3, form="tf")
    params, state = {"w": theta0.copy()}, adam.init({"w": theta0})
    theta, m, v = theta0.copy(), onp.zeros(5), onp.zeros(5)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr_t = 1e-3 * onp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        theta = theta - lr_t * m / (onp.sqrt(v) + 1e-8)
        params, state = adam.update(params, {"w": g}, state)
        onp.testing.assert_allclose(params["w"], theta, rtol=1e-15, atol=0)
    assert state["step"] == 3


def test_tf_and_textbook_forms_differ_at_the_first_step():
    """At t = 1 the TF form's eps acts like eps / sqrt(1 - b2) = 3.2e-7 in the textbook form: with gradients
    of 1e-7 the TF step is ~4x smaller (lr |g| / (|g| + 3.2e-7) against lr |g| / (|g| + 1e-8))."""
    g = {"w": onp.array([1e-7, -1e-7, 1e-3])}
    p = {"w": onp.zeros(3)}
    tf_new, _ = optim.Adam(1e-3, form="tf").update(p, g, optim.Adam().init(p))
    tb_new, _ = optim.Adam(1e-3, form="textbook").update(p, g, optim.Adam().init(p))
    onp.testing.assert_allclose(tb_new["w"][:2], [-1e-3 / 1.1, 1e-3 / 1.1], rtol=1e-12)
    onp.testing.assert_allclose(tf_new["w"][:2], [-1e-3 / (1 + onp.sqrt(1000) * 0.1),
                                                  1e-3 / (1 + onp.sqrt(1000) * 0.1)], rtol=1e-12)
    assert abs(tf_new["w"][0]) < 0.3 * abs(tb_new["w"][0])
    onp.testing.assert_allclose(tf_new["w"][2], tb_new["w"][2], rtol=1e-3)   # large gradients: alike


@pytest.mark.parametrize("form", optim.FORMS)
def test_fused_and_in_place_updates_equal_the_reference_bit_for_bit(form):
    rng = onp.random.default_rng(9)
    params = {"a": rng.standard_normal((3, 4)), "b": [rng.standard_normal(5)]}
    adam = optim.Adam(lr=1e-3, form=form)
    p_ref, s_ref = params, adam.init(params)
    p_fast, s_fast = accel.owned(params, adam.init(params))
    for _ in range(4):
        g = tree.tree_map(lambda x: 1e-6 * rng.standard_normal(x.shape), params)
        p_ref, s_ref = adam.update(p_ref, g, s_ref)
        p_fast, s_fast = accel.adam_update(adam, p_fast, g, s_fast, inplace=True)
        assert_trees_equal(p_fast, p_ref)
        assert_trees_equal(s_fast["m"], s_ref["m"])
        assert_trees_equal(s_fast["v"], s_ref["v"])


def test_nested_params_and_inputs_not_modified():
    adam = optim.Adam()
    params = {"enc": {"layers": [{"W": onp.ones((2, 2)), "b": onp.zeros(2)}]}, "critic": {"W": onp.eye(2)}}
    grads = {"enc": {"layers": [{"W": onp.ones((2, 2)), "b": onp.ones(2)}]}, "critic": {"W": onp.ones((2, 2))}}
    state = adam.init(params)
    new, _ = adam.update(params, grads, state)
    assert params["enc"]["layers"][0]["W"][0, 0] == 1.0 and state["step"] == 0
    assert new["enc"]["layers"][0]["W"][0, 0] < 1.0


def test_save_restore_continues_identically(tmp_path):
    rng = onp.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 2)), "b": [rng.standard_normal(4)]}
    grads = [{"a": rng.standard_normal((3, 2)), "b": [rng.standard_normal(4)]} for _ in range(6)]
    adam = optim.Adam(lr=1e-3)
    state = adam.init(params)
    for g in grads[:3]:
        params, state = adam.update(params, g, state)
    onp.savez(tmp_path / "s.npz", **optim.state_to_arrays(state))
    with onp.load(tmp_path / "s.npz", allow_pickle=False) as f:
        restored = optim.state_from_arrays(params, dict(f))
    p1, p2, s1, s2 = params, params, state, restored
    for g in grads[3:]:
        p1, s1 = adam.update(p1, g, s1)
        p2, s2 = adam.update(p2, g, s2)
    onp.testing.assert_array_equal(p1["a"], p2["a"])
    onp.testing.assert_array_equal(p1["b"][0], p2["b"][0])
    assert s2["step"] == 6


@pytest.mark.parametrize("kwargs,match", [({"lr": 0}, "learning rate"), ({"b1": 1.0}, "b1"),
                                          ({"eps": -1}, "eps"), ({"form": "keras"}, "unknown Adam form")])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.Adam(**kwargs)


def test_owned_copies_every_leaf_into_distinct_writable_float64_arrays():
    """Training loops update in place after ``owned``: nothing the caller holds may change, even when
    leaves share a buffer, are read-only, non-contiguous or not float64."""
    shared = onp.zeros(3)
    frozen = onp.arange(4.0)
    frozen.setflags(write=False)
    params = {"a": shared, "b": [shared, frozen], "c": onp.ones((3, 4))[:, ::2], "d": onp.arange(2)}
    adam = optim.Adam(0.1)
    state = adam.init(params)
    own_params, own_state = accel.owned(params, state)
    leaves = [leaf for _, leaf in tree.tree_flatten(own_params)]
    leaves += [leaf for _, leaf in tree.tree_flatten(own_state["m"])]
    leaves += [leaf for _, leaf in tree.tree_flatten(own_state["v"])]
    originals = [leaf for _, leaf in tree.tree_flatten(params)]
    originals += [leaf for _, leaf in tree.tree_flatten(state["m"])]
    originals += [leaf for _, leaf in tree.tree_flatten(state["v"])]
    for leaf in leaves:
        assert leaf.dtype == onp.float64 and leaf.flags.c_contiguous and leaf.flags.writeable
        assert not any(onp.shares_memory(leaf, other) for other in originals)
    for i, leaf in enumerate(leaves):
        assert not any(onp.shares_memory(leaf, other) for other in leaves[i + 1:])
    before = [onp.array(leaf) for leaf in originals]
    grads = tree.tree_map(lambda p: onp.ones(onp.shape(p)), params)
    new, new_state = accel.adam_update(adam, own_params, grads, own_state, inplace=True)
    assert new["a"] is own_params["a"]                       # really updated in place ...
    onp.testing.assert_allclose(new["a"], -0.1 * onp.ones(3), rtol=1e-7)   # first step: lr * sign(-g) (eps)
    for leaf, old in zip(originals, before):                 # ... and the caller's arrays are untouched
        onp.testing.assert_array_equal(leaf, old)
    ref, _ = adam.update(params, grads, state)
    assert_trees_equal(new, ref)
