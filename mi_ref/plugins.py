"""Plugins: a user's own critics, estimators, encoders, activations or datasets, registered from outside the
package.

A plugin is a Python file or an importable module that registers kinds with mi-ref's registries when it is
imported, e.g. ``CRITICS.register("cosine", cosine)`` (README, "Plugins: your own critic, estimator or
encoder"), or ``DATASETS.register("NAME", loader, ...)`` of :mod:`mi_ref.datasets` (a loader returning a
:class:`mi_ref.datasets.Dataset`; its metadata are described there). A plugin dataset is chosen with
``--dataset NAME`` or ``--set dataset=NAME``: the CLI loads the command line's plugins before it builds its
parser. The CLI loads

* every entry point of the group ``mi_ref.plugins`` of the installed packages, at its start
  (:func:`load_entry_points`; an entry point naming a module imports it, one naming a callable calls it);
* every ``--plugin FILE.py`` or ``--plugin MODULE`` given to ``run``, ``sweep``, ``reproduce``, ``plot``,
  ``findings`` and ``vectors`` (:func:`load`).

A plugin is imported once per process, however often it is named. The plugins loaded by name are listed by
:func:`given` (absolute paths and module names): every task of a sweep or of ``mi-ref reproduce`` carries
that list (:attr:`mi_ref.sweep.tasks.Task.plugins`), and the process that runs the task, a local worker
process or a Dask worker, loads them and its own entry points before it
(:func:`mi_ref.sweep.tasks.load_plugins`). A plugin that fails to import is a :class:`PluginError` (a
``ValueError``: one line and exit code 2 from the CLI) naming the file or module and the error.
"""

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from pathlib import Path

GROUP = "mi_ref.plugins"
LOADED = []             # the plugins loaded in this process, in order (absolute paths, module names, entry points)
_GIVEN = []             # those given by name (load), which a sweep's tasks carry to their workers (given)
_LOCK = threading.RLock()   # a Dask worker may run several tasks in threads: each plugin is imported once


class PluginError(ValueError):
    """A plugin that cannot be found or fails to import."""


def _one_line(err):
    return " ".join(f"{type(err).__name__}: {err}".split())


def _import_file(path):
    name = "mi_ref_plugin_" + path.stem + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(spec):
    """Import the plugin ``spec``: a path to a ``.py`` file, or the name of an importable module; returns the
    module (None if it was loaded already in this process: it is not imported again, so its kinds are
    registered once)."""
    spec = str(spec)
    is_file = spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec)
    key = str(Path(spec).resolve()) if is_file else spec
    with _LOCK:
        if key in LOADED:
            return None
        if is_file and not Path(key).is_file():
            raise PluginError(f"plugin {spec}: no such file")
        try:
            module = _import_file(Path(key)) if is_file else importlib.import_module(spec)
        except ModuleNotFoundError as err:
            if not is_file and err.name == spec.split(".")[0]:
                raise PluginError(f"plugin {spec}: no such file or importable module") from None
            raise PluginError(f"plugin {spec} failed to import: {_one_line(err)}") from None
        except Exception as err:
            raise PluginError(f"plugin {spec} failed to import: {_one_line(err)}") from None
        LOADED.append(key)
        _GIVEN.append(key)
        return module


def given():
    """The plugins loaded by name in this process (:func:`load`), in order: absolute paths of files and module
    names, what a sweep's tasks carry to their workers."""
    with _LOCK:
        return tuple(_GIVEN)


def _entry_points():
    return importlib.metadata.entry_points(group=GROUP)


def load_entry_points():
    """Load every entry point of the group ``mi_ref.plugins`` not loaded yet; returns their names."""
    names = []
    with _LOCK:
        for entry in _entry_points():
            if entry.value in LOADED:
                continue
            try:
                obj = entry.load()
                if callable(obj):
                    obj()
            except Exception as err:
                raise PluginError(f"plugin {entry.name} (entry point {entry.value} of group {GROUP}) failed to "
                                  f"load: {_one_line(err)}") from None
            LOADED.append(entry.value)
            names.append(entry.name)
    return names
