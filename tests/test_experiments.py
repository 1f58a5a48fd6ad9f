"""End-to-end tests of the experiment machine: tiny configs of every experiment, resumption after an
interruption, and the registry's errors."""

import dataclasses
import importlib
import json

import numpy as np
import pytest

from mi_ref import experiments, faults
from mi_ref.figures import plot_runs
from mi_ref.results import RunDir

TINY = {
    "invertible": dict(dataset="digits", n_iters=12, n_evals=3, n_couplings=2, hidden=(8,), eval_final=False,
                       estimators=("infonce", "nwj")),
    "conditioning": dict(dataset="digits", n_iters=12, n_evals=3, n_layers=2, eval_final=False,
                         estimators=("infonce", "nwj")),
    "adversarial": dict(dataset="digits", warmup_steps=3, n_iters=9, probe_every=4, n_couplings=2, hidden=(8,)),
}


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_run_end_to_end(tmp_path, name):
    path = experiments.run_experiment(name, "quick", seed=0, out=tmp_path, progress=False, **TINY[name])
    run = RunDir(path)
    rows = run.read_metrics()
    assert rows[0]["variant"] == "baseline" and 0 < rows[0]["accuracy"] <= 1
    trained = [r for r in rows if r["variant"] != "baseline"]
    assert trained and all(0 <= r["accuracy"] <= 1 for r in trained)
    if name != "adversarial":
        assert all(np.isfinite(r["bound"]) and np.isfinite(r["bound_test"]) for r in trained)
        assert all(r["bound"] <= np.log(128) + 1e-12 for r in trained if r["variant"] == "infonce")
        assert [r["train_loss"] is None for r in trained] == [r["step"] == 0 for r in trained]
    assert not list((path / "checkpoints").glob("*.npz"))        # finished variants keep no checkpoint
    config = json.loads(run.config_path.read_text())
    assert config["experiment"] == name and config["config"]["dataset"] == "digits"
    assert config["environment"]["packages"]["numpy"]
    if name == "conditioning":
        keys = ["logcond_min", "logcond_p20", "logcond_p40", "logcond_p60", "logcond_p80", "logcond_max"]
        assert all(sorted(r[k] for k in keys) == [r[k] for k in keys] for r in trained)
        sv = run.load_arrays("infonce")["singular_values"]
        assert sv.shape == (3, 128, 32)
        # the residual MLP starts at the identity: every singular value is ~1 at step 0
        np.testing.assert_allclose(sv[0], 1.0, atol=1e-2)
    figures = plot_runs([path], tmp_path / "fig")
    assert len(figures) == 1 and figures[0].stat().st_size > 10_000


def test_same_seed_same_numbers(tmp_path):
    a = experiments.run_experiment("invertible", "quick", 3, tmp_path / "a", progress=False, **TINY["invertible"])
    b = experiments.run_experiment("invertible", "quick", 3, tmp_path / "b", progress=False, **TINY["invertible"])
    assert strip_time(RunDir(a).read_metrics()) == strip_time(RunDir(b).read_metrics())


class Interrupt:
    """Raise KeyboardInterrupt at the n-th optimizer update (a Ctrl-C between two evaluations), through the
    loop helper's fault-injection hook."""

    def __init__(self, monkeypatch, at, point="update"):
        self.calls, self.at = 0, at

        def hook(name):
            if name == point:
                self.calls += 1
                if self.calls == self.at:
                    raise KeyboardInterrupt
        monkeypatch.setattr(faults, "HOOK", hook)


@pytest.mark.parametrize("name,at", [("invertible", 7), ("invertible", 17), ("conditioning", 10),
                                     ("adversarial", 30)])
