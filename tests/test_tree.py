"""Tests for mi_ref.tree: canonical order, round trips and shape checks."""

import numpy as onp
import pytest

from mi_ref import tree


def test_flatten_order_and_round_trip():
    t = {"b": [onp.ones(2), onp.zeros((1, 3))], "a": {"W": onp.eye(2)}}
    paths = [p for p, _ in tree.tree_flatten(t)]
    assert paths == ["a/W", "b/0", "b/1"]
    back = tree.tree_unflatten(t, [v * 2 for _, v in tree.tree_flatten(t)])
    onp.testing.assert_array_equal(back["b"][1], onp.zeros((1, 3)))
    onp.testing.assert_array_equal(back["a"]["W"], 2 * onp.eye(2))
    assert tree.tree_size(t) == 9
    d = tree.tree_to_dict(t, "p/")
    assert sorted(d) == ["p/a/W", "p/b/0", "p/b/1"]
    same = tree.tree_from_dict(t, d, "p/")
    onp.testing.assert_array_equal(same["a"]["W"], onp.eye(2))


def test_errors():
    t = {"W": onp.zeros((2, 2))}
    with pytest.raises(ValueError, match="missing array 'W'"):
        tree.tree_from_dict(t, {})
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(2, 2\)"):
        tree.tree_from_dict(t, {"W": onp.zeros(3)})
    with pytest.raises(ValueError, match="more leaves"):
        tree.tree_unflatten(t, [1, 2])
