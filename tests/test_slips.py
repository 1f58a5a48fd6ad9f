"""Tests for the slip finder (mi_ref.slips) through ``mi-ref verify``: a deliberately wrong port, written here
independently of mi_ref.slips, fails and the report names its slip in one line; correct and randomly wrong
numbers get no such line.

The wrong ports compute their outputs (and, where they are differentiable, the gradients of the component's
L = sum_k sum(output_k * cotangent_k) by autograd) from the stored inputs, params and cotangents, as a
porter's code would. Some are partial (outputs only, checked with allow_missing), as a port that has no
gradients yet.
"""

import autograd.numpy as np
import numpy as onp
import pytest
from autograd import grad
from autograd.scipy.special import logsumexp

from mi_ref import cli, flows, nn, optim, slips, vectors
from mi_ref.tree import tree_flatten, tree_unflatten
from mi_ref.verify import compare


@pytest.fixture(scope="module")
def vdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "v"
    vectors.generate(out, seed=0)
    return out


@pytest.fixture(scope="module")
def manifest(vdir):
    return vectors.load_manifest(vdir)


def load(vdir, name):
    return vectors.load_component(vdir, name)


def slip_line(report):
    """The report's slip line ("" if none), after checking it is the one line the table gives it."""
    lines = [line for line in str(report).splitlines() if line.startswith("  slip: ")]
    assert len(lines) <= 1
    return lines[0] if lines else ""


def port(arrays, forward, template=None):
    """A port's results: ``forward(inputs, params) -> {output name: value}`` on the stored arrays, and the
    gradients of L with respect to every stored input and param (``template``: the params' tree)."""
    inputs = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
    flat = [(k[len("param/"):], v) for k, v in arrays.items() if k.startswith("param/")]
    params = tree_unflatten(template, [v for _, v in flat]) if template is not None else {}
    cotangents = {k[len("cotangent/"):]: v for k, v in arrays.items() if k.startswith("cotangent/")}
    outputs = forward(inputs, params)
    results = {f"output/{k}": onp.asarray(v) for k, v in outputs.items()}

    def scalar(pair):
        outs = forward(*pair)
        return sum(np.sum(outs[k] * cotangents[k]) for k in outs)

    g_inputs, g_params = grad(scalar)((inputs, params))
    results.update({f"grad/{k}": onp.asarray(v) for k, v in g_inputs.items()})
    if template is not None:
        results.update({f"grad/param/{p}": onp.asarray(v) for p, v in tree_flatten(g_params)})
    return results


# ---------------------------------------------------------------- the bounds


def _offdiag(K):
    return 1.0 - onp.eye(K)


WRONG_BOUNDS = [
    ("bound_infonce", lambda S, l: np.log(len(S)) + np.mean(np.diag(S) - logsumexp(S, axis=0)),
     "match I_NCE with logsumexp over axis 0: mi-ref's rows are u_i, its columns v_j"),
    ("bound_infonce_large", lambda S, l: np.log(len(S)) + np.mean(np.diag(S) - logsumexp(S, axis=0)),
     "match I_NCE with logsumexp over axis 0"),
    ("bound_infonce", lambda S, l: np.mean(np.diag(S) - logsumexp(S, axis=1)), "match I_NCE without log K"),
    ("bound_infonce", lambda S, l: np.log(len(S)) + np.sum(np.diag(S) - logsumexp(S, axis=1)),
     "match I_NCE with a sum over i where the mean is due"),
    ("bound_infonce",
     lambda S, l: np.log(len(S)) + np.mean(np.diag(S) - logsumexp(S - 1e300 * onp.eye(len(S)), axis=1)),
     "match I_NCE with the positive S_ii left out of the logsumexp"),
    ("bound_nwj", lambda S, l: 1 + np.mean(np.diag(S - 1)) - np.mean(np.exp(S - 1)),
     "match I_NWJ with the diagonal among the negatives"),
    ("bound_nwj", lambda S, l: 1 + np.mean(np.diag(S - 1)) - np.sum(np.exp(S - 1) * _offdiag(len(S))) / len(S) ** 2,
     "match I_NWJ with the diagonal masked out but the sum divided by K^2"),
    ("bound_tuba", lambda S, l: 1 + np.mean(np.diag(S)) - np.sum(np.exp(S) * _offdiag(len(S))),
     "match TUBA with a sum of exp over the pairs i != j where their mean is due"),
    ("bound_nwj", lambda S, l: 1 + np.mean(np.diag(S)) - np.sum(np.exp(S) * _offdiag(len(S))) / (len(S) * (len(S) - 1)),
     "match TUBA, i.e. I_NWJ without the shift: I_NWJ = TUBA(S - 1)"),
    ("bound_tuba", lambda S, l: 1 + np.mean(np.diag(S - 1)) - np.sum(np.exp(S - 1) * _offdiag(len(S))) / 30,
     "match I_NWJ, i.e. TUBA with the scores shifted by -1"),
    ("bound_tuba_baseline",
     lambda S, l: 1 + np.mean(np.diag(S)) - np.sum(np.exp(S - l[:, None]) * _offdiag(len(S))) / 30 - np.mean(l),
     "match TUBA with the log-baseline indexed by row, exp(S_ij - l_i): mi-ref's l_j belongs to column j"),
]


