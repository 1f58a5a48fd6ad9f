"""Tests for mi_ref.plugins and the CLI's --plugin: a user's critic in a file of its own plugs in from the CLI.

What is proven here:

* README's worked example (the cosine critic of "Plugins: your own critic, estimator or encoder"), copied
  out of README.md so the two cannot drift, runs as README writes it: trained with `mi-ref run`, drawn by
  `mi-ref plot`, its bounds reported by `mi-ref findings`, and named by `mi-ref vectors` as having no
  golden vectors, never skipped silently;
* a plugin can register a dataset (an entry of mi_ref.datasets.DATASETS), which `mi-ref run --set dataset=NAME`
  trains on;
* a plugin that does not exist or fails to import is one line naming it, exit code 2;
* entry points of the group mi_ref.plugins are loaded at the CLI's start, and a sweep's tasks carry the
  --plugin files to their worker processes (tests/test_sweep.py runs such a sweep on 2 local workers and on
  a Dask cluster).
"""

import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from mi_ref import bounds, cli, critics, plugins
from mi_ref.sweep.tasks import load_plugins, plan

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Plugins: your own critic, estimator, encoder or dataset")
    return text[start:text.index("\n## ", start + 1)]


def readme_plugin_code():
    """The README's cosine_critic.py, as written there."""
    blocks = re.findall(r"```python\n(.*?)```", readme_section(), re.S)
    (code,) = [b for b in blocks if b.startswith("# cosine_critic.py")]
    return code


def readme_commands():
    """The README's `mi-ref ...` command lines of the worked example, as argument lists."""
    (block,) = re.findall(r"```bash\n(.*?)```", readme_section(), re.S)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("mi-ref ")]


@pytest.fixture
def clean(monkeypatch):
    """Forget every plugin a test loads: its registrations and the lists of loaded plugins."""
    monkeypatch.setattr(plugins, "LOADED", [])
    monkeypatch.setattr(plugins, "_GIVEN", [])
    monkeypatch.setattr(plugins, "_entry_points", lambda: [])
    before = {reg: reg.names() for reg in (critics.CRITICS, bounds.ESTIMATORS)}
    yield
    for reg, names in before.items():
        for name in reg.names():
            if name not in names:
                reg.unregister(name)
    for name in [m for m in sys.modules if m.startswith("mi_ref_plugin_")]:
        del sys.modules[name]


