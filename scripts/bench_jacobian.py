"""Benchmark per-example Jacobians and their singular values at the paper's setting.

Setting (the paper's "conditioning" experiment, Fig. 2): g1 = MLP(392, [392] * 5, shortcuts=True) with
kernels drawn by truncated_normal(1e-4) and zero biases, a batch of B = 128 inputs (uniform [0, 1] values
plus Gaussian noise of std 0.05, like the noisy MNIST halves), float64. Per evaluation the experiment needs
J: (128, 392, 392) and its singular values.

Rows (median seconds over ``--repeats`` runs after one warm-up run; the rows are timed in turn within
each run, so slow phases of a shared machine spread over all of them):

* (a) the reference: ``jacobian.batch_jacobian_reference`` (autograd, reverse mode, one pass per output
  coordinate over the whole batch) of the MLP's formula op by op (``model.apply``; ``--reference-apply
  twin`` differentiates its accelerated twin, ``mi_ref.accel.twin(model).apply``, instead) +
  ``numpy.linalg.svd(J, compute_uv=False)``;
* (b) the fast path: ``accel.jacobians.batch_jacobian`` (forward mode) + ``accel.linalg.singular_values``
  (LAPACK dgesdd, JOBZ = 'N', one matrix per numba thread), each part separately;
* (c) one float64 GEMM (numpy) with the FLOP count of (b)'s Jacobian products, (B d, d) @ (d, (L - 1) d),
  written into a preallocated output (``out=``, so no page faults are timed): the forward-mode method
  cannot beat it on this machine;
* (a0) with ``--per-example``: the textbook autograd route, ``autograd.jacobian`` of the single-example
  function looped over the batch (B * out reverse passes of one example each), + the same SVD;
* torch (when importable; torch is not a dependency of mi-ref): ``torch.func.vmap(torch.func.jacrev(f))``
  + ``torch.linalg.svdvals`` in float64 on the same network (the same weights), ``torch.set_num_threads(2)``
  (or ``--threads``).

The floor of (b), measured in the same run: its GEMMs, each at numpy's speed for its own shape (L - 1
products (B d, d) @ (d, d), output preallocated), plus the singular values at LAPACK's speed on all of
numba's threads (``numpy.linalg.svd(J[b], compute_uv=False)``, dgesdd, of one matrix on one BLAS thread,
times B / threads). "x of floor" = (b)'s total / the floor (target: <= 1.3).

Ratios of medians: (a) / (b) and (b)'s Jacobian / (c) (targets: >= 5 and <= 1.5), and torch / (b).
The table also gives each row's fastest and slowest run.

Modes: ``--modes`` also times forward against reverse mode (:func:`mi_ref.accel.jacobians.batch_jacobian`
with ``mode=``) on the critics experiment's encoder MLP(392, [300, 300, 100]) (output narrower than input, where
``mode="auto"`` takes reverse mode) at the same batch size.

Compile time: numba compiles the singular-value kernel on first use and caches it on disk. The script
times the first call of ``singular_values`` (and, for comparison, of ``batch_jacobian`` on a tiny residual
MLP, which is plain numpy) in a fresh Python process whose ``NUMBA_CACHE_DIR`` points to a new empty
directory (so the repository's cache is neither used nor touched), then the same first calls in a second
fresh process that loads the kernel from that cache.

Usage::

    python scripts/bench_jacobian.py                   # the paper's setting, 5 repeats
    python scripts/bench_jacobian.py --repeats 9 --no-torch
    python scripts/bench_jacobian.py --per-example --modes    # the textbook reference; forward vs reverse
    python scripts/bench_jacobian.py --batch 32 --dim 100 --layers 3
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as onp

from mi_ref import accel, jacobian, nn
from mi_ref.accel import jacobians as fast_jacobians
from mi_ref.accel import linalg as fast_linalg


def build(batch, dim, layers, seed=0):
    """The conditioning encoder g1, its params and a batch of noisy [0, 1] inputs."""
    rng = onp.random.default_rng(seed)
    model = nn.MLP(dim, [dim] * layers, shortcuts=True, kernel_init=nn.truncated_normal(1e-4))
    params = model.init(rng)
    x = rng.random((batch, dim)) + 0.05 * rng.standard_normal((batch, dim))
    return model, params, x


def forward_mode_flops(batch, dims):
    """FLOPs of the fast path's products for an MLP with widths dims = [n_0, n_1, ..., n_L].

    Layer l >= 2 multiplies the tangents (B n_0, n_{l-1}) by W_l (n_{l-1}, n_l): 2 B n_0 n_{l-1} n_l
    flops; layer 1 needs none (I W_1 = W_1).
    """
    return sum(2 * batch * dims[0] * a * b for a, b in zip(dims[1:-1], dims[2:]))


def per_example_jacobian(apply, params, x):
    """The textbook route: autograd.jacobian of the one-example function, example by example."""
    import autograd
    return onp.stack([autograd.jacobian(lambda row: apply(params, row[None, :])[0])(row) for row in x])


def mode_times(batch, repeats):
    """Median seconds of forward and reverse mode on MLP(392, [300, 300, 100]) (and their max difference)."""
    rng = onp.random.default_rng(2)
    model = nn.MLP(392, [300, 300, 100])
    params = model.init(rng)
    x = rng.random((batch, 392))
    times, result = {"forward": [], "reverse": []}, {}
    for run in range(repeats + 1):                     # alternating; run 0 is the warm-up
        for mode in times:
            seconds, result[mode] = timed(fast_jacobians.batch_jacobian, model, params, x, mode=mode)
            if run:
                times[mode].append(seconds)
    out = {mode: statistics.median(v) for mode, v in times.items()}
    diff = onp.abs(result["forward"] - result["reverse"]).max()
    return out, float(diff), fast_jacobians.mlp_jacobian_flops([392, 300, 300, 100], batch)


def floor_seconds(batch, dim, layers, J, runs=5):
    """(GEMM floor, singular-value floor) of the fast path in seconds: the L - 1 tangent products
    (B d, d) @ (d, d) at numpy's speed, and B dgesdd calls (one matrix each, one BLAS thread) spread over
    numba's threads."""
    from threadpoolctl import threadpool_limits
    rng = onp.random.default_rng(3)
    a, b = rng.standard_normal((batch * dim, dim)), rng.standard_normal((dim, dim))
    out = onp.empty((batch * dim, dim))
    onp.matmul(a, b, out=out)
    gemm = statistics.median(timed(onp.matmul, a, b, out=out)[0] for _ in range(runs))
    mats = [onp.ascontiguousarray(J[i]) for i in range(min(len(J), 8))]
    with threadpool_limits(limits=1, user_api="blas"):
        onp.linalg.svd(mats[0], compute_uv=False)
        per_matrix = statistics.median(timed(onp.linalg.svd, m, compute_uv=False)[0] for m in mats)
    threads = numba.get_num_threads()
    return max(layers - 1, 0) * gemm, per_matrix * batch / threads


