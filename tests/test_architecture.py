"""The shape of the package: its import graph has no cycles, the math modules import none of the machinery
around them, every extension point is one registry, the speed wing covers what the loops train, and no module
grows past MAX_LINES lines unless it is a catalogue."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as onp
import pytest

from mi_ref import accel, bounds, critics, datasets, experiments, flows, metric_learning, nn

PACKAGE = Path(__file__).resolve().parent.parent / "mi_ref"
MATH = ("mi_ref.nn", "mi_ref.flows", "mi_ref.critics", "mi_ref.bounds", "mi_ref.optim", "mi_ref.jacobian",
        "mi_ref.views", "mi_ref.batches")
FORBIDDEN_FOR_MATH = ("mi_ref.train", "mi_ref.loop", "mi_ref.results", "mi_ref.audit", "mi_ref.checkpoints",
                      "mi_ref.runs", "mi_ref.plots", "mi_ref.figures", "mi_ref.cli", "mi_ref.experiments",
                      "mi_ref.accel", "mi_ref.findings", "mi_ref.effects", "mi_ref.verdicts", "mi_ref.vectors",
                      "mi_ref.sweep", "mi_ref.porting", "mi_ref.declarations", "mi_ref.files", "mi_ref.idx",
                      "mi_ref.datasets", "mi_ref.download")
# the third-party libraries that only the speed wing may use: compilers, LLVM bindings, thread-pool control
SPEED_LIBRARIES = ("numba", "llvmlite", "threadpoolctl")

# One place per kind: a module longer than MAX_LINES holds more than one job and is split by job, unless it is a
# catalogue (one entry per finding, per plotter, ...), which says so: the first line of its docstring ends with
# CATALOGUE_MARK (a full stop after it is allowed).
MAX_LINES = 600
CATALOGUE_MARK = "(a catalogue)"
# the modules over MAX_LINES that are no catalogue and are still to be split (none now); an entry must
# go once its module is split (the test below fails until it does)
OVER_MAX_LINES_FOR_NOW = ()


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph():
    """``{module: {imported mi_ref modules}}`` from every import statement (also inside functions). An
    ``from X import name`` counts as an import of X.name where that is a module, else of X; importing a
    submodule imports its package too (except the packages that contain the importing module itself:
    a package's ``__init__`` importing its own submodules is how packages work, not a cycle)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
                if target and target.startswith("mi_ref") and target != name and target not in ancestors:
                    edges.add(target)
                    parent = target.rpartition(".")[0]
                    while parent and parent != name and parent not in ancestors:
                        edges.add(parent)                      # importing a submodule runs its package
                        parent = parent.rpartition(".")[0]
        graph[name] = edges - {name}
    return graph


def third_party_imports(path):
    """The top-level names of the packages outside mi_ref that the module at ``path`` imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"mi_ref"}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def closure(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "mi_ref.accel.twins" in graph
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def forbidden_for_math(module):
    """True if ``module`` is one of :data:`FORBIDDEN_FOR_MATH` or inside one of those packages."""
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_FOR_MATH)


def test_the_forbidden_names_are_modules_and_cover_their_submodules():
    mods = modules()
    assert [f for f in FORBIDDEN_FOR_MATH if f not in mods] == []
    assert forbidden_for_math("mi_ref.sweep") and forbidden_for_math("mi_ref.sweep.local")
    assert not forbidden_for_math("mi_ref.sweeps") and not forbidden_for_math("mi_ref.nn")
    assert {m for m in mods if m.startswith("mi_ref.sweep.")} >= {"mi_ref.sweep.tasks", "mi_ref.sweep.local",
                                                                  "mi_ref.sweep.cluster"}


def is_catalogue(path):
    """True if the module at ``path`` declares itself a catalogue: its docstring's first line ends with
    :data:`CATALOGUE_MARK`."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n", 1)[0].rstrip().rstrip(".").endswith(CATALOGUE_MARK)


