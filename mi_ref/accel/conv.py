"""The paper's ConvNet as one primitive, and the convolution kernels it runs on.

The convolution's formula and its one hand-written gradient live in :mod:`mi_ref.nn`: :func:`mi_ref.nn.conv2d`
is the im2col patches times the kernel as a matrix, y = cols W, with the VJPs d kernel = cols^T g and
dx = col2im(g W^T). The ConvNet's fused primitive here computes exactly that formula, with the math
module's patch functions replaced by numba kernels that are tested against them:

=====================  ===============================  ==============================================
here                   the formula                      how it is tested (``tests/test_accel.py``)
=====================  ===============================  ==============================================
:func:`patches`        :func:`mi_ref.nn.im2col`         equal bit for bit (both copy the same values)
:func:`unpatch`        :func:`mi_ref.nn.col2im`         equal bit for bit (the same sums, same order)
:func:`convnet`        :meth:`mi_ref.nn.ConvNet.apply`  ~1e-12 relative, values and gradients, and
                                                        central finite differences
=====================  ===============================  ==============================================

The conventions are those of :mod:`mi_ref.accel.primitives` (ReLU's derivative 0 at 0, what the backward
pass needs kept in a list passed as the primitive's last argument, first-order VJPs, nothing modified in
place that autograd or the caller owns).

Speed. Besides its GEMMs, the ConvNet's step writes the patches of both convolutions (28 x 1600 values per
example in the paper's second layer: 46 MB per encoder at batch 128) and scatters their gradients back. The
kernels read the batch itself (no zero-padded copy, and no padded gradient to cut out afterwards) and move
each window row as one run: a copy in :func:`_im2col`, an add in :func:`_col2im`. Handed to a small
function as two slices, such a run's loop is vectorized by LLVM; written inline on flat indices, as before,
it stayed scalar. Measured on the benchmarks' 2-core machine while other processes kept it busy (one thread,
CPU time, the second layer at batch 128): patches 9.8 -> 5.9 ms, their adjoint 5.0 -> 2.9 ms; the encoders
training step (``scripts/bench_steps.py --clock cpu``, one thread) 4-6 % faster, with the same bits. The
kernels run on one thread: split over the batch with numba's ``prange`` they were slower on that shared
machine (a parallel region waits for its slowest thread; see :mod:`mi_ref.accel.adam`).
"""

import math

import numpy as np
from autograd.extend import defvjp_argnums, primitive
from numba import njit

from .. import nn
from .primitives import _as_input, _bias_relu, _first_order, _relu_backward, _traced

# ----------------------------------------------------------------------------------------------------
# the patches of a 'same' convolution (mi_ref.nn.im2col) and their adjoint (mi_ref.nn.col2im)


