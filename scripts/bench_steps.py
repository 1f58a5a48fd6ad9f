"""Benchmark one full training step of the paper's four MI configurations.

A step is what the training loop does 21000 times per run: the loss -I_NCE(critic(g1(x1), g2(x2))), its
gradient with respect to every parameter (:func:`mi_ref.accel.value_and_grad_by_key` of
:func:`mi_ref.objectives.mi_loss`, autograd's numbers without a zero tree for the params dict) and one Adam
update in place: by default exactly what ``mi_ref.train.train_mi`` does. Batch 128, float64, random
MNIST-like inputs in [0, 1] (392 values per view).

Configurations (the paper's, README "The paper's settings"):

* ``invertible``:   g1, g2 = RealNVP(392, 30 couplings, hidden [512, 512], shift-only), bilinear critic (392);
* ``conditioning``: g1, g2 = MLP(392, [392] * 5, shortcuts, truncated_normal(1e-4)), bilinear critic (392);
* ``critics``:      g1, g2 = MLP(392, [300, 300, 100]), concat critic (one hidden layer of 200);
* ``encoders``:     g1, g2 = ConvNet(14, 28) (output 100), bilinear critic (100).

For each configuration the script prints the median seconds per step over ``--repeats`` steps (after a
warm-up), and, when PyTorch is importable, the same step in a small PyTorch float64 implementation held in
this script only (same shapes and the same initial parameter values, ``torch.set_num_threads(2)``,
``torch.optim.Adam``), and the ratio mi-ref / PyTorch. The loss values of both implementations on the
first step are compared as a check that they compute the same thing.

It also states the step's floor on this machine, measured in the same run (see the comment above
:func:`dense_work`): the GEMM floor (every GEMM of the step, each at numpy's own speed for its shape), the
memory floor (the bytes of the elementwise passes and of Adam over a STREAM-like triad bandwidth), and
"x of floor" = step time / (GEMM floor + memory floor), and the *state-matched* "x of floor": the machine's
GEMM speed flips between two levels from minute to minute (see :func:`state_probe`), so each block of steps
and the floor carry a probe of that speed, and each step's time is rescaled to the probe's speed at the
floor's measurement before the median is taken; the step's GEMM FLOPs (forward + backward ~ 3 x
forward, less the input gradient of each encoder's first layer, which neither implementation computes)
and the share of numpy's GEMM peak they reach (the best of (128 x 512) @ (512 x 512) and 1024^3 in the
same run); and the breakdown of the step by phase (forward, backward, Adam, other) from a profile
(cProfile) of a few steps, whose summary ``--profile-out`` writes to a file.

Usage::

    python scripts/bench_steps.py                       # all four, 20 repeats
    python scripts/bench_steps.py --configs invertible encoders --repeats 10
    python scripts/bench_steps.py --reference           # also the models' own formulas (no speed wing)
    python scripts/bench_steps.py --adam-functional     # mi-ref's Adam returns new arrays (default: in place)
    python scripts/bench_steps.py --fused-adam          # also PyTorch with torch.optim.Adam(fused=True)
    python scripts/bench_steps.py --configs encoders-quick   # the quick preset's ConvNet, channels (32, 64)
    python scripts/bench_steps.py --profile-out figures/step_profile.txt
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python scripts/bench_steps.py --clock cpu
                                                        # one thread, CPU time: comparisons on a busy machine

How it measures. The process first raises glibc's malloc thresholds (:func:`mi_ref.accel.configure_malloc`,
as ``mi-ref run`` does; ``--default-malloc`` skips it), so freed memory is reused instead of being faulted
in again every step. The implementations then alternate in blocks of ``--block`` steps, each block after a
short pause and one untimed step, and the medians are quoted. The virtual machine's speed drifts on its
own (the same step varies by up to 1.4x from minute to minute on an idle machine, small GEMMs most), so
single runs of the tightest configuration (conditioning) scatter around their median ratio by +-0.07;
the script reports the share of CPU time other processes and the hypervisor (steal) took meanwhile, and
flags a run where they exceed 5 %.
"""

import argparse
import functools
import importlib
import os
import platform
import statistics
import sys
import time

import numpy as onp
from autograd import value_and_grad

from bench_jacobian import blas_threads, cpu_name      # scripts/ is on sys.path when this script runs
from mi_ref import accel, experiments, objectives, optim
from mi_ref.tree import tree_flatten

BATCH = 128
HALF = 392           # 14 x 28 pixels per view
CONFIGS = ("invertible", "conditioning", "critics", "encoders")
EXTRA_CONFIGS = ("encoders-quick",)    # the quick preset's ConvNet (channels (32, 64)): a laptop reproduction


# ----------------------------------------------------------------------------------------------------
# the four configurations in mi-ref


# the variant of each experiment's paper preset that a configuration times
VARIANTS = {"invertible": ("invertible", "infonce"), "conditioning": ("conditioning", "infonce"),
            "critics": ("critics", "concat-infonce"), "encoders": ("encoders", "convnet-infonce-t2"),
            "encoders-quick": ("encoders", "convnet-infonce-t2")}