@pytest.mark.parametrize("name, bound, expected", WRONG_BOUNDS)
def test_a_bound_with_a_slip_is_named(vdir, name, bound, expected):
    arrays = load(vdir, name)
    results = port(arrays, lambda i, p: {"bound": bound(i["scores"], i.get("log_baseline"))})
    report = compare(vdir, name, results)
    assert not report.passed
    line = slip_line(report)
    names = "output/bound, grad/scores" + (", grad/log_baseline" if "input/log_baseline" in arrays else "")
    assert line.startswith(f"  slip: the given {names} {expected}"), line


def test_the_readme_nwj_example_is_named_from_plain_names(vdir, tmp_path, capsys):
    """I_NWJ averaging exp(S - 1) over the diagonal too, saved with plain names and checked with --component."""
    arrays = load(vdir, "bound_nwj")
    results = port(arrays, lambda i, p: {"bound": 1 + np.mean(np.diag(i["scores"] - 1))
                                                  - np.mean(np.exp(i["scores"] - 1))})
    path = tmp_path / "nwj.npz"
    onp.savez(path, **results)
    assert cli.main(["verify", str(vdir), str(path), "--component", "bound_nwj"]) == 1
    out = capsys.readouterr().out
    assert ("  slip: the given output/bound, grad/scores match I_NWJ with the diagonal among the negatives (a mean "
            "of exp over all K^2 pairs): the negatives are the K (K - 1) pairs i != j\n") in out


def test_a_training_loss_with_a_bound_slip_is_named_from_the_stored_scores(vdir):
    """A training step whose encoders and critic are right (aux/scores pass) but whose I_NCE takes the
    logsumexp over axis 0: its loss and bound are named; its gradients are not compared with the slip."""
    arrays = load(vdir, "train_critics_infonce")
    S = arrays["aux/scores"]
    wrong = onp.log(len(S)) + onp.mean(onp.diag(S) - logsumexp(S, axis=0))
    given = {k: v for k, v in arrays.items() if k.startswith(("grad/", "aux/"))}
    given.update({"output/loss": onp.asarray(-wrong), "aux/bound": onp.asarray(wrong)})
    report = compare(vdir, "train_critics_infonce", given)
    assert [c.name for c in report.failures] == ["output/loss", "aux/bound"]
    assert slip_line(report).startswith("  slip: the given output/loss, aux/bound match minus I_NCE with logsumexp "
                                        "over axis 0 of the stored aux/scores: mi-ref's rows are u_i")


# ---------------------------------------------------------------- RealNVP


def _flow_template(vdir, manifest, name):
    return vectors.build(name, manifest["components"][name]["config"]).template


def test_permutations_applied_in_the_other_direction_are_named(vdir, manifest):
    """A chain built with mi-ref's own flows, every block given argsort(perm) where perm belongs."""
    name = "realnvp_chain"
    arrays, config = load(vdir, name), manifest["components"][name]["config"]
    chain = flows.RealNVP(config["dim"], config["n_couplings"], config["hidden"], config["shift_only"],
                          rng=onp.random.default_rng(0))
    for block, perm in zip(chain.blocks, arrays["const/perms"]):
        block.perm, block.inv_perm = onp.argsort(perm), perm

    def forward(inputs, params):
        y, log_det = chain.forward(params, inputs["x"])
        return {"forward": y, "log_det": log_det, "inverse": chain.inverse(params, inputs["y"])}

    report = compare(vdir, name, port(arrays, forward, _flow_template(vdir, manifest, name)))
    assert len(report.failures) == len(report.compared)             # every output and gradient is off
    assert slip_line(report).endswith("match RealNVP with every permutation applied in the other direction, "
                                      "z = x[:, argsort(perm)]: mi-ref's block starts with z = x[:, perm] (column j "
                                      "of z is column perm[j] of x), and its inverse ends with x = z[:, argsort(perm)]")