def test_readmes_cosine_critic_runs_plots_is_reported_and_named_by_vectors(tmp_path, monkeypatch, capsys, clean):
    (tmp_path / "cosine_critic.py").write_text(readme_plugin_code(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    run, plot, findings, vectors = readme_commands()
    assert run[:1] == ["run"] and "--plugin" in run and plot[0] == "plot" and vectors[0] == "vectors"

    assert cli.main(run + ["--quiet"]) == 0
    assert plugins.LOADED == [str((tmp_path / "cosine_critic.py").resolve())] and "cosine" in critics.CRITICS
    metrics = [json.loads(line) for line in next(tmp_path.glob("runs/*/seed-0/metrics.jsonl")).read_text()
               .splitlines()]
    assert {m.get("critic") for m in metrics if m.get("critic")} == {"bilinear", "cosine"}

    assert cli.main(plot + ["--out", str(tmp_path / "fig")]) == 0
    assert list((tmp_path / "fig").glob("*.png"))
    capsys.readouterr()
    assert cli.main(findings) == 0
    out = capsys.readouterr().out
    assert "the runs lack the critic(s) ['concat', 'separable'] that the rule compares" in out
    assert re.search(r"bound infonce: bilinear \S+ \(held out \S+\), cosine", out)

    from mi_ref import vectors as vectors_module
    generate = vectors_module.generate
    monkeypatch.setattr(vectors_module, "generate", lambda out, seed=0: generate(out, seed, names=["dense"]))
    assert cli.main(vectors) == 0
    err = capsys.readouterr().err
    assert "critic 'cosine' has no golden vectors: no component checks it" in err


PLUGIN_DATASET = """\
from mi_ref.datasets import DATASETS, Dataset, load


def small_digits():
    d = load("digits")
    return Dataset("small-digits", d.x_train[:400], d.y_train[:400], d.x_test[:200], d.y_test[:200], d.image_shape)


DATASETS.register("small-digits", small_digits, image_shape=(8, 8), n_train=400, n_test=200,
                  description="the first 400 + 200 of the digits")
"""


@pytest.fixture
def small_digits_plugin(tmp_path, monkeypatch, clean):
    """The plugin file PLUGIN_DATASET in a fresh working directory; its dataset is unregistered afterwards."""
    from mi_ref import datasets
    (tmp_path / "small_digits.py").write_text(PLUGIN_DATASET, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    if "small-digits" in datasets.DATASETS:
        datasets.DATASETS.unregister("small-digits")


def test_a_plugin_registers_a_dataset_that_a_run_trains_on(small_digits_plugin):
    assert cli.main(["run", "critics", "--plugin", "small_digits.py", "--set", "dataset=small-digits", "--set",
                     "critics=bilinear", "--set", "estimators=infonce", "--steps", "4", "--evals", "1", "--out",
                     "runs", "--quiet"]) == 0
    rows = [json.loads(line) for line in next(small_digits_plugin.glob("runs/*/seed-0/metrics.jsonl")).read_text()
            .splitlines()]
    assert {r["n_test"] for r in rows if r["variant"] == "baseline"} == {200}
    assert {r["variant"] for r in rows} == {"baseline", "bilinear-infonce"}


def test_dataset_offers_a_plugins_dataset(small_digits_plugin):
    """The plugins named on the command line are loaded before the parser is built: --dataset lists theirs."""
    assert cli.main(["run", "critics", "--dataset", "small-digits", "--plugin", "small_digits.py", "--set",
                     "critics=bilinear", "--set", "estimators=infonce", "--steps", "2", "--evals", "1", "--out",
                     "runs", "--quiet"]) == 0
    assert next(small_digits_plugin.glob("runs/*/seed-0/config.json")).read_text().count('"small-digits"') >= 1


def test_a_plugin_that_fails_before_parsing_is_reported_with_the_command(tmp_path, monkeypatch, capsys, clean):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "critics", "--plugin", "missing.py", "--steps", "2"]) == 2
    assert "mi-ref run: error: plugin missing.py: no such file" in capsys.readouterr().err


def test_a_plugin_that_fails_is_one_line_naming_it(tmp_path, capsys, clean):
    bad = tmp_path / "broken_critic.py"
    bad.write_text("import no_such_module_here\n", encoding="utf-8")
    for spec, says in ((str(bad), f"plugin {bad} failed to import: ModuleNotFoundError"),
                       (str(tmp_path / "absent.py"), "no such file"),
                       ("no_such_plugin_module", "plugin no_such_plugin_module: no such file or importable module")):
        assert cli.main(["run", "critics", "--plugin", spec, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and err.startswith("mi-ref run: error: plugin ")


def test_a_plugin_is_loaded_once_and_passed_on_to_worker_processes(tmp_path, monkeypatch, clean):
    code = "from mi_ref.critics import CRITICS, inner_product\nCRITICS.register('dot2', inner_product)\n"
    (tmp_path / "dot2.py").write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert plugins.load("dot2.py") is not None and "dot2" in critics.CRITICS
    assert plugins.load(str(tmp_path / "dot2.py")) is None                       # not registered twice
    assert plugins.given() == (str((tmp_path / "dot2.py").resolve()),)           # absolute: workers start elsewhere
    tasks = plan("critics", "quick", [0, 1], {}, tmp_path / "out")
    assert tasks and all(t.plugins == plugins.given() for t in tasks)           # every task carries them
    task = tasks[0]
    critics.CRITICS.unregister("dot2")
    plugins.LOADED.clear()
    load_plugins(task.plugins)                                                   # what a sweep worker does
    assert "dot2" in critics.CRITICS
    load_plugins(task.plugins)                                                   # once per process
    assert plugins.LOADED.count(task.plugins[0]) == 1


def test_entry_points_are_loaded_at_the_start_of_every_command(tmp_path, monkeypatch, capsys, clean):
    (tmp_path / "dv_plugin.py").write_text(
        "import autograd.numpy as np\nfrom mi_ref import bounds\n\n\ndef register():\n"
        "    bounds.ESTIMATORS.register('dv', lambda s: np.mean(np.diag(s)) - bounds.logmeanexp_offdiag(s))\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name="dv", value="dv_plugin:register", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [entry])
    assert cli.main(["list"]) == 0
    assert "dv" in bounds.ESTIMATORS and plugins.LOADED == ["dv_plugin:register"]


def test_a_sweeps_workers_load_the_plugin(tmp_path, monkeypatch, clean):
    """The worker processes are spawned: they know the cosine critic only through the plugins of their task."""
    (tmp_path / "cosine_critic.py").write_text(readme_plugin_code(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "critics", "--seeds", "0", "--jobs", "1", "--dataset", "digits", "--steps", "2",
                     "--evals", "1", "--set", "critics=cosine", "--set", "estimators=infonce", "--plugin",
                     "cosine_critic.py", "--out", "sweep", "--quiet"]) == 0
    assert len(list(tmp_path.glob("sweep/*/seed-0/final/cosine-infonce.npz"))) == 1      # trained in a worker


def test_vectors_names_a_critic_declared_without_golden_vectors(monkeypatch, clean):
    from mi_ref.vectors import components
    critics.CRITICS.register("cosine", critics.inner_product)
    assert cli.golden._golden_notes() == [
        "critic 'cosine' has no golden vectors: no component checks it (add one to COMPONENTS in "
        "mi_ref/vectors/components.py, or say why it has none in WITHOUT_GOLDEN_SPEC['critic'] there)"]
    monkeypatch.setitem(components.WITHOUT_GOLDEN_SPEC["critic"], "cosine", "a plugin's critic")
    assert cli.golden._golden_notes() == ["critic 'cosine' has no golden vectors (declared none: a plugin's critic)"]
