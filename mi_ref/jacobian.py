"""Batch Jacobians of encoders, their singular values and log condition numbers (paper, Fig. 2).

The "conditioning" experiment (Fig. 2) follows how hard the encoder g1 is to invert:
at every evaluation it takes the Jacobian of g1 at each input of the current training batch,

    J[b, i, j] = d g1(x)[b, i] / d x[b, j],        J: (B, out, in)     (B = 128, out = in = 392),

computes its singular values sigma_1 >= ... >= sigma_k (k = min(out, in)) and plots percentiles
(min, 20/40/60/80th, max) over the batch of the log condition number log(sigma_1 / sigma_k).

This module gives

* :func:`batch_jacobian_reference` - the ground truth for any model, by autograd (reverse mode);
* :func:`batch_jacobian` - the same numbers by the fast routines of :mod:`mi_ref.accel.jacobians` for the
  encoders the paper studies (plain and residual MLPs, shift-only and affine RealNVP chains: forward
  mode, or reverse mode for MLPs where it needs fewer flops), with the reference as the fallback;
* :func:`singular_values` - LAPACK's ``dgesdd`` without singular vectors, one matrix per numba thread;
* :func:`log_condition_numbers` and :func:`condition_percentiles` - the numbers Fig. 2 plots.

The fast routines compute values only (they are not differentiable by autograd) and follow the formulas'
conventions (relu'(0) = 0), so they equal the reference everywhere, kinks included. An MLP's
forward-mode Jacobian is a transposed view (each ``J[b]`` Fortran-ordered, which is what LAPACK reads);
:func:`singular_values` takes either order without copying.
"""

import autograd
import autograd.numpy as anp
import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import get_cython_function_address
from threadpoolctl import ThreadpoolController

from . import nn
from .accel import jacobians as fast_jacobians
from .accel.twins import original
from .checks import finite_batch as check_finite_batch
from .stats import order_statistics

PERCENTILES = (0, 20, 40, 60, 80, 100)
PERCENTILE_KEYS = ("min", "p20", "p40", "p60", "p80", "max")

# ----------------------------------------------------------------------------------------------------
# input validation (the module's boundary)

