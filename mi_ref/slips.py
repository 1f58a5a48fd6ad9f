"""The common slips of a port, computed on a golden component's stored inputs, so that ``mi-ref verify`` can
name the slip when a port's numbers fail (:func:`identify`).

A slip is a formula a porter easily writes instead of mi-ref's: a logsumexp over the other axis, the diagonal
of a score matrix among the negatives, a RealNVP permutation applied in the other direction, the odd padding
pixel on the other side, eps inside the layer norm's square root, the other form of Adam. Each
:class:`Slip` recomputes the component's outputs (and, for differentiable components, the gradients of the
component's scalar L = sum_k sum(output_k * cotangent_k) by autograd) from the stored ``input/``,
``param/``, ``const/`` and ``cotangent/`` arrays, with the slip in place. The formulas are written out here,
independently of mi-ref's models, op by op in autograd.numpy; ReLU has the derivative 0 at 0 as everywhere
in mi-ref.

Guarantee of :func:`identify`: it names a slip only when every given array that the slip computes (and that
has the golden shape) is within the report's tolerance of the slip's numbers, and at least one of them is
out of tolerance of the golden numbers. It tries nothing for components without slips here, and costs one
evaluation (and one backward pass) of the component per slip, only when an array fails.
"""

import warnings
from dataclasses import dataclass

import autograd.numpy as np
import numpy as onp
from autograd import grad
from autograd.scipy.special import logsumexp

from .optim import Adam


@dataclass(frozen=True)
class Slip:
    """One slip: ``what`` the given numbers then match, ``why`` that differs from mi-ref (the convention),
    and ``compute(arrays, config) -> {array name: value}``: the component's outputs and gradients (named as in
    its file; for some slips only the arrays the slip changes) with the slip in place, computed from the
    stored ``arrays`` and the component's manifest ``config``."""

    what: str
    why: str
    compute: object

    def line(self, names):
        """The one-line hint: which given arrays match, what they match, and mi-ref's convention."""
        return f"the given {', '.join(names)} match{'es' if len(names) == 1 else ''} {self.what}: {self.why}"


# ----------------------------------------------------------------------------------------------------
# evaluating a slipped formula: outputs and the gradients of L


def _split(arrays, category):
    prefix = category + "/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _with_grads(forward):
    """``compute(arrays, config)`` for a differentiable component: ``forward(inputs, params, consts, config)
    -> {output name: value}`` evaluated on the stored arrays, and dL/d(inputs, params) for every ``grad/``
    array the component stores, L = sum_k sum(output_k * cotangent_k) with the stored cotangents."""

    def compute(arrays, config):
        inputs, params = _split(arrays, "input"), _split(arrays, "param")
        consts, cotangents = _split(arrays, "const"), _split(arrays, "cotangent")
        outputs = forward(inputs, params, consts, config)
        result = {f"output/{k}": onp.asarray(v, dtype=onp.float64) for k, v in outputs.items()}
        wanted = [k for k in arrays if k.startswith("grad/")]
        if not wanted:
            return result

        def scalar(pair):
            outs = forward(pair[0], pair[1], consts, config)
            return sum(np.sum(outs[k] * cotangents[k]) for k in outs if k in cotangents)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Output seems independent of input")
            g_inputs, g_params = grad(scalar)((inputs, params))
        for name in wanted:
            rest = name[len("grad/"):]
            value = g_params[rest[len("param/"):]] if rest.startswith("param/") else g_inputs[rest]
            result[name] = onp.asarray(value, dtype=onp.float64)
        return result

    return compute


def _relu(x):
    """max(x, 0) with the derivative 0 at 0."""
    return np.where(x > 0, x, 0.0)


def _mlp(params, prefix, h):
    """A dense MLP from flat params ``{prefix}layers/i/W``, ``.../b``: ReLU after every layer but the last."""
    n = 0
    while f"{prefix}layers/{n}/W" in params:
        n += 1
    for i in range(n):
        h = np.dot(h, params[f"{prefix}layers/{i}/W"]) + params[f"{prefix}layers/{i}/b"]
        if i < n - 1:
            h = _relu(h)
    return h


# ----------------------------------------------------------------------------------------------------
# the bounds: I_NCE, I_NWJ, TUBA


