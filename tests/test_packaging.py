"""The installed package is what users run, so the wheel is what is tested here.

The rest of the suite imports mi-ref from the checkout, where every data file sits beside the code whether or
not the wheel ships it. These tests build the wheel from a copy of the source tree (``pip wheel --no-deps
--no-build-isolation --no-index``: offline, with the setuptools and wheel of the test extra) and prove:

* every non-Python file of the package is in the wheel. The files are found two ways, so that a new one
  cannot be missed silently: every non-``.py`` file under ``mi_ref/`` that git tracks (or, outside a git
  checkout, that the directory holds), and every path that the source opens beside itself (a string
  literal in a statement using ``__file__``). A use of ``__file__`` that names no such path must be listed
  in :data:`OPENS_NO_DATA` with the reason, and other ways of reading package data (``importlib.resources``,
  ``pkgutil.get_data``) fail until this test learns them;
* every module of the package is in the wheel, those of its subpackages too (setup.cfg's ``packages``);
* the unpacked wheel, imported from a directory outside the checkout, loads the embedded MNIST subset and
  prints the same ``mi-ref list`` (the recorded verdicts) as the source tree.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

from mi_ref import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mi_ref"

# files beside the package that the build reads (setup.cfg's long_description is README.md)
BUILD_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md")
# caches that are never part of the package: bytecode and numba's on-disk cache
NOT_PACKAGE = ("__pycache__", "*.pyc", "*.nbi", "*.nbc")

# uses of __file__ that open no data file: (module, enclosing function) -> what they do instead
OPENS_NO_DATA = {
    ("mi_ref/results.py", "git_revision"): "runs git in the package's directory (the revision of a checkout)",
    ("mi_ref/experiments/__init__.py", "_load_all"): "lists the experiment modules of its own package",
}

# other ways of reading data shipped inside a package, which the scan below does not follow
UNHANDLED = re.compile(r"importlib\.resources|from importlib import resources|pkgutil\.get_data|pkg_resources")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the source tree (never in the checkout: a stale build/ there would
    leak files into the wheel and hide a missing one)."""
    for module in ("setuptools", "wheel"):
        if find_spec(module) is None:
            pytest.fail(f"building the wheel needs {module} in this environment: pip install \".[test]\"")
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns(*NOT_PACKAGE))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "-w", str(out), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    wheels = list(out.glob("mi_ref-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel):
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def tracked_data_files():
    """Every non-``.py`` file of the package, relative to the repository root: the ones git tracks under
    ``mi_ref/``, or, outside a git checkout, every file there but caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", PACKAGE], cwd=ROOT, capture_output=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout:
        files = [f for f in listed.stdout.decode("utf-8").split("\0") if f]
    else:
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".nbi", ".nbc")]
    return sorted(f for f in files if not f.endswith(".py"))


def _statements_using_file(tree):
    """(enclosing function name or "<module>", the smallest statement) of every use of ``__file__``."""
    found = []

    def visit(node, function, statement):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.stmt):
            statement = node
        if isinstance(node, ast.Name) and node.id == "__file__":
            found.append((function, statement))
        for child in ast.iter_child_nodes(node):
            visit(child, function, statement)

    visit(tree, "<module>", None)
    return found


def _literals(statement):
    """The string constants of a statement itself, not of the statements nested in it (a ``for`` loop's
    iterable, not its body)."""
    found, todo = [], [statement]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        todo.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.stmt))
    return found


def opened_data_paths(root=ROOT, package=PACKAGE, opens_no_data=OPENS_NO_DATA):
    """``(paths, unexplained)``: the files the source of ``root/package`` opens beside itself (relative to
    ``root``; a directory stands for every file under it), and the uses of ``__file__`` that name no existing
    path and are not listed in ``opens_no_data``, or of package-data readers this scan does not follow."""
    paths, unexplained = set(), []
    for module in sorted((root / package).rglob("*.py")):
        rel = module.relative_to(root).as_posix()
        text = module.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if UNHANDLED.search(line) and not line.lstrip().startswith("#"):
                unexplained.append(f"{rel}:{number}: {line.strip()} (not followed by this test: teach it)")
        for function, statement in _statements_using_file(ast.parse(text, rel)):
            named = [module.parent / s for s in _literals(statement)
                     if s.strip("./") and (module.parent / s).exists()]
            for target in named:
                files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()
                                                           and "__pycache__" not in p.parts]
                paths.update(p.relative_to(root).as_posix() for p in files)
            if not named and (rel, function) not in opens_no_data:
                unexplained.append(f"{rel}:{statement.lineno} (in {function}): uses __file__ but names no file "
                                   "beside the module; add the file to setup.cfg's package_data and name it here, "
                                   "or list the use in OPENS_NO_DATA with the reason")
    return sorted(paths), unexplained


def test_every_data_file_of_the_package_is_in_the_wheel(wheel_names):
    files = tracked_data_files()
    assert "mi_ref/recorded_findings.json" in files and "mi_ref/mnist_subset/train-images-idx3-ubyte.gz" in files
    missing = [f for f in files if f not in wheel_names]
    assert not missing, (f"the wheel lacks {missing}: an installed mi-ref cannot read them; add them to "
                         "[options.package_data] in setup.cfg")


def test_every_module_of_the_package_is_in_the_wheel(wheel_names):
    """Every ``.py`` file under ``mi_ref/`` ships, those of its subpackages (``mi_ref.sweep``, ...) too: a
    package that setup.cfg's ``packages`` does not find would be missing from an installed mi-ref."""
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert "mi_ref/sweep/__init__.py" in sources and "mi_ref/sweep/tasks.py" in sources
    missing = [f for f in sources if f not in wheel_names]
    assert not missing, f"the wheel lacks {missing}: check setup.cfg's packages (and its packages.find include)"


def test_every_file_the_source_opens_beside_itself_is_in_the_wheel(wheel_names):
    paths, unexplained = opened_data_paths()
    assert not unexplained, "\n".join(unexplained)
    assert {"mi_ref/recorded_findings.json", "mi_ref/mnist_subset/t10k-labels-idx1-ubyte.gz"} <= set(paths)
    missing = [p for p in paths if p not in wheel_names]
    assert not missing, f"the source opens {missing} beside itself, but the wheel lacks them (setup.cfg's package_data)"
    for (module, function), _ in OPENS_NO_DATA.items():        # the exceptions still exist, so stay reviewed
        assert f"def {function}(" in (ROOT / module).read_text(encoding="utf-8"), (module, function)


def test_the_scan_finds_a_new_data_file_and_flags_an_unexplained_use(tmp_path):
    """The scan on a made-up package: a file named beside the module counts (a directory for all its files),
    a bare ``__file__`` use and an ``importlib.resources`` read are reported, a listed exception is not, and
    a literal in the body of a loop over ``__file__``'s directory names no data file."""
    pkg = tmp_path / "pkg"
    (pkg / "tables").mkdir(parents=True)
    (pkg / "table.csv").write_text("1\n")
    (pkg / "tables" / "a.txt").write_text("a\n")
    (pkg / "mod.py").write_text("from pathlib import Path\n"
                                "TABLE = Path(__file__).parent / 'table.csv'\n"
                                "TABLES = Path(__file__).parent / 'tables'\n"
                                "def where():\n    return Path(__file__).parent\n"
                                "def listed():\n    return Path(__file__).parent\n"
                                "from importlib import resources\n"
                                "for m in Path(__file__).parent.iterdir():\n    print(f'{m}.table.csv')\n")
    paths, unexplained = opened_data_paths(tmp_path, "pkg", {("pkg/mod.py", "listed"): "lists modules"})
    assert paths == ["pkg/table.csv", "pkg/tables/a.txt"]
    assert len(unexplained) == 3
    assert "pkg/mod.py:8" in unexplained[0] and "teach it" in unexplained[0]
    assert "pkg/mod.py:5 (in where)" in unexplained[1]
    assert "pkg/mod.py:9 (in <module>)" in unexplained[2]           # the loop's body names no file of it


def test_the_unpacked_wheel_works_outside_the_checkout(wheel, tmp_path, capsys):
    """Imported from the unpacked wheel alone (not the checkout), mi-ref finds its embedded MNIST subset and its
    recorded verdicts: ``mi-ref list`` prints exactly what it prints from the source tree."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))

    def run(*args):
        done = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run("-c", "import mi_ref, mi_ref.datasets as d; s = d.load('mnist-subset'); "
                      "print(mi_ref.__file__); print(len(s.x_train), len(s.x_test))").splitlines()
    assert Path(where[0]).resolve().is_relative_to(site.resolve()), where[0]
    assert where[1] == "10000 5000"
    installed = run("-m", "mi_ref.cli", "list")
    assert cli.main(["list"]) == 0
    assert installed == capsys.readouterr().out
    assert "last measured on" in installed
