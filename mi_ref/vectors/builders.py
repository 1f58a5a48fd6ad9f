"""How each kind of golden-vector component is built: models, inputs, outputs and what the arrays mean.

A builder takes a component's config (:mod:`mi_ref.vectors.components`) and returns a :class:`Built`. The
values are computed as mi-ref's training computes them: by the models' accelerated twins
(:func:`mi_ref.accel.twin`, equal to the formulas to ~1e-12) where a model has one, and by autograd through
them for the gradients; the Jacobians and their singular values by the speed wing's routines
(:func:`mi_ref.accel.jacobians.batch_jacobian`, :func:`mi_ref.accel.linalg.singular_values`), as the
conditioning experiment computes them.
"""

from dataclasses import dataclass, field

import autograd.numpy as np
import numpy as onp
from autograd import grad, value_and_grad

from .. import bounds, critics, flows, jacobian, nn, objectives, optim
from ..accel import jacobians as fast_jacobians
from ..accel import linalg as fast_linalg
from ..accel import original, twin
from ..registry import declared
from ..tree import tree_flatten, tree_map, tree_unflatten


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


def f32(a):
    """Round float64 values to the nearest float32 (and back): exactly representable in both."""
    return onp.asarray(a, dtype=onp.float64).astype(onp.float32).astype(onp.float64)


def normal(rng, shape, std=1.0):
    return f32(std * rng.standard_normal(shape))


def draw_params(template, rng):
    """Random params shaped like ``template``: kernels N(0, 1/fan_in), biases N(0, 1/4), scales 1 + N(0, 1/16)."""
    def draw(path, leaf):
        shape = onp.shape(leaf)
        if path.split("/")[-1] == "scale":
            return f32(1.0 + 0.25 * rng.standard_normal(shape))
        if len(shape) <= 1:
            return normal(rng, shape, 0.5)
        fan_in = int(onp.prod(shape[:-1]))
        return normal(rng, shape, 1.0 / onp.sqrt(fan_in))
    flat = tree_flatten(template)
    return tree_unflatten(template, [draw(p, v) for p, v in flat]) if flat else tree_map(lambda v: v, template)


def _shape_only(model):
    return model.init(onp.random.default_rng(0))


# --- bounds


# how the manifest writes each estimator of mi_ref.bounds.ESTIMATORS (keyed by its registry name)
ESTIMATOR_SYMBOLS = {"infonce": "I_NCE", "nwj": "I_NWJ", "tuba": "TUBA"}


def _symbol(estimator):
    return declared(ESTIMATOR_SYMBOLS, estimator, "estimator", "golden-vector symbol",
                    "ESTIMATOR_SYMBOLS in mi_ref/vectors/builders.py")


def _bound_build(config):
    k, estimator, kind = config["K"], config["estimator"], config["scores"]

    def draw(rng):
        if kind == "normal":
            scores = f32(normal(rng, (k, k), 2.0) + 3.0 * onp.eye(k))
        else:       # multiples of 1/64 of magnitude up to ~1000: exact in float32, and so are their differences
            scores = rng.integers(-64000, 64001, size=(k, k)) / 64.0
            if estimator == "infonce":
                row_max = scores[0].max()
                scores[0, 0] = scores[0, 1] = row_max + 1.0          # a tie for the row maximum
            else:       # keep exp(off-diagonal) finite: off-diagonal <= 700, one of them exactly 700
                off = ~onp.eye(k, dtype=bool)
                scores[off] = onp.minimum(scores[off], 700.0)
                scores[0, k - 1] = 700.0
        inputs = {"scores": f32(scores)}
        if config.get("log_baseline"):
            inputs["log_baseline"] = normal(rng, (k,))
        return inputs

    bound = bounds.ESTIMATORS.get(estimator)

    def forward(inputs, params):
        s = inputs["scores"]
        value = bound(s, inputs["log_baseline"]) if "log_baseline" in inputs else bound(s)
        return {"bound": value}, {}

    name = _symbol(estimator)
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
    options = {k: config[k] for k in ("hidden", "out_dim") if k in config}
    critic = twin(critics.build(kind, d_u, d_v, **options))
    notes = _critic_notes(kind, CRITIC_NOTES)(d_u, d_v, config.get("hidden"))

    def draw(rng):
        return {"u": normal(rng, (k, d_u)), "v": normal(rng, (k, d_v))}

    def forward(inputs, params):
        return {"scores": critic.apply(params, inputs["u"], inputs["v"])}, {}

    meanings = {"input/u": f"view-1 codes u ({k}, {d_u}); row i pairs with row i of v",
                "input/v": f"view-2 codes v ({k}, {d_v})",
                "output/scores": f"scores S ({k}, {k}): S[i, j] = f(u_i, v_j), diagonal = positive pairs"}
    return Built(forward, _shape_only(critic), draw, meanings, param_notes=notes)


