"""The gradient of a loss with respect to a dict of sub-models, without a zero tree for the whole dict.

Why. ``autograd.value_and_grad(loss)(params)`` boxes the whole dict; each ``params[key]`` is then a
``container_take`` whose VJP is a sparse object, and the first one to arrive is turned dense by
allocating zeros for EVERY leaf of the dict and adding the sub-gradient into them (then the next ones).
For the paper's steps that is one needless pass of zeros plus one add over all parameters: 28 M
float64 values (220 MB) for the invertible experiment, ~9 % of its gradient time, and ~2.6 ms of the
conditioning step's ~28 ms. Here every entry params[key] is its own root of the trace, so each
sub-gradient arrives as it is and the result is assembled without zeros. The values are the same
(x + 0 = x; contributions to one entry are summed in autograd's order; only the sign of an exact zero
can differ, as -0.0 + 0.0 = +0.0 in autograd's sum and -0.0 here). It relies on
autograd's tracer (``trace_stack``, ``new_box``, ``VJPNode``, ``add_outgrads``, ``toposort``, stable
since autograd 1.2); if those cannot be imported, autograd's own ``value_and_grad`` is used instead.
"""

import numpy as np

try:
    from autograd.core import VJPNode, add_outgrads, vspace
    from autograd.tracer import getval, isbox, new_box, toposort, trace_stack
    _HAVE_TRACER = True
except ImportError:                                    # pragma: no cover - a future autograd
    _HAVE_TRACER = False


def value_and_grad_by_key(fun):
    """``autograd.value_and_grad(fun)`` for ``fun(params, *args, **kwargs) -> scalar`` with ``params`` a
    dict (e.g. ``{"g1": ..., "g2": ..., "critic": ...}``): returns ``(value, {key: d value / d params[key]})``
    with the same numbers, keys in sorted order, in one backward pass in which each ``params[key]`` is a
    root of its own (see the comment above for why).

    ``fun`` sees ``params`` as a plain dict (keys in sorted order) whose values are autograd boxes; an
    entry ``fun`` does not use gets a zero gradient. As with autograd, the returned gradients are to be
    read: two entries may share one gradient array (e.g. ``sum(p["a"] + p["b"])``), so copy before
    modifying one in place. Raises ``ValueError`` if ``params`` is not a dict or the value is not a real
    floating-point scalar.
    """
    import autograd

    fallback = autograd.value_and_grad(fun)

    def value_and_grad(params, *args, **kwargs):
        if not isinstance(params, dict):
            raise ValueError(f"value_and_grad_by_key differentiates with respect to a dict of parameters, "
                             f"got {type(params).__name__}; use autograd.value_and_grad otherwise")
        if not _HAVE_TRACER:                           # pragma: no cover
            value, grads = fallback(params, *args, **kwargs)
            return value, {key: grads[key] for key in sorted(grads)}
        keys = sorted(params)
        with trace_stack.new_trace() as trace_id:
            roots = {key: VJPNode.new_root() for key in keys}
            end = fun({key: new_box(params[key], trace_id, roots[key]) for key in keys}, *args, **kwargs)
            traced = isbox(end) and end._trace == trace_id
            value, end_node = (end._value, end._node) if traced else (end, None)
        plain = np.asarray(getval(value))                  # unboxed, if an outer trace is differentiating
        if plain.size != 1 or not np.issubdtype(plain.dtype, np.floating):
            raise ValueError(f"fun must return a real floating-point scalar (the loss), got shape "
                             f"{plain.shape} and dtype {plain.dtype}")
        grads = {} if end_node is None else backward_pass(end_node, vspace(value).ones(), roots)
        return value, {key: grads[key] if key in grads else vspace(params[key]).zeros() for key in keys}

    return value_and_grad


def backward_pass(end_node, seed, roots):
    """autograd's backward pass from ``end_node`` (outgrad ``seed``), stopping at the nodes of ``roots``
    (``{key: root node}``): returns ``{key: gradient}`` for the roots reached. A function of its own so that
    a profile shows the backward pass apart from the forward trace (``scripts/bench_steps.py``)."""
    root_key = {id(node): key for key, node in roots.items()}
    grads = {}
    outgrads = {end_node: (seed, False)}
    for node in toposort(end_node):
        outgrad = outgrads.pop(node)[0]
        key = root_key.get(id(node))
        if key is not None:
            grads[key] = outgrad
            continue
        for parent, ingrad in zip(node.parents, node.vjp(outgrad)):
            outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
    return grads
