"""Golden vectors: exact float64 numbers for every component of mi-ref, to check other implementations.

``generate(out_dir, seed)`` (CLI: ``mi-ref vectors --out DIR [--seed S]``) writes one ``COMPONENT.npz`` per
component plus ``manifest.json``. A porter loads a component's inputs and parameters into their own
implementation (PyTorch, JAX, TensorFlow, ...), computes the outputs and the gradients, and checks them
with :func:`mi_ref.verify.compare` (CLI: ``mi-ref verify DIR RESULTS.npz``).

Arrays inside a component file (plain ``.npy`` members, readable with ``numpy.load(allow_pickle=False)``):

* ``input/NAME``      a differentiable input (float64), e.g. ``input/x``, ``input/scores``;
* ``const/NAME``      fixed, non-differentiable structure (int64), e.g. ``const/perms``, ``const/step``;
* ``param/PATH``      a trainable parameter (float64); PATH joins the keys of mi-ref's nested params with
                      "/" (``param/layers/0/W``), listed in mi-ref's canonical flattening order
                      (:mod:`mi_ref.tree`: sorted dict keys, list index order, depth first);
* ``output/NAME``     a value of the component (what it returns);
* ``cotangent/NAME``  a fixed random array with the shape of ``output/NAME`` (exactly 1.0 for a scalar
                      output such as a bound or a loss);
* ``aux/NAME``        an intermediate value (e.g. the codes u, v and the scores inside a training step), to
                      locate a discrepancy; not part of the scalar L below and optional when comparing;
* ``grad/NAME``       dL / d ``input/NAME``;  ``grad/param/PATH``: dL / d ``param/PATH``, where

      L = sum over the outputs k of sum(output_k * cotangent_k)    (elementwise product, summed).

  This is the vector-Jacobian product every framework offers: ``torch.autograd.grad(outputs, inputs,
  grad_outputs=cotangents)``, ``jax.vjp(f, *primals)[1](cotangents)``, ``tf.GradientTape.gradient(outputs,
  sources, output_gradients=cotangents)``. For a scalar output with cotangent 1.0 the stored gradient is
  simply the gradient of that output (of the bound, of the training loss).

Components (:func:`component_names`; sizes are small, the formulas are the paper's):

* bounds: ``bound_infonce``, ``bound_nwj``, ``bound_tuba`` on 6 x 6 scores, their ``*_large`` variants with
  scores of magnitude ~1e3 (for I_NWJ and TUBA with off-diagonal entries <= 700, so the value stays finite
  in float64), ``bound_tuba_baseline`` (TUBA with a log-baseline per column);
* critics: ``critic_inner_product``, ``critic_bilinear``, ``critic_separable``, ``critic_concat``;
* layers and encoders: ``dense``, ``mlp``, ``mlp_residual``, ``conv2d_odd`` and ``conv2d_even`` (stride 2,
  'same' padding), ``layer_norm``, ``convnet_4x8`` (small channels) and ``convnet_14x28`` (the paper's
  ConvNet exactly);
* flows: ``realnvp_block_shift``, ``realnvp_block_affine``, ``realnvp_chain`` (3 blocks with their
  permutations): forward, log-det and inverse;
* ``jacobian_mlp_residual``, ``jacobian_realnvp``: per-example Jacobians, singular values, log condition
  numbers (and their percentiles), the values from :mod:`mi_ref.jacobian`; their gradients by autograd
  through an op-by-op formulation of the model (second derivatives; mi-ref's fast primitives are first
  order only);
* ``adam_step``: one Adam update (values only: no framework differentiates through its optimizer);
* ``train_invertible``, ``train_conditioning``, ``train_critics_infonce``, ``train_critics_nwj``: one training
  step (loss and every gradient, i.e. ``value_and_grad`` of :func:`mi_ref.objectives.mi_loss`) of those
  experiments at a small size.

Every input, parameter and cotangent is drawn in float64 and rounded to float32, so a float32
implementation starts from exactly the same numbers; all outputs and gradients are computed in float64.
Parameters are random draws of moderate size (kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.25), layer-norm
scales ~ 1 + N(0, 1 / 16)), not the experiments' initializers, so that every term of every formula
matters (a zero bias or a near-identity flow would hide a bug).

Determinism: every component draws from its own stream, ``SeedSequence([seed, crc32(name), ...])``, so the
numbers of one component do not depend on which other components exist; the zip members carry a fixed
timestamp, so two generations with the same seed (and the same numpy/BLAS) are byte-identical.
The conventions a porter needs (weight layouts, padding, permutations, score axes) are written into
``manifest.json`` (see :data:`CONVENTIONS`).
"""

import io
import json
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import autograd.numpy as np
import numpy as onp
from autograd import grad, value_and_grad

from . import __version__, bounds, critics, flows, jacobian, nn, objectives, optim
from .results import _atomic_write, atomic_write_text
from .tree import tree_flatten, tree_map, tree_unflatten

FORMAT = "mi-ref golden vectors"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)     # the earliest date a zip header can hold; fixed for byte identity
CATEGORIES = ("input", "const", "param", "cotangent", "output", "aux", "grad")

