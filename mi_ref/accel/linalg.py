"""Singular values of a stack of Jacobians on all cores: LAPACK's ``dgesdd`` called from a numba kernel.

:func:`singular_values` computes the same numbers as the reference :func:`mi_ref.jacobian.singular_values`
(``numpy.linalg.svd(J, compute_uv=False)``, the same LAPACK routine, one matrix after another), with one
matrix per numba thread. ``tests/test_jacobian.py`` checks it against the reference and against matrices of
known singular values.

Route and why. numba's ``np.linalg.svd`` always computes U and V. LAPACK's dgesdd with JOBZ = 'N' computes
singular values only: Householder bidiagonalization (dgebrd, ~(8/3) n^3 flops for n x n) and the dqds
algorithm on the bidiagonal (high relative accuracy there). The whole is backward stable,
|sigma_i - sigma_i(computed)| <= p(n) eps sigma_1, which is what ``numpy.linalg.svd(compute_uv=False)``
(the same LAPACK routine) gives too; :mod:`mi_ref.jacobian` says why not the eigenvalues of J^T J.

Reaching LAPACK from numba: scipy exports dgesdd as a C function (``scipy.linalg.cython_lapack``). Its
address is registered with LLVM under a fixed symbol name and the kernel calls it as an
ExternalFunction; the compiled code refers to the name, not the address, so it can be cached
(``cache=True``) and is re-linked to the current process's address on load.

Threads: the kernel runs one matrix at a time per numba thread. LAPACK calls BLAS, and a multithreaded
BLAS inside each numba thread oversubscribes the cores (measured on 2 cores: 8 s to 65 s instead of
0.75 s for 128 matrices of 392 x 392, because idle BLAS threads spin). So BLAS is limited to one
thread (threadpoolctl) for the duration of the kernel.
"""

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import get_cython_function_address
from threadpoolctl import ThreadpoolController

from ..jacobian import check_finite_jacobians, check_jacobians

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

    The numbers of :func:`mi_ref.jacobian.singular_values` (sigma_1(J[b]) >= ... >= sigma_k(J[b]) >= 0,
    float64, from LAPACK's ``dgesdd`` with JOBZ = 'N'), run in parallel across the batch by a numba kernel
    (``prange``, compiled once and cached on disk). Accuracy is that of a backward-stable SVD: absolute
    error ~ eps * sigma_1 per value.

    ``J`` may be C-ordered or a transposed view (each ``J[b]`` Fortran-ordered, as
    :func:`mi_ref.accel.jacobians.batch_jacobian` returns for MLPs in forward mode); neither is copied. Any
    other layout is copied once. Raises ``ValueError`` unless ``J`` is 3-D, real, non-empty and finite, and
    ``numpy.linalg.LinAlgError`` if LAPACK does not converge.
    """
    J = check_jacobians(J)
    transposed = J.transpose(0, 2, 1)
    A = transposed if transposed.flags.c_contiguous else np.ascontiguousarray(J)
    batch = J.shape[0]
    out = np.empty((batch, min(J.shape[1:])))
    finite = np.ones(batch, dtype=np.bool_)
    info = np.zeros(batch, dtype=np.int32)
    with _blas_limited_to_one_thread():
        _singular_values_kernel(A, min(batch, numba.get_num_threads()), out, finite, info)
    check_finite_jacobians(finite)
    if info.any():
        bad = np.flatnonzero(info)
        raise np.linalg.LinAlgError(f"LAPACK dgesdd did not converge for {bad.size} matrices, "
                                    f"first J[{bad[0]}] (INFO = {info[bad[0]]})")
    return out
