"""Tests for the verification kit: golden vectors (mi_ref.vectors), compare (mi_ref.verify), the CLI and the
PyTorch example.

What is proven here:

* generation is deterministic to the byte (same seed -> identical files) and the files need no pickle;
* every stored output, aux value and gradient is what mi-ref computes from the stored inputs, params and
  cotangents (exactly: the same code on the same numbers gives the same bits), and the training steps are
  exactly ``value_and_grad`` of ``mi_ref.objectives.mi_loss``;
* the conventions the manifest documents (dense layout, 'same' padding, permutations, score axes, Adam,
  Jacobians) reproduce the stored numbers when implemented independently from the text, to 1e-12;
* the manifest describes every array of every file, and nothing else;
* ``compare`` passes the true numbers (float64, and float32 casts at float32 tolerances) and flags
  perturbed, missing, misnamed and misshapen arrays; bad input raises clear errors.
"""

import json
from pathlib import Path

import numpy as onp
import pytest
from autograd import grad, value_and_grad

from mi_ref import cli, critics, flows, jacobian, nn, objectives, vectors, verify
from mi_ref.tree import tree_flatten, tree_unflatten
from mi_ref.accel import twin
from mi_ref.verify import compare
from mi_ref.vectors import recompute

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "verify_torch_example.py"


@pytest.fixture(scope="module")
def vdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "v"
    vectors.generate(out, seed=0)
    return out


@pytest.fixture(scope="module")
def manifest(vdir):
    return json.loads((vdir / "manifest.json").read_text())


def load(vdir, name):
    return vectors.load_component(vdir, name)


def golden_results(arrays, categories=("output", "grad", "aux")):
    return {k: v for k, v in arrays.items() if k.split("/", 1)[0] in categories}


# ---------------------------------------------------------------- generation: determinism and format