CONVENTIONS = {
    "arrays": (
        "input/NAME: differentiable input; const/NAME: fixed integer structure (not differentiated); "
        "param/PATH: trainable parameter; output/NAME: what the component returns; cotangent/NAME: fixed "
        "array with the shape of output/NAME; aux/NAME: intermediate value, not part of L, optional when "
        "comparing; grad/NAME = dL/d input/NAME; grad/param/PATH = dL/d param/PATH."),
    "scalar": (
        "L = sum over outputs k of sum(output_k * cotangent_k). Scalar outputs (bounds, losses) have "
        "cotangent 1.0, so their grads are plain gradients. PyTorch: torch.autograd.grad(outputs, inputs, "
        "grad_outputs=cotangents); JAX: jax.vjp(f, *primals)[1](cotangents); TensorFlow: "
        "tape.gradient(outputs, sources, output_gradients=cotangents)."),
    "dtypes": (
        "Float arrays are float64; const arrays int64. Every input, parameter and cotangent is exactly "
        "representable in float32 (drawn in float64, rounded to float32), so a float32 port starts from the "
        "same numbers. Outputs and gradients are float64 results of mi-ref."),
    "param_order": (
        "param/PATH: PATH joins the keys of mi-ref's nested params with '/'; the canonical flattening order is "
        "sorted dict keys, list items in index order, depth first (mi_ref.tree.tree_flatten), e.g. "
        "layers/0/W, layers/0/b, layers/1/W, ... The param/ arrays of each file are listed in that order."),
    "dense": (
        "A dense layer stores W with shape (in, out) and b with shape (out,) and computes y = x W + b on "
        "row-major batches x: (B, in). PyTorch nn.Linear(in, out): weight = W.T (shape (out, in)), bias = b. "
        "Keras Dense kernel = W; Flax nn.Dense kernel = W."),
    "mlp": (
        "MLP(dims): one dense layer per entry of dims (param layers/i/W, layers/i/b), ReLU after every layer "
        "but the last. With shortcuts every layer, the last too, is residual: h <- layer(h) + h, i.e. "
        "h <- relu(h W + b) + h for hidden layers and y = h W + b + h for the last."),
    "relu": "relu(x) = max(x, 0); inputs are random, so no pre-activation is exactly 0.",
    "softplus": "softplus(x) = log(1 + exp(x)), computed stably (logaddexp(0, x)).",
    "conv2d": (
        "Images are NHWC (B, H, W, C); kernels are (kh, kw, C_in, C_out) (TensorFlow's HWIO). Cross-"
        "correlation: y[b, p, q, o] = sum_{i, j, c} xpad[b, p*s + i, q*s + j, c] * W[i, j, c, o] + bias[o]. "
        "Padding is TensorFlow's 'same' rule, per spatial axis of size n with kernel k and stride s: "
        "out = ceil(n / s); pad_total = max((out - 1) * s + k - n, 0); pad_before = pad_total // 2; "
        "pad_after = pad_total - pad_before (the odd pixel goes after: bottom, right). PyTorch: "
        "weight = W.permute(3, 2, 0, 1) (C_out, C_in, kh, kw), input x.permute(0, 3, 1, 2) (NCHW), pad "
        "explicitly with F.pad(x, (left, right, top, bottom)) and call conv2d with padding=0 (PyTorch's "
        "symmetric padding and padding='same' do not reproduce this rule for stride 2)."),
    "layer_norm": (
        "For each example b: mu = mean(x[b]) and sigma = sqrt(mean((x[b] - mu)^2)) over all of (H, W, C) (the "
        "population standard deviation), y = (x - mu) / (sigma + eps) * scale[c] + bias[c], eps = 1e-6 added "
        "to sigma, NOT inside the square root (the paper's notebook divides by K.std(x) + 1e-6); scale and "
        "bias one value per channel (last axis). torch.nn.LayerNorm and tf.keras LayerNormalization compute "
        "(x - mu) / sqrt(var + eps) instead and differ by ~eps / (2 sigma) relative: write it out."),
    "convnet": (
        "x (B, H*W) is reshaped row-major to (B, H, W, 1); conv1 5x5 stride 2 'same' + bias, ReLU; conv2 5x5 "
        "stride 2 'same' + bias, ReLU; layer norm over (h, w, c) as 'layer_norm' (eps 1e-6 added to the std); "
        "mean over (h, w); dense 'out'. Params conv1/W, conv1/b, conv2/W, conv2/b, norm/scale, norm/bias, "
        "out/W, out/b."),
    "coupling": (
        "RealNVP block on d values, h = d // 2: first the block's fixed permutation z = x[:, perm], then the "
        "coupling: z_a = z[:, :h] passes unchanged and feeds the conditioner MLP 'net' (ReLU hidden layers, "
        "linear output); z_b = z[:, h:]. Shift-only: the net outputs t (d - h values) and y_b = z_b + t. "
        "Affine: the net outputs [t ; r] (first d - h values are t, the next d - h are r), scale = 1e-7 + "
        "softplus(r), y_b = z_b * scale + t, log|det| = sum(log scale) (0 for shift-only). The block's output "
        "is y = concat(z_a, y_b). Inverse: z = concat(y_a, (y_b - t(y_a)) / scale(y_a)), x = "
        "z[:, argsort(perm)]. This is the paper's order: its notebook builds TFP's Chain([coupling_1, "
        "permute_1, ..., coupling_n, permute_n]), which applies its list from the end, so every block "
        "permutes and then couples, and the flow ends with a coupling."),
    "permutation": (
        "z = x[:, perm]: column j of the permuted values is column perm[j] of the block's input (torch: "
        "x[:, perm]; TFP: tfb.Permute(perm)); the inverse is x = z[:, argsort(perm)]. A chain stores "
        "const/perms (n_blocks, d): block k starts with perms[k]; blocks run in index order forward and in "
        "reverse order for the inverse. No permutation in these files is its own inverse, so the two "
        "directions cannot be confused unnoticed. log_det of a chain is the sum over blocks "
        "(permutations have |det| = 1)."),
    "scores": (
        "Score matrices S (K, K): S[i, j] = f(u_i, v_j); rows index the view-1 codes u (x), columns the view-2 "
        "codes v (y); the diagonal S[i, i] holds the K positive pairs, the off-diagonal entries the negatives."),
    "bounds": (
        "I_NCE = log K + mean_i(S[i, i] - logsumexp_j S[i, j]). TUBA = 1 + mean_i S[i, i] - "
        "mean_{i != j} exp(S[i, j] - l_j) - mean_j l_j, with an optional log-baseline l (K,) per column (l = 0: "
        "1 + mean_i S[i, i] - exp(logmeanexp_{i != j} S[i, j])). I_NWJ = TUBA(S - 1). All in nats."),
    "critics": (
        "inner_product: S = u v^T. bilinear: param W (d_v, d_u), S = u (v W)^T, i.e. S[i, j] = "
        "sum_{a, b} u[i, a] W[b, a] v[j, b]. separable: S = f(u) h(v)^T with MLPs f (params f/...) and h "
        "(params h/...). concat: S[i, j] = m([u_i ; v_j]) with an MLP m (params layers/...) whose first "
        "kernel's rows 0..d_u-1 multiply u_i and rows d_u..d_u+d_v-1 multiply v_j; scalar output."),
    "objective": (
        "Training steps: params {g1, g2, critic}; u = g1(x1), v = g2(x2), S = critic(u, v), "
        "loss = -I_EST(S) (mi_ref.objectives.mi_loss); output/loss with cotangent 1.0, so grad/param/... is "
        "the gradient of the loss that one optimizer step uses. The Adam update alone is adam_step (textbook) "
        "and adam_step_tf (TensorFlow 1); train_step_invertible is a whole step: loss, gradients and the "
        "TF-form Adam update from the paper's initialization."),
    "jacobian": (
        "J[b, o, i] = d y[b, o] / d x[b, i] (B, out, in) per example; singular values per example in "
        "descending order (B, min(out, in)); log condition number = log(sigma_max / sigma_min) (natural log). "
        "aux/condition_percentiles = (min, p20, p40, p60, p80, max) of the log condition numbers over the "
        "batch (numpy's default 'linear' percentiles)."),
    "adam": (
        "Both forms keep m' = b1 m + (1 - b1) g and v' = b2 v + (1 - b2) g^2 with t = step + 1. Textbook "
        "(Kingma and Ba; torch.optim.Adam), config form 'textbook': param' = param - lr * (m' / (1 - b1^t)) / "
        "(sqrt(v' / (1 - b2^t)) + eps). TensorFlow 1 (tf.train.AdamOptimizer; the paper's optimizer), config "
        "form 'tf': lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t), param' = param - lr_t * m' / (sqrt(v') + eps): "
        "eps is added to sqrt(v') WITHOUT bias correction, i.e. the textbook form with eps / sqrt(1 - b2^t) "
        "(3.2e-7 at t = 1). With gradients near 1e-8, as here and as in the paper's 1e-4-initialized flows, "
        "the forms differ by a large fraction of the step. const/step is the number of steps taken before "
        "this one (PyTorch's state['step'] before the call)."),
    "constant_outputs": (
        "An output that does not depend on the inputs or params (the log-det of a shift-only flow, always 0) "
        "still has a cotangent array but adds nothing to L: leave it out of your VJP call (PyTorch refuses "
        "outputs that do not require grad)."),
    "structure_seed": (
        "Each component's config holds structure_seed, the seed mi-ref draws its fixed random structure "
        "(the RealNVP permutations) from, so that `recompute` can rebuild the component from its manifest "
        "entry. A port reads that structure from the const/ arrays instead and needs no seed."),
}

# The same conventions as values a program can read (manifest.json["settings"]).
SETTINGS = {
    "mode": "notebook",
    "dtype": "float64",
    "dense": {"W_shape": "(in, out)", "formula": "y = x W + b"},
    "relu_derivative_at_0": 0.5,
    "conv2d": {"layout": "NHWC", "kernel": "(kh, kw, C_in, C_out)", "padding": "tensorflow_same",
               "odd_padding_pixel": "after"},
    "layer_norm": {"formula": "(x - mean) / (std + eps) * scale + bias", "axes": "all but the batch axis",
                   "std": "population (divide by n)", "eps": 1e-6, "eps_added_to": "std",
                   "scale_and_bias": "one per channel (last axis)"},
    "realnvp": {"block_order": ["permute", "couple"], "permutation": "z = x[:, perm]",
                "inverse_permutation": "x = z[:, argsort(perm)]", "chain": "blocks in index order",
                "ends_with": "couple", "split": "z[:, :d // 2] conditions, z[:, d // 2:] is transformed",
                "net_output": "[shift, raw scale]", "scale": "1e-7 + softplus(raw)",
                "no_permutation_is_self_inverse": True},
    "scores": {"rows": "u = g1(x1)", "columns": "v = g2(x2)", "positives": "diagonal"},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "step": "const/step = steps taken before; t = step + 1",
             "forms": {"textbook": "p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)",
                       "tf": "p - (lr * sqrt(1 - b2^t) / (1 - b1^t)) * m / (sqrt(v) + eps)"}},
}