def test_resume_after_interruption_gives_identical_metrics(tmp_path, monkeypatch, name, at):
    reference = experiments.run_experiment(name, "quick", 1, tmp_path / "ref", progress=False, **TINY[name])
    with monkeypatch.context() as m:
        Interrupt(m, at)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment(name, "quick", 1, tmp_path / "cut", progress=False, **TINY[name])
    resumed = experiments.run_experiment(name, "quick", 1, tmp_path / "cut", resume=True, progress=False,
                                         **TINY[name])
    assert strip_time(RunDir(resumed).read_metrics()) == strip_time(RunDir(reference).read_metrics())
    if name == "conditioning":
        np.testing.assert_array_equal(RunDir(resumed).load_arrays("nwj")["singular_values"],
                                      RunDir(reference).load_arrays("nwj")["singular_values"])


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        experiments.get("nope")
    exp = experiments.get("invertible")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        exp.config("huge")
    with pytest.raises(ValueError, match="has no setting"):
        exp.config("quick", n_layers=3)
    with pytest.raises(ValueError, match="n_evals=30 exceeds n_iters=10"):
        exp.config("quick", n_iters=10, n_evals=30)
    with pytest.raises(ValueError, match="n_iters must be a positive integer"):
        exp.config("quick", n_iters=0)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        exp.config("quick", dataset="cifar")


def test_paper_presets_hold_the_papers_values():
    inv = experiments.get("invertible").presets["paper"]
    assert (inv.dataset, inv.n_iters, inv.n_evals, inv.batch_size, inv.lr) == ("mnist", 21000, 21, 128, 1e-4)
    assert (inv.n_couplings, inv.hidden, inv.init_std) == (30, (512, 512), 1e-4)
    cond = experiments.get("conditioning").presets["paper"]
    assert (cond.noise_std, cond.n_layers, cond.n_iters, cond.n_evals) == (0.05, 5, 21000, 21)
    adv = experiments.get("adversarial").presets["paper"]
    assert (adv.warmup_steps, adv.n_iters, adv.classifier_steps, adv.probe_every) == (1000, 4001, 10, 400)
    assert (adv.classifier_lr, adv.encoder_lr) == (1e-3, 1e-5)


TINY.update({
    "critics": dict(dataset="digits", n_iters=6, n_evals=2, encoder_dims=(16, 8), separable_hidden=(8,),
                    separable_out=8, concat_hidden=(8,), eval_final=False),
    "encoders": dict(dataset="digits", n_iters=6, n_evals=2, mlp_dims=(16, 8), code_dim=8, eval_final=False,
                     estimators=("infonce", "nwj"), convnet_channels=(4, 6)),
})


@pytest.mark.parametrize("name", ["critics", "encoders"])
def test_tiny_run_sections_3_2_and_3_3(tmp_path, name):
    path = experiments.run_experiment(name, "quick", seed=0, out=tmp_path, progress=False, **TINY[name])
    rows = [r for r in RunDir(path).read_metrics() if r["variant"] != "baseline"]
    expected = 6 if name == "critics" else 8
    assert len({r["variant"] for r in rows}) == expected and len(rows) == 2 * expected
    if name == "encoders":
        assert {r["target"] for r in rows} == {2.0, 4.0} and {r["encoder"] for r in rows} == {"convnet", "mlp"}
        # loss = weighted mean of |I_k - t| over the fresh batches >= |weighted mean of I_k - t| (Jensen)
        assert all(r["loss"] >= abs(r["bound"] - r["target"]) - 1e-12 for r in rows)
    figures = plot_runs([path], tmp_path / "fig")
    assert figures[0].stat().st_size > 10_000


@pytest.mark.parametrize("name", ["critics", "encoders", "conditioning"])
def test_plot_of_a_run_with_only_its_step_0_evaluation(tmp_path, name):
    """A run stopped after its first evaluation (or with one evaluation) still plots: nothing to clip."""
    settings = dict(TINY[name], n_evals=1)
    path = experiments.run_experiment(name, "quick", seed=0, out=tmp_path, progress=False, **settings)
    assert {r["step"] for r in RunDir(path).read_metrics()} == {0}
    figures = plot_runs([path], tmp_path / "fig")
    assert figures[0].stat().st_size > 10_000


def test_encoders_config_checks():
    exp = experiments.get("encoders")
    with pytest.raises(ValueError, match="unknown encoders"):
        exp.config("quick", encoders=("resnet",))
    with pytest.raises(ValueError, match="must end with code_dim"):
        exp.config("quick", mlp_dims=(10, 20))
    with pytest.raises(ValueError, match="unknown critics"):
        experiments.get("critics").config("quick", critics=("deep",))


