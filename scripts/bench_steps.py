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

It also prints each step's FLOP count, counting matrix products only (GEMMs and the convolutions'
im2col GEMMs; forward + backward ~ 3 x forward, less the input gradient of each encoder's first layer,
which neither implementation computes), and the GFLOP/s reached, next to the GFLOP/s of a plain float64
GEMM (numpy, (128 x 512) @ (512 x 512) and 1024^3) measured in the same run.

Usage::

    python scripts/bench_steps.py                       # all four, 20 repeats
    python scripts/bench_steps.py --configs invertible encoders --repeats 10
    python scripts/bench_steps.py --reference           # also the models' own formulas (no speed wing)
    python scripts/bench_steps.py --adam-functional     # mi-ref's Adam returns new arrays (default: in place)
    python scripts/bench_steps.py --fused-adam          # also PyTorch with torch.optim.Adam(fused=True)

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

BATCH = 128
HALF = 392           # 14 x 28 pixels per view
CONFIGS = ("invertible", "conditioning", "critics", "encoders")


# ----------------------------------------------------------------------------------------------------
# the four configurations in mi-ref


# the variant of each experiment's paper preset that a configuration times
VARIANTS = {"invertible": ("invertible", "infonce"), "conditioning": ("conditioning", "infonce"),
            "critics": ("critics", "concat-infonce"), "encoders": ("encoders", "convnet-infonce-t2")}


def build(config, seed=0):
    """(g1, g2, critic, params) of one configuration: the models of the experiment's own paper-preset variant
    (``mi_ref.experiments``, so the benchmark cannot drift from the presets), params drawn from ``seed``."""
    if config not in VARIANTS:
        raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS}")
    name, variant = VARIANTS[config]
    exp = experiments.get(name)
    module = importlib.import_module(f"mi_ref.experiments.{name}")
    shape = (14, 28) if name == "encoders" else HALF
    chosen = [v for v in module.variants(exp.presets["paper"], shape) if v.name == variant]
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
# FLOPs (matrix products only; a GEMM (m x k) @ (k x n) is 2 m k n)