@njit(cache=True, error_model="numpy")
def _copy(dst, src):
    """dst[k] = src[k] over two runs of equal length."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@njit(cache=True, error_model="numpy")
def _zero(dst):
    """dst[k] = 0."""
    for k in range(dst.shape[0]):
        dst[k] = 0.0


@njit(cache=True, error_model="numpy")
def _add(dst, src):
    """dst[k] += src[k] over two runs of equal length."""
    for k in range(dst.shape[0]):
        dst[k] += src[k]


@njit(cache=True, error_model="numpy")
def _im2col(x, kh, kw, stride, top, left, cols):
    """cols[b, p, q, (i, j, c)] = x[b, p s + i - top, q s + j - left, c], and 0 where that pixel lies outside
    x (the 'same' padding): read straight from the NHWC batch x, no padded copy.

    For fixed (b, p, q, i) the window's row is a run of kw C values, contiguous in both arrays: the part
    inside the image (columns j0 <= j < j1) is one copy, the rest zeros. The runs go to :func:`_copy` and
    :func:`_zero` as slices: LLVM vectorizes those loops, while the same loop written inline on flat
    indices into the two arrays stayed scalar.
    """
    nb, h, w, c = x.shape
    ho, wo = cols.shape[1], cols.shape[2]
    seg = kw * c
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    for b in range(nb):
        for p in range(ho):
            for q in range(wo):
                s0 = q * stride - left                          # the window's first column
                j0 = max(0, -s0)
                j1 = max(j0, min(kw, w - s0))
                inside = j0 == 0 and j1 == kw
                d0 = ((b * ho + p) * wo + q) * kh * seg
                for i in range(kh):
                    r = p * stride + i - top
                    d = d0 + i * seg
                    if r < 0 or r >= h:
                        _zero(cf[d:d + seg])
                    elif inside:                                # the common case, no empty zero runs
                        src = ((b * h + r) * w + s0) * c
                        _copy(cf[d:d + seg], xf[src:src + seg])
                    else:
                        src = ((b * h + r) * w + s0 + j0) * c
                        n = (j1 - j0) * c
                        _zero(cf[d:d + j0 * c])
                        _copy(cf[d + j0 * c:d + j0 * c + n], xf[src:src + n])
                        _zero(cf[d + j0 * c + n:d + seg])


@njit(cache=True, error_model="numpy")
def _col2im(dcols, kh, kw, stride, top, left, dx):
    """The adjoint of :func:`_im2col`, written into the NHWC batch dx (no padded array): dx = 0, then for
    every output position (b, p, q) in order and every window row i inside the image, the run of dcols
    entries whose pixels are inside is added onto dx's row (:func:`_add`). A pixel thus receives its terms
    in the order of the output positions, as in :func:`mi_ref.nn.col2im`."""
    nb, h, w, c = dx.shape
    ho, wo = dcols.shape[1], dcols.shape[2]
    seg = kw * c
    xf = dx.reshape(dx.size)
    df = dcols.reshape(dcols.size)
    xf[:] = 0.0
    for b in range(nb):
        for p in range(ho):
            for q in range(wo):
                s0 = q * stride - left
                j0 = max(0, -s0)
                j1 = min(kw, w - s0)
                if j1 <= j0:
                    continue
                n = (j1 - j0) * c
                d0 = ((b * ho + p) * wo + q) * kh * seg + j0 * c
                for i in range(kh):
                    r = p * stride + i - top
                    if r < 0 or r >= h:
                        continue
                    dst = ((b * h + r) * w + s0 + j0) * c
                    _add(xf[dst:dst + n], df[d0 + i * seg:d0 + i * seg + n])


def _offsets(x_shape, kh, kw, stride):
    """(ho, wo, top, left) of a 'same' convolution of an NHWC batch of shape ``x_shape``."""
    _, h, w, _ = x_shape
    ho, top, _ = nn.same_padding(h, kh, stride)
    wo, left, _ = nn.same_padding(w, kw, stride)
    return ho, wo, top, left


def patches(x, kh, kw, stride):
    """:func:`mi_ref.nn.im2col`: the patches ``(B, Ho, Wo, kh * kw * C)`` of an NHWC batch (zero 'same'
    padding), the same values bit for bit."""
    x = np.ascontiguousarray(x, dtype=float)
    ho, wo, top, left = _offsets(x.shape, kh, kw, stride)
    cols = np.empty((x.shape[0], ho, wo, kh * kw * x.shape[3]))
    _im2col(x, kh, kw, stride, top, left, cols)
    return cols


def unpatch(dcols, x_shape, kh, kw, stride):
    """:func:`mi_ref.nn.col2im`: the adjoint of :func:`patches`, the gradient with respect to x of
    <dcols, patches(x)>, the same values bit for bit (each pixel adds its patch entries to 0 by output
    position, as the formula does)."""
    _, _, top, left = _offsets(x_shape, kh, kw, stride)
    dx = np.empty(tuple(x_shape))
    _col2im(np.ascontiguousarray(dcols, dtype=float), kh, kw, stride, top, left, dx)
    return dx


def _conv_kernel_grad(cols, delta, kernel_shape):
    """d<delta, cols @ W>/dW for ``delta: (B Ho Wo, C_out)``: patches^T delta, shaped like the kernel."""
    return (cols.reshape(delta.shape[0], -1).T @ delta).reshape(kernel_shape)


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


@njit(cache=True, error_model="numpy")
def _bias_relu_channels(zt, b, a):
    """In place zt[c, i] += b[c]; a[i, c] = relu(zt[c, i]) (NaN propagates): the pre-activation kept
    channel-major ``(C, M)`` as the GEMM wrote it, the activation written position-major ``(M, C)`` (NHWC),
    in tiles of 64 positions so that both stay in cache."""
    nc, m = zt.shape
    for i0 in range(0, m, 64):
        i1 = min(i0 + 64, m)
        for c in range(nc):
            bc = b[c]
            for i in range(i0, i1):
                v = zt[c, i] + bc
                zt[c, i] = v
                a[i, c] = 0.0 if v < 0.0 else v


@njit(cache=True, error_model="numpy")
def _relu_backward_channels(g, zt, delta_t, db):
    """delta_t[c, i] = g[i, c] relu'(zt[c, i]) with relu'(0) = 0 (:func:`mi_ref.nn.relu`), written
    channel-major; db[c] = sum_i delta_t[c, i], summed in the order of i (as :func:`_relu_backward`)."""
    nc, m = zt.shape
    for c in range(nc):
        db[c] = 0.0
    for i0 in range(0, m, 64):
        i1 = min(i0 + 64, m)
        for c in range(nc):
            acc = db[c]
            for i in range(i0, i1):
                d = g[i, c] if zt[c, i] > 0.0 else 0.0
                delta_t[c, i] = d
                acc += d
            db[c] = acc


# a convolution whose patches have at least this many values (kh kw C_in) runs its GEMMs channel-major
CHANNEL_MAJOR_MIN_PATCH = 128


def _channel_major(kernel_shape):
    """True if a convolution with this kernel runs channel-major (see :func:`_conv_relu_forward`)."""
    kh, kw, c, _ = kernel_shape
    return kh * kw * c >= CHANNEL_MAJOR_MIN_PATCH


def _conv_relu_forward(x, layer, stride, cache):
    """relu(conv2d(x, W, stride) + b) for NHWC x; keeps the patches and the pre-activation in ``cache``.

    A layer with wide patches (:func:`_channel_major`: kh kw C_in >= 128, the ConvNet's second layer)
    writes its GEMM channel-major, z^T = W^T patches^T: ``(C_out, B Ho Wo)``, the long side along the
    output's rows, and its kernel gradient as delta^T patches. For those shapes OpenBLAS runs this
    orientation faster (measured on one thread, (3584 x 800) @ (800 x 64): forward 31 -> 39 GFLOP/s,
    kernel gradient 28 -> 37 GFLOP/s). A first layer (25 patch values) is as fast or faster position-major,
    z = patches W: ``(B Ho Wo, C_out)``, and keeps it. Both compute the same sums; BLAS may round them in
    another order.
    """
    kh, kw, c, o = layer["W"].shape
    cols = patches(x, kh, kw, stride)
    cols2 = cols.reshape(-1, kh * kw * c)
    w2 = layer["W"].reshape(kh * kw * c, o)
    a = np.empty((cols2.shape[0], o))
    if _channel_major(layer["W"].shape):
        z = np.matmul(w2.T, cols2.T)                        # (C_out, M)
        _bias_relu_channels(z, layer["b"], a)
    else:
        z = cols2 @ w2                                      # (M, C_out)
        _bias_relu(z, layer["b"], a)
    if cache is not None:
        cache.append((cols, z))
    return a.reshape(cols.shape[:3] + (o,))


def _conv_relu_backward(g_a, layer, stride, x_shape, cached, need_dx):
    """(dx or None, {"W", "b"}) of :func:`_conv_relu_forward` given the gradient of its output:
    delta = g_a relu'(z), db = sum delta, and the VJPs of :func:`mi_ref.nn.conv2d` at delta,
    d kernel = patches^T delta (:func:`mi_ref.nn.conv2d_kernel_grad`) and dx = col2im(delta W^T)
    (:func:`mi_ref.nn.conv2d_input_grad`, with :func:`unpatch` for col2im)."""
    cols, z = cached
    w = layer["W"]
    kh, kw, c, o = w.shape
    m = cols.shape[0] * cols.shape[1] * cols.shape[2]
    g2 = _as_input(g_a).reshape(m, o)
    db = np.empty(o)
    delta = np.empty_like(z)
    if _channel_major(w.shape):                             # delta kept as delta^T (C_out, M), like z
        _relu_backward_channels(g2, z, delta, db)
        d_kernel = np.ascontiguousarray((delta @ cols.reshape(m, kh * kw * c)).T).reshape(w.shape)
        delta = delta.T
    else:
        _relu_backward(g2, z, delta, db)
        d_kernel = _conv_kernel_grad(cols, delta, w.shape)
    grads = {"W": d_kernel, "b": db}
    if not need_dx:
        return None, grads
    dcols = (delta @ w.reshape(kh * kw * c, o).T).reshape(cols.shape)
    return unpatch(dcols, x_shape, kh, kw, stride), grads


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
        _first_order(g, "convnet", __name__)
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
    """The paper's ConvNet (:class:`mi_ref.nn.ConvNet`) as one primitive (reference:
    :meth:`mi_ref.nn.ConvNet.apply`).

    x (B, H W) -> conv 5x5 stride 2 'same' + ReLU -> conv 5x5 stride 2 'same' + ReLU -> layer norm over
    (h, w, c), (a - mean) / (std + 1e-6), with per-channel scale and bias -> mean over (h, w) -> dense.
    Convolutions are :func:`mi_ref.nn.conv2d`'s formula, im2col + one GEMM, with the numba kernels
    :func:`patches` and :func:`unpatch` (the patches kept for the kernel gradient); the layer norm
    and the pooling are one numba pass, and so is their VJP: with gs = g_pooled scale / P the gradient of
    every normalized value, g_a = (gs - mean(gs)) / (std + eps) - xhat mean(gs xhat) / std per example.

    Untraced calls on more than :data:`CONVNET_SLICE` examples (the evaluations: the probe encodes the whole
    training set in chunks of 4096) run slice by slice: the patches of the second layer hold 28 x 1600
    values per example on 14 x 28 images, 734 MB for 4096 quick-preset examples, whose allocation and page
    faults cost more than the GEMMs (measured: 21 of a quick encoders run's 76 s went to encoding). Every
    example is computed on its own either way (the network treats examples independently); BLAS may round
    a row of a larger product in another order.
    """
    if _traced(x, params):
        return _convnet(x, params, model, [])
    x = _as_input(x)
    if x.shape[0] <= CONVNET_SLICE:
        return _convnet(x, params, model, None)
    return np.concatenate([_convnet(x[i:i + CONVNET_SLICE], params, model, None)
                           for i in range(0, x.shape[0], CONVNET_SLICE)])


# untraced ConvNet calls run on slices of at most this many examples (see convnet)
CONVNET_SLICE = 256
