"""mi-ref's functions against the library functions porters already use (README, "mi-ref next to the
libraries you know"). Each test is skipped where its library is absent (mi-ref depends on none of them).

Tolerances: float64 on both sides, so the values agree to rounding (a few ulps); 1e-12 relative leaves room
for another summation order and still catches any difference of formula.
"""

import numpy as np
import pytest

from mi_ref import accel, bounds, metric_learning, nn, optim
from mi_ref.porting import pytorch as port
from mi_ref.testing import assert_matches_golden


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_the_name_and_layout_helpers_need_no_torch():
    w = np.arange(6.0).reshape(2, 3)
    assert port.torch_name("layers/0/W") == "layers.0.weight" and port.torch_name("layers/0/b") == "layers.0.bias"
    np.testing.assert_array_equal(port.torch_param("layers/0/W", w), w.T)
    np.testing.assert_array_equal(port.torch_param("W", w, layer=False), w)      # the bilinear critic's matrix
    kernel = np.arange(5 * 5 * 3 * 4.0).reshape(5, 5, 3, 4)
    assert port.torch_param("conv1/W", kernel).shape == (4, 3, 5, 5)
    np.testing.assert_array_equal(port.mi_param("conv1/W", port.torch_param("conv1/W", kernel)), kernel)
    state = port.torch_state({"layers/0/W": w, "layers/0/b": np.ones(3)})
    assert sorted(state) == ["layers.0.bias", "layers.0.weight"] and state["layers.0.weight"].shape == (3, 2)


def test_assert_matches_golden_passes_and_fails_with_the_report(tmp_path):
    from mi_ref import vectors
    vectors.generate(tmp_path, names=["dense"])
    golden = {k: v for k, v in vectors.load_component(tmp_path, "dense").items() if k.startswith(("output/", "grad/"))}
    assert assert_matches_golden(tmp_path, "dense", golden).passed
    wrong = dict(golden, **{"grad/param/W": golden["grad/param/W"].T})
    with pytest.raises(AssertionError) as err:
        assert_matches_golden(tmp_path, "dense", wrong)
    message = str(err.value)
    assert "dense: FAILED" in message and "grad/param/W" in message and "transposed array would pass" in message


def test_infonce_is_log_k_minus_torch_cross_entropy(rng):
    torch = pytest.importorskip("torch")
    S = rng.standard_normal((7, 7)) * 3
    expected = np.log(7) - torch.nn.functional.cross_entropy(torch.tensor(S), torch.arange(7)).item()
    assert bounds.infonce(S) == pytest.approx(expected, rel=1e-12)


