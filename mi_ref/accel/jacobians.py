"""Fast per-example Jacobians of the encoders the paper studies (Fig. 2), keyed by model type.

:func:`batch_jacobian` computes the numbers of :func:`mi_ref.jacobian.batch_jacobian` (to rounding) by the
routine of the model's type (:data:`JACOBIANS`, :func:`fast_path`) and falls back to the autograd reference
(:func:`mi_ref.jacobian.batch_jacobian_reference`) where there is none. The conditioning experiment asks for
it (:func:`mi_ref.train.jacobian_stats`); the math module never dispatches here.

Forward mode ("push the identity through the layers"). Write tangents as rows: ``T[b, j, :]`` is the
derivative of the current activations of example b with respect to input coordinate j, so
``T: (B, in, width)`` and the Jacobian is ``J[b] = T[b]^T``. A dense layer ``u = h W + b`` maps the
tangents by ``T <- T W``, which for all examples at once is ONE matrix product ``(B * in, n) @ (n, m)``;
an activation multiplies column k of example b by ``act'(u[b, k])``; a shortcut ``h <- layer(h) + h``
adds the old tangents. The first layer starts from the identity, ``I W = W``, so it needs no product.
A RealNVP chain keeps its Jacobian as rows instead, ``J[b, i, :] = d x_i / d x_input`` (its permutations
are then row gathers): each coupling net's own Jacobian comes from the forward mode above over its d // 2
inputs, and one batched product per block chains it in (see :func:`_coupling_step`). Reverse mode for
MLPs whose output is narrower than the input: :func:`_mlp_reverse_jacobian`.

Conventions: the derivatives are those of :data:`mi_ref.accel.activations.ACTIVATION_DERIVATIVES` (relu'(0) = 0,
as :func:`mi_ref.nn.relu`'s gradient), so the fast paths equal the reference everywhere, kinks included. The MLP's
forward-mode Jacobian is returned as the transposed view ``T.transpose(0, 2, 1)`` (no copy): each ``J[b]`` is then
Fortran-ordered, which is what LAPACK reads; RealNVP's, and an MLP's in reverse mode, are C-ordered. These routines
compute values only; they are not differentiable by autograd.
"""

import numpy as np
from numba import njit

from .. import flows, nn
from ..checks import finite_batch as check_finite_batch
from ..jacobian import batch_jacobian_reference
from .activations import derivative as activation_derivative
from .activations import has_derivative
from .twins import original


@njit(cache=True, error_model="numpy")
def _scale_add(new, scale, old):
    """In place new[b, j, k] = new[b, j, k] * scale[b, k] + old[b, j, k]: the activation's derivative and
    the shortcut in one pass over the tangents (numpy's ``new *= scale[:, None, :]; new += old`` makes two,
    over arrays of B d^2 values, 157 MB at the paper's shapes). The same two roundings, so the same bits."""
    nb, nj, nk = new.shape
    for b in range(nb):
        for j in range(nj):
            for k in range(nk):
                new[b, j, k] = new[b, j, k] * scale[b, k] + old[b, j, k]


def _activation(name):
    """(activation or None for the identity, derivative or None)."""
    if name == "identity":
        return None, None
    return nn.ACTIVATIONS.get(name).fn, activation_derivative(name)


