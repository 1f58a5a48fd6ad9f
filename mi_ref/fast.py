"""Fast paths: autograd primitives with hand-written VJPs for the hot spots of a training step (issue 5).

Why this module exists. Differentiated op by op, a RealNVP chain spends most of its time not in matrix
products but in autograd's generic gradients of slicing, concatenation and fancy indexing (each builds a
dense zero array and scatters into it) and in accumulating gradients through nested containers. Each
primitive here runs a whole sub-network in plain numpy: the forward pass keeps what the backward pass
needs, and the VJP is the textbook backpropagation written out by hand, so that a step costs its matrix
products plus a few passes over memory.

Every primitive computes exactly the formula of a plain formulation that stays in the code as the reference
a reader studies; ``tests/test_fast.py`` proves (a) fast == reference to ~1e-12 relative, values and
gradients, and (b) each VJP against central finite differences (``tests/gradcheck.check_grad``):

======================================  ==============================================================
fast path (this module)                 reference formulation
======================================  ==============================================================
:func:`mlp`                             :func:`mi_ref.nn.mlp_apply` (``MLP.apply_reference``)
:func:`coupling_chain`                  :meth:`mi_ref.flows.RealNVP.forward_reference`
:func:`concat_scores`                   :meth:`mi_ref.critics.Concat.apply_reference`
:func:`convnet`                         :meth:`mi_ref.nn.ConvNet.apply_reference`
:func:`conv2d`                          :func:`mi_ref.nn.conv2d` (``Conv2D.apply_reference``)
:func:`adam_tree`                       :meth:`mi_ref.optim.Adam.update_reference` (bit for bit, also
                                        in place)
======================================  ==============================================================

The models' ``apply`` / ``forward`` run these; ``scripts/bench_steps.py`` measures a whole training step
against PyTorch. Conventions (the same as the references, so that the gradients agree too):

* ReLU's derivative at exactly 0 is 1/2 (autograd's rule for ``np.maximum(a, 0.0)``: a tie splits the
  gradient); PyTorch uses 0 there. It matters only when a pre-activation is exactly 0 (e.g. an all-zero
  input row with zero biases).
* Activations are ``(batch, features)`` as everywhere in mi-ref, so every dense layer is one plain GEMM
  ``h @ W`` (measured here: 10-25 % faster than the transposed ``W^T @ h^T`` orientation for these
  shapes); the RealNVP permutations are column gathers fused into the coupling kernels.
* A primitive takes a whole parameter tree as one argument, so that autograd builds one node per
  sub-network, not one per leaf, and returns that tree's gradient in one piece. :func:`supports` says when
  that is possible (always, except when a plain container holds autograd boxes at an inner level; callers
  then use the reference).
* What the backward pass needs is kept by the forward pass in a list passed as the primitive's last
  argument (autograd hands the arguments to the VJP); without autograd boxes nothing is kept.
* The VJPs are first order: differentiating a VJP again (``grad(grad(...))``) raises
  ``NotImplementedError``; use the reference formulation for higher derivatives. A VJP may run many times
  on one forward pass (``autograd.jacobian`` does): the kept values are only read.
* Nothing is modified in place that autograd or the caller owns: incoming gradients are read-only, every
  returned array is fresh. The one exception is asked for explicitly: ``adam_tree(..., inplace=True)``
  (``Adam.update(..., inplace=True)``) overwrites the params and moments it is given.

Numba kernels (``cache=True``, ``error_model="numpy"`` so that divisions vectorize) fuse the elementwise
work around the matrix products; the matrix products themselves are numpy/BLAS calls. Speed also depends on
memory reuse: see :func:`configure_malloc`.
"""

import ctypes
import ctypes.util
import math

import numpy as np
from autograd.extend import Box, defvjp_argnums, primitive
from numba import njit

# nn imports this module, and this module uses nn.same_padding only when called: the circular import is
# harmless, and the padding rule is written once (flows.SCALE_FLOOR is likewise read at call time).
from . import nn  # noqa: E402
from .tree import tree_map  # noqa: E402

