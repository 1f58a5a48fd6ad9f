"""Adam in place, one vectorized numba pass per parameter leaf (large leaves split over numba's threads),
bit for bit :meth:`mi_ref.optim.Adam.update`.

The formula of one entry (:meth:`mi_ref.optim.Adam.update`, both forms):

    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g g,   p' = p - lr (m' / c1) / (sqrt(v' / c2) + eps),

with the textbook form's bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t, and the TF form's step size
lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) and c1 = c2 = 1. The kernels do these operations in this order, so
the bits are the formula's. Where c1 = c2 = 1 the two divisions by 1 are left out: x / 1 = x exactly in
IEEE arithmetic, so the bits are the same, and each entry then costs one division and one square root.

Why it is fast. Adam is bound by memory traffic: in place it reads p, g, m, v and writes p, m, v (56 bytes
per parameter, 1.6 GB per step for the invertible experiment's 28 M parameters). An earlier kernel took
its three outputs as separate arguments (which may alias the inputs); LLVM could not prove the seven
arrays apart and left the loop scalar (~6.5 ns per parameter, measured, against ~1.3 ns vectorized), so
the update took four times its memory floor. These kernels write back into the arrays they read (four
arrays), which LLVM vectorizes: one pass over each leaf at about the memory floor.

Threads. With :data:`PARALLEL_MIN_SIZE` > 0 a leaf of at least that many entries is cut into one
contiguous span per numba thread (every entry is independent, so the bits do not depend on the split).
It is off by default: on the 2-core machine of the benchmarks, shared with other processes, the split
update of the invertible experiment's parameters took 9x longer than one thread (a parallel region waits
for its slowest thread, and a busy core stalls it; OpenBLAS's worker also spins for a while after each
GEMM). ``scripts/bench_steps.py --adam-parallel-min N`` measures it on a quiet machine.
"""

import math

import numba
import numpy as np
from numba import njit, prange

from ..tree import tree_map

# a leaf with at least this many entries is split over numba's threads; 0: never (the default, see above)
PARALLEL_MIN_SIZE = 0


@njit(cache=True, error_model="numpy")
def _adam_span(p, g, m, v, b1, b2, lr, c1, c2, eps, start, stop):
    """Entries [start, stop) of one leaf in place, the formula's operations in its order (see above)."""
    for i in range(start, stop):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


@njit(cache=True, error_model="numpy")
def _adam_span_unit(p, g, m, v, b1, b2, lr, eps, start, stop):
    """:func:`_adam_span` for c1 = c2 = 1 (the TF form): the divisions by 1 left out, the same bits."""
    for i in range(start, stop):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - lr * mi / (math.sqrt(vi) + eps)


@njit(cache=True, error_model="numpy")
def _adam_serial(p, g, m, v, b1, b2, lr, c1, c2, eps, unit):
    if unit:
        _adam_span_unit(p, g, m, v, b1, b2, lr, eps, 0, p.shape[0])
    else:
        _adam_span(p, g, m, v, b1, b2, lr, c1, c2, eps, 0, p.shape[0])


@njit(cache=True, error_model="numpy", parallel=True)
def _adam_parallel(p, g, m, v, b1, b2, lr, c1, c2, eps, unit, n_spans):
    n = p.shape[0]
    for k in prange(n_spans):
        start, stop = k * n // n_spans, (k + 1) * n // n_spans
        if unit:
            _adam_span_unit(p, g, m, v, b1, b2, lr, eps, start, stop)
        else:
            _adam_span(p, g, m, v, b1, b2, lr, c1, c2, eps, start, stop)


def _adam_flat(p, g, m, v, b1, b2, lr, c1, c2, eps):
    """The update of one leaf in place on the 1-D arrays p, m, v (g read), serial or over the threads."""
    unit = c1 == 1.0 and c2 == 1.0
    threads = numba.get_num_threads()
    if PARALLEL_MIN_SIZE and p.shape[0] >= PARALLEL_MIN_SIZE and threads > 1:
        _adam_parallel(p, g, m, v, b1, b2, lr, c1, c2, eps, unit, threads)
    else:
        _adam_serial(p, g, m, v, b1, b2, lr, c1, c2, eps, unit)