def _infonce(S, axis=1, log_k=True, reduce="mean", positive_in_denominator=True):
    """log K + mean_i (S_ii - logsumexp_j S_ij) and its slips: the logsumexp over axis 0 (down each column),
    no log K, a sum over i, or the positive S_ii left out of the logsumexp."""
    K = S.shape[0]
    diag = np.diag(S)
    if positive_in_denominator:
        lse = logsumexp(S, axis=axis)
    else:
        lse = logsumexp(np.where(onp.eye(K, dtype=bool), -np.inf, S), axis=axis)
    terms = diag - lse
    value = np.sum(terms) if reduce == "sum" else np.mean(terms)
    return value + (np.log(K) if log_k else 0.0)


def _tuba(S, l=None, shift=0.0, negatives="off_diagonal", divide_by="pairs", baseline_axis=1):
    """1 + mean_i S_ii - mean_{i != j} exp(S_ij - l_j) - mean_j l_j on S - shift, and its slips: the diagonal
    among the negatives (``negatives="all"``), the off-diagonal sum divided by K^2 or not divided at all
    (``divide_by``), the baseline indexed by row (``baseline_axis=0``: exp(S_ij - l_i))."""
    K = S.shape[0]
    S = S - shift
    shifted = S if l is None else (S - l[None, :] if baseline_axis == 1 else S - l[:, None])
    if negatives == "all":
        log_sum, count = logsumexp(shifted), K * K
    else:
        log_sum, count = logsumexp(shifted[~onp.eye(K, dtype=bool)]), K * (K - 1)
    log_count = {"pairs": onp.log(count), "K2": onp.log(K * K), "none": 0.0}[divide_by]
    value = 1.0 + np.mean(np.diag(S)) - np.exp(log_sum - log_count)
    return value if l is None else value - np.mean(l)


def _bound_slip(what, why, bound):
    """A slip of a bound component: ``bound(S, l)`` replaces the estimator."""
    def forward(inputs, params, consts, config):
        return {"bound": bound(inputs["scores"], inputs.get("log_baseline"))}
    return Slip(what, why, _with_grads(forward))


_ROWS = "mi-ref's rows are u_i, its columns v_j, and the logsumexp runs over j along each row (axis 1)"


def _infonce_slips():
    return [
        ("I_NCE with logsumexp over axis 0", _ROWS, lambda S, l: _infonce(S, axis=0)),
        ("I_NCE without log K", "I_NCE = log K + mean_i (S_ii - logsumexp_j S_ij)",
         lambda S, l: _infonce(S, log_k=False)),
        ("I_NCE with a sum over i where the mean is due", "I_NCE = log K + mean_i (S_ii - logsumexp_j S_ij)",
         lambda S, l: _infonce(S, reduce="sum")),
        ("I_NCE with the positive S_ii left out of the logsumexp",
         "the logsumexp runs over every j of row i, the positive pair j = i included",
         lambda S, l: _infonce(S, positive_in_denominator=False)),
    ]


def _tuba_slips(name, shift):
    off = "the negatives are the K (K - 1) pairs i != j"
    slips = [
        (f"{name} with the diagonal among the negatives (a mean of exp over all K^2 pairs)", off,
         lambda S, l: _tuba(S, l, shift, negatives="all")),
        (f"{name} with the diagonal masked out but the sum divided by K^2",
         off + ", so their mean divides by K (K - 1)",
         lambda S, l: _tuba(S, l, shift, divide_by="K2")),
        (f"{name} with a sum of exp over the pairs i != j where their mean is due", off + ", averaged",
         lambda S, l: _tuba(S, l, shift, divide_by="none")),
    ]
    if shift:
        slips.append(("TUBA, i.e. I_NWJ without the shift", "I_NWJ = TUBA(S - 1)", lambda S, l: _tuba(S, l)))
    else:
        slips.append(("I_NWJ, i.e. TUBA with the scores shifted by -1", "TUBA takes S as it is, I_NWJ = TUBA(S - 1)",
                      lambda S, l: _tuba(S, l, 1.0)))
    return slips


def _tuba_baseline_slips():
    return [("TUBA with the log-baseline indexed by row, exp(S_ij - l_i)",
             "mi-ref's l_j belongs to column j (v_j): exp(S_ij - l_j)",
             lambda S, l: _tuba(S, l, baseline_axis=0))] + _tuba_slips("TUBA", 0.0)


