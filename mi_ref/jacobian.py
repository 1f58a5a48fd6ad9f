"""Batch Jacobians of encoders, their singular values and log condition numbers (paper, Fig. 2).

The "conditioning" experiment (Fig. 2) follows how hard the encoder g1 is to invert:
at every evaluation it takes the Jacobian of g1 at each input of the current training batch,

    J[b, i, j] = d g1(x)[b, i] / d x[b, j],        J: (B, out, in)     (B = 128, out = in = 392),

computes its singular values sigma_1 >= ... >= sigma_k (k = min(out, in)) and plots percentiles
(min, 20/40/60/80th, max) over the batch of the log condition number log(sigma_1 / sigma_k).

This module gives the formulas:

* :func:`batch_jacobian_reference` - the ground truth for any ``apply``, by autograd (reverse mode);
* :func:`batch_jacobian` - the same for an mi-ref model, through its ``apply``;
* :func:`singular_values` - ``numpy.linalg.svd(J, compute_uv=False)`` (LAPACK's ``dgesdd`` without
  singular vectors), with the checks of the module's boundary;
* :func:`log_condition_numbers` and :func:`condition_percentiles` - the numbers Fig. 2 plots.

Why singular values from an SVD and not the eigenvalues of J^T J: a backward-stable SVD (Householder
bidiagonalization, then dqds on the bidiagonal) gives |sigma_i - sigma_i(computed)| <= p(n) eps sigma_1,
whereas the eigenvalues of J^T J square the condition number: their error in sigma_i is
~ eps sigma_1^2 / sigma_i, so log(sigma_1 / sigma_k) of an ill-conditioned encoder - the very quantity
Fig. 2 plots - would lose half its digits.

The speed wing computes the same numbers faster, and this module never imports it:
:func:`mi_ref.accel.jacobians.batch_jacobian` (forward mode, or reverse mode where it needs fewer flops,
for the MLP and RealNVP encoders the paper studies; this module's reference otherwise) and
:func:`mi_ref.accel.linalg.singular_values` (the same LAPACK routine, one matrix per numba thread). The
conditioning experiment asks for them (:func:`mi_ref.train.jacobian_stats`); ``tests/test_jacobian.py``
checks them against the functions here.
"""

import autograd
import autograd.numpy as anp
import numpy as np

from .checks import finite_batch as check_finite_batch
from .stats import order_statistics

PERCENTILES = (0, 20, 40, 60, 80, 100)
PERCENTILE_KEYS = ("min", "p20", "p40", "p60", "p80", "max")

# ----------------------------------------------------------------------------------------------------
# input validation (the module's boundary; the speed wing's singular values check the same way)


def check_jacobians(J):
    """J as a float64 array ``(B, out, in)`` with all sizes >= 1, else ``ValueError``.

    Finiteness is checked apart (:func:`check_finite_jacobians`): the speed wing's singular-value kernel
    checks it while it copies every entry anyway.
    """
    J = np.asarray(J)
    if J.ndim != 3:
        raise ValueError(f"J must be a stack of Jacobians with shape (batch, out, in), got shape {J.shape} "
                         f"({J.ndim}-D); for a single matrix M pass M[None]")
    if min(J.shape) < 1:
        raise ValueError(f"J must have at least one matrix with at least one row and one column, "
                         f"got shape {J.shape}")
    if not np.issubdtype(J.dtype, np.number) or np.issubdtype(J.dtype, np.complexfloating):
        raise ValueError(f"J must hold real numbers, got dtype {J.dtype}")
    return J.astype(np.float64, copy=False)


def check_finite_jacobians(finite):
    """``ValueError`` naming the matrices of a stack that hold nan or inf, unless every one is finite.

    ``finite: (B,)`` booleans, ``finite[b]`` True when every entry of ``J[b]`` is finite.
    """
    finite = np.asarray(finite, dtype=bool)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"J has non-finite entries (nan or inf) in {bad.size} of {finite.size} matrices, "
                         f"first J[{bad[0]}]; singular values need finite Jacobians")


# ----------------------------------------------------------------------------------------------------
# the reference: autograd, reverse mode


def batch_jacobian_reference(apply, params, x):
    """Per-example Jacobians by autograd: ``J[b, i, j] = d apply(params, x)[b, i] / d x[b, j]``.

    Shapes: ``x: (B, in)``, ``apply(params, x): (B, out)``, result ``J: (B, out, in)``, C-ordered.

    Works for any ``apply`` that autograd differentiates and that treats the examples of a batch
    independently (output row b depends on input row b only; true of every mi-ref model). Then

        d/dx[c, j] sum_b apply(params, x)[b, i] = d apply(params, x)[c, i] / d x[c, j] = J[c, i, j],

    so autograd's ``jacobian`` of the batch-summed output ``(out,)`` is ``(out, B, in)``: ``out``
    reverse-mode passes over the whole batch instead of ``B * out`` passes over single examples.
    This is the ground truth the fast paths are tested against; it favours clarity over speed.
    """
    x = check_finite_batch(x, None)
    y = apply(params, x)
    if np.ndim(y) != 2 or np.shape(y)[0] != x.shape[0]:
        raise ValueError(f"apply(params, x) must return a batch (batch, out) with batch = {x.shape[0]} "
                         f"for x of shape {x.shape}, got shape {np.shape(y)}")

    def summed_over_batch(x_):
        return anp.sum(apply(params, x_), axis=0)

    jac = autograd.jacobian(summed_over_batch)(x)          # (out, B, in)
    return np.ascontiguousarray(np.transpose(jac, (1, 0, 2)))


