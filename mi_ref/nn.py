"""Layers and encoders, written as pure functions of (params, inputs).

The model protocol used throughout mi-ref (after JAX's ``stax``):

* a model is a small object fixed at construction (sizes, activation, initializers, any non-trainable
  structure such as a permutation, drawn from an explicit ``numpy.random.Generator``);
* ``model.init(rng) -> params``: a nested dict/list of float64 arrays (see :mod:`mi_ref.tree`);
* ``model.apply(params, x) -> y``: a pure function that autograd differentiates with respect to both
  ``params`` and ``x``.

Conventions (the same as the golden vectors of :mod:`mi_ref.verify` document):

* inputs are row-major batches, ``x: (B, in_dim)``;
* a dense layer stores ``W: (in_dim, out_dim)`` and ``b: (out_dim,)`` and computes ``y = x W + b``
  (PyTorch's ``torch.nn.Linear.weight`` is ``W.T``);
* images are NHWC, ``(B, H, W, C)``; conv kernels are ``(kh, kw, C_in, C_out)`` (TensorFlow's layout).
"""

from dataclasses import dataclass

import autograd.numpy as np
import numpy as onp
from autograd.extend import defjvp, defvjp, primitive

from .checks import batch as check_batch
from .checks import positive_int as check_positive_int
from .registry import Registry


# ----------------------------------------------------------------------------------------------------
# initializers: fn(rng, shape) -> float64 array


def zeros(rng, shape):
    """All-zero array (biases)."""
    return onp.zeros(shape)


def ones(rng, shape):
    """All-one array (layer-norm scales)."""
    return onp.ones(shape)