PRESETS = {"encoders-quick": "quick"}       # every other configuration times the paper preset


def build(config, seed=0):
    """(g1, g2, critic, params) of one configuration: the models of the experiment's own paper-preset variant
    (``mi_ref.experiments``, so the benchmark cannot drift from the presets), params drawn from ``seed``."""
    if config not in VARIANTS:
        raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS + EXTRA_CONFIGS}")
    name, variant = VARIANTS[config]
    exp = experiments.get(name)
    module = importlib.import_module(f"mi_ref.experiments.{name}")
    shape = (14, 28) if name == "encoders" else HALF
    chosen = [v for v in module.variants(exp.presets[PRESETS.get(config, "paper")], shape) if v.name == variant]
    rng = onp.random.default_rng(seed)
    g1, g2, critic = chosen[0].build(rng)
    params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
    return g1, g2, critic, params


def batch(seed=1):
    rng = onp.random.default_rng(seed)
    return rng.uniform(size=(BATCH, HALF)), rng.uniform(size=(BATCH, HALF))


def mi_ref_stepper(config, reference=False, adam_inplace=True):
    """A function doing one training step (loss, gradients, Adam update) on fixed inputs.

    By default exactly what ``mi_ref.train.train_mi`` does: the models' accelerated twins
    (:func:`mi_ref.accel.twin`), :func:`mi_ref.accel.value_and_grad_by_key` and
    :func:`mi_ref.accel.adam_update` in place on owned copies. ``reference=True`` runs the models' own
    formulas, autograd's ``value_and_grad`` and the functional ``Adam.update`` instead, to show what the
    speed wing buys; ``adam_inplace=False`` makes the fused Adam return new arrays every step.
    """
    g1, g2, critic, params = build(config)
    if not reference:
        g1, g2, critic = accel.twin(g1), accel.twin(g2), accel.twin(critic)
    x1, x2 = batch()
    adam = optim.Adam(lr=1e-4, form="tf")           # the paper's form, as the experiments use it
    if reference:
        update = adam.update
    else:
        update = lambda p, g, s: accel.adam_update(adam, p, g, s, inplace=adam_inplace)  # noqa: E731
    loss_and_grad = (value_and_grad if reference else accel.value_and_grad_by_key)(objectives.mi_loss)
    own_params, own_adam = accel.owned(params, adam.init(params))
    state = {"params": own_params, "adam": own_adam, "losses": []}

    def step():
        loss, grads = loss_and_grad(state["params"], g1, g2, critic, "infonce", x1, x2)
        state["params"], state["adam"] = update(state["params"], grads, state["adam"])
        state["losses"].append(float(loss))

    return step, state


# ----------------------------------------------------------------------------------------------------
# the floor: every GEMM of the step at numpy's speed for its shape, plus the step's unavoidable memory traffic
#
# A step's work, listed from the models themselves (so it follows the presets):
#   * GEMMs ("gemm", phase, m, k, n, weight): (m x k) @ (k x n), forward, and in the backward pass the kernel
#     gradient h^T delta (k_in x m) @ (m x n_out) and the input gradient delta W^T;
#   * memory passes ("pass", phase, values moved, size of the largest array touched): the elementwise work
#     an ideal implementation does in ONE pass per GEMM (bias + activation reads the GEMM's output and
#     writes the activation; the activation's derivative reads the incoming gradient and the
#     pre-activation and writes delta; a coupling reads x and t and writes y; im2col writes the patches),
#     and Adam, which reads p, g, m, v and writes p, m, v (7 values per parameter).
# The GEMM floor times each distinct shape with numpy (C-ordered operands, a preallocated output, the
# faster of C = A B and C^T = B^T A^T); the memory floor divides each pass's bytes by a STREAM-like triad's
# bandwidth a[i] = b[i] + s c[i] (24 bytes per i) measured at the pass's array size (cache-resident
# activations run at cache bandwidth, Adam's 28 M parameters at DRAM bandwidth), on one thread or on all
# of numba's threads, whichever is faster. "x of floor" = step time / (GEMM floor + memory floor).
#
# The cold-weight floor. Timed as above, every product reuses its operands, so a weight matrix sits in the
# caches. In a step it does not: the invertible flows hold 224 MB of weights, and each weight is read once
# in the forward pass and once more (for delta W^T) in the backward pass, long after the caches dropped it;
# its gradient is written once. So each GEMM tuple also names its weight-shaped array ("b": the right
# operand, "out": the product, None: both operands are activations), and the cold-weight floor times each
# product with that array rotated over as many distinct copies as fill COLD_BYTES (far beyond any L3 of
# the machines measured), the activations staying hot as they are in a step. "x of cold-weight floor" is
# the step's time over (cold-weight GEMM floor + memory floor).


