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

from .tree import tree_from_dict, tree_map, tree_to_dict

FORMS = ("textbook", "tf")


class Adam:
    """Adam with bias correction in the ``"textbook"`` or ``"tf"`` form (see the module docstring).
    ``update`` returns new params and a new state and leaves its inputs alone. (The training loops run the
    same numbers, bit for bit, as one fused in-place pass per leaf: :func:`mi_ref.accel.adam_update`.)"""

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

    def update(self, params, grads, state):
        """One step: ``(new_params, new_state)`` by the formulas of the module docstring, leaf by leaf."""
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