def _fans(shape):
    """(fan_in, fan_out) of a dense ``(in, out)`` or conv ``(kh, kw, c_in, c_out)`` kernel."""
    receptive = int(onp.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(rng, shape):
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    limit = onp.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def truncated_normal(std):
    """Initializer drawing N(0, std^2) truncated to [-2 std, 2 std] (out-of-range draws are redrawn).

    The paper initializes RealNVP and residual-MLP kernels with std 1e-4, so that those encoders start
    very close to the identity map.
    """
    if not std > 0:
        raise ValueError(f"truncated_normal needs std > 0, got {std!r}")

    def init(rng, shape):
        out = rng.standard_normal(shape)
        bad = onp.abs(out) > 2.0
        while bad.any():
            out[bad] = rng.standard_normal(int(bad.sum()))
            bad = onp.abs(out) > 2.0
        return std * out

    init.__name__ = f"truncated_normal(std={std})"
    return init


# ----------------------------------------------------------------------------------------------------
# activations


@primitive
def relu(x):
    """ReLU(x) = max(x, 0), with the derivative relu'(x) = 1 for x > 0 and 0 for x <= 0.

    The derivative at exactly x = 0 is 0, as in TensorFlow (``ReluGrad``), PyTorch and JAX. (autograd's
    own ``np.maximum(x, 0)`` would split the tie and give 1/2.) Ties are common: a zero bias on an all-zero
    input patch, e.g. the blank margins of an MNIST digit at the ConvNet's first layer, gives exactly 0.
    A NaN input gives NaN, as ``np.maximum`` does.
    """
    return onp.maximum(x, 0.0)


def _relu_slope(x):
    """relu'(x) as an array of 0.0 and 1.0 (0 at x = 0, see :func:`relu`)."""
    return onp.asarray(np.greater(x, 0.0), dtype=float)      # np.greater reads through autograd boxes


defvjp(relu, lambda ans, x: lambda g: g * _relu_slope(x))
defjvp(relu, lambda g, ans, x: g * _relu_slope(x))


def softplus(x):
    """softplus(x) = log(1 + exp(x)), computed stably as logaddexp(0, x)."""
    return np.logaddexp(0.0, x)


def identity(x):
    """identity(x) = x."""
    return x


@dataclass(frozen=True)
class Activation:
    """An activation: its name and ``fn``, differentiated by autograd. (The speed wing keeps the derivatives
    its hand-written VJPs and forward-mode Jacobians need, by name, in
    :data:`mi_ref.accel.activations.ACTIVATION_DERIVATIVES`.)"""

    name: str
    fn: object


ACTIVATIONS = Registry("activation")
ACTIVATIONS.register("relu", Activation("relu", relu))
ACTIVATIONS.register("softplus", Activation("softplus", softplus))
ACTIVATIONS.register("identity", Activation("identity", identity))


def get_activation(name):
    """The activation function registered as ``name`` (see :data:`ACTIVATIONS`)."""
    return ACTIVATIONS.get(name).fn


# ----------------------------------------------------------------------------------------------------
# dense layers and MLPs


def dense(params, x):
    """Dense layer: y = x W + b, with ``x: (B, in)``, ``W: (in, out)``, ``b: (out,)``."""
    return np.dot(x, params["W"]) + params["b"]


class Dense:
    """A dense layer ``y = x W + b``. Params: ``{"W": (in_dim, out_dim), "b": (out_dim,)}``."""

    def __init__(self, in_dim, out_dim, kernel_init=glorot_uniform, bias_init=zeros):
        self.in_dim = check_positive_int(in_dim, "in_dim")
        self.out_dim = check_positive_int(out_dim, "out_dim")
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def init(self, rng):
        return {"W": self.kernel_init(rng, (self.in_dim, self.out_dim)),
                "b": self.bias_init(rng, (self.out_dim,))}

    def apply(self, params, x):
        check_batch(x, self.in_dim)
        return dense(params, x)


class MLP:
    """Multi-layer perceptron with the paper's semantics.

    One dense layer per entry of ``dims``; the activation follows every layer but the last:

        h_0 = x,   h_l = act(h_{l-1} W_l + b_l)  (l < L),   y = h_{L-1} W_L + b_L.

    With ``shortcuts=True`` every layer, the last one too, is residual:

        h_l = act(h_{l-1} W_l + b_l) + h_{l-1}  (l < L),   y = h_{L-1} W_L + b_L + h_{L-1},

    which needs ``dims`` to equal ``in_dim`` throughout. Params: ``{"layers": [{"W", "b"}, ...]}``.
    Paper: the "conditioning" encoder is ``MLP(392, [392] * 5, shortcuts=True)`` initialized with
    ``truncated_normal(1e-4)`` (so it starts at the identity); the "critics" and "encoders" experiments use
    ``MLP(392, [300, 300, 100])``.
    """

    def __init__(self, in_dim, dims, shortcuts=False, activation="relu",
                 kernel_init=glorot_uniform, bias_init=zeros):
        self.in_dim = check_positive_int(in_dim, "in_dim")
        dims = list(dims)
        if not dims:
            raise ValueError("MLP dims must list at least one layer width, got []")
        self.dims = [check_positive_int(d, "every MLP layer width") for d in dims]
        self.shortcuts = bool(shortcuts)
        if self.shortcuts and any(d != self.in_dim for d in self.dims):
            raise ValueError(f"an MLP with shortcuts needs every layer width equal to in_dim={self.in_dim}"
                             f" (x <- layer(x) + x), got dims={self.dims}")
        self.activation_name = activation
        self.activation = get_activation(activation)
        self.out_dim = self.dims[-1]
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def init(self, rng):
        sizes = [self.in_dim] + self.dims
        return {"layers": [{"W": self.kernel_init(rng, (a, b)), "b": self.bias_init(rng, (b,))}
                           for a, b in zip(sizes[:-1], sizes[1:])]}

    def apply(self, params, x):
        """The formula above, layer by layer."""
        check_batch(x, self.in_dim)
        layers = params["layers"]
        h = x
        for i, layer in enumerate(layers):
            out = dense(layer, h)
            if i < len(layers) - 1:
                out = self.activation(out)
            h = out + h if self.shortcuts else out
        return h


def mlp(in_dim, dims, shortcuts=False, activation="relu", kernel_init=glorot_uniform, bias_init=zeros):
    """Build an :class:`MLP` (see there for the formula)."""
    return MLP(in_dim, dims, shortcuts, activation, kernel_init, bias_init)


# ----------------------------------------------------------------------------------------------------
# convolution ('same' padding, TensorFlow's rule), as an autograd primitive with a hand-written VJP


def same_padding(size, kernel, stride):
    """TensorFlow's 'same' padding along one axis.

    out = ceil(size / stride); total = max((out - 1) * stride + kernel - size, 0);
    before = total // 2; after = total - before (the odd pixel goes after).
    Returns ``(out, before, after)``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def im2col(x, kh, kw, stride):
    """The patches of a 'same' convolution of an NHWC batch ``x: (B, H, W, C)``:

        cols[b, p, q, (i, j, c)] = xpad[b, p s + i, q s + j, c],   shape (B, Ho, Wo, kh * kw * C),

    with ``xpad`` zero-padded by :func:`same_padding`, one row per output position and the kernel's
    (i, j, c) in row-major order (the order of ``kernel.reshape(kh * kw * C, C_out)``).
    """
    b, h, w, c = x.shape
    ho, top, bottom = same_padding(h, kh, stride)
    wo, left, right = same_padding(w, kw, stride)
    xp = onp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    win = onp.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # (B, Hp', Wp', C, kh, kw)
    win = win[:, ::stride, ::stride]
    return onp.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(b, ho, wo, kh * kw * c)


def col2im(dcols, x_shape, kh, kw, stride):
    """The adjoint of :func:`im2col`: the gradient with respect to ``x`` of <dcols, im2col(x)>.

        dx[b, r, s, c] = sum of dcols[b, p, q, (i, j, c)] over p s + i = r + top, q s + j = s + left,

    i.e. every patch entry goes back to the pixel it was copied from (padding entries are dropped).
    ``dcols: (B, Ho, Wo, kh * kw * C)``, ``x_shape = (B, H, W, C)``.

    Each pixel's terms are added to 0 in the order of their output positions (p, then q), that is of the
    kernel offsets (i, j) from the last to the first: the order in which a kernel that walks the output
    positions adds them (:func:`mi_ref.accel.conv.unpatch`), so that both give the same bits.
    """
    b, h, w, c = x_shape
    ho, top, bottom = same_padding(h, kh, stride)
    wo, left, right = same_padding(w, kw, stride)
    dcols = dcols.reshape(b, ho, wo, kh, kw, c)
    dxp = onp.zeros((b, h + top + bottom, w + left + right, c))
    for i in reversed(range(kh)):
        for j in reversed(range(kw)):
            dxp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :] += dcols[:, :, :, i, j, :]
    return dxp[:, top:top + h, left:left + w, :]


@primitive
def conv2d(x, kernel, stride=1):
    """2-D cross-correlation with TensorFlow's 'same' padding (what TF and PyTorch call convolution).

    y[b, p, q, o] = sum_{i, j, c} xpad[b, p * s + i, q * s + j, c] * kernel[i, j, c, o],
    with ``x: (B, H, W, C)``, ``kernel: (kh, kw, C, O)``, ``y: (B, ceil(H/s), ceil(W/s), O)`` and
    ``xpad`` zero-padded by :func:`same_padding`. No bias (see :class:`Conv2D`).

    Computed as one matrix product of the :func:`im2col` patches with the reshaped kernel,
    y = cols W with W = kernel as a (kh kw C, O) matrix. The VJPs are hand-written and gradient-tested:

        d kernel = cols^T g   (:func:`conv2d_kernel_grad`),   dx = col2im(g W^T)   (:func:`conv2d_input_grad`).

    This is the one convolution with hand-written gradients in mi-ref: :mod:`mi_ref.accel.conv` runs the
    same formula with faster patch kernels, tested against :func:`im2col` and :func:`col2im`.
    """
    kh, kw, c, o = kernel.shape
    cols = im2col(x, kh, kw, stride)
    return cols @ kernel.reshape(kh * kw * c, o)


def conv2d_input_grad(g, kernel, x_shape, stride=1):
    """The gradient of <g, conv2d(x, kernel, stride)> with respect to ``x`` (shape ``x_shape``):
    col2im(g W^T), with ``g: (B, Ho, Wo, O)`` and W the kernel as a (kh kw C, O) matrix."""
    kh, kw, c, o = kernel.shape
    b, ho, wo = g.shape[:3]
    dcols = (g.reshape(-1, o) @ kernel.reshape(kh * kw * c, o).T).reshape(b, ho, wo, kh * kw * c)
    return col2im(dcols, x_shape, kh, kw, stride)


def conv2d_kernel_grad(g, x, kernel_shape, stride=1):
    """The gradient of <g, conv2d(x, kernel, stride)> with respect to the kernel (shape ``kernel_shape``):
    cols^T g with cols = :func:`im2col` (x) as a (B Ho Wo, kh kw C) matrix, shaped like the kernel."""
    kh, kw, c, o = kernel_shape
    cols = im2col(x, kh, kw, stride)
    return (cols.reshape(-1, kh * kw * c).T @ g.reshape(-1, o)).reshape(kernel_shape)


def _conv2d_vjp_x(ans, x, kernel, stride=1):
    return lambda g: conv2d_input_grad(g, kernel, x.shape, stride)


def _conv2d_vjp_kernel(ans, x, kernel, stride=1):
    return lambda g: conv2d_kernel_grad(g, x, kernel.shape, stride)


defvjp(conv2d, _conv2d_vjp_x, _conv2d_vjp_kernel)


class Conv2D:
    """Convolution layer ``y = conv2d(x, W, stride) + b`` ('same' padding).

    Params: ``{"W": (k, k, in_channels, out_channels), "b": (out_channels,)}``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 kernel_init=glorot_uniform, bias_init=zeros):
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.stride = check_positive_int(stride, "stride")
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def init(self, rng):
        k = self.kernel_size
        return {"W": self.kernel_init(rng, (k, k, self.in_channels, self.out_channels)),
                "b": self.bias_init(rng, (self.out_channels,))}

    def check_input(self, x):
        shape = np.shape(x)
        if len(shape) != 4 or shape[-1] != self.in_channels:
            raise ValueError(f"Conv2D input must be NHWC (batch, height, width, {self.in_channels}), "
                             f"got shape {shape}")

    def apply(self, params, x):
        """``conv2d(x, W, stride) + b``."""
        self.check_input(x)
        return conv2d(x, params["W"], self.stride) + params["b"]


