"""Fused twins of mi-ref's models: autograd primitives with hand-written VJPs.

Why this module exists. Differentiated op by op, a RealNVP chain spends most of its time not in matrix
products but in autograd's generic gradients of slicing, concatenation and fancy indexing (each builds a
dense zero array and scatters into it) and in accumulating gradients through nested containers. Each
primitive here runs a whole sub-network in plain numpy: the forward pass keeps what the backward pass
needs, and the VJP is the textbook backpropagation written out by hand, so that a step costs its matrix
products plus a few passes over memory.

Every primitive computes exactly the formula of a model's own ``apply`` / ``forward`` (the math modules
hold only those); ``tests/test_accel.py`` proves (a) twin == model to ~1e-12 relative, values and
gradients, and (b) each VJP against central finite differences (``tests/gradcheck.check_grad``):

======================================  ==============================================================
primitive (this module)                 the formula it computes
======================================  ==============================================================
:func:`mlp`                             :meth:`mi_ref.nn.MLP.apply`
:func:`coupling_chain`                  :meth:`mi_ref.flows.RealNVP.forward`
:func:`concat_scores`                   :meth:`mi_ref.critics.Concat.apply` (one hidden layer)
:func:`concat_scores_deep`              :meth:`mi_ref.critics.Concat.apply` (several hidden layers)
======================================  ==============================================================

The paper's ConvNet is one primitive of its own module, :func:`mi_ref.accel.conv.convnet`, with the
convolution kernels it runs on.

:mod:`mi_ref.accel.twins` pairs each with its model type. Conventions (the same as the models', so that the
gradients agree too):

* ReLU's derivative at exactly 0 is 0 (:func:`mi_ref.nn.relu`; TensorFlow, PyTorch and JAX agree). It
  matters whenever a pre-activation is exactly 0, e.g. an all-zero input patch with a zero bias.
* Activations are ``(batch, features)`` as everywhere in mi-ref, so every dense layer is one plain GEMM
  ``h @ W`` (measured here: 10-25 % faster than the transposed ``W^T @ h^T`` orientation for these
  shapes); the RealNVP permutations are column gathers fused into the coupling kernels.
* A primitive takes a whole parameter tree as one argument, so that autograd builds one node per
  sub-network, not one per leaf, and returns that tree's gradient in one piece. :func:`supports` says when
  that is possible (always, except when a plain container holds autograd boxes at an inner level; the twins
  then use the model's own formula).
* What the backward pass needs is kept by the forward pass in a list passed as the primitive's last
  argument (autograd hands the arguments to the VJP); without autograd boxes nothing is kept.
* The VJPs are first order: differentiating a VJP again (``grad(grad(...))``) raises
  ``NotImplementedError``; differentiate the model's own formula for higher derivatives. A VJP may run
  many times on one forward pass (``autograd.jacobian`` does): the kept values are only read.
* Nothing is modified in place that autograd or the caller owns: incoming gradients are read-only, every
  returned array is fresh.

Numba kernels (``cache=True``, ``error_model="numpy"`` so that divisions vectorize) fuse the elementwise
work around the matrix products; the matrix products themselves are numpy/BLAS calls.
"""

import numpy as np
from autograd.extend import Box, defvjp_argnums, primitive
from numba import njit

from .. import nn
from ..flows import SCALE_FLOOR

# ----------------------------------------------------------------------------------------------------
# plumbing