def timed(fn, *args, **kwargs):
    """(seconds, fn(*args, **kwargs))."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def compile_times():
    """(import, first batch_jacobian, first singular_values) seconds: empty numba cache, then cached."""
    code = ("import time; t0 = time.perf_counter(); import numpy as np; from mi_ref import nn; "
            "from mi_ref.accel import jacobians, linalg; "
            "t1 = time.perf_counter(); model = nn.MLP(3, [3, 3], shortcuts=True); "
            "J = jacobians.batch_jacobian(model, model.init(np.random.default_rng(0)), np.ones((2, 3))); "
            "t2 = time.perf_counter(); linalg.singular_values(J); t3 = time.perf_counter(); "
            "print(t1 - t0, t2 - t1, t3 - t2)")
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in ("cold", "cached"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 check=True)
            out.append(tuple(float(v) for v in res.stdout.split()))
    return out


def torch_setup(model, params, threads):
    """(jacobian_fn, svdvals_fn, to_tensor) for the same network in PyTorch float64, or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    weights = [(torch.from_numpy(layer["W"]), torch.from_numpy(layer["b"])) for layer in params["layers"]]
    last = len(weights) - 1

    def g1(v):                                       # one example (d,) -> (d,), the MLP's formula
        h = v
        for i, (W, b) in enumerate(weights):
            u = h @ W + b
            h = (torch.relu(u) if i < last else u) + h
        return h

    jac_fn = torch.func.vmap(torch.func.jacrev(g1))

    def jacobian_fn(xt):
        with torch.no_grad():
            return jac_fn(xt)

    return jacobian_fn, torch.linalg.svdvals, torch.from_numpy, torch


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows; shared with bench_steps.py."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_threads():
    """The thread count of each loaded BLAS, as threadpoolctl reports it (e.g. "openblas 2")."""
    from threadpoolctl import threadpool_info
    return ", ".join(f"{lib.get('internal_api')} {lib['num_threads']}" for lib in threadpool_info()
                     if lib["user_api"] == "blas") or "unknown"