def _estimator_slips(estimator, log_baseline=False):
    if estimator == "infonce":
        return _infonce_slips()
    if estimator == "nwj":
        return _tuba_slips("I_NWJ", 1.0)
    return _tuba_baseline_slips() if log_baseline else _tuba_slips("TUBA", 0.0)


def _bound_slips(config):
    return [_bound_slip(w, y, b) for w, y, b in _estimator_slips(config["estimator"], config.get("log_baseline"))]


def _loss_slips(config):
    """A training step whose loss is minus a slipped bound, on the stored aux/scores (the loss only: its
    gradients would need the encoders too)."""
    def make(bound):
        def compute(arrays, config):
            value = onp.asarray(bound(arrays["aux/scores"], None), dtype=onp.float64)
            return {"output/loss": -value, "aux/bound": value}
        return compute
    return [Slip(f"minus {w} of the stored aux/scores", y, make(b))
            for w, y, b in _estimator_slips(config["estimator"])]


# ----------------------------------------------------------------------------------------------------
# RealNVP


def _flow_blocks(consts):
    """[(param prefix of the block's net, its permutation)], the chain's blocks in index order."""
    if "perm" in consts:
        return [("net/", onp.asarray(consts["perm"]))]
    return [(f"blocks/{k}/net/", onp.asarray(p)) for k, p in enumerate(consts["perms"])]


def _shift_scale(params, prefix, z_a, n_out, shift_only):
    out = _mlp(params, prefix, z_a)
    if shift_only:
        return out, None
    return out[:, :n_out], 1e-7 + np.logaddexp(0.0, out[:, n_out:])


def _flow_forward(permute_first, inverse_direction):
    """The RealNVP outputs (forward, log_det, inverse) with a slip: ``inverse_direction`` applies every
    permutation as z = x[:, argsort(perm)] (and undoes it with perm); ``permute_first=False`` couples and
    then permutes within every block."""
    def forward(inputs, params, consts, config):
        shift_only = config["shift_only"]
        blocks = [(prefix, onp.argsort(perm) if inverse_direction else perm) for prefix, perm in _flow_blocks(consts)]
        x = inputs["x"]
        d = x.shape[1]
        h, n_out = d // 2, d - d // 2
        log_det = np.zeros(x.shape[0])

        def couple(z, prefix):
            t, s = _shift_scale(params, prefix, z[:, :h], n_out, shift_only)
            y_b = z[:, h:] + t if s is None else z[:, h:] * s + t
            return np.concatenate([z[:, :h], y_b], axis=1), (0.0 if s is None else np.sum(np.log(s), axis=1))

        def uncouple(y, prefix):
            t, s = _shift_scale(params, prefix, y[:, :h], n_out, shift_only)
            return np.concatenate([y[:, :h], y[:, h:] - t if s is None else (y[:, h:] - t) / s], axis=1)

        for prefix, perm in blocks:
            if permute_first:
                x, ld = couple(x[:, perm], prefix)
            else:
                x, ld = couple(x, prefix)
                x = x[:, perm]
            log_det = log_det + ld
        y = inputs["y"]
        for prefix, perm in reversed(blocks):
            y = uncouple(y, prefix)[:, onp.argsort(perm)] if permute_first else uncouple(y[:, onp.argsort(perm)],
                                                                                           prefix)
        return {"forward": x, "log_det": log_det, "inverse": y}
    return forward


def _flow_slips(config):
    perm_why = ("mi-ref's block starts with z = x[:, perm] (column j of z is column perm[j] of x), and its "
                "inverse ends with x = z[:, argsort(perm)]")
    return [Slip("RealNVP with every permutation applied in the other direction, z = x[:, argsort(perm)]", perm_why,
                 _with_grads(_flow_forward(True, True))),
            Slip("RealNVP blocks that couple and then permute",
                 "mi-ref's block permutes first (z = x[:, perm]) and then couples, the order of the paper's "
                 "TFP Chain; the flow ends with a coupling",
                 _with_grads(_flow_forward(False, False)))]


# ----------------------------------------------------------------------------------------------------
# convolutions, the layer norm and the ConvNet