@pytest.mark.parametrize("name", ["realnvp_block_affine", "realnvp_block_shift"])
def test_a_block_that_couples_and_then_permutes_is_named(vdir, manifest, name):
    arrays, config = load(vdir, name), manifest["components"][name]["config"]
    perm = arrays["const/perm"]
    block = flows.AffineCoupling(config["dim"], config["hidden"], config["shift_only"], onp.arange(config["dim"]))

    def forward(inputs, params):
        y, log_det = block.forward(params, inputs["x"])
        outputs = {"forward": y[:, perm], "inverse": block.inverse(params, inputs["y"][:, onp.argsort(perm)])}
        if not config["shift_only"]:                # a constant log-det is left out of the VJP (README)
            outputs["log_det"] = log_det
        return outputs

    results = port(arrays, forward, _flow_template(vdir, manifest, name))
    if config["shift_only"]:
        results["output/log_det"] = onp.zeros(config["B"])
    report = compare(vdir, name, results)
    assert not report.passed
    assert "match RealNVP blocks that couple and then permute: mi-ref's block permutes first" in slip_line(report)


# ---------------------------------------------------------------- convolutions, the layer norm, the ConvNet


def _conv_numpy(x, W, b, stride, pads):
    """Cross-correlation of NHWC x with W (kh, kw, C, O) after zero padding ``pads = ((top, bottom), (left,
    right))``, written with loops."""
    xp = onp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    k = W.shape[0]
    ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    y = onp.zeros((x.shape[0], ho, wo, W.shape[3]))
    for p in range(ho):
        for q in range(wo):
            y[:, p, q, :] = onp.einsum("bijc,ijco->bo", xp[:, p * stride:p * stride + k, q * stride:q * stride + k], W)
    return y + b


@pytest.mark.parametrize("pads", [((2, 1), (2, 1)), ((2, 2), (2, 2))])
def test_the_padding_side_is_named(vdir, pads):
    """conv2d_even (8 x 6 images, total padding 3 per axis): TensorFlow pads (1, 2); a port that pads (2, 1),
    or PyTorch's symmetric padding=2 (whose last pad pixel is never read), outputs only y."""
    a = load(vdir, "conv2d_even")
    report = compare(vdir, "conv2d_even", {"output/y": _conv_numpy(a["input/x"], a["param/W"], a["param/b"], 2, pads)},
                     allow_missing=True)
    assert not report.passed
    assert slip_line(report).startswith(
        "  slip: the given output/y matches conv2d with the odd padding pixel before (top, left), as PyTorch's "
        "symmetric padding=2 has it: TensorFlow's 'same' padding, mi-ref's, puts it after (bottom, right)")


def test_the_padding_side_is_not_named_where_it_makes_no_difference(vdir):
    """On 7 x 5 images the 'same' padding is symmetric: the port with the odd pixel before passes."""
    a = load(vdir, "conv2d_odd")
    y = _conv_numpy(a["input/x"], a["param/W"], a["param/b"], 2, ((2, 2), (2, 2)))
    report = compare(vdir, "conv2d_odd", {"output/y": y}, allow_missing=True)
    assert report.passed and not slip_line(report)


def _layer_norm_port(rule):
    def norm(x, scale, bias):
        mu = np.mean(x, axis=(1, 2, 3), keepdims=True)
        var = np.mean((x - mu) ** 2, axis=(1, 2, 3), keepdims=True)
        if rule == "sqrt":
            return (x - mu) / np.sqrt(var + 1e-6) * scale + bias
        n = onp.prod(x.shape[1:])
        return (x - mu) / (np.sqrt(var * n / (n - 1)) + 1e-6) * scale + bias
    return norm