def dense_work(dims, b, phase_fwd="forward", phase_bwd="backward", need_dx=True, shortcuts=False):
    """GEMMs and passes of an MLP with widths dims = [in, d_1, ..., d_L] (ReLU between layers)."""
    work = []
    n = len(dims) - 1
    for l, (a, c) in enumerate(zip(dims[:-1], dims[1:])):
        work.append(("gemm", phase_fwd, b, a, c, "b"))                         # h W: W is the right operand
        work.append(("pass", phase_fwd, b * c * (2 + shortcuts), b * c))       # bias (+ relu) (+ shortcut)
        work.append(("gemm", phase_bwd, a, b, c, "out"))                        # dW = h^T delta: W's shape out
        if l > 0 or need_dx:
            work.append(("gemm", phase_bwd, b, c, a, "b"))                      # dh = delta W^T
        if l < n - 1:
            work.append(("pass", phase_bwd, b * c * (3 + shortcuts), b * c))   # relu' (+ shortcut)
    return work


def model_work(model, b, need_dx):
    """GEMMs and passes of one encoder of the paper (MLP, RealNVP or ConvNet) on a batch of b."""
    from mi_ref import flows, nn
    model = accel.original(model)
    if isinstance(model, nn.MLP):
        return dense_work([model.in_dim] + list(model.dims), b, need_dx=need_dx, shortcuts=model.shortcuts)
    if isinstance(model, flows.RealNVP):
        work = []
        for k, blk in enumerate(model.blocks):
            d, h = blk.dim, blk.split
            work += dense_work([h] + list(blk.net.dims), b, need_dx=k > 0 or need_dx)
            work.append(("pass", "forward", b * (2 * d + blk.n_out), b * d))    # y = [z_a, z_b + t]
            if k > 0 or need_dx:
                work.append(("pass", "backward", b * (2 * d + h), b * d))       # dx = unpermute(dy + dz_a)
        return work
    if isinstance(model, nn.ConvNet):
        work = []
        shape = (model.height, model.width, 1)
        for layer, first in ((model.conv1, True), (model.conv2, False)):
            ho, _, _ = nn.same_padding(shape[0], layer.kernel_size, layer.stride)
            wo, _, _ = nn.same_padding(shape[1], layer.kernel_size, layer.stride)
            m, k, c = b * ho * wo, layer.kernel_size ** 2 * shape[2], layer.out_channels
            work.append(("pass", "forward", m * k + b * shape[0] * shape[1] * shape[2], m * k))   # im2col
            work.append(("gemm", "forward", m, k, c, "b"))
            work.append(("pass", "forward", 2 * m * c, m * c))                   # bias + relu
            work.append(("pass", "backward", 3 * m * c, m * c))                  # relu'
            work.append(("gemm", "backward", k, m, c, "out"))                    # d kernel = patches^T delta
            if not first or need_dx:
                work.append(("gemm", "backward", m, c, k, "b"))                  # d patches = delta W^T
                work.append(("pass", "backward", m * k + b * shape[0] * shape[1] * shape[2], m * k))  # col2im
            shape = (ho, wo, c)
        size = b * shape[0] * shape[1] * shape[2]
        work.append(("pass", "forward", 3 * size, size))                        # layer norm + pooling
        work.append(("pass", "backward", 2 * size, size))
        work += dense_work([shape[2], model.out_dim], b)
        return work
    raise ValueError(f"no work model for {type(model).__name__}")


def critic_work(critic, b):
    """GEMMs of the critic (bilinear: S = u (v W)^T; concat: its first layer, and its pairwise kernel
    counted as the GEMMs (b x H) @ (H x b) it resembles: one forward, two backward)."""
    from mi_ref import critics
    critic = accel.original(critic)
    if isinstance(critic, critics.Bilinear):
        du, dv = critic.dim_u, critic.dim_v
        return [("gemm", "forward", b, dv, du, "b"), ("gemm", "forward", b, du, b, None),
                ("gemm", "backward", b, b, du, None), ("gemm", "backward", b, b, du, None),
                ("gemm", "backward", dv, b, du, "out"), ("gemm", "backward", b, du, dv, "b")]
    if isinstance(critic, critics.Concat):
        hidden = critic.mlp.dims[0]
        work = []
        for d in (critic.dim_u, critic.dim_v):
            work += [("gemm", "forward", b, d, hidden, "b"), ("gemm", "backward", d, b, hidden, "out"),
                     ("gemm", "backward", b, hidden, d, "b")]
        work += [("gemm", "forward", b, hidden, b, None)] + [("gemm", "backward", b, hidden, b, None)] * 2
        return work
    raise ValueError(f"no work model for {type(critic).__name__}")


@functools.lru_cache(maxsize=None)
def step_work(config):
    """Everything the floor counts for one step of ``config``: GEMMs, elementwise passes and Adam (a tuple,
    memoized: the hot and cold floors and the FLOP count read one list instead of building the models
    three times)."""
    g1, g2, critic, params = build(config)
    work = model_work(g1, BATCH, False) + model_work(g2, BATCH, False) + critic_work(critic, BATCH)
    n_params = sum(onp.size(leaf) for _, leaf in tree_flatten(params))
    work.append(("pass", "Adam", 7 * n_params, n_params))
    return tuple(work), n_params


COLD_BYTES = 256 * 2 ** 20      # the footprint of the rotated copies of a cold weight (see above)


