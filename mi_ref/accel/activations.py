"""The derivatives of the registered activations, for the code of the speed wing that needs them.

An activation of :data:`mi_ref.nn.ACTIVATIONS` is its function alone, which autograd differentiates. The
hand-written VJPs of the fused MLPs (:mod:`mi_ref.accel.primitives`) and the forward-mode Jacobians
(:mod:`mi_ref.accel.jacobians`) need its derivative act'(u) as a plain numpy function, with the conventions
of the function's autograd gradient (relu'(0) = 0, :func:`mi_ref.nn.relu`). This table declares it, keyed by
the activation's registry name, or says :data:`mi_ref.registry.NONE` on purpose; the twins and the fast
Jacobians then use the model's formula and the autograd reference for that activation. An activation the
table does not mention is an error naming it and this table where the wing needs the derivative (never a
guess), and ``tests/test_registry.py`` (:mod:`mi_ref.declarations`) names it too.
``tests/test_accel.py`` checks every declared derivative against autograd's gradient of the function.
"""

import numpy as np

from .. import nn
from ..registry import NONE, declared

WHERE = "ACTIVATION_DERIVATIVES in mi_ref/accel/activations.py"


def _relu_derivative(u):
    """relu'(u): 1.0 where u > 0, else 0.0 (0 at the tie u = 0 and for NaN, as :func:`mi_ref.nn.relu`)."""
    return np.asarray(np.greater(u, 0.0), dtype=float)


def _softplus_derivative(u):
    """softplus'(u) = sigmoid(u), computed as exp(u - softplus(u)) (no overflow for large |u|)."""
    return np.exp(u - np.logaddexp(0.0, u))


def _identity_derivative(u):
    """identity'(u) = 1."""
    return np.ones_like(u)


# activation name (mi_ref.nn.ACTIVATIONS) -> act'(u) in plain numpy, or NONE (the wing then uses the formulas)
ACTIVATION_DERIVATIVES = {
    "relu": _relu_derivative,
    "softplus": _softplus_derivative,
    "identity": _identity_derivative,
}


def has_derivative(name):
    """True if activation ``name`` has a declared derivative, False if it is declared :data:`NONE`.

    ``ValueError`` for an unregistered name and :class:`mi_ref.registry.MissingDeclaration` (a
    ``ValueError``) for a registered one that :data:`ACTIVATION_DERIVATIVES` does not mention.
    """
    nn.ACTIVATIONS.get(name)                                # an unknown name: the registry's error
    entry = declared(ACTIVATION_DERIVATIVES, name, "activation", "derivative", WHERE)
    return not (isinstance(entry, str) and entry == NONE)


def derivative(name):
    """act'(u) of activation ``name``, a plain numpy function (see the module docstring).

    Errors as :func:`has_derivative`, and ``ValueError`` for an activation declared :data:`NONE`: its callers
    ask :func:`has_derivative` first and use the formulas then.
    """
    if not has_derivative(name):
        raise ValueError(f"activation {name!r} is declared without a derivative ({NONE!r} in {WHERE}); "
                         f"the fused primitives and the fast Jacobians cannot use it: use the model's own "
                         f"apply and mi_ref.jacobian.batch_jacobian_reference")
    return ACTIVATION_DERIVATIVES[name]