TINY.update({
    "sampling": dict(n_iters=30, record_every=10, hidden=(4, 4)),
    "metric": dict(dataset="digits", n_iters=6, n_evals=2, encoder_dims=(16, 8), eval_final=False),
})


@pytest.mark.parametrize("name", ["sampling", "metric"])
def test_tiny_run_section_4(tmp_path, name):
    path = experiments.run_experiment(name, "quick", seed=0, out=tmp_path, progress=False, **TINY[name])
    rows = [r for r in RunDir(path).read_metrics() if r["variant"] != "baseline"]
    if name == "sampling":
        assert {r["variant"] for r in rows} == {"iid-infonce", "iid-nwj", "non-iid-infonce", "non-iid-nwj"}
        assert all(r["true_mi"] == pytest.approx(-0.5 * np.log(0.96)) for r in rows)
        assert [r["step"] for r in rows if r["variant"] == "iid-nwj"] == [10, 20, 30]
        assert RunDir(path).load_arrays("iid-nwj")["trace"].shape == (30,)
    else:
        assert {r["variant"] for r in rows} == {"infonce", "nwj", "triplet", "triplet_hardest"}
    figures = plot_runs([path], tmp_path / "fig")
    assert figures[0].stat().st_size > 10_000


@pytest.mark.parametrize("point,at", [("update", 5), ("update", 15), ("update", 61), ("done", 1), ("done", 3)])
def test_sampling_resume_is_identical(tmp_path, monkeypatch, point, at):
    """Also stopped after a variant's last row, before it is recorded finished (was: its last row was
    checkpointed, and the resumed run wrote that row a second time)."""
    ref = experiments.run_experiment("sampling", "quick", 2, tmp_path / "ref", progress=False, **TINY["sampling"])
    with monkeypatch.context() as m:
        Interrupt(m, at, point)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment("sampling", "quick", 2, tmp_path / "cut", progress=False,
                                       **TINY["sampling"])
    cut = experiments.run_experiment("sampling", "quick", 2, tmp_path / "cut", resume=True, progress=False,
                                     **TINY["sampling"])
    assert strip_time(RunDir(cut).read_metrics()) == strip_time(RunDir(ref).read_metrics())
    np.testing.assert_array_equal(RunDir(cut).load_arrays("non-iid-nwj")["trace"],
                                  RunDir(ref).load_arrays("non-iid-nwj")["trace"])


@pytest.mark.parametrize("name", ["invertible", "conditioning", "critics", "encoders", "metric"])
def test_paper_scale_models_take_one_gradient_step(name):
    """Every variant of the paper preset builds at full size (392-value MNIST halves) and its loss has a
    finite gradient on a batch of 4; this guards the paper settings without training them."""
    from autograd import grad

    from mi_ref.experiments.common import make_objective
    from mi_ref.tree import tree_flatten
    exp = experiments.get(name)
    cfg = exp.presets["paper"]
    module = importlib.import_module(f"mi_ref.experiments.{name}")
    arg = (14, 28) if name == "encoders" else 392
    rng = np.random.default_rng(0)
    x1, x2 = rng.uniform(size=(4, 392)), rng.uniform(size=(4, 392))
    for v in module.variants(cfg, arg)[:3]:
        g1, g2, critic = v.build(rng)
        params = {"g1": g1.init(rng), "g2": g2.init(rng), "critic": critic.init(rng)}
        objective = make_objective(v, g1, g2, critic)
        loss = lambda p: objective(p, x1, x2)  # noqa: E731
        g = grad(loss)(params)
        assert np.isfinite(loss(params))
        assert all(np.all(np.isfinite(leaf)) for _, leaf in tree_flatten(g))