def oversized(package=PACKAGE):
    """``{path: lines}`` of the modules under ``package`` longer than :data:`MAX_LINES` that are no catalogue
    (paths relative to the package's folder, e.g. ``mi_ref/sweep.py``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and not is_catalogue(path):
            found[path.relative_to(package.parent).as_posix()] = lines
    return found


def test_no_module_is_longer_than_max_lines_unless_it_is_a_catalogue():
    found = oversized()
    new = [f"{path} ({lines} lines)" for path, lines in found.items() if path not in OVER_MAX_LINES_FOR_NOW]
    assert not new, (f"modules longer than {MAX_LINES} lines: {', '.join(new)}. Split each into modules of one job "
                     f"each, or, if it is a catalogue (one entry per finding, per plotter, ...), end the first line "
                     f"of its docstring with {CATALOGUE_MARK!r}")
    split = [path for path in OVER_MAX_LINES_FOR_NOW if path not in found]
    assert not split, (f"{split} no longer exceed {MAX_LINES} lines (or are gone, or are catalogues now): remove them "
                       "from OVER_MAX_LINES_FOR_NOW in tests/test_architecture.py")


def test_the_size_rule_flags_a_long_module_and_spares_a_catalogue(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    body = "x = 1\n" * MAX_LINES
    (package / "two_jobs.py").write_text('"""Two jobs."""\n' + body)
    (package / "sub" / "listing.py").write_text('"""One entry per kind (a catalogue).\n\nMore words."""\n' + body)
    (package / "near.py").write_text('"""The catalogue is elsewhere (a catalogue) of nothing."""\n' + body)
    (package / "short.py").write_text('"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1))
    assert oversized(package) == {"pkg/near.py": MAX_LINES + 1, "pkg/two_jobs.py": MAX_LINES + 1}
    assert is_catalogue(PACKAGE / "findings.py") and is_catalogue(PACKAGE / "plots.py")

@pytest.mark.parametrize("math_module", MATH)
def test_math_modules_import_none_of_the_machinery(math_module):
    reached = closure(import_graph(), math_module)
    bad = sorted(m for m in reached if forbidden_for_math(m))
    assert not bad, f"{math_module} imports {bad} (directly or through another module)"


@pytest.mark.parametrize("math_module", MATH)
def test_math_modules_use_no_speed_library(math_module):
    """Neither a math module nor any mi_ref module it reaches imports numba, llvmlite or threadpoolctl."""
    mods = modules()
    reached = {math_module} | closure(import_graph(), math_module)
    bad = sorted(f"{m} imports {lib}" for m in reached for lib in sorted(third_party_imports(mods[m]))
                 if lib in SPEED_LIBRARIES)
    assert not bad, f"{math_module} reaches speed code: {bad}"


def test_importing_the_math_loads_no_speed_code():
    """The same, as Python runs it: a fresh process that imports every math module has loaded neither the speed
    wing nor a speed library (not even through a third-party package)."""
    code = (f"import sys; import {', '.join(MATH)}; "
            f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {SPEED_LIBRARIES!r} "
            f"or m.startswith('mi_ref.accel'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == []


def test_the_speed_scanner_finds_imports_anywhere_in_a_module(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import numpy as np\nfrom . import nn\n\ndef f():\n    from numba import njit\n"
                    "    import llvmlite.binding\n", encoding="utf-8")
    assert third_party_imports(path) == {"numpy", "numba", "llvmlite"}


def test_the_speed_wing_is_only_reached_from_outside_the_math():
    graph = import_graph()
    users = sorted(m for m, edges in graph.items() if any(e.startswith("mi_ref.accel") for e in edges)
                   and not m.startswith("mi_ref.accel"))
    assert not set(users) & set(MATH)
    assert {"mi_ref.train", "mi_ref.vectors.builders"} <= set(users)
    assert {"mi_ref.accel.jacobians", "mi_ref.accel.linalg"} <= graph["mi_ref.train"]


@pytest.mark.parametrize("registry,kind", [(nn.ACTIVATIONS, "activation"), (bounds.ESTIMATORS, "estimator"),
                                           (critics.CRITICS, "critic"), (metric_learning.LOSSES,
                                                                         "metric-learning loss"),
                                           (experiments.REGISTRY, "experiment"), (datasets.DATASETS, "dataset")])
def test_every_registry_refuses_unknown_names_and_lists_the_known_ones(registry, kind):
    experiments.names()                                   # loads every experiment module
    with pytest.raises(ValueError) as err:
        registry.get("no-such-name")
    message = str(err.value)
    assert f"unknown {kind} 'no-such-name'" in message and all(repr(n) in message for n in registry.names())
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.names()[0], object())


def test_experiments_register_themselves_and_keep_the_papers_order():
    assert experiments.names() == ["invertible", "adversarial", "conditioning", "critics", "encoders", "sampling",
                                   "metric"]
    modules_on_disk = {p.stem for p in (PACKAGE / "experiments").glob("*.py")} - {"__init__", "common"}
    assert set(experiments.names()) == modules_on_disk


def test_consumers_read_the_registries():
    """An unknown critic in the critics experiment is an error listing the critics, not a fall-through."""
    with pytest.raises(ValueError, match=r"unknown critics \['deep'\]; expected names from \['inner_product'"):
        experiments.get("critics").config("quick", critics=("deep",))
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        nn.MLP(3, [2], activation="tanh")
    from mi_ref.plots import color_of, label_of
    assert label_of("concat") == critics.CRITICS.meta("concat", "label") and color_of("nwj") == "tab:orange"


def test_a_registered_activation_works_everywhere_with_its_derivative_declared(monkeypatch):
    """A new activation is its registry entry (the formula) plus its derivative declared beside the speed wing's
    code that needs it; then the MLP, its fused twin and the fast Jacobian all use it, and no other edit."""
    import autograd.numpy as anp
    from autograd import grad

    from mi_ref import jacobian
    from mi_ref.accel import activations
    from mi_ref.accel import jacobians as fast_jacobians
    name = "test-tanh"
    nn.ACTIVATIONS.register(name, nn.Activation(name, anp.tanh))
    monkeypatch.setitem(activations.ACTIVATION_DERIVATIVES, name, lambda u: 1.0 - onp.tanh(u) ** 2)
    try:
        rng = onp.random.default_rng(0)
        model = nn.MLP(4, [5, 3], activation=name)
        params, x = model.init(rng), rng.standard_normal((6, 4))
        fast = accel.twin(model)
        onp.testing.assert_allclose(fast.apply(params, x), model.apply(params, x), rtol=1e-13)
        g_fast = grad(lambda p: anp.sum(fast.apply(p, x) ** 2))(params)
        g_ref = grad(lambda p: anp.sum(model.apply(p, x) ** 2))(params)
        onp.testing.assert_allclose(g_fast["layers"][0]["W"], g_ref["layers"][0]["W"], rtol=1e-12)
        assert fast_jacobians.has_fast_jacobian(model)
        onp.testing.assert_allclose(fast_jacobians.batch_jacobian(model, params, x),
                                    jacobian.batch_jacobian(model, params, x), rtol=1e-12, atol=1e-15)
    finally:
        nn.ACTIVATIONS.unregister(name)


def test_every_model_the_experiments_train_has_a_twin_or_needs_none():
    """The loops ask the wing for twins; the encoders and critics of every paper preset get one (the bilinear
    and inner-product critics are two matrix products and need none)."""
    needs_none = tuple(type(critics.build(name, 4)) for name in accel.CRITICS_WITHOUT_TWIN)
    assert set(needs_none) == {critics.Bilinear, critics.InnerProduct}
    for name in ("invertible", "conditioning", "critics", "encoders", "metric"):
        exp = experiments.get(name)
        module = importlib.import_module(f"mi_ref.experiments.{name}")
        shape = (14, 28) if name == "encoders" else 392
        for variant in module.variants(exp.presets["paper"], shape):
            for model in variant.build(onp.random.default_rng(0)):
                assert isinstance(accel.twin(model), accel.Twin) or isinstance(model, needs_none), (name, model)
    assert isinstance(accel.twin(flows.realnvp(4, 2, [3], rng=onp.random.default_rng(0))), accel.Twin)