def dense_flops(batch_size, sizes):
    return sum(2 * batch_size * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def forward_flops(config, b=BATCH):
    """(forward GEMM FLOPs of the whole step, FLOPs of the encoders' first-layer input products)."""
    if config == "invertible":
        block = dense_flops(b, [HALF // 2, 512, 512, HALF - HALF // 2])
        enc, first = 30 * block, 2 * b * (HALF // 2) * 512
        crit = 2 * b * HALF * HALF + 2 * b * b * HALF
    elif config == "conditioning":
        enc, first = dense_flops(b, [HALF] * 6), 2 * b * HALF * HALF
        crit = 2 * b * HALF * HALF + 2 * b * b * HALF
    elif config == "critics":
        enc, first = dense_flops(b, [HALF, 300, 300, 100]), 2 * b * HALF * 300
        crit = 2 * (2 * b * 100 * 200) + 2 * b * b * 200
    elif config == "encoders":
        conv1 = 2 * b * 7 * 14 * (25 * 1) * 64
        conv2 = 2 * b * 4 * 7 * (25 * 64) * 128
        enc, first = conv1 + conv2 + 2 * b * 128 * 100, conv1
        crit = 2 * b * 100 * 100 + 2 * b * b * 100
    return 2 * enc + crit, 2 * first


def step_flops(config):
    """Forward + backward GEMM FLOPs: 3 x forward, minus the input gradients of the encoders' first layers."""
    fwd, first = forward_flops(config)
    return 3 * fwd - first


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
    elif config == "encoders":
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


def time_steps(steps, repeats, warmup, block=5, pause=0.2):
    """Median seconds per step of every function in ``steps``.

    The implementations are timed in alternating blocks of ``block`` steps, so that the slow drifts of a
    virtual machine's speed (measured here: the same step varies by up to 1.4x from minute to minute on an
    otherwise idle machine) affect all alike. Before each block a short pause lets the idle worker threads
    of the other library (OpenBLAS, OpenMP) go to sleep, and one untimed step brings threads and caches
    back, so every timed step runs in the steady state of a training loop.
    """
    for s in steps:
        for _ in range(warmup):
            s()
    times = [[] for _ in steps]
    while len(times[0]) < repeats:
        for i, s in enumerate(steps):
            time.sleep(pause)
            s()
            for _ in range(min(max(1, block), repeats - len(times[i]))):
                t0 = time.perf_counter()
                s()
                times[i].append(time.perf_counter() - t0)
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
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per implementation and configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--block", type=int, default=5,
                        help="timed steps per block; the implementations alternate block by block")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--fused-adam", action="store_true",
                        help="also time PyTorch with torch.optim.Adam(fused=True) (default: the per-tensor loop)")
    parser.add_argument("--adam-functional", action="store_true",
                        help="mi-ref's Adam returns new arrays every step (default: it overwrites the params "
                             "and state in place, as the training loops do)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the plain reference formulations (no fast primitives)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds alone (see mi_ref.accel.configure_malloc)")
    args = parser.parse_args(argv)
    malloc_tuned = False if args.default_malloc else accel.configure_malloc()

    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            torch = None

    threads = blas_threads()
    torch_text = (f"{torch.__version__} (2 threads)" if torch is not None
                  else "not used" if args.no_torch else "not installed")
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; numpy {onp.__version__} (BLAS threads: {threads}); "
          f"torch {torch_text}; "
          f"python {platform.python_version()}; mi-ref Adam {'functional' if args.adam_functional else 'in place'}; "
          f"malloc thresholds "
          f"{'raised (mi_ref.accel.configure_malloc)' if malloc_tuned else 'default'}")
    peak_small = gemm_gflops(128, 512, 512)
    peak_big = gemm_gflops(1024, 1024, 1024, repeats=5)
    print(f"float64 GEMM (numpy, same run): (128x512)@(512x512) {peak_small:.1f} GFLOP/s, "
          f"1024^3 {peak_big:.1f} GFLOP/s\n")

    rows = []
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
        with OtherLoad() as load:
            medians = dict(zip(names, time_steps(steps, args.repeats, args.warmup, args.block)))
        flops = step_flops(config)
        ours, theirs, ref = medians["mi-ref"], medians.get("PyTorch"), medians.get("reference")
        fused = medians.get("PyTorch fused Adam")
        line = (f"{config:13s} mi-ref {ours * 1e3:8.1f} ms/step ({flops / ours / 1e9:5.1f} GFLOP/s of "
                f"{flops / 1e9:.2f} GFLOP)")
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
        rows.append((config, ours, theirs, fused, ref, flops, load))

    print()
    header = ("| config | mi-ref s/step | PyTorch s/step | mi-ref / PyTorch | GFLOP/step | mi-ref GFLOP/s "
              "| PyTorch GFLOP/s |")
    if args.fused_adam:
        header += " PyTorch fused-Adam s/step | mi-ref / fused |"
    if args.reference:
        header += " reference s/step |"
    print(header + " other load / steal |")
    print("|---" * header.count("|") + "|")
    for config, ours, theirs, fused, ref, flops, other in rows:
        cells = [config, f"{ours:.4f}", f"{theirs:.4f}" if theirs else "n/a",
                 f"{ours / theirs:.2f}" if theirs else "n/a", f"{flops / 1e9:.2f}", f"{flops / ours / 1e9:.1f}",
                 f"{flops / theirs / 1e9:.1f}" if theirs else "n/a"]
        if args.fused_adam:
            cells += [f"{fused:.4f}", f"{ours / fused:.2f}"] if fused else ["n/a", "n/a"]
        if args.reference:
            cells.append(f"{ref:.4f}")
        cells.append(f"{100 * other.value:.0f}% / {100 * other.steal:.0f}%" if other.value is not None else "n/a")
        print("| " + " | ".join(cells) + " |")
    print(f"\nmachine: {machine}, float64, batch {BATCH}, 2 threads; median of {args.repeats} steps (blocks of "
          f"{args.block}, alternating) after {args.warmup} warm-up steps; float64 GEMM in the same run: "
          f"{peak_small:.1f} GFLOP/s "
          f"((128x512)@(512x512)), {peak_big:.1f} GFLOP/s (1024^3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