def batch_jacobian(model, params, x):
    """Per-example Jacobians ``J[b, i, j] = d model.apply(params, x)[b, i] / d x[b, j]``: (B, out, in).

    :func:`batch_jacobian_reference` of ``model.apply``, C-ordered. For the encoders the paper studies,
    :func:`mi_ref.accel.jacobians.batch_jacobian` computes the same numbers (to rounding: both sum the same
    products in different orders; tested to 1e-9 relative per entry) by forward mode; for the paper's
    residual MLP (B = 128, d = 392, 5 layers) that is 4 products ``(B d, d) @ (d, d)``, twice as fast as this
    reference (``scripts/bench_jacobian.py``).
    """
    if not callable(getattr(model, "apply", None)):
        raise ValueError(f"model must be an mi-ref model with an apply(params, x) method, got {model!r}")
    x = check_finite_batch(x, getattr(model, "in_dim", None))      # the model's width, where it has one
    return batch_jacobian_reference(model.apply, params, x)


# ----------------------------------------------------------------------------------------------------
# singular values


def singular_values(J):
    """Singular values of every matrix of a stack: ``(B, out, in) -> (B, min(out, in))``, descending.

    sigma_1(J[b]) >= ... >= sigma_k(J[b]) >= 0, float64: ``numpy.linalg.svd(J, compute_uv=False)``, i.e.
    LAPACK's ``dgesdd`` with JOBZ = 'N' (no singular vectors), one matrix after another. Accuracy is that of
    a backward-stable SVD: absolute error ~ eps * sigma_1 per value (see the module docstring for why not
    the eigenvalues of J^T J). Raises ``ValueError`` unless ``J`` is 3-D, real, non-empty and finite, and
    ``numpy.linalg.LinAlgError`` if LAPACK does not converge. :func:`mi_ref.accel.linalg.singular_values`
    computes the same on all cores.
    """
    J = check_jacobians(J)
    check_finite_jacobians(np.isfinite(J).all(axis=(1, 2)))
    return np.linalg.svd(J, compute_uv=False)


# ----------------------------------------------------------------------------------------------------
# condition numbers and the percentiles Fig. 2 plots


def log_condition_numbers(svals):
    """log(sigma_max / sigma_min) = log sigma_max - log sigma_min along the last axis (natural log).

    ``svals: (..., k)`` singular values (any order, k >= 1) -> ``(...)``; a float for 1-D input. Computed
    as a difference of logs, so it stays finite for any positive pair (no overflow of the ratio).
    sigma_min = 0 (a singular matrix, the zero matrix included) gives ``+inf``: never NaN, no warnings.
    ``ValueError`` for negative, NaN or infinite singular values, or an empty last axis.
    """
    s = np.asarray(svals)
    if s.ndim < 1 or s.shape[-1] < 1 or s.size == 0:
        raise ValueError(f"svals must have shape (..., k) with k >= 1 singular values, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"svals must hold real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not (np.isfinite(s).all() and (s >= 0).all()):
        raise ValueError("singular values must be finite and >= 0, got "
                         f"min {np.nanmin(s) if not np.isnan(s).all() else np.nan!r} "
                         f"and {int(np.isnan(s).sum())} nan, {int(np.isinf(s).sum())} inf entries")
    s_max, s_min = s.max(axis=-1), s.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(s_max) - np.log(s_min)
    logs = np.where(s_min == 0.0, np.inf, logs)
    return float(logs) if logs.ndim == 0 else logs


def condition_percentiles(values):
    """The bands of the paper's Fig. 2c: min, 20th, 40th, 60th, 80th percentile and max of ``values``.

    ``values``: any array of log condition numbers (flattened), finite or +inf, at least one. Returns a
    float64 array ``(6,)`` in the order of ``PERCENTILE_KEYS`` = (min, p20, p40, p60, p80, max), computed as
    the paper's notebook does: the n values sorted, and the entry at index ``int(p * (n - 1))`` for
    p = 0, 0.2, ..., 1 (order statistics, no interpolation; :func:`mi_ref.stats.order_statistics`). For the
    values of several runs pooled, as the notebook draws Fig. 2c, pass them concatenated
    (:func:`mi_ref.stats.pooled_order_statistics`). ``ValueError`` for NaN, -inf or empty input.
    """
    v = np.asarray(values)
    if v.size == 0:
        raise ValueError("condition_percentiles needs at least one value, got an empty array")
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise ValueError(f"values must hold real numbers, got dtype {v.dtype}")
    v = v.astype(np.float64).ravel()
    if np.isnan(v).any() or (v == -np.inf).any():
        raise ValueError("values must not contain nan or -inf (log condition numbers lie in [0, +inf]), "
                         f"got {int(np.isnan(v).sum())} nan and {int((v == -np.inf).sum())} -inf")
    return order_statistics(v, tuple(q / 100.0 for q in PERCENTILES))