@pytest.mark.parametrize("rule, expected", [
    ("sqrt", "match the layer norm with eps inside the square root, (x - mu) / sqrt(var + eps) "
             "(torch.nn.LayerNorm's): mi-ref (the paper's notebook) divides by std + eps"),
    ("ddof1", "match the layer norm with the sample standard deviation (ddof = 1, torch.std's default)"),
])
def test_the_layer_norm_slips_are_named(vdir, manifest, rule, expected):
    arrays = load(vdir, "layer_norm")
    norm = _layer_norm_port(rule)
    results = port(arrays, lambda i, p: {"y": norm(i["x"], p["scale"], p["bias"])},
                   _flow_template(vdir, manifest, "layer_norm"))
    report = compare(vdir, "layer_norm", results)
    assert not report.passed
    names = "output/y, grad/x, grad/param/bias, grad/param/scale"
    assert slip_line(report).startswith(f"  slip: the given {names} {expected}")


def test_the_convnets_layer_norm_with_eps_inside_the_square_root_is_named(vdir, manifest):
    """The ConvNet built from mi-ref's conv2d and ReLU, with torch.nn.LayerNorm's formula in the middle."""
    name = "convnet_4x8"
    arrays, config = load(vdir, name), manifest["components"][name]["config"]
    norm = _layer_norm_port("sqrt")

    def forward(inputs, params):
        h = np.reshape(inputs["x"], (-1, config["H"], config["W"], 1))
        for layer in ("conv1", "conv2"):
            h = nn.relu(nn.conv2d(h, params[layer]["W"], 2) + params[layer]["b"])
        h = norm(h, params["norm"]["scale"], params["norm"]["bias"])
        return {"y": np.dot(np.mean(h, axis=(1, 2)), params["out"]["W"]) + params["out"]["b"]}

    report = compare(vdir, name, port(arrays, forward, _flow_template(vdir, manifest, name)))
    assert not report.passed
    assert "match the ConvNet's layer norm with eps inside the square root" in slip_line(report)