@primitive
def population_std(centered):
    """sigma_b = sqrt(mean(c[b]^2)) over all non-batch axes of a centered batch ``c``, shape (B, 1, ..., 1).

    VJP: d sigma_b / d c[b] = c[b] / (n sigma_b), and 0 where sigma_b = 0. There c[b] = 0, and 0 is the
    limit of c / (n sigma) times anything bounded; a chain rule through sqrt would give 0 * inf = NaN.
    """
    axes = tuple(range(1, onp.ndim(centered)))
    return onp.sqrt(onp.mean(centered ** 2, axis=axes, keepdims=True))


def _population_std_vjp(ans, centered):
    n = onp.size(centered) // onp.shape(centered)[0]
    inv = onp.divide(1.0, n * ans, out=onp.zeros_like(ans), where=ans > 0)
    return lambda g: g * centered * inv


defvjp(population_std, _population_std_vjp)


def layer_norm(x, scale, bias, eps=1e-6):
    """Layer normalization over all non-batch axes, with a learned scale and bias per channel.

    For each example b, over its (h, w, c) values:

        mu_b    = mean(x[b])
        sigma_b = sqrt(mean((x[b] - mu_b)^2))             (the population standard deviation)
        y[b, ..., c] = (x[b, ..., c] - mu_b) / (sigma_b + eps) * scale[c] + bias[c],   eps = 1e-6.

    eps is added to the standard deviation, not to the variance: this is the paper's layer norm (its
    notebook divides by ``K.std(x) + 1e-6``), not the more common (x - mu) / sqrt(var + eps). At unit scale
    the two differ by about eps / 2 relative, enough for a float64 comparison to tell them apart.
    Where sigma_b = 0 (all values of an example equal, e.g. every ReLU of a small net off) the derivative
    is the limit (g - mean(g)) / eps (see :func:`population_std`), not TensorFlow's NaN.
    """
    axes = tuple(range(1, np.ndim(x)))
    mu = np.mean(x, axis=axes, keepdims=True)
    centered = x - mu
    sigma = population_std(centered)
    return centered / (sigma + eps) * scale + bias