# ----------------------------------------------------------------------------------------------------
# components: what each golden vector file holds


@dataclass
class Built:
    """A component made concrete from its config (see :class:`Component`)."""

    forward: object                 # forward(inputs, params) -> (outputs, aux): the stored values
    template: object                # params tree of the right shapes (values unused)
    draw_inputs: object             # draw_inputs(rng) -> {name: float64 array}
    meanings: dict                  # "input/x", "output/y", ... -> meaning (inputs, consts, outputs, aux)
    consts: dict = field(default_factory=dict)     # name -> int64 array
    traced: object = None           # traced(inputs, params) -> outputs, differentiable by autograd
    differentiable: bool = True     # False: no cotangents and no gradients are stored
    param_notes: dict = field(default_factory=dict)  # path -> meaning overriding the generic description
    param_scale: float = None       # draw every param from N(0, param_scale^2) instead of _draw_params
    draw_params: object = None      # draw_params(rng) -> params, overriding both


@dataclass(frozen=True)
class Component:
    """One golden-vector file: a named computation of mi-ref at a fixed small size.

    ``build(config) -> Built`` constructs the models from ``config`` (which includes ``structure_seed``, the
    seed of any fixed random structure such as permutations), so a file can be recomputed from its
    manifest entry alone (:func:`recompute`).
    """

    name: str
    summary: str
    functions: tuple
    config: dict
    build: object
    float64_only: str = None        # why float32 implementations are not expected to match, if so


def _f32(a):
    """Round float64 values to the nearest float32 (and back): exactly representable in both."""
    return onp.asarray(a, dtype=onp.float64).astype(onp.float32).astype(onp.float64)


def _normal(rng, shape, std=1.0):
    return _f32(std * rng.standard_normal(shape))


def _draw_params(template, rng):
    """Random params shaped like ``template``: kernels N(0, 1/fan_in), biases N(0, 1/4), scales 1 + N(0, 1/16)."""
    def draw(path, leaf):
        shape = onp.shape(leaf)
        if path.split("/")[-1] == "scale":
            return _f32(1.0 + 0.25 * rng.standard_normal(shape))
        if len(shape) <= 1:
            return _normal(rng, shape, 0.5)
        fan_in = int(onp.prod(shape[:-1]))
        return _normal(rng, shape, 1.0 / onp.sqrt(fan_in))
    flat = tree_flatten(template)
    return tree_unflatten(template, [draw(p, v) for p, v in flat]) if flat else tree_map(lambda v: v, template)


def _shape_only(model):
    return model.init(onp.random.default_rng(0))


# --- bounds


def _bound_build(config):
    k, estimator, kind = config["K"], config["estimator"], config["scores"]

    def draw(rng):
        if kind == "normal":
            scores = _f32(_normal(rng, (k, k), 2.0) + 3.0 * onp.eye(k))
        else:       # multiples of 1/64 of magnitude up to ~1000: exact in float32, and so are their differences
            scores = rng.integers(-64000, 64001, size=(k, k)) / 64.0
            if estimator == "infonce":
                row_max = scores[0].max()
                scores[0, 0] = scores[0, 1] = row_max + 1.0          # a tie for the row maximum
            else:       # keep exp(off-diagonal) finite: off-diagonal <= 700, one of them exactly 700
                off = ~onp.eye(k, dtype=bool)
                scores[off] = onp.minimum(scores[off], 700.0)
                scores[0, k - 1] = 700.0
        inputs = {"scores": _f32(scores)}
        if config.get("log_baseline"):
            inputs["log_baseline"] = _normal(rng, (k,))
        return inputs

    def forward(inputs, params):
        s = inputs["scores"]
        if estimator == "infonce":
            value = bounds.infonce(s)
        elif estimator == "nwj":
            value = bounds.nwj(s)
        else:
            value = bounds.tuba(s, inputs.get("log_baseline"))
        return {"bound": value}, {}

    name = {"infonce": "I_NCE", "nwj": "I_NWJ", "tuba": "TUBA"}[estimator]
    meanings = {"input/scores": f"score matrix S ({k}, {k}): rows index u (view 1), columns v (view 2), "
                                "diagonal = positive pairs" + (", large magnitudes" if kind == "large" else ""),
                "output/bound": f"{name}(S) in nats (scalar)"}
    if config.get("log_baseline"):
        meanings["input/log_baseline"] = (f"log-baseline l ({k},), one value per column j: TUBA uses "
                                          "exp(S[i, j] - l_j)")
    return Built(forward, {}, draw, meanings)


# --- critics


def _critic_build(config):
    k, kind = config["K"], config["critic"]
    d_u, d_v = config["d_u"], config["d_v"]
    notes = {}
    if kind == "inner_product":
        critic = critics.inner_product()
    elif kind == "bilinear":
        critic = critics.bilinear(d_u, d_v)
        notes["W"] = f"bilinear critic matrix W ({d_v}, {d_u}) = (d_v, d_u): S = u (v W)^T (not a Linear weight)"
    elif kind == "separable":
        critic = critics.separable(d_u, d_v, hidden=config["hidden"], out_dim=config["out_dim"])
    else:
        critic = critics.concat(d_u, d_v, hidden=config["hidden"])
        notes["layers/0/W"] = (f"dense kernel W (in={d_u + d_v}, out={config['hidden'][0]}) of m's first layer: "
                               f"rows 0..{d_u - 1} multiply u_i, rows {d_u}..{d_u + d_v - 1} multiply v_j; "
                               "h = [u_i ; v_j] W + b")

    def draw(rng):
        return {"u": _normal(rng, (k, d_u)), "v": _normal(rng, (k, d_v))}

    def forward(inputs, params):
        return {"scores": critic.apply(params, inputs["u"], inputs["v"])}, {}

    meanings = {"input/u": f"view-1 codes u ({k}, {d_u}); row i pairs with row i of v",
                "input/v": f"view-2 codes v ({k}, {d_v})",
                "output/scores": f"scores S ({k}, {k}): S[i, j] = f(u_i, v_j), diagonal = positive pairs"}
    return Built(forward, _shape_only(critic), draw, meanings, param_notes=notes)


# --- layers and encoders


def _dense_build(config):
    b, n_in, n_out = config["B"], config["in"], config["out"]
    layer = nn.Dense(n_in, n_out)
    return Built(lambda i, p: ({"y": layer.apply(p, i["x"])}, {}), _shape_only(layer),
                 lambda rng: {"x": _normal(rng, (b, n_in))},
                 {"input/x": f"inputs x ({b}, {n_in})", "output/y": f"y = x W + b ({b}, {n_out})"})


def _mlp_build(config):
    b, n_in = config["B"], config["in"]
    model = nn.MLP(n_in, config["dims"], shortcuts=config["shortcuts"])
    kind = "residual MLP (every layer h <- layer(h) + h)" if config["shortcuts"] else "MLP"
    return Built(lambda i, p: ({"y": model.apply(p, i["x"])}, {}), _shape_only(model),
                 lambda rng: {"x": _normal(rng, (b, n_in))},
                 {"input/x": f"inputs x ({b}, {n_in})",
                  "output/y": f"{kind} output ({b}, {model.out_dim})"})


