"""RealNVP: invertible encoders made of affine coupling blocks (paper, Section 3.1, Fig. 1).

A block on a vector of d values, with h = d // 2, is a fixed random permutation FOLLOWED by a coupling:

    z   = x[:, perm]                              (output column j is input column perm[j])
    z_a = z[:, :h]  (passes unchanged and conditions the network),   z_b = z[:, h:]
    shift-only:  y_b = z_b + t(z_a)
    affine:      y_b = z_b * s(z_a) + t(z_a),   s = 1e-7 + softplus(raw(z_a))
    y   = concat(z_a, y_b)

where ``(t, raw)`` are the outputs of an MLP (hidden layers with ReLU, linear output) applied to z_a.
The paper uses softplus instead of exp for the scale (numerical stability); the map stays invertible
because s > 0. The log-determinant of one block is sum_j log s_j(z_a) (0 for shift-only), since the
permutation has |det| = 1. Inverse: z = [y_a, (y_b - t(y_a)) / s(y_a)], x = z[:, argsort(perm)].

Why this order: the paper's notebook builds TensorFlow Probability's
``Chain([coupling_1, permute_1, ..., coupling_n, permute_n])``, and a Chain applies its list from the
end. Its forward map is therefore permute_n, coupling_n, ..., permute_1, coupling_1: every block
permutes and then couples, and the flow ends with a coupling (never with a permutation).

Every flow here offers ``apply(params, x)``, ``inverse(params, y)``, ``log_det(params, x)`` (per example,
log|det dy/dx|, shape ``(B,)``) and ``forward(params, x) -> (y, log_det)``.
"""

import autograd.numpy as np
import numpy as onp

from .checks import batch as check_batch
from .checks import positive_int as check_positive_int
from .nn import MLP, softplus, truncated_normal

SCALE_FLOOR = 1e-7


class AffineCoupling:
    """One RealNVP block: a fixed permutation followed by a coupling (see the module docstring).

    Params: ``{"net": MLP params}``; the MLP maps d // 2 values to d - d // 2 shifts (shift-only) or to
    2 (d - d // 2) values, the shifts first, then the raw scales.
    ``perm`` is fixed at construction (non-trainable).
    """

    def __init__(self, dim, hidden, shift_only, perm, kernel_init=truncated_normal(1e-4)):
        self.dim = check_positive_int(dim, "dim")
        if self.dim < 2:
            raise ValueError(f"a coupling block needs dim >= 2 (half the values condition the rest), got {dim}")
        self.split = self.dim // 2
        self.n_out = self.dim - self.split
        self.shift_only = bool(shift_only)
        perm = onp.asarray(perm)
        if perm.shape != (self.dim,) or not onp.array_equal(onp.sort(perm), onp.arange(self.dim)):
            raise ValueError(f"perm must be a permutation of range({self.dim}), got {perm!r}")
        self.perm = perm.astype(onp.int64)
        self.inv_perm = onp.argsort(self.perm)
        width = self.n_out if self.shift_only else 2 * self.n_out
        self.net = MLP(self.split, list(hidden) + [width], kernel_init=kernel_init)

    def init(self, rng):
        return {"net": self.net.init(rng)}

    def shift_and_scale(self, params, z_a):
        """(t, s) for the conditioning half ``z_a``; ``s`` is None for shift-only blocks."""
        out = self.net.apply(params["net"], z_a)
        if self.shift_only:
            return out, None
        return out[:, :self.n_out], SCALE_FLOOR + softplus(out[:, self.n_out:])

    def forward(self, params, x):
        """(y, log|det dy/dx|) for a batch ``x: (B, dim)``: permute, then couple."""
        z = x[:, self.perm]
        z_a, z_b = z[:, :self.split], z[:, self.split:]
        t, s = self.shift_and_scale(params, z_a)
        if s is None:
            y_b, logdet = z_b + t, np.zeros(np.shape(x)[0])
        else:
            y_b, logdet = z_b * s + t, np.sum(np.log(s), axis=1)
        return np.concatenate([z_a, y_b], axis=1), logdet

    def apply(self, params, x):
        return self.forward(params, x)[0]

    def inverse(self, params, y):
        """x with ``apply(params, x) == y``: undo the coupling, then the permutation."""
        y_a, y_b = y[:, :self.split], y[:, self.split:]
        t, s = self.shift_and_scale(params, y_a)
        z_b = y_b - t if s is None else (y_b - t) / s
        return np.concatenate([y_a, z_b], axis=1)[:, self.inv_perm]

    def log_det(self, params, x):
        return self.forward(params, x)[1]


class RealNVP:
    """A chain of ``n_couplings`` :class:`AffineCoupling` blocks, each its own fixed permutation followed
    by a coupling.

    y = B_n( ... B_2(B_1(x)) ),   log|det dy/dx| = sum_k log|det dB_k|,

    so the first operation on x is block 1's permutation and the last is block n's coupling.

    Paper ("invertible", Fig. 1a-b): ``RealNVP(392, 30, [512, 512], shift_only=True)`` with kernels
    initialized by ``truncated_normal(1e-4)``; ("adversarial", Fig. 1c): the same with
    ``shift_only=False`` (scale = 1e-7 + softplus(raw)).

    ``rng`` (a ``numpy.random.Generator``) draws the permutations, block 1's first; params are
    ``{"blocks": [{"net": ...}, ...]}``.
    """

    def __init__(self, dim, n_couplings, hidden, shift_only=True, *, rng,
                 kernel_init=truncated_normal(1e-4)):
        self.dim = check_positive_int(dim, "dim")
        self.n_couplings = check_positive_int(n_couplings, "n_couplings")
        self.hidden = [check_positive_int(h, "every hidden width") for h in hidden]
        self.shift_only = bool(shift_only)
        if not isinstance(rng, onp.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator (it draws the permutations), got {rng!r}")
        self.blocks = [AffineCoupling(self.dim, self.hidden, self.shift_only, rng.permutation(self.dim),
                                      kernel_init) for _ in range(self.n_couplings)]
        self.in_dim = self.out_dim = self.dim

    @property
    def permutations(self):
        """The fixed permutations, ``(n_couplings, dim)``: block k starts with ``z = x[:, perms[k]]``."""
        return onp.stack([b.perm for b in self.blocks])

    def init(self, rng):
        return {"blocks": [b.init(rng) for b in self.blocks]}

    def forward(self, params, x):
        """(y, log|det dy/dx|) with ``y: (B, dim)`` and the log-determinant per example ``(B,)``: the
        blocks' own :meth:`AffineCoupling.forward`, one after the other."""
        check_batch(x, self.dim)
        logdet = 0.0
        for block, p in zip(self.blocks, params["blocks"]):
            x, ld = block.forward(p, x)
            logdet = logdet + ld
        return x, logdet

    def apply(self, params, x):
        return self.forward(params, x)[0]

    def inverse(self, params, y):
        """x with ``apply(params, x) == y``: the blocks undone in reverse order."""
        check_batch(y, self.dim)
        for block, p in zip(reversed(self.blocks), reversed(params["blocks"])):
            y = block.inverse(p, y)
        return y

    def log_det(self, params, x):
        """Per-example log|det dy/dx|, shape ``(B,)``."""
        return self.forward(params, x)[1]


def realnvp(dim, n_couplings, hidden, shift_only=True, *, rng, kernel_init=truncated_normal(1e-4)):
    """Build a :class:`RealNVP` chain (see there and the module docstring for the formulas)."""
    return RealNVP(dim, n_couplings, hidden, shift_only, rng=rng, kernel_init=kernel_init)