def test_same_seed_gives_byte_identical_files(vdir, tmp_path):
    again = tmp_path / "again"
    vectors.generate(again, seed=0)
    names = sorted(p.name for p in vdir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (vdir / name).read_bytes() == (again / name).read_bytes(), name


def test_other_seed_gives_other_numbers(vdir, tmp_path):
    vectors.generate(tmp_path / "s1", seed=1, names=["critic_bilinear"])
    a, b = load(vdir, "critic_bilinear"), load(tmp_path / "s1", "critic_bilinear")
    assert not onp.array_equal(a["input/u"], b["input/u"])


def test_component_streams_are_independent(vdir, tmp_path):
    """A component's numbers do not depend on which other components are generated."""
    vectors.generate(tmp_path / "one", seed=0, names=["train_invertible"])
    assert ((tmp_path / "one" / "train_invertible.npz").read_bytes()
            == (vdir / "train_invertible.npz").read_bytes())


def test_files_are_plain_npz_of_float64_and_int64(vdir, manifest):
    for name, entry in manifest["components"].items():
        with onp.load(vdir / entry["file"], allow_pickle=False) as f:
            for key in f.files:
                value = f[key]
                assert value.dtype in (onp.float64, onp.int64), (name, key, value.dtype)
                if value.dtype == onp.float64:
                    assert onp.isfinite(value).all(), (name, key)


def test_inputs_params_and_cotangents_are_exact_in_float32(vdir, manifest):
    for name in manifest["components"]:
        for key, value in load(vdir, name).items():
            if key.split("/", 1)[0] in ("input", "param", "cotangent"):
                assert onp.array_equal(value.astype(onp.float32).astype(onp.float64), value), (name, key)


def test_manifest_describes_every_array_and_nothing_more(vdir, manifest):
    assert manifest["format"] == vectors.FORMAT and manifest["format_version"] == vectors.FORMAT_VERSION
    assert manifest["seed"] == 0
    from mi_ref import __version__
    assert manifest["mi_ref_version"] == __version__
    for key in ("dense", "conv2d", "permutation", "scores", "param_order", "scalar", "layer_norm", "adam"):
        assert manifest["conventions"][key]
    assert set(manifest["tolerances"]) == {"float64", "float32"}
    assert list(manifest["components"]) == vectors.component_names()
    files = {entry["file"] for entry in manifest["components"].values()}
    assert {p.name for p in vdir.iterdir()} == files | {"manifest.json"}
    for name, entry in manifest["components"].items():
        assert entry["summary"] and entry["functions"] and "structure_seed" in entry["config"]
        with onp.load(vdir / entry["file"], allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
        described = entry["arrays"]
        assert [a["name"] for a in described] == list(stored), name
        for a in described:
            assert a["shape"] == list(stored[a["name"]].shape), (name, a["name"])
            assert a["dtype"] == str(stored[a["name"]].dtype), (name, a["name"])
            assert isinstance(a["meaning"], str) and len(a["meaning"]) > 10, (name, a["name"])
        has_grads = any(k.startswith("grad/") for k in stored)
        assert (entry["scalar"] is not None) == has_grads, name
        # every output has a cotangent and every input and param a gradient (differentiable components)
        if has_grads:
            for k in stored:
                cat, _, rest = k.partition("/")
                if cat == "output":
                    assert f"cotangent/{rest}" in stored, (name, k)
                if cat == "input":
                    assert f"grad/{rest}" in stored, (name, k)
                if cat == "param":
                    assert f"grad/param/{rest}" in stored, (name, k)


def test_param_arrays_follow_the_canonical_flattening_order(vdir):
    arrays = load(vdir, "train_invertible")
    paths = [k[len("param/"):] for k in arrays if k.startswith("param/")]
    assert paths[0] == "critic/W" and paths[1] == "g1/blocks/0/net/layers/0/W"
    assert paths == sorted(paths, key=lambda p: [(int(s), "") if s.isdigit() else (-1, s) for s in p.split("/")])


# ---------------------------------------------------------------- the stored numbers are mi-ref's


def test_recompute_reproduces_every_output_and_gradient_exactly(vdir, manifest):
    for name in manifest["components"]:
        arrays = load(vdir, name)
        again = vectors.recompute(vdir, name)
        assert set(again) == set(golden_results(arrays)), name
        for key, value in again.items():
            assert value.shape == arrays[key].shape and onp.array_equal(value, arrays[key]), (name, key)


def test_training_steps_are_value_and_grad_of_mi_loss(vdir, manifest):
    for name in ("train_invertible", "train_conditioning", "train_critics_infonce", "train_critics_nwj"):
        config = manifest["components"][name]["config"]
        arrays = load(vdir, name)
        built = vectors.build(name, config)
        g1, g2, critic = _train_models(config, arrays)
        leaves = [arrays[f"param/{p}"] for p, _ in tree_flatten(built.template)]
        params = tree_unflatten(built.template, leaves)
        x1, x2 = arrays["input/x1"], arrays["input/x2"]
        loss, g = value_and_grad(objectives.mi_loss)(params, g1, g2, critic, config["estimator"], x1, x2)
        assert onp.array_equal(loss, arrays["output/loss"]) and arrays["cotangent/loss"] == 1.0
        for path, leaf in tree_flatten(g):
            assert onp.array_equal(leaf, arrays[f"grad/param/{path}"]), (name, path)
        gx1 = grad(objectives.mi_loss, 5)(params, g1, g2, critic, config["estimator"], x1, x2)
        onp.testing.assert_allclose(gx1, arrays["grad/x1"], rtol=1e-12, atol=1e-14)
        assert onp.array_equal(-arrays["aux/bound"], arrays["output/loss"])


def _train_models(config, arrays):
    """The component's models built anew from its config (the permutations from the file), as the
    accelerated twins that mi-ref's training uses: the stored numbers must be theirs exactly."""
    d = config["dim"]
    if config["encoder"] == "realnvp":
        g1, g2 = (flows.RealNVP(d, config["n_couplings"], config["hidden"], config["shift_only"],
                                rng=onp.random.default_rng(0)) for _ in range(2))
        for g, name in ((g1, "g1"), (g2, "g2")):
            for block, perm in zip(g.blocks, arrays[f"const/{name}/perms"]):
                block.perm, block.inv_perm = perm, onp.argsort(perm)
    else:
        g1, g2 = (nn.MLP(d, config["encoder_dims"], shortcuts=config["shortcuts"]) for _ in range(2))
    e = g1.out_dim
    critic = critics.Bilinear(e) if config["critic"] == "bilinear" else critics.Concat(e, hidden=config["critic_hidden"])
    return twin(g1), twin(g2), twin(critic)


# ---------------------------------------------------------------- the documented conventions reproduce them


def test_bounds_from_their_formulas(vdir):
    """I_NCE, TUBA (with and without baseline) and I_NWJ written from the manifest's formulas."""
    def logsumexp(a):
        m = a.max()
        return m + onp.log(onp.exp(a - m).sum())

    def infonce(S):
        return onp.log(len(S)) + onp.mean([S[i, i] - logsumexp(S[i]) for i in range(len(S))])

    def tuba(S, l=None):
        K = len(S)
        l = onp.zeros(K) if l is None else l
        off = [S[i, j] - l[j] for i in range(K) for j in range(K) if i != j]
        return 1 + onp.mean(onp.diag(S)) - onp.exp(logsumexp(onp.array(off)) - onp.log(K * (K - 1))) - l.mean()

    for name, fn in (("bound_infonce", infonce), ("bound_infonce_large", infonce), ("bound_tuba", tuba),
                     ("bound_nwj", lambda S: tuba(S - 1)), ("bound_tuba_large", tuba)):
        a = load(vdir, name)
        onp.testing.assert_allclose(fn(a["input/scores"]), a["output/bound"], rtol=1e-13, err_msg=name)
    a = load(vdir, "bound_tuba_baseline")
    onp.testing.assert_allclose(tuba(a["input/scores"], a["input/log_baseline"]), a["output/bound"], rtol=1e-13)
    # the gradient of I_NCE: (I - softmax rows) / K, rows = u, columns = v
    a = load(vdir, "bound_infonce")
    S = a["input/scores"]
    P = onp.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    onp.testing.assert_allclose((onp.eye(len(S)) - P) / len(S), a["grad/scores"], atol=1e-15)


def test_dense_layout_and_vjp(vdir):
    a = load(vdir, "dense")
    x, W, b, c = a["input/x"], a["param/W"], a["param/b"], a["cotangent/y"]
    assert W.shape == (x.shape[1], a["output/y"].shape[1])                 # (in, out)
    onp.testing.assert_allclose(x @ W + b, a["output/y"], rtol=1e-14)
    onp.testing.assert_allclose(c @ W.T, a["grad/x"], rtol=1e-13)
    onp.testing.assert_allclose(x.T @ c, a["grad/param/W"], rtol=1e-13)
    onp.testing.assert_allclose(c.sum(axis=0), a["grad/param/b"], rtol=1e-13)


def test_critics_from_their_formulas(vdir):
    a = load(vdir, "critic_bilinear")
    u, v, W = a["input/u"], a["input/v"], a["param/W"]
    assert W.shape == (v.shape[1], u.shape[1])                             # (d_v, d_u)
    onp.testing.assert_allclose(onp.einsum("ia,ba,jb->ij", u, W, v), a["output/scores"], rtol=1e-13)
    a = load(vdir, "critic_concat")
    u, v = a["input/u"], a["input/v"]
    K = len(u)
    h = onp.array([[onp.concatenate([u[i], v[j]]) for j in range(K)] for i in range(K)])   # row i = u_i
    for i in range(3):
        h = h @ a[f"param/layers/{i}/W"] + a[f"param/layers/{i}/b"]
        h = onp.maximum(h, 0) if i < 2 else h
    onp.testing.assert_allclose(h[..., 0], a["output/scores"], rtol=1e-13)


def test_conv2d_padding_rule_from_the_manifest(vdir, manifest):
    for name in ("conv2d_odd", "conv2d_even"):
        a, config = load(vdir, name), manifest["components"][name]["config"]
        x, W, s = a["input/x"], a["param/W"], config["stride"]
        B, H, Wd, C = x.shape
        k = W.shape[0]
        pads = []
        for n in (H, Wd):      # out = ceil(n / s); total = max((out - 1) s + k - n, 0); before = total // 2
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((out, total // 2, total - total // 2))
        assert [p[0] for p in pads] == list(a["output/y"].shape[1:3])
        for axis, pad in zip("HW", pads):
            assert pad == tuple(config["padding"][axis][k] for k in ("out", "before", "after"))
        xp = onp.pad(x, ((0, 0), pads[0][1:], pads[1][1:], (0, 0)))
        y = onp.zeros(a["output/y"].shape)
        for p in range(pads[0][0]):
            for q in range(pads[1][0]):
                y[:, p, q, :] = onp.einsum("bijc,ijco->bo", xp[:, p * s:p * s + k, q * s:q * s + k, :], W)
        onp.testing.assert_allclose(y + a["param/b"], a["output/y"], rtol=1e-12, atol=1e-14)
    assert manifest["components"]["conv2d_even"]["config"]["padding"]["H"] == {"out": 4, "before": 1, "after": 2}


def test_layer_norm_from_its_formula(vdir):
    a = load(vdir, "layer_norm")
    x = a["input/x"]
    mu = x.mean(axis=(1, 2, 3), keepdims=True)
    std = onp.sqrt(((x - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True))
    y = (x - mu) / (std + 1e-6) * a["param/scale"] + a["param/bias"]
    onp.testing.assert_allclose(y, a["output/y"], rtol=1e-13, atol=1e-14)
    textbook = (x - mu) / onp.sqrt(std ** 2 + 1e-6) * a["param/scale"] + a["param/bias"]
    assert compare(vdir, "layer_norm", {"output/y": textbook}, allow_missing=True).passed is False


def test_coupling_block_and_permutation_semantics(vdir, manifest):
    """A block permutes first (z = x[:, perm]) and then couples; the old couple-then-permute order fails."""
    for name, shift_only in (("realnvp_block_shift", True), ("realnvp_block_affine", False)):
        a = load(vdir, name)
        x, perm = a["input/x"], a["const/perm"]
        d = x.shape[1]
        h = d // 2

        def couple(z):
            net = z[:, :h]
            for i in range(2):
                net = net @ a[f"param/net/layers/{i}/W"] + a[f"param/net/layers/{i}/b"]
                net = onp.maximum(net, 0) if i == 0 else net
            t = net[:, :d - h]
            scale = onp.ones_like(t) if shift_only else 1e-7 + onp.logaddexp(0, net[:, d - h:])
            return onp.concatenate([z[:, :h], z[:, h:] * scale + t], axis=1), onp.log(scale).sum(axis=1)
        y, log_det = couple(x[:, perm])
        onp.testing.assert_allclose(y, a["output/forward"], rtol=1e-13, atol=1e-15)
        onp.testing.assert_allclose(log_det, a["output/log_det"], rtol=1e-13, atol=1e-15)
        old_order = couple(x)[0][:, perm]
        assert onp.abs(old_order - a["output/forward"]).max() > 1e-3
    a = load(vdir, "realnvp_chain")
    assert a["const/perms"].shape == (3, 6)
    for k in range(3):
        assert sorted(a["const/perms"][k]) == list(range(6))
    # the inverse undoes the forward map: forward(inverse(y)) = y, with mi-ref's chain rebuilt from the config
    result = recompute(vdir, "realnvp_chain")
    onp.testing.assert_array_equal(result["output/forward"], a["output/forward"])
    built = vectors.build("realnvp_chain", manifest["components"]["realnvp_chain"]["config"])
    assert onp.array_equal(built.consts["perms"], a["const/perms"])
    params = tree_unflatten(built.template, [a[k] for k in a if k.startswith("param/")])
    inputs = {"x": a["output/inverse"], "y": a["input/y"]}
    onp.testing.assert_allclose(built.forward(inputs, params)[0]["forward"], a["input/y"], rtol=1e-10, atol=1e-12)


def test_no_permutation_in_the_vectors_is_its_own_inverse(vdir, manifest):
    """A port that applies perm where argsort(perm) is meant would pass an involution (perm == argsort(perm))."""
    found = 0
    for name in manifest["components"]:
        for key, value in load(vdir, name).items():
            if key.startswith("const/") and key.endswith(("perm", "perms")):
                for perm in onp.atleast_2d(value):
                    found += 1
                    assert not onp.array_equal(perm[perm], onp.arange(len(perm))), (name, key, perm)
    assert found >= 2 + 3 + 3 + 6 + 6       # blocks, chain, Jacobian chain, two training steps' g1 and g2
    assert manifest["settings"]["coupling"]["no_permutation_is_self_inverse"] is True


def test_jacobian_numbers(vdir, manifest):
    for name in ("jacobian_mlp_residual", "jacobian_realnvp"):
        a = load(vdir, name)
        J = a["output/jacobian"]
        s = onp.linalg.svd(J, compute_uv=False)
        onp.testing.assert_allclose(s, a["output/singular_values"], rtol=1e-12)
        onp.testing.assert_allclose(onp.log(s[:, 0] / s[:, -1]), a["output/log_condition_numbers"], rtol=1e-12)
        ordered = onp.sort(a["output/log_condition_numbers"])        # the notebook's order statistics
        n = ordered.size
        onp.testing.assert_allclose(ordered[[int(p * (n - 1)) for p in (0, .2, .4, .6, .8, 1)]],
                                    a["aux/condition_percentiles"], rtol=1e-12)
    a = load(vdir, "jacobian_mlp_residual")
    layers = [{"W": a[f"param/layers/{i}/W"], "b": a[f"param/layers/{i}/b"]} for i in range(3)]
    J = jacobian.batch_jacobian_reference(nn.MLP(5, [5] * 3, shortcuts=True).apply, {"layers": layers},
                                          a["input/x"])
    onp.testing.assert_allclose(J, a["output/jacobian"], rtol=1e-12, atol=1e-14)
    assert not a["grad/x"].any()            # a ReLU network's Jacobian is piecewise constant in x


@pytest.mark.parametrize("name", ["adam_step", "adam_step_tf"])
def test_adam_step_from_its_formula(vdir, manifest, name):
    a = load(vdir, name)
    config = manifest["components"][name]["config"]
    assert config["form"] == {"adam_step": "textbook", "adam_step_tf": "tf"}[name]
    t = int(a["const/step"]) + 1
    lr, b1, b2, eps = config["lr"], config["b1"], config["b2"], config["eps"]
    for key in [k for k in a if k.startswith("param/")]:
        path = key[len("param/"):]
        g, m, v = a[f"input/g/{path}"], a[f"input/m/{path}"], a[f"input/v/{path}"]
        assert onp.abs(g).max() < 2e-7                       # gradients as small as the flows' at their init
        m2, v2 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        if config["form"] == "tf":
            new = a[key] - lr * onp.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m2 / (onp.sqrt(v2) + eps)
        else:
            new = a[key] - lr * (m2 / (1 - b1 ** t)) / (onp.sqrt(v2 / (1 - b2 ** t)) + eps)
        onp.testing.assert_allclose(m2, a[f"output/m/{path}"], rtol=1e-15)
        onp.testing.assert_allclose(v2, a[f"output/v/{path}"], rtol=1e-15)
        onp.testing.assert_allclose(new, a[f"output/param/{path}"], rtol=1e-14, atol=1e-19)
    assert not any(k.startswith(("grad/", "cotangent/")) for k in a)


def test_the_two_adam_forms_cannot_pass_for_each_other(vdir):
    """Each form's outputs fail the other form's vectors by far more than the float32 tolerance (so a port
    with the wrong form fails even in float32)."""
    textbook, tf = load(vdir, "adam_step"), load(vdir, "adam_step_tf")
    for given, golden in ((textbook, "adam_step_tf"), (tf, "adam_step")):
        outputs = {k: given[k] for k in given if k.startswith("output/")}
        report = compare(vdir, golden, outputs, precision="float32")
        assert not report.passed
        tol = report.atol                                    # |e| <= 1e-3 here: atol * max(1, |e|) dominates
        assert max(c.max_abs_err for c in report.compared) > 20 * tol


def test_whole_training_step_is_loss_gradient_and_tf_adam(vdir, manifest):
    """train_step_invertible = value_and_grad of mi_loss at the paper's initialization, then TF-form Adam."""
    a = load(vdir, "train_step_invertible")
    config = manifest["components"]["train_step_invertible"]["config"]
    assert (config["form"], config["lr"], int(a["const/step"])) == ("tf", 1e-4, 0)
    lr_t = 1e-4 * onp.sqrt(1 - 0.999) / (1 - 0.9)
    differs = 0
    for key in [k for k in a if k.startswith("param/")]:
        path = key[len("param/"):]
        g = a[f"aux/gradient/{path}"]
        m, v = 0.1 * g, 0.001 * g * g
        onp.testing.assert_allclose(a[f"output/param/{path}"], a[key] - lr_t * m / (onp.sqrt(v) + 1e-8),
                                    rtol=1e-14, atol=1e-18)          # 1e-14 of the params' scale
        textbook = a[key] - 1e-4 * g / (onp.abs(g) + 1e-8)
        differs += onp.abs(textbook - a[f"output/param/{path}"]).max() > 1e-10
    assert differs >= 10                              # tiny flow gradients: the forms disagree on many leaves
    assert onp.abs(a["param/g1/blocks/0/net/layers/0/W"]).max() <= 2e-4   # truncated normal, std 1e-4


def test_large_scores_are_what_the_manifest_says(vdir, manifest):
    S = load(vdir, "bound_infonce_large")["input/scores"]
    assert onp.abs(S).max() > 900 and onp.array_equal(S * 64, onp.round(S * 64))
    for name in ("bound_nwj_large", "bound_tuba_large"):
        S = load(vdir, name)["input/scores"]
        off = S[~onp.eye(len(S), dtype=bool)]
        assert off.max() == 700.0 and onp.abs(onp.diag(S)).max() > 500
        assert manifest["components"][name]["float64_only"]


# ---------------------------------------------------------------- compare


def test_compare_passes_the_true_numbers(vdir, manifest):
    for name in manifest["components"]:
        report = verify.compare(vdir, name, golden_results(load(vdir, name)))
        assert report.passed and report.precision == "float64", str(report)
        assert all(c.max_abs_err == 0.0 for c in report.compared)


def test_compare_float32_path(vdir, manifest):
    """float32 casts of the true numbers pass at float32 tolerances (detected from the dtype)."""
    for name, entry in manifest["components"].items():
        with onp.errstate(over="ignore"):         # float64-only components overflow float32, as documented
            given = {k: v.astype(onp.float32) for k, v in golden_results(load(vdir, name)).items()}
            report = verify.compare(vdir, name, given)
        assert report.precision == "float32"
        if entry["float64_only"]:
            assert not report.passed and any("float64-only" in n for n in report.notes)
        else:
            assert report.passed, str(report)
    a = golden_results(load(vdir, "mlp"))
    good = {k: v * (1 + 3e-5) for k, v in a.items()}
    bad = dict(good, **{"output/y": a["output/y"] * (1 + 1e-3)})
    assert verify.compare(vdir, "mlp", good, precision="float32").passed
    assert not verify.compare(vdir, "mlp", good, precision="float64").passed
    report = verify.compare(vdir, "mlp", bad, precision="float32")
    assert [c.name for c in report.failures] == ["output/y"]


def test_compare_flags_a_perturbed_output(vdir):
    a = golden_results(load(vdir, "train_invertible"))
    bad = dict(a)
    bad["grad/param/g2/blocks/1/net/layers/0/W"] = a["grad/param/g2/blocks/1/net/layers/0/W"].copy()
    bad["grad/param/g2/blocks/1/net/layers/0/W"][2, 3] *= 1 + 1e-8
    report = verify.compare(vdir, "train_invertible", bad)
    assert not report.passed
    assert [c.name for c in report.failures] == ["grad/param/g2/blocks/1/net/layers/0/W"]
    text = str(report)
    assert "FAILED" in text and "worst at (2, 3)" in text and "1 of 24 entries out of tolerance" in text
    assert verify.compare(vdir, "train_invertible", a).passed


def test_compare_detects_a_subtly_different_formula(vdir):
    """eps 1e-5 instead of 1e-6 in the layer norm: ~1e-6 relative, far outside the float64 tolerance."""
    a = load(vdir, "layer_norm")
    y = nn.layer_norm(a["input/x"], a["param/scale"], a["param/bias"], eps=1e-5)
    report = verify.compare(vdir, "layer_norm", {"output/y": y}, allow_missing=True)
    assert not report.passed and report.failures[0].max_rel_err > 1e-7


def test_compare_missing_optional_extra_and_shape(vdir):
    a = golden_results(load(vdir, "train_critics_nwj"))
    no_aux = {k: v for k, v in a.items() if not k.startswith("aux/")}
    report = verify.compare(vdir, "train_critics_nwj", no_aux)
    assert report.passed and {c.status for c in report.checks} == {"pass", "skipped"}

    no_grad = {k: v for k, v in a.items() if k != "grad/x1"}
    report = verify.compare(vdir, "train_critics_nwj", no_grad)
    assert not report.passed and [(c.name, c.status) for c in report.failures] == [("grad/x1", "missing")]
    assert verify.compare(vdir, "train_critics_nwj", no_grad, allow_missing=True).passed
    assert not verify.compare(vdir, "train_critics_nwj", {}, allow_missing=True).passed   # nothing compared

    typo = dict(a, **{"grad/param/g1/layers/0/w": a["grad/param/g1/layers/0/W"]})
    report = verify.compare(vdir, "train_critics_nwj", typo)
    assert [(c.name, c.status) for c in report.failures] == [("grad/param/g1/layers/0/w", "extra")]
    assert "did you mean grad/param/g1/layers/0/W?" in str(report) and "unknown names" not in str(report)
    report = verify.compare(vdir, "train_critics_nwj", dict(a, **{"grad/zzz": a["grad/x1"]}))
    assert "note: unknown names ['grad/zzz']; train_critics_nwj expects ['output/loss'," in str(report)

    transposed = dict(a, **{"grad/param/g1/layers/0/W": a["grad/param/g1/layers/0/W"].T})
    report = verify.compare(vdir, "train_critics_nwj", transposed)
    assert [(c.name, c.status) for c in report.failures] == [("grad/param/g1/layers/0/W", "shape")]
    assert "(10, 8) != (8, 10)" in str(report)

    nan = dict(a, **{"output/loss": onp.array(onp.nan)})
    report = verify.compare(vdir, "train_critics_nwj", nan)
    assert "not finite" in report.failures[0].worst

    # echoed inputs and params are compared too; integer consts exactly
    inv = load(vdir, "train_invertible")
    echo = {"const/g1/perms": inv["const/g1/perms"], "param/critic/W": inv["param/critic/W"]}
    assert verify.compare(vdir, "train_invertible", echo, allow_missing=True).passed
    wrong = dict(echo, **{"const/g1/perms": inv["const/g1/perms"][:, ::-1]})
    assert not verify.compare(vdir, "train_invertible", wrong, allow_missing=True).passed


def test_compare_results_splits_by_component(vdir):
    flat = {f"dense/{k}": v for k, v in golden_results(load(vdir, "dense")).items()}
    flat.update({f"bound_nwj/{k}": v for k, v in golden_results(load(vdir, "bound_nwj")).items()})
    reports = verify.compare_results(vdir, flat)
    assert [r.component for r in reports] == ["bound_nwj", "dense"] and all(r.passed for r in reports)
    unchecked = verify.unchecked_components(vdir, reports)
    text = verify.format_reports(reports, unchecked)
    n = len(vectors.component_names())
    assert f"2 of {n} components checked; {n - 2} not checked (--show-unchecked lists them)" in text
    assert "bound_infonce_large" not in text
    assert "2 of 2 checked components passed (all passed)" in text
    listed = verify.format_reports(reports, unchecked, show_unchecked=True)
    assert f"2 of {n} components checked; {n - 2} not checked: bound_infonce, bound_infonce_large," in listed
    plain = golden_results(load(vdir, "dense"))
    assert verify.compare_results(vdir, plain, component="dense")[0].passed
    with pytest.raises(ValueError, match="--component"):
        verify.compare_results(vdir, plain)
    with pytest.raises(ValueError, match="not understood"):
        verify.compare_results(vdir, {"densee/output/y": plain["output/y"]})


def test_the_header_counts_each_array_once_and_never_contradicts_itself(vdir):
    a = golden_results(load(vdir, "train_critics_nwj"), ("output", "grad"))
    tol = "(float64 tolerance: rtol 1e-10, atol 1e-12)"
    n = len(a)
    report = verify.compare(vdir, "train_critics_nwj", a)
    assert report.summary() == f"train_critics_nwj: PASSED: {n} arrays compared, {n} within tolerance {tol}"

    given = dict(a, **{"grad/x1": a["grad/x1"] + 1.0,                                   # out of tolerance
                       "grad/param/g1/layers/0/W": a["grad/param/g1/layers/0/W"].T,     # shape
                       "grad/param/g1/layers/0/w": a["grad/param/g1/layers/0/W"]})      # a name the file lacks
    del given["grad/x2"]                                                                # missing
    report = verify.compare(vdir, "train_critics_nwj", given)
    assert report.summary() == (f"train_critics_nwj: FAILED: {n - 2} arrays compared, {n - 3} within tolerance, 1 out "
                                f"of tolerance; 1 mismatched in shape; 1 missing; 1 not in the component's file {tol}")
    # everything compared is within tolerance, and the header says why it failed all the same
    only_missing = {k: v for k, v in a.items() if k not in ("grad/x1", "grad/x2")}
    report = verify.compare(vdir, "train_critics_nwj", only_missing)
    assert report.summary() == (f"train_critics_nwj: FAILED: {n - 2} arrays compared, {n - 2} within tolerance; "
                                f"2 missing {tol}")
    allowed = verify.compare(vdir, "train_critics_nwj", only_missing, allow_missing=True)
    assert allowed.summary().startswith(f"train_critics_nwj: PASSED: {n - 2} arrays compared, {n - 2} within "
                                        "tolerance; 2 not given (allowed)")
    nothing = verify.compare(vdir, "train_critics_nwj", {"grad/nope": a["grad/x1"]})
    assert nothing.summary().startswith("train_critics_nwj: FAILED: 0 arrays compared, 0 within tolerance; ")


def test_notes_shared_by_components_are_printed_once(vdir):
    flat = {f"{c}/{k}": v for c in ("dense", "mlp", "bound_nwj") for k, v in golden_results(load(vdir, c)).items()}
    flat["mlp/output/y"] = flat["mlp/output/y"].astype(onp.float32)        # mlp alone is detected as float32
    reports = verify.compare_results(vdir, flat)
    text = verify.format_reports(reports, verify.unchecked_components(vdir, reports))
    assert text.count("precision float64 detected from the dtypes of the given arrays") == 1
    assert "note: precision float64 detected from the dtypes of the given arrays (bound_nwj, dense)" in text
    assert text.count("precision float32 detected") == 1 and "  note: precision float32 detected" in text
    del flat["mlp/output/y"]
    reports = verify.compare_results(vdir, {k: v for k, v in flat.items() if not k.startswith("mlp/")})
    text = verify.format_reports(reports)
    assert text.endswith("note: precision float64 detected from the dtypes of the given arrays (every checked "
                         "component)")


def test_component_selects_its_arrays_from_prefixed_keys(vdir, tmp_path, capsys):
    """--component NAME on a file of COMPONENT/ARRAY keys checks NAME's arrays alone (no "extra" rows for the
    other components'); plain names still work, and a component without arrays in the file is an error."""
    flat = {f"{c}/{k}": v for c in ("dense", "bound_nwj", "mlp") for k, v in golden_results(load(vdir, c)).items()}
    reports = verify.compare_results(vdir, flat, component="dense")
    assert [r.component for r in reports] == ["dense"] and reports[0].passed
    assert [c.name for c in reports[0].checks] == list(golden_results(load(vdir, "dense")))
    path = tmp_path / "many.npz"
    onp.savez(path, **flat)
    assert cli.main(["verify", str(vdir), str(path), "--component", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "mlp: PASSED" in out and "extra" not in out and "dense" not in out
    with pytest.raises(ValueError, match=r"hold no arrays of conv2d_odd, only of \['bound_nwj', 'dense', 'mlp'\]"):
        verify.compare_results(vdir, flat, component="conv2d_odd")


def test_did_you_mean_for_components_and_array_names(vdir, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown component 'dens'; did you mean 'dense'"):
        verify.compare(vdir, "dens", {})
    plain = tmp_path / "plain.npz"
    onp.savez(plain, **golden_results(load(vdir, "dense")))
    assert cli.main(["verify", str(vdir), str(plain), "--component", "critic_bilinaer"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'critic_bilinear'?" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="did you mean: densee/output/y -> dense/output/y"):
        verify.compare_results(vdir, {"densee/output/y": onp.zeros((4, 3))})

    a = golden_results(load(vdir, "mlp"))
    given = {"output/y": a["output/y"], "grad/x": a["grad/x"], "grad/layers.0.weight": a["grad/param/layers/0/W"].T,
             "layers.1.bias": onp.zeros(6), "grad/param/layers.2.bias": a["grad/param/layers/2/b"],
             "grad/param/layers/1/w": a["grad/param/layers/1/W"]}
    report = verify.compare(vdir, "mlp", given, allow_missing=True)
    worst = {c.name: c.worst for c in report.checks if c.status == "extra"}
    assert worst == {"grad/layers.0.weight": "mlp holds no array of this name; did you mean grad/param/layers/0/W, "
                                             "in mi-ref's layout (5, 7)?",
                     "layers.1.bias": "mlp holds no array of this name; did you mean param/layers/1/b?",
                     "grad/param/layers.2.bias": "mlp holds no array of this name; did you mean grad/param/layers/2/b?",
                     "grad/param/layers/1/w": "mlp holds no array of this name; did you mean grad/param/layers/1/W?"}
    assert verify.suggest_name("output/nothing_like_it", list(load(vdir, "mlp"))) is None
    dense = list(load(vdir, "dense"))
    assert [verify.suggest_name(n, dense) for n in ("grad/weight", "grad/bias", "weight")] == [
        "grad/param/W", "grad/param/b", "param/W"]


def test_bad_input_errors(vdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify.compare(tmp_path / "nope", "dense", {})
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        verify.compare(tmp_path, "dense", {})
    with pytest.raises(ValueError, match="unknown component 'dens'"):
        verify.compare(vdir, "dens", {})
    with pytest.raises(ValueError, match="precision"):
        verify.compare(vdir, "dense", {}, precision="float16")
    with pytest.raises(ValueError, match="dict"):
        verify.compare(vdir, "dense", [1, 2])
    with pytest.raises(ValueError, match="no arrays"):
        verify.compare_results(vdir, {})
    with pytest.raises(ValueError, match="seed"):
        vectors.generate(tmp_path / "x", seed=-1)
    with pytest.raises(ValueError, match="unknown component"):
        vectors.generate(tmp_path / "x", names=["nope"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(ValueError, match="not an mi-ref golden-vector manifest"):
        verify.compare(tmp_path / "bad", "dense", {})


# ---------------------------------------------------------------- CLI


def test_cli_vectors_and_verify(vdir, tmp_path, capsys):
    out = tmp_path / "v"
    assert cli.main(["vectors", "--out", str(out), "--seed", "0"]) == 0
    assert (out / "dense.npz").read_bytes() == (vdir / "dense.npz").read_bytes()
    assert "manifest.json" in capsys.readouterr().out

    flat = {f"critic_bilinear/{k}": v for k, v in golden_results(load(vdir, "critic_bilinear")).items()}
    good = tmp_path / "good.npz"
    onp.savez(good, **flat)
    assert cli.main(["verify", str(vdir), str(good)]) == 0
    assert "critic_bilinear: PASSED" in capsys.readouterr().out

    flat["critic_bilinear/grad/u"] = flat["critic_bilinear/grad/u"] + 1e-6
    bad = tmp_path / "bad.npz"
    onp.savez(bad, **flat)
    assert cli.main(["verify", str(vdir), str(bad)]) == 1
    assert cli.main(["verify", str(vdir), str(bad), "--precision", "float32"]) == 0
    capsys.readouterr()

    plain = tmp_path / "plain.npz"
    onp.savez(plain, **golden_results(load(vdir, "dense")))
    assert cli.main(["verify", str(vdir), str(plain), "--component", "dense"]) == 0
    assert cli.main(["verify", str(vdir), str(plain)]) == 2
    assert "--component" in capsys.readouterr().err
    assert cli.main(["verify", str(vdir), str(tmp_path / "missing.npz")]) == 2
    assert cli.main(["verify", str(tmp_path / "nodir"), str(plain)]) == 2
    assert cli.main(["verify", str(vdir), str(plain), "--component", "nope"]) == 2
    assert "unknown component" in capsys.readouterr().err


def test_cli_verify_says_what_was_not_checked_and_require_all(vdir, tmp_path, capsys):
    """One component of N passing is not "all passed": the report counts and lists the unchecked ones, and
    --require-all turns them into a failure."""
    one = tmp_path / "one.npz"
    onp.savez(one, **{f"dense/{k}": v for k, v in golden_results(load(vdir, "dense")).items()})
    n = len(vectors.component_names())
    assert cli.main(["verify", str(vdir), str(one)]) == 0
    out = capsys.readouterr().out
    assert f"1 of {n} components checked; {n - 1} not checked (--show-unchecked lists them)" in out
    assert "train_step_invertible" not in out
    assert cli.main(["verify", str(vdir), str(one), "--show-unchecked"]) == 0
    out = capsys.readouterr().out
    assert f"1 of {n} components checked; {n - 1} not checked: bound_infonce," in out and "train_step_invertible" in out
    assert cli.main(["verify", str(vdir), str(one), "--require-all"]) == 1
    assert f"FAILED: --require-all, and {n - 1} component(s) were not checked" in capsys.readouterr().out
    everything = tmp_path / "all.npz"
    onp.savez(everything, **{f"{c}/{k}": v for c in vectors.component_names()
                             for k, v in golden_results(load(vdir, c)).items()})
    assert cli.main(["verify", str(vdir), str(everything), "--require-all"]) == 0
    assert f"{n} of {n} components checked (all of them)" in capsys.readouterr().out


def test_report_gives_errors_as_multiples_of_the_tolerance_and_hides_unlisted_aux(vdir):
    a = golden_results(load(vdir, "train_critics_nwj"), ("output", "grad"))
    e = a["output/loss"]
    tol = 1e-12 * max(1.0, abs(float(e))) + 1e-10 * abs(float(e))
    report = verify.compare(vdir, "train_critics_nwj", dict(a, **{"output/loss": e + 5 * tol}))
    check = [c for c in report.checks if c.name == "output/loss"][0]
    assert check.status == "FAIL" and check.err_over_tol == pytest.approx(5, rel=1e-3)
    text = report.table()
    assert "err/tol" in text and "aux/scores" not in text and "4 optional aux/ arrays not given" in text
    assert "aux/scores" in report.table(show_skipped=True)


def test_report_hints_when_the_transposed_array_would_pass(vdir):
    a = golden_results(load(vdir, "dense"))
    wrong = dict(a, **{"grad/param/W": a["grad/param/W"].T})           # (3, 5) for (5, 3): PyTorch's layout
    report = verify.compare(vdir, "dense", wrong)
    assert "hint: the transposed array would pass" in str(report)
    square = golden_results(load(vdir, "critic_bilinear"))
    conv = golden_results(load(vdir, "conv2d_odd"))
    torch_layout = dict(conv, **{"grad/param/W": conv["grad/param/W"].transpose(3, 2, 0, 1)})
    assert "PyTorch's conv layout" in str(verify.compare(vdir, "conv2d_odd", torch_layout))
    assert "hint" not in str(verify.compare(vdir, "critic_bilinear",
                                            dict(square, **{"grad/u": square["grad/u"] + 1})))


# ---------------------------------------------------------------- the PyTorch example


def _torch_example():
    pytest.importorskip("torch", reason="PyTorch is not installed; the example (and this test) needs it")
    from mi_ref.porting import pytorch
    return pytorch


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_torch_example_passes(vdir, precision):
    example = _torch_example()
    results, reports = example.run(vdir, precision)
    covered = {r.component for r in reports}
    assert {"bound_infonce", "bound_tuba_baseline", "critic_concat", "critic_separable", "dense", "mlp_residual",
            "layer_norm", "adam_step", "adam_step_tf", "train_conditioning", "train_critics_infonce",
            "train_critics_nwj"} <= covered
    for r in reports:
        assert r.passed and r.precision == precision and not [c for c in r.checks if c.status != "pass"], str(r)
    assert all(onp.asarray(v).dtype == onp.dtype(precision) for v in results.values())


# ---------------------------------------------------------------- README


def test_the_readmes_verify_sessions_are_what_verify_prints(vdir, tmp_path, monkeypatch, capsys):
    """Every `$ mi-ref verify ...` session in README.md, run on the files its examples write, prints exactly
    the output shown there."""
    import re
    import shlex
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sessions = []
    for block in re.findall(r"```\n(\$ mi-ref verify .*?)```", readme, re.S):
        for part in filter(None, re.split(r"(?m)^(?=\$ )", block)):
            command, _, shown = part.partition("\n")
            sessions.append((command[2:], shown.rstrip("\n")))
    assert len(sessions) >= 4

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vectors").symlink_to(vdir)
    dense = golden_results(load(vdir, "dense"), ("output", "grad"))
    onp.savez("mine.npz", **{f"dense/{k}": v for k, v in dense.items()})
    onp.savez("torchnames.npz", **{"dense/output/y": dense["output/y"], "dense/grad/x": dense["grad/x"],
                                   "dense/grad/weight": dense["grad/param/W"].T,
                                   "dense/grad/bias": dense["grad/param/b"]})
    try:                                                 # the README's PyTorch I_NWJ, as written there
        import torch
        v = onp.load("vectors/bound_nwj.npz")
        S = torch.tensor(v["input/scores"], requires_grad=True)
        bound = 1 + (S - 1).diagonal().mean() - torch.exp(S - 1).mean()
        g, = torch.autograd.grad(bound, S)
        onp.savez("nwj.npz", **{"output/bound": bound.detach().numpy(), "grad/scores": g.numpy()})
    except ImportError:
        pass
    checked = 0
    for command, shown in sessions:
        args = shlex.split(command)
        assert args[:2] == ["mi-ref", "verify"], command
        if not Path(args[3]).exists():                   # nwj.npz without PyTorch
            continue
        cli.main(args[1:])
        captured = capsys.readouterr()
        assert (captured.out + captured.err).rstrip("\n") == shown, command
        checked += 1
    assert checked >= 3


def _edit_manifest(folder, change):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(components={"dense": m["components"]["dense"]}), "its list of components"),
    (lambda m: m["components"]["dense"]["arrays"][0].update(shape=[9, 9]), "the shapes"),
    (lambda m: m.pop("integrity"), "has no integrity pin"),
])
def test_an_edited_manifest_is_bad_input(tmp_path, capsys, change, message):
    """Was: a manifest trimmed to one component made `--require-all` pass "1 of 1", and edited shapes went
    unnoticed. The manifest pins its component list, files and every array's name, shape and dtype with a
    SHA-256: an edit is exit 2 (bad input), never a pass."""
    folder = tmp_path / "v"
    vectors.generate(folder, names=["dense", "layer_norm"])
    results = tmp_path / "mine.npz"
    onp.savez(results, **{f"dense/{k}": v for k, v in golden_results(load(folder, "dense")).items()})
    _edit_manifest(folder, change)
    code = cli.main(["verify", str(folder), str(results), "--require-all"])
    err = capsys.readouterr().err
    assert code == 2 and "manifest.json" in err and message in err and "regenerate" in err, err


def test_a_component_file_must_hold_the_arrays_its_manifest_lists(tmp_path):
    folder = tmp_path / "v"
    manifest = vectors.generate(folder, names=["dense"])
    arrays = load(folder, "dense")
    arrays["output/y"] = arrays["output/y"][:2]                  # another shape, a valid file, its pin updated
    data = vectors.npz_bytes(arrays)
    (folder / "dense.npz").write_bytes(data)
    import hashlib
    _edit_manifest(folder, lambda m: m["components"]["dense"].update(sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ValueError, match="manifest.json"):
        verify.compare(folder, "dense", {})
    assert manifest["integrity"]["sha256"]
