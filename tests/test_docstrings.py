"""Docstrings point at real code: every cross-reference in a docstring of mi_ref resolves.

A cross-reference is a Sphinx role (``:func:`mi_ref.jacobian.batch_jacobian```, ``:meth:`~mi_ref.nn.MLP.apply```,
``:mod:`mi_ref.accel```) or a backticked dotted name that looks like an mi_ref path: it starts with
``mi_ref``, with the short name of one of its modules (``nn.MLP.apply``, ``accel.twin``), with a class that
a module of mi_ref defines (``RealNVP.forward``) or with a name of mi_ref's that the docstring's own module
holds. It resolves if importing and getattr reach it from ``mi_ref``, from the docstring's own module or
from the modules of that short name or defining that class; the last part may also be an attribute that
the class's instances have (a dataclass field, or ``self.NAME = ...`` in its code).
"""

import ast
import importlib
import inspect
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mi_ref"
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):`~?([^`<>]+?)`")
TICKED = re.compile(r"(?<!`)``?([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)(?:\(\))?``?(?!`)")


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield text


def references(text):
    """The dotted names a docstring refers to: Sphinx roles always, backticked names when dotted."""
    found = [m.group(1).strip() for m in ROLE.finditer(text)]
    stripped = ROLE.sub("", text)
    found += [m.group(1) for m in TICKED.finditer(stripped)]
    return found


def resolve(path, start):
    """Follow ``path`` (a dotted name) from module or object ``start``: True if every part exists."""
    obj = start
    parts = path.split(".")
    for k, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if isinstance(obj, type) and k == len(parts) - 1 and part in instance_attributes(obj):
            return True
        if not isinstance(obj, type(importlib)):
            return False
        try:                                                     # a submodule not yet imported
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except ImportError:
            return False
    return True


def instance_attributes(cls):
    """The attributes an instance of ``cls`` has that the class itself may not: dataclass fields and names
    assigned as ``self.NAME = ...`` in the class body (or a base's)."""
    names = set()
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__dataclass_fields__", {}))
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(\w+)\s*=", source))
    return names


def is_ours(obj):
    """True for a module, class or function of mi_ref (not numpy, torch, ... imported into a module)."""
    name = getattr(obj, "__name__", "") if isinstance(obj, type(importlib)) else getattr(obj, "__module__", "")
    return isinstance(name, str) and name.startswith("mi_ref")


def package_index():
    """``(modules by name, modules by short name, modules by top-level name they define)``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    short, defined = {}, {}
    for name, path in modules.items():
        short.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(name)
    return modules, short, defined


def unresolved():
    """``[(module, reference)]`` for every cross-reference that does not resolve."""
    modules, short, defined = package_index()
    bad = []
    for name, path in sorted(modules.items()):
        own = importlib.import_module(name)
        for text in docstrings(ast.parse(path.read_text(encoding="utf-8"))):
            for ref in references(text):
                head = ref.split(".")[0]
                starts = []
                if head == "mi_ref":
                    starts = [importlib.import_module("mi_ref")]
                    ref = ref.partition(".")[2]
                elif head in short or head in defined or is_ours(getattr(own, head, None)):
                    starts = [own] + [importlib.import_module(m) for m in short.get(head, [])]
                    starts += [importlib.import_module(m) for m in defined.get(head, [])]
                    if head in short:
                        tail = ref.partition(".")[2]
                        if any(resolve(tail, importlib.import_module(m)) for m in short[head]):
                            continue
                else:
                    continue                                     # not an mi_ref path (numpy.x, torch.x, ...)
                if not any(resolve(ref, s) for s in starts):
                    bad.append((name, ref))
    return bad


def test_the_scanner_finds_roles_and_backticked_names():
    text = ("see :func:`mi_ref.jacobian.batch_jacobian`, :meth:`~mi_ref.nn.MLP.apply`, ``nn.mlp_apply``, "
            "`RealNVP.forward_reference` and ``nn.Linear.weight = W.T`` (not a name)")
    assert references(text) == ["mi_ref.jacobian.batch_jacobian", "mi_ref.nn.MLP.apply", "nn.mlp_apply",
                                "RealNVP.forward_reference"]


def test_the_resolver_tells_real_names_from_dangling_ones():
    import mi_ref
    assert resolve("nn.MLP.apply", mi_ref) and resolve("accel.primitives.mlp", mi_ref)
    assert not resolve("nn.mlp_apply", mi_ref) and not resolve("flows.RealNVP.forward_reference", mi_ref)


def test_every_cross_reference_in_a_docstring_resolves():
    bad = unresolved()
    assert not bad, "docstrings refer to names that do not exist:\n" + "\n".join(f"  {m}: {r}" for m, r in bad)