def test_the_convnets_padding_side_is_named_in_a_pytorch_port(vdir, manifest, monkeypatch):
    """mi-ref's PyTorch port with the odd padding pixel put before (top, left)."""
    pytest.importorskip("torch")
    from mi_ref.porting import pytorch as port_module

    def pad_before(x, kernel, stride):
        pads = []
        for n in (x.shape[3], x.shape[2]):
            total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
            pads += [total - total // 2, total // 2]
        return port_module.F.pad(x, pads)

    port_module._torch()
    monkeypatch.setattr(port_module, "same_pad", pad_before)
    for name in ("convnet_4x8", "convnet_14x28"):
        entry = manifest["components"][name]
        results = port_module.run_component(name, entry["config"], load(vdir, name), port_module.torch.float64)
        report = compare(vdir, name, results)
        assert not report.passed
        assert "match the ConvNet's convolutions with the odd padding pixel before (top, left)" in slip_line(report)


# ---------------------------------------------------------------- Adam


def _adam_port(arrays, form, step, gradients="input/g/", **config):
    paths = [k[len("param/"):] for k in arrays if k.startswith("param/")]
    adam = optim.Adam(form=form, **config)
    state = {"step": step, "m": {p: arrays[f"input/m/{p}"] for p in paths},
             "v": {p: arrays[f"input/v/{p}"] for p in paths}}
    new, new_state = adam.update({p: arrays[f"param/{p}"] for p in paths}, {p: arrays[gradients + p] for p in paths},
                                 state)
    out = {}
    for p in paths:
        out.update({f"output/param/{p}": new[p], f"output/m/{p}": new_state["m"][p],
                    f"output/v/{p}": new_state["v"][p]})
    return out


@pytest.mark.parametrize("name, form, expected", [
    ("adam_step", "tf", "match Adam in TensorFlow 1's form: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps added to "
                        "sqrt(v') without bias correction: this component is Adam in the textbook form"),
    ("adam_step_tf", "textbook", "match Adam in the textbook form (torch.optim.Adam's): eps added to sqrt(v' / (1 - "
                                 "b2^t)): this component is Adam in TensorFlow 1's form"),
])
def test_the_other_form_of_adam_is_named(vdir, manifest, name, form, expected):
    arrays, config = load(vdir, name), manifest["components"][name]["config"]
    given = _adam_port(arrays, form, int(arrays["const/step"]), lr=config["lr"], eps=config["eps"])
    report = compare(vdir, name, given)
    assert {c.name.split("/")[1] for c in report.failures} == {"param"}         # m and v are the same in both
    assert expected in slip_line(report)


def test_adam_one_step_behind_is_named(vdir, manifest):
    arrays, config = load(vdir, "adam_step"), manifest["components"]["adam_step"]["config"]
    report = compare(vdir, "adam_step", _adam_port(arrays, "textbook", int(arrays["const/step"]) - 1, lr=config["lr"]))
    assert "match Adam with t = const/step (one step behind): the update uses t = const/step + 1" in slip_line(report)


def test_a_whole_training_step_with_textbook_adam_is_named(vdir, manifest):
    arrays, config = load(vdir, "train_step_invertible"), manifest["components"]["train_step_invertible"]["config"]
    given = _adam_port(arrays, "textbook", 0, "aux/gradient/", lr=config["lr"])
    given["output/loss"] = arrays["output/loss"]
    report = compare(vdir, "train_step_invertible", given)
    assert not report.passed and "match Adam in the textbook form" in slip_line(report)


# ---------------------------------------------------------------- no false names, and every slip computes


def test_no_slip_is_named_for_right_or_randomly_wrong_numbers(vdir, manifest):
    rng = onp.random.default_rng(0)
    for name in manifest["components"]:
        arrays = load(vdir, name)
        given = {k: v for k, v in arrays.items() if k.startswith(("output/", "grad/"))}
        assert not slip_line(compare(vdir, name, given)), name
        noisy = {k: v * (1 + 1e-6 * rng.standard_normal(v.shape)) if v.dtype.kind == "f" else v
                 for k, v in given.items()}
        report = compare(vdir, name, noisy)
        assert not report.passed and not slip_line(report), name


def test_every_slip_computes_arrays_of_its_component_and_changes_them(vdir, manifest):
    """Every slip of every component yields arrays named and shaped as stored, finite where the component is
    not float64-only, and out of the float64 tolerance of the golden ones -- but for the padding slips on odd
    sizes, where TensorFlow's 'same' padding is symmetric."""
    tried = 0
    for name, entry in manifest["components"].items():
        golden = load(vdir, name)
        for slip in slips.slips_for(name, entry["config"]):
            tried += 1
            with onp.errstate(all="ignore"):
                variant = slip.compute(golden, entry["config"])
            assert variant, (name, slip.what)
            for key, value in variant.items():
                assert key in golden and value.shape == golden[key].shape, (name, slip.what, key)
                assert onp.isfinite(value).all() or entry["float64_only"], (name, slip.what, key)
            diff = max(float(onp.max(onp.abs(variant[k] - golden[k]) / (1e-12 + 1e-10 * onp.abs(golden[k]))))
                       for k in variant)
            assert (diff < 1) == (name == "conv2d_odd"), (name, slip.what, diff)
    assert tried >= 60
    assert slips.slips_for("dense", {}) == [] and slips.slips_for("critic_bilinear", {}) == []


def test_a_pytorch_port_with_the_logsumexp_over_axis_0_is_named_wherever_i_nce_is(vdir, monkeypatch):
    """mi-ref's whole PyTorch port with one slip: every component that holds I_NCE names it."""
    pytest.importorskip("torch")
    from mi_ref.porting import pytorch as port_module
    port_module._torch()
    torch = port_module.torch
    monkeypatch.setitem(port_module.BOUNDS, "infonce",
                        lambda S: onp.log(S.shape[0]) + (torch.diagonal(S) - torch.logsumexp(S, dim=0)).mean())
    results, reports = port_module.run(vdir)
    failed = {r.component: slip_line(r) for r in reports if not r.passed}
    assert set(failed) == {"bound_infonce", "bound_infonce_large", "train_conditioning", "train_critics_infonce"}
    for name, line in failed.items():
        assert "I_NCE with logsumexp over axis 0" in line and "mi-ref's rows are u_i, its columns v_j" in line, name
        assert ("of the stored aux/scores" in line) == name.startswith("train_"), name


def test_the_math_modules_do_not_import_the_verifier():
    """The slips live beside the verifier: the formulas' modules stay free of it."""
    import ast
    from pathlib import Path
    package = Path(slips.__file__).parent
    for module in ("bounds", "nn", "flows", "critics", "optim", "objectives", "jacobian"):
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[-1] in ("verify", "slips", "vectors")], (module, imported)
