"""A small PyTorch implementation checked against mi-ref's golden vectors: a worked example for porters.

The PyTorch code below was written from the conventions in ``manifest.json`` alone (not from mi-ref's
code): the bounds I_NCE, I_NWJ and TUBA, the four critics, dense layers and MLPs (plain and residual),
the paper's layer norm and ConvNet (its ReLU with the derivative 0 at 0 that ``torch.relu`` has), one Adam
update in both forms (``torch.optim.Adam`` for the textbook form, TensorFlow 1's form written out) and, since
those are all their parts, complete training steps of the "conditioning" and "critics" experiments. For each
component it loads the inputs and parameters, converts dense kernels to PyTorch's layout
(``nn.Linear.weight = W.T``), computes the outputs, backpropagates the documented scalar
``L = sum_k sum(output_k * cotangent_k)`` with ``torch.autograd.grad``, converts the gradients back to
mi-ref's layout and names, saves everything as ``COMPONENT/ARRAY`` in one .npz and prints the report of
:func:`mi_ref.verify.compare_results` -- the same as ``mi-ref verify VECTORS RESULTS.npz`` would.

Usage::

    mi-ref vectors --out vectors
    python -m mi_ref.porting.pytorch vectors                       # float64
    python -m mi_ref.porting.pytorch vectors --precision float32   # a float32 port, float32 tolerances
    mi-ref verify vectors vectors/torch_results_float64.npz        # the same check from the saved file

The results go to ``--out FILE``, by default ``VECTORS/torch_results_PRECISION.npz`` beside the golden
files (never into the current directory); the last line says where.

or from Python: ``results, reports = mi_ref.porting.pytorch.run("vectors")``. Exit code 0 when every component
passes, 1 otherwise. PyTorch is not a dependency of mi-ref: this module imports it only when used, and
:func:`torch_param` / :func:`torch_name` (mi-ref's parameter layouts and names to PyTorch's, from
:mod:`mi_ref.porting.names`) need no torch.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from ..registry import NONE, MissingDeclaration, declared
from ..verify import compare_results, format_reports, unchecked_components
from ..vectors import load_component, load_manifest
from .names import mi_param, torch_name, torch_param, torch_state

__all__ = ["BOUNDS", "CRITIC_PORTS", "ENCODER_PORTS", "Leaves", "adam_step", "convnet", "critic_scores", "default_out", "infonce",
           "layer_norm", "main", "mi_param", "mlp", "nwj", "run", "run_component", "same_pad", "torch_name",
           "torch_param", "torch_state", "tuba"]

torch = F = None


def _torch():
    """Import torch on first use (``ImportError`` with advice if it is absent)."""
    global torch, F
    if torch is None:
        try:
            import torch as torch_module
            import torch.nn.functional as functional
        except ImportError:
            raise ImportError("mi_ref.porting.pytorch needs PyTorch, which mi-ref does not depend on: "
                              "pip install torch") from None
        torch, F = torch_module, functional
    return torch


# ----------------------------------------------------------------------------------------------------
# the PyTorch implementation (PyTorch layouts: Linear weight (out, in))


def infonce(S):
    """log K + mean_i (S[i, i] - logsumexp_j S[i, j]); rows = u, columns = v, diagonal = positives."""
    K = S.shape[0]
    return np.log(K) + (torch.diagonal(S) - torch.logsumexp(S, dim=1)).mean()


def tuba(S, log_baseline=None):
    """1 + mean_i S[i, i] - mean_{i != j} exp(S[i, j] - l_j) - mean_j l_j   (l = 0 without a baseline)."""
    K = S.shape[0]
    shifted = S if log_baseline is None else S - log_baseline[None, :]
    off = shifted.masked_fill(torch.eye(K, dtype=torch.bool), float("-inf"))
    value = 1.0 + torch.diagonal(S).mean() - torch.exp(torch.logsumexp(off.reshape(-1), 0) - np.log(K * (K - 1)))
    return value if log_baseline is None else value - log_baseline.mean()


def nwj(S):
    """I_NWJ = TUBA(S - 1)."""
    return tuba(S - 1.0)


# estimator registry name -> bound(S) (TUBA with a log-baseline is called as tuba(S, l)); see CRITIC_PORTS
BOUNDS = {"infonce": infonce, "nwj": nwj, "tuba": tuba}


def mlp(layers, x, shortcuts=False):
    """layers: [(weight (out, in), bias)]; ReLU after all but the last; residual h <- layer(h) + h."""
    h = x
    for i, (weight, bias) in enumerate(layers):
        out = F.linear(h, weight, bias)
        if i < len(layers) - 1:
            out = torch.relu(out)
        h = out + h if shortcuts else out
    return h


def _inner_product_scores(p, u, v):
    return u @ v.T


def _bilinear_scores(p, u, v):
    return u @ (v @ p["W"]).T                              # W (d_v, d_u) as stored: not a Linear weight


def _separable_scores(p, u, v):
    return mlp(p["f"], u) @ mlp(p["h"], v).T


def _concat_scores(p, u, v):
    """m([u_i ; v_j]) over all pairs; row i = u_i, column j = v_j."""
    K = u.shape[0]
    pairs = torch.cat([u[:, None, :].expand(K, K, u.shape[1]), v[None, :, :].expand(K, K, v.shape[1])], dim=2)
    return mlp(p["layers"], pairs)[..., 0]


def critic_scores(kind, p, u, v):
    """S[i, j] = f(u_i, v_j) for the critic registered as ``kind`` (p: its parameters in PyTorch layout)."""
    return _critic_port(kind)[1](p, u, v)


# ----------------------------------------------------------------------------------------------------
# the ports, keyed by registry name: every estimator of mi_ref.bounds.ESTIMATORS and every critic of
# mi_ref.critics.CRITICS has an entry here, or NONE (no port; its components are left unchecked)

# ----------------------------------------------------------------------------------------------------
# loading golden vectors into tensors, and gradients back into mi-ref's names and layout


class Leaves:
    """Tensors made from a component's arrays; remembers how each gradient maps back to a golden name."""

    def __init__(self, arrays, dtype):
        self.arrays, self.dtype = arrays, dtype
        self.tracked = []            # (golden grad name, tensor, convert back)

    def _tensor(self, key, transpose=False):
        value = torch.tensor(self.arrays[key], dtype=self.dtype)
        return (value.T.contiguous() if transpose else value).requires_grad_(True)

    def input(self, name):
        t = self._tensor(f"input/{name}")
        self.tracked.append((f"grad/{name}", t, lambda g: g))
        return t

    def matrix(self, path):
        """A parameter used as stored (e.g. the bilinear critic's W)."""
        t = self._tensor(f"param/{path}")
        self.tracked.append((f"grad/param/{path}", t, lambda g: g))
        return t

    def linear(self, path):
        """(weight, bias) of the dense layer at ``path``, in PyTorch's layout (:func:`torch_param`), its
        gradient mapped back by :func:`mi_param`."""
        prefix = f"{path}/" if path else ""
        key = f"{prefix}W"
        weight = torch.tensor(np.ascontiguousarray(torch_param(key, self.arrays[f"param/{key}"])),
                              dtype=self.dtype).requires_grad_(True)
        self.tracked.append((f"grad/param/{key}", weight, lambda g: torch.as_tensor(mi_param(key, g.numpy()))))
        return weight, self.matrix(f"{prefix}b")

    def mlp(self, path, n_layers):
        prefix = f"{path}/" if path else ""
        return [self.linear(f"{prefix}layers/{i}") for i in range(n_layers)]

    def grads(self, outputs):
        """dL/d(every tracked tensor), L = sum_k sum(output_k * cotangent_k), in mi-ref's names and layout."""
        L = sum((out * torch.tensor(self.arrays[f"cotangent/{k}"], dtype=self.dtype)).sum()
                for k, out in outputs.items())
        tensors = [t for _, t, _ in self.tracked]
        grads = torch.autograd.grad(L, tensors, allow_unused=True)
        return {name: back(torch.zeros_like(t) if g is None else g).detach().numpy()
                for (name, t, back), g in zip(self.tracked, grads)}