def test_sampling_draws_a_fresh_batch_every_step(monkeypatch):
    """The paper's sampling ops are graph tensors: every step sees new pairs (non-i.i.d.: a new shared Z
    too). The old protocol trained on one fixed batch; ``batches="fixed"`` still does, on request."""
    from mi_ref.experiments import sampling
    seen = []
    original = sampling.gaussian_pairs

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out
    monkeypatch.setattr(sampling, "gaussian_pairs", spy)
    config = experiments.get("sampling").config("quick", n_iters=3, record_every=1, hidden=(4,))
    sampling.train_variant(config, None, 0, 2, "non-iid", "infonce", progress=False)
    assert len(seen) == 3 and all(x.shape == (128, 1) and y.shape == (128, 1) for x, y in seen)
    for (x0, y0), (x1, y1) in zip(seen, seen[1:]):
        assert not np.array_equal(x0, x1) and not np.array_equal(y0, y1)
        assert abs(float(np.mean(x0 - x1))) > 0.0            # a new shared Z moves the whole batch
    seen.clear()
    sampling.train_variant(dataclasses.replace(config, batches="fixed"), None, 0, 2, "iid", "infonce", False)
    assert len(seen) == 1


def test_plotted_bound_uses_fresh_training_batches_of_the_training_batch_size():
    """``bound`` is the notebook's measure: one fresh TRAINING batch of the training batch size per
    512-slice of the test set, weighted by the slice sizes; ``bound_test`` is the held-out measure."""
    from mi_ref.batches import BatchIterator
    from mi_ref.train import Views, paper_bound, paper_bound_weights
    assert paper_bound_weights(10000) == [512] * 19 + [272]
    assert paper_bound_weights(1024) == [512, 512] and paper_bound_weights(450) == [450]
    rng = np.random.default_rng(0)
    n_train, n_test = 300, 1100
    ids = np.arange(n_train, dtype=float)[:, None] * np.ones((1, 4))    # a training row is known by its id
    views = Views(ids, ids + 0.5, np.zeros(n_train, int), -np.ones((n_test, 4)), -np.ones((n_test, 4)),
                  np.zeros(n_test, int), (2, 2))
    calls = []

    def bound_and_loss(params, x1, x2):
        calls.append(x1[:, 0].copy())
        return float(len(calls)), -float(len(calls))
    bound, loss = paper_bound(bound_and_loss, None, views, paper_bound_weights(n_test),
                              BatchIterator(n_train, 16, rng), 0.0, rng)
    assert [len(c) for c in calls] == [16, 16, 16]
    assert all(np.all((c >= 0) & (c == np.round(c))) for c in calls)    # training rows, never the test set
    assert len({tuple(c) for c in calls}) == 3                          # a fresh batch each time
    assert bound == pytest.approx((512 * 1 + 512 * 2 + 76 * 3) / 1100) and loss == pytest.approx(-bound)


def test_plotted_bound_is_capped_at_log_of_the_training_batch_size(tmp_path):
    """I_NCE on batches of K = 16 never exceeds log 16, though the test set is far larger than 16."""
    path = experiments.run_experiment("invertible", "quick", seed=0, out=tmp_path, progress=False,
                                      **dict(TINY["invertible"], batch_size=16, estimators=("infonce",)))
    rows = [r for r in RunDir(path).read_metrics() if r["variant"] == "infonce"]
    assert all(r["bound"] <= np.log(16) + 1e-12 and r["bound_test"] <= np.log(16) + 1e-12 for r in rows)
    assert all(r["loss"] == pytest.approx(-r["bound"], abs=1e-12) for r in rows)


@pytest.mark.parametrize("at", [None, 5, 12])
def test_eval_final_evaluates_the_trained_model_and_resumes_identically(tmp_path, monkeypatch, at):
    """The paper's schedule ends n_iters // n_evals steps before the end; eval_final adds the trained model
    at step n_iters, and an interruption anywhere (also after the last update) resumes to the same rows."""
    settings = dict(TINY["conditioning"], eval_final=True)
    ref = experiments.run_experiment("conditioning", "quick", 4, tmp_path / "ref", progress=False, **settings)
    rows = [r for r in RunDir(ref).read_metrics() if r["variant"] == "infonce"]
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    assert RunDir(ref).load_arrays("infonce")["singular_values"].shape[0] == 4
    if at is None:
        return
    with monkeypatch.context() as m:
        Interrupt(m, at)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_experiment("conditioning", "quick", 4, tmp_path / "cut", progress=False, **settings)
    cut = experiments.run_experiment("conditioning", "quick", 4, tmp_path / "cut", resume=True, progress=False,
                                     **settings)
    assert strip_time(RunDir(cut).read_metrics()) == strip_time(RunDir(ref).read_metrics())