def _mlp_values_and_tangents(layers, x, activation_name, shortcuts):
    """Forward pass of an MLP and its forward-mode Jacobian from the identity.

    With ``h_0 = x: (B, n_0)``, layer l computes ``u_l = h_{l-1} W_l + b_l`` and
    ``h_l = act(u_l)`` (``u_l`` for the last layer), plus ``h_{l-1}`` with shortcuts; the tangents
    ``T_l[b, j, :] = d h_l[b] / d x[b, j]`` follow

        T_0 = I,   T_l = (T_{l-1} W_l) * act'(u_l)[b, None, :]   (+ T_{l-1} with shortcuts),

    each ``T_{l-1} W_l`` being one ``(B * n_0, n_{l-1}) @ (n_{l-1}, n_l)`` matrix product (none for l = 1,
    where ``I W_1 = W_1``). Returns ``(h_L: (B, n_L), T_L: (B, n_0, n_L))``; ``J[b] = T_L[b]^T``.
    """
    activation, derivative = _activation(activation_name)
    batch, n0 = x.shape
    h, tangents, spare = x, None, None
    for index, layer in enumerate(layers):
        W = np.asarray(layer["W"], dtype=np.float64)
        last = index == len(layers) - 1
        u = h @ W + layer["b"]
        scale = None if (last or derivative is None) else derivative(u)
        if tangents is None:                                   # I W = W for every example
            new = W * scale[:, None, :] if scale is not None else np.repeat(W[None], batch, axis=0)
        else:
            width = W.shape[1]
            if spare is None or spare.shape != (batch, n0, width):
                spare = np.empty((batch, n0, width))
            new = spare
            np.matmul(tangents.reshape(batch * n0, -1), W, out=new.reshape(batch * n0, width))
            if scale is not None and shortcuts:
                _scale_add(new, scale, tangents)              # T W * act'(u) + T, one pass
            elif scale is not None:
                new *= scale[:, None, :]
            elif shortcuts:
                new += tangents
        out = u if (last or activation is None) else activation(u)
        if shortcuts:
            if tangents is None:
                diagonal = np.arange(n0)
                new[:, diagonal, diagonal] += 1.0
            out = out + h
        spare, tangents, h = tangents, new, out
    return h, tangents


def _mlp_reverse_jacobian(layers, x, activation_name, shortcuts):
    """Reverse mode: the MLP's Jacobian ``J: (B, n_L, n_0)`` as rows pulled back from the output.

    A forward pass keeps ``act'(u_l)``; then, with ``R_l[b, i, :] = d y[b, i] / d h_l[b]``,

        R_L = I,   R_{l-1} = (R_l * act'(u_l)[b, None, :]) W_l^T   (+ R_l with shortcuts),

    each product one ``(B * n_L, n_l) @ (n_l, n_{l-1})`` (none for l = L, where ``I W_L^T = W_L^T``), and
    ``J = R_0``, C-ordered. It costs ``2 B n_L sum_{l < L} n_l n_{l-1}`` flops against forward mode's
    ``2 B n_0 sum_{l > 1} n_{l-1} n_l``: cheaper when the output is narrower than the input.
    """
    activation, derivative = _activation(activation_name)
    batch = x.shape[0]
    h, scales = x, []
    for layer in layers[:-1]:                      # the last layer's values are not needed: no activation
        u = h @ layer["W"] + layer["b"]
        scales.append(None if derivative is None else derivative(u))
        out = u if activation is None else activation(u)
        h = out + h if shortcuts else out
    scales.append(None)
    rows = None
    for index in range(len(layers) - 1, -1, -1):
        W_t = np.asarray(layers[index]["W"], dtype=np.float64).T            # (n_l, n_{l-1})
        scale = scales[index]
        if rows is None:                                                     # I W_L^T = W_L^T
            new = np.repeat(W_t[None], batch, axis=0)        # (the last layer has no activation)
            if shortcuts:
                diagonal = np.arange(W_t.shape[0])
                new[:, diagonal, diagonal] += 1.0
        else:
            n_out, width = rows.shape[1], rows.shape[2]
            scaled = rows * scale[:, None, :] if scale is not None else rows
            new = np.matmul(scaled.reshape(batch * n_out, width), W_t).reshape(batch, n_out, W_t.shape[1])
            if shortcuts:
                new += rows
        rows = new
    return rows


def mlp_jacobian_flops(widths, batch=1):
    """``{"forward": flops, "reverse": flops}`` of the two fast paths for an MLP with
    ``widths = [n_0, n_1, ..., n_L]`` (matrix products only; :func:`batch_jacobian` takes the cheaper,
    forward mode on a tie)."""
    n = [int(w) for w in widths]
    forward = sum(2 * batch * n[0] * a * b for a, b in zip(n[1:-1], n[2:]))
    reverse = sum(2 * batch * n[-1] * a * b for a, b in zip(n[:-2], n[1:-1]))
    return {"forward": forward, "reverse": reverse}


