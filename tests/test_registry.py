"""Tests for mi_ref.registry and the declarations the package keeps per registered kind.

What is proven here:

* a kind that a table does not mention is an error naming the kind, the missing declaration and the file
  to add it to (the PyTorch port, the golden-vector builders), never computed as some other kind;
* the declared kinds still compute what they did (the golden vectors are checked byte for byte elsewhere,
  in tests/test_verify.py);
* every kind of every registry has every declaration the package needs of it (or says "none"), and a new
  kind without them is named with exactly the declarations it lacks and the files to add them to.
"""

import autograd.numpy as anp
import numpy as onp
import pytest

from mi_ref import bounds, critics, declarations
from mi_ref.registry import NONE, REGISTRIES, MissingDeclaration, Registry, declared


class Cosine:
    """S[i, j] = <u_i, v_j> / (|u_i| |v_j|): a critic the package does not know."""

    def init(self, rng):
        return {}

    def apply(self, params, u, v):
        un = u / anp.sqrt(anp.sum(u ** 2, axis=1, keepdims=True))
        vn = v / anp.sqrt(anp.sum(v ** 2, axis=1, keepdims=True))
        return anp.dot(un, vn.T)


@pytest.fixture
def cosine():
    """The cosine critic registered for one test, then removed."""
    critics.CRITICS.register("cosine", lambda dim_u, dim_v=None, **options: Cosine(), label="cosine")
    try:
        yield "cosine"
    finally:
        critics.CRITICS.unregister("cosine")


@pytest.fixture
def dv():
    """A Donsker-Varadhan estimator, mean_i S[i, i] - log mean_{i != j} exp S[i, j], registered for one test."""
    bounds.ESTIMATORS.register("dv", lambda s: anp.mean(anp.diag(s)) - bounds.logmeanexp_offdiag(s))
    try:
        yield "dv"
    finally:
        bounds.ESTIMATORS.unregister("dv")


def test_declared_returns_the_entry_or_names_what_is_missing_and_where():
    table = {"a": 1, "b": NONE}
    assert declared(table, "a", "critic", "port", "X in f.py") == 1
    assert declared(table, "b", "critic", "port", "X in f.py") == NONE
    with pytest.raises(MissingDeclaration, match=r"critic 'c' has no port: add an entry for 'c' to X in f.py"):
        declared(table, "c", "critic", "port", "X in f.py")
    assert issubclass(MissingDeclaration, ValueError)          # the CLI reports it in one line, exit 2


@pytest.fixture
def scratch():
    """A registry of a kind the package does not have, forgotten after the test."""
    reg = Registry("gadget")
    try:
        yield reg
    finally:
        del REGISTRIES["gadget"]


def test_unregister_removes_an_entry(scratch):
    scratch.register("x", 1, label="X")
    scratch.unregister("x")
    assert "x" not in scratch and scratch.names() == []
    with pytest.raises(ValueError, match="unknown gadget 'x'"):
        scratch.unregister("x")


def test_the_golden_vector_builders_refuse_a_critic_they_do_not_know(cosine, dv):
    from mi_ref.vectors import builders
    config = {"K": 3, "critic": cosine, "d_u": 2, "d_v": 2}
    with pytest.raises(MissingDeclaration) as err:
        builders.BUILDERS["critic"](config)
    assert "critic 'cosine' has no golden-vector param notes" in str(err.value)
    assert "CRITIC_NOTES in mi_ref/vectors/builders.py" in str(err.value)
    train = {"B": 3, "dim": 4, "encoder": "mlp", "encoder_dims": [3], "shortcuts": False, "critic": cosine,
             "estimator": "infonce", "structure_seed": 0}
    with pytest.raises(MissingDeclaration, match="TRAIN_CRITIC_NOTES in mi_ref/vectors/builders.py"):
        builders.BUILDERS["train"](train)
    with pytest.raises(MissingDeclaration, match="ESTIMATOR_SYMBOLS in mi_ref/vectors/builders.py"):
        builders.BUILDERS["bound"]({"K": 3, "estimator": "dv", "scores": "normal"})


def test_the_pytorch_port_refuses_a_critic_it_does_not_know(cosine, dv):
    pytest.importorskip("torch")
    from mi_ref.porting import pytorch as port
    rng = onp.random.default_rng(0)
    arrays = {"input/u": rng.standard_normal((3, 2)), "input/v": rng.standard_normal((3, 2)),
              "cotangent/scores": rng.standard_normal((3, 3))}
    with pytest.raises(MissingDeclaration) as err:
        port.run_component("critic_cosine", {"critic": cosine}, arrays, port._torch().float64)
    assert str(err.value).startswith("critic 'cosine' has no PyTorch port: add an entry for 'cosine' to "
                                     "CRITIC_PORTS in mi_ref/porting/pytorch.py")
    with pytest.raises(MissingDeclaration, match="estimator 'dv' has no PyTorch port.*BOUNDS in mi_ref/porting"):
        port.run_component("bound_dv", {"estimator": "dv"}, {"input/scores": onp.eye(3)}, port.torch.float64)


def test_a_port_declared_none_leaves_the_component_unchecked(monkeypatch):
    pytest.importorskip("torch")
    from mi_ref.porting import pytorch as port
    monkeypatch.setitem(port.CRITIC_PORTS, "bilinear", NONE)
    assert port.run_component("critic_bilinear", {"critic": "bilinear"}, {}, port._torch().float64) is None


def test_every_registered_kind_has_every_declaration_it_needs():
    gaps = declarations.missing()
    assert not gaps, "registered kinds lack declarations:\n" + declarations.report(gaps)


def test_every_registry_says_what_its_kinds_need():
    registries = declarations.load_all()
    assert {"critic", "estimator", "encoder", "activation", "experiment", "metric-learning loss",
            "dataset"} <= set(registries)
    assert set(registries) <= set(declarations.NEEDS)