def _n_layers(arrays, path=""):
    prefix = f"param/{path}/layers/" if path else "param/layers/"
    return len({k[len(prefix):].split("/")[0] for k in arrays if k.startswith(prefix)})


def _mlp_at(leaves, path):
    return leaves.mlp(path, _n_layers(leaves.arrays, path))


def _critic_params(leaves, kind, path):
    """The parameters of critic ``kind`` stored under ``path``, as tracked tensors in PyTorch layout."""
    return _critic_port(kind)[0](leaves, f"{path}/" if path else "")


# critic registry name -> (params(leaves, prefix), scores(params, u, v))
CRITIC_PORTS = {
    "inner_product": (lambda leaves, prefix: {}, _inner_product_scores),
    "bilinear": (lambda leaves, prefix: {"W": leaves.matrix(f"{prefix}W")}, _bilinear_scores),
    "separable": (lambda leaves, prefix: {side: _mlp_at(leaves, f"{prefix}{side}") for side in ("f", "h")},
                  _separable_scores),
    "concat": (lambda leaves, prefix: {"layers": _mlp_at(leaves, prefix.rstrip("/"))}, _concat_scores),
}

WHERE = {"critic": "CRITIC_PORTS in mi_ref/porting/pytorch.py", "estimator": "BOUNDS in mi_ref/porting/pytorch.py",
         "encoder": "ENCODER_PORTS in mi_ref/porting/pytorch.py"}