def _mlp_jacobian(model, params, x, mode="auto"):
    """J: (B, out, in) of an :class:`mi_ref.nn.MLP`: forward mode (a transposed view of the tangents, see
    the module docstring) or reverse mode (C-ordered), the cheaper unless ``mode`` says which."""
    x = check_finite_batch(x, model.in_dim)
    if mode == "auto":
        widths = [model.in_dim] + list(model.dims)
        flops = mlp_jacobian_flops(widths)
        mode = "reverse" if flops["reverse"] < flops["forward"] else "forward"
    if mode == "reverse":
        return _mlp_reverse_jacobian(params["layers"], x, model.activation_name, model.shortcuts)
    _, tangents = _mlp_values_and_tangents(params["layers"], x, model.activation_name, model.shortcuts)
    return tangents.transpose(0, 2, 1)


def _coupling_step(block, params, x, J):
    """One RealNVP block (a permutation, then a coupling), applied to values ``x: (B, d)`` and Jacobian rows.

    ``J: (B, d, D)`` holds d x / d x_input (one row per current coordinate). The permutation
    ``z = x[:, perm]`` reorders the rows: J_z = J[:, perm, :]. With h = split, z_a = z[:, :h],
    z_b = z[:, h:], the net's outputs and their Jacobian N[b] = (d net / d z_a)^T: (h, w) (forward mode
    from the identity over h tangents):

        shift-only:  y_b = z_b + t,          A = d t / d z_a                          (n, h)
        affine:      y_b = z_b * s + t,      s = 1e-7 + softplus(r),
                     A = d t / d z_a + diag(z_b * sigmoid(r)) d r / d z_a             (n, h)
        rows of y_b:  J_b <- A J_a + s[:, None] * J_b     (J_b <- A J_a + J_b for shift-only),

    where (t, r) = (net[:, :n], net[:, n:]), J_a = J_z[:, :h], J_b = J_z[:, h:]; the rows of z_a pass.
    Returns ``(y: (B, d), J_new: (B, d, D))``.
    """
    h, n = block.split, block.n_out
    z, Jz = x[:, block.perm], J[:, block.perm, :]
    z_a, z_b = z[:, :h], z[:, h:]
    net = block.net
    out, N = _mlp_values_and_tangents(params["net"]["layers"], z_a, net.activation_name, net.shortcuts)
    if block.shift_only:
        y_b, A_t = z_b + out, N                                   # A_t[b] = A[b]^T: (h, n)
        rows_b = Jz[:, h:, :] + np.matmul(A_t.transpose(0, 2, 1), Jz[:, :h, :])
    else:
        t, r = out[:, :n], out[:, n:]
        s = flows.SCALE_FLOOR + nn.softplus(r)
        y_b = z_b * s + t
        A_t = N[:, :, :n] + N[:, :, n:] * (z_b * activation_derivative("softplus")(r))[:, None, :]
        rows_b = s[:, :, None] * Jz[:, h:, :] + np.matmul(A_t.transpose(0, 2, 1), Jz[:, :h, :])
    J_new = np.empty_like(J)
    J_new[:, :h, :] = Jz[:, :h, :]
    J_new[:, h:, :] = rows_b
    y = np.concatenate([z_a, y_b], axis=1)
    return y, J_new


def _coupling_chain_jacobian(blocks, block_params, x):
    """J: (B, d, d) of a chain of coupling blocks, starting from J = I (C-ordered)."""
    batch, dim = x.shape
    J = np.repeat(np.eye(dim)[None], batch, axis=0)
    for block, p in zip(blocks, block_params):
        x, J = _coupling_step(block, p, x, J)
    return J


def _realnvp_jacobian(model, params, x, mode="auto"):      # forward mode only ("reverse" refused earlier)
    first = model.blocks[0]
    x = check_finite_batch(x, first.split + first.n_out)
    return _coupling_chain_jacobian(model.blocks, params["blocks"], x)


def _coupling_jacobian(model, params, x, mode="auto"):     # forward mode only ("reverse" refused earlier)
    x = check_finite_batch(x, model.split + model.n_out)
    return _coupling_chain_jacobian([model], [params], x)


def _net_has_fast_path(net):
    """An MLP (not a subclass) whose activation has a declared derivative (an undeclared one is an error naming
    it and :data:`mi_ref.accel.activations.ACTIVATION_DERIVATIVES`)."""
    return type(net) is nn.MLP and has_derivative(net.activation_name)


def _block_has_fast_path(block):
    """A coupling block whose net has a fast path (and, for an affine block, whose scale's softplus has a
    declared derivative: :func:`_coupling_step` uses it)."""
    return _net_has_fast_path(block.net) and (block.shift_only or has_derivative("softplus"))