def test_a_registry_without_a_list_of_needs_is_reported(scratch):
    scratch.register("g1", object())
    assert [str(g) for g in declarations.missing("gadget")] == [
        "gadget '*' lacks its list of needed declarations: declare it in NEEDS in mi_ref/declarations.py"]


def test_the_walk_names_exactly_what_a_new_critic_lacks(cosine):
    gaps = declarations.missing()
    assert [(g.registry, g.name, g.declaration) for g in gaps] == [
        ("critic", "cosine", "accel twin"), ("critic", "cosine", "golden-vector spec"),
        ("critic", "cosine", "PyTorch port"), ("critic", "cosine", "findings role")]
    text = declarations.report(gaps)
    print(text)
    for where in ("mi_ref/accel/twins.py", "mi_ref/vectors/components.py", "mi_ref/porting/pytorch.py",
                  "mi_ref/findings.py"):
        assert where in text
    assert declarations.golden_gaps() == [("critic", "cosine")]


def test_the_walk_names_what_a_new_dataset_lacks_and_findings_take_none_for_no_refit_sd(monkeypatch):
    from mi_ref import datasets, effects
    datasets.DATASETS.register("tiny", lambda: datasets.load("digits"), description="a test's dataset")
    try:
        assert [str(g) for g in declarations.missing("dataset")] == [
            "dataset 'tiny' lacks its probe refit sd (the findings' SE of a paired difference): declare it in "
            "PROBE_REFIT_SD in mi_ref/effects.py"]
        monkeypatch.setitem(effects.PROBE_REFIT_SD, "tiny", NONE)
        assert declarations.missing("dataset") == []
        # declared none: a paired difference on it gets the binomial SE, as for rows without outcomes
        hits = {0: onp.ones(450, bool)}
        a, b = effects.Accuracies({0: 0.9}, hits, "tiny"), effects.Accuracies({0: 0.8}, hits, "tiny")
        assert effects.seed_variance(a, b, 0, 450) == (pytest.approx(0.9 * 0.1 / 450 + 0.8 * 0.2 / 450), False)
    finally:
        datasets.DATASETS.unregister("tiny")


def test_the_walk_names_what_a_new_estimator_lacks(dv):
    gaps = declarations.missing("estimator", "dv")
    assert [g.declaration for g in gaps] == ["golden-vector spec", "PyTorch port"]


def test_a_critic_that_says_none_everywhere_passes_the_walk(cosine, monkeypatch):
    from mi_ref import accel, findings
    from mi_ref.porting import pytorch
    from mi_ref.vectors import components
    monkeypatch.setitem(accel.CRITICS_WITHOUT_TWIN, cosine, "a test critic")
    monkeypatch.setitem(components.WITHOUT_GOLDEN_SPEC["critic"], cosine, "a test critic")
    monkeypatch.setitem(pytorch.CRITIC_PORTS, cosine, NONE)
    monkeypatch.setitem(findings.CRITIC_ROLES, cosine, NONE)
    assert declarations.missing("critic") == [] and declarations.golden_gaps() == []


def test_a_removed_declaration_is_named_with_its_file(monkeypatch):
    from mi_ref.vectors import builders
    monkeypatch.delitem(builders.CRITIC_NOTES, "separable")
    assert [str(g) for g in declarations.missing()] == [
        "critic 'separable' lacks its golden-vector param notes: declare it in CRITIC_NOTES in "
        "mi_ref/vectors/builders.py"]


def test_the_walk_names_what_a_new_encoder_lacks():
    from mi_ref import experiments, nn
    from mi_ref.experiments import encoders
    encoders.ENCODERS.register("linear", lambda config, half_shape: nn.Dense(half_shape[0] * half_shape[1],
                                                                             config.code_dim))
    try:
        assert experiments.get("encoders").config("quick", encoders=("mlp", "linear")).encoders == ("mlp", "linear")
        gaps = declarations.missing("encoder")
        assert [(g.name, g.declaration) for g in gaps] == [
            ("linear", "accel twin"), ("linear", "fast Jacobian"), ("linear", "golden-vector spec"),
            ("linear", "PyTorch port")]
        assert "ENCODER_PORTS in mi_ref/porting/pytorch.py" in str(gaps[3])
        assert "ENCODERS_WITHOUT_FAST_JACOBIAN in mi_ref/accel/jacobians.py" in str(gaps[1])
        assert declarations.golden_gaps() == [("encoder", "linear")]
    finally:
        encoders.ENCODERS.unregister("linear")
    with pytest.raises(ValueError, match=r"unknown encoders \['linear'\]; expected names from \['convnet', 'mlp'\]"):
        experiments.get("encoders").config("quick", encoders=("mlp", "linear"))


def test_the_walk_names_what_a_new_activation_lacks(monkeypatch):
    """An activation is its function in mi_ref.nn.ACTIVATIONS; its derivative, which only the speed wing uses,
    is declared in the wing's table (or 'none'), and the walk names the table when it is not."""
    import autograd.numpy as anp

    from mi_ref import nn
    from mi_ref.accel import activations
    nn.ACTIVATIONS.register("sin", nn.Activation("sin", anp.sin))
    try:
        assert [str(g) for g in declarations.missing("activation")] == [
            "activation 'sin' lacks its derivative (for the twins and the fast Jacobians): declare it in "
            "ACTIVATION_DERIVATIVES in mi_ref/accel/activations.py"]
        monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, "sin", NONE)
        assert declarations.missing("activation") == []
        monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, "sin", anp.cos)
        assert declarations.missing() == []
    finally:
        nn.ACTIVATIONS.unregister("sin")