def global_avg_pool(x):
    """Global average pooling of an NHWC batch: y[b, c] = mean_{h, w} x[b, h, w, c]."""
    return np.mean(x, axis=(1, 2))


class ConvNet:
    """The paper's ConvNet encoder for half images (14 x 28 on MNIST, 4 x 8 on the 8x8 digits).

    x (B, H*W) -> reshape (B, H, W, 1) -> conv 5x5, 64, stride 2, 'same', ReLU
    -> conv 5x5, 128, stride 2, 'same', ReLU -> :func:`layer_norm` over (h, w, c), i.e.
    (x - mean) / (std + 1e-6) with a per-channel scale and bias -> global average pooling -> dense to
    ``out_dim`` (100).

    Params: ``{"conv1": {W, b}, "conv2": {W, b}, "norm": {"scale", "bias"}, "out": {W, b}}``.
    """

    NORM_EPS = 1e-6

    def __init__(self, height, width, out_dim=100, channels=(64, 128), kernel_size=5, stride=2,
                 kernel_init=glorot_uniform, bias_init=zeros):
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        self.in_dim = self.height * self.width
        self.out_dim = check_positive_int(out_dim, "out_dim")
        c1, c2 = channels
        self.conv1 = Conv2D(1, c1, kernel_size, stride, kernel_init, bias_init)
        self.conv2 = Conv2D(c1, c2, kernel_size, stride, kernel_init, bias_init)
        self.out = Dense(c2, self.out_dim, kernel_init, bias_init)
        self.channels = (c1, c2)

    def init(self, rng):
        c2 = self.channels[1]
        return {"conv1": self.conv1.init(rng), "conv2": self.conv2.init(rng),
                "norm": {"scale": onp.ones(c2), "bias": onp.zeros(c2)},
                "out": self.out.init(rng)}

    def apply(self, params, x):
        """The network above, layer by layer."""
        check_batch(x, self.in_dim, f"ConvNet input (flattened {self.height} x {self.width} image)")
        h = np.reshape(x, (-1, self.height, self.width, 1))
        h = relu(self.conv1.apply(params["conv1"], h))
        h = relu(self.conv2.apply(params["conv2"], h))
        h = layer_norm(h, params["norm"]["scale"], params["norm"]["bias"], self.NORM_EPS)
        return dense(params["out"], global_avg_pool(h))


def convnet(height, width, out_dim=100, **kwargs):
    """Build the paper's :class:`ConvNet` for ``height x width`` half images."""
    return ConvNet(height, width, out_dim, **kwargs)