def has_fast_jacobian(model):
    """True if :func:`batch_jacobian` has a forward-mode path for ``model`` (else it uses the reference).

    Fast paths exist for exactly these types (subclasses may change ``apply``, so they are not trusted):
    :class:`mi_ref.nn.MLP` (with or without shortcuts, its activation's derivative declared in
    :data:`mi_ref.accel.activations.ACTIVATION_DERIVATIVES`: relu, softplus, identity),
    :class:`mi_ref.flows.RealNVP` and :class:`mi_ref.flows.AffineCoupling` (shift-only or affine) whose
    coupling nets are such MLPs. A twin (:func:`mi_ref.accel.twin`) counts as its model.
    """
    model = original(model)
    kind = type(model)
    if kind is nn.MLP:
        return _net_has_fast_path(model)
    if kind is flows.RealNVP:
        return all(_block_has_fast_path(block) for block in model.blocks)
    if kind is flows.AffineCoupling:
        return _block_has_fast_path(model)
    return False


JACOBIANS = {nn.MLP: _mlp_jacobian, flows.RealNVP: _realnvp_jacobian, flows.AffineCoupling: _coupling_jacobian}

# The encoders of mi_ref.experiments.encoders.ENCODERS (by registry name) whose Jacobians have no fast path on
# purpose, and why (batch_jacobian then uses the autograd reference); every other one is a
# model for which has_fast_jacobian holds. tests/test_registry.py checks that one of the two holds.
ENCODERS_WITHOUT_FAST_JACOBIAN = {"convnet": "no experiment measures the ConvNet's conditioning (the paper's "
                                             "Fig. 2 is about the MLP and RealNVP encoders)"}


def fast_path(model):
    """The fast Jacobian routine ``f(model, params, x, mode)`` for ``model``'s type (a twin's: its model's),
    or None."""
    return JACOBIANS[type(original(model))] if has_fast_jacobian(model) else None


def batch_jacobian(model, params, x, mode="auto"):
    """Per-example Jacobians ``J[b, i, j] = d model.apply(params, x)[b, i] / d x[b, j]``: (B, out, in).

    The numbers of :func:`mi_ref.jacobian.batch_jacobian`, fast: forward mode (see the module docstring)
    for the models of :func:`has_fast_jacobian` (a twin, :func:`mi_ref.accel.twin`, counts as its model);
    :func:`mi_ref.jacobian.batch_jacobian_reference` otherwise. For an MLP, ``mode="auto"`` takes reverse
    mode (:func:`_mlp_reverse_jacobian`) where :func:`mlp_jacobian_flops` counts fewer flops, typically
    when the output is narrower than the input (MLP(392, [300, 300, 100]): 5.3 instead of 12 GFLOP at
    B = 128). ``mode="forward"`` forces forward mode (models with a fast path only), ``mode="reverse"``
    reverse mode (MLPs only); anything else raises ``ValueError``. All agree to rounding (measured
    <= 2e-12 relative per entry where sums cancel, ~1e-16 of the largest entry; tested to 1e-9 relative).
    For the paper's residual MLP (B = 128, d = 392, 5 layers) the cost is 4 products
    ``(B d, d) @ (d, d)``, i.e. 8 B d^3 ~ 62 GFLOP; see ``scripts/bench_jacobian.py``.

    The result may be a transposed view (each ``J[b]`` Fortran-ordered); call
    ``numpy.ascontiguousarray`` if C order matters.
    """
    if not callable(getattr(model, "apply", None)):
        raise ValueError(f"model must be an mi-ref model with an apply(params, x) method, got {model!r}")
    model = original(model)
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    fast = has_fast_jacobian(model)
    if mode == "reverse" and not (fast and type(model) is nn.MLP):
        raise ValueError(f"mode='reverse' is implemented for mi_ref.nn.MLP only, not {type(model).__name__}; "
                         f"use mode='auto'")
    if mode == "forward" and not fast:
        raise ValueError(f"{type(model).__name__} has no forward-mode fast path (see has_fast_jacobian); "
                         f"use mode='auto' for the autograd reference")
    if fast:
        return fast_path(model)(model, params, x, mode)
    return batch_jacobian_reference(model.apply, params, x)