def test_permutations_are_shared_across_seeds_and_weights_are_not():
    """The paper builds its flows once per configuration and trains them NRUNS times: the permutations of
    every seed are the same (per variant, g1 and g2 each their own), the initial weights differ. With
    permutations="per_seed" each seed draws its own."""
    from mi_ref.experiments import common, invertible
    cfg = experiments.get("invertible").config("quick", n_couplings=3, hidden=(4,))
    variants = invertible.variants(cfg, 10)
    built = {seed: common.build_variant(variants[0], seed, 0) for seed in (0, 1)}
    g1_0, g2_0, _ = built[0]
    g1_1, g2_1, _ = built[1]
    np.testing.assert_array_equal(g1_0.permutations, g1_1.permutations)
    np.testing.assert_array_equal(g2_0.permutations, g2_1.permutations)
    assert not np.array_equal(g1_0.permutations, g2_0.permutations)
    per_seed = {seed: common.build_variant(variants[0], seed, 0, "per_seed")[0] for seed in (0, 1)}
    assert not np.array_equal(per_seed[0].permutations, per_seed[1].permutations)
    # the weights come from each seed's own init stream
    from mi_ref.loop import variant_streams
    w0 = g1_0.init(variant_streams(0, 0)[0])["blocks"][0]["net"]["layers"][0]["W"]
    w1 = g1_1.init(variant_streams(1, 0)[0])["blocks"][0]["net"]["layers"][0]["W"]
    assert not np.array_equal(w0, w1)
    with pytest.raises(ValueError, match="permutations"):
        experiments.get("invertible").config("quick", permutations="sometimes")


def test_a_config_whose_models_cannot_be_built_is_refused_with_the_variant_named():
    """check_on_data builds every variant's models before anything is written; a failure names the variant."""
    from mi_ref.datasets import load
    from mi_ref.experiments.common import Variant, check_on_data

    def build(rng):
        raise ValueError("every MLP layer width must be a positive integer, got -3")
    config = experiments.get("critics").config("quick", dataset="digits")
    with pytest.raises(ValueError, match=r"the settings cannot build the models of odd: every MLP layer width"):
        check_on_data(config, load("digits"), [Variant("odd", build, "infonce")])
    with pytest.raises(ValueError, match="convnet_channels must be the channels of the ConvNet's two convolutions"):
        experiments.get("encoders").config("quick", convnet_channels=(4,))


def test_run_names_are_injective():
    """Was: lr=0.0003 and lr=0.00030000001 both gave the folder critics-quick-lr=0.0003 (the second run was
    refused as a different config, or with another seed two configs shared one RUN_NAME). A short name is
    used only when it reads back as exactly the config's values; otherwise the name is the config's hash."""
    critics = experiments.get("critics")
    plain = experiments.run_name("critics", "quick", critics.config("quick", lr=3e-4))
    close = experiments.run_name("critics", "quick", critics.config("quick", lr=0.00030000001))
    assert plain == "critics-quick-lr=0.0003" and close != plain and close.startswith("critics-quick-")
    assert close.endswith("-lr") and len(close.split("-")[2]) == 8                  # the hash form
    sampling = experiments.get("sampling")
    nested = experiments.run_name("sampling", "quick", sampling.config("quick", sigma_z=((1.0, 0.2), (0.2, 1.0))))
    assert "sigma_z=1,0.2,0.2,1" not in nested            # flattened, the nesting could not be read back
    text = experiments.run_name("metric", "quick", experiments.get("metric").config("quick", critic="separable"))
    assert text == "metric-quick-critic=separable"


