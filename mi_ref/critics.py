"""Critics: score matrices S[i, j] = f(u_i, v_j) for a batch of codes u = g1(x1), v = g2(x2).

Every critic maps ``u: (K, d_u)`` and ``v: (K, d_v)`` to ``S: (K, K)``; rows index u, columns index v, and
the diagonal S[i, i] holds the positive pairs (codes of the two halves of the same image); the
off-diagonal entries are the negative pairs. Paper, Section 3.2 and Fig. 3.
"""

import autograd.numpy as np

from .checks import positive_int as check_positive_int
from .nn import MLP, glorot_uniform, relu
from .registry import Registry


def check_pair(u, v, d_u=None, d_v=None):
    """Raise ``ValueError`` unless u, v are 2-D with the same batch size (and widths d_u, d_v if given)."""
    su, sv = np.shape(u), np.shape(v)
    if len(su) != 2 or len(sv) != 2:
        raise ValueError(f"critic inputs must be 2-D (batch, dim), got u {su} and v {sv}")
    if su[0] != sv[0]:
        raise ValueError(f"critic inputs must have the same batch size (row i of u pairs with row i of v), "
                         f"got u {su} and v {sv}")
    if d_u is not None and su[1] != d_u:
        raise ValueError(f"critic input u must have shape (batch, {d_u}), got {su}")
    if d_v is not None and sv[1] != d_v:
        raise ValueError(f"critic input v must have shape (batch, {d_v}), got {sv}")


class InnerProduct:
    """S = u v^T, i.e. S[i, j] = <u_i, v_j>. No params."""

    def init(self, rng):
        return {}

    def apply(self, params, u, v):
        check_pair(u, v)
        if np.shape(u)[1] != np.shape(v)[1]:
            raise ValueError(f"inner-product critic needs codes of equal width, got u {np.shape(u)} "
                             f"and v {np.shape(v)}")
        return np.dot(u, v.T)


class Bilinear:
    """S = u (v W)^T, i.e. S[i, j] = sum_{a, b} u[i, a] W[b, a] v[j, b].

    Params ``{"W": (d_v, d_u)}`` (square d x d in the paper, no bias; Glorot-uniform init).
    """

    def __init__(self, dim_u, dim_v=None, kernel_init=glorot_uniform):
        self.dim_u = check_positive_int(dim_u, "dim_u")
        self.dim_v = self.dim_u if dim_v is None else check_positive_int(dim_v, "dim_v")
        self.kernel_init = kernel_init

    def init(self, rng):
        return {"W": self.kernel_init(rng, (self.dim_v, self.dim_u))}

    def apply(self, params, u, v):
        check_pair(u, v, self.dim_u, self.dim_v)
        return np.dot(u, np.dot(v, params["W"]).T)


class Separable:
    """S = f(u) h(v)^T with two MLPs f, h (paper: one hidden layer of 100 ReLU units, output 100).

    Params ``{"f": MLP params, "h": MLP params}``.
    """

    def __init__(self, dim_u, dim_v=None, hidden=(100,), out_dim=100, kernel_init=glorot_uniform):
        self.dim_u = check_positive_int(dim_u, "dim_u")
        self.dim_v = self.dim_u if dim_v is None else check_positive_int(dim_v, "dim_v")
        dims = list(hidden) + [out_dim]
        self.f = MLP(self.dim_u, dims, kernel_init=kernel_init)
        self.h = MLP(self.dim_v, dims, kernel_init=kernel_init)

    def init(self, rng):
        return {"f": self.f.init(rng), "h": self.h.init(rng)}

    def embed(self, params, u, v):
        """The two embeddings (f(u), h(v)) whose inner products are the scores."""
        return self.f.apply(params["f"], u), self.h.apply(params["h"], v)

    def apply(self, params, u, v):
        check_pair(u, v, self.dim_u, self.dim_v)
        fu, hv = self.embed(params, u, v)
        return np.dot(fu, hv.T)


class Concat:
    """S[i, j] = m([u_i ; v_j]): an MLP m on every concatenated pair (the plots' "MLP" critic).

    m has ReLU hidden layers (paper: one of 200 units; the "sampling" experiment: five of 10) and a
    scalar linear output. Params ``{"layers": [{"W", "b"}, ...]}`` exactly as ``MLP(d_u + d_v,
    hidden + [1])``; the first kernel's rows are [rows for u ; rows for v].

    Computed without materializing the K*K concatenations: the first layer is split,
    [u_i ; v_j] W_1 = u_i W_1[:d_u] + v_j W_1[d_u:], and broadcast to a (K, K, H) tensor. (The fused
    twin in :mod:`mi_ref.accel` never stores that tensor for one hidden layer.)
    """

    def __init__(self, dim_u, dim_v=None, hidden=(200,), kernel_init=glorot_uniform):
        self.dim_u = check_positive_int(dim_u, "dim_u")
        self.dim_v = self.dim_u if dim_v is None else check_positive_int(dim_v, "dim_v")
        self.mlp = MLP(self.dim_u + self.dim_v, list(hidden) + [1], kernel_init=kernel_init)

    def init(self, rng):
        return self.mlp.init(rng)

    def apply(self, params, u, v):
        """The formula with numpy broadcasting over the (K, K, H) tensor (any number of hidden layers)."""
        check_pair(u, v, self.dim_u, self.dim_v)
        layers = params["layers"]
        first = layers[0]
        a = np.dot(u, first["W"][:self.dim_u])                       # (K, H)
        b = np.dot(v, first["W"][self.dim_u:])                       # (K, H)
        h = a[:, None, :] + b[None, :, :] + first["b"]               # (K, K, H): row i = u_i, column j = v_j
        for layer in layers[1:]:
            h = np.dot(relu(h), layer["W"]) + layer["b"]
        return h[:, :, 0]


def inner_product(dim_u=None, dim_v=None):
    """S = u v^T (see :class:`InnerProduct`; it has no parameters, so the widths are not needed)."""
    return InnerProduct()


def bilinear(dim_u, dim_v=None, kernel_init=glorot_uniform):
    """S = u (v W)^T (see :class:`Bilinear`)."""
    return Bilinear(dim_u, dim_v, kernel_init)


def separable(dim_u, dim_v=None, hidden=(100,), out_dim=100, kernel_init=glorot_uniform):
    """S = f(u) h(v)^T (see :class:`Separable`)."""
    return Separable(dim_u, dim_v, hidden, out_dim, kernel_init)


def concat(dim_u, dim_v=None, hidden=(200,), kernel_init=glorot_uniform):
    """S[i, j] = m([u_i ; v_j]) (see :class:`Concat`)."""
    return Concat(dim_u, dim_v, hidden, kernel_init)


# name -> factory(dim_u, dim_v=None, **options); ``label`` and ``color`` are how figures show it
CRITICS = Registry("critic")
CRITICS.register("inner_product", inner_product, label="inner product", color="tab:purple")
CRITICS.register("bilinear", bilinear, label="bilinear", color="tab:blue")
CRITICS.register("separable", separable, label="separable", color="tab:green")
CRITICS.register("concat", concat, label="MLP (concat)", color="tab:red")


def build(name, dim_u, dim_v=None, **options):
    """The critic registered as ``name`` (see :data:`CRITICS`) for codes of widths ``dim_u``, ``dim_v``."""
    return CRITICS.get(name)(dim_u, dim_v, **options)