def _port(table, kind, name):
    """The port of the ``kind`` (critic or estimator) registered as ``name``; an error naming the table to
    add it to if it has none."""
    port = declared(table, name, kind, "PyTorch port", WHERE[kind])
    if port == NONE:
        raise MissingDeclaration(f"{kind} {name!r} has no PyTorch port ({WHERE[kind]} says {NONE!r})")
    return port


def _critic_port(kind):
    return _port(CRITIC_PORTS, "critic", kind)


def _bound(estimator):
    return _port(BOUNDS, "estimator", estimator)


def _ported(config):
    """False if the component's critic, estimator or encoder is declared NONE here (left unchecked, like any
    component this example does not cover); a kind not declared at all is an error."""
    for kind, table in (("critic", CRITIC_PORTS), ("estimator", BOUNDS), ("encoder", ENCODER_PORTS)):
        if kind in config and declared(table, config[kind], kind, "PyTorch port", WHERE[kind]) == NONE:
            return False
    return True


def adam_step(config, arrays, dtype):
    """One Adam update of every ``param/PATH`` from the stored gradient and moments (no gradients)."""
    paths = [k[len("param/"):] for k in arrays if k.startswith("param/")]
    lr, b1, b2, eps, step = config["lr"], config["b1"], config["b2"], config["eps"], int(arrays["const/step"])
    out = {}
    if config["form"] == "textbook":                   # torch.optim.Adam is the textbook form
        params = [torch.nn.Parameter(torch.tensor(arrays[f"param/{p}"], dtype=dtype)) for p in paths]
        opt = torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps)
        for param, p in zip(params, paths):
            param.grad = torch.tensor(arrays[f"input/g/{p}"], dtype=dtype)
            opt.state[param] = {"step": torch.tensor(float(step)),
                                "exp_avg": torch.tensor(arrays[f"input/m/{p}"], dtype=dtype),
                                "exp_avg_sq": torch.tensor(arrays[f"input/v/{p}"], dtype=dtype)}
        opt.step()
        for param, p in zip(params, paths):
            out[f"output/param/{p}"] = param.detach().numpy()
            out[f"output/m/{p}"] = opt.state[param]["exp_avg"].numpy()
            out[f"output/v/{p}"] = opt.state[param]["exp_avg_sq"].numpy()
        return out
    t = step + 1                                      # TensorFlow 1's AdamOptimizer, written out
    lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    for p in paths:
        g, m, v = (torch.tensor(arrays[f"input/{k}/{p}"], dtype=dtype) for k in "gmv")
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        param = torch.tensor(arrays[f"param/{p}"], dtype=dtype) - lr_t * m / (v.sqrt() + eps)
        out.update({f"output/param/{p}": param.numpy(), f"output/m/{p}": m.numpy(), f"output/v/{p}": v.numpy()})
    return out