def _contains_box(tree):
    if isinstance(tree, Box):
        return True
    if isinstance(tree, dict):
        return any(_contains_box(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_contains_box(v) for v in tree)
    return False


def supports(params, activation="relu"):
    """True when the fast primitives can differentiate through ``params``.

    That is when ``params`` is a plain tree of arrays or is itself one autograd box (the usual case:
    ``grad`` with respect to a whole params tree or a sub-tree of it), and the activation is registered
    in :data:`mi_ref.nn.ACTIVATIONS` (any of them: ReLU has a fused kernel, the others run their function
    and derivative). A plain container holding boxes at an inner level (built by hand from boxed leaves)
    would hide those boxes from the primitive, so the twins use the model's own formula then.
    """
    if activation not in nn.ACTIVATIONS:
        return False
    return isinstance(params, Box) or not _contains_box(params)


def _traced(*args):
    return any(isinstance(a, Box) for a in args)


def _first_order(g, name, module=__name__):
    if _contains_box(g):
        raise NotImplementedError(
            f"the VJP of {module}.{name} is first order only; for higher derivatives "
            f"differentiate the model's own apply (see the table in the docstring of {module})")


# ----------------------------------------------------------------------------------------------------
# numba kernels: the elementwise work around the matrix products, on (batch, features) arrays


@njit(cache=True, error_model="numpy")
def _bias_relu(a, b, h):
    """In place a[i, j] += b[j]; h[i, j] = relu(a[i, j]) (NaN propagates, like np.maximum)."""
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            v = a[i, j] + b[j]
            a[i, j] = v
            h[i, j] = 0.0 if v < 0.0 else v


@njit(cache=True, error_model="numpy")
def _relu_backward(g, a, delta, db):
    """delta = g * relu'(a) with relu'(0) = 0 (:func:`mi_ref.nn.relu`); db[j] = sum_i delta[i, j]."""
    n, m = a.shape
    for j in range(m):
        db[j] = 0.0
    for i in range(n):
        for j in range(m):
            d = g[i, j] if a[i, j] > 0.0 else 0.0
            delta[i, j] = d
            db[j] += d


@njit(cache=True, error_model="numpy")
def _permute_couple_shift(x, t, perm, split, y):
    """Permutation and shift-only coupling in one pass: z = x[:, perm], y = [z_a, z_b + t]."""
    n, d = x.shape
    for i in range(n):
        for j in range(split):
            y[i, j] = x[i, perm[j]]
        for j in range(split, d):
            y[i, j] = x[i, perm[j]] + t[i, j - split]


@njit(cache=True, error_model="numpy")
def _permute_couple_affine(x, t, s, perm, split, y):
    """Permutation and affine coupling in one pass: z = x[:, perm], y = [z_a, z_b s + t]."""
    n, d = x.shape
    for i in range(n):
        for j in range(split):
            y[i, j] = x[i, perm[j]]
        for j in range(split, d):
            r = j - split
            y[i, j] = x[i, perm[j]] * s[i, r] + t[i, r]


@njit(cache=True, error_model="numpy")
def _unpermute_grad(g_y, dza, s, perm, split, affine, g_x):
    """The input gradient of one block: dz = [dy_a + dza, dy_b s] (dy_b for shift-only), and since
    z = x[:, perm], dx[:, perm[j]] = dz[:, j] (a scatter by the permutation)."""
    n, d = g_y.shape
    for i in range(n):
        for j in range(split):
            g_x[i, perm[j]] = g_y[i, j] + dza[i, j]
        for j in range(split, d):
            g_x[i, perm[j]] = g_y[i, j] * s[i, j - split] if affine else g_y[i, j]


# ----------------------------------------------------------------------------------------------------
# dense chains (the MLP of mi_ref.nn)


def _dense_forward(h, layers, activation, shortcuts, cache):
    """MLP forward for ``h: (B, in)``; appends what backprop needs to ``cache`` (a list, or None).

    Layer l: a_l = h_{l-1} W_l + b_l; h_l = act(a_l) (not after the last layer) [+ h_{l-1} with shortcuts].
    ``cache`` receives (h_{l-1}, a_l) per layer (a_l only where an activation follows; else None).
    """
    n = len(layers)
    for i, layer in enumerate(layers):
        a = h @ layer["W"]
        hidden = i < n - 1 and activation != "identity"
        if hidden and activation == "relu":
            out = np.empty_like(a)
            _bias_relu(a, layer["b"], out)
        else:
            a += layer["b"]
            out = nn.ACTIVATIONS.get(activation).fn(a) if hidden else a
        if shortcuts:
            out += h            # out is fresh (or a, which is not kept when no activation follows)
        if cache is not None:
            cache.append((h, a if hidden else None))
        h = out
    return h


def _dense_backward(g, layers, activation, shortcuts, cache, need_dx):
    """Backprop of :func:`_dense_forward`: (dx or None, [{"W": dW, "b": db}, ...]); ``g`` is only read."""
    n = len(layers)
    grads = [None] * n
    for i in range(n - 1, -1, -1):
        w = layers[i]["W"]
        h, a = cache[i]
        if a is None:                              # last layer, or identity activation
            delta = g
            db = g.sum(axis=0)
        elif activation == "relu":
            delta = np.empty_like(a)
            db = np.empty(w.shape[1])
            _relu_backward(g, a, delta, db)
        else:                                      # e.g. softplus: act'(a) = exp(a - softplus(a))
            from .activations import derivative     # the table of act'(u) (mi_ref/accel/activations.py)
            delta = g * derivative(activation)(a)
            db = delta.sum(axis=0)
        grads[i] = {"W": h.T @ delta, "b": db}
        if i > 0 or need_dx:
            g_in = delta @ w.T
            if shortcuts:
                g_in += g
            g = g_in
        else:
            g = None
    return g, grads


def _as_input(x):
    return np.ascontiguousarray(x, dtype=float)


@primitive
def _mlp(x, params, activation, shortcuts, cache):
    return _dense_forward(_as_input(x), params["layers"], activation, shortcuts, cache)


def _mlp_vjp(argnums, ans, args, kwargs):
    x, params, activation, shortcuts, cache = args

    def vjp(g):
        _first_order(g, "mlp")
        dx, grads = _dense_backward(_as_input(g), params["layers"], activation, shortcuts, cache, 0 in argnums)
        return [dx if a == 0 else {"layers": grads} for a in argnums]
    return vjp


defvjp_argnums(_mlp, _mlp_vjp)


def mlp(params, x, activation="relu", shortcuts=False):
    """The MLP of :class:`mi_ref.nn.MLP` as one primitive (reference: :meth:`mi_ref.nn.MLP.apply`).

        h_0 = x,  h_l = act(h_{l-1} W_l + b_l) [+ h_{l-1}]  (l < L),  y = h_{L-1} W_L + b_L [+ h_{L-1}],

    ``params = {"layers": [{"W": (in, out), "b": (out,)}, ...]}``, ``x: (B, in)``, the bracketed terms with
    ``shortcuts``. VJP: the usual backprop, delta_l = g_l * act'(a_l), dW_l = h_{l-1}^T delta_l,
    db_l = sum_b delta_l, g_{l-1} = delta_l W_l^T [+ g_l].
    """
    return _mlp(x, params, activation, shortcuts, [] if _traced(x, params) else None)


# ----------------------------------------------------------------------------------------------------
# RealNVP: a whole chain of coupling blocks as one primitive


@primitive
def _chain(x, params, blocks, cache):
    y = _as_input(x)
    logdet = np.zeros(y.shape[0])
    for blk, p in zip(blocks, params["blocks"]):
        x_k, h = y, blk.split
        z_a = x_k[:, blk.perm[:h]]                   # the conditioning half after the permutation
        net_cache = [] if cache is not None else None
        out = _dense_forward(z_a, p["net"]["layers"], blk.net.activation_name, blk.net.shortcuts, net_cache)
        y = np.empty_like(x_k)
        if blk.shift_only:
            soft = s = None
            _permute_couple_shift(x_k, out, blk.perm, h, y)
        else:
            soft = np.logaddexp(0.0, out[:, blk.n_out:])
            s = SCALE_FLOOR + soft
            _permute_couple_affine(x_k, out[:, :blk.n_out], s, blk.perm, h, y)
            logdet = logdet + np.sum(np.log(s), axis=1)
        if cache is not None:
            cache.append((x_k, net_cache, out, soft, s))
    return y, logdet


def _chain_vjp(argnums, ans, args, kwargs):
    x, params, blocks, cache = args

    def vjp(g):
        _first_order(g, "coupling_chain")
        g_y, g_logdet = g
        g_next = _as_input(g_y)
        g_logdet = np.asarray(g_logdet)[:, None]
        grads = [None] * len(blocks)
        for k in range(len(blocks) - 1, -1, -1):
            blk, p = blocks[k], params["blocks"][k]
            x_k, net_cache, out, soft, s = cache[k]
            h, n = blk.split, blk.n_out
            if blk.shift_only:
                g_out = g_next[:, h:]                        # dt = dy_b
            else:
                g_out = np.empty((g_next.shape[0], 2 * n))
                g_out[:, :n] = g_next[:, h:]                 # dt = dy_b
                z_b = x_k[:, blk.perm[h:]]
                g_s = g_next[:, h:] * z_b + g_logdet / s     # y_b = z_b s + t, logdet += sum log s
                g_out[:, n:] = g_s * np.exp(out[:, n:] - soft)   # s = floor + softplus(raw)
            need_dx = k > 0 or 0 in argnums
            dza, net_grads = _dense_backward(g_out, p["net"]["layers"], blk.net.activation_name,
                                             blk.net.shortcuts, net_cache, need_dx)
            grads[k] = {"net": {"layers": net_grads}}
            if need_dx:                                      # z_a passes through and conditions the net
                g_x = np.empty_like(g_next)
                _unpermute_grad(g_next, dza, g_next if s is None else s, blk.perm, h, s is not None, g_x)
                g_next = g_x
            else:
                g_next = None
        return [g_next if a == 0 else {"blocks": grads} for a in argnums]
    return vjp


defvjp_argnums(_chain, _chain_vjp)


def coupling_chain(blocks, params, x):
    """``(y, log|det dy/dx|)`` of a chain of :class:`mi_ref.flows.AffineCoupling` blocks, as one primitive.

    Reference: :meth:`mi_ref.flows.RealNVP.forward` (block k: z = x[:, perm],
    y = [z_a, z_b s + t]; shift-only s = 1). ``params = {"blocks": [{"net": MLP params}, ...]}``; returns
    ``y: (B, d)`` and the per-example log-determinant ``(B,)`` (zeros for shift-only chains). Each block's
    permutation and coupling are one numba pass. VJP, block by block from the end: dt = dy_b;
    dz_b = dy_b s; ds = dy_b z_b + dlogdet / s; d raw = ds sigmoid(raw); dz_a = dy_a plus the net's input
    gradient; dx = dz[:, inv_perm].
    """
    out = _chain(x, params, blocks, [] if _traced(x, params) else None)
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# the concat critic S[i, j] = w2 . relu(u_i W1u + v_j W1v + b1) + b2, without the (K, K, H) tensor


@njit(cache=True, error_model="numpy")
def _concat_forward_kernel(a, b_t, b1, w2, b2, s):
    """s[i, j] = sum_h w2[h] relu((a[i, h] + b[j, h]) + b1[h]) + b2, with ``b_t = b.T`` so that the inner
    loop runs over j (contiguous, vectorized) and every (i, j) sums over h in order."""
    k, hdim = a.shape
    for i in range(k):
        for j in range(k):
            s[i, j] = 0.0
        for h in range(hdim):
            aih, b1h, w2h = a[i, h], b1[h], w2[h]
            for j in range(k):
                p = (aih + b_t[h, j]) + b1h
                s[i, j] += (0.0 if p < 0.0 else p) * w2h
        for j in range(k):
            s[i, j] += b2


@njit(cache=True, error_model="numpy")
def _concat_backward_kernel(a, b, b1, w2, gs, ga, gb, gw2):
    """ga[i] = sum_j D[i, j], gb[j] = sum_i D[i, j] with D[i, j, h] = gs[i, j] w2[h] relu'(p), and
    gw2[h] = sum_ij gs[i, j] relu(p), p = (a[i, h] + b[j, h]) + b1[h]; relu'(0) = 0 (:func:`mi_ref.nn.relu`)."""
    k, hdim = a.shape
    ga[:] = 0.0
    gb[:] = 0.0
    gw2[:] = 0.0
    for i in range(k):
        for j in range(k):
            g = gs[i, j]
            for h in range(hdim):
                p = (a[i, h] + b[j, h]) + b1[h]
                gw2[h] += g * (0.0 if p < 0.0 else p)
                d = g * w2[h] if p > 0.0 else 0.0
                ga[i, h] += d
                gb[j, h] += d


@primitive
def _concat(u, v, params, dim_u, cache):
    w1, b1 = params["layers"][0]["W"], params["layers"][0]["b"]
    w2, b2 = params["layers"][1]["W"], params["layers"][1]["b"]
    a = u @ w1[:dim_u]
    b = v @ w1[dim_u:]
    s = np.empty((a.shape[0], b.shape[0]))
    _concat_forward_kernel(a, np.ascontiguousarray(b.T), b1, np.ascontiguousarray(w2[:, 0]), float(b2[0]), s)
    if cache is not None:
        cache.extend([a, b])
    return s


def _concat_vjp(argnums, ans, args, kwargs):
    u, v, params, dim_u, cache = args
    a, b = cache
    w1, b1 = params["layers"][0]["W"], params["layers"][0]["b"]
    w2 = np.ascontiguousarray(params["layers"][1]["W"][:, 0])

    def vjp(g):
        _first_order(g, "concat_scores")
        g = _as_input(g)
        ga, gb, gw2 = np.empty_like(a), np.empty_like(b), np.empty(a.shape[1])
        _concat_backward_kernel(a, b, b1, w2, g, ga, gb, gw2)
        out = []
        for arg in argnums:
            if arg == 0:
                out.append(ga @ w1[:dim_u].T)
            elif arg == 1:
                out.append(gb @ w1[dim_u:].T)
            else:
                gw1 = np.concatenate([u.T @ ga, v.T @ gb], axis=0)
                out.append({"layers": [{"W": gw1, "b": ga.sum(axis=0)},
                                       {"W": gw2[:, None], "b": np.array([g.sum()])}]})
        return out
    return vjp


defvjp_argnums(_concat, _concat_vjp)


def concat_scores(params, u, v, dim_u):
    """The concat critic with one hidden ReLU layer, as one primitive (reference:
    :meth:`mi_ref.critics.Concat.apply`).

        S[i, j] = relu([u_i ; v_j] W1 + b1) w2 + b2 = sum_h w2[h] relu(A[i, h] + B[j, h] + b1[h]) + b2,
        A = u W1[:d_u],  B = v W1[d_u:],

    computed pair by pair in a numba kernel, so the (K, K, H) hidden tensor is never stored. VJP: with
    D[i, j, h] = dS[i, j] w2[h] relu'(.), dA = sum_j D, dB = sum_i D, db1 = sum_ij D,
    dw2 = sum_ij dS[i, j] relu(.), db2 = sum_ij dS; then du = dA W1[:d_u]^T, dv = dB W1[d_u:]^T,
    dW1 = [u^T dA ; v^T dB].
    """
    return _concat(u, v, params, dim_u, [] if _traced(u, v, params) else None)


@primitive
def _concat_deep(u, v, params, dim_u, cache):
    layers = params["layers"]
    w1, b1 = layers[0]["W"], layers[0]["b"]
    a = _as_input(u) @ w1[:dim_u]
    b = _as_input(v) @ w1[dim_u:]
    pre = a[:, None, :] + b[None, :, :] + b1                  # (K, K, H): row i = u_i, column j = v_j
    k, hdim = pre.shape[0], pre.shape[2]
    hidden = np.maximum(pre, 0.0).reshape(k * k, hdim)
    rest = [] if cache is not None else None
    out = _dense_forward(hidden, layers[1:], "relu", False, rest)
    if cache is not None:
        cache.extend([pre, rest])
    return out.reshape(k, k)


def _concat_deep_vjp(argnums, ans, args, kwargs):
    u, v, params, dim_u, cache = args
    pre, rest = cache
    layers = params["layers"]
    w1 = layers[0]["W"]

    def vjp(g):
        _first_order(g, "concat_scores")
        k, hdim = pre.shape[0], pre.shape[2]
        g_hidden, rest_grads = _dense_backward(_as_input(g).reshape(k * k, 1), layers[1:], "relu", False, rest,
                                               True)
        g_pre = g_hidden.reshape(k, k, hdim) * (pre > 0)
        ga, gb = g_pre.sum(axis=1), g_pre.sum(axis=0)
        out = []
        for arg in argnums:
            if arg == 0:
                out.append(ga @ w1[:dim_u].T)
            elif arg == 1:
                out.append(gb @ w1[dim_u:].T)
            else:
                gw1 = np.concatenate([np.asarray(u).T @ ga, np.asarray(v).T @ gb], axis=0)
                out.append({"layers": [{"W": gw1, "b": ga.sum(axis=0)}] + rest_grads})
        return out
    return vjp


defvjp_argnums(_concat_deep, _concat_deep_vjp)


def concat_scores_deep(params, u, v, dim_u):
    """The concat critic with any number of ReLU hidden layers, as one primitive (reference:
    :meth:`mi_ref.critics.Concat.apply`; the "sampling" experiment's critic has five hidden layers of 10).

        P[i, j] = u_i W1[:d_u] + v_j W1[d_u:] + b1   (K, K, H),   S = m'(relu(P))  with m' the other layers,

    the later layers run as one (K K, H) batch through :func:`_dense_forward`. VJP: the dense chain's
    backprop, then g_P = g_h relu'(P) (relu'(0) = 0), dA = sum_j g_P, dB = sum_i g_P, du = dA W1[:d_u]^T,
    dv = dB W1[d_u:]^T, dW1 = [u^T dA ; v^T dB], db1 = sum_ij g_P.
    """
    return _concat_deep(u, v, params, dim_u, [] if _traced(u, v, params) else None)
