"""Adam (Kingma and Ba, 2015) over nested params, in its two published forms.

For step t = 1, 2, ... and every parameter leaf theta with gradient g, both forms keep the moments

    m_t = b1 m_{t-1} + (1 - b1) g
    v_t = b2 v_{t-1} + (1 - b2) g^2

and differ in where eps enters the update:

    textbook (Kingma and Ba's Algorithm 1; PyTorch's ``torch.optim.Adam``), ``form="textbook"``:
        theta_t = theta_{t-1} - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m_t / (1 - b1^t),
                                                                    v_hat = v_t / (1 - b2^t)

    TensorFlow 1 (``tf.train.AdamOptimizer``, the paper's optimizer), ``form="tf"``:
        lr_t    = lr * sqrt(1 - b2^t) / (1 - b1^t)
        theta_t = theta_{t-1} - lr_t * m_t / (sqrt(v_t) + eps)

The TF form is the textbook form with eps replaced by eps / sqrt(1 - b2^t) (3.2e-7 at t = 1, 1e-8 only
as t grows large). That matters whenever sqrt(v_hat) is not far above 1e-7: the paper's flows, initialized
with kernels of std 1e-4, start with gradients of about 1e-9, and there the TF form takes steps several
times smaller than the textbook form. The paper's presets use ``form="tf"``.

b1 = 0.9, b2 = 0.999, eps = 1e-8 are the defaults of TensorFlow, PyTorch and the paper. The state is a
plain dict ``{"step": int, "m": tree, "v": tree}`` that :func:`state_to_arrays` / :func:`state_from_arrays`
save and restore exactly.
"""

import math

import numpy as onp

from . import fast
from .tree import tree_from_dict, tree_map, tree_to_dict

FORMS = ("textbook", "tf")


class Adam:
    """Adam with bias correction in the ``"textbook"`` or ``"tf"`` form (see the module docstring).
    ``update`` returns new params and a new state (functional), or with ``inplace=True`` overwrites the
    arrays it was given (what the training loops do, after :func:`owned`)."""

    def __init__(self, lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, form="textbook"):
        if form not in FORMS:
            raise ValueError(f"unknown Adam form {form!r}; expected one of {list(FORMS)} ('tf': TensorFlow 1's "
                             "AdamOptimizer, as in the paper; 'textbook': Kingma and Ba, as in PyTorch)")
        if not lr > 0:
            raise ValueError(f"Adam learning rate must be > 0, got {lr!r}")
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam needs 0 <= b1, b2 < 1, got b1={b1!r}, b2={b2!r}")
        if not eps > 0:
            raise ValueError(f"Adam eps must be > 0, got {eps!r}")
        self.lr, self.b1, self.b2, self.eps = float(lr), float(b1), float(b2), float(eps)
        self.form = form

    def init(self, params):
        zeros = tree_map(lambda p: onp.zeros(onp.shape(p)), params)
        return {"step": 0, "m": zeros, "v": tree_map(onp.copy, zeros)}

    def update(self, params, grads, state, inplace=False):
        """One step: returns ``(new_params, new_state)``; inputs are not modified unless ``inplace=True``.

        Each leaf is updated in one fused pass (:func:`mi_ref.fast.adam_tree`) with the operations of
        :meth:`update_reference` in the same order, so the results are the same bit for bit.

        ``inplace=True`` writes the new values over the arrays of ``params`` and ``state`` instead (the
        returned trees hold those same arrays; grads are only read). That is for a training loop that
        replaces its params and state by the returned ones anyway: it saves allocating three arrays per
        leaf and ~40 % of the update's memory traffic. Do not use it while anything else still needs the old
        values (a copy kept for comparison, an autograd trace not yet differentiated), nor with leaves that
        share memory (a leaf listed twice would be updated twice).
        """
        t = state["step"] + 1
        c1, c2 = 1.0 - self.b1 ** t, 1.0 - self.b2 ** t
        if self.form == "tf":       # p - lr_t * (m / 1) / (sqrt(v / 1) + eps): the same kernel, exactly
            step_size, c1, c2 = self.lr * math.sqrt(c2) / c1, 1.0, 1.0
        else:
            step_size = self.lr
        new, m, v = fast.adam_tree(params, grads, state["m"], state["v"], self.b1, self.b2, step_size, c1, c2,
                                   self.eps, inplace)
        return new, {"step": t, "m": m, "v": v}

    def update_reference(self, params, grads, state):
        """The formulas of the module docstring, leaf by leaf with numpy (the reference for :meth:`update`)."""
        t = state["step"] + 1
        b1, b2, lr, eps = self.b1, self.b2, self.lr, self.eps
        m = tree_map(lambda m_, g: b1 * m_ + (1.0 - b1) * g, state["m"], grads)
        v = tree_map(lambda v_, g: b2 * v_ + (1.0 - b2) * g * g, state["v"], grads)
        if self.form == "tf":
            lr_t = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
            new = tree_map(lambda p, m_, v_: p - lr_t * m_ / (onp.sqrt(v_) + eps), params, m, v)
        else:
            c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
            new = tree_map(lambda p, m_, v_: p - lr * (m_ / c1) / (onp.sqrt(v_ / c2) + eps), params, m, v)
        return new, {"step": t, "m": m, "v": v}


def owned(params, state):
    """Fresh copies ``(params, state)``: every leaf a distinct, C-contiguous, writable float64 array.

    A training loop calls this once before it switches to ``Adam.update(..., inplace=True)``, so that the
    in-place updates write only into memory the loop owns: not into arrays a caller, a model's
    initializer or a loaded checkpoint may still hold, and never twice into one buffer shared by two leaves.
    """
    def copy(leaf):
        return onp.array(leaf, dtype=onp.float64, order="C", copy=True)
    return tree_map(copy, params), {"step": state["step"], "m": tree_map(copy, state["m"]),
                                    "v": tree_map(copy, state["v"])}


def state_to_arrays(state, prefix="adam/"):
    """Flatten an Adam state to ``{name: array}`` (for ``numpy.savez``)."""
    out = {prefix + "step": onp.asarray(state["step"], dtype=onp.int64)}
    out.update(tree_to_dict(state["m"], prefix + "m/"))
    out.update(tree_to_dict(state["v"], prefix + "v/"))
    return out


def state_from_arrays(params_template, arrays, prefix="adam/"):
    """Inverse of :func:`state_to_arrays`, given params of the same structure."""
    return {"step": int(arrays[prefix + "step"]),
            "m": tree_from_dict(params_template, arrays, prefix + "m/"),
            "v": tree_from_dict(params_template, arrays, prefix + "v/")}