def _bilinear_notes(d_u, d_v, hidden=None):
    return {"W": f"bilinear critic matrix W ({d_v}, {d_u}) = (d_v, d_u): S = u (v W)^T (not a Linear weight)"}


def _concat_notes(d_u, d_v, hidden):
    return {"layers/0/W": (f"dense kernel W (in={d_u + d_v}, out={hidden[0]}) of m's first layer: "
                           f"rows 0..{d_u - 1} multiply u_i, rows {d_u}..{d_u + d_v - 1} multiply v_j; "
                           "h = [u_i ; v_j] W + b")}


def _train_bilinear_notes(e, hidden=None):
    return {"critic/W": f"bilinear critic matrix W ({e}, {e}) = (d_v, d_u): S = u (v W)^T (not a Linear weight)"}


def _train_concat_notes(e, hidden):
    return {"critic/layers/0/W": (f"dense kernel W (in={2 * e}, out={hidden[0]}) of the concat critic's first "
                                  f"layer: rows 0..{e - 1} multiply u_i, rows {e}..{2 * e - 1} multiply v_j")}


def _no_notes(*sizes):
    """Nothing to add to the generic description of the critic's params (or it has none)."""
    return {}


# What the manifest says about a critic's params beyond their generic description (which names the layer and
# the dense layout), keyed by critic registry name (mi_ref.critics.CRITICS): in a critic component
# (notes(d_u, d_v, hidden)) and in a training step (notes(e, critic_hidden), paths under "critic/"). A critic
# whose params need no note says so with _no_notes; one that is missing here is an error, not a guess.
CRITIC_NOTES = {"inner_product": _no_notes, "bilinear": _bilinear_notes, "separable": _no_notes,
                "concat": _concat_notes}
TRAIN_CRITIC_NOTES = {"inner_product": _no_notes, "bilinear": _train_bilinear_notes, "separable": _no_notes,
                      "concat": _train_concat_notes}


def _critic_notes(kind, table):
    where = "CRITIC_NOTES" if table is CRITIC_NOTES else "TRAIN_CRITIC_NOTES"
    return declared(table, kind, "critic", "golden-vector param notes", f"{where} in mi_ref/vectors/builders.py")


# --- layers and encoders


def _dense_build(config):
    b, n_in, n_out = config["B"], config["in"], config["out"]
    layer = nn.Dense(n_in, n_out)
    return Built(lambda i, p: ({"y": layer.apply(p, i["x"])}, {}), _shape_only(layer),
                 lambda rng: {"x": normal(rng, (b, n_in))},
                 {"input/x": f"inputs x ({b}, {n_in})", "output/y": f"y = x W + b ({b}, {n_out})"})


def _mlp_build(config):
    b, n_in = config["B"], config["in"]
    model = twin(nn.MLP(n_in, config["dims"], shortcuts=config["shortcuts"]))
    kind = "residual MLP (every layer h <- layer(h) + h)" if config["shortcuts"] else "MLP"
    return Built(lambda i, p: ({"y": model.apply(p, i["x"])}, {}), _shape_only(model),
                 lambda rng: {"x": normal(rng, (b, n_in))},
                 {"input/x": f"inputs x ({b}, {n_in})",
                  "output/y": f"{kind} output ({b}, {model.out_dim})"})