def _writable_flat(a):
    """``a`` as a 1-D view if it is a C-contiguous, writable float64 ndarray, else None."""
    if type(a) is np.ndarray and a.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable:
        return a.reshape(-1)
    return None


def adam_leaf(p, g, m, v, b1, b2, lr, c1, c2, eps, inplace=False):
    """(p', m', v') for one leaf: m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2,
    p' = p - lr (m' / c1) / (sqrt(v' / c2) + eps).

    New arrays (inputs untouched), or with ``inplace`` the new values overwrite p, m and v, which are
    returned (a leaf that is not a contiguous writable float64 array gets new arrays anyway).
    """
    shape = np.shape(p)
    g_flat = np.ascontiguousarray(g, dtype=float).reshape(-1)
    if inplace:
        targets = [_writable_flat(a) for a in (p, m, v)]
        if all(t is not None for t in targets) and not any(
                np.may_share_memory(a, b) for a, b in ((p, m), (p, v), (m, v), (g, p), (g, m), (g, v))):
            _adam_flat(targets[0], g_flat, targets[1], targets[2], b1, b2, lr, c1, c2, eps)
            return p, m, v
    p_new, m_new, v_new = (np.array(a, dtype=np.float64, order="C", copy=True).reshape(-1) for a in (p, m, v))
    if np.may_share_memory(g_flat, p_new):                   # cannot happen for fresh copies; for clarity
        g_flat = g_flat.copy()
    _adam_flat(p_new, g_flat, m_new, v_new, b1, b2, lr, c1, c2, eps)
    return p_new.reshape(shape), m_new.reshape(shape), v_new.reshape(shape)


def adam_tree(params, grads, m, v, b1, b2, lr, c1, c2, eps, inplace=False):
    """:func:`adam_leaf` over four trees of the same structure: ``(params', m', v')``, each built by
    :func:`mi_ref.tree.tree_map` (as :meth:`mi_ref.optim.Adam.update` builds them)."""
    triples = tree_map(lambda p, g, m_, v_: adam_leaf(p, g, m_, v_, b1, b2, lr, c1, c2, eps, inplace),
                       params, grads, m, v)
    return tuple(tree_map(lambda _, triple: triple[i], params, triples) for i in range(3))


def adam_update(adam, params, grads, state, inplace=False):
    """``adam.update(params, grads, state)`` (:class:`mi_ref.optim.Adam`, either form) with the same bits,
    one fused pass per leaf. With ``inplace=True`` the new values overwrite the arrays of ``params`` and
    ``state`` (the returned trees hold those arrays; grads are only read): for a training loop that
    replaces its params and state by the returned ones anyway, on arrays it owns (:func:`owned`). Do not
    use it while anything else still needs the old values, nor with leaves that share memory."""
    t = state["step"] + 1
    c1, c2 = 1.0 - adam.b1 ** t, 1.0 - adam.b2 ** t
    if adam.form == "tf":       # p - lr_t * (m / 1) / (sqrt(v / 1) + eps): the formula's operations exactly
        step_size, c1, c2 = adam.lr * math.sqrt(c2) / c1, 1.0, 1.0
    else:
        step_size = adam.lr
    new, m, v = adam_tree(params, grads, state["m"], state["v"], adam.b1, adam.b2, step_size, c1, c2, adam.eps,
                          inplace)
    return new, {"step": t, "m": m, "v": v}


def owned(params, state):
    """Fresh copies ``(params, state)``: every leaf a distinct, C-contiguous, writable float64 array.

    A training loop calls this once before it switches to ``adam_update(..., inplace=True)``, so that the
    in-place updates write only into memory the loop owns: not into arrays a caller, a model's
    initializer or a loaded checkpoint may still hold, and never twice into one buffer shared by two leaves.
    """
    def copy(leaf):
        return np.array(leaf, dtype=np.float64, order="C", copy=True)
    return tree_map(copy, params), {"step": state["step"], "m": tree_map(copy, state["m"]),
                                    "v": tree_map(copy, state["v"])}