def _conv_build(config):
    b, h, w, c_in, c_out = config["B"], config["H"], config["W"], config["C_in"], config["C_out"]
    layer = nn.Conv2D(c_in, c_out, config["kernel"], config["stride"])
    ho, wo = config["padding"]["H"]["out"], config["padding"]["W"]["out"]
    return Built(lambda i, p: ({"y": layer.apply(p, i["x"])}, {}), _shape_only(layer),
                 lambda rng: {"x": _normal(rng, (b, h, w, c_in))},
                 {"input/x": f"images x NHWC ({b}, {h}, {w}, {c_in})",
                  "output/y": (f"conv2d(x, W, stride {config['stride']}, 'same') + b, NHWC "
                               f"({b}, {ho}, {wo}, {c_out})")})


def _padding(n, k, s):
    out, before, after = nn.same_padding(n, k, s)
    return {"out": out, "before": before, "after": after}


def _layer_norm_build(config):
    shape, eps = tuple(config["shape"]), config["eps"]
    c = shape[-1]
    template = {"scale": onp.ones(c), "bias": onp.zeros(c)}
    return Built(lambda i, p: ({"y": nn.layer_norm(i["x"], p["scale"], p["bias"], eps)}, {}), template,
                 lambda rng: {"x": _f32(_normal(rng, shape, 2.0) + 0.5)},
                 {"input/x": f"activations x NHWC {shape}",
                  "output/y": f"layer_norm(x) over (H, W, C), eps {eps}, per-channel scale and bias {shape}"})


def _convnet_build(config):
    b, h, w = config["B"], config["H"], config["W"]
    model = nn.ConvNet(h, w, config["out_dim"], channels=tuple(config["channels"]))
    return Built(lambda i, p: ({"y": model.apply(p, i["x"])}, {}), _shape_only(model),
                 lambda rng: {"x": _f32(rng.uniform(0.0, 1.0, (b, h * w)))},
                 {"input/x": f"flattened images x ({b}, {h * w}) = ({b}, {h} * {w}), row-major, pixels in [0, 1]",
                  "output/y": f"ConvNet codes ({b}, {config['out_dim']})"})


# --- flows


def _self_inverse(perm):
    return bool(onp.array_equal(perm[perm], onp.arange(len(perm))))


def _realnvp_without_involutions(dim, n_couplings, hidden, shift_only, rng, kernel_init=nn.truncated_normal(1e-4)):
    """A RealNVP whose permutations are never their own inverse (redrawn from ``rng`` until so), so that a
    port that applies a permutation in the wrong direction cannot pass by luck."""
    while True:
        model = flows.RealNVP(dim, n_couplings, hidden, shift_only, rng=rng, kernel_init=kernel_init)
        if not any(_self_inverse(p) for p in model.permutations):
            return model


def _flow_model(config):
    rng = onp.random.default_rng(config["structure_seed"])
    if config.get("n_couplings") is None:
        perm = rng.permutation(config["dim"])
        while _self_inverse(perm):
            perm = rng.permutation(config["dim"])
        block = flows.AffineCoupling(config["dim"], config["hidden"], config["shift_only"], perm)
        return block, {"perm": block.perm.astype(onp.int64)}
    model = _realnvp_without_involutions(config["dim"], config["n_couplings"], config["hidden"],
                                         config["shift_only"], rng)
    return model, {"perms": model.permutations.astype(onp.int64)}


def _coupling_notes(model, prefix=""):
    """Meanings of the last layer of every conditioner MLP: which output columns are shift and raw scale."""
    if isinstance(model, flows.AffineCoupling):
        blocks = [(f"{prefix}net/layers/", model)]
    else:
        blocks = [(f"{prefix}blocks/{k}/net/layers/", b) for k, b in enumerate(model.blocks)]
    notes = {}
    for where, block in blocks:
        last, n, dims = len(block.net.dims) - 1, block.n_out, block.net.dims
        cols = (f"its {n} output columns are the shift t" if block.shift_only else
                f"output columns 0..{n - 1} are the shift t, {n}..{2 * n - 1} the raw scale r "
                "(scale = 1e-7 + softplus(r))")
        n_in = dims[-2] if last else block.split
        notes[f"{where}{last}/W"] = (f"dense kernel W (in={n_in}, out={dims[-1]}) of the last layer; {cols}; "
                                     "torch Linear.weight = W.T")
        notes[f"{where}{last}/b"] = f"bias b ({dims[-1]},) of the last layer; {cols}"
    return notes


def _flow_build(config):
    b, d = config["B"], config["dim"]
    model, consts = _flow_model(config)

    def forward(inputs, params):
        y, log_det = model.forward(params, inputs["x"])
        return {"forward": y, "log_det": log_det, "inverse": model.inverse(params, inputs["y"])}, {}

    what = "the block" if "perm" in consts else f"the chain of {config['n_couplings']} blocks"
    meanings = {"input/x": f"points x ({b}, {d}) where {what} is applied",
                "input/y": f"points y ({b}, {d}) where the inverse is evaluated",
                "output/forward": f"{what} applied to x ({b}, {d})",
                "output/log_det": f"log|det d forward / dx| per example ({b},)"
                                  + (" (0: shift-only)" if config["shift_only"] else ""),
                "output/inverse": f"inverse of {what} at y ({b}, {d})"}
    if "perm" in consts:
        meanings["const/perm"] = f"the block's permutation ({d},), applied first: z = x[:, perm]"
    else:
        meanings["const/perms"] = f"permutations ({config['n_couplings']}, {d}): block k starts with z = x[:, perms[k]]"
    return Built(forward, _shape_only(model), lambda rng: {"x": _normal(rng, (b, d)), "y": _normal(rng, (b, d))},
                 meanings, consts, param_notes=_coupling_notes(model))


# --- Jacobians


def _jacobian_build(config):
    b, d = config["B"], config["dim"]
    if config["model"] == "mlp_residual":
        model, consts = nn.MLP(d, [d] * config["n_layers"], shortcuts=True), {}
    else:
        model, consts = _flow_model(config)

    def forward(inputs, params):
        J = onp.ascontiguousarray(jacobian.batch_jacobian(model, params, inputs["x"]))
        svals = jacobian.singular_values(J)
        logc = jacobian.log_condition_numbers(svals)
        pct = jacobian.condition_percentiles(logc)          # (min, p20, p40, p60, p80, max)
        if isinstance(pct, dict):
            pct = [pct[k] for k in jacobian.PERCENTILE_KEYS]
        return ({"jacobian": J, "singular_values": svals, "log_condition_numbers": logc},
                {"condition_percentiles": onp.asarray(pct, dtype=onp.float64)})

    def plain_apply(params, x):
        """The model op by op in autograd.numpy (mi-ref's fast primitives have first-order VJPs only)."""
        if config["model"] == "mlp_residual":
            return nn.mlp_apply(params, x, model.activation, model.shortcuts)
        for block, p in zip(model.blocks, params["blocks"]):
            x = block.forward(p, x)[0]
        return x

    def traced(inputs, params):
        """The same three outputs by autograd (reverse mode twice, autograd's SVD), for the gradients."""
        x = inputs["x"]
        rows = [grad(lambda x_, o=o: np.sum(plain_apply(params, x_)[:, o]))(x) for o in range(d)]
        J = np.stack(rows, axis=1)                                   # (B, out, in)
        s = np.linalg.svd(J, compute_uv=False)
        return {"jacobian": J, "singular_values": s, "log_condition_numbers": np.log(s[:, 0]) - np.log(s[:, -1])}

    what = ("residual MLP" if config["model"] == "mlp_residual"
            else f"RealNVP chain of {config['n_couplings']} blocks")
    meanings = {"input/x": f"points x ({b}, {d})",
                "output/jacobian": (f"per-example Jacobians J[b, o, i] = d y[b, o] / d x[b, i] of the {what} "
                                    f"({b}, {d}, {d})"),
                "output/singular_values": f"singular values of each J[b], descending ({b}, {d})",
                "output/log_condition_numbers": f"log(sigma_max / sigma_min) per example ({b},)",
                "aux/condition_percentiles": "min, p20, p40, p60, p80, max of the log condition numbers (6,)"}
    if "perms" in consts:
        meanings["const/perms"] = f"permutations ({config['n_couplings']}, {d}): block k starts with z = x[:, perms[k]]"
    notes = {} if config["model"] == "mlp_residual" else _coupling_notes(model)
    return Built(forward, _shape_only(model), lambda rng: {"x": _normal(rng, (b, d))}, meanings, consts, traced,
                 param_notes=notes)


