"""Accelerated twins: each model type of mi-ref paired with the fused primitive that computes its formula.

``twin(model)`` returns an object with the model's interface (``apply``, and ``forward`` / ``log_det`` for
flows; ``init``, sizes and everything else are the model's own) whose numbers equal the model's formula to
~1e-12 relative, values and gradients (``tests/test_accel.py``), computed by the primitives of
:mod:`mi_ref.accel.primitives` and :mod:`mi_ref.accel.conv`. A model without a twin is returned as it is
(a lone :class:`mi_ref.nn.Conv2D` layer, for one: the experiments train it only inside the ConvNet). The
training loops ask for the twins; a model never dispatches to them itself, so a reader who steps into
``model.apply`` lands in the math.

The table :data:`TWINS` is keyed by the exact model type (a subclass may change ``apply``, so it is not
trusted). Where the params hold autograd boxes at an inner level (a params tree built by hand from boxed
leaves) a twin falls back to the model's formula (:func:`mi_ref.accel.primitives.supports`), and so does an MLP's
twin whose activation is declared without a derivative (:mod:`mi_ref.accel.activations`; an activation not
declared there at all is an error naming it).
"""

import autograd.numpy as np

from .. import critics, flows, nn
from ..checks import batch as check_batch
from . import conv, primitives
from .activations import has_derivative


class Twin:
    """Base: holds the model and answers every attribute the twin does not override from it."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __repr__(self):
        return f"{type(self).__name__}({self.model!r})"


class MLPTwin(Twin):
    """:class:`mi_ref.nn.MLP` as one primitive (:func:`mi_ref.accel.primitives.mlp`)."""

    def apply(self, params, x):
        m = self.model
        check_batch(x, m.in_dim)
        if primitives.supports(params, m.activation_name) and has_derivative(m.activation_name):
            return primitives.mlp(params, x, m.activation_name, m.shortcuts)
        return m.apply(params, x)


class RealNVPTwin(Twin):
    """:class:`mi_ref.flows.RealNVP`'s whole chain as one primitive (:func:`mi_ref.accel.primitives.coupling_chain`)."""

    def forward(self, params, x):
        m = self.model
        check_batch(x, m.dim)
        activation = m.blocks[0].net.activation_name
        if primitives.supports(params, activation) and has_derivative(activation):
            return primitives.coupling_chain(m.blocks, params, x)
        return m.forward(params, x)

    def apply(self, params, x):
        return self.forward(params, x)[0]

    def log_det(self, params, x):
        return self.forward(params, x)[1]


class ConcatTwin(Twin):
    """:class:`mi_ref.critics.Concat` without the (K, K, H) tensor (one hidden layer) or as one primitive
    over it (several)."""

    def apply(self, params, u, v):
        m = self.model
        critics.check_pair(u, v, m.dim_u, m.dim_v)
        if not primitives.supports(params):
            return m.apply(params, u, v)
        if len(m.mlp.dims) == 2:
            return primitives.concat_scores(params, u, v, m.dim_u)
        return primitives.concat_scores_deep(params, u, v, m.dim_u)


class SeparableTwin(Twin):
    """:class:`mi_ref.critics.Separable` with its two MLPs as twins."""

    def __init__(self, model):
        super().__init__(model)
        self.f, self.h = MLPTwin(model.f), MLPTwin(model.h)

    def apply(self, params, u, v):
        m = self.model
        critics.check_pair(u, v, m.dim_u, m.dim_v)
        fu, hv = self.f.apply(params["f"], u), self.h.apply(params["h"], v)
        return np.dot(fu, hv.T)


class ConvNetTwin(Twin):
    """:class:`mi_ref.nn.ConvNet` as one primitive (:func:`mi_ref.accel.conv.convnet`)."""

    def apply(self, params, x):
        m = self.model
        check_batch(x, m.in_dim, f"ConvNet input (flattened {m.height} x {m.width} image)")
        if primitives.supports(params):
            return conv.convnet(m, params, x)
        return m.apply(params, x)


TWINS = {nn.MLP: MLPTwin, flows.RealNVP: RealNVPTwin, critics.Concat: ConcatTwin,
         critics.Separable: SeparableTwin, nn.ConvNet: ConvNetTwin}

# The critics of mi_ref.critics.CRITICS (by registry name) that have no twin on purpose, and why. Every other
# registered critic's model type has an entry in TWINS; tests/test_registry.py checks that one of the two holds.
CRITICS_WITHOUT_TWIN = {"inner_product": "one matrix product: autograd's own gradient is as fast",
                        "bilinear": "two matrix products: autograd's own gradient is as fast"}
# the same for the encoders of mi_ref.experiments.encoders.ENCODERS (both the paper's encoders have twins)
ENCODERS_WITHOUT_TWIN = {}


def twin(model):
    """The accelerated twin of ``model`` (see the module docstring), or ``model`` itself if its type has none."""
    if isinstance(model, Twin):
        return model
    kind = TWINS.get(type(model))
    return model if kind is None else kind(model)


def original(model):
    """The model behind a twin (``model`` itself if it is not one)."""
    return model.model if isinstance(model, Twin) else model
