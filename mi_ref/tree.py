"""Nested parameter containers ("trees"): dicts, lists and tuples whose leaves are numpy arrays.

Every model's params are such a tree. These helpers give them one canonical, documented order, so that
optimizers, checkpoints and golden vectors all agree on what "the i-th parameter" means:
dict keys in sorted order, list and tuple items in index order, depth first. A leaf's *path* joins the
keys and indices with "/", e.g. ``"layers/0/W"``.
"""

import numpy as onp


def tree_map(fn, tree, *rest):
    """Apply ``fn(leaf, *other_leaves)`` leaf by leaf over trees of the same structure."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *[r[k] for r in rest]) for k in sorted(tree)}
    if isinstance(tree, (list, tuple)):
        out = [tree_map(fn, t, *[r[i] for r in rest]) for i, t in enumerate(tree)]
        return out if isinstance(tree, list) else tuple(out)
    return fn(tree, *rest)


def tree_flatten(tree, prefix=""):
    """Return ``[(path, leaf), ...]`` in canonical order (sorted dict keys, depth first)."""
    if isinstance(tree, dict):
        items = []
        for k in sorted(tree):
            items += tree_flatten(tree[k], f"{prefix}{k}/")
        return items
    if isinstance(tree, (list, tuple)):
        items = []
        for i, t in enumerate(tree):
            items += tree_flatten(t, f"{prefix}{i}/")
        return items
    return [(prefix[:-1], tree)]


def tree_unflatten(template, leaves):
    """Rebuild a tree shaped like ``template`` from ``leaves`` given in canonical order."""
    it = iter(leaves)
    out = tree_map(lambda _: next(it), template)
    if next(it, None) is not None:
        raise ValueError("tree_unflatten: more leaves than the template has")
    return out


def tree_to_dict(tree, prefix=""):
    """``{path: leaf}`` for saving with ``numpy.savez`` (paths are valid npz keys)."""
    return {prefix + p: onp.asarray(v) for p, v in tree_flatten(tree)}


def tree_from_dict(template, arrays, prefix=""):
    """Inverse of :func:`tree_to_dict`; every path of ``template`` must be present with the same shape."""
    leaves = []
    for path, leaf in tree_flatten(template):
        key = prefix + path
        if key not in arrays:
            raise ValueError(f"missing array {key!r}: expected the parameter tree of the same model")
        value = onp.asarray(arrays[key])
        if onp.shape(value) != onp.shape(leaf):
            raise ValueError(f"array {key!r} has shape {onp.shape(value)}, expected {onp.shape(leaf)}")
        leaves.append(value)
    return tree_unflatten(template, leaves)


def tree_size(tree):
    """Total number of scalar entries of all leaves."""
    return int(sum(onp.size(v) for _, v in tree_flatten(tree)))
