"""The speed wing: everything that makes mi-ref fast, kept apart from the math it accelerates.

The math modules (:mod:`mi_ref.nn`, :mod:`mi_ref.flows`, :mod:`mi_ref.critics`, :mod:`mi_ref.bounds`,
:mod:`mi_ref.optim`, :mod:`mi_ref.jacobian`) hold only the formulas and never import this package. The
training loops ask it for:

* :func:`twin` - a model's accelerated twin: the same numbers as the model's ``apply`` / ``forward``
  (tested to ~1e-12, values and gradients), from fused primitives with hand-written VJPs
  (:mod:`mi_ref.accel.primitives`; the ConvNet and its convolution kernels in :mod:`mi_ref.accel.conv`),
  keyed by model type in one table (:data:`TWINS`);
* :func:`value_and_grad_by_key` - a training step's gradient with one autograd root per sub-model;
* :func:`adam_update` - Adam's update, bit for bit, as one fused in-place pass per leaf (with :func:`owned`);
* :func:`configure_malloc` - glibc's malloc thresholds for a training process.

The conditioning experiment asks its submodules, imported where used (they bind LAPACK for numba), for the
numbers of :mod:`mi_ref.jacobian`, fast: :func:`mi_ref.accel.jacobians.batch_jacobian` (forward-mode
Jacobians, keyed by model type in :data:`mi_ref.accel.jacobians.JACOBIANS`) and
:func:`mi_ref.accel.linalg.singular_values` (LAPACK's ``dgesdd``, one matrix per numba thread).
"""

from .adam import adam_update, owned
from .grad import value_and_grad_by_key
from .memory import configure_malloc
from .twins import CRITICS_WITHOUT_TWIN, ENCODERS_WITHOUT_TWIN, TWINS, Twin, original, twin

__all__ = ["CRITICS_WITHOUT_TWIN", "ENCODERS_WITHOUT_TWIN", "TWINS", "Twin",
           "adam_update", "configure_malloc", "original", "owned", "twin", "value_and_grad_by_key"]