ACTIVATIONS = ("relu", "softplus", "identity")


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
    ``grad`` with respect to a whole params tree or a sub-tree of it), and the activation is one of
    ``ACTIVATIONS``. A plain container holding boxes at an inner level (built by hand from boxed leaves)
    would hide those boxes from the primitive, so callers use the reference formulation then.
    """
    if activation not in ACTIVATIONS:
        return False
    return isinstance(params, Box) or not _contains_box(params)


def _traced(*args):
    return any(isinstance(a, Box) for a in args)


def _first_order(g, name):
    if _contains_box(g):
        raise NotImplementedError(
            f"the VJP of mi_ref.fast.{name} is first order only; for higher derivatives use the reference "
            f"formulation (see the table in mi_ref/fast.py)")


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
    """delta = g * relu'(a) with relu'(0) = 1/2 (autograd's tie rule); db[j] = sum_i delta[i, j]."""
    n, m = a.shape
    for j in range(m):
        db[j] = 0.0
    for i in range(n):
        for j in range(m):
            ai = a[i, j]
            d = g[i, j] if ai > 0.0 else (0.5 * g[i, j] if ai == 0.0 else 0.0)
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
            out = np.logaddexp(0.0, a) if hidden else a
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
        else:                                      # softplus: d/da log(1 + e^a) = exp(a - softplus(a))
            delta = g * np.exp(a - np.logaddexp(0.0, a))
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
    """The MLP of :class:`mi_ref.nn.MLP` as one primitive (reference: :func:`mi_ref.nn.mlp_apply`).

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
    from .flows import SCALE_FLOOR          # flows imports this module at its top: read it here
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

    Reference: :meth:`mi_ref.flows.RealNVP.forward_reference` (block k: z = x[:, perm],
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
    gw2[h] = sum_ij gs[i, j] relu(p), p = (a[i, h] + b[j, h]) + b1[h]; relu'(0) = 1/2 (autograd's tie rule)."""
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
                d = g * w2[h]
                d = d if p > 0.0 else (0.5 * d if p == 0.0 else 0.0)
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
    """The concat critic with one hidden ReLU layer, as one primitive (reference: ``Concat.apply_reference``).

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
        g_pre = g_hidden.reshape(k, k, hdim) * np.where(pre > 0, 1.0, np.where(pre == 0, 0.5, 0.0))
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
    ``Concat.apply_reference``; the "sampling" experiment's critic has five hidden layers of 10).

        P[i, j] = u_i W1[:d_u] + v_j W1[d_u:] + b1   (K, K, H),   S = m'(relu(P))  with m' the other layers,

    the later layers run as one (K K, H) batch through :func:`_dense_forward`. VJP: the dense chain's
    backprop, then g_P = g_h relu'(P) (relu'(0) = 1/2), dA = sum_j g_P, dB = sum_i g_P, du = dA W1[:d_u]^T,
    dv = dB W1[d_u:]^T, dW1 = [u^T dA ; v^T dB], db1 = sum_ij g_P.
    """
    return _concat_deep(u, v, params, dim_u, [] if _traced(u, v, params) else None)


# ----------------------------------------------------------------------------------------------------
# conv2d ('same' padding) with numba im2col / col2im and the patches kept for the kernel gradient


@njit(cache=True, error_model="numpy")
def _im2col(xpad, kh, kw, stride, ho, wo, cols):
    """cols[b, p, q, (i, j, c)] = xpad[b, p s + i, q s + j, c] for a zero-padded NHWC batch ``xpad``.

    For fixed (b, p, q, i) the kw * C values (j, c) are contiguous in both arrays: one straight copy each.
    """
    nb, hp, wp, c = xpad.shape
    seg = kw * c
    x2 = xpad.reshape(nb * hp, wp * c)
    c2 = cols.reshape(nb * ho * wo, kh * seg)
    for b in range(nb):
        for p in range(ho):
            for q in range(wo):
                dst = c2[(b * ho + p) * wo + q]
                off = q * stride * c
                for i in range(kh):
                    src = x2[b * hp + p * stride + i]
                    for k in range(seg):
                        dst[i * seg + k] = src[off + k]


@njit(cache=True, error_model="numpy")
def _col2im(dcols, kh, kw, stride, dxpad):
    """The adjoint of :func:`_im2col`: dxpad[b, r, s, c] = sum of the dcols entries that copied (b, r, s, c)."""
    nb, hp, wp, c = dxpad.shape
    ho, wo = dcols.shape[1], dcols.shape[2]
    seg = kw * c
    x2 = dxpad.reshape(nb * hp, wp * c)
    d2 = dcols.reshape(nb * ho * wo, kh * seg)
    x2[:] = 0.0
    for b in range(nb):
        for p in range(ho):
            for q in range(wo):
                src = d2[(b * ho + p) * wo + q]
                off = q * stride * c
                for i in range(kh):
                    dst = x2[b * hp + p * stride + i]
                    for k in range(seg):
                        dst[off + k] += src[i * seg + k]


def _geometry(shape, kh, kw, stride):
    """(ho, wo, top, left, padded shape) of a 'same' convolution of an NHWC batch of ``shape``."""
    b, h, w, c = shape
    ho, top, bottom = nn.same_padding(h, kh, stride)
    wo, left, right = nn.same_padding(w, kw, stride)
    return ho, wo, top, left, (b, h + top + bottom, w + left + right, c)


def _patches(x, kh, kw, stride):
    """The im2col patches ``(B, Ho, Wo, kh * kw * C)`` of an NHWC batch (zero 'same' padding)."""
    ho, wo, top, left, padded = _geometry(x.shape, kh, kw, stride)
    xpad = np.zeros(padded)
    xpad[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    cols = np.empty((x.shape[0], ho, wo, kh * kw * x.shape[3]))
    _im2col(xpad, kh, kw, stride, ho, wo, cols)
    return cols


def _unpatch(dcols, x_shape, kh, kw, stride):
    """The adjoint of :func:`_patches`: the gradient with respect to x of <dcols, patches(x)>."""
    _, _, top, left, padded = _geometry(x_shape, kh, kw, stride)
    dxpad = np.empty(padded)
    _col2im(np.ascontiguousarray(dcols), kh, kw, stride, dxpad)
    return np.ascontiguousarray(dxpad[:, top:top + x_shape[1], left:left + x_shape[2]])


def _conv_gemm(x, kernel, stride):
    """(patches (B, Ho, Wo, K), conv2d(x, kernel) as a (B Ho Wo, C_out) matrix): im2col and one GEMM."""
    kh, kw, c, o = kernel.shape
    cols = _patches(x, kh, kw, stride)
    return cols, cols.reshape(-1, kh * kw * c) @ kernel.reshape(kh * kw * c, o)


def _conv_kernel_grad(cols, delta, kernel_shape):
    """d<delta, cols @ W>/dW for ``delta: (B Ho Wo, C_out)``: patches^T delta, shaped like the kernel."""
    return (cols.reshape(delta.shape[0], -1).T @ delta).reshape(kernel_shape)


def _conv_input_grad(delta, kernel, out_shape, x_shape, stride):
    """d<delta, patches(x) @ W>/dx: delta W^T back onto the patches' pixels (col2im)."""
    kh, kw, c, o = kernel.shape
    dcols = (delta @ kernel.reshape(kh * kw * c, o).T).reshape(tuple(out_shape) + (kh * kw * c,))
    return _unpatch(dcols, x_shape, kh, kw, stride)


@primitive
def _conv2d(x, kernel, stride, cache):
    cols, z = _conv_gemm(x, kernel, stride)
    if cache is not None:
        cache.append(cols)
    return z.reshape(cols.shape[:3] + (kernel.shape[3],))


def _conv2d_vjp(argnums, ans, args, kwargs):
    x, kernel, stride, cache = args
    kh, kw, _, o = kernel.shape

    def vjp(g):
        _first_order(g, "conv2d")
        g2 = np.reshape(g, (-1, o))
        out = []
        for arg in argnums:
            if arg == 0:
                out.append(_conv_input_grad(g2, kernel, np.shape(g)[:3], np.shape(x), stride))
            else:
                cols = cache[0] if cache else _patches(x, kh, kw, stride)
                out.append(_conv_kernel_grad(cols, g2, kernel.shape))
        return out
    return vjp


defvjp_argnums(_conv2d, _conv2d_vjp)


def conv2d(x, kernel, stride=1):
    """2-D cross-correlation with 'same' padding, as :func:`mi_ref.nn.conv2d` (its reference).

    y[b, p, q, o] = sum_{i, j, c} xpad[b, p s + i, q s + j, c] kernel[i, j, c, o]. Forward: numba im2col
    (no padded copy) and one GEMM, keeping the patches when the kernel's gradient will be asked;
    VJP: d kernel = patches^T g, dx = col2im(g kernel^T) (numba).
    """
    keep = isinstance(kernel, Box)
    return _conv2d(x, kernel, stride, [] if keep else None)


# ----------------------------------------------------------------------------------------------------
# the paper's ConvNet as one primitive: conv-ReLU, conv-ReLU, layer norm, average pooling, dense


@njit(cache=True, error_model="numpy")
def _layer_norm_pool(a, eps, scale, bias, xhat, rstd, rsig, pooled):
    """Per example b (a: (B, P, C)): xhat = (a - mean) / (std + eps) over all P * C values, with the
    population std sqrt(mean((a - mean)^2)); rstd[b] = 1 / (std + eps), rsig[b] = 1 / std (0 if std = 0);
    pooled[b, c] = mean_p (xhat[b, p, c] scale[c] + bias[c]) = scale[c] mean_p xhat[b, p, c] + bias[c]."""
    nb, npos, nc = a.shape
    n = npos * nc
    for b in range(nb):
        mu = 0.0
        for p in range(npos):
            for c in range(nc):
                mu += a[b, p, c]
        mu /= n
        var = 0.0
        for p in range(npos):
            for c in range(nc):
                d = a[b, p, c] - mu
                var += d * d
        sigma = math.sqrt(var / n)
        r = 1.0 / (sigma + eps)
        rstd[b] = r
        rsig[b] = 1.0 / sigma if sigma > 0.0 else 0.0     # sigma = 0: the std term's limit is 0
        for c in range(nc):
            pooled[b, c] = 0.0
        for p in range(npos):
            for c in range(nc):
                xh = (a[b, p, c] - mu) * r
                xhat[b, p, c] = xh
                pooled[b, c] += xh
        for c in range(nc):
            pooled[b, c] = scale[c] * (pooled[b, c] / npos) + bias[c]


@njit(cache=True, error_model="numpy")
def _layer_norm_pool_backward(g_pooled, xhat, rstd, rsig, scale, g_a, d_scale, d_bias):
    """VJP of :func:`_layer_norm_pool`. With gs[b, c] = g_pooled[b, c] scale[c] / P (the gradient of every
    xhat[b, p, c]), the rule of xhat = (a - mean) / (std + eps) over the P * C values of an example:
    g_a = (gs - mean(gs)) / (std + eps) - xhat mean(gs xhat) / std."""
    nb, npos, nc = xhat.shape
    n = npos * nc
    for c in range(nc):
        d_scale[c] = 0.0
        d_bias[c] = 0.0
    for b in range(nb):
        m1 = 0.0
        m2 = 0.0
        for c in range(nc):
            col = 0.0
            for p in range(npos):
                col += xhat[b, p, c]
            gs = g_pooled[b, c] * scale[c] / npos
            m1 += gs * npos
            m2 += gs * col
            d_scale[c] += g_pooled[b, c] * (col / npos)
            d_bias[c] += g_pooled[b, c]
        m1 /= n
        m2 /= n
        r = rstd[b]
        q = m2 * rsig[b]
        for p in range(npos):
            for c in range(nc):
                gs = g_pooled[b, c] * scale[c] / npos
                g_a[b, p, c] = r * (gs - m1) - xhat[b, p, c] * q


def _conv_relu_forward(x, layer, stride, cache):
    """relu(conv2d(x, W, stride) + b) for NHWC x; keeps the patches and the pre-activation in ``cache``."""
    cols, z = _conv_gemm(x, layer["W"], stride)
    a = np.empty_like(z)
    _bias_relu(z, layer["b"], a)
    if cache is not None:
        cache.append((cols, z))
    return a.reshape(cols.shape[:3] + (z.shape[1],))


def _conv_relu_backward(g_a, layer, stride, x_shape, cached, need_dx):
    """(dx or None, {"W", "b"}) of :func:`_conv_relu_forward` given the gradient of its output."""
    cols, z = cached
    w = layer["W"]
    delta = np.empty_like(z)
    db = np.empty(z.shape[1])
    _relu_backward(_as_input(g_a).reshape(z.shape), z, delta, db)
    grads = {"W": _conv_kernel_grad(cols, delta, w.shape), "b": db}
    if not need_dx:
        return None, grads
    return _conv_input_grad(delta, w, cols.shape[:3], x_shape, stride), grads


@primitive
def _convnet(x, params, model, cache):
    h = _as_input(x).reshape(-1, model.height, model.width, 1)
    shapes = [h.shape]
    h = _conv_relu_forward(h, params["conv1"], model.conv1.stride, cache)
    shapes.append(h.shape)
    h = _conv_relu_forward(h, params["conv2"], model.conv2.stride, cache)
    nb, ho, wo, nc = h.shape
    xhat, rstd, rsig, pooled = np.empty((nb, ho * wo, nc)), np.empty(nb), np.empty(nb), np.empty((nb, nc))
    _layer_norm_pool(h.reshape(nb, ho * wo, nc), model.NORM_EPS, params["norm"]["scale"], params["norm"]["bias"],
                     xhat, rstd, rsig, pooled)
    if cache is not None:
        cache.extend([shapes, xhat, rstd, rsig, pooled])
    return pooled @ params["out"]["W"] + params["out"]["b"]


def _convnet_vjp(argnums, ans, args, kwargs):
    x, params, model, cache = args
    cached1, cached2, shapes, xhat, rstd, rsig, pooled = cache

    def vjp(g):
        _first_order(g, "convnet")
        g = _as_input(g)
        g_pooled = g @ params["out"]["W"].T
        g_a2 = np.empty_like(xhat)
        d_scale, d_bias = np.empty(xhat.shape[2]), np.empty(xhat.shape[2])
        _layer_norm_pool_backward(g_pooled, xhat, rstd, rsig, params["norm"]["scale"], g_a2, d_scale, d_bias)
        g_a1, g_conv2 = _conv_relu_backward(g_a2, params["conv2"], model.conv2.stride, shapes[1], cached2, True)
        dx, g_conv1 = _conv_relu_backward(g_a1, params["conv1"], model.conv1.stride, shapes[0], cached1,
                                          0 in argnums)
        grads = {"conv1": g_conv1, "conv2": g_conv2, "norm": {"scale": d_scale, "bias": d_bias},
                 "out": {"W": pooled.T @ g, "b": g.sum(axis=0)}}
        return [dx.reshape(np.shape(x)) if a == 0 else grads for a in argnums]
    return vjp


defvjp_argnums(_convnet, _convnet_vjp)


def convnet(model, params, x):
    """The paper's ConvNet (:class:`mi_ref.nn.ConvNet`) as one primitive (reference: ``ConvNet.apply_reference``).

    x (B, H W) -> conv 5x5 stride 2 'same' + ReLU -> conv 5x5 stride 2 'same' + ReLU -> layer norm over
    (h, w, c), (a - mean) / (std + 1e-6), with per-channel scale and bias -> mean over (h, w) -> dense.
    Convolutions are im2col + one GEMM (numba im2col, patches kept for the kernel gradient); the layer norm
    and the pooling are one numba pass, and so is their VJP: with gs = g_pooled scale / P the gradient of
    every normalized value, g_a = (gs - mean(gs)) / (std + eps) - xhat mean(gs xhat) / std per example.
    """
    return _convnet(x, params, model, [] if _traced(x, params) else None)


# ----------------------------------------------------------------------------------------------------
# the gradient of a loss with respect to a dict of sub-models, without a zero tree for the whole dict
#
# Why. ``autograd.value_and_grad(loss)(params)`` boxes the whole dict; each ``params[key]`` is then a
# ``container_take`` whose VJP is a sparse object, and the first one to arrive is turned dense by
# allocating zeros for EVERY leaf of the dict and adding the sub-gradient into them (then the next ones).
# For the paper's steps that is one needless pass of zeros plus one add over all parameters: 28 M
# float64 values (220 MB) for the invertible experiment, ~9 % of its gradient time, and ~2.6 ms of the
# conditioning step's ~28 ms. Here every entry params[key] is its own root of the trace, so each
# sub-gradient arrives as it is and the result is assembled without zeros. The values are the same
# (x + 0 = x; contributions to one entry are summed in autograd's order; only the sign of an exact zero
# can differ, as -0.0 + 0.0 = +0.0 in autograd's sum and -0.0 here). It relies on
# autograd's tracer (``trace_stack``, ``new_box``, ``VJPNode``, ``add_outgrads``, ``toposort``, stable
# since autograd 1.2); if those cannot be imported, autograd's own ``value_and_grad`` is used instead.

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
        space = vspace(value)
        grads = {}
        if end_node is not None:
            root_key = {id(node): key for key, node in roots.items()}
            outgrads = {end_node: (space.ones(), False)}
            for node in toposort(end_node):            # autograd's backward_pass, stopping at the roots
                outgrad = outgrads.pop(node)[0]
                key = root_key.get(id(node))
                if key is not None:
                    grads[key] = outgrad
                    continue
                for parent, ingrad in zip(node.parents, node.vjp(outgrad)):
                    outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
        return value, {key: grads[key] if key in grads else vspace(params[key]).zeros() for key in keys}

    return value_and_grad


# ----------------------------------------------------------------------------------------------------
# Adam: one fused pass per parameter leaf


@njit(cache=True, error_model="numpy")
def _adam_kernel(p, g, m, v, b1, b2, lr, c1, c2, eps, p_new, m_new, v_new):
    """The formula of Adam.update_reference, in its order of operations (bitwise the same results)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m_new[i] = mi
        v_new[i] = vi
        p_new[i] = p[i] - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


@njit(cache=True, error_model="numpy")
def _adam_kernel_inplace(p, g, m, v, b1, b2, lr, c1, c2, eps):
    """:func:`_adam_kernel` writing the new values over p, m and v (the same operations, the same bits)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


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
                np.may_share_memory(a, b) for a, b in ((p, m), (p, v), (m, v))):
            _adam_kernel_inplace(targets[0], g_flat, targets[1], targets[2], b1, b2, lr, c1, c2, eps)
            return p, m, v
    flat = [np.ascontiguousarray(a, dtype=float).reshape(-1) for a in (p, m, v)]
    p_new, m_new, v_new = np.empty(g_flat.shape), np.empty(g_flat.shape), np.empty(g_flat.shape)
    _adam_kernel(flat[0], g_flat, flat[1], flat[2], b1, b2, lr, c1, c2, eps, p_new, m_new, v_new)
    return p_new.reshape(shape), m_new.reshape(shape), v_new.reshape(shape)


def adam_tree(params, grads, m, v, b1, b2, lr, c1, c2, eps, inplace=False):
    """:func:`adam_leaf` over four trees of the same structure: ``(params', m', v')``, each built by
    :func:`mi_ref.tree.tree_map` (as the reference, ``Adam.update_reference``, builds them). Adam is bound by
    memory traffic: with new arrays it reads p, g, m, v and writes three fresh arrays (whose cache lines the
    CPU reads first); in place it reads four and writes three it already holds, measured 1.7x faster here (RealNVP
    invertible: 88 -> 51 ms per update). Splitting the leaves over two threads was measured slower on
    the 2-core benchmark machine, so one thread does all.
    """
    triples = tree_map(lambda p, g, m_, v_: adam_leaf(p, g, m_, v_, b1, b2, lr, c1, c2, eps, inplace),
                       params, grads, m, v)
    return tuple(tree_map(lambda _, triple: triple[i], params, triples) for i in range(3))


# ----------------------------------------------------------------------------------------------------
# memory: keep freed heap memory for the next step instead of returning it to the OS


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc's mallopt parameter numbers (malloc.h)


def configure_malloc(mmap_threshold=32 * 2 ** 20, trim_threshold=2 ** 31 - 1):
    """Tell glibc's malloc to serve arrays up to ``mmap_threshold`` bytes from its heap and to keep up to
    ``trim_threshold`` bytes of freed heap memory instead of handing it back to the OS. Returns True if
    applied (glibc found), False otherwise (e.g. macOS, musl): then nothing changes.

    Why: a training step allocates and frees the same few hundred MB every step (activations kept for the
    backward pass, gradients, Adam's new arrays, autograd's zero trees). By default glibc maps blocks above
    128 KiB freshly and returns freed memory at the top of the heap, so every step pays a page fault per
    4 KiB page it touches; on the 2-core VM of the benchmarks a fault costs ~2.6 us, i.e. ~0.7 ms per MB,
    which made the invertible step up to 1.6x slower and its time bimodal from run to run. With the
    thresholds raised, the second step onwards reuses resident memory. The process keeps its peak heap size
    until it exits (a training run reaches that peak every step anyway). Results are unchanged: this is
    about where bytes live, not what they hold.

    It is a process-wide setting, so mi-ref never calls it on import: ``scripts/bench_steps.py`` calls it,
    and a long-running training process can call it once at start-up.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


class Reference:
    """A model whose ``apply`` is its plain reference formulation: ``forward_reference`` for flows,
    ``apply_reference`` where a fast path exists, else the model's own ``apply``. Used to compare a whole
    training step computed with and without the fast primitives."""

    def __init__(self, model):
        self.model = model

    def apply(self, params, *args):
        if hasattr(self.model, "forward_reference"):
            return self.model.forward_reference(params, *args)[0]
        return getattr(self.model, "apply_reference", self.model.apply)(params, *args)