# --- Adam


def _adam_history(rng, shape, g_std, steps, b1, b2):
    """A gradient and the Adam moments after ``steps`` earlier gradients, all of scale ``g_std``
    (float32-exact): the state a real run would hold."""
    m, v = onp.zeros(shape), onp.zeros(shape)
    for _ in range(steps):
        g = g_std * rng.standard_normal(shape)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return _normal(rng, shape, g_std), _f32(m), _f32(v)


def _adam_build(config):
    template = _shape_only(nn.MLP(config["in"], config["dims"]))
    paths = [p for p, _ in tree_flatten(template)]
    adam = optim.Adam(config["lr"], config["b1"], config["b2"], config["eps"], form=config["form"])

    def tree(inputs, prefix):
        return tree_unflatten(template, [inputs[f"{prefix}/{p}"] for p in paths])

    def draw(rng):
        out = {}
        for p, leaf in tree_flatten(template):
            out[f"g/{p}"], out[f"m/{p}"], out[f"v/{p}"] = _adam_history(
                rng, onp.shape(leaf), config["grad_std"], config["step"], config["b1"], config["b2"])
        return out

    def forward(inputs, params):
        state = {"step": config["step"], "m": tree(inputs, "m"), "v": tree(inputs, "v")}
        new, new_state = adam.update(params, tree(inputs, "g"), state)
        outputs = {}
        for name, t in (("param", new), ("m", new_state["m"]), ("v", new_state["v"])):
            outputs.update({f"{name}/{p}": v for p, v in tree_flatten(t)})
        return outputs, {}

    meanings = {"const/step": "steps taken before this update (the update uses t = step + 1)"}
    for p in paths:
        meanings[f"input/g/{p}"] = f"gradient for param/{p}"
        meanings[f"input/m/{p}"] = f"Adam first moment m of param/{p} before the step"
        meanings[f"input/v/{p}"] = f"Adam second moment v of param/{p} before the step (>= 0)"
        meanings[f"output/param/{p}"] = f"param/{p} after the step"
        meanings[f"output/m/{p}"] = f"m after the step"
        meanings[f"output/v/{p}"] = f"v after the step"
    return Built(forward, template, draw, meanings, {"step": onp.array(config["step"], dtype=onp.int64)},
                 differentiable=False, param_scale=config["param_std"])


# --- training steps


def _train_build(config):
    b, d = config["B"], config["dim"]
    rng = onp.random.default_rng(config["structure_seed"])
    consts, notes = {}, {}
    if config["encoder"] == "realnvp":
        g1, g2 = (_realnvp_without_involutions(d, config["n_couplings"], config["hidden"], config["shift_only"],
                                               rng) for _ in range(2))
        consts = {"g1/perms": g1.permutations.astype(onp.int64), "g2/perms": g2.permutations.astype(onp.int64)}
        notes = {**_coupling_notes(g1, "g1/"), **_coupling_notes(g2, "g2/")}
    else:
        g1, g2 = (nn.mlp(d, config["encoder_dims"], shortcuts=config["shortcuts"]) for _ in range(2))
    e = g1.out_dim
    if config["critic"] == "bilinear":
        critic = critics.bilinear(e)
        notes["critic/W"] = (f"bilinear critic matrix W ({e}, {e}) = (d_v, d_u): S = u (v W)^T "
                             "(not a Linear weight)")
    else:
        critic = critics.concat(e, hidden=config["critic_hidden"])
        notes["critic/layers/0/W"] = (f"dense kernel W (in={2 * e}, out={config['critic_hidden'][0]}) of the "
                                      "concat critic's first layer: "
                                      f"rows 0..{e - 1} multiply u_i, rows {e}..{2 * e - 1} multiply v_j")
    estimator = config["estimator"]
    template = {"g1": _shape_only(g1), "g2": _shape_only(g2), "critic": _shape_only(critic)}

    def forward(inputs, params):
        x1, x2 = inputs["x1"], inputs["x2"]
        loss = objectives.mi_loss(params, g1, g2, critic, estimator, x1, x2)
        u, v = g1.apply(params["g1"], x1), g2.apply(params["g2"], x2)
        scores = critic.apply(params["critic"], u, v)
        return {"loss": loss}, {"u": u, "v": v, "scores": scores,
                                "bound": bounds.get_estimator(estimator)(scores)}

    def draw(rng):
        # standard normal rather than pixel-like [0, 1] values: rows then differ enough that every ReLU
        # unit of the critic switches between pairs (with an additive critic, S[i, j] = a_i + b_j, I_NCE
        # would not depend on g1 at all and its gradients would be rounding noise)
        x1 = _normal(rng, (b, d))
        return {"x1": x1, "x2": _f32(x1 + _normal(rng, (b, d)))}

    est = {"infonce": "I_NCE", "nwj": "I_NWJ"}[estimator]
    meanings = {"input/x1": f"view-1 batch x1 ({b}, {d}), standard normal",
                "input/x2": f"view-2 batch x2 ({b}, {d}) = x1 + standard normal noise; row i pairs with row i "
                            "of x1",
                "output/loss": f"training loss -{est}(critic(g1(x1), g2(x2))) (scalar, mi_ref.objectives.mi_loss)",
                "aux/u": f"codes u = g1(x1) ({b}, {e})", "aux/v": f"codes v = g2(x2) ({b}, {e})",
                "aux/scores": f"scores S = critic(u, v) ({b}, {b}), diagonal = positive pairs",
                "aux/bound": f"{est}(S) = -loss (scalar)"}
    for g in ("g1", "g2"):
        if f"{g}/perms" in consts:
            meanings[f"const/{g}/perms"] = (f"permutations of {g} ({config['n_couplings']}, {d}): block k "
                                            "starts with z = x[:, perms[k]]")
    return Built(forward, template, draw, meanings, consts, param_notes=notes)