def _conv_build(config):
    b, h, w, c_in, c_out = config["B"], config["H"], config["W"], config["C_in"], config["C_out"]
    layer = twin(nn.Conv2D(c_in, c_out, config["kernel"], config["stride"]))
    ho, wo = config["padding"]["H"]["out"], config["padding"]["W"]["out"]
    return Built(lambda i, p: ({"y": layer.apply(p, i["x"])}, {}), _shape_only(layer),
                 lambda rng: {"x": normal(rng, (b, h, w, c_in))},
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
                 lambda rng: {"x": f32(normal(rng, shape, 2.0) + 0.5)},
                 {"input/x": f"activations x NHWC {shape}",
                  "output/y": f"layer_norm(x) over (H, W, C), eps {eps}, per-channel scale and bias {shape}"})


def _convnet_build(config):
    b, h, w = config["B"], config["H"], config["W"]
    model = twin(nn.ConvNet(h, w, config["out_dim"], channels=tuple(config["channels"])))
    template = _shape_only(model)
    blank = config.get("blank")
    if blank is None:
        return Built(lambda i, p: ({"y": model.apply(p, i["x"])}, {}), template,
                     lambda rng: {"x": f32(rng.uniform(0.0, 1.0, (b, h * w)))},
                     {"input/x": f"flattened images x ({b}, {h * w}) = ({b}, {h} * {w}), row-major, pixels in "
                                 "[0, 1]",
                      "output/y": f"ConvNet codes ({b}, {config['out_dim']})"})
    (r0, r1), (c0, c1) = blank["ink_rows"], blank["ink_cols"]

    def draw(rng):
        """Pixels in [0, 1] inside the ink box, exact zeros elsewhere (an MNIST digit's blank margins)."""
        x = onp.zeros((b, h, w))
        x[:, r0:r1, c0:c1] = f32(rng.uniform(0.0, 1.0, (b, r1 - r0, c1 - c0)))
        return {"x": x.reshape(b, h * w)}

    def draw_conv_params(rng):
        """Params drawn as for every component, then the conv biases set to 0 (the paper's initializer): a
        5x5 window of blank pixels then gives a pre-activation of exactly 0, and so does a window of the
        second layer that sees only such positions."""
        params = draw_params(template, rng)
        for layer in ("conv1", "conv2"):
            params[layer]["b"] = onp.zeros_like(params[layer]["b"])
        return params

    def forward(inputs, params):
        x = np.reshape(inputs["x"], (-1, h, w, 1))
        a1 = nn.conv2d(x, params["conv1"]["W"], model.conv1.stride) + params["conv1"]["b"]
        a2 = nn.conv2d(nn.relu(a1), params["conv2"]["W"], model.conv2.stride) + params["conv2"]["b"]
        ties = onp.array([onp.mean(onp.asarray(a1) == 0.0), onp.mean(onp.asarray(a2) == 0.0)])
        return {"y": model.apply(params, inputs["x"])}, {"pre_activation_1": a1, "pre_activation_2": a2,
                                                          "tie_fraction": ties}

    ho1, wo1 = -(-h // 2), -(-w // 2)
    ho2, wo2 = -(-ho1 // 2), -(-wo1 // 2)
    c1_, c2_ = config["channels"]
    return Built(forward, template, draw,
                 {"input/x": (f"flattened images x ({b}, {h * w}) = ({b}, {h} * {w}), row-major: exact zeros but "
                              f"for pixels in [0, 1] in rows {r0}..{r1 - 1}, columns {c0}..{c1 - 1}"),
                  "output/y": f"ConvNet codes ({b}, {config['out_dim']})",
                  "aux/pre_activation_1": (f"conv1(x) + b1 before the ReLU, NHWC ({b}, {ho1}, {wo1}, {c1_}); "
                                           "exact zeros where the 5x5 window sees only blank pixels"),
                  "aux/pre_activation_2": (f"conv2(relu(...)) + b2 before the ReLU, NHWC ({b}, {ho2}, {wo2}, "
                                           f"{c2_}); exact zeros where the window sees only such positions"),
                  "aux/tie_fraction": "the fractions of exact zeros among pre_activation_1 and pre_activation_2"},
                 param_notes={"conv1/b": "conv1 bias, all 0 (the paper's initializer), so blank windows tie",
                              "conv2/b": "conv2 bias, all 0 (the paper's initializer)"},
                 draw_params=draw_conv_params)


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
    model = twin(model)                         # the chain's fused twin; a single block has none

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
    return Built(forward, _shape_only(model), lambda rng: {"x": normal(rng, (b, d)), "y": normal(rng, (b, d))},
                 meanings, consts, param_notes=_coupling_notes(original(model)))


# --- Jacobians


def _jacobian_build(config):
    b, d = config["B"], config["dim"]
    if config["model"] == "mlp_residual":
        model, consts = nn.MLP(d, [d] * config["n_layers"], shortcuts=True), {}
    else:
        model, consts = _flow_model(config)

    def forward(inputs, params):
        J = onp.ascontiguousarray(fast_jacobians.batch_jacobian(model, params, inputs["x"]))
        svals = fast_linalg.singular_values(J)
        logc = jacobian.log_condition_numbers(svals)
        pct = jacobian.condition_percentiles(logc)          # (min, p20, p40, p60, p80, max)
        if isinstance(pct, dict):
            pct = [pct[k] for k in jacobian.PERCENTILE_KEYS]
        return ({"jacobian": J, "singular_values": svals, "log_condition_numbers": logc},
                {"condition_percentiles": onp.asarray(pct, dtype=onp.float64)})

    def plain_apply(params, x):
        """The model's own formula, op by op in autograd.numpy (the fused twins have first-order VJPs only)."""
        return model.apply(params, x)

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
    return Built(forward, _shape_only(model), lambda rng: {"x": normal(rng, (b, d))}, meanings, consts, traced,
                 param_notes=notes)


# --- Adam


def _adam_history(rng, shape, g_std, steps, b1, b2):
    """A gradient and the Adam moments after ``steps`` earlier gradients, all of scale ``g_std``
    (float32-exact): the state a real run would hold."""
    m, v = onp.zeros(shape), onp.zeros(shape)
    for _ in range(steps):
        g = g_std * rng.standard_normal(shape)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return normal(rng, shape, g_std), f32(m), f32(v)


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
        meanings[f"output/m/{p}"] = "m after the step"
        meanings[f"output/v/{p}"] = "v after the step"
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
    elif config["encoder"] == "mlp":
        g1, g2 = (nn.mlp(d, config["encoder_dims"], shortcuts=config["shortcuts"]) for _ in range(2))
    else:
        raise ValueError(f"training-step component with encoder {config['encoder']!r}: the builder knows "
                         "'realnvp' and 'mlp'; add a branch for it in _train_build, mi_ref/vectors/builders.py")
    e = g1.out_dim
    critic = critics.build(config["critic"], e, **({"hidden": config["critic_hidden"]} if "critic_hidden" in config
                                                   else {}))
    notes.update(_critic_notes(config["critic"], TRAIN_CRITIC_NOTES)(e, config.get("critic_hidden")))
    estimator = config["estimator"]
    template = {"g1": _shape_only(g1), "g2": _shape_only(g2), "critic": _shape_only(critic)}
    g1, g2, critic = twin(g1), twin(g2), twin(critic)

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
        x1 = normal(rng, (b, d))
        return {"x1": x1, "x2": f32(x1 + normal(rng, (b, d)))}

    est = _symbol(estimator)
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
    g1, g2 = twin(g1), twin(g2)

    def draw_params(rng):
        """The experiment's own initializers (kernels ~ truncated normal std 1e-4, zero biases, a Glorot
        critic), rounded to float32."""
        params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
        return tree_map(f32, params)

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
        x1 = normal(rng, (b, d))
        out = {"x1": x1, "x2": f32(x1 + normal(rng, (b, d)))}
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
        meanings[f"output/m/{p}"] = "m after the step"
        meanings[f"output/v/{p}"] = "v after the step"
        meanings[f"aux/gradient/{p}"] = f"d loss / d param/{p}, the gradient the update used"
    return Built(forward, template, draw, meanings, consts, differentiable=False, param_notes=notes,
                 draw_params=draw_params)


# component kind -> builder(config) -> Built (the kinds of mi_ref.vectors.components)
BUILDERS = {"bound": _bound_build, "critic": _critic_build, "dense": _dense_build, "mlp": _mlp_build,
            "conv2d": _conv_build, "layer_norm": _layer_norm_build, "convnet": _convnet_build, "flow": _flow_build,
            "jacobian": _jacobian_build, "adam": _adam_build, "train": _train_build, "train_step": _train_step_build}