def _pads(n, k, s, rule):
    """(before, after) zero padding of an axis of size n: TensorFlow's 'same' rule, out = ceil(n / s), total =
    max((out - 1) s + k - n, 0), with the odd pixel after (``"after"``, mi-ref's) or before (``"before"``).
    For k = 5 and s = 2, as everywhere here, PyTorch's symmetric padding=2 gives the numbers of ``"before"``:
    2 pixels before, and of its 2 after the last is never read."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return {"after": (total // 2, total - total // 2), "before": (total - total // 2, total // 2)}[rule]


def _conv(x, W, b, stride, rule):
    """y[b, p, q, o] = sum_{i, j, c} xpad[b, p s + i, q s + j, c] W[i, j, c, o] + b[o], x NHWC, W (kh, kw, C, O)."""
    B, H, Wd, C = x.shape
    k = W.shape[0]
    (top, bottom), (left, right) = _pads(H, k, stride, rule), _pads(Wd, k, stride, rule)
    x = np.concatenate([np.zeros((B, top, Wd, C)), x, np.zeros((B, bottom, Wd, C))], axis=1)
    x = np.concatenate([np.zeros((B, x.shape[1], left, C)), x, np.zeros((B, x.shape[1], right, C))], axis=2)
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    y = 0.0
    for i in range(k):
        for j in range(W.shape[1]):
            patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            y = y + np.einsum("bpqc,co->bpqo", patch, W[i, j])
    return y + b


def _layer_norm(x, scale, bias, eps, rule):
    """(x - mu) / (std + eps) * scale + bias over all but the batch axis, and its slips: ``"sqrt"`` divides by
    sqrt(var + eps), ``"ddof1"`` takes the sample standard deviation."""
    axes = tuple(range(1, x.ndim))
    mu = np.mean(x, axis=axes, keepdims=True)
    sq = np.sum((x - mu) ** 2, axis=axes, keepdims=True)
    n = onp.prod(x.shape[1:])
    if rule == "sqrt":
        return (x - mu) / np.sqrt(sq / n + eps) * scale + bias
    std = np.sqrt(sq / (n - 1)) if rule == "ddof1" else np.sqrt(sq / n)
    return (x - mu) / (std + eps) * scale + bias


_PAD_SLIPS = {
    "before": ("with the odd padding pixel before (top, left), as PyTorch's symmetric padding=2 has it",
               "TensorFlow's 'same' padding, mi-ref's, puts it after (bottom, right): pad_before = total // 2, "
               "pad_after = total - pad_before; pad with F.pad(x, (left, right, top, bottom)) and call conv2d "
               "with padding=0"),
}
_NORM_SLIPS = {
    "sqrt": ("with eps inside the square root, (x - mu) / sqrt(var + eps) (torch.nn.LayerNorm's)",
             "mi-ref (the paper's notebook) divides by std + eps"),
    "ddof1": ("with the sample standard deviation (ddof = 1, torch.std's default)",
              "mi-ref's std is the population one: torch.std(..., unbiased=False)"),
}


def _conv_slips(config):
    def forward(rule):
        return lambda i, p, c, cfg: {"y": _conv(i["x"], p["W"], p["b"], cfg["stride"], rule)}
    return [Slip(f"conv2d {_PAD_SLIPS[r][0]}", _PAD_SLIPS[r][1], _with_grads(forward(r))) for r in _PAD_SLIPS]


def _layer_norm_slips(config):
    def forward(rule):
        return lambda i, p, c, cfg: {"y": _layer_norm(i["x"], p["scale"], p["bias"], cfg["eps"], rule)}
    return [Slip(f"the layer norm {_NORM_SLIPS[r][0]}", _NORM_SLIPS[r][1], _with_grads(forward(r)))
            for r in _NORM_SLIPS]


def _convnet_forward(pad_rule, norm_rule):
    def forward(inputs, params, consts, config):
        h = np.reshape(inputs["x"], (-1, config["H"], config["W"], 1))
        for layer in ("conv1", "conv2"):
            h = _relu(_conv(h, params[f"{layer}/W"], params[f"{layer}/b"], 2, pad_rule))
        h = _layer_norm(h, params["norm/scale"], params["norm/bias"], 1e-6, norm_rule)
        return {"y": np.dot(np.mean(h, axis=(1, 2)), params["out/W"]) + params["out/b"]}
    return forward


def _convnet_slips(config):
    return ([Slip(f"the ConvNet's convolutions {_PAD_SLIPS[r][0]}", _PAD_SLIPS[r][1],
                  _with_grads(_convnet_forward(r, "std"))) for r in _PAD_SLIPS]
            + [Slip(f"the ConvNet's layer norm {_NORM_SLIPS[r][0]}", _NORM_SLIPS[r][1],
                    _with_grads(_convnet_forward("after", r))) for r in _NORM_SLIPS])


# ----------------------------------------------------------------------------------------------------
# Adam


_FORMS = {"textbook": "Adam in the textbook form (torch.optim.Adam's): eps added to sqrt(v' / (1 - b2^t))",
          "tf": "Adam in TensorFlow 1's form: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps added to sqrt(v') "
                "without bias correction"}


def _adam(form, step_offset, gradients):
    """The Adam update of every ``param/PATH`` in ``form`` with t = const/step + 1 - step_offset, from the
    stored moments and the gradients in ``gradients`` + PATH."""
    def compute(arrays, config):
        paths = [k[len("param/"):] for k in arrays if k.startswith("param/")]
        adam = Adam(config["lr"], config.get("b1", 0.9), config.get("b2", 0.999), config.get("eps", 1e-8), form=form)
        state = {"step": int(arrays["const/step"]) - step_offset,
                 "m": {p: arrays[f"input/m/{p}"] for p in paths}, "v": {p: arrays[f"input/v/{p}"] for p in paths}}
        with onp.errstate(all="ignore"):
            new, new_state = adam.update({p: arrays[f"param/{p}"] for p in paths},
                                         {p: arrays[f"{gradients}{p}"] for p in paths}, state)
        out = {}
        for p in paths:
            out.update({f"output/param/{p}": new[p], f"output/m/{p}": new_state["m"][p],
                        f"output/v/{p}": new_state["v"][p]})
        return out
    return compute


def _adam_slips(config, gradients="input/g/"):
    """The other form; and t one step behind where an earlier step exists (config "step" >= 1)."""
    other = "tf" if config["form"] == "textbook" else "textbook"
    slips = [Slip(_FORMS[other], f"this component is {_FORMS[config['form']]}", _adam(other, 0, gradients))]
    if config.get("step", 0) >= 1:
        slips.append(Slip("Adam with t = const/step (one step behind)", "the update uses t = const/step + 1, the "
                          "number of this step (PyTorch's state['step'] before the call, plus one)",
                          _adam(config["form"], 1, gradients)))
    return slips


# ----------------------------------------------------------------------------------------------------


def slips_for(component, config):
    """The slips tried for a component (by its name and manifest config); empty for components without any."""
    if component.startswith("bound_"):
        return _bound_slips(config)
    if component.startswith("realnvp_"):
        return _flow_slips(config)
    if component.startswith("conv2d_"):
        return _conv_slips(config)
    if component == "layer_norm":
        return _layer_norm_slips(config)
    if component.startswith("convnet_"):
        return _convnet_slips(config)
    if component.startswith("adam_step"):
        return _adam_slips(config)
    if component == "train_step_invertible":          # the update from the stored gradients
        return _adam_slips(config, "aux/gradient/")
    if component.startswith("train_") and config.get("estimator"):
        return _loss_slips(config)
    return []


def identify(component, config, golden, given, excess):
    """The hint line of the first slip that reproduces the given numbers, or "" (see the module docstring).

    ``golden``: the component's stored arrays; ``config``: its manifest config; ``given``: the port's arrays
    by name; ``excess(a, e)``: per entry, how far ``a`` lies beyond the tolerance around ``e`` (<= 0 passes),
    the rule of :mod:`mi_ref.verify`.
    """
    def within(a, e):
        return bool((excess(onp.asarray(a, dtype=onp.float64), onp.asarray(e, dtype=onp.float64)) <= 0).all())

    comparable = [n for n in golden if n in given and golden[n].dtype.kind == "f"
                  and onp.shape(given[n]) == golden[n].shape and onp.asarray(given[n]).dtype.kind in "iuf"]
    failing = {n for n in comparable if not within(given[n], golden[n])}
    if not failing:
        return ""
    for slip in slips_for(component, config):
        with onp.errstate(all="ignore"):
            variant = slip.compute(golden, config)
        names = [n for n in comparable if n in variant]
        if not any(n in failing and not within(variant[n], golden[n]) for n in names):
            continue                    # the slip changes none of the failing arrays (e.g. symmetric padding)
        if all(onp.shape(variant[n]) == golden[n].shape and onp.isfinite(variant[n]).all()
               and within(given[n], variant[n]) for n in names):
            return slip.line(names)
    return ""