def _train_step_build(config):
    """A whole training step as the paper's loop takes it: loss and gradients at the paper's initialization,
    then the Adam update (TF form) from a fresh state."""
    b, d = config["B"], config["dim"]
    rng = onp.random.default_rng(config["structure_seed"])
    init = nn.truncated_normal(config["init_std"])
    g1, g2 = (_realnvp_without_involutions(d, config["n_couplings"], config["hidden"], True, rng, init)
              for _ in range(2))
    critic = critics.bilinear(d)
    consts = {"g1/perms": g1.permutations.astype(onp.int64), "g2/perms": g2.permutations.astype(onp.int64),
              "step": onp.array(0, dtype=onp.int64)}
    notes = {**_coupling_notes(g1, "g1/"), **_coupling_notes(g2, "g2/"),
             "critic/W": f"bilinear critic matrix W ({d}, {d}) = (d_v, d_u): S = u (v W)^T (not a Linear weight)"}
    template = {"g1": _shape_only(g1), "g2": _shape_only(g2), "critic": _shape_only(critic)}
    paths = [p for p, _ in tree_flatten(template)]
    adam = optim.Adam(config["lr"], form=config["form"])

    def draw_params(rng):
        """The experiment's own initializers (kernels ~ truncated normal std 1e-4, zero biases, a Glorot
        critic), rounded to float32."""
        params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
        return tree_map(_f32, params)

    def forward(inputs, params):
        objective = lambda p: objectives.mi_loss(p, g1, g2, critic, config["estimator"],  # noqa: E731
                                                 inputs["x1"], inputs["x2"])
        loss, grads = value_and_grad(objective)(params)
        state = {"step": 0, "m": tree_unflatten(template, [inputs[f"m/{p}"] for p in paths]),
                 "v": tree_unflatten(template, [inputs[f"v/{p}"] for p in paths])}
        new, new_state = adam.update(params, grads, state)
        outputs = {"loss": loss}
        for name, t in (("param", new), ("m", new_state["m"]), ("v", new_state["v"])):
            outputs.update({f"{name}/{p}": v for p, v in tree_flatten(t)})
        return outputs, {f"gradient/{p}": v for p, v in tree_flatten(grads)}

    def draw(rng):
        x1 = _normal(rng, (b, d))
        out = {"x1": x1, "x2": _f32(x1 + _normal(rng, (b, d)))}
        for p, leaf in tree_flatten(template):
            out[f"m/{p}"] = out[f"v/{p}"] = onp.zeros(onp.shape(leaf))
        return out

    meanings = {"input/x1": f"view-1 batch x1 ({b}, {d}), standard normal",
                "input/x2": f"view-2 batch x2 ({b}, {d}) = x1 + standard normal noise; row i pairs with row i of x1",
                "const/step": "steps taken before this one: 0, a fresh optimizer (t = 1)",
                "output/loss": "training loss -I_NCE(critic(g1(x1), g2(x2))) before the update (scalar)"}
    for g in ("g1", "g2"):
        meanings[f"const/{g}/perms"] = (f"permutations of {g} ({config['n_couplings']}, {d}): block k starts "
                                        "with z = x[:, perms[k]]")
    for p in paths:
        meanings[f"input/m/{p}"] = f"Adam first moment of param/{p} before the step (0: a fresh optimizer)"
        meanings[f"input/v/{p}"] = f"Adam second moment of param/{p} before the step (0)"
        meanings[f"output/param/{p}"] = f"param/{p} after the TF-form Adam update (lr {config['lr']:g})"
        meanings[f"output/m/{p}"] = f"m after the step"
        meanings[f"output/v/{p}"] = f"v after the step"
        meanings[f"aux/gradient/{p}"] = f"d loss / d param/{p}, the gradient the update used"
    return Built(forward, template, draw, meanings, consts, differentiable=False, param_notes=notes,
                 draw_params=draw_params)


def _components():
    comps = []

    def add(name, summary, functions, config, build, float64_only=None):
        comps.append(Component(name, summary, tuple(functions), config, build, float64_only))

    too_big = ("scores up to 700 off the diagonal give exp(S) ~ 1e304, beyond float32's range (3.4e38); "
               "a float32 implementation is expected to overflow here")
    for est, title in (("infonce", "I_NCE"), ("nwj", "I_NWJ"), ("tuba", "TUBA")):
        fn = f"mi_ref.bounds.{est}"
        add(f"bound_{est}", f"{title} on a fixed 6 x 6 score matrix", [fn],
            {"K": 6, "estimator": est, "scores": "normal"}, _bound_build)
        if est == "infonce":
            add("bound_infonce_large", "I_NCE on scores of magnitude up to ~1e3 (multiples of 1/64, a tie for "
                "the maximum of row 0): a naive exp overflows, logsumexp must subtract the row maximum",
                [fn], {"K": 6, "estimator": est, "scores": "large"}, _bound_build)
        else:
            add(f"bound_{est}_large", f"{title} on scores of magnitude up to ~1e3 with off-diagonal entries "
                "<= 700 (one equals 700), so the value (~ -1e302) is finite in float64", [fn],
                {"K": 6, "estimator": est, "scores": "large"}, _bound_build, too_big)
    add("bound_tuba_baseline", "TUBA with a log-baseline l_j per column: 1 + mean_i S_ii - mean_{i != j} "
        "exp(S_ij - l_j) - mean_j l_j", ["mi_ref.bounds.tuba"],
        {"K": 6, "estimator": "tuba", "scores": "normal", "log_baseline": True}, _bound_build)

    add("critic_inner_product", "S = u v^T", ["mi_ref.critics.InnerProduct.apply"],
        {"K": 5, "critic": "inner_product", "d_u": 4, "d_v": 4}, _critic_build)
    add("critic_bilinear", "S = u (v W)^T with W (d_v, d_u), d_u != d_v so a transposed W cannot pass",
        ["mi_ref.critics.Bilinear.apply"], {"K": 5, "critic": "bilinear", "d_u": 3, "d_v": 4}, _critic_build)
    add("critic_separable", "S = f(u) h(v)^T, f and h MLPs with one ReLU hidden layer",
        ["mi_ref.critics.Separable.apply"],
        {"K": 5, "critic": "separable", "d_u": 3, "d_v": 4, "hidden": [6], "out_dim": 5}, _critic_build)
    add("critic_concat", "S[i, j] = m([u_i ; v_j]), m an MLP with two ReLU hidden layers and a scalar output",
        ["mi_ref.critics.Concat.apply"], {"K": 5, "critic": "concat", "d_u": 3, "d_v": 4, "hidden": [6, 5]},
        _critic_build)

    add("dense", "y = x W + b", ["mi_ref.nn.Dense.apply"], {"B": 4, "in": 5, "out": 3}, _dense_build)
    add("mlp", "MLP(5, [7, 6, 3]): ReLU after every layer but the last", ["mi_ref.nn.MLP.apply"],
        {"B": 4, "in": 5, "dims": [7, 6, 3], "shortcuts": False}, _mlp_build)
    add("mlp_residual", "MLP(5, [5, 5, 5], shortcuts): h <- relu(h W + b) + h, y = h W + b + h",
        ["mi_ref.nn.MLP.apply"], {"B": 4, "in": 5, "dims": [5, 5, 5], "shortcuts": True}, _mlp_build)
    for name, h, w in (("conv2d_odd", 7, 5), ("conv2d_even", 8, 6)):
        kind = "odd sizes: symmetric padding" if h % 2 else "even sizes: the extra pad pixel goes after"
        add(name, f"5x5 convolution, stride 2, 'same' padding, + bias, on {h} x {w} images ({kind})",
            ["mi_ref.nn.Conv2D.apply", "mi_ref.nn.conv2d"],
            {"B": 2, "H": h, "W": w, "C_in": 3, "C_out": 4, "kernel": 5, "stride": 2,
             "padding": {"H": _padding(h, 5, 2), "W": _padding(w, 5, 2)}}, _conv_build)
    add("layer_norm", "layer norm over (H, W, C), per-channel scale and bias, eps 1e-6", ["mi_ref.nn.layer_norm"],
        {"shape": [2, 3, 4, 5], "eps": 1e-6}, _layer_norm_build)
    add("convnet_4x8", "the paper's ConvNet on 4 x 8 half images (8x8 digits), channels (4, 6), output 5",
        ["mi_ref.nn.ConvNet.apply"], {"B": 3, "H": 4, "W": 8, "channels": [4, 6], "out_dim": 5}, _convnet_build)
    add("convnet_14x28", "the paper's ConvNet exactly (channels 64, 128, output 100) on 14 x 28 MNIST half "
        "images", ["mi_ref.nn.ConvNet.apply"], {"B": 2, "H": 14, "W": 28, "channels": [64, 128], "out_dim": 100},
        _convnet_build)

    add("realnvp_block_shift", "one shift-only coupling block + permutation (d = 5, odd): forward, log-det, "
        "inverse", ["mi_ref.flows.AffineCoupling"],
        {"B": 4, "dim": 5, "hidden": [6], "shift_only": True, "n_couplings": None}, _flow_build)
    add("realnvp_block_affine", "one affine coupling block (scale = 1e-7 + softplus(r)) + permutation (d = 5): "
        "forward, log-det, inverse", ["mi_ref.flows.AffineCoupling"],
        {"B": 4, "dim": 5, "hidden": [6], "shift_only": False, "n_couplings": None}, _flow_build)
    add("realnvp_chain", "a chain of 3 affine coupling blocks with their permutations (d = 6): forward, "
        "log-det, inverse", ["mi_ref.flows.RealNVP"],
        {"B": 4, "dim": 6, "hidden": [5, 5], "shift_only": False, "n_couplings": 3}, _flow_build)

    jac_fns = ["mi_ref.jacobian.batch_jacobian", "mi_ref.jacobian.singular_values",
               "mi_ref.jacobian.log_condition_numbers", "mi_ref.jacobian.condition_percentiles"]
    add("jacobian_mlp_residual", "per-example Jacobians, singular values and log condition numbers of a "
        "residual MLP(5, [5] * 3) (grad/x is 0: a ReLU network's Jacobian is piecewise constant in x)", jac_fns,
        {"B": 3, "dim": 5, "model": "mlp_residual", "n_layers": 3}, _jacobian_build)
    add("jacobian_realnvp", "per-example Jacobians, singular values and log condition numbers of a chain of "
        "3 affine coupling blocks (d = 6)", jac_fns,
        {"B": 3, "dim": 6, "model": "realnvp", "hidden": [5], "shift_only": False, "n_couplings": 3},
        _jacobian_build)

    for form, name, what in (("textbook", "adam_step", "the textbook form (PyTorch's)"),
                             ("tf", "adam_step_tf", "TensorFlow 1's form (the paper's)")):
        add(name, f"one Adam update in {what}, lr 1e-3, of an MLP's params (std 1e-4, like the paper's "
            "initialization) from the state after 4 steps of gradients of std 3e-8; at this gradient scale the "
            "two forms' updates differ by ~40 % of a step; no gradients (an optimizer step is not "
            "differentiated)", ["mi_ref.optim.Adam.update"],
            {"in": 3, "dims": [4, 2], "lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "step": 4, "form": form,
             "grad_std": 3e-8, "param_std": 1e-4}, _adam_build)

    add("train_invertible", "one training step of the 'invertible' experiment at small size: g1, g2 = RealNVP(8, "
        "3 shift-only couplings, hidden [6]), bilinear critic, loss -I_NCE", ["mi_ref.objectives.mi_loss"],
        {"B": 5, "dim": 8, "encoder": "realnvp", "n_couplings": 3, "hidden": [6], "shift_only": True,
         "critic": "bilinear", "estimator": "infonce"}, _train_build)
    add("train_conditioning", "one training step of the 'conditioning' experiment at small size: g1, g2 = "
        "MLP(8, [8] * 5, shortcuts), bilinear critic, loss -I_NCE", ["mi_ref.objectives.mi_loss"],
        {"B": 5, "dim": 8, "encoder": "mlp", "encoder_dims": [8] * 5, "shortcuts": True,
         "critic": "bilinear", "estimator": "infonce"}, _train_build)
    for est, title in (("infonce", "I_NCE"), ("nwj", "I_NWJ")):
        add(f"train_critics_{est}", f"one training step of the 'critics' experiment at small size: g1, g2 = "
            f"MLP(8, [10, 10, 6]), concat critic (hidden [12]), loss -{title}", ["mi_ref.objectives.mi_loss"],
            {"B": 5, "dim": 8, "encoder": "mlp", "encoder_dims": [10, 10, 6], "shortcuts": False,
             "critic": "concat", "critic_hidden": [12], "estimator": est}, _train_build)
    add("train_step_invertible", "one whole training step of the 'invertible' experiment at small size, as the "
        "paper's loop takes it: g1, g2 = RealNVP(8, 3 shift-only couplings, hidden [6]) and a bilinear critic "
        "at the paper's initialization (kernels std 1e-4, so the flows' gradients are tiny), loss -I_NCE, "
        "then TensorFlow 1's Adam (lr 1e-4) from a fresh state; outputs the loss and the params and moments "
        "after the update", ["mi_ref.objectives.mi_loss", "mi_ref.optim.Adam.update"],
        {"B": 5, "dim": 8, "encoder": "realnvp", "n_couplings": 3, "hidden": [6], "shift_only": True,
         "init_std": 1e-4, "critic": "bilinear", "estimator": "infonce",
         "lr": 1e-4, "form": "tf"}, _train_step_build)
    return {c.name: c for c in comps}