def gemm_seconds(m, k, n, min_time=0.02, runs=5, cold=None):
    """numpy's fastest time for an (m x k) @ (k x n) product: median over ``runs`` of each orientation
    (C = A B into (m, n), and C^T = B^T A^T into (n, m); operands C-ordered, output preallocated).

    ``cold``: None (every product reuses the same arrays, which stay in the caches), ``"b"`` (the weight is
    the right operand (k x n)) or ``"out"`` (the weight's gradient is the product (m x n)): that array is
    rotated over copies filling :data:`COLD_BYTES`, so each product finds it in memory, not in a cache.
    In the transposed orientation the weight is the left operand B^T, or the product C^T."""
    if cold not in (None, "b", "out"):
        raise ValueError(f"cold must be None, 'b' or 'out', got {cold!r}")
    rng = onp.random.default_rng(0)
    copies = 1 if cold is None else max(2, -(-COLD_BYTES // (8 * (k * n if cold == "b" else m * n))))
    best = float("inf")
    for transposed in (False, True):
        a_shape, b_shape = ((n, k), (k, m)) if transposed else ((m, k), (k, n))
        rotated = {"left": cold == "b" and transposed, "right": cold == "b" and not transposed, "out": cold == "out"}
        lefts = [rng.standard_normal(a_shape) for _ in range(copies if rotated["left"] else 1)]
        rights = [rng.standard_normal(b_shape) for _ in range(copies if rotated["right"] else 1)]
        outs = [onp.empty((a_shape[0], b_shape[1])) for _ in range(copies if rotated["out"] else 1)]
        count = max(len(lefts), len(rights), len(outs))

        def product(i, lefts=lefts, rights=rights, outs=outs):
            onp.matmul(lefts[i % len(lefts)], rights[i % len(rights)], out=outs[i % len(outs)])

        for i in range(count):                                  # touch every copy once
            product(i)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_time / 4 or reps < count:
            product(reps)
            reps += 1
        times = []
        i = reps
        for _ in range(runs):
            t0 = CLOCK[0]()
            for _ in range(reps):
                product(i)
                i += 1
            times.append((CLOCK[0]() - t0) / reps)
        best = min(best, statistics.median(times))
        del lefts, rights, outs, product        # free this orientation's copies before the next one's
    return best


_TRIAD = {}


def triad_kernels():
    if not _TRIAD:
        from numba import njit, prange

        @njit(cache=False)
        def serial(a, b, c, s):
            for i in range(a.shape[0]):
                a[i] = b[i] + s * c[i]

        @njit(cache=False, parallel=True)
        def parallel(a, b, c, s):
            for i in prange(a.shape[0]):
                a[i] = b[i] + s * c[i]
        _TRIAD.update(serial=serial, parallel=parallel)
    return _TRIAD


def triad_bandwidth(n, runs=5, min_time=0.02):
    """Bytes per second of a[i] = b[i] + s c[i] over arrays of n float64 (24 n bytes per sweep), the faster
    of one thread and all of numba's threads; n is rounded up to a power of two (memoized)."""
    n = 1 << max(10, int(n - 1).bit_length())
    if n in BANDWIDTH:
        return BANDWIDTH[n]
    a, b, c = onp.zeros(n), onp.ones(n), onp.full(n, 2.0)
    best = 0.0
    for kernel in triad_kernels().values():
        kernel(a, b, c, 3.0)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_time / 4:
            kernel(a, b, c, 3.0)
            reps += 1
        times = []
        for _ in range(runs):
            t0 = CLOCK[0]()
            for _ in range(reps):
                kernel(a, b, c, 3.0)
            times.append((CLOCK[0]() - t0) / reps)
        best = max(best, 24 * n / statistics.median(times))
    BANDWIDTH[n] = best
    return best


BANDWIDTH = {}
GEMM_SECONDS = {}
CLOCK = [time.perf_counter]          # or time.process_time (--clock cpu)


def step_flops(config):
    """The step's GEMM FLOPs (2 m k n per product of :func:`step_work`): forward + backward ~ 3 x forward,
    less the input gradients of the encoders' first layers, which the step does not compute."""
    return sum(2 * w[2] * w[3] * w[4] for w in step_work(config)[0] if w[0] == "gemm")


def floor(config, cold=False):
    """{"gemm": s, "memory": s, "gemm_flops", "bytes", "n_params", "by_phase": {phase: s}} of one step;
    with ``cold``, every GEMM with its weight-shaped array cold (the cold-weight floor, see above)."""
    work, n_params = step_work(config)
    out = {"gemm": 0.0, "memory": 0.0, "gemm_flops": 0, "bytes": 0, "n_params": n_params, "by_phase": {}}
    for kind, phase, *rest in work:
        if kind == "gemm":
            m, k, n, weight = rest
            key = (m, k, n, weight if cold else None)
            if key not in GEMM_SECONDS:
                GEMM_SECONDS[key] = gemm_seconds(m, k, n, cold=key[3])
            seconds = GEMM_SECONDS[key]
            out["gemm"] += seconds
            out["gemm_flops"] += 2 * m * k * n
        else:
            values, size = rest
            seconds = 8 * values / triad_bandwidth(size)
            out["memory"] += seconds
            out["bytes"] += 8 * values
        out["by_phase"][phase] = out["by_phase"].get(phase, 0.0) + seconds
    return out


# ----------------------------------------------------------------------------------------------------
# the profile: where a step's time goes, by phase


PHASES = (("forward", "mi_ref/objectives.py", "mi_loss"), ("backward", "mi_ref/accel/grad.py", "backward_pass"),
          ("Adam", "mi_ref/accel/adam.py", "adam_update"))


def profile_step(step, n_steps, top=12):
    """cProfile of ``n_steps`` calls of ``step``: ({phase: seconds per step}, summary text).

    Phases are the cumulative times of mi_loss (the forward pass, traced), the backward pass
    (:func:`mi_ref.accel.grad.backward_pass`) and :func:`mi_ref.accel.adam_update`; "other" is the rest of
    the step (the tracer's bookkeeping, the loss's float, the loop). The text lists the functions with the
    most time of their own (GEMMs count in the Python function that calls them)."""
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile(CLOCK[0])
    t0 = CLOCK[0]()
    prof.enable()
    for _ in range(n_steps):
        step()
    prof.disable()
    total = (CLOCK[0]() - t0) / n_steps
    stats = pstats.Stats(prof)
    phases = {}
    for (path, _, name), (_, _, _, cum, _) in stats.stats.items():
        for phase, suffix, fn in PHASES:
            if name == fn and path.replace("\\", "/").endswith(suffix):
                phases[phase] = phases.get(phase, 0.0) + cum / n_steps
    phases["other"] = max(0.0, total - sum(phases.values()))
    text = io.StringIO()
    pstats.Stats(prof, stream=text).strip_dirs().sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return phases, total, "\n".join(lines[lines.index(next(l for l in lines if "ncalls" in l)):])


# ----------------------------------------------------------------------------------------------------
# the same steps in PyTorch (only here, for the comparison; torch is not a dependency of mi-ref)


def torch_stepper(config, torch, fused_adam=False):
    """The PyTorch float64 version of one step, starting from the same parameter values as mi-ref.

    ``fused_adam``: ``torch.optim.Adam(fused=True)`` (one fused kernel per step, CPU support since 2.4)
    instead of the default per-tensor loop.
    """
    import torch.nn.functional as F

    g1, g2, critic, params = build(config)
    x1n, x2n = batch()
    t = lambda a: torch.tensor(onp.asarray(a), dtype=torch.float64)
    x1, x2 = t(x1n), t(x2n)
    leaves = []

    def leaf(a):
        p = t(a).requires_grad_(True)
        leaves.append(p)
        return p

    def mlp_params(p):
        return [(leaf(l["W"]), leaf(l["b"])) for l in p["layers"]]

    def mlp(layers, h, shortcuts=False):
        for i, (w, b) in enumerate(layers):
            out = h @ w + b
            if i < len(layers) - 1:
                out = torch.relu(out)
            h = out + h if shortcuts else out
        return h

    if config == "invertible":
        def flow_params(flow, p):
            return [(mlp_params(bp["net"]), torch.as_tensor(blk.perm)) for blk, bp in zip(flow.blocks, p["blocks"])]

        def flow_apply(blocks, x):
            h = HALF // 2
            for layers, perm in blocks:          # every block: permute, then couple
                z = x[:, perm]
                za, zb = z[:, :h], z[:, h:]
                x = torch.cat([za, zb + mlp(layers, za)], dim=1)
            return x
        e1, e2 = flow_params(g1, params["g1"]), flow_params(g2, params["g2"])
        enc1, enc2 = (lambda x: flow_apply(e1, x)), (lambda x: flow_apply(e2, x))
    elif config in ("conditioning", "critics"):
        e1, e2 = mlp_params(params["g1"]), mlp_params(params["g2"])
        sc = config == "conditioning"
        enc1, enc2 = (lambda x: mlp(e1, x, sc)), (lambda x: mlp(e2, x, sc))
    elif VARIANTS[config][0] == "encoders":
        def conv_params(p):
            return {"w1": leaf(p["conv1"]["W"].transpose(3, 2, 0, 1)), "b1": leaf(p["conv1"]["b"]),
                    "w2": leaf(p["conv2"]["W"].transpose(3, 2, 0, 1)), "b2": leaf(p["conv2"]["b"]),
                    "scale": leaf(p["norm"]["scale"]), "bias": leaf(p["norm"]["bias"]),
                    "wo": leaf(p["out"]["W"]), "bo": leaf(p["out"]["b"])}

        def conv_apply(q, x):
            # NCHW; F.pad takes (left, right, top, bottom): TensorFlow's 'same' rule (nn.same_padding)
            h = x.view(-1, 1, 14, 28)
            h = torch.relu(F.conv2d(F.pad(h, (1, 2, 1, 2)), q["w1"], stride=2) + q["b1"][:, None, None])
            h = torch.relu(F.conv2d(F.pad(h, (1, 2, 2, 2)), q["w2"], stride=2) + q["b2"][:, None, None])
            mu = h.mean(dim=(1, 2, 3), keepdim=True)
            c = h - mu
            std = torch.sqrt((c * c).mean(dim=(1, 2, 3), keepdim=True))
            h = c / (std + 1e-6) * q["scale"][:, None, None] + q["bias"][:, None, None]
            return h.mean(dim=(2, 3)) @ q["wo"] + q["bo"]
        e1, e2 = conv_params(params["g1"]), conv_params(params["g2"])
        enc1, enc2 = (lambda x: conv_apply(e1, x)), (lambda x: conv_apply(e2, x))

    if config == "critics":
        cl = mlp_params(params["critic"])
        (w1, b1), (w2, b2) = cl
        du = 100

        def scores(u, v):
            h = torch.relu((u @ w1[:du])[:, None, :] + (v @ w1[du:])[None, :, :] + b1)
            return (h @ w2 + b2)[:, :, 0]
    else:
        wc = leaf(params["critic"]["W"])

        def scores(u, v):
            return u @ (v @ wc).T

    def loss_fn():
        s = scores(enc1(x1), enc2(x2))
        k = s.shape[0]
        return -(onp.log(k) + torch.mean(torch.diagonal(s) - torch.logsumexp(s, dim=1)))

    fused = {"fused": True} if fused_adam else {}
    opt = torch.optim.Adam(leaves, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, **fused)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    return step, losses


# ----------------------------------------------------------------------------------------------------
# timing


def gemm_gflops(m, k, n, repeats=20):
    rng = onp.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    c = onp.empty((m, n))
    for _ in range(3):
        onp.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        onp.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def state_probe():
    """The machine's state now: numpy's GEMM speed at (128x512)@(512x512), GFLOP/s (about 10 ms).

    On the reference VM this speed flips between two levels (about 94 and 70 GFLOP/s on 2 threads) from
    minute to minute and within one process, and every step's time follows it: the invertible step took
    0.33-0.35 s in the fast state and 0.47-0.48 s in the slow one, block by block in one process. So
    "x of floor" is only meaningful when the step and the floor are timed in the same state."""
    return gemm_gflops(128, 512, 512, repeats=10)


def time_steps(steps, repeats, warmup, block=5, pause=0.2, probes=None):
    """Median seconds per step of every function in ``steps``.

    The implementations are timed in alternating blocks of ``block`` steps, so that the slow drifts of a
    virtual machine's speed (measured here: the same step varies by up to 1.4x from minute to minute on an
    otherwise idle machine) affect all alike. Before each block a short pause lets the idle worker threads
    of the other library (OpenBLAS, OpenMP) go to sleep, and one untimed step brings threads and caches
    back, so every timed step runs in the steady state of a training loop.

    ``probes``, a list, receives for each timed step of the first function ``(seconds, state)``, the state
    being the mean of :func:`state_probe` just before and just after its block.
    """
    for s in steps:
        for _ in range(warmup):
            s()
    times = [[] for _ in steps]
    while len(times[0]) < repeats:
        for i, s in enumerate(steps):
            time.sleep(pause)
            s()
            before = state_probe() if probes is not None and i == 0 else None
            n = min(max(1, block), repeats - len(times[i]))
            for _ in range(n):
                t0 = CLOCK[0]()
                s()
                times[i].append(CLOCK[0]() - t0)
            if before is not None:
                speed = (before + state_probe()) / 2
                probes.extend((t, speed) for t in times[i][-n:])
    return [statistics.median(t) for t in times]


class OtherLoad:
    """CPU time the machine spent elsewhere while the block ran, as shares of all CPU time (Linux; else None):
    ``value`` = other processes, ``steal`` = time the hypervisor gave the virtual CPUs to other guests.

    Timings are only comparable on an otherwise idle machine: a busy or stolen core stalls the two BLAS
    threads of both implementations (and mi-ref's more), so the script reports both shares and warns above 5 %.
    """

    @staticmethod
    def _snapshot():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        t = os.times()
        busy = v[0] + v[1] + v[2] + v[5] + v[6]               # user, nice, system, irq, softirq
        steal = v[7] if len(v) > 7 else 0
        return busy, sum(v[:8]), (t.user + t.system) * os.sysconf("SC_CLK_TCK"), steal

    def __enter__(self):
        try:
            self.start = self._snapshot()
        except (OSError, ValueError, AttributeError):
            self.start = None
        self.value = self.steal = None
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            busy, total, ours, steal = (e - s for e, s in zip(self._snapshot(), self.start))
            self.value = max(0.0, (busy - ours) / max(total, 1))
            self.steal = steal / max(total, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS + EXTRA_CONFIGS)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per implementation and configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--block", type=int, default=5,
                        help="timed steps per block; the implementations alternate block by block")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter (default, on a quiet machine); cpu: this process's CPU time "
                             "(all its threads), for comparisons on a busy machine with one thread")
    parser.add_argument("--profile-steps", type=int, default=5,
                        help="steps profiled per configuration for the phase breakdown (0: none)")
    parser.add_argument("--profile-out", default=None,
                        help="write each configuration's profile summary (phases, top functions) to this file")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--fused-adam", action="store_true",
                        help="also time PyTorch with torch.optim.Adam(fused=True) (default: the per-tensor loop)")
    parser.add_argument("--adam-functional", action="store_true",
                        help="mi-ref's Adam returns new arrays every step (default: it overwrites the params "
                             "and state in place, as the training loops do)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the plain reference formulations (no fast primitives)")
    parser.add_argument("--adam-parallel-min", type=int, default=None,
                        help="split Adam's leaves of at least this many entries over numba's threads "
                             "(mi_ref.accel.adam.PARALLEL_MIN_SIZE; default: the library's, 0 = one thread)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds alone (see mi_ref.accel.configure_malloc)")
    args = parser.parse_args(argv)
    malloc_tuned = False if args.default_malloc else accel.configure_malloc()
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.adam_parallel_min is not None:
        from mi_ref.accel import adam as adam_module
        adam_module.PARALLEL_MIN_SIZE = args.adam_parallel_min

    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        except ImportError:
            torch = None

    threads = blas_threads()
    torch_text = (f"{torch.__version__} ({torch.get_num_threads()} threads)" if torch is not None
                  else "not used" if args.no_torch else "not installed")
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; numpy {onp.__version__} (BLAS threads: {threads}); "
          f"torch {torch_text}; "
          f"python {platform.python_version()}; mi-ref Adam {'functional' if args.adam_functional else 'in place'}; "
          f"malloc thresholds "
          f"{'raised (mi_ref.accel.configure_malloc)' if malloc_tuned else 'default'}; clock {args.clock}")
    peak_small = gemm_gflops(128, 512, 512)
    peak_big = gemm_gflops(1024, 1024, 1024, repeats=5)
    peak = max(peak_small, peak_big)
    print(f"float64 GEMM (numpy, same run): (128x512)@(512x512) {peak_small:.1f} GFLOP/s, "
          f"1024^3 {peak_big:.1f} GFLOP/s; triad bandwidth (same run): "
          f"{triad_bandwidth(2 ** 16) / 1e9:.1f} GB/s at 3 x 512 KiB, "
          f"{triad_bandwidth(2 ** 25) / 1e9:.1f} GB/s at 3 x 256 MiB\n")

    rows, profiles = [], []
    for config in args.configs:
        names, steps = ["mi-ref"], []
        step, state = mi_ref_stepper(config, adam_inplace=not args.adam_functional)
        steps.append(step)
        if torch is not None:
            tstep, tlosses = torch_stepper(config, torch)
            names.append("PyTorch")
            steps.append(tstep)
            if args.fused_adam:
                fstep, _ = torch_stepper(config, torch, fused_adam=True)
                names.append("PyTorch fused Adam")
                steps.append(fstep)
        if args.reference:
            rstep, _ = mi_ref_stepper(config, reference=True)
            names.append("reference")
            steps.append(rstep)
        probes = []
        with OtherLoad() as load:
            medians = dict(zip(names, time_steps(steps, args.repeats, args.warmup, args.block, probes=probes)))
        floor_state = state_probe()
        fl = floor(config)
        fl_cold = floor(config, cold=True)
        floor_state = (floor_state + state_probe()) / 2
        phases = None
        if args.profile_steps > 0:
            phases, profiled, text = profile_step(step, args.profile_steps)
            profiles.append((config, phases, profiled, fl, text, fl_cold))
        flops = step_flops(config)
        ours, theirs, ref = medians["mi-ref"], medians.get("PyTorch"), medians.get("reference")
        fused = medians.get("PyTorch fused Adam")
        x_floor = ours / (fl["gemm"] + fl["memory"])
        # each step's time rescaled to the machine state in which the floor was measured (GEMM-bound steps
        # scale with the GEMM speed; the memory passes do not, so this is an approximation for them)
        matched = statistics.median(t * speed / floor_state for t, speed in probes)
        x_matched = matched / (fl["gemm"] + fl["memory"])
        x_cold = ours / (fl_cold["gemm"] + fl_cold["memory"])
        states = [speed for _, speed in probes]
        line = (f"{config:13s} mi-ref {ours * 1e3:8.1f} ms/step ({flops / ours / 1e9:5.1f} GFLOP/s of "
                f"{flops / 1e9:.2f} GFLOP) | floor {1e3 * fl['gemm']:.1f} ms GEMM + {1e3 * fl['memory']:.1f} ms "
                f"memory ({fl['bytes'] / 1e9:.2f} GB) | {x_floor:.2f}x of floor | cold-weight GEMM floor "
                f"{1e3 * fl_cold['gemm']:.1f} ms, {x_cold:.2f}x of the cold-weight floor | state-matched {x_matched:.2f}x "
                f"(GEMM probe {min(states):.0f}-{max(states):.0f} GFLOP/s during the steps, {floor_state:.0f} at "
                f"the floor)")
        if theirs is not None:
            diff = abs(state["losses"][0] - tlosses[0])
            line += (f" | PyTorch {theirs * 1e3:8.1f} ms/step ({flops / theirs / 1e9:5.1f} GFLOP/s)"
                     f" | ratio {ours / theirs:.2f} | first loss |diff| {diff:.1e}")
        if fused is not None:
            line += f" | PyTorch fused Adam {fused * 1e3:8.1f} ms/step (ratio {ours / fused:.2f})"
        if ref is not None:
            line += f" | reference {ref * 1e3:8.1f} ms/step ({ref / ours:.1f}x mi-ref)"
        if load.value is not None:
            line += f" | other load {100 * load.value:.0f}%, steal {100 * load.steal:.0f}%"
            if load.value + load.steal > 0.05:
                line += " (WARNING: machine busy, timings unreliable)"
        print(line, flush=True)
        rows.append((config, ours, theirs, fused, ref, flops, load, fl, x_floor, phases, x_matched,
                     (min(states), max(states), floor_state), fl_cold, x_cold))

    print()
    header = ("| config | mi-ref s/step | GEMM floor s | memory floor s | x of floor | state-matched x of floor "
              "| cold-weight GEMM floor s | x of cold-weight floor "
              "| GEMM probe: steps / floor | GFLOP/step | mi-ref GFLOP/s "
              "| share of numpy's GEMM peak | forward / backward / Adam / other | PyTorch s/step | mi-ref / PyTorch |")
    if args.fused_adam:
        header += " PyTorch fused-Adam s/step | mi-ref / fused |"
    if args.reference:
        header += " reference s/step |"
    print(header + " other load / steal |")
    print("|---" * header.count("|") + "|")
    for (config, ours, theirs, fused, ref, flops, other, fl, x_floor, phases, x_matched, (lo, hi, at), fl_cold,
         x_cold) in rows:
        split = "n/a"
        if phases:
            total = sum(phases.values())
            split = " / ".join(f"{100 * phases.get(p, 0.0) / total:.0f}%" for p in ("forward", "backward", "Adam", "other"))
        cells = [config, f"{ours:.4f}", f"{fl['gemm']:.4f}", f"{fl['memory']:.4f}", f"{x_floor:.2f}",
                 f"**{x_matched:.2f}**", f"{fl_cold['gemm']:.4f}", f"**{x_cold:.2f}**",
                 f"{lo:.0f}-{hi:.0f} / {at:.0f}",
                 f"{flops / 1e9:.2f}", f"{flops / ours / 1e9:.1f}", f"{100 * flops / ours / 1e9 / peak:.0f}%", split,
                 f"{theirs:.4f}" if theirs else "n/a", f"{ours / theirs:.2f}" if theirs else "n/a"]
        if args.fused_adam:
            cells += [f"{fused:.4f}", f"{ours / fused:.2f}"] if fused else ["n/a", "n/a"]
        if args.reference:
            cells.append(f"{ref:.4f}")
        cells.append(f"{100 * other.value:.0f}% / {100 * other.steal:.0f}%" if other.value is not None else "n/a")
        print("| " + " | ".join(cells) + " |")
    print(f"\nmachine: {machine}, float64, batch {BATCH}, BLAS threads: {threads}; clock {args.clock}; median of "
          f"{args.repeats} steps (blocks of {args.block}, alternating) after {args.warmup} warm-up steps; numpy's "
          f"GEMM peak in the same run: {peak:.1f} GFLOP/s ({peak_small:.1f} at (128x512)@(512x512), "
          f"{peak_big:.1f} at 1024^3); phases from a profile of {args.profile_steps} steps")
    if profiles:
        text = [f"# Profile of one training step per configuration (scripts/bench_steps.py, clock {args.clock})",
                f"# machine: {machine}; BLAS threads: {threads}; numpy's GEMM peak {peak:.1f} GFLOP/s", ""]
        for config, phases, profiled, fl, summary, fl_cold in profiles:
            text.append(f"## {config}: {1e3 * profiled:.1f} ms per profiled step")
            text.append("phase      profiled ms   floor ms (GEMM + memory)")
            for phase in ("forward", "backward", "Adam", "other"):
                text.append(f"{phase:10s} {1e3 * phases.get(phase, 0.0):10.1f}   {1e3 * fl['by_phase'].get(phase, 0.0):10.1f}")
            text.append(f"floor: GEMM {1e3 * fl['gemm']:.1f} ms ({fl['gemm_flops'] / 1e9:.2f} GFLOP), memory "
                        f"{1e3 * fl['memory']:.1f} ms ({fl['bytes'] / 1e9:.3f} GB, {fl['n_params'] / 1e6:.2f} M parameters)")
            text.append(f"cold-weight floor: GEMM {1e3 * fl_cold['gemm']:.1f} ms (by phase: " + ", ".join(
                f"{phase} {1e3 * fl_cold['by_phase'].get(phase, 0.0):.1f}" for phase in ("forward", "backward"))
                + " ms)")
            text.append(summary)
            text.append("")
        if args.profile_out:
            with open(args.profile_out, "w") as f:
                f.write("\n".join(text) + "\n")
            print(f"profile summary written to {args.profile_out}")
        else:
            print("\n" + "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