def test_the_committed_runs_keep_their_names():
    """Existing run folders keep their names (a run is resumed where its name says it is)."""
    from pathlib import Path

    from mi_ref.runs import expand_run_dirs
    for run in expand_run_dirs([Path(__file__).resolve().parents[1] / "figures" / "runs"]):
        config = json.loads((run / "config.json").read_text())
        assert experiments.run_name(config["experiment"], config["preset"], config["config"]) == run.parent.name


def test_a_setting_given_twice_is_an_error_naming_both_values():
    """Was: --set lr=1e-3 --set lr=3e-4 silently kept the last value."""
    critics = experiments.get("critics")
    with pytest.raises(ValueError, match=r"--set lr is given twice \('lr=1e-3' and 'lr=3e-4'\); give each setting "
                                         r"once .*--grid lr=V1,V2"):
        experiments.parse_sets(critics, "quick", ["lr=1e-3", "n_iters=5", " lr = 3e-4"])
    assert experiments.parse_sets(critics, "quick", ["lr=1e-3", "n_iters=5"]) == {"lr": 1e-3, "n_iters": 5}


def test_finished_variants_keep_their_state_except_the_papers_flows(tmp_path, capsys):
    """The final state is 24 bytes per parameter: kept by default, except by the paper presets of the 30-block
    flows (invertible: 672 MB per variant; adversarial: 407 MB), where it is asked for with --keep-state;
    the option's help states the sizes."""
    keeps = {name: [experiments.get(name).keeps_state(p) for p in ("quick", "paper")] for name in experiments.names()}
    assert keeps.pop("invertible") == keeps.pop("adversarial") == [True, False]
    assert all(v == [True, True] for v in keeps.values())
    path = experiments.run_experiment("invertible", "quick", 0, tmp_path, progress=False, **TINY["invertible"])
    assert sorted(p.name for p in (path / "final").iterdir()) == ["infonce.npz", "nwj.npz"]
    arrays, meta = RunDir(path, last_step=12).load_final("nwj")
    assert meta["step"] == 12 and meta["evaluated"] is False and meta["row_steps"] == [0, 4, 8]
    n = sum(v.size for k, v in arrays.items() if k.startswith("params/"))
    assert sum(v.size for k, v in arrays.items() if k.startswith("adam/")) == 2 * n + 1     # m, v and the step
    from mi_ref import cli
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "672 MB per variant" in text and "407 MB per seed" in text and "--no-keep-state" in text


def test_grid_values_split_at_commas_outside_brackets_and_combine_with_the_common_settings():
    critics = experiments.get("critics")
    grid = experiments.parse_grid(critics, "quick", ["lr=1e-3, 3e-4", "critics=[bilinear,concat],[concat]",
                                                     "concat_hidden=16,[8,8]"])
    assert grid == [("lr", [1e-3, 3e-4]), ("critics", [("bilinear", "concat"), ("concat",)]),
                    ("concat_hidden", [(16,), (8, 8)])]
    assert experiments.parse_grid(critics, "quick", ["critics=bilinear,concat"]) == \
        [("critics", [("bilinear",), ("concat",)])]                       # plain values: one item each
    nested = experiments.parse_grid(experiments.get("sampling"), "quick", ["sigma_z=[[1,0.5],[0.5,1]],[[1,0],[0,1]]"])
    assert nested == [("sigma_z", [((1, 0.5), (0.5, 1)), ((1, 0), (0, 1))])]
    configs = experiments.grid_configs({"n_iters": 5}, grid[:2])
    assert configs == [{"n_iters": 5, "lr": lr, "critics": c} for lr in (1e-3, 3e-4)
                       for c in (("bilinear", "concat"), ("concat",))]
    with pytest.raises(ValueError, match="lr is set for every config and by --grid lr"):
        experiments.grid_configs({"lr": 1e-2}, grid)
    for bad, message in ((["lr="], "expects KEY=V1,V2"), (["lr=1e-3,,2e-3"], "an empty value"),
                         (["critics=[bilinear"], "unbalanced brackets"), (["lr=1,1.0"], "gives the value 1 twice")):
        with pytest.raises(ValueError, match=message):
            experiments.parse_grid(critics, "quick", bad)