COMPONENTS = _components()


def component_names():
    """The names of all components, in generation order."""
    return list(COMPONENTS)


# ----------------------------------------------------------------------------------------------------
# evaluation: outputs and gradients from inputs, params and cotangents


def _evaluate(built, inputs, params, cotangents):
    """``(outputs, aux, grads)``: the component's values and dL/d(inputs, params) (see the module docstring)."""
    outputs, aux = built.forward(inputs, params)
    outputs = {k: onp.asarray(v, dtype=onp.float64) for k, v in outputs.items()}
    aux = {k: onp.asarray(v, dtype=onp.float64) for k, v in aux.items()}
    grads = {}
    if built.differentiable:
        traced = built.traced or (lambda i, p: built.forward(i, p)[0])
        names = list(outputs)

        def scalar(pair):
            outs = traced(*pair)
            total = 0.0
            for k in names:
                total = total + np.sum(outs[k] * cotangents[k])
            return total

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Output seems independent of input")
            g_inputs, g_params = grad(scalar)((inputs, params))
        for k in inputs:
            grads[k] = onp.asarray(g_inputs[k], dtype=onp.float64)
        for p, v in tree_flatten(g_params):
            grads[f"param/{p}"] = onp.asarray(v, dtype=onp.float64)
    return outputs, aux, grads


def _streams(seed, name):
    """(structure_seed, rng) of one component: independent of every other component's draws."""
    key = zlib.crc32(name.encode("utf-8"))
    structure_seed = int(onp.random.SeedSequence([seed, key, 0]).generate_state(1)[0])
    return structure_seed, onp.random.default_rng(onp.random.SeedSequence([seed, key, 1]))


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, onp.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def make_component(name, seed=0):
    """Generate one component in memory: ``(arrays, entry)``.

    ``arrays``: ``{name: array}`` in file order (inputs, consts, params, cotangents, outputs, aux, grads);
    ``entry``: its manifest entry (file, summary, functions, config, scalar, float64_only, arrays).
    """
    seed = _check_seed(seed)
    comp = _get_component(name)
    structure_seed, rng = _streams(seed, name)
    config = dict(comp.config, structure_seed=structure_seed)
    built = comp.build(config)
    inputs = built.draw_inputs(rng)
    if built.draw_params is not None:
        params = built.draw_params(rng)
    elif built.param_scale is not None:
        params = tree_map(lambda leaf: _normal(rng, onp.shape(leaf), built.param_scale), built.template)
    else:
        params = _draw_params(built.template, rng)
    outputs, _ = built.forward(inputs, params)
    cotangents = {}
    if built.differentiable:
        for k, v in outputs.items():
            shape = onp.shape(v)
            cotangents[k] = onp.array(1.0) if shape == () else _normal(rng, shape)
    outputs, aux, grads = _evaluate(built, inputs, params, cotangents)

    arrays = {}
    arrays.update({f"input/{k}": v for k, v in inputs.items()})
    arrays.update({f"const/{k}": v for k, v in built.consts.items()})
    arrays.update({f"param/{p}": onp.asarray(v) for p, v in tree_flatten(params)})
    arrays.update({f"cotangent/{k}": v for k, v in cotangents.items()})
    arrays.update({f"output/{k}": v for k, v in outputs.items()})
    arrays.update({f"aux/{k}": v for k, v in aux.items()})
    arrays.update({f"grad/{k}": v for k, v in grads.items()})
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not onp.isfinite(value).all():
            raise RuntimeError(f"golden vector {name}/{key} is not finite; the component's inputs are wrong")
    return arrays, _entry(comp, config, built, arrays, cotangents)