def _check_jacobians(J):
    """J as a float64 array ``(B, out, in)`` with all sizes >= 1, else ``ValueError``.

    Finiteness is checked inside the singular-value kernel (it reads every entry anyway).
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



def has_fast_jacobian(model):
    """True if :func:`batch_jacobian` has a fast path for ``model`` (or its twin; see
    :mod:`mi_ref.accel.jacobians`)."""
    return fast_jacobians.has_fast_jacobian(original(model))


mlp_jacobian_flops = fast_jacobians.mlp_jacobian_flops


def batch_jacobian(model, params, x, mode="auto"):
    """Per-example Jacobians ``J[b, i, j] = d model.apply(params, x)[b, i] / d x[b, j]``: (B, out, in).

    Forward mode (see the module docstring) for the models of :func:`has_fast_jacobian`;
    :func:`batch_jacobian_reference` otherwise. For an MLP, ``mode="auto"`` takes reverse mode
    (:func:`mi_ref.accel.jacobians._mlp_reverse_jacobian`) where :func:`mlp_jacobian_flops` counts fewer flops, typically when
    the output is narrower than the input (MLP(392, [300, 300, 100]): 5.3 instead of 12 GFLOP at
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
        return fast_jacobians.fast_path(model)(model, params, x, mode)
    return batch_jacobian_reference(model.apply, params, x)


# ----------------------------------------------------------------------------------------------------
# singular values: LAPACK dgesdd (JOBZ = 'N') from numba, one matrix per thread
#
# Route and why. numba's np.linalg.svd always computes U and V. LAPACK's dgesdd with JOBZ = 'N' computes
# singular values only: Householder bidiagonalization (dgebrd, ~(8/3) n^3 flops for n x n) and the dqds
# algorithm on the bidiagonal (high relative accuracy there). The whole is backward stable,
# |sigma_i - sigma_i(computed)| <= p(n) eps sigma_1, which is what numpy.linalg.svd(compute_uv=False)
# (the same LAPACK routine) gives too. The other candidate, eigenvalues of J^T J, squares the condition
# number: its error in sigma_i is ~ eps sigma_1^2 / sigma_i, so log(sigma_1 / sigma_k) of an
# ill-conditioned encoder - the very quantity Fig. 2 plots - would lose half its digits. Rejected.
#
# Reaching LAPACK from numba: scipy exports dgesdd as a C function (scipy.linalg.cython_lapack). Its
# address is registered with LLVM under a fixed symbol name and the kernel calls it as an
# ExternalFunction; the compiled code refers to the name, not the address, so it can be cached
# (cache=True) and is re-linked to the current process's address on load.
#
# Threads: the kernel runs one matrix at a time per numba thread. LAPACK calls BLAS, and a multithreaded
# BLAS inside each numba thread oversubscribes the cores (measured on 2 cores: 8 s to 65 s instead of
# 0.75 s for 128 matrices of 392 x 392, because idle BLAS threads spin). So BLAS is limited to one
# thread (threadpoolctl) for the duration of the kernel.

_DGESDD = "mi_ref_scipy_cython_lapack_dgesdd"
llvm.add_symbol(_DGESDD, get_cython_function_address("scipy.linalg.cython_lapack", "dgesdd"))
_int_p, _double_p = types.CPointer(types.int32), types.CPointer(types.float64)
_char_p = types.CPointer(types.uint8)
# dgesdd(jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info), Fortran conventions: all
# arguments by pointer, `a` column-major m x n with leading dimension lda; overwritten.
_dgesdd = types.ExternalFunction(_DGESDD, types.void(
    _char_p, _int_p, _int_p, _double_p, _int_p, _double_p, _double_p, _int_p, _double_p, _int_p,
    _double_p, _int_p, _int_p, _int_p))


@njit(parallel=True, cache=True)
def _singular_values_kernel(A, n_chunks, out, finite, info):
    """Singular values of every ``A[b]``, written to ``out[b]`` (descending).

    ``A: (B, p, q)`` C-ordered; LAPACK reads the memory of ``A[b]`` as the column-major q x p matrix
    ``A[b]^T``, which has the same singular values. The batch is cut into ``n_chunks`` contiguous chunks
    (one per thread); each chunk owns its workspace (size from one lwork = -1 query) and copies each
    matrix into it (dgesdd overwrites its input), checking finiteness on the way. ``finite[b]`` is
    False (and LAPACK not called) for a matrix with nan or inf; ``info[b]`` is LAPACK's INFO
    (> 0: the bidiagonal SVD did not converge).
    """
    batch, p, q = A.shape
    k = min(p, q)
    for chunk in prange(n_chunks):
        start = chunk * batch // n_chunks
        stop = (chunk + 1) * batch // n_chunks
        jobz = np.full(1, ord("N"), dtype=np.uint8)
        m = np.full(1, q, dtype=np.int32)                     # rows of A[b]^T; also lda
        n = np.full(1, p, dtype=np.int32)
        one = np.full(1, 1, dtype=np.int32)                   # ldu, ldvt (U, V^T not referenced)
        lwork = np.full(1, -1, dtype=np.int32)
        status = np.zeros(1, dtype=np.int32)
        a = np.empty(p * q)
        s = np.empty(k)
        unused = np.zeros(1)
        iwork = np.empty(8 * k, dtype=np.int32)
        query = np.zeros(1)
        _dgesdd(jobz.ctypes, m.ctypes, n.ctypes, a.ctypes, m.ctypes, s.ctypes, unused.ctypes, one.ctypes,
                unused.ctypes, one.ctypes, query.ctypes, lwork.ctypes, iwork.ctypes, status.ctypes)
        lwork[0] = np.int32(query[0])
        work = np.empty(max(lwork[0], 1))
        for b in range(start, stop):
            src = A[b].ravel()
            ok = True
            for i in range(p * q):
                value = src[i]
                a[i] = value
                if not np.isfinite(value):
                    ok = False
            finite[b] = ok
            info[b] = 0
            if not ok:
                out[b, :] = np.nan
                continue
            _dgesdd(jobz.ctypes, m.ctypes, n.ctypes, a.ctypes, m.ctypes, s.ctypes, unused.ctypes, one.ctypes,
                    unused.ctypes, one.ctypes, work.ctypes, lwork.ctypes, iwork.ctypes, status.ctypes)
            info[b] = status[0]
            out[b, :] = s


_BLAS_CONTROLLER = []       # one threadpoolctl controller, made on first use (after scipy's BLAS is loaded)


def _blas_limited_to_one_thread():
    if not _BLAS_CONTROLLER:
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")


def singular_values(J):
    """Singular values of every matrix of a stack: ``(B, out, in) -> (B, min(out, in))``, descending.

    sigma_1(J[b]) >= ... >= sigma_k(J[b]) >= 0, float64, from LAPACK's ``dgesdd`` (JOBZ = 'N', the
    routine ``numpy.linalg.svd(J, compute_uv=False)`` uses), run in parallel across the batch by a numba
    kernel (``prange``, compiled once and cached on disk). Accuracy is that of a backward-stable SVD:
    absolute error ~ eps * sigma_1 per value (see the comment above the kernel for why not eig(J^T J)).

    ``J`` may be C-ordered or a transposed view (each ``J[b]`` Fortran-ordered, as :func:`batch_jacobian`
    returns for MLPs); neither is copied. Any other layout is copied once. Raises ``ValueError`` unless
    ``J`` is 3-D, real, non-empty and finite, and ``numpy.linalg.LinAlgError`` if LAPACK does not converge.
    """
    J = _check_jacobians(J)
    transposed = J.transpose(0, 2, 1)
    A = transposed if transposed.flags.c_contiguous else np.ascontiguousarray(J)
    batch = J.shape[0]
    out = np.empty((batch, min(J.shape[1:])))
    finite = np.ones(batch, dtype=np.bool_)
    info = np.zeros(batch, dtype=np.int32)
    with _blas_limited_to_one_thread():
        _singular_values_kernel(A, min(batch, numba.get_num_threads()), out, finite, info)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"J has non-finite entries (nan or inf) in {bad.size} of {batch} matrices, "
                         f"first J[{bad[0]}]; singular values need finite Jacobians")
    if info.any():
        bad = np.flatnonzero(info)
        raise np.linalg.LinAlgError(f"LAPACK dgesdd did not converge for {bad.size} matrices, "
                                    f"first J[{bad[0]}] (INFO = {info[bad[0]]})")
    return out


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