def layer_norm(x, scale, bias, eps):
    """(x - mean) / (std + eps) * scale + bias over (H, W, C), std the population std (unbiased=False); not
    torch.nn.LayerNorm, which divides by sqrt(var + eps)."""
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mu) / (std + eps) * scale + bias


def same_pad(x, kernel, stride):
    """TensorFlow's 'same' padding of an NCHW batch: out = ceil(n / s), total = max((out - 1) s + k - n, 0),
    the odd pixel after (bottom, right)."""
    pads = []
    for n in (x.shape[3], x.shape[2]):                  # F.pad takes the last axis first: (left, right, top, bottom)
        out = -(-n // stride)
        total = max((out - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def convnet(leaves, x, height, width, relu=None, path=""):
    """The paper's ConvNet in PyTorch (NCHW inside): conv 5x5/s2 'same' + ReLU, twice; the paper's layer norm
    over (C, H, W) with per-channel scale and bias; global average pooling; dense. ``relu`` defaults to
    ``torch.relu`` (derivative 0 at 0, as in TensorFlow and mi-ref); ``path``: where its parameters are
    stored ("" for a ConvNet component, e.g. "g1" in a training step). Returns the codes and the two conv
    layers' pre-activations (NCHW)."""
    relu = relu or torch.relu
    prefix = f"{path}/" if path else ""
    h = x.reshape(-1, 1, height, width)
    pre = []
    for layer in ("conv1", "conv2"):
        weight, bias = leaves.linear(f"{prefix}{layer}")
        pre.append(F.conv2d(same_pad(h, weight.shape[-1], 2), weight, bias, stride=2))
        h = relu(pre[-1])
    scale, shift = leaves.matrix(f"{prefix}norm/scale"), leaves.matrix(f"{prefix}norm/bias")
    mu = h.mean(dim=(1, 2, 3), keepdim=True)
    std = h.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    h = (h - mu) / (std + 1e-6) * scale[None, :, None, None] + shift[None, :, None, None]
    weight, bias = leaves.linear(f"{prefix}out")
    return F.linear(h.mean(dim=(2, 3)), weight, bias), pre


# encoder registry name (and the flow that training-step components name) -> codes(leaves, path, x, config)
# of the encoder whose parameters are stored under ``path``; NONE: this example does not port it (its
# components are left unchecked)
ENCODER_PORTS = {
    "mlp": lambda leaves, path, x, config: mlp(_mlp_at(leaves, path), x, config["shortcuts"]),
    "convnet": lambda leaves, path, x, config: convnet(leaves, x, config["H"], config["W"], path=path)[0],
    "realnvp": NONE,
}


def run_component(name, config, arrays, dtype, relu=None):
    """Outputs (and aux values) and gradients of one component; None if this example does not cover it.
    ``relu``: the ReLU the ConvNet components use (default ``torch.relu``)."""
    _torch()
    if name.startswith("adam_step"):
        return adam_step(config, arrays, dtype)
    if not _ported(config):
        return None
    leaves = Leaves(arrays, dtype)
    aux = {}
    if name.startswith("bound_"):
        S = leaves.input("scores")
        baseline = leaves.input("log_baseline") if "input/log_baseline" in arrays else None
        value = tuba(S, baseline) if baseline is not None else _bound(config["estimator"])(S)
        outputs = {"bound": value}
    elif name.startswith("critic_"):
        u, v = leaves.input("u"), leaves.input("v")
        p = _critic_params(leaves, config["critic"], "")
        outputs = {"scores": critic_scores(config["critic"], p, u, v)}
    elif name == "dense":
        x = leaves.input("x")
        weight, bias = leaves.linear("")
        outputs = {"y": F.linear(x, weight, bias)}
    elif name == "layer_norm":
        x = leaves.input("x")
        outputs = {"y": layer_norm(x, leaves.matrix("scale"), leaves.matrix("bias"), config["eps"])}
    elif name.startswith("convnet_"):
        x = leaves.input("x")
        y, pre = convnet(leaves, x, config["H"], config["W"], relu)
        outputs = {"y": y}
        if "blank" in config:
            aux = {f"pre_activation_{i + 1}": a.permute(0, 2, 3, 1) for i, a in enumerate(pre)}
            aux["tie_fraction"] = torch.stack([(a == 0).to(dtype).mean() for a in pre])
    elif name in ("mlp", "mlp_residual"):
        x = leaves.input("x")
        outputs = {"y": mlp(leaves.mlp("", _n_layers(arrays)), x, config["shortcuts"])}
    elif name.startswith("train_") and "encoder" in config:
        x1, x2 = leaves.input("x1"), leaves.input("x2")
        encode = _port(ENCODER_PORTS, "encoder", config["encoder"])
        u, v = encode(leaves, "g1", x1, config), encode(leaves, "g2", x2, config)
        S = critic_scores(config["critic"], _critic_params(leaves, config["critic"], "critic"), u, v)
        bound = _bound(config["estimator"])(S)
        outputs = {"loss": -bound}
        aux = {"u": u, "v": v, "scores": S, "bound": bound}
    else:
        return None
    results = {f"output/{k}": t.detach().numpy() for k, t in outputs.items()}
    results.update({f"aux/{k}": t.detach().numpy() for k, t in aux.items()})
    results.update(leaves.grads(outputs))
    return results


def run(vectors_dir, precision="float64"):
    """Compute every covered component in PyTorch: ``(results, reports)``.

    ``results``: ``{"COMPONENT/ARRAY": numpy array}`` (what ``mi-ref verify`` reads); ``reports``: one
    :class:`mi_ref.verify.Report` per component, compared at the tolerances of ``precision``. Components
    marked float64-only in the manifest are left out of a float32 run.
    """
    _torch()
    dtype = {"float64": torch.float64, "float32": torch.float32}[precision]
    manifest = load_manifest(vectors_dir)
    results = {}
    for name, entry in manifest["components"].items():
        if precision == "float32" and entry["float64_only"]:
            continue
        arrays = load_component(vectors_dir, name, manifest)
        computed = run_component(name, entry["config"], arrays, dtype)
        if computed is not None:
            results.update({f"{name}/{k}": v for k, v in computed.items()})
    return results, compare_results(vectors_dir, results, precision=precision)


def default_out(vectors_dir, precision):
    """Where :func:`main` saves the results without ``--out``: ``VECTORS/torch_results_PRECISION.npz``, beside
    the golden files (one file per precision, so a float32 run does not replace the float64 one)."""
    return Path(vectors_dir) / f"torch_results_{precision}.npz"


def main(argv=None):
    """The command line: run the port on a vectors directory, save the results, print the report. Exit code
    0 when every component passes, 1 otherwise, 2 for bad input (one line on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vectors", help="a directory written by `mi-ref vectors --out DIR`")
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64",
                        help="the dtype of the PyTorch computation and the tolerances used (default float64)")
    parser.add_argument("--out", default=None, metavar="RESULTS.npz",
                        help="where to save the results as COMPONENT/ARRAY (default: "
                             "VECTORS/torch_results_PRECISION.npz, beside the golden files)")
    parser.add_argument("--show-unchecked", action="store_true", help="list the components the port does not cover")
    args = parser.parse_args(argv)
    try:
        _torch()
    except ImportError:
        print("PyTorch is not installed: nothing to check (pip install torch to run this example)")
        return 0
    out = Path(args.out) if args.out is not None else default_out(args.vectors, args.precision)
    try:
        load_manifest(args.vectors)
        if out.suffix != ".npz":
            raise ValueError(f"--out must name an .npz file, got {out}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; name the .npz file to write, e.g. {out / 'results.npz'}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results, reports = run(args.vectors, args.precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **results)
    print(format_reports(reports, unchecked_components(args.vectors, reports), show_unchecked=args.show_unchecked))
    print(f"\nsaved {len(results)} arrays to {out}; check them again with: mi-ref verify {args.vectors} {out}")
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