def _scalar_text(built, cotangents):
    if not built.differentiable:
        return None
    terms = []
    for k, c in cotangents.items():
        terms.append(f"output/{k} * cotangent/{k}" if onp.shape(c) == () else f"sum(output/{k} * cotangent/{k})")
    text = "L = " + " + ".join(terms)
    if len(cotangents) == 1 and onp.shape(next(iter(cotangents.values()))) == ():
        k = next(iter(cotangents))
        text += f" = output/{k} (its cotangent is 1.0)"
    return text


def _describe_param(path, shape, notes):
    """Where the parameter sits (encoder, block, layer) and what it is (``notes`` may say the latter)."""
    names = {"g1": "encoder g1 (view 1)", "g2": "encoder g2 (view 2)", "critic": "critic",
             "net": "conditioner MLP",
             "f": "MLP f (applied to u)", "h": "MLP h (applied to v)", "conv1": "first convolution",
             "conv2": "second convolution", "norm": "layer norm", "out": "final dense layer"}
    parts = path.split("/")
    where, i = [], 0
    while i < len(parts) - 1:
        if parts[i] in ("layers", "blocks") and parts[i + 1].isdigit() and i + 1 < len(parts) - 1:
            where.append(("layer " if parts[i] == "layers" else "coupling block ") + parts[i + 1])
            i += 2
        else:
            where.append(names.get(parts[i], parts[i]))
            i += 1
    leaf = parts[-1]
    if path in notes:
        what = notes[path]
    elif leaf == "W" and len(shape) == 2:
        what = f"dense kernel W (in={shape[0]}, out={shape[1]}): y = x W + b; torch Linear.weight = W.T"
    elif leaf == "W" and len(shape) == 4:
        what = f"conv kernel W (kh, kw, C_in, C_out) = {tuple(shape)}; torch weight = W.permute(3, 2, 0, 1)"
    elif leaf == "b":
        what = f"bias b ({shape[0]},)"
    elif leaf == "scale":
        what = f"layer-norm scale, one per channel ({shape[0]},)"
    elif leaf == "bias":
        what = f"layer-norm bias, one per channel ({shape[0]},)"
    else:
        what = f"parameter {leaf} {tuple(shape)}"
    return (", ".join(where) + ": " if where else "") + what


def _entry(comp, config, built, arrays, cotangents):
    scalar = _scalar_text(built, cotangents)
    described = []
    for key, value in arrays.items():
        category, _, rest = key.partition("/")
        if category in ("input", "const", "output", "aux"):
            meaning = built.meanings[key]
        elif category == "param":
            meaning = _describe_param(rest, value.shape, built.param_notes)
        elif category == "cotangent":
            meaning = ("1.0: the scalar L is output/" + rest if value.shape == ()
                       else f"fixed random cotangent for output/{rest} (same shape); part of L")
        else:
            target = f"param/{rest[6:]}" if rest.startswith("param/") else f"input/{rest}"
            meaning = f"dL/d {target} (L: this component's 'scalar')"
        described.append({"name": key, "shape": list(value.shape), "dtype": str(value.dtype), "meaning": meaning})
    return {"file": f"{comp.name}.npz", "summary": comp.summary, "functions": list(comp.functions),
            "config": config, "scalar": scalar, "float64_only": comp.float64_only, "arrays": described}


# ----------------------------------------------------------------------------------------------------
# files


def npz_bytes(arrays):
    """The bytes of an .npz holding ``arrays`` (in order), byte-identical for identical arrays.

    ``numpy.savez`` stamps each zip member with the current time, so two saves of the same arrays
    differ; here every member gets :data:`ZIP_DATE_TIME`, no compression and fixed attributes.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            value = onp.asarray(value)          # (ascontiguousarray would turn a 0-d array into shape (1,))
            onp.lib.format.write_array(member, value if value.flags.c_contiguous else value.copy(order="C"),
                                       allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _manifest_header(seed):
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mi_ref_version": __version__, "seed": seed,
            "generated_with": {"numpy": onp.__version__, "autograd": version("autograd")},
            "conventions": CONVENTIONS, "settings": SETTINGS,
            "tolerances": _tolerance_doc()}


def _tolerance_doc():
    from .verify import TOLERANCES
    return {k: dict(v) for k, v in TOLERANCES.items()}


def generate(out_dir, seed=0, names=None):
    """Write every component (or those in ``names``) to ``out_dir/NAME.npz`` plus ``manifest.json``.

    Returns the manifest (a dict). Files are written atomically; the same seed gives byte-identical files.
    """
    seed = _check_seed(seed)
    names = component_names() if names is None else [_get_component(n).name for n in names]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    manifest = _manifest_header(seed)
    manifest["components"] = {}
    for name in names:
        arrays, entry = make_component(name, seed)
        data = npz_bytes(arrays)
        _atomic_write(out / entry["file"], lambda f, data=data: f.write(data))
        manifest["components"][name] = entry
    # insertion order (not sorted keys): components in generation order, arrays in file order
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _get_component(name):
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; expected one of {component_names()}")
    return COMPONENTS[name]


def load_manifest(vectors_dir):
    """The manifest of a golden-vector directory (``FileNotFoundError`` / ``ValueError`` if it is none)."""
    folder = Path(vectors_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"golden-vector directory {folder} does not exist; create it with "
                                f"`mi-ref vectors --out {folder}`")
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not a golden-vector directory (create one with "
                                f"`mi-ref vectors --out DIR`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); regenerate it with `mi-ref vectors`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mi-ref golden-vector manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('format_version')!r}; this mi-ref reads "
                         f"version {FORMAT_VERSION}: regenerate with `mi-ref vectors`")
    return manifest


def load_component(vectors_dir, name, manifest=None):
    """``{array name: array}`` of one component file (read with ``allow_pickle=False``)."""
    manifest = load_manifest(vectors_dir) if manifest is None else manifest
    comps = manifest["components"]
    if name not in comps:
        raise ValueError(f"unknown component {name!r} in {vectors_dir}; it holds {list(comps)}")
    path = Path(vectors_dir) / comps[name]["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing although {MANIFEST} lists it; regenerate the directory")
    with onp.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def recompute(vectors_dir, name):
    """Recompute a stored component's outputs, aux values and gradients with this mi-ref.

    Rebuilds the models from the manifest's config (the structure seed reproduces the permutations, which
    must equal the stored ``const/`` arrays), takes inputs, params and cotangents from the file and returns
    ``{"output/...": ..., "aux/...": ..., "grad/...": ...}`` named as in the file.
    """
    manifest = load_manifest(vectors_dir)
    arrays = load_component(vectors_dir, name, manifest)
    built = _get_component(name).build(manifest["components"][name]["config"])
    for k, v in built.consts.items():
        stored = arrays.get(f"const/{k}")
        if stored is None or not onp.array_equal(stored, v):
            raise ValueError(f"{name}: const/{k} in the file differs from the one its config rebuilds")
    inputs = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
    cotangents = {k[len("cotangent/"):]: v for k, v in arrays.items() if k.startswith("cotangent/")}
    flat = tree_flatten(built.template)
    params = tree_unflatten(built.template, [arrays[f"param/{p}"] for p, _ in flat]) if flat else built.template
    outputs, aux, grads = _evaluate(built, inputs, params, cotangents)
    result = {f"output/{k}": v for k, v in outputs.items()}
    result.update({f"aux/{k}": v for k, v in aux.items()})
    result.update({f"grad/{k}": v for k, v in grads.items()})
    return result
