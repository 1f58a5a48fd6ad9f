"""Finite-difference gradient checks in float64, shared by the test modules.

``check_grad(f, args)`` compares autograd's gradient of the scalar ``f(*args)`` with respect to every
argument (and every leaf of nested params) against central finite differences along random directions:

    (f(x + h d) - f(x - h d)) / (2 h)  ~=  <grad f(x), d>,

for ``n_dirs`` unit-norm directions d per leaf. With h = 1e-6 in float64 the central difference has a
truncation error O(h^2 |f'''|) ~ 1e-12 and a rounding error ~ eps |f| / h ~ 1e-10 |f|, so a relative
tolerance of 1e-6 (against max(|fd|, |ad|) + an absolute floor of 1e-8) leaves ample margin while any
wrong term of a gradient shows up at O(1). Functions with kinks (ReLU) are evaluated at random points,
where a kink within h of the point has probability ~ 0.
"""

import numpy as onp
from autograd import grad

from mi_ref.tree import tree_flatten, tree_unflatten


def _perturb(args, argnum, path_index, delta):
    leaves = [v for _, v in tree_flatten(args[argnum])]
    leaves = [onp.asarray(v, dtype=float) + delta if i == path_index else v for i, v in enumerate(leaves)]
    new = list(args)
    new[argnum] = tree_unflatten(args[argnum], leaves) if not isinstance(args[argnum], onp.ndarray) \
        else leaves[0]
    return new


def check_grad(f, args, argnums=None, n_dirs=3, h=1e-6, rtol=1e-6, atol=1e-8, seed=0):
    """Assert autograd's gradient of scalar f matches central differences for every leaf of every arg."""
    rng = onp.random.default_rng(seed)
    argnums = range(len(args)) if argnums is None else argnums
    checked = 0
    for a in argnums:
        g = grad(f, a)(*args)
        leaves = tree_flatten(args[a]) if not isinstance(args[a], onp.ndarray) else [("", args[a])]
        g_leaves = tree_flatten(g) if not isinstance(args[a], onp.ndarray) else [("", g)]
        for i, ((path, leaf), (_, g_leaf)) in enumerate(zip(leaves, g_leaves)):
            for _ in range(n_dirs):
                d = rng.standard_normal(onp.shape(leaf))
                d /= onp.linalg.norm(d) or 1.0
                fd = (f(*_perturb(args, a, i, h * d)) - f(*_perturb(args, a, i, -h * d))) / (2 * h)
                ad = float(onp.sum(onp.asarray(g_leaf) * d))
                scale = max(abs(fd), abs(ad))
                assert abs(fd - ad) <= rtol * scale + atol, (
                    f"gradient mismatch for argument {a}, leaf {path or '<array>'!r}: "
                    f"autograd {ad!r} vs finite differences {fd!r}")
                checked += 1
    assert checked > 0, "check_grad checked nothing"
    return checked


def assert_trees_equal(actual, expected):
    """The same paths, shapes and values leaf by leaf (``numpy.array_equal``: exact, -0.0 == +0.0)."""
    flat_a, flat_e = tree_flatten(actual), tree_flatten(expected)
    assert [path for path, _ in flat_a] == [path for path, _ in flat_e]
    for (path, a), (_, e) in zip(flat_a, flat_e):
        assert onp.shape(a) == onp.shape(e) and onp.array_equal(a, e), path