def environment():
    lines = [f"python {platform.python_version()}, numpy {onp.__version__}, numba {numba.__version__} "
             f"(threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads)",
             f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, {cpu_name()}"]
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}")
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            lines.append(f"{lib['user_api']}: {lib.get('internal_api')} {lib.get('version')} "
                         f"({os.path.basename(lib['filepath'])}, {lib['num_threads']} threads"
                         f"{', ' + lib['architecture'] if lib.get('architecture') else ''})")
    except ImportError:
        lines.append("threadpoolctl not importable; numpy.show_config():")
        onp.show_config()
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=392)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    parser.add_argument("--per-example", action="store_true",
                        help="also time (a0), autograd.jacobian example by example (slow: ~10x (a))")
    parser.add_argument("--modes", action="store_true",
                        help="also time forward vs reverse mode on MLP(392, [300, 300, 100])")
    parser.add_argument("--reference-apply", choices=("formula", "twin"), default="formula",
                        help="what (a) differentiates: the model's formula op by op (default) or its twin")
    args = parser.parse_args(argv)

    compiled = None if args.no_compile else compile_times()

    model, params, x = build(args.batch, args.dim, args.layers)
    flops = forward_mode_flops(args.batch, [args.dim] * (args.layers + 1))
    rng = onp.random.default_rng(1)
    gemm_a = rng.standard_normal((args.batch * args.dim, args.dim))
    gemm_b = rng.standard_normal((args.dim, max(args.layers - 1, 1) * args.dim))
    gemm_out = onp.ones((gemm_a.shape[0], gemm_b.shape[1]))
    reference_apply = model.apply if args.reference_apply == "formula" else accel.twin(model).apply
    assert 2 * gemm_a.shape[0] * gemm_a.shape[1] * gemm_b.shape[1] == flops or args.layers == 1

    torch_parts = None if args.no_torch else torch_setup(model, params, args.threads)

    times = {key: [] for key in ("ref_jac", "ref_svd", "fast_jac", "fast_svd", "gemm", "torch_jac", "torch_svd",
                                 "example_jac")}
    checks = {}
    for run in range(args.repeats + 1):                 # run 0 is the warm-up (and compiles the kernel)
        t_ref_jac, J_ref = timed(jacobian.batch_jacobian_reference, reference_apply, params, x)
        t_ref_svd, s_ref = timed(onp.linalg.svd, J_ref, compute_uv=False)
        del J_ref
        t_fast_jac, J = timed(fast_jacobians.batch_jacobian, model, params, x)
        t_fast_svd, s = timed(fast_linalg.singular_values, J)
        t_gemm, _ = timed(onp.matmul, gemm_a, gemm_b, out=gemm_out)
        row = {"ref_jac": t_ref_jac, "ref_svd": t_ref_svd, "fast_jac": t_fast_jac, "fast_svd": t_fast_svd,
               "gemm": t_gemm}
        if args.per_example:
            row["example_jac"], J_example = timed(per_example_jacobian, reference_apply, params, x)
            if run == 0:
                checks["per-example J vs fast J, max |diff|"] = float(onp.abs(J_example - J).max())
            del J_example
        if torch_parts is not None:
            jacobian_fn, svdvals_fn, to_tensor, _ = torch_parts
            xt = to_tensor(x)
            row["torch_jac"], Jt = timed(jacobian_fn, xt)
            row["torch_svd"], st = timed(svdvals_fn, Jt)
            if run == 0:
                checks["torch J vs fast J, max |diff|"] = float(onp.abs(Jt.numpy() - J).max())
                checks["torch svals vs fast svals, max rel diff"] = float(onp.abs(st.numpy() - s).max() / s.max())
            del Jt, st
        if run == 0:
            checks["fast svals vs numpy svd, max |diff| / sigma_max"] = float(onp.abs(s - s_ref).max() / s.max())
            log_cond = jacobian.log_condition_numbers(s)
            checks["log condition numbers (min, max)"] = (float(log_cond.min()), float(log_cond.max()))
        else:
            for key, value in row.items():
                times[key].append(value)
        del J, s, s_ref

    med = {key: statistics.median(v) for key, v in times.items() if v}
    ref_total, fast_total = med["ref_jac"] + med["ref_svd"], med["fast_jac"] + med["fast_svd"]
    gemm_floor, svd_floor = floor_seconds(args.batch, args.dim, args.layers,
                                          fast_jacobians.batch_jacobian(model, params, x))

    print(f"# Jacobians + singular values: B = {args.batch}, d = {args.dim}, residual MLP of {args.layers} "
          f"layers (std 1e-4 init), float64; medians of {args.repeats} runs")
    for line in environment():
        print(f"# {line}")
    if torch_parts is not None:
        torch = torch_parts[3]
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    def spread(key):
        return f"{min(times[key]):.3f} - {max(times[key]):.3f}"

    def total_spread(a, b):
        sums = [x + y for x, y in zip(times[a], times[b])]
        return f"{min(sums):.3f} - {max(sums):.3f}"

    print("| row | step | median (s) | min - max (s) |")
    print("|---|---|---:|---:|")
    what = "`model.apply`" if args.reference_apply == "formula" else "`accel.twin(model).apply`"
    print(f"| (a) | autograd reference Jacobian (`batch_jacobian_reference` of {what}) | {med['ref_jac']:.3f} "
          f"| {spread('ref_jac')} |")
    print(f"| (a) | `numpy.linalg.svd(J, compute_uv=False)` | {med['ref_svd']:.3f} | {spread('ref_svd')} |")
    print(f"| (a) | **total** | **{ref_total:.3f}** | {total_spread('ref_jac', 'ref_svd')} |")
    if args.per_example:
        example_total = med["example_jac"] + med["ref_svd"]
        print(f"| (a0) | autograd.jacobian example by example | {med['example_jac']:.3f} | {spread('example_jac')} |")
        print(f"| (a0) | **total** (with (a)'s SVD) | **{example_total:.3f}** | |")
    print(f"| (b) | fast Jacobian, forward mode (`batch_jacobian`) | {med['fast_jac']:.3f} | {spread('fast_jac')} |")
    print(f"| (b) | numba singular values (`singular_values`, dgesdd JOBZ='N') | {med['fast_svd']:.3f} "
          f"| {spread('fast_svd')} |")
    print(f"| (b) | **total** | **{fast_total:.3f}** | {total_spread('fast_jac', 'fast_svd')} |")
    print(f"| (c) | one GEMM ({gemm_a.shape[0]} x {gemm_a.shape[1]}) @ ({gemm_b.shape[0]} x {gemm_b.shape[1]}), "
          f"{flops / 1e9:.1f} GFLOP = (b)'s Jacobian products ({flops / 1e9 / med['gemm']:.0f} GFLOP/s) "
          f"| {med['gemm']:.3f} | {spread('gemm')} |")
    if torch_parts is not None:
        torch_total = med["torch_jac"] + med["torch_svd"]
        print(f"| torch | `vmap(jacrev(g1))`, float64 | {med['torch_jac']:.3f} | {spread('torch_jac')} |")
        print(f"| torch | `torch.linalg.svdvals` | {med['torch_svd']:.3f} | {spread('torch_svd')} |")
        print(f"| torch | **total** | **{torch_total:.3f}** | {total_spread('torch_jac', 'torch_svd')} |")
    print()
    print("| the floor (same run) | (b) (s) | floor (s) | (b) / floor |")
    print("|---|---:|---:|---:|")
    print(f"| Jacobian: {args.layers - 1} GEMMs ({args.batch * args.dim} x {args.dim}) @ ({args.dim} x {args.dim}) "
          f"at numpy's speed | {med['fast_jac']:.3f} | {gemm_floor:.3f} | {med['fast_jac'] / gemm_floor:.2f} |")
    print(f"| singular values: {args.batch} x dgesdd (one BLAS thread) over {numba.get_num_threads()} threads "
          f"| {med['fast_svd']:.3f} | {svd_floor:.3f} | {med['fast_svd'] / svd_floor:.2f} |")
    print(f"| **total** (x of floor) | **{fast_total:.3f}** | {gemm_floor + svd_floor:.3f} "
          f"| **{fast_total / (gemm_floor + svd_floor):.2f}** |")
    print()
    print("| ratio | value | target |")
    print("|---|---:|---|")
    print(f"| (a) / (b), totals | {ref_total / fast_total:.2f} | >= 5 |")
    print(f"| (a) / (b), Jacobians | {med['ref_jac'] / med['fast_jac']:.2f} | |")
    print(f"| (a) / (b), singular values | {med['ref_svd'] / med['fast_svd']:.2f} | |")
    if args.per_example:
        print(f"| (a0) / (b), totals | {example_total / fast_total:.2f} | |")
    print(f"| (b) Jacobian / (c) | {med['fast_jac'] / med['gemm']:.2f} | <= 1.5 |")
    print(f"| (b) / its floor (x of floor) | {fast_total / (gemm_floor + svd_floor):.2f} | <= 1.3 |")
    if torch_parts is not None:
        print(f"| torch / (b), totals | {torch_total / fast_total:.2f} | > 1 |")
        print(f"| torch / (b), Jacobians | {med['torch_jac'] / med['fast_jac']:.2f} | |")
        print(f"| torch / (b), singular values | {med['torch_svd'] / med['fast_svd']:.2f} | |")
    if args.modes:
        mode_med, diff, flops = mode_times(args.batch, args.repeats)
        print()
        print(f"| MLP(392, [300, 300, 100]), B = {args.batch} | GFLOP | median (s) |")
        print("|---|---:|---:|")
        for mode in ("forward", "reverse"):
            print(f"| {mode} mode | {flops[mode] / 1e9:.1f} | {mode_med[mode]:.3f} |")
        print(f"| forward / reverse | {flops['forward'] / flops['reverse']:.2f} "
              f"| {mode_med['forward'] / mode_med['reverse']:.2f} |")
        checks["forward vs reverse mode J, max |diff|"] = diff
    if compiled is not None:
        (imp_cold, jac_cold, sv_cold), (imp_cached, jac_cached, sv_cached) = compiled
        print()
        print("| first call in a fresh process (s) | empty numba cache (compiles) | cached kernel |")
        print("|---|---:|---:|")
        print(f"| `import mi_ref.accel.jacobians, mi_ref.accel.linalg` | {imp_cold:.2f} | {imp_cached:.2f} |")
        print(f"| `batch_jacobian` (tiny residual MLP, numpy only) | {jac_cold:.2f} | {jac_cached:.2f} |")
        print(f"| `singular_values` (dgesdd kernel) | {sv_cold:.2f} | {sv_cached:.2f} |")
    print()
    for key, value in checks.items():
        print(f"check: {key}: {value}")


if __name__ == "__main__":
    main()