def test_kpair_loss_is_pytorch_metric_learnings_npairs_loss_without_normalization(rng):
    """NPairsLoss with DotProductSimilarity(normalize_embeddings=False) is the K-pair loss; its default
    (normalized embeddings, a cosine similarity) gives another number."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss
    anchors, positives = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    embeddings = torch.tensor(np.concatenate([anchors, positives]))
    labels = torch.cat([torch.arange(6), torch.arange(6)])
    theirs = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(embeddings, labels).item()
    ours = metric_learning.kpair_loss(anchors, positives)
    assert ours == pytest.approx(theirs, rel=1e-12), pml.__version__
    default = NPairsLoss()(embeddings, labels).item()
    assert abs(default - ours) > 1e-3


def test_textbook_adam_is_torch_optim_adam(rng):
    torch = pytest.importorskip("torch")
    theta = rng.standard_normal(5)
    grads = [1e-3 * rng.standard_normal(5) for _ in range(4)]
    param = torch.nn.Parameter(torch.tensor(theta))
    opt = torch.optim.Adam([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    adam = optim.Adam(1e-3, form="textbook")
    params, state = {"w": theta}, adam.init({"w": theta})
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()
        params, state = adam.update(params, {"w": g}, state)
    np.testing.assert_allclose(params["w"], param.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_mlp_is_a_torch_sequential_with_transposed_weights(rng):
    torch = pytest.importorskip("torch")
    model = nn.MLP(5, [7, 3], shortcuts=False)
    params = model.init(rng)
    seq = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).double()
    flat = {f"layers/{i}/{k}": layer[k] for i, layer in enumerate(params["layers"]) for k in ("W", "b")}
    state = {name.replace("layers.1.", "2.").replace("layers.0.", "0."): torch.tensor(np.ascontiguousarray(v))
             for name, v in port.torch_state(flat).items()}
    seq.load_state_dict(state)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(model.apply(params, x), seq(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_same_padding_conv_is_torch_conv2d_after_tensorflows_padding(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, kernel = rng.standard_normal((2, 8, 6, 3)), rng.standard_normal((5, 5, 3, 4))
    (_, top, bottom), (_, left, right) = nn.same_padding(8, 5, 2), nn.same_padding(6, 5, 2)
    xt = F.pad(torch.tensor(x).permute(0, 3, 1, 2), (left, right, top, bottom))
    theirs = F.conv2d(xt, torch.tensor(port.torch_param("W", kernel)), stride=2).permute(0, 2, 3, 1)
    np.testing.assert_allclose(nn.conv2d(x, kernel, 2), theirs.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(accel.twin(nn.Conv2D(3, 4, 5, 2)).apply({"W": kernel, "b": np.zeros(4)}, x),
                               theirs.numpy(), rtol=1e-12, atol=1e-13)


def test_the_papers_layer_norm_is_not_torch_layer_norm(rng):
    """(x - mean) / (std + eps) with torch's population std is the paper's; torch.nn.LayerNorm is not."""
    torch = pytest.importorskip("torch")
    x = 0.3 * rng.standard_normal((2, 3, 4, 5))
    t = torch.tensor(x)
    mean = t.mean(dim=(1, 2, 3), keepdim=True)
    ours = nn.layer_norm(x, np.ones(5), np.zeros(5))
    formula = ((t - mean) / (t.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-6)).numpy()
    np.testing.assert_allclose(ours, formula, rtol=1e-12, atol=1e-14)
    layer_norm = torch.nn.functional.layer_norm(t, (3, 4, 5), eps=1e-6).numpy()
    assert np.abs(ours - layer_norm).max() > 1e-7


def test_the_packaged_port_runs_from_python(tmp_path):
    pytest.importorskip("torch")
    from mi_ref import vectors
    vectors.generate(tmp_path, names=["dense", "mlp", "adam_step_tf", "layer_norm"])
    results, reports = port.run(tmp_path)
    assert [r.component for r in reports] == ["dense", "mlp", "adam_step_tf", "layer_norm"]
    assert all(r.passed for r in reports)


def test_relu_ties_pass_with_torch_relu_and_fail_with_a_half_derivative(tmp_path):
    """The golden component with exact-zero pre-activations: a port built on torch.relu (derivative 0 at 0,
    as TensorFlow and mi-ref) passes; the same port with relu'(0) = 1/2 (autograd's np.maximum rule) fails
    the arrays a tie reaches: the input gradient and the conv layers' bias gradients (the kernels' gradients
    are untouched: a tied window is all zeros, so its kernel gradient is 0 either way)."""
    torch = pytest.importorskip("torch")
    from mi_ref import vectors
    from mi_ref.verify import compare_results

    class HalfAtZero(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * ((x > 0).to(g.dtype) + 0.5 * (x == 0).to(g.dtype))

    name = "convnet_relu_ties"
    vectors.generate(tmp_path, names=[name])
    manifest = vectors.load_manifest(tmp_path)
    arrays = vectors.load_component(tmp_path, name, manifest)
    assert arrays["aux/tie_fraction"][0] > 0.5            # most first-layer positions see a blank window
    config = manifest["components"][name]["config"]
    for relu, passes in ((None, True), (HalfAtZero.apply, False)):
        out = port.run_component(name, config, arrays, torch.float64, relu=relu)
        report, = compare_results(tmp_path, {f"{name}/{k}": v for k, v in out.items()})
        assert report.passed is passes
        if not passes:
            failed = {c.name for c in report.checks if c.status == "FAIL"}
            assert {"grad/x", "grad/param/conv1/b"} <= failed <= {"grad/x", "grad/param/conv1/b",
                                                                  "grad/param/conv2/b"}, failed


def test_the_port_module_exports_its_api_and_not_its_imports():
    names = set(port.__all__)
    assert {"torch_name", "torch_param", "mi_param", "torch_state", "run", "run_component", "main"} <= names
    assert not names & {"np", "sys", "torch", "argparse", "F", "Path"}
    assert all(callable(getattr(port, n)) or isinstance(getattr(port, n), dict) for n in names)
    namespace = {}
    exec("from mi_ref.porting.pytorch import *", namespace)
    assert not {"np", "sys", "torch", "argparse"} & set(namespace)


def test_the_port_writes_its_results_where_it_is_told(tmp_path, monkeypatch, capsys):
    """Never into the current directory: --out FILE, else VECTORS/torch_results_PRECISION.npz; the last line
    says where. The script in scripts/ is the same command."""
    pytest.importorskip("torch")
    import runpy
    import sys
    from pathlib import Path

    from mi_ref import vectors
    vdir = tmp_path / "v"
    vectors.generate(vdir, names=["dense"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert port.main([str(vdir)]) == 0
    default = vdir / "torch_results_float64.npz"
    assert default == port.default_out(vdir, "float64") and default.is_file()
    assert capsys.readouterr().out.rstrip().endswith(f"saved 4 arrays to {default}; check them again with: "
                                                     f"mi-ref verify {vdir} {default}")
    assert port.main([str(vdir), "--precision", "float32"]) == 0
    assert (vdir / "torch_results_float32.npz").is_file()
    chosen = tmp_path / "elsewhere" / "mine.npz"
    script = Path(__file__).resolve().parents[1] / "scripts" / "verify_torch_example.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(vdir), "--out", str(chosen)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0 and chosen.is_file()
    assert f"saved 4 arrays to {chosen}" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []
    assert port.main([str(vdir), "--out", str(tmp_path)]) == 2
    assert "--out must name an .npz file" in capsys.readouterr().err
    assert port.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_convnet_training_step_ports_through_encoder_ports(rng):
    """ENCODER_PORTS["convnet"] in a training-step component: the loss -I_NCE of two ConvNets and a bilinear
    critic, and every gradient, equal mi-ref's (autograd of the formula) to float64 round-off (1e-10
    relative: the two sum the same few thousand products in different orders)."""
    pytest.importorskip("torch")
    import autograd
    import torch

    from mi_ref import critics, objectives
    from mi_ref.tree import tree_to_dict
    H, W, B = 6, 8, 5
    g1, g2 = (nn.ConvNet(H, W, out_dim=4, channels=(3, 5)) for _ in range(2))
    critic = critics.bilinear(4)
    params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
    for name in ("g1", "g2"):                    # nonzero biases and norm params: every path carries gradient
        for layer in ("conv1", "conv2", "out"):
            params[name][layer]["b"] = rng.normal(0, 0.1, params[name][layer]["b"].shape)
        params[name]["norm"] = {"scale": rng.uniform(0.5, 1.5, 5), "bias": rng.normal(0, 0.1, 5)}
    x1, x2 = rng.uniform(0, 1, (B, H * W)), rng.uniform(0, 1, (B, H * W))
    loss_fn = lambda p, a, b: objectives.mi_loss(p, g1, g2, critic, "infonce", a, b)  # noqa: E731
    loss = loss_fn(params, x1, x2)
    grads, gx1, gx2 = (autograd.grad(loss_fn, i)(params, x1, x2) for i in range(3))
    arrays = {"input/x1": x1, "input/x2": x2, "cotangent/loss": np.array(1.0)}
    arrays.update(tree_to_dict(params, "param/"))
    config = {"encoder": "convnet", "critic": "bilinear", "estimator": "infonce", "H": H, "W": W}
    out = port.run_component("train_convnet", config, arrays, torch.float64)
    assert out["output/loss"] == pytest.approx(loss, rel=1e-10)
    np.testing.assert_allclose(out["grad/x1"], gx1, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out["grad/x2"], gx2, rtol=1e-10, atol=1e-13)
    expected = tree_to_dict(grads, "grad/param/")
    assert set(k for k in out if k.startswith("grad/param/")) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-10, atol=1e-13, err_msg=key)


def test_a_training_step_with_an_undeclared_encoder_names_the_table(rng):
    from mi_ref.registry import MissingDeclaration
    pytest.importorskip("torch")
    import torch
    config = {"encoder": "my_encoder", "critic": "bilinear", "estimator": "infonce"}
    arrays = {"input/x1": np.zeros((2, 3)), "input/x2": np.zeros((2, 3))}
    with pytest.raises(MissingDeclaration, match="ENCODER_PORTS in mi_ref/porting/pytorch.py"):
        port.run_component("train_mine", config, arrays, torch.float64)
    # an encoder declared NONE is left unchecked, as an unported critic is
    assert port.run_component("train_flow", {**config, "encoder": "realnvp"}, arrays, torch.float64) is None
